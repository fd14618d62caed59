"""No silent wrong trace: inputs used as meant or refused, keywords checked, threads serialised, same tiny builds."""

import json
import math
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from PIL import Image

import sdexplore
from sdexplore.capture.inputs import UnusedArgumentWarning, smallest_strength, steps_run
from sdexplore.capture.run import NonFiniteWarning

PROMPT = "a photo of a cat"


def run(pipe, prompt=PROMPT, seed=0, **kwargs):
    kwargs.setdefault("num_inference_steps", 4)
    return sdexplore.trace(pipe, prompt, seed=seed, **kwargs)


def picture(seed=0, size=64) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.NEAREST)


def same_run(a, b) -> bool:
    pictures_equal = len(a.images) == len(b.images) and all(
        np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a.images, b.images))
    return torch.equal(a.latents, b.latents) and torch.equal(a.x0, b.x0) and pictures_equal


# --- pictures: converted where unambiguous ------------------------------------------------------------


def test_rgba_picture_is_composited_on_white_and_the_stored_input_is_the_picture_used(tiny):
    rgba = picture().convert("RGBA")
    alpha = np.zeros((64, 64), np.uint8)
    alpha[:, 32:] = 255  # left half fully transparent, right half opaque
    rgba.putalpha(Image.fromarray(alpha))
    expected = np.asarray(picture()).copy()
    expected[:, :32] = 255  # transparent pixels become the white background
    traced = run(tiny, image=rgba, strength=0.5)
    assert traced.latents.shape == (3, 1, 4, 8, 8)  # 2 img2img steps on 4x8x8 latents, not a 5-D stack
    assert np.array_equal(traced.inputs["image"].numpy(), expected)
    assert same_run(traced, run(tiny, image=Image.fromarray(expected), strength=0.5))


def test_rgba_as_numpy_is_composited_the_same_way(tiny):
    rgba = np.dstack([np.asarray(picture()), np.full((64, 64), 255, np.uint8)])
    rgba[:8, :8, 3] = 0
    expected = np.asarray(picture()).copy()
    expected[:8, :8] = 255
    traced = run(tiny, image=rgba, strength=0.5)
    assert np.array_equal(traced.inputs["image"].numpy(), expected)


PICTURE_FORMS = {
    "numpy uint8 HxWx3": lambda p: np.asarray(p),
    "numpy float32 in [0, 1]": lambda p: np.asarray(p, np.float32) / 255,
    "numpy float64 in [0, 1]": lambda p: np.asarray(p) / 255.0,
    "torch float 3xHxW in [0, 1]": lambda p: torch.from_numpy(np.array(p)).permute(2, 0, 1).float() / 255,
    "torch uint8 3xHxW": lambda p: torch.from_numpy(np.array(p)).permute(2, 0, 1),
    "list of one PIL": lambda p: [p],
    "numpy batch 1xHxWx3": lambda p: np.asarray(p)[None],
}


@pytest.mark.parametrize("form", PICTURE_FORMS)
def test_the_same_picture_traces_the_same_whatever_its_container(tiny, form):
    as_pil = run(tiny, image=picture(), strength=0.75)
    other = run(tiny, image=PICTURE_FORMS[form](picture()), strength=0.75)
    assert same_run(as_pil, other)
    assert torch.equal(other.inputs["image"], as_pil.inputs["image"]) and other.inputs["image"].dtype == torch.uint8


def test_a_float_picture_that_is_not_8_bit_is_used_and_stored_as_floats(tiny):
    floats = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    traced = run(tiny, image=floats, strength=0.75)
    assert traced.inputs["image"].dtype == torch.float32
    assert torch.equal(traced.inputs["image"], torch.from_numpy(floats))
    quantised = run(tiny, image=Image.fromarray((floats * 255).round().astype(np.uint8)), strength=0.75)
    assert not torch.equal(traced.latents[0], quantised.latents[0])  # the floats themselves went in
    torch.testing.assert_close(traced.latents[0], quantised.latents[0], atol=0.05, rtol=0)


