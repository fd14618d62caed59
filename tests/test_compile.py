"""A pipeline whose UNet is wrapped by torch.compile can be traced (issue 16).

One test, on the tiny random model (inductor compiling on a CPU takes minutes for anything bigger).
"""

import torch

import sdexplore

PROMPT = "a photo of a cat"


def test_a_pipeline_with_a_compiled_unet_traces_what_the_eager_one_traces():
    pipe = sdexplore.tiny_pipeline("tiny")
    kwargs = dict(num_inference_steps=2, guidance_scale=7.5)
    eager = sdexplore.trace(pipe, PROMPT, seed=0, **kwargs)
    pipe.unet = torch.compile(pipe.unet)  # mode="default", inductor
    compiled = sdexplore.trace(pipe, PROMPT, seed=0, **kwargs)
    assert isinstance(pipe.unet, torch._dynamo.eval_frame.OptimizedModule)  # left as the user wrapped it
    assert compiled.num_steps == eager.num_steps == 2
    for name in ("latents", "noise_pred_text", "noise_pred_uncond", "x0"):
        torch.testing.assert_close(getattr(compiled, name), getattr(eager, name), atol=1e-4, rtol=1e-3)


def test_attention_on_a_compiled_unet_is_refused_before_it_runs():
    """Hooks added after torch.compile are not called by the compiled graph: the maps would be empty."""
    import pytest

    pipe = sdexplore.tiny_pipeline("tiny")
    pipe.unet = torch.compile(pipe.unet)
    with pytest.raises(ValueError, match="torch.compile-d denoiser.*attention=False"):
        sdexplore.trace(pipe, PROMPT, seed=0, num_inference_steps=2, attention=True)
