"""Cross-attention maps on SD1/2 (issues 3 and 15): capture, correctness, access, saving, pictures, bad input."""

import inspect
import io

import matplotlib
import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from PIL import Image

import sdexplore
from sdexplore.capture.attention import AttentionRecorder, UncapturableAttentionError
from sdexplore.capture.attention_processor import (
    AttentionLayer,
    bind_inputs,
    cross_attention_layers,
    mask_block,
    probabilities,
    queries_and_keys,
)

matplotlib.use("Agg")

FAST = dict(num_inference_steps=3, height=64, width=64)
PROMPT = "a tabby cat on the beach"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipes():
    return {kind: sdexplore.tiny_pipeline(kind) for kind in ("tiny", "tiny-sd2", "tiny-inpaint")}


@pytest.fixture(scope="module")
def run(pipes):
    return sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, **FAST)


@pytest.fixture(scope="module")
def layered(pipes):
    return sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention="per_layer", **FAST)


def _inputs(kind):
    if kind != "tiny-inpaint":
        return {}
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    mask = Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16))
    return {"image": image, "mask_image": mask}


def _all_processors(pipe):
    return dict(pipe.unet.attn_processors)


# --- capture --------------------------------------------------------------------------------


def test_default_maps_are_distributions_over_77_tokens(run):
    maps = run.attention.token_maps()
    assert maps.shape == (1, 77, 8, 8)
    torch.testing.assert_close(maps.sum(1), torch.ones(1, 8, 8))
    assert run.attention.word_map("cat").shape == (1, 8, 8)
    assert run.attention.num_steps == run.num_steps == 3


def test_layer_names_are_diffusers_names(pipes, run):
    names = run.attention.layer_names
    assert names[0] == "down_blocks.0.attentions.0.transformer_blocks.0.attn2"
    assert sorted(names) == sorted(n.removesuffix(".processor") for n in pipes["tiny"].unet.attn_processors
                                   if n.endswith("attn2.processor"))


def test_tracing_attention_does_not_change_the_run(pipes, run):
    plain = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, **FAST)
    assert torch.equal(plain.latents, run.latents)
    assert np.array_equal(np.asarray(plain.images[0]), np.asarray(run.images[0]))


def test_default_memory_does_not_grow_with_layers(run, layered):
    steps, (h, w) = run.attention.num_steps, run.attention.latent_size
    assert run.attention.nbytes == steps * 1 * 77 * h * w * 2  # float16, one map per step
    per_layer = sum(steps * 77 * hl * wl * 2 for hl, wl in layered.attention.layer_sizes.values())
    assert layered.attention.nbytes == per_layer