@pytest.mark.parametrize("gray", [lambda p: p.convert("L"), lambda p: np.asarray(p.convert("L")),
                                  lambda p: np.asarray(p.convert("L"))[..., None]], ids=["PIL L", "HxW", "HxWx1"])
def test_a_grayscale_picture_is_used_as_rgb(tiny, gray):
    traced = run(tiny, image=gray(picture()), strength=0.75)
    assert same_run(traced, run(tiny, image=picture().convert("L").convert("RGB"), strength=0.75))
    assert traced.inputs["image"].shape == (64, 64, 3)


def test_two_pictures_for_one_prompt_is_a_clear_error_and_one_per_prompt_pairs_them(tiny):
    a, b = picture(0), picture(1)
    with pytest.raises(ValueError, match=r"image holds 2 pictures but there are 1 prompt\(s\)"):
        run(tiny, image=[a, b], strength=0.75)
    pair = run(tiny, ["a cat", "a dog"], image=[a, b], strength=0.75)
    same = run(tiny, ["a cat", "a dog"], image=[a, a], strength=0.75)
    one = run(tiny, ["a cat", "a dog"], image=a, strength=0.75)
    assert pair.inputs["image"].shape == (2, 64, 64, 3) and len(pair.images) == 2
    assert len(one.images) == 2 and one.inputs["image"].shape == (64, 64, 3)  # one picture for every prompt
    assert torch.equal(pair.latents[:, 0], same.latents[:, 0])  # the first prompt got picture a ...
    assert not torch.allclose(pair.latents[0, 1], same.latents[0, 1])  # ... the second picture b
    with pytest.raises(ValueError, match="num_images_per_prompt=1"):
        run(tiny, ["a cat", "a dog"], image=[a, b], strength=0.75, num_images_per_prompt=2)


BAD_PICTURES = {
    "string": ("cat.png", TypeError, "image must be a PIL image"),
    "None in a list": ([None], TypeError, r"image\[0\] is None"),
    "empty list": ([], ValueError, "image is an empty list"),
    "channels-first numpy": (np.zeros((3, 64, 64), np.uint8), ValueError, "channels first"),
    "4-channel tensor (latents?)": (torch.zeros(4, 64, 64), ValueError, "ambiguous for a tensor"),
    "channels-last tensor": (torch.zeros(64, 64, 3), ValueError, "channels last"),
    "0..255 floats": (np.full((64, 64, 3), 200.0), ValueError, "pass them as uint8"),
    "-1..1 tensor": (torch.full((3, 64, 64), -0.5), ValueError, r"pass \(x \+ 1\) / 2"),
    "NaN floats": (np.full((64, 64, 3), np.nan, np.float32), ValueError, "NaN or inf"),
    "int64 array": (np.zeros((64, 64, 3), np.int64), ValueError, "dtype int64 is ambiguous"),
    "bool picture": (np.zeros((64, 64, 3), bool), ValueError, "dtype bool is ambiguous"),
    "5-D array": (np.zeros((1, 1, 64, 64, 3), np.uint8), ValueError, "image is a ndarray of shape"),
    "empty picture": (np.zeros((0, 0, 3), np.uint8), ValueError, "image is empty"),
    "odd size": (Image.new("RGB", (60, 60)), ValueError, "multiples of 8"),
    "16-bit PIL": (Image.new("I;16", (64, 64)), ValueError, "mode I;16 has no unambiguous"),
    "mixed sizes": ([Image.new("RGB", (64, 64)), Image.new("RGB", (32, 32))], ValueError, "different sizes"),
}


@pytest.mark.parametrize("case", BAD_PICTURES)
def test_pictures_that_cannot_be_read_unambiguously_are_refused_naming_the_argument(tiny, case):
    value, error, message = BAD_PICTURES[case]
    with pytest.raises(error, match=message):
        run(tiny, image=value, strength=0.5)


