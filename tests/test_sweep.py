"""sdexplore.sweep: grids, the local and Ray backends, the resumable folder and the result table."""

import json
import os
import sys

import numpy as np
import pytest
import torch

import sdexplore
from sdexplore.studies.interpolation import trace_prompt_interpolation
from sdexplore.sweep import Grid, PipelineSpec, SweepFolderError, run_sweep
from sdexplore.sweep import points as sweep_points

STEPS = 3


def small_grid(**fixed):
    return Grid(seed=[0, 1, 2], guidance_scale=[1.0, 7.5], prompt="a cat", num_inference_steps=STEPS, **fixed)


def counting(monkeypatch):
    """Count the points the pipeline actually runs (one by one or in batches)."""
    calls = []
    run_points = sweep_points.run_points

    def counted(pipe, grid, points, keep):
        calls.extend(points)
        return run_points(pipe, grid, points, keep)

    monkeypatch.setattr("sdexplore.sweep.local.run_points", counted)
    return calls


# --- the grid -------------------------------------------------------------------------------------


def test_lists_are_axes_in_order_and_everything_else_is_fixed():
    grid = Grid(seed=range(2), strength=np.array([0.5, 1.0]), prompt="a cat", num_inference_steps=np.int64(4))
    assert grid.shape == (2, 2) and len(grid) == 4
    assert grid.points() == [{"seed": 0, "strength": 0.5}, {"seed": 0, "strength": 1.0},
                             {"seed": 1, "strength": 0.5}, {"seed": 1, "strength": 1.0}]
    assert grid.params(grid.points()[1]) == {"prompt": "a cat", "num_inference_steps": 4, "seed": 0, "strength": 1.0}
    json.dumps(grid.spec())


@pytest.mark.parametrize("params, message", [
    ({"prompt": "a cat"}, "needs seed="),
    ({"seed": [0, -1]}, "ints >= 0"),
    ({"seed": 0, "scheduler": ["ddim", "heun"]}, "unknown scheduler 'heun'"),
    ({"seed": 0, "prompt": "a cat", "alpha": [0, 1]}, "target_prompt="),
    ({"seed": 0, "prompt": "a cat", "target_prompt": "a dog"}, "only mean something with alpha="),
    ({"seed": [0, 0]}, "repeats a value"),
    ({"seed": []}, "is empty"),
])
def test_a_bad_grid_is_refused_with_what_is_allowed(params, message):
    with pytest.raises(ValueError, match=message):
        Grid(**params)


def test_bad_options_name_the_argument(tiny):
    grid = small_grid()
    with pytest.raises(ValueError, match="backend must be one of local, ray"):
        run_sweep(tiny, grid, backend="dask")
    with pytest.raises(ValueError, match="batch_size"):
        run_sweep(tiny, grid, batch_size=0)
    with pytest.raises(ValueError, match="num_gpus .* backend='ray'"):
        run_sweep(tiny, grid, num_gpus=1)
    with pytest.raises(ValueError, match="keep names unknown fields \\['pictures'\\]"):
        run_sweep(tiny, grid, keep=["pictures"])
    with pytest.raises(TypeError, match="not a loaded pipeline"):
        run_sweep(tiny, grid, backend="ray")


# --- local backend ----------------------------------------------------------------------------------


def test_each_point_is_exactly_what_trace_gives(tiny):
    result = run_sweep(tiny, small_grid(), keep=["images", "latents", "noise_pred"], progress=False)
    assert len(result) == 6 and result.grid("latents").shape == (3, 2, STEPS + 1, 1, 4, 8, 8)
    for row in result:
        run = sdexplore.trace(tiny, "a cat", seed=row["seed"], guidance_scale=row["guidance_scale"],
                              num_inference_steps=STEPS)
        assert torch.equal(row["latents"], run.latents) and torch.equal(row["noise_pred"], run.noise_pred)
        assert np.array_equal(row["images"][0].numpy(), np.asarray(run.images[0]))


def test_whole_traces_when_nothing_is_chosen(tiny):
    result = run_sweep(tiny, Grid(seed=[3, 4], prompt="a cat", num_inference_steps=STEPS), progress=False)
    assert list(result.columns) == ["trace"]
    assert [run.seed for run in result.traces] == [3, 4]
    assert torch.equal(result.traces[1].x0, sdexplore.trace(tiny, "a cat", seed=4, num_inference_steps=STEPS).x0)