@pytest.mark.parametrize("kind", ["tiny", "tiny-sd2", "tiny-inpaint"])
def test_maps_equal_independent_recomputation(pipes, kind):
    """Every layer and step: sums to 1 over 77 tokens and equals softmax(q·kᵀ/√d) from to_q/to_k."""
    pipe = pipes[kind]
    layers = {name: module for name, module in pipe.unet.named_modules() if name.endswith("attn2")}
    seen = {name: [] for name in layers}
    handles = [module.register_forward_pre_hook(
        lambda m, args, kwargs, name=name: seen[name].append(
            (args[0].clone(), kwargs["encoder_hidden_states"].clone())),
        with_kwargs=True) for name, module in layers.items()]
    try:
        run = sdexplore.trace(pipe, PROMPT, seed=1, attention="per_layer", **FAST, **_inputs(kind))
    finally:
        for handle in handles:
            handle.remove()
    maps = run.attention
    assert set(maps.layer_names) == set(layers)
    for name, module in layers.items():
        assert len(seen[name]) == maps.num_steps
        for step, (hidden, text) in enumerate(seen[name]):
            expected = _recompute(module, hidden, text)[hidden.shape[0] // 2:]  # text half of the CFG batch
            got = maps.layer_map(name, step)
            torch.testing.assert_close(got.sum(-1), torch.ones(got.shape[:-1]), atol=2e-3, rtol=0)
            torch.testing.assert_close(got.flatten(1, 2), expected, atol=1e-3, rtol=0)


def _recompute(module, hidden, text):
    """[b, n, T] head-averaged probabilities, written out from the weights (float32 throughout)."""
    heads = module.heads
    q = torch.nn.functional.linear(hidden.float(), module.to_q.weight.float(), module.to_q.bias)
    k = torch.nn.functional.linear(text.float(), module.to_k.weight.float(), module.to_k.bias)
    b, n, inner = q.shape
    d = inner // heads
    q = q.view(b, n, heads, d).transpose(1, 2)
    k = k.view(b, -1, heads, d).transpose(1, 2)
    return torch.softmax(q @ k.transpose(-1, -2) / d**0.5, dim=-1).mean(1)


def test_sd2_shape_is_recorded(pipes):
    maps = sdexplore.trace(pipes["tiny-sd2"], PROMPT, seed=0, attention="per_layer", **FAST).attention
    assert set(maps.layer_heads.values()) == {2, 4}  # per-block head counts
    assert maps.layer_sizes["down_blocks.1.attentions.0.transformer_blocks.0.attn2"] == (4, 4)


def test_mask_and_upcast_are_respected():
    """The recomputed probabilities, times the values, give the layer's own output (mask and upcast included)."""
    torch.manual_seed(0)
    layer = Attention(16, cross_attention_dim=8, heads=2, dim_head=8, upcast_attention=True, upcast_softmax=True)
    layer.set_processor(AttnProcessor2_0())
    hidden, text = torch.randn(2, 5, 16), torch.randn(2, 6, 8)
    keep = torch.tensor([[1, 1, 1, 0, 0, 1], [1, 1, 1, 1, 1, 1]])
    mask = ((1 - keep) * -10000.0).unsqueeze(1)  # what the UNet makes of encoder_attention_mask
    expected = layer(hidden, text, attention_mask=mask)
    inputs = bind_inputs(layer, (hidden, text), {"attention_mask": mask})
    qk = queries_and_keys(AttentionLayer("x", layer, "cross", 2), inputs, slice(None), None)
    probs = probabilities(qk.image_q, qk.text_k, qk.scale, mask_block(qk, "image", "text", {"image": 5, "text": 6}))
    assert probs.shape == (2, 2, 5, 6)
    assert probs[0, :, :, 3:5].max() < 1e-6
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 2, 5))
    values = layer.to_v(text).unflatten(-1, (2, 8)).transpose(1, 2)
    output = layer.to_out[0]((probs @ values).transpose(1, 2).flatten(2))
    torch.testing.assert_close(output, expected)


def test_bind_inputs_names_arguments_as_the_signature_binds_them():
    def forward(hidden_states, encoder_hidden_states=None, attention_mask=None, **cross_attention_kwargs):
        return None

    def star(hidden_states, *more, scale=1.0):
        return None

    module = torch.nn.Module()
    for function, args, kwargs in ((forward, (1,), {}), (forward, (1, 2), {"attention_mask": 3}),
                                   (forward, (), {"hidden_states": 1, "encoder_hidden_states": 2}),
                                   (forward, (1,), {"temb": 4, "scale": 5}), (star, (1, 2, 3), {"scale": 2.0}),
                                   (star, (1,), {})):
        signature = inspect.signature(function)
        bound = dict(signature.bind_partial(*args, **kwargs).arguments)
        bound.update(bound.pop("cross_attention_kwargs", None) or {})
        assert bind_inputs(module, args, kwargs, signature) == bound, (function.__name__, args, kwargs)


# --- processors in place and put back ---------------------------------------------------------


def test_processors_are_the_originals_after_the_run(pipes, run):
    before = _all_processors(pipes["tiny"])
    sdexplore.trace(pipes["tiny"], "a dog", seed=0, attention=True, **FAST)
    after = _all_processors(pipes["tiny"])
    assert all(after[name] is before[name] for name in before)


def test_processors_are_put_back_after_an_error(pipes):
    pipe = pipes["tiny"]
    before = _all_processors(pipe)

    def fail(pipe, step, timestep, kwargs):
        assert pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2._forward_hooks  # recording
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        sdexplore.trace(pipe, "a dog", seed=0, attention=True, callback_on_step_end=fail, **FAST)
    after = _all_processors(pipe)
    assert all(after[name] is before[name] for name in before)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.unet.modules())


