"""Interval sweep (the paper's Table 3, on the machine at hand): `python -m analysis.sweep --intervals 1 2 3 5`.

For every seed the uncached baseline runs once, then FORA at each interval with the same seed; quality columns
are the median over seeds (PSNR, SSIM, mean |difference| against the uncached image of the same seed). Speed
columns come from `speed.paired_speedups` on the first seed: no observers, a warm-up, baseline and FORA timed in
ABBA pairs, the median of the pair ratios and their range; the intervals' pairs are interleaved round by round, so a
slow spell of a shared machine shorter than about a round costs each interval at most one pair rather than all the
pairs of one interval. Writes `sweep.csv`, `sweep.json` and `report.html` (see `sweep_report.py`).
"""

import argparse
import statistics
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import torch
from tqdm.auto import tqdm

from fora import ForaConfig
from fora.generate import Request
from fora.loading import ModelLoadError, load_pipeline, resolve_model
from fora.timing import paired_calls

from .experiment import baseline_config, compare_runs, default_clock, num_blocks, observe_run, timed_speedups
from .speed import SpeedRatio, cached_module_fraction
from .stream import stream_job

COLUMNS = [
    "interval",
    "full_steps",
    "speedup",
    "speedup_low",
    "speedup_high",
    "pairs",
    "ideal_speedup",
    "psnr",
    "ssim",
    "mad",
    "cache_bytes",
    "baseline_s",
    "fora_s",
]


@dataclass
class SweepRow:
    interval: int
    full_steps: int
    ideal_speedup: float
    psnr: float  # median over seeds; inf when identical
    ssim: float
    mad: float
    cache_bytes: int
    speed: SpeedRatio  # first seed, paired timing

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if k != "speed"}
        d.update(self.speed.as_dict())
        return {k: d[k] for k in COLUMNS}


@dataclass
class SweepResult:
    request: Request  # the first seed's request
    config: ForaConfig  # the settings every interval shares
    seeds: list[int]
    rows: list[SweepRow]
    images: dict = field(repr=False)  # interval -> first seed's image
    recorders: dict = field(repr=False)  # interval -> first seed's SimilarityRecorder
    per_seed: dict = field(repr=False)  # interval -> one metrics dict per seed
    cached_module_fraction: float = float("nan")
    timing: str = ""


def _median(values):
    finite = [v for v in values if np.isfinite(v)]
    return statistics.median(finite) if finite else float("inf")


def run_sweep(
    pipe,
    request: Request,
    intervals: list[int],
    seeds: list[int],
    config: ForaConfig | None = None,
    pairs: int = 3,
    warmup: int = 1,
    progress=None,
    clock: str | None = None,
) -> SweepResult:
    """Baseline once per seed, then each interval; then each interval timed in pairs on the first seed.

    `config` carries the settings every interval shares (modules, window, blocks); `progress(done, total, message)`
    is called after each run; `clock` times the pairs (default `experiment.default_clock`: CPU time on a CPU).
    """
    clock = clock or default_clock(pipe)
    config = config or ForaConfig()
    intervals = sorted(set(intervals))
    for n in intervals:
        replace(config, interval=n).check_num_steps(request.steps)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    per_interval = {n: [] for n in intervals}
    images, recorders = {}, {}
    k = len(intervals)
    # progress in runs: observed runs, the timed calls (warm-up, then 2k a round), the cached modules' share
    total = len(seeds) * (1 + k) + paired_calls(k, pairs, warmup) + 1
    bar = tqdm(total=total, desc="sweep", disable=progress is not None)
    done = 0

    def tick(message, runs: int = 1):
        nonlocal done
        done += runs
        bar.update(runs)
        if progress:
            progress(done, total, message)

    for seed in seeds:
        req = replace(request, seed=seed)
        baseline = observe_run(pipe, req, baseline_config(config)).to_cpu()
        tick(f"seed {seed}: baseline")
        for n in intervals:
            result = baseline if n == 1 else observe_run(pipe, req, replace(config, interval=n)).to_cpu()
            per_interval[n].append(compare_runs(baseline, result).metrics)
            if seed == seeds[0]:
                images[n], recorders[n] = result.images[0], result.similarity
            tick(f"seed {seed}: N={n}")
    first = replace(request, seed=seeds[0])

    def timed_round(r, rounds):
        if r == 0:
            tick("timing: warm-up done", warmup * (1 + k))
        else:
            tick(f"timed round {r} of {rounds}: one pair per interval", 2 * k)

    ratios = timed_speedups(
        pipe,
        first,
        [replace(config, interval=n) for n in intervals],
        pairs=pairs,
        warmup=warmup,
        clock=clock,
        on_round=timed_round,
    )
    speeds = dict(zip(intervals, ratios))
    blocks = pipe.transformer.transformer_blocks
    names = [
        f"transformer_blocks.{i}.{c}"
        for i in range(num_blocks(pipe))
        for c in ("attn1", "attn2", "ff")
        if getattr(blocks[i], c, None) is not None
    ]
    fraction = cached_module_fraction(pipe, first, names)
    tick("share of time in the cached modules")
    bar.close()
    rows = []
    for n in intervals:
        ms = per_interval[n]
        rows.append(
            SweepRow(
                n,
                ms[0]["full_steps"],
                ms[0]["ideal_speedup"],
                _median([m["psnr"] for m in ms]),
                _median([m["ssim"] for m in ms]),
                _median([m["mad"] for m in ms]),
                ms[0]["cache_bytes"],
                speeds[n],
            )
        )
    timing = (
        f"paired: {warmup} warm-up and {pairs} ABBA pairs per interval, interleaved, no observers, "
        f"seed {seeds[0]}, {'process CPU time' if clock == 'cpu' else 'wall time'}"
    )
    return SweepResult(first, config, list(seeds), rows, images, recorders, per_interval, fraction, timing)


def stream_sweep(
    pipe,
    request: Request,
    intervals,
    seeds,
    config: ForaConfig,
    pairs: int = 3,
    warmup: int = 1,
    clock: str | None = None,
):
    """`run_sweep` in a worker thread: yields `(done, total, message)` after each run, then the `SweepResult`;
    `None` every half second in between. Closing the generator stops the sweep at the next denoising step.
    """

    def job(emit):  # noqa: E306
        emit(
            run_sweep(
                pipe,
                request,
                intervals,
                seeds,
                config,
                pairs,
                warmup,
                progress=lambda d, t, msg: emit((d, t, msg)),
                clock=clock,
            )
        )

    yield from stream_job(pipe.transformer, job, min_interval_s=0.0, heartbeat_s=0.5)


def main(argv=None) -> int:
    from .sweep_report import write_outputs

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji-dit", help="model key, hub id or pipeline folder")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5, 7, 10], help="cache intervals N")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--class", dest="class_label", default="0", help="class id or name (class-conditional models)")
    p.add_argument("--prompt", default=None, help="prompt (text-conditional models)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--pairs", type=int, default=5, help="timed baseline/FORA pairs per interval (after a warm-up)")
    p.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default=None,
        help="what times the pairs (default: process CPU time on a CPU, robust on a shared machine; wall "
        "time with device events on a GPU)",
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
    try:
        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        result = run_sweep(pipe, request, args.intervals, args.seeds, pairs=args.pairs, clock=args.clock)
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
