"""The quick-start main job: `sdexplore demo` traces a prompt and writes a figure with a JSON sidecar."""

import json

from PIL import Image

from sdexplore.cli import main


def test_demo_writes_a_figure_sidecar_and_trace(tmp_path):
    code = main(["demo", "--model", "tiny", "--steps", "3", "--out", str(tmp_path),
                 "--save-trace", str(tmp_path / "run.safetensors")])
    assert code == 0
    figure = tmp_path / "demo_tiny_seed0.png"
    with Image.open(figure) as picture:
        assert picture.width > 300 and picture.height > 200
    sidecar = json.loads((tmp_path / "demo_tiny_seed0.json").read_text())
    assert sidecar["seed"] == 0 and sidecar["num_inference_steps"] == 3 and sidecar["figure"] == figure.name
    assert sidecar["model"] == "tiny"  # the name asked for, not a path on this machine
    import sdexplore

    assert sdexplore.Trace.load(tmp_path / "run.safetensors").num_steps == 3
