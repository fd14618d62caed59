"""What bench_trace.py and bench_attention.py share: the pipelines they time, the timing loop, peak memory.

Pipelines (``--model`` / ``--size``):
- ``--model toy`` (default): the shipped toy model, 64², 25 steps;
- ``--size sd15``: SD 1.5's architecture with random weights (UNet 860M, CLIP ViT-L text encoder, the
  8x VAE), 512², 50 steps; ``--size sdxl``: SDXL's (UNet 2.6B, both text encoders), 1024², 30 steps.
  Built in code from the diffusers/transformers configs, nothing downloaded; timing and memory are the
  weights' shapes', not their values'. ``sd15-tiny`` / ``sdxl-tiny``: the same builders at a few channels,
  to check the scripts on a CPU.

Timing: every variant (plain pipeline call, trace, ...) is run once to warm up, then the variants take
turns ``--runs`` times (interleaved, so a slow spell of a shared machine hits all alike); medians.
Memory: each measured in a fresh process (CPU: peak RSS; GPU: torch's peak allocation), as the extra
over the same process's plain pipeline call.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import time

import torch

import sdexplore

PROMPT = "a photo of an orange cat on the left, sea background"
GUIDANCE = 7.5
MB = 2**20
SIZES = ("sd15", "sdxl", "sd15-tiny", "sdxl-tiny")
IMAGE_SIZE = {"sd15": 512, "sdxl": 1024, "sd15-tiny": 64, "sdxl-tiny": 64}
DEFAULT_STEPS = {"sd15": 50, "sdxl": 30}


def arguments(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="toy", help="toy | tiny | a diffusers folder (ignored with --size)")
    parser.add_argument("--size", choices=SIZES, default=None, help="random weights at a real model's size")
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument("--dtype", default=None, choices=["float32", "float16", "bfloat16"],
                        help="default: float16 on a GPU, float32 on the CPU")
    parser.add_argument("--steps", type=int, default=None, help="default: 50 for sd15, 30 for sdxl, else 25")
    parser.add_argument("--runs", type=int, default=7, help="interleaved timed runs of each variant")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--skip-memory", action="store_true")
    return parser


def settle(args) -> argparse.Namespace:
    """Fill in the defaults that depend on other arguments."""
    args.dtype = args.dtype or ("float16" if args.device.startswith("cuda") else "float32")
    args.steps = args.steps or DEFAULT_STEPS.get(args.size, 25)
    if args.threads:
        torch.set_num_threads(args.threads)
    return args


def model_name(args) -> str:
    return f"{args.size} (random weights)" if args.size else args.model


def make_pipeline(args):
    pipe = random_pipeline(args.size) if args.size else sdexplore.load_pipeline(args.model)
    dtype = getattr(torch, args.dtype)
    pipe = pipe.to(args.device) if pipe.unet.dtype == dtype else pipe.to(args.device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call_kwargs(args, pipe) -> dict:
    """The pipeline keywords every variant runs with: steps, CFG 7.5, the image size."""
    size = IMAGE_SIZE[args.size] if args.size else pipe.unet.config.sample_size * pipe.vae_scale_factor
    return dict(num_inference_steps=args.steps, guidance_scale=GUIDANCE, height=size, width=size)


def generator(args, seed: int = 0) -> torch.Generator:
    return torch.Generator(args.device).manual_seed(seed)


# --- random pipelines at real size --------------------------------------------------------------


def random_pipeline(size: str):
    """An SD 1.5- or SDXL-shaped pipeline with random weights (``size`` one of SIZES)."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}, got {size!r}")
    small = size.endswith("-tiny")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return _sdxl(small) if size.startswith("sdxl") else _sd15(small)


def _widths(small: bool, channels):
    return tuple(c // 10 for c in channels) if small else tuple(channels)


def _sd15(small: bool):
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel

    from sdexplore.tiny import TINY_WORDS, build_clip_tokenizer

    tokenizer = build_clip_tokenizer(TINY_WORDS)
    unet = UNet2DConditionModel(  # runwayml/stable-diffusion-v1-5 unet/config.json
        sample_size=8 if small else 64, block_out_channels=_widths(small, (320, 640, 1280, 1280)),
        cross_attention_dim=64 if small else 768, attention_head_dim=8, norm_num_groups=8 if small else 32)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, small, hidden=768, layers=12, heads=12))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    return StableDiffusionPipeline(vae=_vae(small, 0.18215), text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def _sdxl(small: bool):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from sdexplore.tiny import TINY_WORDS, build_clip_tokenizer

    tokenizer, tokenizer_2 = build_clip_tokenizer(TINY_WORDS), build_clip_tokenizer(TINY_WORDS)
    text_encoder = CLIPTextModel(_clip_config(tokenizer, small, hidden=768, layers=12, heads=12))
    pooled = 64 if small else 1280
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config(tokenizer_2, small, hidden=1280, layers=32, heads=20,
                                                              projection_dim=pooled, gelu=True))
    time_dim = 8 if small else 256
    unet = UNet2DConditionModel(  # stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
        sample_size=8 if small else 128, block_out_channels=_widths(small, (320, 640, 1280)),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4, 8) if small else (5, 10, 20), transformer_layers_per_block=(1, 2, 10),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=6 * time_dim + pooled,
        cross_attention_dim=2 * 64 if small else 2048, norm_num_groups=8 if small else 32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading")
    return StableDiffusionXLPipeline(vae=_vae(small, 0.13025), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer_2, unet=unet, scheduler=scheduler,
                                     add_watermarker=False)


