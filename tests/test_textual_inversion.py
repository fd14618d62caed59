"""Textual inversion on the tiny pipeline: one row learned, everything else frozen, diffusers' file format."""

import json

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.studies import inversion
from sdexplore.textual_inversion import (
    load_textual_inversion,
    save_textual_inversion,
    train_textual_inversion,
)

TOKEN = "<sdx-thing>"


@pytest.fixture()
def fresh():
    return sdexplore.load_pipeline("tiny")


def pictures_and_captions(count=3):
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (count, 64, 64, 3), dtype=np.uint8)
    return pictures, [f"a photo of {TOKEN}"] * count


def test_training_moves_only_the_new_row_lowers_the_loss_and_logs_every_step(fresh, tmp_path):
    before = {name: tensor.clone() for module in (fresh.unet, fresh.vae, fresh.text_encoder)
              for name, tensor in module.state_dict().items()}
    old_rows = fresh.text_encoder.get_input_embeddings().weight.shape[0]
    pictures, captions = pictures_and_captions()
    log = tmp_path / "loss.jsonl"
    learned = train_textual_inversion(fresh, pictures, captions, token=TOKEN, initializer="cat", steps=30,
                                      learning_rate=5e-2, log_path=log, progress=False)
    table = fresh.text_encoder.get_input_embeddings().weight
    assert learned["token_id"] == old_rows and table.shape[0] == old_rows + 1
    assert torch.equal(table[learned["token_id"]], learned["embedding"])
    assert not torch.allclose(learned["embedding"], learned["initial"])
    for module in (fresh.unet, fresh.vae, fresh.text_encoder):
        for name, tensor in module.state_dict().items():
            old = before[name]
            if tensor.shape != old.shape:  # the embedding table: old rows untouched
                assert torch.equal(tensor[:old_rows], old), name
            else:
                assert torch.equal(tensor, old), name
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(30))
    assert np.mean([line["loss"] for line in lines[-10:]]) < np.mean([line["loss"] for line in lines[:10]])


def test_training_is_seeded():
    vectors = []
    for _ in range(2):
        pipe = sdexplore.load_pipeline("tiny")
        pictures, captions = pictures_and_captions(2)
        vectors.append(train_textual_inversion(pipe, pictures, captions, token=TOKEN, initializer="cat", steps=3,
                                               seed=5, progress=False)["embedding"])
    assert torch.equal(vectors[0], vectors[1])


def test_saved_file_loads_into_a_fresh_pipeline_through_diffusers(fresh, tmp_path):
    pictures, captions = pictures_and_captions(2)
    learned = train_textual_inversion(fresh, pictures, captions, token=TOKEN, initializer="cat", steps=3,
                                      progress=False)
    path = save_textual_inversion(tmp_path / "thing.safetensors", TOKEN, learned["embedding"])
    other = sdexplore.load_pipeline("tiny")
    token_id = load_textual_inversion(other, path)
    assert other.tokenizer.convert_ids_to_tokens(token_id) == TOKEN
    assert torch.equal(other.text_encoder.get_input_embeddings().weight[token_id], learned["embedding"])
    ids = other.tokenizer(f"a photo of {TOKEN}").input_ids
    assert token_id in ids
    with_token = other.encode_prompt(f"a photo of {TOKEN}", "cpu", 1, False)[0]
    same = fresh.encode_prompt(f"a photo of {TOKEN}", "cpu", 1, False)[0]
    assert torch.allclose(with_token, same, atol=1e-6)  # the loaded pipeline reads the prompt as the trained one


def test_bad_input_is_refused_with_what_is_allowed(fresh, tmp_path):
    pictures, captions = pictures_and_captions(2)
    with pytest.raises(ValueError, match="one caption per picture"):
        train_textual_inversion(fresh, pictures, captions[:1], token=TOKEN, initializer="cat", steps=1)
    with pytest.raises(ValueError, match="must contain the token"):
        train_textual_inversion(fresh, pictures, ["a cat", "a dog"], token=TOKEN, initializer="cat", steps=1)
    with pytest.raises(ValueError, match="steps must be a positive int"):
        train_textual_inversion(fresh, pictures, captions, token=TOKEN, initializer="cat", steps=0)
    with pytest.raises(ValueError, match="initializer must be one token"):
        train_textual_inversion(fresh, pictures, captions, token=TOKEN, initializer="bozuman", steps=1)
    with pytest.raises(ValueError, match="pictures must be uint8"):
        train_textual_inversion(fresh, pictures.astype(np.float32), captions, token=TOKEN, initializer="cat")
    with pytest.raises(ValueError, match="already in the tokenizer's vocabulary"):
        train_textual_inversion(fresh, pictures, ["a photo of cat"] * 2, token="cat", initializer="cat", steps=1)
    with pytest.raises(ValueError, match=r"\.safetensors"):
        save_textual_inversion(tmp_path / "thing.pt", TOKEN, torch.zeros(4))


def test_the_training_sets_show_what_their_captions_say():
    pictures, captions = inversion.concept_training_set("<c>")
    assert pictures.shape == (5, 64, 64, 3) and all("<c>" in caption for caption in captions)
    assert inversion.judge_concept(pictures)["both"] >= 0.8  # the judge sees orange cats
    marked, mark_captions = inversion.mark_training_set("<m>")
    assert inversion.mark_presence(marked).min() == 1.0
    plain = np.stack([np.full((64, 64, 3), value, np.uint8) for value in (0, 128, 255)])
    assert inversion.mark_presence(plain).max() == 0.0 and inversion.mark_colour_share(plain).max() == 0.0
    assert all(caption.endswith(", <m>") for caption in mark_captions)
