"""The arena from the command line: `python -m analysis.arena` (see `experiment.py` for what it runs)."""

import argparse
import math
import os
import sys

import torch

from analysis.arena.dbcache import BN_BLOCKS, FN_BLOCKS, TAYLORSEER_ORDERS, WARMUPS
from analysis.arena.experiment import POLICIES, run_arena
from analysis.arena.experiment import __doc__ as ARENA_DOC
from analysis.arena.report import write_outputs
from analysis.calibrate.fit import MAX_STEPS_ORDER1
from fora.loading import ModelLoadError


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m analysis.arena",
        description=ARENA_DOC.split("\n\n")[0],
        epilog=f"methods: {', '.join(POLICIES)} (analysis/arena/experiment.py, docs/arena.md)",
    )
    p.add_argument("--model", default="emoji-dit", help="model key, hub id or pipeline folder")
    p.add_argument(
        "--prompts",
        default=None,
        metavar="FILE",
        help="text models: the prompt set (sample s: prompt s mod P; default: the model's evaluation set, "
        "analysis.prompts.prompt_set); calibration uses the model's calibration prompts",
    )
    p.add_argument("--steps", type=int, default=30, help="sampling steps T (DDIM)")
    p.add_argument("--match-interval", type=int, default=3, help="FORA N whose cost is the reference budget")
    p.add_argument(
        "--intervals",
        type=int,
        nargs="+",
        default=None,
        help="FORA N (and TaylorSeer N, calibrated budgets) to run (default 2 3 4 5 6 and the match N)",
    )
    p.add_argument(
        "--seeds", type=int, nargs="+", default=list(range(8)), help="evaluation seeds (class: seed mod classes)"
    )
    p.add_argument("--orders", type=int, nargs="+", default=[0, 1, 2], help="TaylorSeer orders, 0..2")
    p.add_argument(
        "--warmups",
        type=int,
        nargs="+",
        default=[1, 2, 3, 4, 5, 6, 7],
        help="TaylorSeer warm-up steps (diffusers' disable_cache_before_step), >= 1",
    )
    p.add_argument(
        "--thresholds", type=float, nargs="+", default=[0.05, 0.1, 0.15, 0.2, 0.3], help="First Block Cache thresholds"
    )
    p.add_argument(
        "--dbcache-intervals",
        type=int,
        nargs="*",
        default=None,
        help="FORA N whose costs DBCache's threshold is bisected to (default: --intervals; none given: no DBCache)",
    )
    p.add_argument(
        "--dbcache-fn", type=int, nargs="+", default=list(FN_BLOCKS), help="DBCache Fn: first blocks always run"
    )
    p.add_argument(
        "--dbcache-bn", type=int, nargs="+", default=list(BN_BLOCKS), help="DBCache Bn: last blocks always run"
    )
    p.add_argument(
        "--dbcache-warmups",
        type=int,
        nargs="+",
        default=list(WARMUPS),
        help="DBCache warm-up steps (max_warmup_steps)",
    )
    p.add_argument(
        "--dbcache-orders",
        type=int,
        nargs="*",
        default=list(TAYLORSEER_ORDERS),
        help="orders 0..2 of DBCache's TaylorSeer calibrator (policy dbcache-taylorseer; none: plain DBCache only)",
    )
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale")
    p.add_argument("--calibration-samples", type=int, default=8, help="samples the calibrated plans are fit on")
    p.add_argument("--timing-pairs", type=int, default=3, help="ABBA pairs per setting (0: no timing)")
    p.add_argument("--clock", choices=["wall", "cpu"], default=None, help="default: cpu on a CPU, wall on a GPU")
    p.add_argument(
        "--fid",
        type=int,
        default=0,
        metavar="K",
        help="also score each method's best setting at the cost, and uncached, on K class-balanced samples "
        "with Table 3's metrics (embedded model; 0: off)",
    )
    p.add_argument(
        "--fid-reference",
        type=int,
        default=10_000,
        metavar="R",
        help="fresh emoji renders the distribution metrics compare with (default 10,000, as Table 3)",
    )
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--out", required=True, help="output folder")
    args = p.parse_args(argv)
    T = args.steps
    if T < 4:
        p.error(f"--steps {T}: must be >= 4")
    if not math.isfinite(args.guidance) or args.guidance < 1:
        p.error(f"--guidance {args.guidance}: must be a number >= 1")
    if not 2 <= args.match_interval <= T - 1:
        p.error(f"--match-interval {args.match_interval}: allowed 2..{T - 1} for {T} steps")
    args.intervals = sorted(set(args.intervals or [n for n in (2, 3, 4, 5, 6) if n <= T - 1]) | {args.match_interval})
    bad = [n for n in args.intervals if not 2 <= n <= T - 1]
    if bad:
        p.error(f"--intervals {bad}: allowed 2..{T - 1} for {T} steps")
    if any(o not in (0, 1, 2) for o in args.orders):
        p.error(f"--orders {args.orders}: allowed 0, 1, 2")
    args.dbcache_intervals = sorted(set(args.intervals if args.dbcache_intervals is None else args.dbcache_intervals))
    bad = [n for n in args.dbcache_intervals if not 2 <= n <= T - 1]
    if bad:
        p.error(f"--dbcache-intervals {bad}: allowed 2..{T - 1} for {T} steps")
    for flag, values, low in (
        ("--dbcache-fn", args.dbcache_fn, 1),
        ("--dbcache-bn", args.dbcache_bn, 0),
        ("--dbcache-warmups", args.dbcache_warmups, 1),  # cache-dit runs warm-up 0 as 1
    ):
        if any(v < low for v in values):
            p.error(f"{flag} {values}: must be >= {low}")
    if any(o not in (0, 1, 2) for o in args.dbcache_orders):
        p.error(f"--dbcache-orders {args.dbcache_orders}: allowed 0, 1, 2")
    if T > MAX_STEPS_ORDER1:
        p.error(f"--steps {T}: the arena calibrates order-1 plans, allowed T <= {MAX_STEPS_ORDER1}")
    if any(w < 1 for w in args.warmups):
        p.error(f"--warmups {args.warmups}: must be >= 1 (step 0 has nothing to predict from)")
    if any(not t >= 0 for t in args.thresholds):
        p.error(f"--thresholds {args.thresholds}: must be >= 0")
    if not args.seeds or any(s < 0 for s in args.seeds) or len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds {args.seeds}: give distinct seeds >= 0")
    if args.calibration_samples < 1:
        p.error(f"--calibration-samples {args.calibration_samples}: must be >= 1")
    if args.fid and args.fid < 64:
        p.error(f"--fid {args.fid}: give 0 (off) or at least 64 samples")
    if args.fid and args.fid_reference < args.fid:
        p.error(f"--fid-reference {args.fid_reference}: needs at least --fid {args.fid} renders")
    if args.timing_pairs < 0:
        p.error(f"--timing-pairs {args.timing_pairs}: must be >= 0")
    if args.clock == "cpu" and args.device and args.device.startswith("cuda"):
        p.error("--clock cpu times CPU work only; use --clock wall on a GPU")
    try:
        os.makedirs(args.out, exist_ok=True)
        probe = os.path.join(args.out, f".write-test-{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        p.error(f"--out {args.out}: cannot write there ({e.strerror})")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.clock is None:
        args.clock = "cpu" if not (args.device or "").startswith("cuda") and not torch.cuda.is_available() else "wall"
    if args.clock == "cpu":
        torch.set_num_threads(1)  # the CPU clock then counts the calling thread's work alone (fora.timing)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)
    try:
        result = run_arena(args, log)
    except (ValueError, ModelLoadError, RuntimeError) as e:  # RuntimeError: e.g. a device torch does not know
        print(f"error: {e}", file=sys.stderr)
        return 2
    result["command"] = "python -m analysis.arena " + " ".join(sys.argv[1:] if argv is None else argv)
    write_outputs(args.out, result)
    log(f"wrote {args.out}/arena.csv, arena.json, report.html in {result['seconds']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