MASK_FORMS = {
    "PIL L": lambda m: Image.fromarray(m),
    "PIL RGB": lambda m: Image.fromarray(m).convert("RGB"),
    "numpy bool": lambda m: m > 0,
    "numpy uint8": lambda m: m,
    "numpy float": lambda m: m / 255.0,
    "torch float 1xHxW": lambda m: torch.from_numpy(m / 255.0)[None],
}


@pytest.mark.parametrize("form", MASK_FORMS)
def test_masks_in_every_documented_form_inpaint_the_same(tiny, form):
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255
    reference = run(tiny, image=picture(), mask_image=Image.fromarray(mask))
    traced = run(tiny, image=picture(), mask_image=MASK_FORMS[form](mask))
    assert same_run(reference, traced) and torch.equal(traced.inputs["mask_image"], torch.from_numpy(mask))


def test_ambiguous_masks_are_refused(tiny):
    with pytest.raises(ValueError, match="mask with transparency is ambiguous"):
        run(tiny, image=picture(), mask_image=Image.new("RGBA", (64, 64)))
    with pytest.raises(ValueError, match="mask_image is a ndarray of shape \\[64, 64, 3\\]"):
        run(tiny, image=picture(), mask_image=np.zeros((64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="same size"):
        run(tiny, image=picture(), mask_image=np.zeros((32, 32), bool))
    half = np.zeros((64, 64), bool)
    half[:, 32:] = True
    with pytest.raises(ValueError, match="would resize the picture and the mask"):
        run(tiny, image=picture(), mask_image=half, height=32)


def test_masks_that_mark_nothing_or_everything_say_what_they_mean(tiny):
    with pytest.raises(ValueError, match="all black .* nothing to repaint"):
        run(tiny, image=picture(), mask_image=np.zeros((64, 64), bool))
    with pytest.raises(ValueError, match="all white .* img2img"):
        run(tiny, image=picture(), mask_image=np.ones((64, 64), bool))


def test_the_img2img_pipeline_without_a_picture_says_so(tiny, tiny_inpaint):
    with pytest.raises(ValueError, match="StableDiffusionImg2ImgPipeline needs image="):
        run(sdexplore.as_img2img(tiny))
    with pytest.raises(ValueError, match="needs mask_image="):
        run(tiny_inpaint, image=picture())


# --- keywords ---------------------------------------------------------------------------------------------


def test_a_misspelt_keyword_is_an_error_with_the_closest_name(tiny):
    with pytest.raises(TypeError, match="does not take the keyword 'num_inference_step'; did you mean "
                                        "'num_inference_steps'"):
        run(tiny, num_inference_step=4)
    with pytest.raises(TypeError, match="did you mean 'attention'"):
        run(tiny, attentions=True)
    with pytest.raises(TypeError, match="does not take the keyword 'foo'"):
        run(tiny, foo=1)


def test_strength_without_image_is_an_error(tiny):
    with pytest.raises(ValueError, match="strength needs image="):
        run(tiny, strength=0.5)
    with pytest.raises(ValueError, match="cannot be set in img2img"):
        run(tiny, image=picture(), strength=0.5, height=64)


def test_keywords_that_would_do_nothing_are_left_out_of_the_run_and_the_trace(tiny):
    with pytest.warns(UnusedArgumentWarning, match="negative_prompt=.*guidance_scale=1 <= 1"):
        traced = run(tiny, guidance_scale=1.0, negative_prompt="a dog")
    assert "negative_prompt" not in traced.params and traced.negative_prompt_embeds is None
    assert same_run(traced, run(tiny, guidance_scale=1.0))
    euler = sdexplore.load_pipeline("tiny", scheduler="euler")
    with pytest.warns(UnusedArgumentWarning, match="EulerDiscreteScheduler has no eta"):
        traced = run(euler, eta=0.7)
    assert "eta" not in traced.params
    assert run(tiny, eta=0.7).params["eta"] == 0.7  # DDIM uses it: kept


def test_every_real_diffusers_keyword_still_works(tiny):
    steps_seen = []
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    embeds = run(tiny).prompt_embeds
    traced = run(tiny, prompt=None, prompt_embeds=embeds, negative_prompt_embeds=torch.zeros_like(embeds),
                 latents=latents, guidance_rescale=0.7, cross_attention_kwargs={"scale": 1.0}, clip_skip=1,
                 callback_on_step_end=lambda pipe, i, t, kw: steps_seen.append(i) or {})
    assert steps_seen == [0, 1, 2, 3] and torch.equal(traced.latents[0], latents)
    assert traced.params["guidance_rescale"] == 0.7 and traced.params["clip_skip"] == 1
    ids = tiny.tokenizer(PROMPT, padding="max_length", return_tensors="pt").input_ids
    hidden = tiny.text_encoder(ids, output_hidden_states=True).hidden_states
    skipped = run(tiny, clip_skip=1).prompt_embeds  # diffusers: penultimate layer, then the final layer norm
    torch.testing.assert_close(skipped, tiny.text_encoder.final_layer_norm(hidden[-2]))
    assert not hasattr(tiny.text_encoder, "text_model")  # the transformers-5 shim is gone after the run


# --- img2img that would run zero steps -----------------------------------------------------------------------


def test_img2img_that_would_run_no_step_is_refused_with_the_smallest_strength(tiny):
    with pytest.raises(ValueError, match=r"strength=0.1 with num_inference_steps=4 runs int\(4 \* 0.1\) = 0 "
                                         r"denoising steps.*smallest strength that runs a step is 0.25.*>= 10"):
        run(tiny, image=picture(), strength=0.1, num_inference_steps=4)
    assert run(tiny, image=picture(), strength=0.25, num_inference_steps=4).num_steps == 1


@pytest.mark.parametrize("steps", range(1, 101))
def test_the_smallest_strength_is_exact_for_every_step_count(steps):
    strength = smallest_strength(steps)
    assert steps_run(steps, strength) == 1
    assert steps_run(steps, math.nextafter(strength, 0.0)) == 0


# --- outputs and non-finite numbers ------------------------------------------------------------------------


@pytest.mark.parametrize("output_type", ["np", "pt", "latent"])
def test_every_output_type_traces(tiny, output_type):
    as_pil = run(tiny)
    other = run(tiny, output_type=output_type)
    assert torch.equal(other.latents, as_pil.latents) and other.params["output_type"] == output_type
    if output_type == "latent":
        assert other.images == []  # nothing was decoded; previews still work from the latents
        assert other.preview(-1)[0].size == (64, 64)
    else:
        assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(other.images, as_pil.images))


def test_return_dict_false_still_keeps_the_pictures(tiny):
    assert np.array_equal(np.asarray(run(tiny, return_dict=False).images[0]), np.asarray(run(tiny).images[0]))


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_guidance_is_refused(tiny, value):
    with pytest.raises(ValueError, match="guidance_scale must be a finite number"):
        run(tiny, guidance_scale=value)


def test_nan_appearing_in_a_run_warns_naming_the_step(tiny):
    def poison(pipe, i, t, kwargs):
        return {"latents": kwargs["latents"] * math.nan} if i == 2 else {}

    with pytest.warns(NonFiniteWarning, match=r"step 2 \(timestep \d+\): the latents after the step contain NaN"):
        run(tiny, callback_on_step_end=poison)


# --- several threads, one pipeline -----------------------------------------------------------------------


def hooks_of(pipe):
    return (len(pipe.unet._forward_pre_hooks), len(pipe.unet._forward_hooks), "step" in vars(pipe.scheduler),
            {name: type(p).__name__ for name, p in pipe.unet.attn_processors.items()})


def test_threads_tracing_one_pipeline_take_turns_and_each_trace_is_the_one_run_alone():
    pipe = sdexplore.load_pipeline("tiny")
    before = hooks_of(pipe)
    plain_before = np.asarray(pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images[0])
    jobs = [dict(seed=s, num_inference_steps=5) for s in range(3)]
    jobs += [dict(seed=7, num_inference_steps=3, attention=True), dict(seed=8, image=picture(), strength=0.8)]
    alone = [run(pipe, **job) for job in jobs]
    together, errors = [None] * len(jobs), []
    start = threading.Barrier(len(jobs))

    def work(i):
        start.wait()
        try:
            together[i] = run(pipe, **jobs[i])
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(repr(error))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for single, concurrent in zip(alone, together):
        assert same_run(single, concurrent)
        assert torch.equal(single.noise_pred, concurrent.noise_pred)
        if single.attention is not None:
            assert torch.equal(single.attention.token_maps(), concurrent.attention.token_maps())
    assert hooks_of(pipe) == before
    plain_after = np.asarray(pipe(PROMPT, num_inference_steps=3, generator=torch.Generator().manual_seed(1)).images[0])
    assert np.array_equal(plain_before, plain_after)


def test_a_plain_call_from_another_thread_during_a_trace_is_refused_not_mixed_in(tiny):
    def call_from_another_thread(pipe, i, t, kwargs):
        if i == 1:
            other = threading.Thread(target=lambda: tiny(PROMPT, num_inference_steps=2))
            other.start()
            other.join()
        return {}

    with pytest.raises(RuntimeError, match="another thread called this pipeline"):
        run(tiny, callback_on_step_end=call_from_another_thread)
    assert hooks_of(tiny)[:3] == (0, 0, False)
    assert run(tiny).num_steps == 4  # the pipeline is not left broken


# --- the tiny pipelines are the same in every process -----------------------------------------------------

FINGERPRINT = """
import hashlib, json, sdexplore
out = {}
for name in ("tiny", "tiny-sd2"):
    pipe = sdexplore.load_pipeline(name)
    ids = pipe.tokenizer("a photo of a bozuman cat on the beach").input_ids
    traced = sdexplore.trace(pipe, "a photo of a bozuman cat", seed=0, num_inference_steps=3)
    weights = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in pipe.text_encoder.parameters()))
    out[name] = [ids, len(pipe.tokenizer), weights.hexdigest(),
                 hashlib.sha256(traced.latents.numpy().tobytes()).hexdigest()]
print("FINGERPRINT" + json.dumps(out))
"""


def fingerprint_in_a_new_process() -> dict:
    done = subprocess.run([sys.executable, "-c", FINGERPRINT], capture_output=True, text=True, check=True,
                          timeout=300)
    line = next(line for line in done.stdout.splitlines() if line.startswith("FINGERPRINT"))
    return json.loads(line.removeprefix("FINGERPRINT"))


def test_tiny_pipelines_have_the_same_vocabulary_ids_weights_and_latents_in_every_process():
    first, second = fingerprint_in_a_new_process(), fingerprint_in_a_new_process()
    assert first == second
    ids = first["tiny"][0]
    assert ids[0] == sdexplore.load_pipeline("tiny").tokenizer.bos_token_id and len(ids) > 9  # bozuman: sub-words


def test_building_a_tiny_pipeline_leaves_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    sdexplore.load_pipeline("tiny")
    assert torch.equal(torch.rand(3), expected)


def test_bpe_merges_are_deterministic_and_every_word_is_one_token():
    from sdexplore.models import TINY_WORDS
    from sdexplore.tokenizer import build_clip_tokenizer, train_clip_bpe

    assert train_clip_bpe(reversed(TINY_WORDS)) == train_clip_bpe(TINY_WORDS)
    tokenizer = build_clip_tokenizer(TINY_WORDS)
    assert all(len(tokenizer(word, add_special_tokens=False).input_ids) == 1 for word in TINY_WORDS)
    odd = tokenizer("bozuman", add_special_tokens=False).input_ids
    assert len(odd) > 1 and tokenizer.unk_token_id not in odd


# --- property-style tables: malformed values of each argument of each public function -------------------------

NAN, INF = math.nan, math.inf


def clear_error(call, argument: str, kinds=(TypeError, ValueError)):
    """``call`` must fail with one of ``kinds`` whose message names ``argument``: never a deep crash."""
    with pytest.raises(Exception) as info:  # noqa: B017 - the kind is checked below, with the message
        call()
    assert isinstance(info.value, kinds), f"{type(info.value).__name__}: {info.value}"
    assert argument in str(info.value), str(info.value)
    return info.value


TRACE_ARGUMENTS = [
    ("prompt", dict(prompt=3)), ("prompt", dict(prompt=[])), ("prompt", dict(prompt=["a cat", 2])),
    ("prompt", dict(prompt=None)), ("prompt", dict(prompt=b"a cat")),
    ("seed", dict(seed=-1)), ("seed", dict(seed=2**63)), ("seed", dict(seed=1.5)), ("seed", dict(seed="0")),
    ("seed", dict(seed=None)), ("seed", dict(seed=True)), ("seed", dict(seed=NAN)),
    ("attention", dict(attention="yes")), ("attention", dict(attention=2)), ("attention", dict(attention=None)),
    ("attention_options", dict(attention=True, attention_options="summed")),
    ("keep", dict(attention=True, attention_options={"keep": "all"})),
    ("keeep", dict(attention=True, attention_options={"keeep": "summed"})),
    ("attention_options", dict(attention_options={"keep": "summed"})),
    ("num_inference_steps", dict(num_inference_steps=0)), ("num_inference_steps", dict(num_inference_steps=-3)),
    ("num_inference_steps", dict(num_inference_steps=2.5)), ("num_inference_steps", dict(num_inference_steps="4")),
    ("num_inference_steps", dict(num_inference_steps=NAN)), ("num_inference_steps", dict(num_inference_steps=10**6)),
    ("num_inference_steps", dict(num_inference_steps=None)),
    ("guidance_scale", dict(guidance_scale="7.5")), ("guidance_scale", dict(guidance_scale=NAN)),
    ("guidance_scale", dict(guidance_scale=-INF)), ("guidance_scale", dict(guidance_scale=None)),
    ("guidance_scale", dict(guidance_scale=-1.0)),
    ("strength", dict(image=picture(), strength=0)), ("strength", dict(image=picture(), strength=-0.5)),
    ("strength", dict(image=picture(), strength=1.5)), ("strength", dict(image=picture(), strength=NAN)),
    ("strength", dict(image=picture(), strength="0.5")),
    ("height", dict(height=60)), ("height", dict(height=0)), ("height", dict(height=-64)),
    ("width", dict(width=64.0)), ("width", dict(width="64")),
    ("negative_prompt", dict(negative_prompt=3)), ("negative_prompt", dict(negative_prompt=["a", "b"])),
    ("num_images_per_prompt", dict(num_images_per_prompt=0)),
    ("num_images_per_prompt", dict(num_images_per_prompt=1.5)),
    ("latents", dict(latents=torch.zeros(1, 4, 16, 16))), ("latents", dict(latents=torch.full((1, 4, 8, 8), NAN))),
    ("latents", dict(latents=[[0.0]])), ("latents", dict(latents=torch.zeros(4, 8, 8))),
    ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 16))),
    ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.full((1, 77, 32), INF))),
    ("prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(77, 32))),
    ("prompt_embeds", dict(prompt_embeds=torch.zeros(1, 77, 32))),
    ("negative_prompt_embeds", dict(prompt=None, prompt_embeds=torch.zeros(1, 77, 32),
                                    negative_prompt_embeds=torch.zeros(2, 77, 32))),
    ("output_type", dict(output_type="png")), ("output_type", dict(output_type=None)),
    ("clip_skip", dict(clip_skip=-1)), ("clip_skip", dict(clip_skip=10)),
    ("clip_skip", dict(clip_skip=2)), ("clip_skip", dict(clip_skip="1")),
    ("guidance_rescale", dict(guidance_rescale=2.0)), ("guidance_rescale", dict(guidance_rescale=NAN)),
    ("eta", dict(eta=-1.0)), ("eta", dict(eta="0")),
    ("cross_attention_kwargs", dict(cross_attention_kwargs="scale=1")),
    ("callback_on_step_end", dict(callback_on_step_end=3)),
    ("return_dict", dict(return_dict="no")),
    ("timesteps", dict(timesteps=[999, 500], num_inference_steps=2)), ("timesteps", dict(timesteps=[])),
    ("timesteps", dict(timesteps=[999, NAN])),
    ("generator", dict(generator=torch.Generator())),
    ("mask_image", dict(mask_image=Image.new("L", (64, 64)))),
]


