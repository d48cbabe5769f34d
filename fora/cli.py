"""Command line: `python -m fora generate ...` and `python -m fora models`."""

import argparse
import sys
import time

import torch

from .apply import apply_fora, remove_fora
from .config import ForaConfig
from .generate import Request, generate, is_text_conditional, is_video, to_uint8
from .loading import MODELS, ModelLoadError, load_pipeline, resolve_model
from .timing import paired_speedup, time_call


def _generate(args) -> int:
    from PIL import Image

    spec = resolve_model(args.model)
    steps = args.steps or (spec.default_steps if spec else 30)
    guidance = args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0)
    if (
        args.plan is not None
    ):  # a cache plan (e.g. from analysis.calibrate) replaces the interval; its T is the default
        fixed = {
            "--interval": args.interval is not None,
            "--cache-start": args.cache_start != 0,
            "--cache-end": args.cache_end is not None,
            "--no-cache-attn": args.no_cache_attn,
            "--no-cache-cross-attn": args.no_cache_cross_attn,
            "--no-cache-mlp": args.no_cache_mlp,
        }
        given = [k for k, v in fixed.items() if v]
        if given:
            raise ValueError(f"--plan and {', '.join(given)} cannot be combined: the plan says what is cached")
        config = ForaConfig(plan=args.plan)
        steps = config.plan.num_steps if args.steps is None else args.steps
    else:
        config = ForaConfig(
            interval=3 if args.interval is None else args.interval,
            cache_attn=not args.no_cache_attn,
            cache_cross_attn=not args.no_cache_cross_attn,
            cache_mlp=not args.no_cache_mlp,
            cache_start=args.cache_start,
            cache_end=args.cache_end,
        )
    config.check_num_steps(steps)
    if args.time_pairs < 0:
        raise ValueError(f"--time-pairs={args.time_pairs}: must be >= 0")
    dtype = {"auto": None, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[args.dtype]
    t0 = time.perf_counter()
    pipe = load_pipeline(args.model, device=args.device, dtype=dtype)
    print(f"loaded {args.model} on {pipe.device} ({pipe.transformer.dtype}) in {time.perf_counter() - t0:.1f}s")
    if is_text_conditional(pipe):
        options = dict(spec.call_kwargs if spec else {})
        if args.frames is not None:
            if not is_video(pipe):
                raise ValueError(f"--frames: {type(pipe).__name__} makes images, not videos")
            options["num_frames"] = args.frames
        options = tuple(options.items())
        size = {"height": args.height, "width": args.width}
        request = Request(prompt=args.prompt, steps=steps, seed=args.seed, guidance=guidance, options=options, **size)
    else:
        request = Request(label=args.class_label, steps=steps, seed=args.seed, guidance=guidance)
    handle = apply_fora(pipe, config)
    images = []
    seconds = time_call(lambda: images.append(generate(pipe, request)), pipe.device)
    images = images[0]
    run = handle.last_run
    # the module calls of the run (both experts of Wan 2.2) over those computed, every call weighed alike; T / full
    # steps where every module caches
    records = [run] + ([handle.second.last_run] if handle.second is not None and handle.second.last_run else [])
    computed = sum(r.computed_calls for r in records)
    ideal, what = sum(r.computed_calls + r.reused_calls for r in records) / computed, "module calls/computed"
    if config.plan is None:
        print(f"interval N={config.interval}: {run.summary()}")
        if handle.second is not None:  # Wan 2.2: the low-noise expert's part of the run, its own record
            print(f"transformer_2 (takes over part-way; its own cache): {handle.second.last_run.summary()}")
        print(f"full steps: {run.full_steps}")
    else:
        print(f"plan {config.plan.name!r} (order {config.plan.order}): {run.summary()}")
        shared = config.plan.shared_steps
        print(f"computed steps: {shared if shared is not None else 'per block (see the plan file)'}")
    print(
        f"pipeline call: {seconds:.3f}s (one call, cold: not a speed figure; --time-pairs K measures one); "
        f"ideal speedup {what} = {ideal:.2f}x"
    )
    if args.time_pairs:
        remove_fora(pipe)
        pipe.set_progress_bar_config(disable=True)  # the bar's own output is not the model's time
        ratio = paired_speedup(pipe, lambda: generate(pipe, request), config, pairs=args.time_pairs)
        print(
            f"speedup {ratio} (baseline {ratio.baseline_s:.3f}s, FORA {ratio.fora_s:.3f}s; median of ABBA pairs "
            f"after a warm-up, no observers); ideal {ideal:.2f}x"
        )
    if is_video(pipe):
        return _write_video(to_uint8(images)[0], args.out, args.fps)
    image = Image.fromarray(to_uint8(images)[0])
    if args.upscale > 1:
        image = image.resize((image.width * args.upscale, image.height * args.upscale), Image.Resampling.NEAREST)
    image.save(args.out)
    print(f"wrote {args.out} ({image.width}x{image.height})")
    return 0


def _write_video(frames, out: str, fps: int) -> int:
    """A video's frames (F x H x W x 3 uint8) as an animated GIF, or MP4 where imageio has ffmpeg."""
    if out.lower().endswith(".mp4"):
        from diffusers.utils import export_to_video

        try:
            export_to_video(list(frames), out, fps=fps)
        except Exception as e:  # no ffmpeg backend for imageio
            raise ValueError(f"could not write {out} ({type(e).__name__}: {e}); write a .gif instead") from e
    else:
        from PIL import Image

        images = [Image.fromarray(f) for f in frames]
        images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0)
    print(f"wrote {out} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]}, {fps} fps)")
    return 0


