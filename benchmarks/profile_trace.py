"""Where traced time goes beyond the plain pipeline call: torch.profiler on both, ops compared.

Profiles one plain call and one traced call (after a warm-up of each) and prints, per operator, the
calls and self time in each, sorted by the extra self time of the traced run; then the totals.

    python benchmarks/profile_trace.py                          # toy model, CPU, trace without attention
    python benchmarks/profile_trace.py --attention aggregate
    python benchmarks/profile_trace.py --device cuda --size sd15 --attention aggregate
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from common import PROMPT, arguments, call_kwargs, generator, header, make_pipeline, settle, synchronize  # noqa: E402

import sdexplore  # noqa: E402


def op_times(run, device: str) -> tuple[dict[str, tuple[int, float]], float]:
    """({op: (calls, self ms)}, wall ms of the profiled call) for one profiled call of ``run``."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=activities) as prof:
        run()
        synchronize(device)
    device_time = device.startswith("cuda")
    ops = {}
    for event in prof.key_averages():
        self_us = event.self_device_time_total if device_time else event.self_cpu_time_total
        ops[event.key] = (event.count, self_us / 1000)
    total = sum(ms for _, ms in ops.values())
    return ops, total


def main(argv=None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--attention", default="false", choices=["false", "aggregate", "per_layer"])
    parser.add_argument("--top", type=int, default=15)
    args = settle(parser.parse_args(argv))
    print(header(args))
    pipe = make_pipeline(args)
    kwargs = call_kwargs(args, pipe)
    attention = {"false": False}.get(args.attention, args.attention)
    runs = {"plain": lambda: pipe(PROMPT, generator=generator(args), **kwargs),
            "traced": lambda: sdexplore.trace(pipe, PROMPT, seed=0, attention=attention, **kwargs)}
    for run in runs.values():
        run()
    (plain, plain_total), (traced, traced_total) = (op_times(run, args.device) for run in runs.values())
    what = "device" if args.device.startswith("cuda") else "CPU"
    print(f"self {what} time summed over ops: plain {plain_total:.1f} ms, traced (attention={args.attention}) "
          f"{traced_total:.1f} ms, extra {traced_total - plain_total:+.1f} ms")
    extra = sorted(((traced.get(op, (0, 0.0))[1] - plain.get(op, (0, 0.0))[1], op) for op in set(plain) | set(traced)),
                   reverse=True)
    print(f"{'op':<44} {'calls plain':>11} {'calls traced':>12} {'ms plain':>9} {'ms traced':>9} {'extra ms':>9}")
    for difference, op in extra[: args.top]:
        (pc, pms), (tc, tms) = plain.get(op, (0, 0.0)), traced.get(op, (0, 0.0))
        print(f"{op[:44]:<44} {pc:>11} {tc:>12} {pms:>9.1f} {tms:>9.1f} {difference:>+9.1f}")


if __name__ == "__main__":
    main()