@pytest.mark.parametrize("argument,kwargs", TRACE_ARGUMENTS,
                         ids=[f"{a}-{i}" for i, (a, _) in enumerate(TRACE_ARGUMENTS)])
def test_trace_refuses_malformed_arguments_clearly(tiny, argument, kwargs):
    kwargs = dict(kwargs)
    prompt, seed = kwargs.pop("prompt", PROMPT), kwargs.pop("seed", 0)
    if "timesteps" not in kwargs:
        kwargs.setdefault("num_inference_steps", 2)
    clear_error(lambda: sdexplore.trace(tiny, prompt, seed=seed, **kwargs), argument)
    assert hooks_of(tiny)[:3] == (0, 0, False)


@pytest.mark.parametrize("pipe", [None, "tiny", 3, torch.nn.Linear(2, 2)])
def test_trace_and_tracing_refuse_what_is_not_a_pipeline(pipe):
    clear_error(lambda: sdexplore.trace(pipe, PROMPT, seed=0), "pipe")
    clear_error(lambda: sdexplore.tracing(pipe).__enter__(), "pipe")


def test_numpy_scalars_are_used_as_the_numbers_they_are(tiny):
    plain = run(tiny, seed=3, num_inference_steps=3, guidance_scale=5.0)
    numpy = run(tiny, seed=np.int64(3), num_inference_steps=np.int32(3), guidance_scale=np.float32(5.0))
    assert same_run(plain, numpy) and json.dumps(numpy.params)


