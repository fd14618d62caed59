"""What a widget move costs, as a person moving it would wait (median of repeated moves, one process).

Goals from issue 10 (toy model, 2 CPU cores): a cached move (values already seen) <= 50 ms, a StepScrubber
move <= 50 ms, a new SamplingExplorer run <= 1.5 s. Measured through the widgets' own controls: setting a
control's value runs the same observer a browser's move runs (the comm round trip to the browser excluded).
    python benchmarks/bench_widgets.py [--model toy] [--steps 25] [--repeats 7] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import sdexplore
from sdexplore.widgets import AttentionExplorer, SamplingExplorer, StepScrubber

PROMPT = "a photo of a large orange cat on the left, sea background"


def timed(move) -> float:
    start = time.perf_counter()
    move()
    return time.perf_counter() - start


def move(control, value) -> None:
    """What a move in the browser does: set the control's value (its observers run)."""
    control.value = value


def machine() -> str:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
            f"torch {torch.__version__} with {torch.get_num_threads()} threads, Python {platform.python_version()}, "
            f"load average {load} (other work on the machine slows every number below)")


def bench_sampling(pipe, steps: int, repeats: int) -> None:
    explorer = SamplingExplorer(pipe, PROMPT, seed=0, num_inference_steps=steps)
    new, cached = [], []
    for index in range(repeats):
        new.append(timed(lambda i=index: move(explorer.guidance, 1.0 + 0.5 * i)))  # never seen: runs
        cached.append(timed(lambda: move(explorer.guidance, 7.5)))                  # seen: from the cache
    assert explorer.runs == repeats + 1, "every new value runs once, every seen value none"
    print(f"SamplingExplorer new run (guidance moved, {steps} steps): median {statistics.median(new) * 1000:7.1f} ms"
          "   goal <= 1500 ms")
    print(f"SamplingExplorer cached move (back to a seen value):     median {statistics.median(cached) * 1000:7.1f} ms"
          "   goal <= 50 ms")


def bench_scrubber(pipe, steps: int, repeats: int) -> None:
    run = sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=steps, attention=True)
    for label, make in (("StepScrubber (vae previews)", lambda: StepScrubber(run, pipe, token="cat")),
                        ("StepScrubber (approx previews)", lambda: StepScrubber(run, token="cat")),
                        ("AttentionExplorer scrubber", lambda: AttentionExplorer(run, pipe).scrubber)):
        scrubber = make()
        first = [timed(lambda s=s, w=scrubber: move(w.slider, s)) for s in range(1, steps)]
        again = [timed(lambda s=s, w=scrubber: move(w.slider, s)) for s in range(0, steps)]
        print(f"{label:31s} move to a new step:  median {statistics.median(first) * 1000:6.1f} ms, "
              f"max {max(first) * 1000:6.1f} ms   goal <= 50 ms")
        print(f"{label:31s} move to a seen step: median {statistics.median(again) * 1000:6.1f} ms, "
              f"max {max(again) * 1000:6.1f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = sdexplore.load_pipeline(args.model)
    print(f"machine: {machine()}")
    print(f"model={args.model} steps={args.steps} cfg=7.5 (first run warms up, not counted)")
    bench_sampling(pipe, args.steps, args.repeats)
    bench_scrubber(pipe, args.steps, args.repeats)


if __name__ == "__main__":
    main()