def _clip_config(tokenizer, small: bool, *, hidden: int, layers: int, heads: int, projection_dim=None,
                 gelu: bool = False):
    from transformers import CLIPTextConfig

    extra = {} if projection_dim is None else {"projection_dim": projection_dim}
    return CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=64 if small else hidden,
                          intermediate_size=128 if small else 4 * hidden, num_hidden_layers=2 if small else layers,
                          num_attention_heads=4 if small else heads, max_position_embeddings=77,
                          hidden_act="gelu" if gelu else "quick_gelu", bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **extra)


def _vae(small: bool, scaling_factor: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(block_out_channels=(8, 16, 16, 16) if small else (128, 256, 512, 512),
                         down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                         layers_per_block=1 if small else 2, norm_num_groups=4 if small else 32, latent_channels=4,
                         scaling_factor=scaling_factor)


# --- timing ------------------------------------------------------------------------------------


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_once(run, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def interleaved_times(runs: dict, args) -> dict[str, list[float]]:
    """{variant: seconds of each round}: one warm-up each, then ``args.runs`` rounds taking turns."""
    for run in runs.values():
        run()
    times = {name: [] for name in runs}
    for _ in range(args.runs):
        for name, run in runs.items():
            times[name].append(time_once(run, args.device))
    return times


def interleaved_medians(runs: dict, args) -> dict[str, float]:
    """{variant: median seconds} of ``interleaved_times``."""
    return {name: statistics.median(seconds) for name, seconds in interleaved_times(runs, args).items()}


def paired_ratios(times: dict[str, list[float]], name: str) -> list[float]:
    """Round by round, ``name``'s time over the plain run's of the same round: a machine that slows down for a
    while slows both, so these move less than the medians do on a shared machine."""
    return [seconds / plain for seconds, plain in zip(times[name], times["plain"])]


def print_ratios(times: dict[str, list[float]], args, pipe) -> None:
    """Median time of each variant, its ratio to plain's median, and the median (and quartiles) of the paired
    round-by-round ratios."""
    kwargs = call_kwargs(args, pipe)
    print(f"time: {kwargs['height']}x{kwargs['width']}, {args.steps} steps, CFG {GUIDANCE}, "
          f"median of {args.runs} interleaved runs; paired: median [quartiles] of the rounds' own ratios")
    plain = statistics.median(times["plain"])
    for name, seconds in times.items():
        median = statistics.median(seconds)
        ratio = ""
        if name != "plain":
            paired = paired_ratios(times, name)
            low, _, high = statistics.quantiles(paired, n=4) if len(paired) > 1 else (paired[0],) * 3
            ratio = (f"   ratio to plain {median / plain:.3f}   paired {statistics.median(paired):.3f} "
                     f"[{low:.3f}, {high:.3f}]")
        print(f"  {name:<24} {median * 1000:9.1f} ms{ratio}")


def header(args) -> str:
    cuda = args.device.startswith("cuda")
    where = torch.cuda.get_device_name(args.device) if cuda else \
        f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} torch threads, " \
        f"{os.cpu_count()} cores, load average {' '.join(f'{v:.2f}' for v in os.getloadavg())}"
    return (f"model={model_name(args)} device={args.device} ({where}) dtype={args.dtype} "
            f"torch {torch.__version__}")


# --- memory ------------------------------------------------------------------------------------


def peak_extra(args, variant: str, make_run) -> dict:
    """Peak memory of ``variant`` above the plain pipeline call's, in a fresh process (spawned).

    make_run(args, pipe) -> (a zero-argument callable running the variant, optional dict of notes).
    """
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_memory_child, args=(args, variant, make_run, queue))
    child.start()
    result = queue.get()
    child.join()
    if "error" in result:
        raise RuntimeError(result["error"])
    return result


def _memory_child(args, variant, make_run, queue) -> None:
    try:
        if args.threads:
            torch.set_num_threads(args.threads)
        pipe = make_pipeline(args)
        kwargs = call_kwargs(args, pipe)
        cuda = args.device.startswith("cuda")
        pipe(PROMPT, generator=generator(args), **kwargs)  # the plain call's own peak first
        synchronize(args.device)
        base = torch.cuda.max_memory_allocated(args.device) if cuda else _max_rss()
        run, notes = make_run(args, pipe)
        if cuda:
            torch.cuda.reset_peak_memory_stats(args.device)
        run()
        synchronize(args.device)
        peak = torch.cuda.max_memory_allocated(args.device) if cuda else _max_rss()
        queue.put({"variant": variant, "peak_extra": max(peak - base, 0), **(notes or {}),
                   "what": "GPU peak allocation" if cuda else "peak RSS"})
    except Exception as error:  # reported by the parent, which would otherwise wait forever
        queue.put({"error": f"{variant}: {type(error).__name__}: {error}"})


def _max_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB
