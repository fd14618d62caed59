"""Cost of recording cross-attention maps: time ratio to the plain pipeline and peak extra memory, beside
the peer attention-map-diffusers 1.0 on the same model, prompt and seed.

Goals (issue 16): CPU, toy model, 2 cores, 25 steps, CFG: trace(attention="aggregate") <= 1.08x the plain
call; GPU, SD 1.5-sized, fp16, 512², 50 steps: <= 1.10x. Maps kept: <= 64 MB aggregated, <= 256 MB per
layer (SD 1.5, 512², 50 steps, one image; printed from the layer layout). See common.py for the timing.

The peer captures image->text attention of every layer at every step (timesteps="all", heads averaged;
its default mode="fast" keeps q and k and computes the maps after the run, which is timed too). It needs
no extra dependencies for this; its declared ones (torchvision, ...) would replace torch, so install it
beside, not into, the environment:
    pip install --no-deps --target .peers attention-map-diffusers
    PYTHONPATH=.peers:. python benchmarks/bench_attention.py
    python benchmarks/bench_attention.py --device cuda --size sd15     # SD 1.5-sized random weights, fp16
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import (  # noqa: E402
    MB,
    PROMPT,
    arguments,
    call_kwargs,
    generator,
    header,
    interleaved_times,
    make_pipeline,
    peak_extra,
    print_ratios,
    settle,
)

import sdexplore  # noqa: E402

MODES = ("aggregate", "per_layer")
PEER = "attention-map-diffusers"


def traced_run(args, pipe, mode):
    kwargs = call_kwargs(args, pipe)
    kept = {}

    def run():
        kept["bytes"] = sdexplore.trace(pipe, PROMPT, seed=0, attention=mode, **kwargs).attention.nbytes
    return run, kept


def aggregate_run(args, pipe):
    return traced_run(args, pipe, "aggregate")


def per_layer_run(args, pipe):
    return traced_run(args, pipe, "per_layer")


def peer_run(args, pipe):
    """attention-map-diffusers' capture of every step's image->text maps, computed after the run."""
    from attention_map_diffusers import AttentionCapture

    kwargs = call_kwargs(args, pipe)
    kept = {}

    def run():
        with AttentionCapture(pipe, relations="image->text", layers="all", timesteps="all", heads="mean") as capture:
            pipe(PROMPT, generator=generator(args), **kwargs)
        maps = capture.compute()
        kept["bytes"] = sum(record.data.nbytes for record in maps if record.data is not None)
    return run, kept


def peer_available() -> str | None:
    """None if the peer can be imported, else why not."""
    try:
        import attention_map_diffusers  # noqa: F401
    except ImportError as error:
        return f"{PEER} not importable ({error}); see this script's docstring"
    return None


def sd15_formula(steps: int = 50, latent: int = 64) -> None:
    """What the maps of SD1.5 at 512² keep, from the layer layout (16 attn2 layers)."""
    grids = [latent] * 5 + [latent // 2] * 5 + [latent // 4] * 5 + [latent // 8]
    aggregate = steps * 77 * latent * latent * 2
    per_layer = steps * 77 * sum(g * g for g in grids) * 2
    print(f"SD1.5 512², {steps} steps, one image (formula): aggregate {aggregate / MB:.1f} MB (goal <= 64), "
          f"per_layer {per_layer / MB:.1f} MB (goal <= 256); x2 with keep_negative")


def main(argv=None) -> None:
    parser = arguments(__doc__)
    parser.add_argument("--no-peer", action="store_true", help=f"leave out {PEER}")
    args = settle(parser.parse_args(argv))
    print(header(args))
    pipe = make_pipeline(args)
    kwargs = call_kwargs(args, pipe)
    runs = {"plain": lambda: pipe(PROMPT, generator=generator(args), **kwargs),
            "trace": lambda: sdexplore.trace(pipe, PROMPT, seed=0, **kwargs),
            "trace+aggregate": aggregate_run(args, pipe)[0],
            "trace+per_layer": per_layer_run(args, pipe)[0]}
    makers = {"trace+aggregate": aggregate_run, "trace+per_layer": per_layer_run}
    missing = None if args.no_peer else peer_available()
    if not args.no_peer and missing is None:
        runs[PEER] = peer_run(args, pipe)[0]
        makers[PEER] = peer_run
    elif missing:
        print(missing)
    print_ratios(interleaved_times(runs, args), args, pipe)
    if not args.skip_memory:
        for name, make_run in makers.items():
            result = peak_extra(args, name, make_run)
            print(f"memory {name:<24} maps kept {result.get('bytes', 0) / MB:8.2f} MB, "
                  f"peak extra ({result['what']}) {result['peak_extra'] / MB:8.2f} MB")
    sd15_formula()


if __name__ == "__main__":
    main()
