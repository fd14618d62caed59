"""trace() on SDXL, SD3 and Flux (tiny random pipelines built in code), each capture checked against an
independent recomputation: the pipeline's own untraced output, its own encode_prompt, its tokenizers,
the flow-matching step rule, diffusers' own unpacking of Flux latents, the scheduler's own x0."""

import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DPMSolverMultistepScheduler, EulerDiscreteScheduler, FluxPipeline
from PIL import Image

import sdexplore
from sdexplore.capture import table as capture_tables
from sdexplore.capture.families import (
    FAMILIES,
    family_of,
    pack_latents,
    sequence_tokens,
    token_tables,
    unpack_latents,
)
from sdexplore.capture.inputs import UnusedArgumentWarning, default_of
from sdexplore.capture.run import describe_pipeline, tracing
from sdexplore.capture.steps import alpha_bar_at
from sdexplore.capture.storage import save_tensors
from sdexplore.prompts import Token, token_groups, token_table

KINDS = ("tiny-sdxl", "tiny-sd3", "tiny-flux")
PROMPT = "a tabby cat on the beach"
STEPS = 3
SIZE = {"height": 64, "width": 64}  # Flux's default is 1024x1024
README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture(scope="module")
def pipes():
    return {kind: sdexplore.load_pipeline(kind) for kind in KINDS}


@pytest.fixture(scope="module")
def runs(pipes):
    return {kind: sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=STEPS, **SIZE)
            for kind, pipe in pipes.items()}


def untraced(pipe, **kwargs):
    generator = torch.Generator().manual_seed(0)
    return pipe(PROMPT, generator=generator, num_inference_steps=STEPS, **SIZE, **kwargs).images


# --- the picture and the latents: traced = untraced -------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_traced_picture_is_the_untraced_picture_bitwise(pipes, runs, kind):
    expected = untraced(pipes[kind], output_type="pil")[0]
    assert np.array_equal(np.asarray(runs[kind].images[0]), np.asarray(expected))


@pytest.mark.parametrize("kind", KINDS)
def test_final_latents_are_the_untraced_latent_output(pipes, runs, kind):
    latents = untraced(pipes[kind], output_type="latent")
    if kind == "tiny-flux":  # FluxPipeline returns its packed tokens: unpack them with diffusers' own code
        latents = FluxPipeline._unpack_latents(latents, 64, 64, pipes[kind].vae_scale_factor)
    assert runs[kind].latents.shape[2:] == (16 if kind != "tiny-sdxl" else 4, 8, 8)
    assert torch.equal(runs[kind].latents[-1], latents.float())


# --- predictions and x0 -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["tiny-sd3", "tiny-flux"])
def test_flow_x0_is_x_t_minus_sigma_v_and_the_step_rule_holds(runs, kind):
    """FlowMatch timesteps are sigma * 1000, so sigma comes from the trace's timesteps, not from sdexplore's sigmas."""
    run = runs[kind]
    assert run.prediction_kind == "flow" and run.params["prediction_kind"] == "flow"
    sigmas = run.timesteps / 1000.0
    torch.testing.assert_close(run.sigmas, sigmas)
    for i in range(run.num_steps):
        torch.testing.assert_close(run.x0[i], run.latents[i] - sigmas[i] * run.noise_pred[i], atol=1e-5, rtol=1e-5)
        next_sigma = sigmas[i + 1] if i + 1 < run.num_steps else 0.0
        torch.testing.assert_close(run.latents[i + 1], run.latents[i] + (next_sigma - sigmas[i]) * run.noise_pred[i],
                                   atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(run.x0[-1], run.latents[-1])  # the last step lands on its own x0 (sigma -> 0)
    step = run.step(1)
    assert step["sigma"] == pytest.approx(float(sigmas[1])) and step["prediction_kind"] == "flow"


def test_sdxl_x0_matches_eulers_own(runs):
    run = runs["tiny-sdxl"]
    assert run.prediction_kind == "epsilon" and run.scheduler_x0 is not None
    torch.testing.assert_close(run.x0, run.scheduler_x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["tiny-sdxl", "tiny-sd3"])
def test_cfg_parts_combine_into_the_guided_prediction(pipes, runs, kind):
    run = runs[kind]
    scale = default_of(pipes[kind], "guidance_scale")
    assert run.noise_pred_uncond is not None and run.negative_prompt_embeds is not None
    torch.testing.assert_close(run.noise_pred, run.noise_pred_uncond + scale * (run.noise_pred_text -
                                                                              run.noise_pred_uncond))


def test_sd3_skip_layer_guidance_adds_a_call_the_cfg_parts_do_not_absorb(pipes):
    """SD3's skip-layer guidance makes a third denoiser call at some steps; the CFG parts stay the CFG batch's."""
    pipe = pipes["tiny-sd3"]
    run = sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=10, skip_guidance_layers=[0])
    scale = default_of(pipe, "guidance_scale")
    plain = run.noise_pred_uncond + scale * (run.noise_pred_text - run.noise_pred_uncond)
    differs = [(run.noise_pred[i] - plain[i]).abs().max().item() > 1e-4 for i in range(run.num_steps)]
    assert differs == [i == 1 for i in range(10)]  # guidance skipped layers only between 1% and 20% of the steps
    assert run.noise_pred_text.shape == run.noise_pred.shape


