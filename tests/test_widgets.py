"""The notebook sliders re-run the pipeline with the slider's value, same seed."""

import sdexplore
from sdexplore.widgets import SamplingExplorer


def test_the_guidance_slider_remakes_the_picture_with_its_value(tiny):
    explorer = SamplingExplorer(tiny, "a photo of a cat", seed=0, num_inference_steps=3)
    first = explorer.picture.value
    assert first[:4] == b"\x89PNG" and explorer.last_run.params["guidance_scale"] == 7.5
    assert explorer.strength not in explorer.widget.children[0].children  # no image, no strength slider
    explorer.guidance.value = 1.0  # what moving the slider does
    assert explorer.last_run.params["guidance_scale"] == 1.0 and explorer.last_run.seed == 0
    assert explorer.picture.value != first
    assert "guidance 1.0" in explorer.caption.value


def test_the_strength_slider_sets_how_many_steps_run(tiny):
    image = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=2).images[0]
    explorer = SamplingExplorer(tiny, "a kitten", seed=1, image=image, num_inference_steps=10, strength=0.5)
    assert explorer.last_run.num_steps == 5
    explorer.strength.value = 0.8
    assert explorer.last_run.num_steps == 8 and "8 of 10 steps run" in explorer.caption.value
