"""The shared results cache computes once per folder and key, and is off without SDEXPLORE_CACHE."""

import pytest
import torch

from sdexplore.cache import CACHE_ENV, cached


def test_a_result_is_computed_once_per_key_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(6.0).reshape(2, 3)}

    first = cached("sweep", compute, seeds=[0, 1], model="tiny")
    again = cached("sweep", compute, model="tiny", seeds=[0, 1])  # same key, other order
    other = cached("sweep", compute, seeds=[0, 2], model="tiny")
    assert len(calls) == 2
    assert torch.equal(first["x"], again["x"]) and torch.equal(first["x"], other["x"])
    assert len(list(tmp_path.glob("sweep-*.safetensors"))) == 2


def test_without_the_variable_nothing_is_kept(tmp_path, monkeypatch):
    monkeypatch.delenv(CACHE_ENV, raising=False)
    calls = []
    for _ in range(2):
        cached("sweep", lambda: calls.append(1) or {"x": torch.zeros(1)}, seed=0)
    assert len(calls) == 2


def test_bad_names_and_results_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="cache name"):
        cached("../escape", lambda: {"x": torch.zeros(1)})
    with pytest.raises(TypeError, match="dict of torch tensors"):
        cached("bad", lambda: [1, 2, 3])
