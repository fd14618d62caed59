"""Attention on every family (issue 15): SDXL's UNet, SD3's and SD3.5's MMDiT, Flux's double- and single-stream
blocks. Each capture is checked against attention written out by hand (an explicit softmax(QKᵀ/√d), no SDPA)
in the same run, the traced picture against the untraced one, and the memory the recorder keeps against the
memory computed before the run."""


import pytest
import torch
import torch.nn.functional as F
from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
from diffusers.models.attention_processor import CustomDiffusionAttnProcessor2_0, IPAdapterAttnProcessor2_0

import sdexplore
from sdexplore.capture.attention import AttentionCaptureTooLargeError, AttentionRecorder, UncapturableAttentionError
from sdexplore.capture.attention_memory import (
    Capture,
    attention_plan,
    kept_bytes,
    markdown_memory_table,
    native_memory_table,
)
from sdexplore.capture.attention_processor import AttentionLayer, attention_layers, bind_inputs, queries_and_keys
from sdexplore.prompts import Token, token_table

PROMPT = "a tabby cat on the beach"
RUN = dict(num_inference_steps=2, height=64, width=64, output_type="latent")
KINDS = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-sd35", "tiny-flux")
TEXT_LENGTH = {"tiny": 77, "tiny-sdxl": 77, "tiny-sd3": 77 + 256, "tiny-sd35": 77 + 256, "tiny-flux": 512}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_pipe(kind):
    """The tiny pipelines, and an SD3.5-shaped one: qk RMS norms and a second (image-only) attention in block 0."""
    if kind != "tiny-sd35":
        return sdexplore.tiny_pipeline(kind)
    pipe = sdexplore.tiny_pipeline("tiny-sd3")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        transformer = SD3Transformer2DModel(**{**pipe.transformer.config, "qk_norm": "rms_norm",
                                               "dual_attention_layers": (0,)}).eval()
    return StableDiffusion3Pipeline(**{**pipe.components, "transformer": transformer})


@pytest.fixture(scope="module")
def pipes():
    return {kind: make_pipe(kind) for kind in KINDS}


def generate(pipe, **extra):
    return pipe(PROMPT, generator=torch.Generator().manual_seed(0), **RUN, **extra).images


# --- token tables over the denoiser's text sequence (what the trace helper builds) ---------------


def clip_rows(tokenizer, prompt, offset=0):
    return [Token(t.position + offset, t.id, t.text, t.kind, t.word_index, t.word, t.truncated, "clip")
            for t in token_table(tokenizer, prompt)[:77]]


def t5_rows(tokenizer, prompt, length, offset=0):
    ids = tokenizer(prompt, padding="max_length", max_length=length, truncation=True).input_ids
    rows, word_index = [], -1
    for position, (token_id, piece) in enumerate(zip(ids, tokenizer.convert_ids_to_tokens(ids))):
        if token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
            kind, word = ("end" if token_id == tokenizer.eos_token_id else "padding"), None
        else:
            word_index += piece.startswith("▁")
            kind, word = "word", PROMPT.split()[word_index]
        rows.append(Token(position + offset, token_id, piece, kind, word_index if word else None, word, False, "t5"))
    return rows


def tables(pipe, kind):
    if kind in ("tiny-sd3", "tiny-sd35"):
        return [clip_rows(pipe.tokenizer, PROMPT) + t5_rows(pipe.tokenizer_3, PROMPT, 256, offset=77)]
    if kind == "tiny-flux":
        return [t5_rows(pipe.tokenizer_2, PROMPT, 512)]
    return [clip_rows(pipe.tokenizer, PROMPT)]


# --- attention written out by hand ----------------------------------------------------------------


