"""Wall-time ratio trace / plain pipeline, same model, same process (median of interleaved runs).

Goal: <= 1.05x on CPU for the tiny/toy model, <= 1.03x on a GPU at SD1.5 size.
    python benchmarks/bench_trace.py                    # tiny (or toy) on CPU
    python benchmarks/bench_trace.py --sd15 --device cuda --dtype float16   # SD1.5-sized random weights
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import sdexplore


def sd15_random_pipeline():
    """An SD1.5-shaped pipeline with random weights (timing is the same as with real ones)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny = sdexplore.load_pipeline("tiny")
    unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768)
    vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, layers_per_block=2, latent_channels=4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tiny.tokenizer), hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77))
    scheduler = DDIMScheduler.from_config(tiny.scheduler.config)
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tiny.tokenizer, unet=unet, scheduler=scheduler,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="toy | tiny | folder (default: toy if shipped, else tiny)")
    parser.add_argument("--sd15", action="store_true", help="SD1.5-sized random weights, 512x512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--attention", default="false", choices=["false", "aggregate", "per_layer"])
    args = parser.parse_args()

    from sdexplore.cli import default_model

    model = "sd15-random" if args.sd15 else (args.model or default_model())
    pipe = sd15_random_pipeline() if args.sd15 else sdexplore.load_pipeline(model)
    pipe = pipe.to(args.device, getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    size = 512 if args.sd15 else pipe.unet.config.sample_size * pipe.vae_scale_factor
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size)
    prompt = "a photo of an orange cat on the left, sea background"
    attention = {"false": False}.get(args.attention, args.attention)

    def plain():
        pipe(prompt, generator=torch.Generator(args.device).manual_seed(0), **kwargs)

    def traced():
        sdexplore.trace(pipe, prompt, seed=0, attention=attention, **kwargs)

    plain(), traced()  # warm-up
    plain_times, traced_times = [], []
    for _ in range(args.runs):  # interleaved, so drift hits both alike
        plain_times.append(time_once(plain, args.device))
        traced_times.append(time_once(traced, args.device))
    p, t = statistics.median(plain_times), statistics.median(traced_times)
    cpu = f"CPU x{torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"model={model} device={device} dtype={args.dtype} {size}x{size} steps={args.steps} cfg=7.5 "
          f"attention={args.attention} runs={args.runs}")
    print(f"plain  median {p * 1000:8.1f} ms")
    print(f"traced median {t * 1000:8.1f} ms")
    print(f"ratio trace/plain = {t / p:.3f}")


if __name__ == "__main__":
    main()