def test_other_processors_are_wrapped_and_kept():
    pipe = sdexplore.tiny_pipeline("tiny")
    pipe.enable_attention_slicing(1)
    plain = sdexplore.trace(pipe, PROMPT, seed=0, **FAST)
    before = _all_processors(pipe)
    sliced = sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST)
    assert all(_all_processors(pipe)[name] is before[name] for name in before)
    assert torch.equal(sliced.latents, plain.latents)  # the sliced processor still computed the output
    self_attention = [p for n, p in _all_processors(pipe).items() if "attn1" in n]
    assert all(type(p).__name__ == "SlicedAttnProcessor" for p in self_attention)


def test_every_processor_stays_in_place_during_the_run(pipes):
    pipe = pipes["tiny"]
    before = _all_processors(pipe)
    with AttentionRecorder(pipe) as recorder:
        during = _all_processors(pipe)
    assert all(during[name] is before[name] for name in before)
    assert len(recorder.layers) == 7


def test_replacing_processors_during_the_run():
    """A standard processor put in mid-run is still recorded; one sdexplore cannot read is an error naming it."""
    pipe = sdexplore.tiny_pipeline("tiny")

    def replace(pipe, step, timestep, kwargs):
        if step == 0:
            pipe.unet.set_attn_processor(AttnProcessor())
        return {}

    run = sdexplore.trace(pipe, PROMPT, seed=0, attention=True, callback_on_step_end=replace, **FAST)
    assert run.attention.token_maps(steps=2).shape == (1, 77, 8, 8)
    assert all(type(p) is AttnProcessor for p in _all_processors(pipe).values())

    class Mine(AttnProcessor):
        pass

    class Opaque:
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, **kwargs):
            return AttnProcessor()(attn, hidden_states, encoder_hidden_states, attention_mask)

    def opaque(pipe, step, timestep, kwargs):
        pipe.unet.set_attn_processor(Opaque())
        return {}

    with pytest.raises(UncapturableAttentionError, match=r"down_blocks.0.attentions.0.transformer_blocks.0.attn2 "
                                                         r"\(Opaque\).*trusted_processors"):
        sdexplore.trace(pipe, PROMPT, seed=0, attention=True, callback_on_step_end=opaque, **FAST)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.unet.modules())
    pipe.unet.set_attn_processor(Mine())  # a subclass of a standard processor is standard
    assert sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST).attention.num_steps == 3


# --- batches, CFG halves, img2img -----------------------------------------------------------


def test_batched_prompts_and_images_per_prompt(pipes):
    run = sdexplore.trace(pipes["tiny"], ["a cat", "a dog on grass"], seed=0, attention=True,
                          num_images_per_prompt=2, **FAST)
    maps = run.attention
    assert maps.token_maps().shape == (4, 77, 8, 8)
    assert maps.token_table(2)[2].word == "dog"
    with pytest.raises(ValueError, match="image 0: word 'dog' is not in the prompt; its words are: a, cat"):
        maps.word_map("dog")


def test_negative_prompt_half_on_request(pipes):
    run = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, negative_prompt="blue sky",
                          attention_options={"keep_negative": True}, **FAST)
    maps = run.attention
    negative = maps.token_maps(negative=True)
    torch.testing.assert_close(negative.sum(1), torch.ones(1, 8, 8))
    assert not torch.allclose(negative, maps.token_maps())
    assert maps.word_map("sky", negative=True).shape == (1, 8, 8)
    assert maps.token_labels(0, negative=True)[:4] == ["0 <start>", "1 blue", "2 sky", "3 <end>"]
    default = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, negative_prompt="blue sky", **FAST)
    torch.testing.assert_close(default.attention.token_maps(), maps.token_maps())
    with pytest.raises(ValueError, match="keep_negative"):
        default.attention.token_maps(negative=True)


def test_img2img_records_the_steps_it_runs(pipes):
    image = Image.fromarray(np.full((64, 64, 3), 128, np.uint8))
    run = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, image=image, strength=0.5,
                          num_inference_steps=4)
    assert run.attention.num_steps == run.num_steps == 2


# --- access ---------------------------------------------------------------------------------


def test_aggregate_equals_the_average_of_layers(run, layered):
    torch.testing.assert_close(run.attention.token_maps(), layered.attention.token_maps(), atol=2e-3, rtol=0)
    torch.testing.assert_close(run.attention.step_maps([0, -1]), layered.attention.step_maps([0, 2]),
                               atol=2e-3, rtol=0)