def _models(args) -> int:
    for spec in MODELS.values():
        print(
            f"{spec.key:18s} {spec.conditioning}-to-{spec.output}, {spec.default_steps} steps, guidance "
            f"{spec.default_guidance:g}: {spec.description}"
        )
        print(f"{'':18s} [{spec.source}] runs on {spec.runs_on}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fora", description="FORA static caching for diffusion transformers.")
    sub = p.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="generate one image with FORA and print the schedule and timings")
    g.add_argument(
        "--model",
        default="emoji-dit",
        help=f"model key ({', '.join(MODELS)}), hub id, or pipeline folder (default: emoji-dit)",
    )
    g.add_argument(
        "--interval", "-N", type=int, default=None, help="cache interval N, 1..steps-1 (1: uncached; default 3)"
    )
    g.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's default)")
    g.add_argument("--seed", type=int, default=0, help="noise seed")
    g.add_argument(
        "--class",
        dest="class_label",
        default="0",
        help="class id or label name for class-conditional models (e.g. 'cat' or 207)",
    )
    g.add_argument("--prompt", default=None, help="prompt for text-conditional models (PixArt, SD3.5, FLUX, ...)")
    g.add_argument("--height", type=int, default=None, help="text models: image height (default: the model's)")
    g.add_argument("--width", type=int, default=None, help="text models: image width (default: the model's)")
    g.add_argument("--frames", type=int, default=None, help="video models: frames (Wan: 4k+1; default: the model's)")
    g.add_argument("--fps", type=int, default=16, help="video models: frames per second of the written video")
    g.add_argument("--guidance", type=float, default=None, help="classifier-free guidance scale (1: off)")
    g.add_argument(
        "--plan",
        default=None,
        metavar="PLAN.json",
        help="run a cache plan (python -m analysis.calibrate writes one) instead of the fixed interval",
    )
    g.add_argument("--cache-start", type=int, default=0, help="first step at which reuse is allowed")
    g.add_argument("--cache-end", type=int, default=None, help="steps from this one on always recompute")
    g.add_argument("--no-cache-attn", action="store_true", help="recompute self-attention every step")
    g.add_argument("--no-cache-cross-attn", action="store_true", help="recompute cross-attention every step")
    g.add_argument("--no-cache-mlp", action="store_true", help="recompute the MLP every step")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "float16", "bfloat16"],
        help="weights dtype (auto: the model's on CUDA, float16 or bfloat16; float32 on a CPU)",
    )
    g.add_argument(
        "--time-pairs",
        type=int,
        default=0,
        metavar="K",
        help="also measure the speedup over the uncached model: K ABBA pairs after a warm-up, median and "
        "range of the pair ratios (default 0: off)",
    )
    g.add_argument("--upscale", type=int, default=1, help="nearest-neighbour upscale of the saved image")
    g.add_argument("--out", default="out.png", help="output path: PNG for images, GIF (or MP4) for videos")
    g.set_defaults(fn=_generate)
    m = sub.add_parser("models", help="list the models the project knows")
    m.set_defaults(fn=_models)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, ModelLoadError, RuntimeError) as e:  # RuntimeError: e.g. a device torch does not know
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
