"""The ``sdexplore`` command: trace a prompt, show what a trace holds, rebuild every study figure.

    sdexplore trace "a photo of a cat" --seed 0 --out cat.safetensors [--attention]
    sdexplore show cat.safetensors [--out DIR] [--animation gif]
    sdexplore figures [--model M] [--out DIR] [--only 01 02]
    sdexplore demo

Errors are one line on stderr, "sdexplore: error: ...", with exit status 2 for bad input and 1 for a run
that failed; --debug shows the traceback. Nothing already on disk is replaced without --overwrite
(``figures`` exists to rebuild figures/ and says which files it wrote).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_PROMPT = "a photo of an orange cat on the left, sea background"
BAD_INPUT, RUN_FAILED = 2, 1


class UsageError(Exception):
    """Bad input on the command line (exit status 2)."""


class RunFailed(Exception):
    """The command was fine but the work failed (exit status 1)."""


def default_model() -> str:
    """The embedded default: the shipped toy model when its weights are present, else the tiny one."""
    from .models import TOY_WEIGHTS

    return "toy" if (TOY_WEIGHTS / "model_index.json").exists() else "tiny"


# --- sdexplore trace -------------------------------------------------------------------------

def trace_command(args) -> int:
    """Trace one prompt and save the trace (safetensors + JSON metadata)."""
    from . import load_pipeline, trace

    out = _new_output(args.out, ".safetensors", args.overwrite, "--out")
    model = args.model or default_model()
    pipe = load_pipeline(model, scheduler=args.scheduler)
    kwargs = {"num_inference_steps": args.steps, "guidance_scale": args.guidance}
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    run = trace(pipe, args.prompt, seed=args.seed, attention=args.attention, **kwargs)
    run.save(out)
    print(f"{run!r}\nwrote {out}")
    return 0


# --- sdexplore show --------------------------------------------------------------------------

def show_command(args) -> int:
    """Print what a trace holds and write its denoising strip (and, if asked, an animation)."""
    from . import Trace
    from .export import refuse_existing, save_denoising_animation, save_figure
    from .plot.steps import denoising_previews, plot_denoising

    source = Path(args.trace)
    if not source.is_file():
        raise UsageError(f"no trace file at {source} (give the .safetensors file `sdexplore trace` wrote)")
    run = Trace.load(source)
    out = Path(args.out) if args.out is not None else source.parent
    strip = out / f"{source.stem}_denoising.png"
    animation = out / f"{source.stem}_animation.{args.animation}" if args.animation else None
    if not args.overwrite:
        refuse_existing([strip, strip.with_suffix(".json")]
                        + ([animation, animation.with_suffix(".json")] if animation else []))
    print(describe(run))
    decoder = {"method": "approx"}
    if args.model:
        from . import load_pipeline

        decoder = {"method": "vae", "pipe": load_pipeline(args.model)}
    title = f"{run.prompt!r} · seed {run.seed} · {run.num_steps} steps"
    figure = plot_denoising(denoising_previews(run, **decoder), title=title)
    written = [save_figure(figure, strip, run=run, params={"decode": decoder["method"]}, overwrite=args.overwrite)]
    if animation:
        written.append(save_denoising_animation(run, animation, overwrite=args.overwrite, **decoder))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def describe(run) -> str:
    """A few lines saying what a trace holds: prompt, seed, steps, tensor shapes, attention, parameters."""
    shapes = {name: list(getattr(run, name).shape) for name in run._tensor_names() if getattr(run, name) is not None}
    attention = "no"
    if run.attention is not None:
        attention = f"yes ({type(run.attention).__name__})"
        mode = getattr(run.attention, "mode", None)
        if mode:
            attention = f"yes, {mode}"
    timesteps = run.timesteps.tolist()
    lines = [
        f"prompt:      {run.prompt!r}",
        f"negative:    {run.params.get('negative_prompt')!r}",
        f"seed:        {run.seed}",
        f"steps:       {run.num_steps} (timesteps {timesteps[0]:.0f} ... {timesteps[-1]:.0f})",
        f"images:      {len(run.images)} of {run.images[0].size[0]}x{run.images[0].size[1]}" if run.images
        else "images:      none",
        f"attention:   {attention}",
        "tensors:     " + ", ".join(f"{name} {shape}" for name, shape in shapes.items()),
        "params:      " + json.dumps({k: v for k, v in run.params.items() if k != "scheduler_config"}, default=str),
    ]
    return "\n".join(lines)


# --- sdexplore figures -----------------------------------------------------------------------

def figures_command(args) -> int:
    """Run the notebooks top to bottom (they save every study figure); store them with their outputs."""
    from .notebook import default_notebooks_dir, run_notebooks, select_notebooks

    folder = Path(args.notebooks) if args.notebooks else default_notebooks_dir()
    notebooks = select_notebooks(folder, args.only)
    default_out = (folder.parent / "figures").resolve()
    out = Path(args.out).resolve() if args.out else default_out
    keep = out == default_out  # committed notebooks carry the pictures that figures/ holds
    model = args.model or default_model()
    try:
        written = run_notebooks(notebooks, model=model, figures=out, store_outputs=keep, timeout=args.timeout,
                                kernel_log=getattr(args, "debug", False))
    except RuntimeError as error:
        raise RunFailed(str(error)) from error
    print(f"{len(written)} figures in {out}" + (f"; notebooks stored with their outputs in {folder}" if keep else ""))
    return 0


# --- sdexplore demo --------------------------------------------------------------------------

def demo_command(args) -> int:
    """Trace one prompt, save the trace, and write the denoising figure through save_figure."""
    from . import load_pipeline, trace
    from .export import save_figure
    from .plot.steps import denoising_previews, plot_denoising

    model = args.model or default_model()
    stem = f"demo_{model.replace('/', '_')}_seed{args.seed}"
    figure_path = Path(args.out) / f"{stem}.png"
    if args.save_trace:
        _new_output(args.save_trace, ".safetensors", args.overwrite, "--save-trace")
    if not args.overwrite:
        from .export import refuse_existing

        refuse_existing([figure_path, figure_path.with_suffix(".json")])
    pipe = load_pipeline(model, scheduler=args.scheduler)
    run = trace(pipe, args.prompt, seed=args.seed, num_inference_steps=args.steps, guidance_scale=args.guidance)
    title = f"{args.prompt!r} · {model} · seed {args.seed} · {run.num_steps} steps · cfg {args.guidance}"
    figure = plot_denoising(denoising_previews(run, method="vae", pipe=pipe), title=title)
    save_figure(figure, figure_path, run=run, overwrite=args.overwrite,
                params={"question": "How does pure noise become a picture, step by step?", "model": model})
    if args.save_trace:
        run.save(Path(args.save_trace))
    print(f"{run!r}\nwrote {figure_path} and {stem}.json")
    return 0


# --- arguments and errors --------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line: "sdexplore: error: ..." and exit status 2."""

    def error(self, message):
        hint = f" (see `{self.prog} --help`)"
        raise UsageError(message + hint)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _finite_float(text: str) -> float:
    import math

    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