def test_steps_layers_heads_and_words(pipes, layered):
    maps = layered.attention
    assert maps.layer_map(maps.layer_names[0], 0).shape == (1, 8, 8, 77)
    assert maps.layer_maps().shape == (7, 1, 77, 8, 8)
    coarse = maps.token_maps(steps=range(1, 3), layers=maps.layers_at(4))
    torch.testing.assert_close(coarse.sum(1), torch.ones(1, 8, 8))
    bozu = sdexplore.trace(pipes["tiny"], "a bozuman cat", seed=0, attention="per_layer",
                           attention_options={"per_head": True}, **FAST).attention
    positions = bozu.word_positions("bozuman")
    assert len(positions) > 1
    torch.testing.assert_close(bozu.word_map("bozuman"), bozu.token_maps()[:, positions].sum(1))
    name = bozu.layer_names[1]
    assert bozu.head_maps(name, 0).shape == (1, 8, 4, 4, 77)
    torch.testing.assert_close(bozu.head_maps(name, 0).mean(1), bozu.layer_map(name, 0))
    share = bozu.token_share()
    torch.testing.assert_close(share.sum(1), torch.ones(1))


def test_steps_are_resized_after_the_run_each_to_its_own_maps(pipes, monkeypatch):
    """aggregate keeps each step's layer sums at their grids during the run (no resize between steps) and
    resizes them afterwards, several steps at once: each step still gets its own maps."""
    from sdexplore.capture import attention as recorder

    resized, seen_at_step_start = [], []
    upsample, start_step = recorder.upsample_layer_maps, recorder._Collector.start_step

    def counting_upsample(maps, size):
        resized.append(maps.shape)
        return upsample(maps, size)

    def start(self, *args):
        seen_at_step_start.append(len(resized))
        return start_step(self, *args)

    monkeypatch.setattr(recorder, "upsample_layer_maps", counting_upsample)
    monkeypatch.setattr(recorder._Collector, "start_step", start)
    options = {**FAST, "num_inference_steps": 11}
    run = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, **options)
    assert seen_at_step_start == [0] * 11 and resized  # nothing resized until the last step was over
    assert max(shape[0] for shape in resized) == 8  # steps resized together (8 at a time, then the other 3)
    monkeypatch.undo()
    layered = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention="per_layer", **options)
    torch.testing.assert_close(run.attention.step_maps(), layered.attention.step_maps(), atol=2e-3, rtol=0)


def test_summed_keeps_the_mean_over_steps(pipes, run):
    summed = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, attention_options={"keep": "summed"},
                             **FAST).attention
    torch.testing.assert_close(summed.token_maps(), run.attention.token_maps(), atol=2e-3, rtol=0)
    assert summed.nbytes == 77 * 8 * 8 * 4
    with pytest.raises(ValueError, match="keep='summed'"):
        summed.token_maps(steps=0)


def test_normalised_and_upsampled(run):
    word = run.attention.word_map("cat", normalize=True)
    assert float(word.min()) == 0.0 and float(word.max()) == pytest.approx(1.0)
    assert run.attention.upsample(word).shape == (1, 64, 64)


def test_saved_and_loaded_with_the_trace(pipes, layered, tmp_path):
    run = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, attention_options={"keep_negative": True},
                          **FAST)
    for original in (run, layered):
        original.save(tmp_path / "run.safetensors")
        loaded = sdexplore.Trace.load(tmp_path / "run.safetensors").attention
        assert loaded.layer_names == original.attention.layer_names
        assert torch.equal(loaded.token_maps(), original.attention.token_maps())
        assert loaded.has_negative == original.attention.has_negative
    assert loaded.layer_map(loaded.layer_names[2], 1).shape == (1, 4, 4, 77)


# --- bad input ------------------------------------------------------------------------------


