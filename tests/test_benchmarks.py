"""The benchmark scripts run end to end on the CPU at a tiny size (their timings are printed, never asserted)."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import bench_attention  # noqa: E402
import bench_trace  # noqa: E402
import common  # noqa: E402

TINY = ["--size", "sd15-tiny", "--steps", "2", "--runs", "1", "--threads", "1"]


def test_the_random_pipelines_have_the_real_models_layout():
    sd15 = common.random_pipeline("sd15-tiny")
    assert sd15.unet.config.down_block_types == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert sum(name.endswith("attn2") for name, _ in sd15.unet.named_modules()) == 16  # as SD 1.5
    sdxl = common.random_pipeline("sdxl-tiny")
    assert sum(name.endswith("attn2") for name, _ in sdxl.unet.named_modules()) == 70  # as SDXL
    with pytest.raises(ValueError, match="size must be one of"):
        common.random_pipeline("sd2")


def test_bench_trace_prints_the_ratio_and_the_memory(capsys):
    bench_trace.main(TINY)
    out = capsys.readouterr().out
    assert re.search(r"trace\s+[\d.]+ ms\s+ratio to plain \d+\.\d{3}\s+paired \d+\.\d{3} \[\d+\.\d{3}, \d+\.\d{3}\]",
                     out), out
    assert re.search(r"memory: trace adds -?[\d.]+ MB", out)


def test_paired_ratios_divide_each_round_by_its_own_plain_run():
    times = {"plain": [1.0, 2.0, 1.0], "trace": [1.1, 2.2, 1.05]}  # the machine was twice as slow in round 2
    assert common.paired_ratios(times, "trace") == pytest.approx([1.1, 1.1, 1.05])


def test_bench_attention_prints_each_mode_against_plain(capsys):
    bench_attention.main(TINY + ["--skip-memory", "--no-peer"])
    out = capsys.readouterr().out
    for name in ("trace+aggregate", "trace+per_layer"):
        assert re.search(rf"{re.escape(name)}\s+[\d.]+ ms\s+ratio to plain \d+\.\d{{3}}", out), out
    assert "SD1.5 512², 50 steps, one image (formula): aggregate 30.1 MB" in out