def test_flux_has_no_cfg_batch(runs):
    run = runs["tiny-flux"]
    assert run.noise_pred_uncond is None and run.negative_prompt_embeds is None
    assert torch.equal(run.noise_pred, run.noise_pred_text)


def test_flux_true_cfg_parts_are_text_then_negative(pipes):
    run = sdexplore.trace(pipes["tiny-flux"], PROMPT, seed=0, num_inference_steps=2, negative_prompt="a dog",
                          true_cfg_scale=3.0, **SIZE)
    torch.testing.assert_close(run.noise_pred, run.noise_pred_uncond + 3.0 * (run.noise_pred_text -
                                                                            run.noise_pred_uncond))
    negative = pipes["tiny-flux"].encode_prompt(prompt="a dog", prompt_2=None, device="cpu")[0]
    torch.testing.assert_close(run.negative_prompt_embeds, negative, atol=1e-4, rtol=1e-4)


def test_flux_negative_prompt_without_true_cfg_is_left_out_with_a_warning(pipes):
    with pytest.warns(UnusedArgumentWarning, match="true_cfg_scale"):
        run = sdexplore.trace(pipes["tiny-flux"], PROMPT, seed=0, num_inference_steps=1, negative_prompt="a dog",
                              **SIZE)
    assert "negative_prompt" not in run.params
    with pytest.raises(TypeError, match="did you mean 'negative_prompt'"):
        sdexplore.trace(pipes["tiny-flux"], PROMPT, seed=0, negative_promt="a dog", **SIZE)


@pytest.mark.parametrize("sigmas", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_x0_with_euler_karras_and_exponential_sigmas_is_eulers_own(sigmas):
    pipe = sdexplore.load_pipeline("tiny")
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config, **{sigmas: True})
    run = sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=4)
    torch.testing.assert_close(run.x0, run.scheduler_x0, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sigmas", ["use_karras_sigmas", "use_exponential_sigmas"])
def test_x0_with_dpm_solver_karras_and_exponential_sigmas_uses_the_schedulers_own(sigmas):
    """DPM++ rounds these sigmas' timesteps to integers: alpha_bar read back from t would miss its sigma."""
    pipe = sdexplore.load_pipeline("tiny")
    pipe.scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config, **{sigmas: True})
    run = sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=4)
    scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(4)
    for i in range(run.num_steps):
        scheduler._step_index = i
        expected = scheduler.convert_model_output(run.noise_pred[i], sample=run.latents[i])  # its data prediction
        torch.testing.assert_close(run.x0[i], expected, atol=1e-4, rtol=1e-4)
    interpolated = torch.tensor([(1 / alpha_bar_at(pipe.scheduler, t) - 1) ** 0.5 for t in run.timesteps.tolist()])
    assert (interpolated - run.sigmas).abs().max() > 1e-3  # the old reading was off: the test above can fail


def test_flux_unpacking_is_diffusers_own_and_inverts_packing():
    packed = torch.randn(2, 16, 64)
    ours = unpack_latents(packed, (8, 8))
    torch.testing.assert_close(ours, FluxPipeline._unpack_latents(packed, 64, 64, 8), rtol=0, atol=0)
    assert torch.equal(pack_latents(ours), packed)
    torch.testing.assert_close(pack_latents(ours), FluxPipeline._pack_latents(ours, 2, 16, 8, 8), rtol=0, atol=0)


# --- text: embeddings, pooled, time ids, token tables ------------------------------------------------