def test_clear_errors_name_what_exists(pipes, run, layered):
    maps = run.attention
    with pytest.raises(ValueError, match="'dog' is not in the prompt; its words are: a, beach, cat, on, tabby, the"):
        maps.word_map("dog")
    with pytest.raises(IndexError, match=r"step 7 does not exist: this trace has 3 steps \(0..2"):
        maps.token_maps(steps=7)
    with pytest.raises(IndexError, match=r"token position 77 does not exist.*0..76"):
        maps.token_map(77)
    with pytest.raises(ValueError, match="unknown cross-attention layer.*down_blocks.0.attentions.0"):
        layered.attention.layer_map("down_blocks.9.attn2", 0)
    with pytest.raises(ValueError, match="attention='per_layer'"):
        maps.layer_map(maps.layer_names[0], 0)
    with pytest.raises(ValueError, match="attention='per_layer'"):
        maps.token_maps(layers=maps.layer_names[:1])
    with pytest.raises(ValueError, match="no cross-attention layer works at 2x2; the layers' sizes are: 8x8, 4x4"):
        maps.layers_at(2)
    with pytest.raises(ValueError, match="per_head"):
        AttentionRecorder(pipes["tiny"], per_head=True)
    with pytest.raises(ValueError, match="keep must be one of 'per_step', 'summed'"):
        AttentionRecorder(pipes["tiny"], keep="all")
    with pytest.raises(ValueError, match="this UNet has: down_blocks.0"):
        AttentionRecorder(pipes["tiny"], layers=["nope"])


def test_recording_a_chosen_layer_only(pipes):
    name = "mid_block.attentions.0.transformer_blocks.0.attn2"
    maps = sdexplore.trace(pipes["tiny"], PROMPT, seed=0, attention=True, attention_options={"layers": [name]},
                           **FAST).attention
    assert maps.layer_names == [name]
    assert list(cross_attention_layers(pipes["tiny"].unet))[3] == "up_blocks.0.attentions.0.transformer_blocks.0.attn2"


# --- pictures -------------------------------------------------------------------------------


def test_figures_are_returned(run, layered):
    from matplotlib.figure import Figure

    from sdexplore.plot.attention import layer_token_grid, step_token_grid, token_grid, word_overlay

    figures = [word_overlay(run, "cat"), token_grid(run), step_token_grid(run), layer_token_grid(layered)]
    assert all(isinstance(f, Figure) for f in figures)
    maps = [[ax for ax in f.axes if ax.get_visible() and ax.get_label() != "<colorbar>"] for f in figures]
    assert len(maps[1]) == 77
    assert len(maps[3]) == 7 * 9  # 7 layers x (start, 6 words, end, first padding)
    figures[2].savefig(io.BytesIO(), format="png")


def test_trace_refuses_a_capture_over_its_budget(pipes):
    from sdexplore.capture.attention import AttentionCaptureTooLargeError

    pipe = pipes["tiny"]
    # per_layer: 3 steps x 77 tokens x (3 layers at 8x8 + 4 at 4x4) x 2 bytes = 118272 bytes (115.5 KB);
    # aggregate: 3 x 77 x 8 x 8 x 2 = 29568 bytes (28.9 KB)
    with pytest.raises(AttentionCaptureTooLargeError, match=r"would keep 115.5 KB \(mode='per_layer'.*These fit: "
                                                            r"attention='aggregate' keeps 28.9 KB"):
        sdexplore.trace(pipe, PROMPT, seed=0, attention="per_layer", attention_options={"max_bytes": 40_000}, **FAST)
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.unet.modules())
    run = sdexplore.trace(pipe, PROMPT, seed=0, attention="per_layer", attention_options={"max_bytes": 118_272},
                          **FAST)
    assert run.attention.nbytes == 118_272


@pytest.mark.parametrize("shape, size", [((2, 77, 8, 8), (16, 16)), ((1, 5, 4, 6), (64, 96)),
                                         ((1, 3, 32, 32), (64, 64)), ((1, 2, 16, 16), (8, 8))])
def test_layer_maps_are_resized_as_torch_resizes_bicubically_then_clipped(shape, size):
    from sdexplore.capture.attention import upsample_layer_maps

    maps = torch.rand(shape, generator=torch.Generator().manual_seed(0))
    expected = torch.nn.functional.interpolate(maps, size=size, mode="bicubic", align_corners=False).clamp(min=0)
    resized = upsample_layer_maps(maps, size)
    assert resized.shape == expected.shape and (resized >= 0).all()
    torch.testing.assert_close(resized, expected, rtol=0, atol=1e-6)
    assert (expected == 0).any() or shape[-1] >= size[-1]  # bicubic undershoots: the clip acts


