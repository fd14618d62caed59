"""The shipped toy folder is a standard Stable Diffusion folder: CLIP's tokenizer files, transformers' weight
names, its own approx-preview map; and re-saving it that way changed no weight."""

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import CLIPTextModel, CLIPTokenizer

import sdexplore
from sdexplore.decode import LATENT_FORMATS, LATENT_RGB_FILE, latent_rgb_for, load_latent_rgb, to_pil
from sdexplore.models import TOY_WEIGHTS
from sdexplore.toy import train
from sdexplore.toy.folder import TEXT_MODEL_PREFIX, prefix_text_encoder_weights, preview_colour_error

PROMPTS = ["a photo of a large orange tabby cat with green eyes on the left, sea background",
           "a grey kitten and a red ball", "bozuman XYZ kitten!!  palm   tree", ""]
# sha256 over (name without text_model., raw bytes) of every text encoder tensor: the values the notebooks' claims
# were measured on. Retraining the toy changes it.
TEXT_ENCODER_VALUES = "64068dde32e47fc671289a57c66ac5377df56d8aab142cc7fa5e7400c3956269"


def ids(tokenizer) -> list[list[int]]:
    return [tokenizer(p, padding="max_length", max_length=77, truncation=True).input_ids for p in PROMPTS]


def values_digest(tensors: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for name in sorted(tensors, key=lambda n: n.removeprefix(TEXT_MODEL_PREFIX)):
        digest.update(name.removeprefix(TEXT_MODEL_PREFIX).encode())
        digest.update(tensors[name].numpy().tobytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def toy():
    return sdexplore.load_pipeline("toy")


# --- tokenizer ---------------------------------------------------------------------------------------


def test_the_tokenizer_ships_as_clips_two_files_that_give_the_same_ids(tmp_path):
    folder = TOY_WEIGHTS / "tokenizer"
    assert (folder / "merges.txt").read_text().startswith("#version:")  # CLIP's reader skips this header line
    from_folder = CLIPTokenizer.from_pretrained(folder)
    from_files = CLIPTokenizer(vocab=str(folder / "vocab.json"), merges=str(folder / "merges.txt"))
    only_files = tmp_path / "tokenizer"  # a folder without tokenizer.json, as older tools write it
    only_files.mkdir()
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        shutil.copy(folder / name, only_files / name)
    reloaded = CLIPTokenizer.from_pretrained(only_files)
    expected = ids(from_folder)
    assert ids(from_files) == ids(reloaded) == expected
    assert from_files.tokenize(PROMPTS[0]) == [f"{word}</w>" for word in PROMPTS[0].replace(",", " ,").split()]
    assert len(from_files.tokenize("bozuman")) > 1  # an unknown word: sub-words, never <unk>
    vocab = json.loads((folder / "vocab.json").read_text())
    assert vocab == from_folder.get_vocab() and len(vocab) == len(from_folder)


# --- text encoder ------------------------------------------------------------------------------------


def test_text_encoder_weights_carry_transformers_text_model_names():
    tensors = load_file(TOY_WEIGHTS / "text_encoder" / "model.safetensors")
    assert tensors and all(name.startswith(TEXT_MODEL_PREFIX) for name in tensors)
    model, info = CLIPTextModel.from_pretrained(TOY_WEIGHTS / "text_encoder", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    # transformers >= 5.x flattened CLIPTextModel (its own names lack the prefix); earlier ones keep it
    loaded = {name.removeprefix(TEXT_MODEL_PREFIX): value for name, value in model.state_dict().items()}
    assert {name.removeprefix(TEXT_MODEL_PREFIX) for name in tensors} == set(loaded)
    assert all(torch.equal(loaded[name.removeprefix(TEXT_MODEL_PREFIX)], value) for name, value in tensors.items())


def test_the_re_save_kept_every_weight_value():
    assert values_digest(load_file(TOY_WEIGHTS / "text_encoder" / "model.safetensors")) == TEXT_ENCODER_VALUES


def test_the_text_encoder_is_the_shipped_clips_text_tower_cut_to_its_first_layer():
    """SD's recipe: the text encoder is CLIP's, not trained with the UNet; kept are the embeddings, the first
    layer and the final norm (as diffusers ships SD 2's text encoder without OpenCLIP's last layer)."""
    encoder = load_file(TOY_WEIGHTS / "text_encoder" / "model.safetensors")
    clip = load_file(TOY_WEIGHTS / "clip" / "model.safetensors")
    tower = {name: value for name, value in clip.items() if name.startswith(TEXT_MODEL_PREFIX)}
    first_layer = {name for name in tower if ".encoder.layers." not in name or ".encoder.layers.0." in name}
    assert set(encoder) == first_layer and len(tower) > len(encoder)
    assert all(torch.equal(encoder[name], tower[name]) for name in encoder)


def test_the_toys_picture_is_bitwise_the_one_from_transformers_5s_own_names(toy, tmp_path):
    """The shipped (text_model.) file and the same tensors under the names the installed transformers writes
    (unprefixed since transformers flattened CLIPTextModel) give bitwise the same text embeddings and picture."""
    tensors = load_file(TOY_WEIGHTS / "text_encoder" / "model.safetensors")
    own_names = {name.removeprefix(TEXT_MODEL_PREFIX): name for name in toy.text_encoder.state_dict()}
    save_file({own_names[name.removeprefix(TEXT_MODEL_PREFIX)]: value for name, value in tensors.items()},
              tmp_path / "model.safetensors", metadata={"format": "pt"})
    shutil.copy(TOY_WEIGHTS / "text_encoder" / "config.json", tmp_path / "config.json")
    unprefixed = CLIPTextModel.from_pretrained(tmp_path).eval()
    token_ids = torch.tensor(ids(toy.tokenizer))
    with torch.no_grad():
        assert torch.equal(unprefixed(token_ids)[0], toy.text_encoder(token_ids)[0])
    call = dict(prompt=PROMPTS[0], num_inference_steps=10, output_type="np")
    shipped = toy(**call, generator=torch.Generator().manual_seed(0)).images
    other = sdexplore.load_pipeline("toy")
    other.text_encoder = unprefixed
    assert (other(**call, generator=torch.Generator().manual_seed(0)).images == shipped).all()


def test_prefixing_is_byte_for_byte_and_idempotent(tiny, tmp_path):
    tiny.text_encoder.save_pretrained(tmp_path)
    before = load_file(tmp_path / "model.safetensors")
    prefix_text_encoder_weights(tmp_path)
    once = (tmp_path / "model.safetensors").read_bytes()
    prefix_text_encoder_weights(tmp_path)
    assert (tmp_path / "model.safetensors").read_bytes() == once
    after = load_file(tmp_path / "model.safetensors")
    assert values_digest(after) == values_digest(before)
    assert all(name.startswith(TEXT_MODEL_PREFIX) for name in after)


# --- approx previews ---------------------------------------------------------------------------------


def test_the_toy_ships_its_fitted_preview_map_and_its_previews_use_it(toy):
    shipped = load_latent_rgb(TOY_WEIGHTS / LATENT_RGB_FILE)
    record = json.loads((TOY_WEIGHTS / LATENT_RGB_FILE).read_text())
    assert record["channels"] == 4 and "fit_latent_rgb" in record["fitted"]["by"]
    assert torch.equal(latent_rgb_for(toy).weights, shipped.weights)
    run = sdexplore.trace(toy, PROMPTS[0], seed=3, num_inference_steps=10)
    assert run.preview(-1)[0].tobytes() == to_pil(shipped(run.x0[-1]), upscale=8)[0].tobytes()
    # on the toy's own x0 (not what it was fitted on), far closer to its VAE's colours than SD 1.x's map
    latents = run.x0[[3, 6, 9]].flatten(0, 1)
    fitted_error = preview_colour_error(shipped, toy.vae, latents)
    sd1_error = preview_colour_error(LATENT_FORMATS["sd1"].latent_rgb, toy.vae, latents)
    assert fitted_error < 0.5 * sd1_error


# --- the trainer writes the same format ---------------------------------------------------------------


def test_a_retrained_toy_folder_has_every_standard_part(tmp_path):
    out = train.train(train.TEST_CONFIG, out=tmp_path / "out", workdir=tmp_path / "work")
    assert all(name.startswith(TEXT_MODEL_PREFIX) for name in load_file(out / "text_encoder" / "model.safetensors"))
    tokenizer = CLIPTokenizer(vocab=str(out / "tokenizer" / "vocab.json"), merges=str(out / "tokenizer" / "merges.txt"))
    assert ids(tokenizer) == ids(CLIPTokenizer.from_pretrained(out / "tokenizer"))
    pipe = sdexplore.load_pipeline(out)
    fitted = load_latent_rgb(out / LATENT_RGB_FILE)
    assert torch.equal(latent_rgb_for(pipe).weights, fitted.weights) and fitted.channels == 4
    assert json.loads((out / LATENT_RGB_FILE).read_text())["fitted"]["pictures"].startswith(
        f"{train.TEST_CONFIG.latent_rgb_images} toy-world scenes")
