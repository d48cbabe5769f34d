"""Interval sweep from the command line: `python -m analysis.sweep --intervals 1 2 3 5` (see `experiment.py`)."""

import argparse
import time
from dataclasses import replace

import torch

from analysis.prompts import load_prompts, prompt_set
from analysis.sweep.experiment import __doc__ as SWEEP_DOC
from analysis.sweep.experiment import run_sweep
from analysis.sweep.report import write_outputs
from fora.generate import Request, is_text_conditional
from fora.loading import ModelLoadError, load_pipeline, resolve_model
from fora.timing import CPU_CLOCK_HELP


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.sweep", description=SWEEP_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="emoji-dit", help="model key, hub id or pipeline folder")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5, 7, 10], help="cache intervals N")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--class", dest="class_label", default="0", help="class id or name (class-conditional models)")
    p.add_argument("--prompt", default=None, help="one prompt (text-conditional models)")
    p.add_argument(
        "--prompts",
        nargs="?",
        const="default",
        default=None,
        metavar="FILE",
        help="a prompt set, every prompt with every seed (text models; without FILE the model's shipped set: "
        "assets/prompts/eval.txt, 32 prompts of objects, scenes, text rendering and counts; emoji-mmdit's "
        "32 held-out captions)",
    )
    p.add_argument("--num-prompts", type=int, default=None, help="the first K prompts of the set only")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--pairs", type=int, default=5, help="timed baseline/FORA pairs per interval (after a warm-up)")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help=f"what times the pairs (default: cpu on a CPU, robust on a shared machine: {CPU_CLOCK_HELP}; "
        "wall time with device events on a GPU)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch threads (default: torch's); the README's CPU measurements used 1",
    )
    p.add_argument("--out", default="out/sweep", help="output folder")
    args = p.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            p.error(f"--threads={args.threads}: must be >= 1")
        torch.set_num_threads(args.threads)
    spec = resolve_model(args.model)
    request = Request(
        label=args.class_label,
        prompt=args.prompt,
        steps=args.steps or (spec.default_steps if spec else 30),
        guidance=args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0),
    )
    if args.prompts and args.prompt:
        p.error("--prompt and --prompts: give one prompt or a prompt set, not both")
    if args.num_prompts is not None and not args.prompts:
        p.error("--num-prompts limits a prompt set: give --prompts too")
    if spec is not None and spec.call_kwargs:  # the model card's arguments, as calibration and the CLI use them
        request = replace(request, options=tuple(spec.call_kwargs.items()))
    try:
        if args.prompts and args.prompts != "default":
            load_prompts(args.prompts)  # a bad file is named before a model loads
        pipe = load_pipeline(args.model, device=args.device)
        if args.prompts == "default":
            args.prompts = prompt_set(pipe, "eval")
        prompts = load_prompts(args.prompts, args.num_prompts) if args.prompts else None
        pipe.set_progress_bar_config(disable=True)
        if prompts is not None and not is_text_conditional(pipe):
            raise ValueError(f"--prompts: {args.model} is class-conditional; give --class instead")
        t0 = time.perf_counter()
        result = run_sweep(
            pipe, request, args.intervals, args.seeds, pairs=args.pairs, clock=args.clock, prompts=prompts
        )
    except (ValueError, ModelLoadError) as e:
        print(f"error: {e}")
        return 2
    paths = write_outputs(result, args.out, args.model)
    print(f"{'N':>3} {'full':>4} {'ideal':>6} {'PSNR':>7} {'SSIM':>6} {'cache':>10}  speedup (median, range)")
    for r in result.rows:
        print(
            f"{r.interval:>3} {r.full_steps:>4} {r.ideal_speedup:>5.2f}x {r.psnr:>7.2f} {r.ssim:>6.3f} "
            f"{r.cache_bytes / 2**20:>6.2f} MiB  {r.speed}"
        )
    print(
        f"share of uncached transformer time in the cached modules: {result.cached_module_fraction:.1%} "
        f"(speed: {result.timing})"
    )
    print(f"sweep took {time.perf_counter() - t0:.1f}s; wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