class Explicit:
    """An attention processor written out with an explicit softmax(QKᵀ/√d) in float64 (no SDPA), for UNet
    cross/self attention, SD3's joint attention ([image, text]) and Flux's ([text, image], rotary, single stream).
    Keeps each call's probabilities [b, heads, Lq, Lk] and the lengths of its image and text parts."""

    def __init__(self, kept: list, text_length: int):
        self.kept, self.text_length = kept, text_length

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None):
        heads, flux = attn.heads, type(attn).__name__ == "FluxAttention"
        joint = getattr(attn, "add_q_proj", None) is not None and encoder_hidden_states is not None
        cross = encoder_hidden_states is not None and not joint
        source = encoder_hidden_states if cross else hidden_states
        q, k, v = (split(attn.to_q(hidden_states), heads), split(attn.to_k(source), heads),
                   split(attn.to_v(source), heads))
        q, k = norm(attn, "norm_q", q), norm(attn, "norm_k", k)
        n = hidden_states.shape[1]
        text = 0
        if joint:
            text = encoder_hidden_states.shape[1]
            cq, ck, cv = (split(proj(encoder_hidden_states), heads) for proj in
                          (attn.add_q_proj, attn.add_k_proj, attn.add_v_proj))
            cq, ck = norm(attn, "norm_added_q", cq), norm(attn, "norm_added_k", ck)
            q, k, v = (torch.cat([text, image] if flux else [image, text], dim=1)
                       for text, image in ((cq, q), (ck, k), (cv, v)))
        elif flux:  # single stream: the text is the start of the sequence
            text, n = self.text_length, n - self.text_length
        if image_rotary_emb is not None:
            q, k = rotate(q, image_rotary_emb), rotate(k, image_rotary_emb)
        logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
        probs = logits.softmax(-1)
        self.kept.append((probs.float(), n, text, flux, cross))
        out = torch.einsum("bhqk,bkhd->bqhd", probs, v.double()).to(v.dtype).flatten(2)
        if cross or not (joint or flux):
            return attn.to_out[1](attn.to_out[0](out))
        if not joint:
            return out
        image_out, text_out = (out[:, text:], out[:, :text]) if flux else (out[:, :n], out[:, n:])
        image_out = attn.to_out[1](attn.to_out[0](image_out))
        if getattr(attn, "to_add_out", None) is not None and not getattr(attn, "context_pre_only", False):
            text_out = attn.to_add_out(text_out)
        return image_out, text_out