def test_an_empty_prompt_and_a_one_step_run_are_correct_results(tiny):
    traced = run(tiny, prompt="", num_inference_steps=1)
    assert traced.num_steps == 1 and [t.kind for t in traced.tokens[0][:2]] == ["start", "end"]


def test_to_trace_refuses_malformed_arguments_clearly(tiny):
    with sdexplore.tracing(tiny) as rec:
        output = tiny(PROMPT, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
                      callback_on_step_end=rec.callback)
    clear_error(lambda: rec.to_trace(output, prompt=3, seed=0), "prompt")
    clear_error(lambda: rec.to_trace(output, prompt=PROMPT, seed=-1), "seed")
    clear_error(lambda: rec.to_trace(output, prompt=PROMPT, seed="0"), "seed")
    clear_error(lambda: rec.to_trace(output, prompt=PROMPT, seed=0, params="steps=2"), "params")
    clear_error(lambda: rec.to_trace(output, prompt=PROMPT, seed=0, inputs=[np.zeros(3)]), "inputs")
    traced = rec.to_trace(output, prompt=PROMPT, seed=0, params={"odd": object()})
    assert isinstance(traced.params["odd"], str) and json.dumps(traced.params)  # made JSON-safe, savable
    clear_error(lambda: sdexplore.tracing(tiny, attention="maps").__enter__(), "attention")
    with sdexplore.tracing(tiny) as empty:
        pass
    clear_error(lambda: empty.to_trace(None, prompt=PROMPT, seed=0), "nothing was recorded", kinds=(RuntimeError,))