def test_seeds_run_as_one_batch_and_match_one_by_one(tiny, monkeypatch):
    calls = []
    trace_seeds = sweep_points.trace_seeds
    monkeypatch.setattr(sweep_points, "trace_seeds", lambda pipe, pts: calls.append(len(pts)) or trace_seeds(pipe, pts))
    alone = run_sweep(tiny, small_grid(), keep=["images", "latents"], progress=False)
    assert calls == []
    batched = run_sweep(tiny, small_grid(), keep=["images", "latents"], batch_size=3, progress=False)
    assert calls == [3, 3]  # per guidance scale, its three seeds in one pipeline call
    # the same seeds' noise; the UNet's batched kernels add in another order, so float precision, not bits
    assert torch.equal(batched.stack("latents")[:, 0], alone.stack("latents")[:, 0])
    torch.testing.assert_close(batched.stack("latents"), alone.stack("latents"), atol=1e-4, rtol=1e-4)
    difference = (batched.stack("images").int() - alone.stack("images").int()).abs()
    assert difference.max() <= 2


def test_an_sdxl_batch_gives_each_seed_its_own_trace():
    sdxl = sdexplore.load_pipeline("tiny-sdxl")
    grid = Grid(seed=[0, 1], prompt="a cat", num_inference_steps=2)
    batched = run_sweep(sdxl, grid, batch_size=2, progress=False).traces
    for run, seed in zip(batched, [0, 1]):
        alone = sdexplore.trace(sdxl, "a cat", seed=seed, num_inference_steps=2)
        assert run.seed == seed and run.latents.shape == alone.latents.shape
        assert run.pooled_prompt_embeds.shape == alone.pooled_prompt_embeds.shape  # [1, P]: cut to its picture
        torch.testing.assert_close(run.latents, alone.latents, atol=1e-4, rtol=1e-4)


def test_a_keep_function_bounds_what_is_kept(tiny):
    def final_picture(run):
        return {"final": run.latents[-1, 0], "steps": torch.tensor(run.num_steps)}

    result = run_sweep(tiny, small_grid(), keep=final_picture, progress=False)
    assert set(result.columns) == {"final", "steps"}
    assert result.grid("final", "seed", "guidance_scale").shape == (3, 2, 4, 8, 8)
    assert result.filter(seed=[0, 2], guidance_scale=7.5).stack("steps").tolist() == [STEPS, STEPS]
    with pytest.raises(ValueError, match="filter"):
        result.grid("final", "seed")  # guidance_scale takes two values
    assert result.filter(guidance_scale=1.0).grid("final", "seed").shape == (3, 4, 8, 8)


def test_a_progress_bar_counts_the_points_and_the_table_goes_to_pandas(tiny, capsys):
    result = run_sweep(tiny, small_grid(), keep=["images"])
    bar = capsys.readouterr().err
    assert "sweep: 100%" in bar and "6/6" in bar
    try:
        import pandas  # noqa: F401  (optional: a bonus, not a dependency)
    except ImportError:
        with pytest.raises(ImportError, match="pip install pandas"):
            result.to_pandas()
    else:
        frame = result.to_pandas()
        assert list(frame.columns) == ["seed", "guidance_scale", "images"] and len(frame) == 6


def test_a_scheduler_axis_swaps_the_scheduler_for_its_points_only(tiny):
    original = tiny.scheduler
    result = run_sweep(tiny, Grid(seed=0, scheduler=["ddim", "euler"], prompt="a cat", num_inference_steps=STEPS),
                       keep=["latents"], progress=False)
    assert tiny.scheduler is original
    tiny.scheduler = sdexplore.models.make_scheduler("euler", original.config)
    try:
        euler = sdexplore.trace(tiny, "a cat", seed=0, num_inference_steps=STEPS)
    finally:
        tiny.scheduler = original
    assert torch.equal(result.filter(scheduler="euler").column("latents")[0], euler.latents)
    assert not torch.equal(result.column("latents")[0], euler.latents)


def test_a_prompt_axis_gives_each_point_its_prompt(tiny):
    result = run_sweep(tiny, Grid(prompt=["a cat", "a dog"], seed=[0, 1], num_inference_steps=STEPS),
                       keep=["latents"], batch_size=2, progress=False)
    assert [run["prompt"] for run in result] == ["a cat", "a cat", "a dog", "a dog"]
    dog = sdexplore.trace(tiny, "a dog", seed=0, num_inference_steps=STEPS)
    torch.testing.assert_close(result.filter(prompt="a dog", seed=0).column("latents")[0], dog.latents,
                               atol=1e-4, rtol=1e-4)  # batched with seed 1: float precision
    assert not torch.allclose(result.column("latents")[0][-1], dog.latents[-1], atol=1e-3)


def test_an_alpha_axis_interpolates_prompt_embeddings(tiny):
    grid = Grid(seed=0, alpha=[0.0, 0.5, 1.0], prompt="a cat", target_prompt="a dog", num_inference_steps=STEPS)
    result = run_sweep(tiny, grid, keep=["latents"], progress=False)
    runs = trace_prompt_interpolation(tiny, "a cat", "a dog", [0.0, 0.5, 1.0], seed=0, num_inference_steps=STEPS)
    for kept, run in zip(result.column("latents"), runs):
        assert torch.equal(kept, run.latents)


# --- the folder ---------------------------------------------------------------------------------------