def split(x, heads):
    return x.unflatten(-1, (heads, x.shape[-1] // heads))


def norm(attn, name, x):
    module = getattr(attn, name, None)
    return x if module is None else module(x)


def rotate(x, rotary):
    """Rotary embedding over [b, L, heads, d], pairs (2i, 2i+1) turned by the angles of cos/sin [L, d]."""
    cos, sin = (t[None, :, None, :].float() for t in rotary)
    pairs = x.float().unflatten(-1, (-1, 2))
    turned = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * cos + turned * sin).to(x.dtype)


def parts(probs, n, text, flux, cross):
    """(image→text, text→text, image→image) of one call, each renormalised over its keys (None where absent)."""
    def block(rows, cols):
        part = probs[:, :, rows][..., cols]
        return part / part.sum(-1, keepdim=True)

    if cross:
        return probs, None, None
    if text == 0:
        return None, None, probs
    image, words = (slice(text, None), slice(0, text)) if flux else (slice(0, n), slice(n, None))
    return block(image, words), block(words, words), block(image, image)


@pytest.fixture(scope="module")
def explicit_runs(pipes):
    """Per family: the recorder's maps (per layer, text→text, two patches) and the hand-written probabilities,
    from one run with the Explicit processor on every attention layer."""
    runs = {}
    for kind, pipe in pipes.items():
        denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
        kept = {}
        originals = dict(denoiser.attn_processors)
        for name, layer in attention_layers(denoiser).items():
            kept[name] = []
            layer.module.set_processor(Explicit(kept[name], TEXT_LENGTH[kind]))
        joint = kind not in ("tiny", "tiny-sdxl")
        try:
            with AttentionRecorder(pipe, "per_layer", text_to_text=joint, self_attention_patches=[(0, 0), (3, 1)],
                                   trusted_processors=[Explicit]) as recorder:
                generate(pipe, guidance_scale=2.0) if kind != "tiny-flux" else generate(pipe)
        finally:
            denoiser.set_attn_processor(originals)
        runs[kind] = (recorder, recorder.result(tables(pipe, kind)), kept)
    return runs


# --- what is recorded is what the model computes ---------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_traced_picture_is_the_untraced_picture(pipes, kind):
    pipe = pipes[kind]
    plain = generate(pipe)
    joint = kind not in ("tiny", "tiny-sdxl")
    for mode in ("aggregate", "per_layer"):
        with AttentionRecorder(pipe, mode, text_to_text=joint, self_attention_patches=[(1, 1)]) as recorder:
            traced = generate(pipe)
        assert torch.equal(traced, plain)
        assert recorder.num_steps == 2


@pytest.mark.parametrize("kind", KINDS)
def test_image_to_text_maps_equal_the_explicit_softmax(explicit_runs, kind):
    recorder, maps, kept = explicit_runs[kind]
    assert maps.num_tokens == TEXT_LENGTH[kind]
    expected_kinds = {"tiny": {"cross"}, "tiny-sdxl": {"cross"}, "tiny-sd3": {"joint"}, "tiny-sd35": {"joint"},
                      "tiny-flux": {"joint", "single"}}[kind]
    assert {layer.kind for layer in recorder.layers.values()} == expected_kinds
    assert maps.layer_names == list(recorder.layers)
    for name in maps.layer_names:
        assert len(kept[name]) == maps.num_steps == 2
        for step, call in enumerate(kept[name]):
            image_text = parts(*call)[0]
            rows = image_text.shape[0] // 2 if kind != "tiny-flux" else 0  # the text half of the CFG batch
            expected = image_text[rows:].mean(1)
            got = maps.layer_map(name, step).flatten(1, 2)
            torch.testing.assert_close(got, expected, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", ["tiny-sd3", "tiny-sd35", "tiny-flux"])
def test_text_to_text_maps_equal_the_explicit_softmax(explicit_runs, kind):
    recorder, maps, kept = explicit_runs[kind]
    for step in range(2):
        per_layer = [parts(*kept[name][step])[1] for name in recorder.layers]
        rows = per_layer[0].shape[0] // 2 if kind != "tiny-flux" else 0
        expected = torch.stack([p[rows:].mean(1) for p in per_layer]).mean(0)
        torch.testing.assert_close(maps.text_attention(steps=step), expected / expected.sum(-1, keepdim=True),
                                   atol=1e-3, rtol=0)
    assert maps.text_attention().shape == (1, TEXT_LENGTH[kind], TEXT_LENGTH[kind])


@pytest.mark.parametrize("kind", KINDS)
def test_image_to_image_patch_maps_equal_the_explicit_softmax(explicit_runs, kind):
    recorder, maps, kept = explicit_runs[kind]
    grid = maps.latent_size
    self_layers = list(recorder.self_layers)
    if kind == "tiny-sd35":
        assert "transformer_blocks.0.attn2" in self_layers  # SD3.5's image-only second attention counts too
    for step in range(2):
        for y, x in [(0, 0), (3, 1)]:
            layer_maps = []
            for name in self_layers:
                image_image = parts(*kept[name][step])[2]
                rows = image_image.shape[0] // 2 if kind != "tiny-flux" else 0
                side = int(image_image.shape[-1] ** 0.5)  # the tiny models' grids are square
                query = (y * side // grid[0]) * side + x * side // grid[1]
                one = image_image[rows:, :, query].mean(1).reshape(-1, 1, side, side)
                layer_maps.append(F.interpolate(one, size=grid, mode="bilinear", align_corners=False)[:, 0])
            expected = torch.stack(layer_maps).mean(0)
            expected = expected / expected.sum(dim=(-2, -1), keepdim=True)
            torch.testing.assert_close(maps.self_attention_map((y, x), steps=step), expected, atol=1e-3, rtol=0)
    with pytest.raises(ValueError, match=r"patch \(2, 2\) was not recorded.*\[\(0, 0\), \(3, 1\)\]"):
        maps.self_attention_map((2, 2))


def test_flux_rotary_embedding_is_applied(pipes):
    """Without the rotary embedding the recomputed maps would differ: the hook must see and use it."""
    pipe = pipes["tiny-flux"]
    layer = attention_layers(pipe.transformer)["transformer_blocks.0.attn"]
    seen = {}
    handle = layer.module.register_forward_pre_hook(lambda m, a, k: seen.setdefault("inputs", (a, k)) and None,
                                                    with_kwargs=True)
    try:
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **{**RUN, "num_inference_steps": 1})
    finally:
        handle.remove()
    inputs = bind_inputs(layer.module, *seen["inputs"])
    rotated = queries_and_keys(layer, inputs, slice(None), None)
    plain = queries_and_keys(layer, {**inputs, "image_rotary_emb": None}, slice(None), None)
    assert not torch.allclose(rotated.image_q, plain.image_q)


# --- token tables and words over each encoder -------------------------------------------------------


def test_words_over_each_encoder_on_sd3(explicit_runs):
    maps = explicit_runs["tiny-sd3"][1]
    clip = maps.word_positions("cat", encoder="clip")
    t5 = maps.word_positions("cat", encoder="t5")
    assert clip == [3] and t5 == [77 + 2]  # CLIP has a start token, T5 none
    assert maps.word_positions("cat") == clip + t5
    torch.testing.assert_close(maps.word_map("cat", encoder="t5"), maps.token_maps()[:, 79])
    torch.testing.assert_close(maps.word_map("cat"), maps.token_maps()[:, [3, 79]].sum(1))
    with pytest.raises(ValueError, match="encoder must be one of 'clip', 't5'.*got 'umt5'"):
        maps.word_map("cat", encoder="umt5")


def test_flux_maps_cover_the_t5_sequence(explicit_runs):
    maps = explicit_runs["tiny-flux"][1]
    assert maps.token_maps().shape == (1, 512, 4, 4)
    assert maps.word_positions("beach") == [5]
    assert maps.image_size == (64, 64)


# --- memory -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", [dict(mode="aggregate"), dict(mode="aggregate", keep="summed"),
                                     dict(mode="per_layer"), dict(mode="per_layer", per_head=True),
                                     dict(mode="aggregate", keep_negative=True, patches=2)])