def _count_calls(modules):
    counts = {name: 0 for name in modules}
    handles = [module.register_forward_hook(lambda m, a, o, name=name: counts.__setitem__(name, counts[name] + 1))
               for name, module in modules.items()]
    return counts, handles


def test_standard_cross_attention_projections_are_read_not_recomputed(pipes):
    """With diffusers' standard processors the maps come from the layer's own to_q / to_k calls: tracing with
    attention calls them exactly as often as the plain pipeline does, and every hook is gone afterwards."""
    pipe = pipes["tiny"]
    projections = {f"{name}.{which}": getattr(module, which) for name, module in pipe.unet.named_modules()
                   if name.endswith("attn2") for which in ("to_q", "to_k")}
    counts, handles = _count_calls(projections)
    try:
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), **FAST)
        plain = dict(counts)
        counts.update(dict.fromkeys(counts, 0))
        sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST)
    finally:
        for handle in handles:
            handle.remove()
    assert counts == plain and all(n == FAST["num_inference_steps"] for n in plain.values())
    assert not any(module._forward_hooks or module._forward_pre_hooks for module in pipe.unet.modules())


def test_a_layer_whose_projections_are_read_takes_three_hooks_and_no_pre_hook(pipes):
    """Such a layer is recorded after its call (with its inputs, from a hook with kwargs): hooks on to_q and to_k
    and one after the layer, three Python calls per layer and step instead of four."""
    pipe = pipes["tiny"]
    layers = {name: module for name, module in pipe.unet.named_modules() if name.endswith("attn2")}
    seen = {}

    def look(pipe, step, timestep, kwargs):
        seen.update({name: (len(m._forward_pre_hooks), len(m._forward_hooks), len(m.to_q._forward_hooks),
                            len(m.to_k._forward_hooks)) for name, m in layers.items()})
        return {}

    sdexplore.trace(pipe, PROMPT, seed=0, attention=True, callback_on_step_end=look, **FAST)
    assert seen and all(counts == (0, 1, 1, 1) for counts in seen.values()), seen


def test_a_processor_that_calls_its_projections_twice_gets_them_recomputed(monkeypatch):
    """Reading to_q / to_k is only trusted when each ran once in the call; otherwise the maps are recomputed
    from the inputs, and they equal the maps of the standard processor."""
    from sdexplore.capture import attention_processor

    class Twice(AttnProcessor2_0):
        def __call__(self, attn, hidden_states, encoder_hidden_states=None, *args, **kwargs):
            attn.to_q(torch.zeros_like(hidden_states.flatten(2).transpose(1, 2) if hidden_states.ndim == 4
                                       else hidden_states))  # a throwaway extra call
            return super().__call__(attn, hidden_states, encoder_hidden_states, *args, **kwargs)

    monkeypatch.setattr(attention_processor, "PROJECTION_READING_PROCESSORS",
                        attention_processor.PROJECTION_READING_PROCESSORS | {"Twice"})
    pipe = sdexplore.tiny_pipeline("tiny")
    standard = sdexplore.trace(pipe, PROMPT, seed=0, attention="per_layer", **FAST).attention
    pipe.unet.set_attn_processor(Twice())
    twice = sdexplore.trace(pipe, PROMPT, seed=0, attention="per_layer", **FAST).attention
    for name in standard.layer_names:
        for step in range(standard.num_steps):
            torch.testing.assert_close(twice.layer_map(name, step), standard.layer_map(name, step), rtol=0, atol=1e-6)


@pytest.mark.parametrize("scheduler", ["HeunDiscreteScheduler", "KDPM2DiscreteScheduler"])
def test_second_order_schedulers_get_one_map_per_scheduler_step(scheduler):
    """Heun and DPM2 call the denoiser twice per step (Heun at the same timestep, after a scheduler step): each
    call is a step of the trace (2N - 1 of them) with its own maps, not merged as Flux's true-CFG calls are."""
    import diffusers

    pipe = sdexplore.tiny_pipeline("tiny")
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    run = sdexplore.trace(pipe, PROMPT, seed=0, attention="per_layer", **FAST)
    steps = 2 * FAST["num_inference_steps"] - 1
    assert run.num_steps == run.attention.num_steps == steps
    assert (run.timesteps[1] == run.timesteps[2]) == (scheduler == "HeunDiscreteScheduler")  # Heun repeats it
    name = run.attention.layer_names[0]
    assert not torch.equal(run.attention.layer_map(name, 1), run.attention.layer_map(name, 2))
    plain = sdexplore.trace(pipe, PROMPT, seed=0, **FAST)
    assert torch.equal(plain.latents, run.latents)


