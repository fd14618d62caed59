"""Wall time of one sweep grid: one point per pipeline call, seeds batched, and (with --ray) on a local Ray.

    python benchmarks/bench_sweep.py                   # toy, 7 seeds x 2 guidance scales, 25 steps, CPU
    python benchmarks/bench_sweep.py --ray --workers 2 # also backend="ray" on ray.init(num_cpus=workers)
    python benchmarks/bench_sweep.py --device cuda --model stable-diffusion-v1-5/stable-diffusion-v1-5

Prints seconds per point, the speed-up of batching, and how far batched pictures are from one-by-one ones.
"""

from __future__ import annotations

import argparse
import time

import torch

from sdexplore.sweep import Grid, PipelineSpec, run_sweep


def timed(label: str, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = run_sweep(progress=False, **kwargs)
    seconds = time.perf_counter() - start
    print(f"{label:<34} {seconds:7.2f} s   {seconds / len(result) * 1000:7.0f} ms/point")
    return seconds, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--seeds", type=int, default=7)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as set)")
    parser.add_argument("--ray", action="store_true", help="also run backend='ray' on a local cluster")
    parser.add_argument("--workers", type=int, default=2, help="CPUs of the local Ray cluster")
    args = parser.parse_args()

    spec = PipelineSpec(args.model, device=args.device, dtype=args.dtype)
    pipe = spec.load()
    grid = Grid(seed=list(range(args.seeds)), guidance_scale=[4.0, 7.5], prompt="a photo of a cat",
                num_inference_steps=args.steps)
    print(f"{args.model}, {len(grid)} points ({args.seeds} seeds x 2 guidance scales), {args.steps} steps, "
          f"{pipe.device}, torch threads {args.threads or torch.get_num_threads()}")
    run_sweep(pipe, Grid(seed=0, prompt="warm up", num_inference_steps=2), keep=["images"], progress=False)
    alone, one_by_one = timed("local, batch_size=1", model=pipe, grid=grid, keep=["images"], threads=args.threads)
    batched, in_batches = timed(f"local, batch_size={args.seeds}", model=pipe, grid=grid, keep=["images"],
                                batch_size=args.seeds, threads=args.threads)
    difference = (one_by_one.stack("images").int() - in_batches.stack("images").int()).abs()
    print(f"batching speed-up {alone / batched:.2f}x; pictures differ from one-by-one by at most "
          f"{int(difference.max())} of 255 (mean {difference.float().mean():.4f})")
    if args.ray:
        import ray

        ray.init(num_cpus=args.workers, include_dashboard=False, log_to_driver=False)
        try:
            cold, on_ray = timed(f"ray ({args.workers} workers), batch_size=1", model=spec, grid=grid, keep=["images"],
                                 backend="ray", threads=1)
            warm, _ = timed("ray again (workers keep the model)", model=spec, grid=grid, keep=["images"],
                            backend="ray", threads=1)
            same = torch.equal(on_ray.stack("images"), one_by_one.stack("images"))
            print(f"ray vs local one-by-one: {alone / cold:.2f}x with worker start and model loading, "
                  f"{alone / warm:.2f}x warm; pictures {'bit-identical' if same else 'DIFFERENT'} "
                  f"(same threads: {args.threads == 1})")
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