def test_a_sweep_resumes_from_its_folder_without_running_a_point_twice(tiny, tmp_path, monkeypatch):
    calls = counting(monkeypatch)
    folder = tmp_path / "sweep"
    first = run_sweep(tiny, small_grid(), keep=["latents"], folder=folder, progress=False)
    assert len(calls) == 6 and len(list((folder / "points").glob("*.safetensors"))) == 6
    again = run_sweep(tiny, small_grid(), keep=["latents"], folder=folder, progress=False)
    assert len(calls) == 6  # nothing computed again
    (folder / "points" / "000004.safetensors").unlink()  # a point lost (or never finished)
    third = run_sweep(tiny, small_grid(), keep=["latents"], folder=folder, progress=False)
    assert calls[6:] == [{"seed": 2, "guidance_scale": 1.0}]
    assert all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in
               zip(first.column("latents"), again.column("latents"), third.column("latents")))
    assert not list(folder.rglob("*.tmp"))


def test_an_interrupted_sweep_keeps_its_finished_points(tiny, tmp_path, monkeypatch):
    folder = tmp_path / "sweep"
    interrupt = {"at seed": 2}

    def final(run):
        if run.seed == interrupt["at seed"]:
            raise KeyboardInterrupt
        return {"final": run.latents[-1]}

    with pytest.raises(KeyboardInterrupt):
        run_sweep(tiny, small_grid(), keep=final, folder=folder, progress=False)
    assert sorted(p.name for p in (folder / "points").iterdir()) == [f"{i:06d}.safetensors" for i in range(4)]
    calls = counting(monkeypatch)
    interrupt["at seed"] = None
    result = run_sweep(tiny, small_grid(), keep=final, folder=folder, progress=False)
    assert calls == [{"seed": 2, "guidance_scale": 1.0}, {"seed": 2, "guidance_scale": 7.5}] and len(result) == 6


def test_a_folder_of_another_sweep_is_refused(tiny, tmp_path):
    folder = tmp_path / "sweep"
    run_sweep(tiny, small_grid(), keep=["latents"], folder=folder, progress=False)
    with pytest.raises(SweepFolderError, match=r"different sweep \(spec.grid.axes.seed: \[0, 1, 2\] in the folder, "
                                               r"\[0, 1, 5\] here"):
        run_sweep(tiny, Grid(seed=[0, 1, 5], guidance_scale=[1.0, 7.5], prompt="a cat",
                             num_inference_steps=STEPS), keep=["latents"], folder=folder, progress=False)
    with pytest.raises(SweepFolderError, match="spec.model"):
        run_sweep("tiny-sd2", small_grid(), keep=["latents"], folder=folder, progress=False)
    with pytest.raises(SweepFolderError, match="spec.keep"):
        run_sweep(tiny, small_grid(), keep=["x0"], folder=folder, progress=False)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(SweepFolderError, match="not a sweep folder"):
        run_sweep(tiny, small_grid(), folder=tmp_path / "notes", progress=False)


# --- Ray ------------------------------------------------------------------------------------------------


def test_without_ray_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(ImportError, match=r"pip install sdexplore\[ray\]"):
        run_sweep("tiny", small_grid(), backend="ray", progress=False)


@pytest.fixture(scope="module")
def ray_cluster():
    import ray  # the test extra installs it

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


def test_ray_gives_the_local_results_bit_for_bit_and_loads_the_model_once_per_worker(ray_cluster, tmp_path):
    def pictures_and_worker(run):  # defined here so that Ray ships it by value
        from sdexplore.sweep.spec import load_count

        return {"images": torch.from_numpy(np.array(run.images[0])), "latents": run.latents,
                "worker": torch.tensor([os.getpid(), load_count()])}

    grid = Grid(seed=[0, 1, 2, 3], guidance_scale=[1.0, 7.5], prompt="a photo of a cat", num_inference_steps=4)
    spec = PipelineSpec("toy")
    local = run_sweep(spec, grid, keep=pictures_and_worker, batch_size=2, threads=1, progress=False)
    distributed = run_sweep(spec, grid, keep=pictures_and_worker, batch_size=2, threads=1, backend="ray",
                            folder=tmp_path / "ray", progress=False)
    assert torch.equal(local.stack("images"), distributed.stack("images"))
    assert torch.equal(local.stack("latents"), distributed.stack("latents"))
    workers = distributed.stack("worker")  # [points, (pid, pipelines loaded by then)]
    assert int(workers[0, 0]) != os.getpid() and len(set(workers[:, 0].tolist())) < 4  # 4 batches: workers reused
    assert set(workers[:, 1].tolist()) == {1}  # each worker loaded the toy model once, for all its batches
    again = run_sweep(spec, grid, keep=pictures_and_worker, batch_size=2, threads=1, backend="ray",
                      folder=tmp_path / "ray", progress=False)  # resumed: nothing left to run
    assert torch.equal(again.stack("worker"), workers)