def test_pndm_repeats_a_timestep_as_a_step_of_its_own():
    """PNDM (SD 1.5's own scheduler) runs one timestep twice with a scheduler step between: two steps of the
    trace, each with its maps (told apart by the scheduler's steps, not by the timestep's value)."""
    from diffusers import PNDMScheduler

    pipe = sdexplore.tiny_pipeline("tiny")
    pipe.scheduler = PNDMScheduler.from_config(pipe.scheduler.config, skip_prk_steps=True)
    run = sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST)
    assert run.num_steps == run.attention.num_steps == FAST["num_inference_steps"] + 1
    assert run.attention.timesteps == run.timesteps.tolist()
    repeated = [i for i in range(run.num_steps - 1) if run.timesteps[i] == run.timesteps[i + 1]]
    assert len(repeated) == 1
    first = repeated[0]
    assert not torch.equal(run.attention.step_maps([first]), run.attention.step_maps([first + 1]))


def test_no_tensor_value_is_read_during_the_denoising_loop(monkeypatch):
    """On a GPU, reading a tensor's value (.item(), float()) waits for the device: a traced step reads none
    (DDIM, whose timesteps are tensors and which keeps no sigmas); values are read once, after the run."""
    from pathlib import Path

    from sdexplore.capture.run import tracing

    pipe = sdexplore.tiny_pipeline("tiny")
    package = str(Path(sdexplore.__file__).parent)
    reads = []
    for method in ("item", "__float__", "__int__", "tolist"):
        original = getattr(torch.Tensor, method)

        def counting(self, *args, _original=original, _method=method, **kwargs):
            caller = inspect.stack()[1].filename
            if caller.startswith(package):
                reads.append((_method, caller))
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, method, counting)
    with tracing(pipe, attention=True) as recorder:
        reads.clear()  # setting up may read (the text encoder's ids), the steps may not
        pipe(PROMPT, generator=torch.Generator().manual_seed(0), callback_on_step_end=recorder.callback, **FAST)
        during = list(reads)
    monkeypatch.undo()
    run = recorder.to_trace(prompt=PROMPT, seed=0)
    assert during == []
    assert run.attention.timesteps == run.timesteps.tolist() and len(run.timesteps) == FAST["num_inference_steps"]


def test_aggregate_computes_the_layers_of_one_shape_together(monkeypatch):
    """aggregate: the layers of one grid and head count wait and are computed in one batch per step (a few kernels
    for all of them, which is what a launch-bound GPU run needs); with a budget of one layer they are computed one
    by one, and the maps are the same."""
    from sdexplore.capture import attention as attention_module

    pipe = sdexplore.tiny_pipeline("tiny")
    calls = []
    original = attention_module.probabilities

    def counting(queries, keys, scale, bias=None):
        calls.append(queries.ndim)
        return original(queries, keys, scale, bias)
    monkeypatch.setattr(attention_module, "probabilities", counting)
    batched = sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST).attention
    groups = {(batched.layer_sizes[name], batched.layer_heads[name]) for name in batched.layer_names}
    assert len(batched.layer_names) > len(groups)  # some layers share a shape
    assert calls == [5] * len(groups) * FAST["num_inference_steps"]  # stacked [L, b, heads, n, d], once a group
    calls.clear()
    monkeypatch.setattr(attention_module, "BATCHED_LOGITS_BYTES", 1)
    one_by_one = sdexplore.trace(pipe, PROMPT, seed=0, attention=True, **FAST).attention
    assert len(calls) == len(batched.layer_names) * FAST["num_inference_steps"]
    torch.testing.assert_close(batched.step_maps(), one_by_one.step_maps(), rtol=2e-3, atol=1e-6)  # float16 steps
