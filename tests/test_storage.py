"""Trace.save / Trace.load: safetensors + JSON, atomic, no pickle, clear errors on damaged files."""

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.capture import storage


@pytest.fixture(scope="module")
def run(tiny):
    return sdexplore.trace(tiny, "a photo of a bozuman cat", seed=1, num_inference_steps=3, negative_prompt="dog")


def test_round_trip_keeps_everything(run, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    back = sdexplore.Trace.load(path)
    for name in ("timesteps", "latents", "x0", "noise_pred", "noise_pred_text", "noise_pred_uncond",
                 "prompt_embeds", "negative_prompt_embeds", "scheduler_x0"):
        assert torch.equal(getattr(back, name), getattr(run, name)), name
    assert np.array_equal(np.asarray(back.images[0]), np.asarray(run.images[0]))
    assert back.tokens == run.tokens and back.params == run.params
    assert back.params["negative_prompt"] == "dog"


def test_the_file_is_safetensors_with_json_metadata_and_no_pickle(run, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    raw = path.read_bytes()
    assert b"sdexplore.trace" in raw[:200_000] and b"\x80\x04" not in raw[:2]  # no pickle protocol header
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert "latents" in handle.keys() and handle.metadata()["format"] == "sdexplore.trace"


def test_truncated_file_is_refused(run, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(sdexplore.TraceFileError, match="truncated or corrupted"):
        sdexplore.Trace.load(path)


def test_tampered_tensor_bytes_are_refused(run, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(sdexplore.TraceFileError, match="modified since it was saved"):
        sdexplore.Trace.load(path)


def test_other_files_are_refused_clearly(tmp_path):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(sdexplore.TraceFileError, match="not an sdexplore trace"):
        sdexplore.Trace.load(tmp_path / "other.safetensors")
    with pytest.raises(sdexplore.TraceFileError, match="no trace file"):
        sdexplore.Trace.load(tmp_path / "missing.safetensors")


def test_a_failed_save_leaves_the_earlier_file_intact(run, tmp_path, monkeypatch):
    path = run.save(tmp_path / "run.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(storage, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        run.save(path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]


def test_a_failing_run_loses_nothing_already_saved(run, tiny, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    with pytest.raises(ValueError):
        sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=0)
    assert torch.equal(sdexplore.Trace.load(path).latents, run.latents)
