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


def header_span(data: bytes) -> tuple[int, int]:
    """Byte range of the safetensors JSON header: 8 bytes of little-endian length, then the JSON."""
    return 8, 8 + int.from_bytes(data[:8], "little")


def test_the_checksum_seals_the_metadata_a_flipped_seed_bit_is_refused(run, tmp_path):
    path = run.save(tmp_path / "run.safetensors")
    data = path.read_bytes()
    at = data.index(b'\\"seed\\": 1') + len(b'\\"seed\\": ')  # the seed inside the JSON-in-JSON metadata
    tampered = bytearray(data)
    tampered[at] ^= 0x01  # "1" -> "0": still valid JSON, a different seed
    path.write_bytes(bytes(tampered))
    with pytest.raises(sdexplore.TraceFileError, match="tensors or metadata do not match their checksum"):
        sdexplore.Trace.load(path)


def test_any_single_bit_flip_in_the_header_is_refused(run, tmp_path):
    """Checked exhaustively once (all 105,088 bit flips of a 2-step trace's header: every one refused);
    here a fixed sample of 300 positions, spread over the whole header, keeps the test fast."""
    path = run.save(tmp_path / "run.safetensors")
    data = path.read_bytes()
    start, end = header_span(data)
    rng = np.random.default_rng(0)
    for position, bit in zip(rng.integers(start, end, 300), rng.integers(0, 8, 300)):
        tampered = bytearray(data)
        tampered[position] ^= 1 << int(bit)
        path.write_bytes(bytes(tampered))
        with pytest.raises(sdexplore.TraceFileError):
            sdexplore.Trace.load(path)


def write_format_1(run, path):
    """The trace file layout of format 1, written by hand: its checksum covers the tensors only."""
    import hashlib
    import json

    from safetensors.torch import save_file

    tensors = {name: getattr(run, name) for name in ("timesteps", "latents", "x0", "noise_pred", "noise_pred_text",
                                                     "noise_pred_uncond", "scheduler_x0", "prompt_embeds",
                                                     "negative_prompt_embeds")}
    tensors["images"] = torch.from_numpy(np.stack([np.asarray(im) for im in run.images]))
    tensors = {name: t.contiguous() for name, t in tensors.items()}
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name]
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    metadata = {"params": run.params, "tokens": [[t.to_dict() for t in table] for table in run.tokens]}
    save_file(tensors, str(path), metadata={"format": "sdexplore.trace", "format_version": "1",
                                            "metadata": json.dumps(metadata), "sha256": digest.hexdigest()})


def test_a_format_1_file_still_loads_with_a_note_that_its_metadata_was_not_sealed(run, tmp_path):
    path = tmp_path / "old.safetensors"
    write_format_1(run, path)
    with pytest.warns(storage.UnsealedMetadataWarning, match="metadata .* was not sealed"):
        old = sdexplore.Trace.load(path)
    assert torch.equal(old.latents, run.latents) and old.params == run.params and old.tokens == run.tokens
    resaved = old.save(tmp_path / "resaved.safetensors")  # saving again seals it: no warning any more
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sdexplore.Trace.load(resaved).seed == run.seed
    data = bytearray(path.read_bytes())  # format 1 still checks its tensors
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(sdexplore.TraceFileError, match="modified since it was saved"):
        sdexplore.Trace.load(path)


def test_newer_and_damaged_format_versions_are_refused(run, tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = run.save(tmp_path / "run.safetensors")
    with safe_open(str(path), framework="pt") as handle:
        header, tensors = handle.metadata(), {name: handle.get_tensor(name) for name in handle.keys()}
    for version, message in (("3", "newer sdexplore"), ("0", "unknown trace format version"), ("", "damaged")):
        save_file(tensors, str(tmp_path / "v.safetensors"), metadata={**header, "format_version": version})
        with pytest.raises(sdexplore.TraceFileError, match=message):
            sdexplore.Trace.load(tmp_path / "v.safetensors")
