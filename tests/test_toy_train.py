"""Training code of the toy model: a few steps of each part on a tiny config, resume, a loadable folder."""

import json
from dataclasses import replace

import pytest
import torch

import sdexplore
from sdexplore.toy import train, world
from sdexplore.toy.model import build_text_encoder, build_tokenizer, build_unet


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("toy")
    out = train.train(train.TEST_CONFIG, out=root / "out", workdir=root / "work")
    return root, out


def test_training_writes_a_diffusers_folder_that_loads_and_traces(trained):
    _, out = trained
    pipe = sdexplore.load_pipeline(out)
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    size = train.TEST_CONFIG.size.image
    run = sdexplore.trace(pipe, "a grey kitten on the left, sea background", seed=0, num_inference_steps=2,
                          height=size, width=size)
    assert run.latents.shape[2] == 4 and run.images[0].size == (size, size)
    summary = json.loads((out / "training.json").read_text())
    assert summary["config"]["unet_steps_run"] == train.TEST_CONFIG.unet_steps
    assert summary["config"]["device"] == "cpu" and summary["device"].startswith("CPU, ")
    assert pipe.vae.config.scaling_factor != 0.18215  # measured from the trained VAE's latents


def test_every_logged_loss_is_finite_and_both_stages_ran(trained):
    root, _ = trained
    records = [json.loads(line) for line in (root / "work" / "log.jsonl").read_text().splitlines()]
    assert {r["stage"] for r in records} == {"vae", "denoiser"}
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)


def test_training_resumes_from_its_checkpoint(trained):
    root, _ = trained
    work = root / "work"
    state = json.loads((work / "denoiser.json").read_text())
    assert state["step"] == train.TEST_CONFIG.unet_steps
    from safetensors import safe_open

    with safe_open(str(work / "denoiser.safetensors"), framework="pt") as handle:
        assert any(k.startswith("adam.exp_avg.unet.") for k in handle.keys())
    unet = build_unet(train.TEST_CONFIG.size, latent_size=train.TEST_CONFIG.size.image // 4)
    modules = {"text_encoder": build_text_encoder(train.load_tokenizer(train.TEST_CONFIG), train.TEST_CONFIG.size),
               "unet": unet}
    optimizer = torch.optim.AdamW([p for module in modules.values() for p in module.parameters()])
    assert train.load_checkpoint(work / "denoiser", modules, optimizer)["step"] == state["step"]
    restored = optimizer.state[next(unet.parameters())]
    assert restored["step"].device.type == "cpu" and restored["step"].ndim == 0  # Adam keeps its count on the CPU
    assert restored["exp_avg"].device == next(unet.parameters()).device
    before = len((work / "log.jsonl").read_text().splitlines())
    # the same workdir with a longer run: the denoiser continues from its saved step, the VAE is not retrained
    longer = replace(train.TEST_CONFIG, unet_steps=train.TEST_CONFIG.unet_steps + 2)
    (work / "denoiser.json").write_text(json.dumps({**state, "total": longer.unet_steps}))
    train.train(longer, out=root / "out2", workdir=work)
    new = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()[before:]]
    assert [r["step"] for r in new if r["stage"] == "denoiser"] == [3, 4]
    assert not [r for r in new if r["stage"] == "vae"]
    # time counts over both sittings: the log and training.json go on from the checkpoint's seconds
    assert state["elapsed_s"] > 0 and all(r["elapsed_s"] > state["elapsed_s"] for r in new)
    minutes = json.loads((root / "out2" / "training.json").read_text())["training_minutes"]
    assert set(minutes) == {"vae", "denoiser"} and minutes["denoiser"] * 60 > state["elapsed_s"]


def test_the_learning_rate_warms_up_then_decays():
    rates = [train.learning_rate(s, 100, 1.0, 10) for s in range(100)]
    assert rates[0] < rates[9] == 1.0 and rates[-1] < 0.2 and min(rates[10:]) >= 0.1


def test_the_toy_tokenizer_knows_every_caption_word_and_never_crashes_on_others():
    tokenizer = build_tokenizer()
    for word in world.WORDS:
        assert len(tokenizer(word, add_special_tokens=False).input_ids) == 1, word
    ids = tokenizer("a bozuman xylophone", add_special_tokens=False).input_ids
    assert len(ids) > 3 and tokenizer.unk_token_id not in ids  # unseen words fall back to sub-words
    assert tokenizer.decode(ids).replace(" ", "") == "abozumanxylophone"
    odd = tokenizer("zqj café 123 !?", add_special_tokens=False).input_ids  # accents, digits, punctuation
    assert odd and tokenizer.unk_token_id not in odd


def test_a_model_already_in_the_output_folder_is_never_replaced(trained, tmp_path):
    _, out = trained  # a folder that holds a trained model
    before = (out / "model_index.json").read_bytes()
    with pytest.raises(FileExistsError, match="already holds a model"):
        train.train(train.TEST_CONFIG, out=out, workdir=tmp_path / "work")
    assert train.main(["--test", "--out", str(out), "--workdir", str(tmp_path / "work")]) == 2
    assert (out / "model_index.json").read_bytes() == before and not (tmp_path / "work").exists()


