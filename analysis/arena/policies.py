"""The app's Policies tab without the widgets: one seed through up to three caching policies at FORA N's cost, next
to the uncached baseline, with measured plan maps, quality, measured speedups and a small sweep for a Pareto plot.

Calibrated plans come from a store keyed by (model, T, guidance, N, order): the plans shipped with the embedded
model (`assets/emoji-dit/arena/plans`, written by the arena) and those calibrated live, which the main process keeps
(`PLANS`). A plan missing for the chosen N is calibrated in the run (a few samples) and handed back to be kept.
"""

import glob
import logging
import os
from dataclasses import dataclass, field

import numpy as np

from analysis.arena.dbcache import dbcache_at_budget, dbcache_entry
from analysis.arena.experiment import Entry, fbcache_at_budget, observe, time_entries
from analysis.calibrate.fit import calibrate, calibration_set, record_grams
from analysis.comparison import default_clock
from analysis.metrics.quality import psnr, ssim
from analysis.prompts import load_prompts, prompt_set
from fora import CachePlan, ForaConfig, full_steps
from fora.generate import Request, is_text_conditional, num_classes
from fora.loading import ASSETS
from fora.peers import fbcache, taylorseer_at_cost
from fora.timing import paired_calls

POLICIES = (
    "FORA",
    "calibrated",
    "calibrated-o1",
    "TaylorSeer order 1",
    "TaylorSeer order 2",
    "First Block Cache",
    "DBCache",
    "DBCache + TaylorSeer",
)
MAX_POLICIES = 3
SWEEP_INTERVALS = (2, 3, 4, 6)  # the small sweep behind the Pareto plot: each policy at these N's costs
CALIBRATION_SAMPLES = 4  # live calibration in the app (the arena and the CLI use 8)
FBCACHE_ITERATIONS = 5  # bisection steps matching First Block Cache's (and DBCache's) threshold to the budget
FBCACHE_SWEEP = (0.5, 1.5, 2.5)  # its sweep: these multiples of the threshold found at the budget
DBCACHE_ORDERS = {"DBCache": None, "DBCache + TaylorSeer": 1}  # cache-dit's TaylorSeer calibrator, its order
# cache-dit's DBCache here: Fn = 1, Bn = 0, warm-up 1 (the arena sweeps Fn, Bn and the warm-up). Its cheapest
# setting, threshold 1, costs 70 of 360 calls on the embedded model at T = 30: FORA N's cost up to N = 6; past that
# its row says it is over the budget
DBCACHE_KNOBS = {"fn": 1, "bn": 0, "warmup": 1}
BISECTED = ("First Block Cache", *DBCACHE_ORDERS)  # the policies whose threshold is bisected to the cost
PLANS_DIR = os.path.join(ASSETS, "emoji-dit", "arena", "plans")  # written by the arena


def plan_key(model_key: str, steps: int, guidance: float, interval: int, order: int) -> tuple:
    return (model_key, int(steps), round(float(guidance), 3), int(interval), int(order))


def shipped_plans(folder: str = PLANS_DIR, model_key: str = "emoji-dit") -> dict[tuple, CachePlan]:
    """The calibrated plans committed for the embedded model, by `plan_key`."""
    plans = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        try:
            plan = CachePlan.load(path)
            key = plan_key(model_key, plan.num_steps, plan.meta["guidance"], plan.meta["match_interval"], plan.order)
        except (ValueError, KeyError) as e:  # one bad file must not hide the others
            logging.getLogger(__name__).warning("cache plan %s skipped: %s", path, e)
            continue
        plans[key] = plan
    return plans