def test_computed_memory_is_the_memory_kept(pipes, kind, options):
    pipe = pipes[kind]
    options = dict(options)
    patches = [(0, 0), (1, 2)][: options.pop("patches", 0)]
    joint = kind not in ("tiny", "tiny-sdxl")
    with AttentionRecorder(pipe, text_to_text=joint, self_attention_patches=patches, **options) as recorder:
        generate(pipe, guidance_scale=2.0)
    maps = recorder.result([])
    denoiser = recorder.denoiser
    guided = kind != "tiny-flux" and options.get("keep_negative")
    capture = Capture(mode=options["mode"], keep=options.get("keep", "per_step"),
                      per_head=options.get("per_head", False), steps=2, batch=2 if guided else 1,
                      negative=bool(guided), tokens=TEXT_LENGTH[kind], grid=maps.latent_size, text_to_text=joint,
                      patches=len(patches))
    assert maps.nbytes == kept_bytes(attention_plan(denoiser, maps.latent_size), capture)
    assert {name: (p.grid, p.heads) for name, p in attention_plan(denoiser, maps.latent_size).items()
            if name in maps.layer_sizes} == {name: (maps.layer_sizes[name], maps.layer_heads[name])
                                             for name in maps.layer_names}


def test_a_run_over_the_budget_is_refused_before_its_first_step(pipes):
    pipe = pipes["tiny-flux"]
    steps = []
    with pytest.raises(AttentionCaptureTooLargeError) as error:
        with AttentionRecorder(pipe, "per_layer", per_head=True, max_bytes=100_000):
            pipe(PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=lambda *a: steps.append(1)
                 or {}, **RUN)
    message = str(error.value)
    assert not steps
    # per_layer per_head: 2 steps x 512 tokens x 16 queries x (2 + 2 heads) x 2 bytes = 131072 bytes
    assert "would keep 128.0 KB (mode='per_layer', keep='per_step', per_head=True" in message
    assert "max_bytes=100000" in message
    assert "attention='aggregate' keeps 32.0 KB" in message and "attention='per_layer' without per_head" in message
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.transformer.modules())
    with pytest.raises(ValueError, match="max_bytes must be a positive number of bytes, got -1"):
        AttentionRecorder(pipe, max_bytes=-1)