_positive_int.__name__ = "integer >= 1"
_finite_float.__name__ = "finite number"


def _generation_arguments(parser: argparse.ArgumentParser, prompt_default: str | None) -> None:
    if prompt_default is None:
        parser.add_argument("prompt", help="the text prompt")
        parser.add_argument("--seed", type=int, required=True, help="the seed (same seed, same trace)")
    else:
        parser.add_argument("--prompt", default=prompt_default)
        parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default=None, help="toy | tiny | a diffusers folder | a hub id (default: toy)")
    parser.add_argument("--steps", type=_positive_int, default=25, help="num_inference_steps (default 25)")
    parser.add_argument("--guidance", type=_finite_float, default=7.5, help="guidance_scale (default 7.5)")
    parser.add_argument("--scheduler", default=None, help="ddim | ddpm | euler | euler_a | dpm++ | pndm")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the full traceback of an error")
    parser = _Parser(prog="sdexplore", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     parents=[common])
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("trace", parents=[common], help="trace a prompt and save the trace")
    _generation_arguments(run, None)
    run.add_argument("--negative-prompt", default=None)
    run.add_argument("--attention", action="store_true", help="also record cross-attention maps")
    run.add_argument("--out", required=True, help="the .safetensors file to write")
    run.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    run.set_defaults(handler=trace_command)

    show = commands.add_parser("show", parents=[common], help="print what a trace holds and write its strip")
    show.add_argument("trace", help="a .safetensors file written by `sdexplore trace`")
    show.add_argument("--out", default=None, help="folder for <name>_denoising.png (default: the trace's folder)")
    show.add_argument("--model", default=None, help="decode with this model's VAE (default: the quick approximation)")
    show.add_argument("--animation", choices=("gif", "mp4"), default=None, help="also write x_t and x0 animated")
    show.add_argument("--overwrite", action="store_true", help="replace the strip/animation if they exist")
    show.set_defaults(handler=show_command)

    figures = commands.add_parser("figures", parents=[common],
                                  help="rebuild every study figure by running the notebooks")
    figures.add_argument("--model", default=None, help="the model the notebooks load (default: toy)")
    figures.add_argument("--out", default=None,
                         help="folder for the figures (default: figures/ beside notebooks/; only then are the "
                              "notebooks stored back with their outputs)")
    figures.add_argument("--only", nargs="+", default=None, metavar="NAME",
                         help="notebooks to run, by name or prefix (e.g. 01 02_where_words_look)")
    figures.add_argument("--notebooks", default=None, help="the notebooks folder (default: the repository's)")
    figures.add_argument("--timeout", type=_positive_int, default=900, help="seconds allowed per cell (default 900)")
    figures.set_defaults(handler=figures_command)

    demo = commands.add_parser("demo", parents=[common], help="trace a prompt on the default model, write a figure")
    _generation_arguments(demo, DEFAULT_PROMPT)
    demo.add_argument("--out", default="figures")
    demo.add_argument("--save-trace", default=None, help="also save the trace to this .safetensors file")
    demo.add_argument("--overwrite", action="store_true", help="replace the figure/trace if they exist")
    demo.set_defaults(handler=demo_command)
    return parser