@dataclass(frozen=True)
class PolicyJob:
    """One Policies-tab click, checked (`form.parse_policies`)."""

    model_key: str
    request: Request
    policies: tuple[str, ...]
    interval: int  # the cost: FORA N's computed calls
    pairs: int = 3  # odd: the median of the pair ratios can leave one disturbed pair out
    warmup: int = 1

    def sweep_intervals(self) -> list[int]:
        return [n for n in SWEEP_INTERVALS if n <= self.request.steps - 1 and n != self.interval]

    def needed_plans(self) -> list[tuple[int, int]]:
        """(N, order) of the calibrated plans this job must have: those at the chosen N (calibrated in the run when
        missing). The small sweep shows calibrated points only at costs whose plans are known."""
        orders = [o for name, o in (("calibrated", 0), ("calibrated-o1", 1)) if name in self.policies]
        return [(self.interval, o) for o in orders]

    def missing_plans(self, plans: dict) -> list[tuple[int, int]]:
        """(N, order) of the needed plans that `plans` does not hold: calibrated in the run."""
        t, g = self.request.steps, self.request.guidance
        return [(n, o) for n, o in self.needed_plans() if plan_key(self.model_key, t, g, n, o) not in plans]

    def denoising_steps(self, missing_plans: int = 0) -> int:
        """Steps this job runs: baseline, each policy (First Block Cache, DBCache: the bisection) and its small sweep,
        the timed calls and, per missing plan, a calibration (its candidates on a few samples). Exact, except for two
        upper bounds: a calibrated policy's sweep is counted at every interval (it runs only those whose plans are
        known), a calibration at 14 candidates (duplicates are run once), and a bisection in full (it stops at
        threshold 1 when even that costs more than the budget)."""
        t, k = self.request.steps, len(self.policies)
        runs = 1
        for name in self.policies:
            if name in BISECTED:
                runs += 1 + FBCACHE_ITERATIONS + len(FBCACHE_SWEEP)  # threshold 1, the bisection, the sweep
            else:
                runs += 1 + len(self.sweep_intervals())
        if self.pairs:  # timed, interleaved
            runs += paired_calls(k, self.pairs, self.warmup)
        calibration = (missing_plans > 0) + missing_plans * 14  # one recording, ~14 candidates each
        return t * (runs + calibration * CALIBRATION_SAMPLES)


@dataclass
class PolicyResult:
    """What one click shows: picklable, on the CPU (a ZeroGPU worker returns it)."""

    baseline: np.ndarray
    rows: list[dict]  # one per chosen policy
    images: list[np.ndarray]
    maps: dict  # "policy setting" -> blocks x steps booleans (attention), measured
    sweep_rows: list[dict]
    total_calls: int
    budget_calls: int
    new_plans: dict = field(default_factory=dict)  # plan_key -> CachePlan calibrated in this run
    timed: bool = False


def _entry(name: str, t: int, n: int, plans: dict, key) -> Entry:
    if name == "FORA":
        return Entry("fora", f"N={n}", ForaConfig(interval=n), interval=n)
    if name in ("calibrated", "calibrated-o1"):
        order = 0 if name == "calibrated" else 1
        return Entry(name, f"budget of N={n}", ForaConfig(plan=plans[key(n, order)]), interval=n, order=order)
    if name.startswith("TaylorSeer"):
        order = int(name[-1])
        config = taylorseer_at_cost(t, n, order)  # the warm-up that brings it to FORA N's cost
        return Entry(
            "taylorseer",
            f"N={n} warmup={config.disable_cache_before_step} order={order}",
            config,
            interval=n,
            order=order,
        )
    raise ValueError(f"unknown policy {name!r}; allowed: {', '.join(POLICIES)}")


def _score(entry: Entry, baseline: np.ndarray, total: int) -> dict:
    image = entry.images[0]
    value = psnr(image, baseline)
    return {
        **entry.row,
        "psnr": min(value, 100.0),
        "ssim": ssim(image, baseline),
        "computed_fraction": entry.row["computed_calls"] / total,
    }