def test_native_memory_table_is_computed_from_the_real_layer_counts():
    rows = {(r["family"], r["capture"]): r for r in native_memory_table()}
    sd15 = rows["SD1.5", "aggregate"]
    assert sd15["layers"] == 16 and sd15["bytes"] == 50 * 77 * 64 * 64 * 2
    # on the device: the 8 heads of the five 64x64 layers computed together (5 x 9.6 MB < BATCHED_LOGITS_BYTES),
    # one sum per grid (64², 32², 16², 8²) and the step's mean; per_layer: one layer's heads and every map
    assert sd15["device_bytes"] == 5 * 4 * 8 * 64**2 * 77 + 4 * 77 * (64**2 + 32**2 + 16**2 + 8**2) + 4 * 77 * 64**2
    per_layer_maps = 2 * 77 * (5 * 64**2 + 5 * 32**2 + 5 * 16**2 + 8**2)
    assert rows["SD1.5", "per_layer"]["device_bytes"] == 4 * 8 * 64**2 * 77 + per_layer_maps
    assert rows["SD1.5", "per_layer"]["bytes"] == 50 * 77 * 2 * (5 * 64**2 + 5 * 32**2 + 5 * 16**2 + 8**2)
    assert rows["SDXL", "aggregate"]["layers"] == 70
    assert rows["SD3-medium", "aggregate"]["layers"] == 24
    assert rows["SD3.5-large", "aggregate"]["layers"] == 38
    assert rows["Flux.1-dev", "aggregate"]["layers"] == 57
    assert rows["Flux.1-dev", "aggregate"]["bytes"] == 28 * 512 * 64 * 64 * 2
    assert rows["Flux.1-dev", "per_layer, per_head"]["bytes"] == 28 * 512 * 64 * 64 * 2 * 57 * 24


def test_readme_memory_table_is_the_computed_one():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_memory_table() in readme


# --- what cannot be captured, and processors that are modules ------------------------------------


def test_an_uncapturable_layer_is_an_error_naming_it_and_its_processor(pipes):
    pipe = make_pipe("tiny-sd3")

    class Opaque:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            raise AssertionError("never called: the recorder refuses before the run")

    pipe.transformer.transformer_blocks[1].attn.set_processor(Opaque())
    with pytest.raises(UncapturableAttentionError, match=r"(?s)1 attention layer\(s\).*transformer_blocks.1.attn "
                                                         r"\(Opaque\).*trusted_processors"):
        with AttentionRecorder(pipe):
            pass
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.transformer.modules())