LOAD_ARGUMENTS = [
    ("model", dict(model=None)), ("model", dict(model=3)), ("model", dict(model="")),
    ("device", dict(device="gpu0")), ("device", dict(device=3)),
    ("dtype", dict(dtype="int8")), ("dtype", dict(dtype=torch.int64)), ("dtype", dict(dtype=3)),
    ("scheduler", dict(scheduler=3)), ("scheduler", dict(scheduler="heun")),
]


@pytest.mark.parametrize("argument,kwargs", LOAD_ARGUMENTS, ids=[f"{a}-{i}" for i, (a, _) in enumerate(LOAD_ARGUMENTS)])
def test_load_pipeline_refuses_malformed_arguments_clearly(argument, kwargs):
    kwargs = {"model": "tiny", **kwargs}
    clear_error(lambda: sdexplore.load_pipeline(kwargs.pop("model"), **kwargs), argument)


def test_load_pipeline_reads_dtype_and_device_names():
    pipe = sdexplore.load_pipeline("tiny", device="cpu", dtype="float32")
    assert pipe.unet.dtype == torch.float32 and pipe.device.type == "cpu"


@pytest.fixture(scope="module")
def saved_run(tiny):
    return run(tiny, num_inference_steps=2)


@pytest.mark.parametrize("path,argument", [(None, "path"), (3, "path"), ("", "path"), (b"run.st", "path")])
def test_save_refuses_malformed_paths_clearly(saved_run, path, argument):
    clear_error(lambda: saved_run.save(path), argument)