def run_policies(pipe, job: PolicyJob, plans: dict, emit) -> None:
    """The job (see the module docstring); `emit(str)` reports progress, `emit(PolicyResult)` the result, once
    before the timed pairs and once after."""
    req = job.request
    t, g = req.steps, req.guidance
    text = is_text_conditional(pipe)
    label, seed = [req.prompt if text else int(req.label)], [int(req.seed)]
    opts = tuple(req.options)  # a text model's card arguments, in every run as in the Compare tab
    plans = dict(plans)
    key = lambda n, order: plan_key(job.model_key, t, g, n, order)
    missing = job.missing_plans(plans)
    new_plans = {}
    if missing:
        emit(f"calibrating {len(missing)} plan(s) for T={t}, guidance {g} (first time for these settings)")
        if text:  # the model's calibration prompts, never the evaluated ones (`analysis.prompts`)
            prompts = load_prompts(prompt_set(pipe, "calibration"))
            _, cal_seeds = calibration_set(1, CALIBRATION_SAMPLES)
            classes = [prompts[i % len(prompts)] for i in range(CALIBRATION_SAMPLES)]
        else:
            classes, cal_seeds = calibration_set(num_classes(pipe), CALIBRATION_SAMPLES)
        recording = record_grams(pipe, classes, cal_seeds, t, g, options=opts)
        for n, order in missing:
            emit(f"calibrating order {order} at N={n}'s budget")
            plan = calibrate(pipe, t, n, order, g, CALIBRATION_SAMPLES, recording=recording, options=opts)
            plans[key(n, order)] = new_plans[key(n, order)] = plan
    emit("uncached baseline")
    base = Entry("uncached", "T steps computed", None)
    observe(pipe, base, seed, label, t, g, opts)
    total = base.row["computed_calls"]
    blocks_kinds = total / t
    budget = round(len(full_steps(t, job.interval)) * blocks_kinds)
    chosen, sweep = [], []
    for name in job.policies:
        emit(f"{name} at N={job.interval}'s cost")
        if name == "First Block Cache":
            entry = fbcache_at_budget(pipe, budget, seed, label, t, g, iterations=FBCACHE_ITERATIONS, options=opts)
        elif name in DBCACHE_ORDERS:
            order = DBCACHE_ORDERS[name]
            entry = dbcache_at_budget(
                pipe,
                budget,
                seed,
                label,
                t,
                g,
                order=order,
                iterations=FBCACHE_ITERATIONS,
                options=opts,
                **DBCACHE_KNOBS,
            )
        else:
            entry = _entry(name, t, job.interval, plans, key)
            observe(pipe, entry, seed, label, t, g, opts)
        chosen.append(entry)
        if name == "First Block Cache":  # its knob is the threshold: a spread around the one at the budget
            points = [
                Entry("fbcache", f"threshold={x:.3g}", fbcache(x), threshold=x)
                for x in (f * entry.threshold for f in FBCACHE_SWEEP)
            ]
        elif name in DBCACHE_ORDERS:
            thresholds = (f * entry.threshold for f in FBCACHE_SWEEP)
            points = [dbcache_entry(x, order=DBCACHE_ORDERS[name], **DBCACHE_KNOBS) for x in thresholds]
        else:
            order = {"calibrated": 0, "calibrated-o1": 1}.get(name)
            points = [
                _entry(name, t, n, plans, key)
                for n in job.sweep_intervals()
                if order is None or key(n, order) in plans
            ]
        for point in points:
            emit(f"sweep: {name} {point.setting}")
            observe(pipe, point, seed, label, t, g, opts)
            sweep.append(_score(point, base.images[0], total))
    rows = [_score(e, base.images[0], total) for e in chosen]
    result = PolicyResult(
        base.images[0],
        rows,
        [e.images[0] for e in chosen],
        {f"{e.policy} {e.setting}": e.maps.get("attn") for e in chosen},
        sweep + rows,
        int(total),
        budget,
        new_plans,
    )
    emit(result)
    if job.pairs:
        clock = default_clock(pipe)
        emit(f"timing against uncached: {job.pairs} rounds of one pair per policy")
        time_entries(
            pipe,
            chosen,
            seed[0],
            label[0],
            t,
            g,
            job.pairs,
            clock,
            warmup=job.warmup,
            on_round=lambda r, k: emit(f"timed round {r} of {k}" if r else "timing: warm-up done"),
            options=opts,
        )
        for entry, row in zip(chosen, result.rows):
            row.update({k: entry.row[k] for k in ("speedup", "speedup_low", "speedup_high", "pairs")}, clock=clock)
        result.timed = True
        emit(result)
