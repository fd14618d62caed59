"""Cost of tracing: wall-time ratio trace / plain pipeline call, same model, same process; peak extra memory.

Goals (issue 16): CPU, toy model, 2 cores, 25 steps, CFG: <= 1.02x; GPU, SD 1.5-sized, fp16, 512², 50 steps,
CFG: <= 1.02x (SDXL-sized, 1024², 30 steps: <= 1.02x). See common.py for how timing and memory are taken.

    python benchmarks/bench_trace.py                                  # toy model on the CPU
    python benchmarks/bench_trace.py --device cuda --size sd15        # SD 1.5-sized random weights, fp16
    python benchmarks/bench_trace.py --device cuda --size sdxl
    python benchmarks/bench_trace.py --compile                        # the UNet wrapped in torch.compile too
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    MB,
    PROMPT,
    arguments,
    call_kwargs,
    generator,
    header,
    interleaved_medians,
    interleaved_times,
    make_pipeline,
    peak_extra,
    print_ratios,
    settle,
)

import sdexplore  # noqa: E402


def traced_run(args, pipe):
    kwargs = call_kwargs(args, pipe)
    return (lambda: sdexplore.trace(pipe, PROMPT, seed=0, **kwargs)), None


def main(argv=None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--compile", action="store_true", help="time pipe.unet = torch.compile(pipe.unet) too")
    args = settle(parser.parse_args(argv))
    print(header(args))
    pipe = make_pipeline(args)
    kwargs = call_kwargs(args, pipe)
    runs = {"plain": lambda: pipe(PROMPT, generator=generator(args), **kwargs),
            "trace": traced_run(args, pipe)[0]}
    print_ratios(interleaved_times(runs, args), args, pipe)
    if args.compile:
        pipe.unet = torch.compile(pipe.unet)
        compiled = {"plain (compiled UNet)": runs["plain"], "trace (compiled UNet)": runs["trace"]}
        medians = interleaved_medians(compiled, args)
        base = medians["plain (compiled UNet)"]
        for name, seconds in medians.items():
            print(f"  {name:<24} {seconds * 1000:9.1f} ms   ratio to plain (compiled) {seconds / base:.3f}")
    if not args.skip_memory:
        result = peak_extra(args, "trace", traced_run)
        print(f"memory: trace adds {result['peak_extra'] / MB:.1f} MB to the plain call's {result['what']}")


if __name__ == "__main__":
    main()