def test_save_into_a_folder_and_load_of_wrong_things_are_clear(saved_run, tmp_path):
    clear_error(lambda: saved_run.save(tmp_path), "is a folder")
    clear_error(lambda: sdexplore.Trace.load(None), "path")
    clear_error(lambda: sdexplore.Trace.load(tmp_path), "no trace file", kinds=(sdexplore.TraceFileError,))
    (tmp_path / "notes.txt").write_text("not a trace")
    clear_error(lambda: sdexplore.Trace.load(tmp_path / "notes.txt"), "not a readable trace file",
                kinds=(sdexplore.TraceFileError,))
    (tmp_path / "empty.safetensors").write_bytes(b"")
    clear_error(lambda: sdexplore.Trace.load(tmp_path / "empty.safetensors"), "not a readable trace file",
                kinds=(sdexplore.TraceFileError,))


def test_token_table_refuses_malformed_arguments_and_handles_edge_prompts(tiny, saved_run):
    clear_error(lambda: sdexplore.token_table(tiny.tokenizer, None), "prompt")
    clear_error(lambda: sdexplore.token_table(tiny.tokenizer, ["a cat"]), "prompt")
    clear_error(lambda: sdexplore.token_table(None, "a cat"), "tokenizer")
    assert len(sdexplore.token_table(tiny.tokenizer, "")) == 77
    assert len(sdexplore.token_table(tiny.tokenizer, "   \n\t ")) == 77
    assert sdexplore.token_table(tiny.tokenizer, "ÄÖÜ 🐱 cat")[-1].kind == "padding"  # unknown bytes: sub-words
    clear_error(lambda: saved_run.token_table(5), "prompt_index", kinds=(IndexError,))
    clear_error(lambda: saved_run.token_table("0"), "prompt_index")