def test_sdxl_embeddings_pooled_and_time_ids_are_encode_prompts(pipes, runs):
    pipe, run = pipes["tiny-sdxl"], runs["tiny-sdxl"]
    embeds, negative, pooled, negative_pooled = pipe.encode_prompt(prompt=PROMPT, device="cpu",
                                                                    do_classifier_free_guidance=True)
    torch.testing.assert_close(run.prompt_embeds, embeds)
    torch.testing.assert_close(run.negative_prompt_embeds, negative, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run.pooled_prompt_embeds, pooled)
    torch.testing.assert_close(run.negative_pooled_prompt_embeds, negative_pooled)
    assert run.time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]  # original size, crop corner, target size
    assert run.negative_time_ids.tolist() == [[64, 64, 0, 0, 64, 64]]


def test_sd3_sequence_is_77_clip_then_256_t5_positions(pipes, runs):
    pipe, run = pipes["tiny-sd3"], runs["tiny-sd3"]
    embeds, _, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, prompt_3=None, device="cpu",
                                              do_classifier_free_guidance=True)
    torch.testing.assert_close(run.prompt_embeds, embeds)
    torch.testing.assert_close(run.pooled_prompt_embeds, pooled)
    table = run.tokens[0]
    assert len(table) == run.prompt_embeds.shape[1] == 77 + 256
    assert [t.position for t in table] == list(range(333))
    assert {t.encoder for t in table[:77]} == {"clip"} and {t.encoder for t in table[77:]} == {"t5"}
    t5_ids = pipe.tokenizer_3(PROMPT, padding="max_length", max_length=256, truncation=True).input_ids
    clip_ids = pipe.tokenizer(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert [t.id for t in table] == clip_ids + t5_ids
    assert [t.id for t in run.token_table(encoder="clip_2")] == \
        pipe.tokenizer_2(PROMPT, padding="max_length", max_length=77, truncation=True).input_ids
    assert set(run.token_tables) == {"clip", "clip_2", "t5"}
    groups = token_groups(table)
    assert [g.label for g in groups if g.kind == "word"] == ["a", "tabby", "cat", "on", "the", "beach"] * 2
    assert [g.kind for g in groups].count("padding") == 2 and groups[-1].positions[-1] == 332


def test_sd3_without_t5_attends_to_zero_positions_and_the_table_says_so(pipes):
    pipe = pipes["tiny-sd3"]
    without = type(pipe)(**{**pipe.components, "text_encoder_3": None, "tokenizer_3": None})
    without.set_progress_bar_config(disable=True)
    run = sdexplore.trace(without, PROMPT, seed=0, num_inference_steps=1, max_sequence_length=40)
    assert len(run.tokens[0]) == run.prompt_embeds.shape[1] == 77 + 40 and set(run.token_tables) == {"clip", "clip_2"}
    assert all(t.kind == "padding" and t.encoder == "t5" for t in run.tokens[0][77:])
    assert run.prompt_embeds[0, 77:].abs().max() == 0


def test_flux_sequence_is_t5_and_follows_max_sequence_length(pipes, runs):
    pipe, run = pipes["tiny-flux"], runs["tiny-flux"]
    embeds, pooled, _ = pipe.encode_prompt(prompt=PROMPT, prompt_2=None, device="cpu")
    torch.testing.assert_close(run.prompt_embeds, embeds, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(run.pooled_prompt_embeds, pooled)
    assert len(run.tokens[0]) == run.prompt_embeds.shape[1] == 512
    assert set(run.token_tables) == {"clip", "t5"} and {t.encoder for t in run.tokens[0]} == {"t5"}
    short = sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=1, max_sequence_length=32, **SIZE)
    ids = pipe.tokenizer_2(PROMPT, padding="max_length", max_length=32, truncation=True).input_ids
    assert [t.id for t in short.tokens[0]] == ids and short.prompt_embeds.shape[1] == 32


def test_t5_table_reads_words_the_sentencepiece_way(pipes):
    tokenizer = pipes["tiny-flux"].tokenizer_2
    table = token_table(tokenizer, "a zebra cat", max_length=12)
    words = [(t.text, t.kind, t.word) for t in table[:7]]
    assert words[0] == ("▁a", "word", "a") and words[1][2] == "zebra" and words[1][0].startswith("▁")
    assert [w for _, k, w in words if k == "word"][-1] == "cat"
    assert table[len([t for t in table if t.kind == "word"])].text == "</s>"
    assert [t.kind for t in table].count("padding") == 12 - len([t for t in table if t.kind == "word"]) - 1
    assert table[0].kind != "start" and all(t.encoder == "t5" for t in table)


def test_sdxl_tables_are_both_clip_encoders_and_the_sequence_is_the_first(pipes, runs):
    pipe, run = pipes["tiny-sdxl"], runs["tiny-sdxl"]
    assert set(run.token_tables) == {"clip", "clip_2"}
    assert run.tokens[0] == run.token_table(encoder="clip") == token_table(pipe.tokenizer, PROMPT)
    assert all(t.encoder == "clip_2" for t in run.token_table(encoder="clip_2"))
    two = token_tables(pipe, PROMPT, prompt_2="a dog")
    assert [t.word for t in two["clip_2"] if t.kind == "word"] == ["a", "dog"]


def test_sd1_sequence_table_is_the_old_clip_table(tiny):
    assert sequence_tokens(tiny, PROMPT) == token_table(tiny.tokenizer, PROMPT)


def test_old_trace_without_encoder_or_tables_loads(tmp_path, runs):
    run = runs["tiny-sdxl"]
    tensors = {name: value for name, value in run._tensor_fields().items() if value is not None}
    tensors["images"] = torch.zeros(0, dtype=torch.uint8)
    old_rows = [[{k: v for k, v in t.to_dict().items() if k != "encoder"} for t in table] for table in run.tokens]
    save_tensors(tmp_path / "old.safetensors", tensors, {"params": run.params, "tokens": old_rows})
    loaded = sdexplore.Trace.load(tmp_path / "old.safetensors")
    assert loaded.tokens == run.tokens and loaded.token_tables == {}
    assert all(isinstance(t, Token) and t.encoder == "clip" for t in loaded.tokens[0])


# --- saving, loading, the pipeline's folder ------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_trace_saves_and_loads_with_every_capture(tmp_path, runs, kind):
    run = runs[kind]
    loaded = sdexplore.Trace.load(run.save(tmp_path / "run.safetensors"))
    assert loaded.token_tables == run.token_tables and loaded.tokens == run.tokens
    for name, value in run._tensor_fields().items():
        assert (value is None and getattr(loaded, name) is None) or torch.equal(getattr(loaded, name), value), name


@pytest.mark.parametrize("kind", KINDS)
def test_saved_folder_loads_through_load_pipeline_and_traces(tmp_path, pipes, runs, kind):
    """Through diffusers' real loading path; traced = untraced bitwise on the loaded pipeline too."""
    pipes[kind].save_pretrained(tmp_path / kind)
    loaded = sdexplore.load_pipeline(tmp_path / kind)
    assert type(loaded) is type(pipes[kind]) and family_of(loaded) is family_of(pipes[kind])
    run = sdexplore.trace(loaded, PROMPT, seed=0, num_inference_steps=STEPS, **SIZE)
    assert np.array_equal(np.asarray(run.images[0]), np.asarray(untraced(loaded)[0]))
    assert run.tokens == runs[kind].tokens and run.token_tables == runs[kind].token_tables
    # same weights; transformers may pick another attention kernel for the loaded text encoders
    torch.testing.assert_close(run.latents, runs[kind].latents, atol=1e-4, rtol=1e-4)


# --- what a trace says about its pipeline ---------------------------------------------------------------


@pytest.mark.parametrize("kind,family,denoiser,channels,shift", [
    ("tiny", "sd", "UNet2DConditionModel", 4, None),
    ("tiny-sdxl", "sdxl", "UNet2DConditionModel", 4, None),
    ("tiny-sd3", "sd3", "SD3Transformer2DModel", 16, 0.0609),
    ("tiny-flux", "flux", "FluxTransformer2DModel", 16, 0.1159),
])
def test_describe_pipeline_records_family_and_what_previews_need(kind, family, denoiser, channels, shift):
    pipe = sdexplore.load_pipeline(kind)
    facts = describe_pipeline(pipe)
    assert family_of(pipe) is FAMILIES[family] and facts["family"] == family and facts["denoiser"] == denoiser
    assert facts["latent_channels"] == channels == pipe.vae.config.latent_channels
    assert facts["vae_scaling_factor"] == pytest.approx(pipe.vae.config.scaling_factor)
    assert facts["vae_shift_factor"] == (None if shift is None else pytest.approx(shift))
    assert facts["prediction_kind"] == ("flow" if family in ("sd3", "flux") else "epsilon")
    assert facts["prediction_type"] == facts["prediction_kind"]  # FlowMatch schedulers have no prediction_type


def test_a_pipeline_of_another_family_is_refused_by_name():
    class Other:
        components = {"transformer": torch.nn.Linear(1, 1)}
        transformer, scheduler, vae = torch.nn.Linear(1, 1), object(), object()

        def __call__(self):
            pass

    with pytest.raises(TypeError, match="not a pipeline family sdexplore traces"):
        sdexplore.trace(Other(), PROMPT, seed=0)


def test_prompt_embeds_of_the_wrong_width_are_refused(pipes):
    with pytest.raises(ValueError, match="text width 32"):
        sdexplore.trace(pipes["tiny-sd3"], None, seed=0, prompt_embeds=torch.zeros(1, 333, 7),
                        pooled_prompt_embeds=torch.zeros(1, 64))


def test_step_count_mismatch_with_the_attention_recorder_is_an_error(pipes):
    class CountingRecorder:  # what an attention recorder that saw one denoiser call too many reports
        num_steps = STEPS + 1

        def result(self, tables):
            return None

    with tracing(pipes["tiny-sdxl"]) as recorder:
        recorder.attention = CountingRecorder()
        output = pipes["tiny-sdxl"](PROMPT, num_inference_steps=STEPS, callback_on_step_end=recorder.callback)
    with pytest.raises(RuntimeError, match="counted 4 denoiser steps but the scheduler made 3"):
        recorder.to_trace(output, prompt=PROMPT, seed=0)


# --- img2img and inpainting siblings --------------------------------------------------------------------


@pytest.mark.parametrize("kind,expected", [("tiny-sdxl", "StableDiffusionXLImg2ImgPipeline"),
                                           ("tiny-sd3", "StableDiffusion3Img2ImgPipeline"),
                                           ("tiny-flux", "FluxImg2ImgPipeline")])
def test_img2img_siblings_trace_and_keep_the_pictures_size(pipes, kind, expected):
    picture = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    run = sdexplore.trace(pipes[kind], PROMPT, seed=0, num_inference_steps=4, image=picture, strength=0.5)
    assert run.params["pipeline"] == expected and run.latents.shape[-2:] == (8, 8)
    assert run.num_steps == 2 and run.images[0].size == (64, 64)
    torch.testing.assert_close(run.x0[-1], run.latents[-1], atol=1e-5, rtol=1e-5)  # plain steps: no blending


@pytest.mark.parametrize("kind,expected", [("tiny-sdxl", "StableDiffusionXLInpaintPipeline"),
                                           ("tiny-sd3", "StableDiffusion3InpaintPipeline"),
                                           ("tiny-flux", "FluxInpaintPipeline")])
def test_inpainting_siblings_trace_and_keep_the_unmasked_latents(pipes, kind, expected):
    picture = Image.fromarray((np.random.RandomState(0).rand(64, 64, 3) * 255).astype(np.uint8))
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 32:] = 255  # repaint the right half
    run = sdexplore.trace(pipes[kind], PROMPT, seed=0, num_inference_steps=4, image=picture,
                          mask_image=Image.fromarray(mask), strength=1.0)
    assert run.params["pipeline"] == expected and run.latents.shape[-2:] == (8, 8)
    # the last step lands on its x0 (sigma -> 0); the pipeline then blends the picture back in where it is kept
    torch.testing.assert_close(run.latents[-1][..., 5:], run.x0[-1][..., 5:], atol=1e-5, rtol=1e-5)
    assert (run.latents[-1][..., :3] - run.x0[-1][..., :3]).abs().max() > 1e-2


# --- the README's table is what the code reports ---------------------------------------------------------


def test_readme_capture_table_is_generated_from_the_traces():
    text = README.read_text()
    pattern = re.escape(capture_tables.TABLE_START) + r"\n(.*?)\n" + re.escape(capture_tables.TABLE_END)
    match = re.search(pattern, text, re.S)
    assert match, "README.md lacks the capture table markers"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnusedArgumentWarning)
        table = capture_tables.capture_table(capture_tables.table_runs())
    assert match.group(1).strip() == table.strip(), \
        "README's capture table differs from `python -m sdexplore.capture.table`; paste its output"