def test_module_processors_keep_working_and_stay_in_place():
    """Custom diffusion's processors are nn.Modules with their own key projection: the picture is unchanged,
    the maps use the processor's keys, and the processors stay registered modules of the UNet."""
    pipe = sdexplore.tiny_pipeline("tiny")
    unet = pipe.unet
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        processors = {name: CustomDiffusionAttnProcessor2_0(train_kv=True, train_q_out=False,
                                                            hidden_size=unet.get_submodule(name[:-10]).to_q.out_features,
                                                            cross_attention_dim=32)
                      if "attn2" in name else proc for name, proc in unet.attn_processors.items()}
    unet.set_attn_processor(dict(processors))  # diffusers empties the dict it is given
    plain = generate(pipe)
    seen = {}
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = unet.get_submodule(name)
    handle = module.register_forward_pre_hook(lambda m, a, k: seen.setdefault("x", (a[0], k)) and None,
                                              with_kwargs=True)
    try:
        with AttentionRecorder(pipe, "per_layer") as recorder:
            traced = generate(pipe)
    finally:
        handle.remove()
    assert torch.equal(traced, plain)
    processor = processors[name + ".processor"]
    assert module.processor is processor and any(m is processor for m in unet.modules())
    hidden, kwargs = seen["x"]
    text = kwargs["encoder_hidden_states"]
    q = split(module.to_q(hidden), module.heads).transpose(1, 2)
    k = split(processor.to_k_custom_diffusion(text), module.heads).transpose(1, 2)
    expected = ((q @ k.transpose(-1, -2)) / q.shape[-1] ** 0.5).softmax(-1).mean(1)
    got = recorder.result([]).layer_map(name, 0).flatten(1, 2)
    torch.testing.assert_close(got, expected[expected.shape[0] // 2:], atol=1e-3, rtol=0)
    assert not torch.allclose(module.to_k.weight, processor.to_k_custom_diffusion.weight)


def test_ip_adapter_image_tokens_are_not_text():
    """IP-Adapter passes (text, image embeddings): the map is over the text only, with the module's own keys."""
    pipe = sdexplore.tiny_pipeline("tiny")
    name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    module = pipe.unet.get_submodule(name)
    module.set_processor(IPAdapterAttnProcessor2_0(hidden_size=module.to_q.out_features, cross_attention_dim=32,
                                                   num_tokens=(4,)))
    layer = AttentionLayer(name, module, "cross", module.heads)
    hidden, text, image = torch.randn(1, 64, 32), torch.randn(1, 77, 32), [torch.randn(1, 1, 4, 32)]
    with_image = queries_and_keys(layer, bind_inputs(module, (hidden,), {"encoder_hidden_states": (text, image)}),
                                  slice(None), None)
    assert with_image.text_k.shape == (1, module.heads, 77, 32 // module.heads)
    torch.testing.assert_close(with_image.text_k, split(module.to_k(text), module.heads).transpose(1, 2))
    # the older form, image tokens appended to the text: the last num_tokens positions are left out
    appended = torch.cat([text, image[0][:, 0]], dim=1)
    older = queries_and_keys(layer, {"hidden_states": hidden, "encoder_hidden_states": appended}, slice(None), None)
    torch.testing.assert_close(older.text_k, with_image.text_k)


def test_hooks_are_removed_after_an_error(pipes):
    for kind in ("tiny-sd3", "tiny-flux"):
        pipe = pipes[kind]

        def fail(*args):
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError, match="boom"):
            with AttentionRecorder(pipe, text_to_text=True, self_attention_patches=[(0, 0)]):
                generate(pipe, callback_on_step_end=fail)
        assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.transformer.modules())


def test_bad_options_are_named(pipes):
    with pytest.raises(ValueError, match="text_to_text=True needs joint attention"):
        AttentionRecorder(pipes["tiny-sdxl"], text_to_text=True)
    with pytest.raises(ValueError, match=r"self_attention_patches must be \(y, x\) grid positions.*got 'a'"):
        AttentionRecorder(pipes["tiny-sd3"], self_attention_patches=["a"])
    with pytest.raises(ValueError, match=r"self_attention_patches \[\(9, 0\)\] lie outside the 4x4 grid"):
        with AttentionRecorder(pipes["tiny-sd3"], self_attention_patches=[(9, 0)]):
            generate(pipes["tiny-sd3"])
    with pytest.raises(ValueError, match="unknown attention layer.*this transformer has: transformer_blocks.0.attn"):
        AttentionRecorder(pipes["tiny-flux"], layers=["nope"])
    maps = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, num_inference_steps=2).attention
    with pytest.raises(ValueError, match=r"text→text maps were not recorded.*text_to_text"):
        maps.text_attention()
    with pytest.raises(ValueError, match=r"image→image maps were not recorded.*self_attention_patches"):
        maps.self_attention_map((0, 0))


