"""Calibrate a cache plan from the command line: `python -m analysis.calibrate` (see `fit.py`)."""

import argparse
import math
import os
import sys

from analysis.calibrate.fit import __doc__ as CALIBRATE_DOC
from analysis.calibrate.fit import calibrate
from fora.loading import ModelLoadError, load_pipeline, resolve_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m analysis.calibrate", description=CALIBRATE_DOC.split("\n\n")[0])
    p.add_argument(
        "--model",
        default="emoji-dit",
        help="model key, hub id or pipeline folder (class models calibrate on classes of their own, text models on "
        "assets/prompts/calibration.txt)",
    )
    p.add_argument("--steps", type=int, default=30, help="sampling steps T the plan is for")
    p.add_argument("--match-interval", type=int, default=3, help="budget: FORA N's number of computed steps")
    p.add_argument("--order", type=int, default=0, choices=[0, 1], help="reuse (0) or linear extrapolation (1)")
    p.add_argument("--samples", type=int, default=8, help="calibration samples (own classes or prompts, own seeds)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", required=True, help="plan JSON to write")
    args = p.parse_args(argv)
    if not math.isfinite(args.guidance) or args.guidance < 1:
        p.error(f"--guidance {args.guidance}: must be a number >= 1")
    if args.steps < 2:
        p.error(f"--steps {args.steps}: must be >= 2")
    try:  # an unwritable --out is named before the calibration runs, not after
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        if os.path.isdir(args.out):
            raise IsADirectoryError(21, "is a folder")
        existed = os.path.exists(args.out)
        open(args.out, "a").close()
        if not existed:  # only a check: a run that fails later leaves no empty plan file behind
            os.remove(args.out)
    except OSError as e:
        p.error(f"--out {args.out}: cannot write there ({e.strerror})")
    try:
        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        spec = resolve_model(args.model)
        options = tuple(spec.call_kwargs.items()) if spec else ()
        plan = calibrate(
            pipe, args.steps, args.match_interval, args.order, args.guidance, args.samples, options=options
        )
    except (ValueError, ModelLoadError, RuntimeError) as e:  # RuntimeError: e.g. a device torch does not know
        print(f"error: {e}", file=sys.stderr)
        return 2
    plan.meta["model_key"] = args.model
    plan.save(args.out)
    scores = plan.meta["candidate_psnr"]
    print(
        f"{plan.name}: steps {plan.shared_steps} ({plan.computed_calls} computed calls; FORA N={args.match_interval} "
        f"{scores.get('fora', math.nan):.2f} dB, chosen {plan.meta['chosen']} {scores[plan.meta['chosen']]:.2f} dB "
        f"on calibration) -> {args.out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
