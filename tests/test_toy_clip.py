"""The toy CLIP: its training (seeded, resumable), its shape, and its gates on the shipped weights."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPModel, CLIPTextConfig

from sdexplore.cache import cached
from sdexplore.toy import clip as toy_clip
from sdexplore.toy import clip_gates, world
from sdexplore.toy.model import build_tokenizer

TOY_TEXT_ENCODER = clip_gates.CLIP_WEIGHTS.parent / "text_encoder"


def _train(tmp_path, name, **overrides):
    config = toy_clip.TEST_CONFIG.__class__(**{**toy_clip.TEST_CONFIG.__dict__, "steps": 4, **overrides})
    return toy_clip.train_clip(config, out=tmp_path / name, workdir=tmp_path / f"{name}-work")


def test_training_is_seeded_and_resumes_where_it_stopped(tmp_path, monkeypatch):
    whole = _train(tmp_path, "whole")
    real_loss, calls = toy_clip.contrastive_loss, []

    def crash_on_third_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt("stopped")
        return real_loss(*args, **kwargs)

    monkeypatch.setattr(toy_clip, "contrastive_loss", crash_on_third_step)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path, "resumed")
    monkeypatch.setattr(toy_clip, "contrastive_loss", real_loss)
    resumed = _train(tmp_path, "resumed")  # picks up the step-2 checkpoint
    a, b = load_file(whole / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], msg=key)
    steps = [json.loads(line)["step"] for line in (tmp_path / "resumed-work" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4], "the resumed run logs steps 3 and 4 only once"
    summary = json.loads((resumed / "training.json").read_text())
    assert summary["steps_run"] == 4 and summary["config"]["seed"] == 0 and "machine" in summary
    with pytest.raises(FileExistsError, match="--overwrite"):
        _train(tmp_path, "whole")


def test_going_on_with_another_patch_size_keeps_all_but_the_patch_embeddings():
    from sdexplore.toy.model import SMALL, build_tokenizer

    tokenizer = build_tokenizer()
    eight = toy_clip.build_clip(tokenizer, size=SMALL, config=toy_clip.ClipTrainConfig(patch=8))
    four = toy_clip.build_clip(tokenizer, size=SMALL, config=toy_clip.ClipTrainConfig(patch=4))
    fresh = toy_clip.load_matching(four, eight.state_dict())
    assert sorted(fresh) == ["vision_model.embeddings.patch_embedding.weight",
                             "vision_model.embeddings.position_embedding.weight"]
    theirs, ours = eight.state_dict(), four.state_dict()
    for name in theirs:
        if name not in fresh:
            torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0, msg=name)
    wider = toy_clip.build_clip(tokenizer, size=SMALL, config=toy_clip.ClipTrainConfig(patch=8, projection_dim=64))
    with pytest.raises(ValueError, match="projection"):
        toy_clip.load_matching(wider, eight.state_dict())
    with pytest.raises(ValueError, match="divisor"):
        toy_clip.build_clip(tokenizer, size=SMALL, config=toy_clip.ClipTrainConfig(patch=7))


def test_a_clip_that_cannot_be_built_fails_before_the_scenes_are_rendered(tmp_path, monkeypatch):
    rendered = []
    monkeypatch.setattr(world, "make_dataset", lambda *args, **kwargs: rendered.append(1))
    with pytest.raises(ValueError, match="divisor"):
        _train(tmp_path, "bad", patch=7)
    assert not rendered


def test_fresh_batches_are_new_scenes_every_step_seeded_and_never_held_out():
    config = toy_clip.ClipTrainConfig(batch=16, fresh=True)
    first, first_captions = toy_clip.training_batch(None, None, 0, config)
    again, again_captions = toy_clip.training_batch(None, None, 0, config)
    second, _ = toy_clip.training_batch(None, None, 1, config)
    assert first.shape == (16, 3, 64, 64) and len(first_captions) == 16
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert first_captions == again_captions
    assert not torch.equal(first[:8], second[:8]), "each step draws its own scenes"


def test_fresh_batches_never_draw_a_held_out_object(monkeypatch):
    drawn, real = [], world.make_dataset
    monkeypatch.setattr(world, "make_dataset", lambda *a, **k: drawn.append(real(*a, **k)) or drawn[-1])
    for step in range(20):
        toy_clip.training_batch(None, None, step, toy_clip.ClipTrainConfig(batch=32, fresh=True))
    objects = [obj for _, _, scenes in drawn for scene in scenes for obj in scene.objects]
    assert len(objects) >= 20 * 16 and not any(world.is_held_out(obj) for obj in objects)


def test_fresh_training_renders_nothing_up_front(tmp_path, monkeypatch):
    sizes = []
    real = world.make_dataset
    monkeypatch.setattr(world, "make_dataset", lambda n, *a, **k: sizes.append(n) or real(n, *a, **k))
    out = _train(tmp_path, "fresh", fresh=True)
    assert sizes == [4] * 4, "one half-batch of new scenes per step, no dataset"
    assert json.loads((out / "training.json").read_text())["config"]["fresh"] is True


def test_processor_matches_the_training_pixels():
    processor = toy_clip.build_processor(build_tokenizer())
    images, _, _ = world.make_dataset(3, seed=5)
    from_processor = processor(images=list(images), return_tensors="pt").pixel_values
    torch.testing.assert_close(from_processor, toy_clip.pixel_values(images), rtol=1e-4, atol=1e-4)


def test_shipped_clip_loads_and_the_text_encoder_is_its_text_tower_cut_to_one_layer():
    """SD's recipe: the toy's text encoder is the CLIP's text tower with its first layer only (notebook 11;
    test_toy_folder checks the weights are the tower's own)."""
    clip, processor = clip_gates.load_toy_clip()
    assert isinstance(clip, CLIPModel)
    mine, toy = clip.config.text_config, CLIPTextConfig.from_pretrained(TOY_TEXT_ENCODER)
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads",
                  "max_position_embeddings", "eos_token_id", "pad_token_id"):
        assert getattr(mine, field) == getattr(toy, field), field
    assert toy.num_hidden_layers == 1 < mine.num_hidden_layers == 3
    caption = world.canonical_prompt(world.held_out_prompts(1)[0])
    assert processor.tokenizer(caption).input_ids == build_tokenizer()(caption).input_ids
    summary = json.loads((clip_gates.CLIP_WEIGHTS / "training.json").read_text())
    assert {"seed", "steps_run", "train_minutes", "machine"} <= set(summary) | set(summary["config"])
    gates = summary["gates"]
    assert gates["passed"] == all(gates[k] >= t for k, t in clip_gates.THRESHOLDS.items())