def _new_output(path: str, suffix: str, overwrite: bool, option: str) -> Path:
    """``path`` checked before any work: the right suffix, and not an existing file unless ``overwrite``."""
    out = Path(path)
    if out.suffix.lower() != suffix:
        raise UsageError(f"{option} must be a {suffix} file, got {path!r}")
    if out.is_dir():
        raise UsageError(f"{option} {path!r} is a folder; give a {suffix} file path")
    if out.exists() and not overwrite:
        raise UsageError(f"{option} {path!r} already exists; refusing to replace it (pass --overwrite)")
    return out


def _exit_status(error: BaseException) -> int:
    """2 for input the user can fix, 1 for a run that failed."""
    from .capture.storage import TraceFileError
    from .models import ModelNotAvailableError

    bad_input = (UsageError, TraceFileError, ModelNotAvailableError, FileExistsError, ValueError, TypeError,
                 KeyError, IndexError)
    return BAD_INPUT if isinstance(error, bad_input) and not isinstance(error, RunFailed) else RUN_FAILED


def _self_explanatory() -> tuple[type, ...]:
    """Errors whose message says it all (no class name in front of it)."""
    from .capture.storage import TraceFileError
    from .models import ModelNotAvailableError
    from .notebook import NotebookSelectionError

    return UsageError, RunFailed, FileExistsError, TraceFileError, ModelNotAvailableError, NotebookSelectionError


def main(argv: list[str] | None = None) -> int:
    """Run the command; errors are one line on stderr (traceback with --debug), exit status 2 or 1."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        return args.handler(args)
    except SystemExit as done:  # --help
        return done.code or 0
    except KeyboardInterrupt:
        print("sdexplore: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # every error becomes one line (a traceback with --debug)
        self_explanatory = _self_explanatory()
        if debug:
            import traceback

            traceback.print_exc()
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if not isinstance(error, self_explanatory):
            message = f"{type(error).__name__}: {message}"
        print(f"sdexplore: error: {message}", file=sys.stderr)
        return _exit_status(error)


if __name__ == "__main__":
    sys.exit(main())