def test_sd_recipe_trains_the_unet_on_clips_frozen_text_tower(tmp_path):
    """--text-encoder-from: the text encoder is the CLIP's text tower, unchanged by training, with the CLIP's
    tokenizer; the CLIP ships beside it in clip/."""
    from transformers import CLIPModel

    from sdexplore.toy import clip as toy_clip

    tokenizer = build_tokenizer()
    small = train.TEST_CONFIG.size
    clip = toy_clip.build_clip(tokenizer, size=small, config=toy_clip.ClipTrainConfig(patch=8))
    clip.save_pretrained(tmp_path / "clip")
    tokenizer.save_pretrained(tmp_path / "clip")
    config = replace(train.TEST_CONFIG, text_encoder_from=str(tmp_path / "clip"), pair_share=0.5)
    out = train.train(config, out=tmp_path / "out", workdir=tmp_path / "work")
    pipe = sdexplore.load_pipeline(out)
    tower = CLIPModel.from_pretrained(out / "clip").text_model.state_dict()
    for key, value in pipe.text_encoder.state_dict().items():
        torch.testing.assert_close(value, tower[key], rtol=0, atol=0, msg=key)
    assert pipe.tokenizer("a cat").input_ids == tokenizer("a cat").input_ids
    state = json.loads((tmp_path / "work" / "denoiser.json").read_text())
    assert state["step"] == config.unet_steps
    from safetensors import safe_open

    with safe_open(str(tmp_path / "work" / "denoiser.safetensors"), framework="pt") as handle:
        assert not any(".text_encoder." in k or k.startswith("text_encoder.") for k in handle.keys())
    assert json.loads((out / "training.json").read_text())["config"]["text_encoder_from"] == str(tmp_path / "clip")


def test_a_truncated_tower_is_the_clips_earlier_layer_through_its_final_norm(tmp_path):
    """--text-layers N (SD 2's penultimate layer): the text encoder's output is the full tower's hidden
    state after layer N, through the final layer norm; impossible counts and a missing CLIP are refused."""
    from sdexplore.toy import clip as toy_clip

    tokenizer = build_tokenizer()
    clip = toy_clip.build_clip(tokenizer, size=train.TEST_CONFIG.size, config=toy_clip.ClipTrainConfig(patch=8))
    clip.save_pretrained(tmp_path / "clip")
    layers = clip.config.text_config.num_hidden_layers
    ids = tokenizer(["a red ball on the left"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = clip.text_model(input_ids=ids, output_hidden_states=True).hidden_states
        for keep in range(1, layers + 1):
            tower = train.frozen_text_tower(tmp_path / "clip", keep)
            assert tower.config.num_hidden_layers == keep and not any(p.requires_grad for p in tower.parameters())
            expected = clip.text_model.final_layer_norm(hidden[keep])
            torch.testing.assert_close(tower(ids)[0], expected, rtol=0, atol=1e-6)
    for bad in (0, layers + 1):
        with pytest.raises(train.TrainingSetupError, match=f"has {layers} text layers"):
            train.frozen_text_tower(tmp_path / "clip", bad)
    # refused before rendering, or the VAE stage
    with pytest.raises(train.TrainingSetupError, match=f"has {layers} text layers"):
        train.train(replace(train.TEST_CONFIG, text_encoder_from=str(tmp_path / "clip"), text_layers=layers + 1),
                    out=tmp_path / "out", workdir=tmp_path / "work")
    with pytest.raises(train.TrainingSetupError, match="give text_encoder_from"):
        train.train(replace(train.TEST_CONFIG, text_layers=1), out=tmp_path / "out", workdir=tmp_path / "work")
    with pytest.raises(SystemExit):
        train.main(["--test", "--text-layers", "1", "--out", str(tmp_path / "out"),
                    "--workdir", str(tmp_path / "work")])
    assert not (tmp_path / "work").exists()


def test_going_on_from_a_folder_keeps_that_folders_tokenizer(tmp_path):
    """--init-from: the ids the text encoder was trained with are the folder's, even when today's
    build_tokenizer() would number the words otherwise."""
    tokenizer = build_tokenizer()
    tokenizer.add_tokens(["zebra"])  # a folder whose tokenizer differs from a fresh one
    tokenizer.save_pretrained(tmp_path / "tokenizer")
    loaded = train.load_tokenizer(replace(train.TEST_CONFIG, init_from=str(tmp_path)))
    assert loaded("zebra", add_special_tokens=False).input_ids == [len(build_tokenizer())]
    assert len(train.load_tokenizer(train.TEST_CONFIG)) == len(build_tokenizer())


def test_a_device_that_cannot_train_here_is_refused_before_any_work(tmp_path, capsys):
    for device, message in (("gpu", "is not a torch device"), ("meta", "trains on cpu or cuda")) + \
            ((("cuda", "no CUDA GPU is available"),) if not torch.cuda.is_available() else ()):
        with pytest.raises(train.TrainingSetupError, match=message):
            train.train(replace(train.TEST_CONFIG, device=device), out=tmp_path / "out", workdir=tmp_path / "work")
        assert not (tmp_path / "work").exists()  # nothing rendered, nothing written
    arguments = ["--test", "--device", "gpu", "--out", str(tmp_path / "o"), "--workdir", str(tmp_path / "w")]
    assert train.main(arguments) == 2
    assert "is not a torch device" in capsys.readouterr().err


def test_main_prints_setup_errors_but_lets_other_errors_raise(tmp_path, monkeypatch, capsys):
    """Only a refused configuration becomes a one-line error; a ValueError from inside training is a bug and keeps
    its traceback."""
    def broken(*args, **kwargs):
        raise ValueError("a tensor of the wrong shape, deep inside training")

    monkeypatch.setattr(train, "train", broken)
    with pytest.raises(ValueError, match="deep inside training"):
        train.main(["--test", "--out", str(tmp_path / "o"), "--workdir", str(tmp_path / "w")])
    assert "error:" not in capsys.readouterr().err