def _gate_results():
    def compute():
        clip, processor = clip_gates.load_toy_clip()
        zero_shot = clip_gates.zero_shot(clip, processor.tokenizer, n=150)
        matrix = clip_gates.similarity_matrix(clip, processor.tokenizer)
        return {"zero_shot": torch.tensor([zero_shot[k] for k in ("kind", "color", "position")]),
                "similarity": matrix["similarity"], "images": torch.from_numpy(matrix["images"])}

    return cached("toy_clip_gates", compute, n=150, seed=clip_gates.EVAL_SEED)


def test_zero_shot_gates_on_held_out_scenes():
    """Kind, colour and position clear the issue's goals on held-out (kind, colour, position) combinations
    (kind 0.97 on these 150 scenes; the CLIP shipped before training on fresh scenes reached 0.79)."""
    kind, color, position = _gate_results()["zero_shot"].tolist()
    assert kind >= clip_gates.THRESHOLDS["kind"]
    assert color >= clip_gates.THRESHOLDS["color"]
    assert position >= clip_gates.THRESHOLDS["position"]


def test_the_kind_word_mixes_with_its_caption_more_with_every_clip_layer():
    """README (SD's recipe): after each layer of the toy CLIP's text tower, the kind word's state looks more
    like its whole caption; the shipped text encoder, that tower's first layer (frozen), mixes as the CLIP
    does after layer 1, less than the CLIP's last layer."""
    from transformers import CLIPTextModel, CLIPTokenizer

    clip, processor = clip_gates.load_toy_clip()
    mixing = clip_gates.word_mixing(clip.text_model, processor.tokenizer)
    assert len(mixing) == 3 and mixing[0] < mixing[1] < mixing[2]
    assert mixing == pytest.approx([0.44, 0.57, 0.65], abs=0.01)
    shipped = CLIPTextModel.from_pretrained(TOY_TEXT_ENCODER)
    tokenizer = CLIPTokenizer.from_pretrained(TOY_TEXT_ENCODER.parent / "tokenizer")
    assert clip_gates.word_mixing(shipped, tokenizer) == pytest.approx(mixing[:1], abs=1e-6)


def test_five_images_five_captions_pairs_on_the_diagonal():
    similarity = _gate_results()["similarity"]
    assert similarity.shape == (5, 5)
    assert clip_gates.pairs_on_diagonal(similarity) == 1.0
    assert bool((similarity.diagonal() > similarity.mean()).all())


def test_similarity_matrix_figure():
    from sdexplore.plot.clip import plot_similarity_matrix

    results = _gate_results()
    captions = [world.canonical_prompt(s) for s in clip_gates.five_scenes()]
    figure = plot_similarity_matrix(results["similarity"], results["images"].numpy(), captions)
    assert len(figure.axes) == 5 + 1 + 1  # five pictures, the matrix, its colour bar
    with pytest.raises(ValueError, match="similarity"):
        plot_similarity_matrix(np.zeros((4, 5)), results["images"].numpy(), captions)
