"""The ``sdexplore`` command: trace a prompt and write its figure (the quick-start main job)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_PROMPT = "a photo of an orange cat on the left, sea background"


def default_model() -> str:
    """The embedded default: the shipped toy model when its weights are present, else the tiny one."""
    from .models import TOY_WEIGHTS

    return "toy" if (TOY_WEIGHTS / "model_index.json").exists() else "tiny"


def demo(args) -> int:
    """Trace one prompt, save the trace, and write the denoising figure with a JSON sidecar."""
    from . import load_pipeline, trace
    from .plot.steps import denoising_previews, plot_denoising

    model = args.model or default_model()
    pipe = load_pipeline(model, scheduler=args.scheduler)
    run = trace(pipe, args.prompt, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"demo_{model.replace('/', '_')}_seed{args.seed}"
    title = f"{args.prompt!r} · {model} · seed {args.seed} · {run.num_steps} steps · cfg {args.guidance}"
    figure = plot_denoising(denoising_previews(run, method="vae", pipe=pipe), title=title)
    figure.savefig(out / f"{stem}.png", dpi=120)
    sidecar = {"figure": f"{stem}.png", "question": "How does pure noise become a picture, step by step?",
               **{k: run.params[k] for k in ("prompt", "seed", "scheduler", "versions")},
               "model": model,  # as asked ("toy", a hub id), not this machine's path to it
               "num_inference_steps": args.steps, "guidance_scale": args.guidance}
    (out / f"{stem}.json").write_text(json.dumps(sidecar, indent=2))
    if args.save_trace:
        run.save(Path(args.save_trace))
    print(f"{run!r}\nwrote {out / (stem + '.png')} and {stem}.json")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sdexplore", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("demo", help="trace a prompt on the default model and write a figure")
    run.add_argument("--model", default=None,
                     help="toy | tiny | a diffusers folder | a hub id (default: toy if shipped)")
    run.add_argument("--prompt", default=DEFAULT_PROMPT)
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--steps", type=int, default=25)
    run.add_argument("--guidance", type=float, default=7.5)
    run.add_argument("--scheduler", default=None, help="ddim | ddpm | euler | euler_a | dpm++ | pndm")
    run.add_argument("--out", default="figures")
    run.add_argument("--save-trace", default=None, help="also save the trace to this .safetensors file")
    run.set_defaults(handler=demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
