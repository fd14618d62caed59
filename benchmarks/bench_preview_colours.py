"""How close the toy's approx previews come to its VAE's decoding (a measurement, not a test).

On the toy's own predicted clean latents (x0 at several steps of traced runs of world prompts that the
preview map was not fitted on), the mean absolute colour difference in 0..255 levels between the approx
preview and the VAE's decoding average-pooled to latent resolution, for each map:
- "sd1 (Keturn)": the SD 1.x factors sdexplore used before (discuss.huggingface.co, "Decoding latents
  to RGB without upscaling");
- "sd1 (ComfyUI)": the SD 1.x factors in ``sdexplore.decode.LATENT_FORMATS``;
- "shipped": the toy's own fitted ``latent_rgb.json`` (what approx previews of the toy use).

    python benchmarks/bench_preview_colours.py             # 16 runs x 5 steps
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

import sdexplore
from sdexplore.decode import LATENT_FORMATS, LatentRGB, latent_rgb_for
from sdexplore.toy import world
from sdexplore.toy.folder import preview_colour_error

KETURN_SD1 = LatentRGB(torch.tensor([[0.298, 0.207, 0.208], [0.187, 0.286, 0.173],
                                     [-0.158, 0.189, 0.264], [-0.184, -0.271, -0.473]]), torch.zeros(3))


def toy_x0_latents(pipe, runs: int, steps: tuple[int, ...]) -> torch.Tensor:
    """[runs * len(steps), 4, 16, 16]: x0 at ``steps`` of 25-step runs of canonical world prompts."""
    rng = np.random.default_rng(7)
    latents = []
    for seed in range(runs):
        prompt = world.canonical_prompt(world.sample_scene(rng, exclude=None))
        run = sdexplore.trace(pipe, prompt, seed=100 + seed, num_inference_steps=25)
        latents += [run.x0[step] for step in steps]
    return torch.cat(latents)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=16)
    args = parser.parse_args()
    pipe = sdexplore.load_pipeline("toy")
    steps = (4, 9, 14, 19, 24)
    latents = toy_x0_latents(pipe, args.runs, steps)
    maps = {"sd1 (Keturn, used before)": KETURN_SD1, "sd1 (ComfyUI)": LATENT_FORMATS["sd1"].latent_rgb,
            "shipped (latent_rgb.json)": latent_rgb_for(pipe)}
    print(f"{len(latents)} toy x0 latents ({args.runs} runs x steps {steps}); colour error in 0..255 levels")
    for name, latent_rgb in maps.items():
        print(f"  {name:28s} all steps {preview_colour_error(latent_rgb, pipe.vae, latents):6.2f}   "
              f"last step {preview_colour_error(latent_rgb, pipe.vae, latents[len(steps) - 1::len(steps)]):6.2f}")


if __name__ == "__main__":
    main()
