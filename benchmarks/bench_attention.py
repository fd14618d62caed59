"""Cost of recording cross-attention maps: time ratio and memory (benchmark, not a test).

Time: trace(attention=...) / plain pipeline call on the same model in the same process, median
of interleaved runs (trace without attention printed too). Goal: <= 1.25x on CPU for the tiny
model, <= 1.15x on a GPU at SD1.5 size (fp16, 512², 50 steps).
Memory: what the maps keep (AttentionMaps.nbytes, exact) and the peak extra memory of a run
that records them, measured in a fresh process (CPU: peak RSS; GPU: torch's peak allocation),
plus the formula for SD1.5 at 512², 50 steps. Goal: <= 64 MB aggregated to the latent
resolution, <= 256 MB kept per layer.

    python benchmarks/bench_attention.py                      # tiny model on CPU
    python benchmarks/bench_attention.py --threads 1          # steadier on a shared machine
    python benchmarks/bench_attention.py --sd15 --device cuda --dtype float16 --steps 50
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_trace import sd15_random_pipeline, time_once  # noqa: E402

import sdexplore  # noqa: E402

PROMPT = "a photo of an orange cat on the left, sea background"
MODES = ("aggregate", "per_layer")
MB = 2**20


def make_pipeline(args):
    pipe = sd15_random_pipeline() if args.sd15 else sdexplore.load_pipeline(args.model)
    pipe = pipe.to(args.device, getattr(torch, args.dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_size(args, pipe) -> int:
    return args.size or (512 if args.sd15 else pipe.unet.config.sample_size * pipe.vae_scale_factor)


def timing(args) -> None:
    pipe = make_pipeline(args)
    size = image_size(args, pipe)
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=7.5, height=size, width=size)
    runs = {
        "plain": lambda: pipe(PROMPT, generator=torch.Generator(args.device).manual_seed(0), **kwargs),
        "trace": lambda: sdexplore.trace(pipe, PROMPT, seed=0, **kwargs),
        **{f"trace+{m}": (lambda m=m: sdexplore.trace(pipe, PROMPT, seed=0, attention=m, **kwargs)) for m in MODES},
    }
    for run in runs.values():  # warm-up
        run()
    times = {name: [] for name in runs}
    for _ in range(args.runs):  # interleaved, so drift hits all alike
        for name, run in runs.items():
            times[name].append(time_once(run, args.device))
    median = {name: statistics.median(t) for name, t in times.items()}
    print(f"time: {size}x{size}, {args.steps} steps, CFG 7.5, median of {args.runs} interleaved runs")
    for name, seconds in median.items():
        extra = "" if name == "plain" else f"   ratio to plain {seconds / median['plain']:.3f}"
        if name.startswith("trace+"):
            extra += f"   to trace {seconds / median['trace']:.3f}"
        print(f"  {name:<18} {seconds * 1000:9.1f} ms{extra}")


def memory_child(args, mode, queue) -> None:
    """In a fresh process: peak memory of a plain trace, then of one recording attention."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    pipe = make_pipeline(args)
    size = args.memory_size or image_size(args, pipe)
    kwargs = dict(num_inference_steps=args.memory_steps, guidance_scale=7.5, height=size, width=size)
    cuda = args.device.startswith("cuda")
    sdexplore.trace(pipe, PROMPT, seed=0, **kwargs)  # the plain run's own peak first
    base = torch.cuda.max_memory_allocated() if cuda else _max_rss()
    run = sdexplore.trace(pipe, PROMPT, seed=0, attention=mode, **kwargs)
    peak = torch.cuda.max_memory_allocated() if cuda else _max_rss()
    maps = run.attention
    queue.put({"mode": mode, "size": size, "latent": maps.latent_size, "steps": maps.num_steps,
               "layers": len(maps.layer_names), "kept": maps.nbytes, "peak_extra": peak - base})


def memory(args) -> None:
    where = "GPU peak allocation" if args.device.startswith("cuda") else "peak RSS"
    context = multiprocessing.get_context("spawn")
    for mode in MODES:
        queue = context.Queue()
        child = context.Process(target=memory_child, args=(args, mode, queue))
        child.start()
        result = queue.get()
        child.join()
        h, w = result["latent"]
        print(f"memory {mode:<10} {result['size']}x{result['size']} (latent {h}x{w}), {result['steps']} steps, "
              f"{result['layers']} layers: kept {result['kept'] / MB:7.2f} MB, "
              f"peak extra ({where}) {result['peak_extra'] / MB:7.2f} MB")


def sd15_formula(steps: int = 50, latent: int = 64) -> None:
    """What the maps of SD1.5 at 512² keep, from the layer layout (16 attn2 layers)."""
    grids = [latent] * 5 + [latent // 2] * 5 + [latent // 4] * 5 + [latent // 8]
    aggregate = steps * 77 * latent * latent * 2
    per_layer = steps * 77 * sum(g * g for g in grids) * 2
    print(f"SD1.5 512², {steps} steps, one image (formula): aggregate {aggregate / MB:.1f} MB (goal <= 64), "
          f"per_layer {per_layer / MB:.1f} MB (goal <= 256); x2 with keep_negative")


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="tiny | tiny-sd2 | folder")
    parser.add_argument("--sd15", action="store_true", help="SD1.5-sized random weights, 512x512")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--size", type=int, default=None, help="image size for timing (default: the model's)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--memory-size", type=int, default=512, help="image size for the memory part (0: model's)")
    parser.add_argument("--memory-steps", type=int, default=50)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cpu = f"CPU x{torch.get_num_threads()} threads"
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else cpu
    print(f"model={'sd15-random' if args.sd15 else args.model} device={device} dtype={args.dtype}")
    timing(args)
    if not args.skip_memory:
        memory(args)
    sd15_formula()


if __name__ == "__main__":
    main()