PREVIEW_ARGUMENTS = [
    ("step", dict(step=99), (IndexError,)), ("step", dict(step="0"), (TypeError,)),
    ("step", dict(step=1.5), (TypeError,)), ("step", dict(step=None), (TypeError,)),
    ("latent", dict(which="noise"), (ValueError,)), ("method", dict(method="jpeg"), (ValueError,)),
    ("pipe=", dict(method="vae"), (ValueError,)), ("taesd=", dict(method="taesd"), (ValueError,)),
    ("foo", dict(foo=1), (TypeError,)),
]


@pytest.mark.parametrize("argument,kwargs,kinds", PREVIEW_ARGUMENTS,
                         ids=[f"{a}-{i}" for i, (a, _, _) in enumerate(PREVIEW_ARGUMENTS)])
def test_preview_refuses_malformed_arguments_clearly(saved_run, argument, kwargs, kinds):
    clear_error(lambda: saved_run.preview(**kwargs), argument, kinds=kinds)


def test_studies_refuse_bad_pictures_through_trace(tiny):
    from sdexplore.studies.img2img import strength_sweep

    clear_error(lambda: strength_sweep(tiny, np.zeros((3, 64, 64), np.uint8), PROMPT, [0.5], [0],
                                       num_inference_steps=2), "image")
    clear_error(lambda: strength_sweep(tiny, picture(), PROMPT, [0.1], [0], num_inference_steps=4), "strength")