def test_relations_are_saved_and_loaded(explicit_runs, tmp_path):
    import json

    from safetensors.torch import load_file, save_file

    from sdexplore.capture.attention_maps import AttentionMaps

    maps = explicit_runs["tiny-flux"][1]
    save_file(maps.to_tensors(), tmp_path / "maps.safetensors")
    metadata = json.loads(json.dumps(maps.to_metadata()))
    loaded = AttentionMaps.from_saved(load_file(tmp_path / "maps.safetensors"), metadata, maps.tokens)
    assert loaded.relations == ["image_to_text", "text_to_text", "image_to_image"] and loaded.patches == maps.patches
    assert torch.equal(loaded.text_attention(steps=1), maps.text_attention(steps=1))
    assert torch.equal(loaded.self_attention_map((3, 1)), maps.self_attention_map((3, 1)))
    assert torch.equal(loaded.layer_map("single_transformer_blocks.0.attn", 0),
                       maps.layer_map("single_transformer_blocks.0.attn", 0))
    assert loaded.nbytes == maps.nbytes


@pytest.mark.parametrize("kind", ["tiny-sdxl", "tiny-sd3", "tiny-flux"])
def test_half_precision_models_are_recorded_in_float32_and_unchanged(kind):
    """bfloat16 weights (as the big models are run): the picture unchanged, the maps float32 distributions."""
    pipe = make_pipe(kind).to(dtype=torch.bfloat16)
    plain = generate(pipe)
    with AttentionRecorder(pipe, text_to_text=kind != "tiny-sdxl", self_attention_patches=[(1, 1)]) as recorder:
        traced = generate(pipe)
    assert torch.equal(traced, plain)
    maps = recorder.result([])
    assert maps.token_maps().dtype == torch.float32
    torch.testing.assert_close(maps.token_maps().sum(1), torch.ones(1, *maps.latent_size))
    torch.testing.assert_close(maps.self_attention_map((1, 1)).sum(), torch.tensor(1.0))


@pytest.mark.parametrize("kind, extra_call", [
    ("tiny-flux", dict(true_cfg_scale=2.0, negative_prompt="dog")),
    ("tiny-sd3", dict(skip_guidance_layers=[0], skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)),
])
def test_a_second_denoiser_call_per_step_keeps_the_prompts_maps(kind, extra_call):
    """Flux's true CFG and SD3's skip-layer guidance call the denoiser twice per step: the step keeps the first
    call's maps (the prompt's), so the maps line up with the steps and the first step equals a plain run's."""
    pipe = sdexplore.tiny_pipeline(kind)
    size = dict(height=64, width=64)
    extra = sdexplore.trace(pipe, "a cat by the sea", seed=0, num_inference_steps=3, attention=True,
                            **size, **extra_call)
    plain = sdexplore.trace(pipe, "a cat by the sea", seed=0, num_inference_steps=3, attention=True, **size)
    assert extra.attention.num_steps == extra.num_steps == 3
    first = extra.attention.token_maps(steps=[0])
    torch.testing.assert_close(first, plain.attention.token_maps(steps=[0]))
    assert not torch.equal(extra.latents[-1], plain.latents[-1])  # the extra call did change the run


@pytest.mark.parametrize("kind", ["tiny", "tiny-sd3", "tiny-flux"])
def test_the_token_grid_draws_every_token_of_77_and_the_prompt_of_longer_sequences(pipes, kind):
    from sdexplore.plot.attention import default_positions, token_grid

    run = sdexplore.trace(pipes[kind], PROMPT, seed=0, attention=True, **RUN)
    figure = token_grid(run)
    drawn = [ax for ax in figure.axes if ax.get_visible() and ax.images and ax.get_label() != "<colorbar>"]
    expected = 77 if kind == "tiny" else len(default_positions(run.attention))
    assert len(drawn) == expected and (kind == "tiny" or expected < TEXT_LENGTH[kind] // 4)
    titles = [ax.get_title() for ax in drawn]
    assert any(PROMPT.split()[1] in t for t in titles)  # a word of the prompt is among them
    chosen = token_grid(run, positions=[0, 1])
    assert len([ax for ax in chosen.axes if ax.get_visible() and ax.images and ax.get_label() != "<colorbar>"]) == 2
