"""Interval sweep (the paper's Table 3, on the machine at hand): `python -m analysis.sweep --intervals 1 2 3 5`.

For every seed the uncached baseline runs once, then FORA at each interval with the same seed; quality columns
are the median over seeds (PSNR, SSIM, mean |difference| against the uncached image of the same seed). Speed
columns come from `speed.paired_speedups` on the first seed: no observers, a warm-up, baseline and FORA timed in
ABBA pairs, the median of the pair ratios and their range; the intervals' pairs are interleaved round by round, so a
slow spell of a shared machine shorter than about a round costs each interval at most one pair rather than all the
pairs of one interval. Writes `sweep.csv`, `sweep.json` and `report.html` (see `report.py`).
"""

import statistics
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from analysis.comparison import baseline_config, compare_runs, default_clock, observe_run, timed_speedups
from analysis.prompts import samples as sample_set
from analysis.speed import SpeedRatio, cached_module_fraction
from fora import ForaConfig, apply_fora, remove_fora
from fora.generate import Request, is_text_conditional
from fora.timing import clock_label, paired_calls

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
    recorders: dict = field(repr=False)  # first seed's SimilarityRecorder: of N=1 and of the first cached N
    per_seed: dict = field(repr=False)  # interval -> one metrics dict per seed
    cached_module_fraction: float = float("nan")
    timing: str = ""
    prompts: list = field(default_factory=list)  # text models: the prompts, each run with every seed


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
    prompts: list[str] | None = None,
) -> SweepResult:
    """Baseline once per sample, then each interval; then each interval timed in pairs on the first sample.

    A sample is a seed (class models: `request.label`) or, with `prompts` (text models; `analysis.prompts`), every
    (prompt, seed): each interval sees the same samples. `config` carries the settings every interval shares
    (modules, window, blocks); `progress(done, total, message)` is called after each run; `clock` times the pairs
    (default `experiment.default_clock`: CPU time on a CPU).
    """
    clock = clock or default_clock(pipe)
    config = config or ForaConfig()
    intervals = sorted(set(intervals))
    for n in intervals:
        replace(config, interval=n).check_num_steps(request.steps)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    if prompts is not None and not is_text_conditional(pipe):
        raise ValueError("prompts given for a class-conditional model: give request.label and seeds instead")
    if prompts is not None:
        runs = [
            (f"prompt {i // len(seeds) + 1}, seed {s}", replace(request, prompt=p, seed=s))
            for i, (p, s) in enumerate(sample_set(prompts, seeds))
        ]
    else:
        runs = [(f"seed {s}", replace(request, seed=s)) for s in seeds]
    per_interval = {n: [] for n in intervals}
    first_cached = next((n for n in intervals if n != 1), None)
    images, recorders = {}, {}
    k = len(intervals)
    # progress in runs: observed runs, the timed calls (warm-up, then 2k a round), the cached modules' share
    total = len(runs) * (1 + k) + paired_calls(k, pairs, warmup) + 1
    bar = tqdm(total=total, desc="sweep", disable=progress is not None)
    done = 0

    def tick(message, runs: int = 1):
        nonlocal done
        done += runs
        bar.update(runs)
        if progress:
            progress(done, total, message)

    for what, req in runs:
        baseline = observe_run(pipe, req, baseline_config(config)).to_cpu()
        tick(f"{what}: baseline")
        for n in intervals:
            result = baseline if n == 1 else observe_run(pipe, req, replace(config, interval=n)).to_cpu()
            per_interval[n].append(compare_runs(baseline, result).metrics)
            if req is runs[0][1]:
                images[n] = result.images[0]
                if n == 1 or n == first_cached:  # the maps the report shows: a recorder is kept only for them
                    recorders[n] = result.similarity
            tick(f"{what}: N={n}")
    first = runs[0][1]

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
    fraction = cached_module_fraction(pipe, first, cached_module_names(pipe, config))
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
        f"{runs[0][0]}, {clock_label(clock)}"
    )
    prompts = list(prompts) if prompts is not None else []
    return SweepResult(first, config, list(seeds), rows, images, recorders, per_interval, fraction, timing, prompts)


def cached_module_names(pipe, config: ForaConfig) -> list[str]:
    """The modules `config` caches in `pipe`'s transformer, by name, as FORA finds them in any family; for a fused
    module (FLUX's single-stream attention+MLP) the whole block, whose work a reuse step skips."""
    handle = apply_fora(pipe, replace(config, interval=1, plan=None))
    try:
        return [
            slot.key.rsplit(".", 1)[0] if slot.kind == "attn_mlp" else slot.key
            for slot in handle.state.slots
            if slot.enabled
        ]
    finally:
        remove_fora(pipe)
