"""The README's table of what a trace captures on each pipeline family, read from real traces.

``python -m sdexplore.capture.table`` traces every tiny pipeline (2 steps, 64x64) and prints the
markdown table; tests/test_families.py fails when the README's copy differs from it.
"""

from __future__ import annotations

import argparse

TABLE_KINDS = ("tiny", "tiny-sd2", "tiny-sdxl", "tiny-sd3", "tiny-flux")
TABLE_START = "<!-- capture-table:start (python -m sdexplore.capture.table) -->"
TABLE_END = "<!-- capture-table:end -->"


def capture_row(kind: str, run) -> list[str]:
    """One row of the capture table, read from a Trace of pipeline ``kind``."""
    params = run.params
    step = run.latents.shape[2:]
    tables = run.token_tables or {"clip": run.tokens}
    return [
        f"`{kind}` ({params['pipeline']})",
        params["prediction_kind"],
        f"[{step[0]}, {step[1]}, {step[2]}]" + (" unpacked" if params.get("packed_latents") else ""),
        "yes" if run.noise_pred_uncond is not None else "no",
        ", ".join(f"{name} {len([t for t in table[0] if not t.truncated])}" for name, table in tables.items()),
        str(len(run.tokens[0])),
        "yes" if run.pooled_prompt_embeds is not None else "no",
        "yes" if run.time_ids is not None else "no",
        "yes" if run.scheduler_x0 is not None else "no (x0 computed)",
        "yes" if run.sigmas is not None else "no",
    ]


TABLE_HEADER = ["pipeline", "prediction", "latents per step [C, h, w]", "CFG parts",
                "token tables (positions)", "sequence positions", "pooled", "time ids", "scheduler's own x0",
                "scheduler's sigmas"]


def capture_table(runs: dict) -> str:
    """Markdown table, one row per (kind -> Trace) of ``runs``."""
    lines = ["| " + " | ".join(TABLE_HEADER) + " |", "|" + "---|" * len(TABLE_HEADER)]
    lines += ["| " + " | ".join(capture_row(kind, run)) + " |" for kind, run in runs.items()]
    return "\n".join(lines)


def table_runs() -> dict:
    """The traces the capture table is made from: each tiny pipeline, 2 steps, 64x64, seed 0."""
    from .. import load_pipeline, trace

    return {kind: trace(load_pipeline(kind), "a cat on the beach", seed=0, num_inference_steps=2, height=64, width=64)
            for kind in TABLE_KINDS}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m sdexplore.capture.table",
                                     description="print the README's table of what a trace captures on each family")
    parser.parse_args(argv)
    print(capture_table(table_runs()))


if __name__ == "__main__":
    main()
