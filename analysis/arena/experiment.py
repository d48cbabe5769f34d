"""FORA, this project's calibrated plans and FORA's peers on one harness, compared at equal cost.

    python -m analysis.arena --model emoji-dit --steps 30 --match-interval 3 --seeds 0 1 2 3 --out DIR

Every method runs on the same pipeline with the same seeds (sample s: class s mod classes, or for a text model
prompt s mod P of its prompt set, `--prompts`; noise seed s), one sample per call (First Block Cache and DBCache
decide from the batch, so batching would couple samples). Per setting:
- `computed_calls`: attention/MLP module calls that really ran per pipeline call, counted by `ComputeMap` (the
  first Linear of each module), mean over seeds; the cost every method is compared at. `computed_fraction` is it
  over the uncached count.
- `psnr`, `ssim`: the final image against the uncached one of the same seed, mean over seeds; `class_accuracy`:
  the emoji classifier's agreement with the requested class (embedded model only).
- `speedup`: `paired_speedups` (no observers, warm-up, ABBA pairs, median and range) of one sample's call, the
  settings' pairs interleaved round by round.

Methods: `uncached`; `fora` at each N of `--intervals`; `calibrated` and `calibrated-o1` (`analysis.calibrate`,
calibrated on its own classes and seeds) at each FORA N's budget; `taylorseer` (diffusers', orders `--orders` x every
N of `--intervals` x warm-up `--warmups`: both of its knobs); `fbcache` (diffusers', each `--thresholds`, plus the
threshold found by bisection whose cost is closest to FORA N = `--match-interval`'s); `dbcache` and
`dbcache-taylorseer` (cache-dit's, without and with its TaylorSeer calibrator of order `--dbcache-orders`: for each
Fn `--dbcache-fn` x Bn `--dbcache-bn` x warm-up `--dbcache-warmups`, its cheapest setting and the threshold bisected
to each FORA N of `--dbcache-intervals` within reach; `dbcache.py`). Writes DIR/arena.csv, DIR/arena.json and
DIR/report.html. `--fid K` adds distribution columns (`fid.py`) for each method's best setting
at the cost.
"""

import datetime
import os
import time

import numpy as np
import torch

from analysis.arena.dbcache import dbcache_sweep
from analysis.arena.fid import distribution_columns
from analysis.arena.measure import EQUAL_COST, Entry, bisect_threshold, observe, resumable
from analysis.calibrate.fit import calibrate, calibration_set, record_grams
from analysis.metrics.bootstrap import paired_interval
from analysis.metrics.compute_map import ComputeMap
from analysis.metrics.quality import psnr, ssim
from analysis.prompts import load_prompts, prompt_set
from analysis.report_files import machine
from embedded.emoji.classes import NUM_CLASSES
from fora import ForaConfig, full_steps
from fora.generate import generate_batch, is_text_conditional
from fora.generate import num_classes as class_count
from fora.loading import MODELS, load_pipeline
from fora.peer_cache_dit import supports_cache_dit
from fora.peers import fbcache, taylorseer, taylorseer_steps
from fora.timing import clock_label, paired_speedups

POLICIES = (
    "uncached",
    "fora",
    "calibrated",
    "calibrated-o1",
    "taylorseer",
    "fbcache",
    "dbcache",
    "dbcache-taylorseer",
)
COLUMNS = [
    "policy",
    "setting",
    "computed_calls",
    "computed_fraction",
    "speedup",
    "speedup_low",
    "speedup_high",
    "pairs",
    "psnr",
    "psnr_min",
    "ssim",
    "class_accuracy",
    "interval",
    "order",
    "threshold",
    "fd_vs_uncached",
    "fid",
    "fid_precision",
    "fid_recall",
    "fid_score",
    "fid_class_accuracy",
    "fid_samples",
]
PSNR_CAP = 100.0  # identical images: PSNR is infinite; capped so that means stay finite


def at_budget(rows: list[dict], budget: float) -> list[dict]:
    """Each method's best setting (highest PSNR) costing at most `budget` (+ `EQUAL_COST`): a cheaper setting that
    scores higher is not dropped."""
    best = {}
    for r in rows:
        if r["policy"] == "uncached" or r["computed_calls"] > (1 + EQUAL_COST) * budget:
            continue
        if r["policy"] not in best or r["psnr"] > best[r["policy"]]["psnr"]:
            best[r["policy"]] = r
    return sorted(best.values(), key=lambda r: -r["psnr"])


FAMILIES = {  # whose methods: this project's policies, and each library's peers
    "this project": ("fora", "calibrated", "calibrated-o1"),
    "cache-dit": ("dbcache", "dbcache-taylorseer"),
    "diffusers": ("taylorseer", "fbcache"),
}


LADDER_RESAMPLES = 10_000  # a mean of 16 differences: cheap, and the 95% ends settle


def _best_peer(best: dict):
    peers = [best[f] for f in ("cache-dit", "diffusers") if best[f] is not None]
    return max(peers, key=lambda r: r["psnr"]) if peers else None


def _margin(ours: dict | None, peer: dict | None) -> tuple:
    """Mean PSNR of `ours` minus `peer`'s over the same seeds, with its 95% paired-bootstrap interval (Nones when
    either is missing; no interval without per-seed values)."""
    if ours is None or peer is None:
        return None, None, None
    a, b = np.asarray(ours.get("psnr_seeds") or []), np.asarray(peer.get("psnr_seeds") or [])
    if not len(a) == len(b) >= 2:
        return ours["psnr"] - peer["psnr"], None, None
    ci = paired_interval(lambda i: float(np.mean(a[i] - b[i])), len(a), LADDER_RESAMPLES)
    return ci.value, ci.low, ci.high


def cost_ladder(rows: list[dict]) -> list[dict]:
    """At each FORA N's measured cost: the best setting (highest mean PSNR, at most the cost + `EQUAL_COST`) of this
    project's policies, of cache-dit's and of diffusers' peers, and this project's margin over the best peer (dB;
    negative where a peer is ahead) with its 95% paired-bootstrap interval over the evaluation seeds (the same seeds
    resampled for both; `margin_*`), and the same against each library's best (`margin_*_vs_cache-dit`,
    `margin_*_vs_diffusers`).
    A library with no setting that cheap gets None. The best settings are chosen on the same seeds the intervals
    resample, so the intervals do not account for that choice (it favours the peer with more settings)."""
    ladder = []
    for fora in sorted((r for r in rows if r["policy"] == "fora"), key=lambda r: r["interval"]):
        best = {}
        for family, policies in FAMILIES.items():
            fits = at_budget([r for r in rows if r["policy"] in policies], fora["computed_calls"])
            best[family] = fits[0] if fits else None
        ours = best["this project"]
        step = {"interval": fora["interval"], "budget_calls": fora["computed_calls"], **best}
        for name, peer in [("", _best_peer(best))] + [(f"_vs_{f}", best[f]) for f in ("cache-dit", "diffusers")]:
            step.update(
                dict(zip((f"margin_db{name}", f"margin_low{name}", f"margin_high{name}"), _margin(ours, peer)))
            )
        ladder.append(step)
    return ladder


def budget_entries(entries: list, budget: float) -> list:
    """The entries shown side by side: uncached, then each method's best setting at the budget."""
    best = {id(r) for r in at_budget([e.row for e in entries], budget)}
    chosen = [e for e in entries if id(e.row) in best]
    return [entries[0]] + sorted(chosen, key=lambda e: -e.row["psnr"])


def score(entry: Entry, reference: np.ndarray, total_calls: int, labels: np.ndarray, classifier) -> None:
    values = [min(psnr(a, b), PSNR_CAP) for a, b in zip(entry.images, reference)]
    entry.row.update(
        psnr=float(np.mean(values)),
        psnr_min=float(np.min(values)),
        psnr_seeds=[float(v) for v in values],  # per evaluation seed, in order: paired comparisons (cost_ladder)
        ssim=float(np.mean([ssim(a, b) for a, b in zip(entry.images, reference)])),
        computed_fraction=entry.row["computed_calls"] / total_calls,
    )
    if classifier is not None:
        from embedded.emoji.classifier import classify

        entry.row["class_accuracy"] = float(np.mean(classify(classifier, entry.images) == labels))


def time_entries(
    pipe,
    entries: list[Entry],
    seed: int,
    label: int,
    steps: int,
    guidance: float,
    pairs: int,
    clock: str,
    on_round=None,
    warmup: int = 1,
    options: tuple = (),
) -> None:
    """Speedup of each entry against uncached on one sample's call, the entries' pairs interleaved round by round
    (`fora.timing.paired_speedups`), into each entry's row; the uncached entry reads 1.0 (0 pairs)."""
    timed = [e for e in entries if e.config is not None]
    for entry in entries:
        if entry.config is None:
            entry.row.update(speedup=1.0, speedup_low=1.0, speedup_high=1.0, pairs=0)
    if not timed:
        return
    ratios = paired_speedups(
        pipe,
        lambda: generate_batch(pipe, [label], [seed], steps, guidance, options),
        [e.config for e in timed],
        pairs=pairs,
        warmup=warmup,
        clock=clock,
        on_round=on_round,
    )
    for entry, ratio in zip(timed, ratios):
        entry.row.update(speedup=ratio.ratio, speedup_low=ratio.low, speedup_high=ratio.high, pairs=ratio.pairs)


def fbcache_at_budget(
    pipe, budget: float, seeds, labels, steps, guidance, iterations: int = 7, options: tuple = ()
) -> Entry:
    """First Block Cache at the threshold whose mean cost over `seeds` is closest to `budget` (bisection on the
    threshold; cost falls as the threshold rises)."""
    return bisect_threshold(
        pipe,
        lambda x: Entry("fbcache", f"threshold={x:.4g} (at budget)", fbcache(x), threshold=round(x, 6)),
        budget,
        seeds,
        labels,
        steps,
        guidance,
        iterations,
        options,
    )


def diffusers_peers(pipe) -> bool:
    """Whether diffusers' TaylorSeer and First Block Cache run here on `pipe` (tested on DiT and PixArt only)."""
    from diffusers import DiTTransformer2DModel, PixArtTransformer2DModel

    return isinstance(pipe.transformer, (DiTTransformer2DModel, PixArtTransformer2DModel))


def build_entries(pipe, args, calibration: tuple[list[int], list[int]], log) -> list[Entry]:
    entries = [Entry("uncached", "T steps computed", None)]
    entries += [Entry("fora", f"N={n}", ForaConfig(interval=n), interval=n) for n in args.intervals]
    classes, seeds = calibration
    recording = record_grams(pipe, classes, seeds, args.steps, args.guidance, options=args.options)
    for order in (0, 1):
        for n in args.intervals:
            log(f"calibrating order {order} at FORA N={n}'s budget")
            plan = calibrate(
                pipe,
                args.steps,
                n,
                order,
                args.guidance,
                args.calibration_samples,
                recording=recording,
                options=args.options,
            )
            name = "calibrated" if order == 0 else "calibrated-o1"
            entries.append(Entry(name, f"budget of N={n}", ForaConfig(plan=plan), interval=n, order=order))
    if not diffusers_peers(pipe):
        log(
            f"diffusers' TaylorSeer and First Block Cache run here on DiT/PixArt only: left out on "
            f"{type(pipe).__name__}"
        )
        return entries
    for o in args.orders:  # every (N, warm-up) of its two knobs, at whatever cost each has
        for n in args.intervals:
            for w in args.warmups:
                if len(taylorseer_steps(args.steps, n, w)) < args.steps:
                    entries.append(
                        Entry("taylorseer", f"N={n} warmup={w} order={o}", taylorseer(n, o, w), interval=n, order=o)
                    )
    entries += [Entry("fbcache", f"threshold={t:g}", fbcache(t), threshold=t) for t in args.thresholds]
    return entries


def run_arena(args, log=print) -> dict:
    """Run every method (see the module docstring); returns the JSON-ready result with its rows."""
    t_start = time.perf_counter()
    pipe = load_pipeline(args.model, device=args.device)
    pipe.set_progress_bar_config(disable=True)
    text = is_text_conditional(pipe)
    spec = MODELS.get(args.model)
    args.options = tuple(spec.call_kwargs.items()) if text and spec else ()  # the model card's, in every run
    if text:  # sample s: prompt s mod P of the model's prompt set; calibration on its calibration prompts
        if args.fid:
            raise ValueError(f"--fid scores class models in the emoji classifier's feature space; {args.model} is not")
        prompts = load_prompts(getattr(args, "prompts", None) or prompt_set(pipe, "eval"))
        calibration_prompts = load_prompts(prompt_set(pipe, "calibration"))
        _, cal_seeds = calibration_set(1, args.calibration_samples)
        classes = [calibration_prompts[i % len(calibration_prompts)] for i in range(args.calibration_samples)]
        labels = np.array([prompts[s % len(prompts)] for s in args.seeds])
    else:
        num_classes = class_count(pipe)
        classes, cal_seeds = calibration_set(num_classes, args.calibration_samples)
        overlap = sorted(set(args.seeds) & set(cal_seeds))
        if overlap:
            raise ValueError(f"--seeds {overlap} are calibration seeds; evaluation must use other seeds")
        shared = sorted({s for s in args.seeds if s % num_classes in classes})
        if shared:
            raise ValueError(
                f"--seeds {shared} ask for calibration classes {sorted({s % num_classes for s in shared})} "
                f"(class = seed mod {num_classes}); evaluation must use other classes"
            )
        labels = np.array([s % num_classes for s in args.seeds])
        if args.fid and num_classes != NUM_CLASSES:  # checked before the sweep: --fid scores with the classifier
            raise ValueError(
                f"--fid scores in the emoji classifier's feature space ({NUM_CLASSES} classes); "
                f"{args.model} has {num_classes} classes"
            )
    classifier = None
    if args.model == "emoji-dit":
        from analysis.emoji_eval import CLASSIFIER_WEIGHTS
        from embedded.emoji.classifier import load_or_train_classifier

        classifier, _ = load_or_train_classifier(CLASSIFIER_WEIGHTS)
    with ComputeMap(pipe.transformer) as probe:
        generate_batch(pipe, [labels.tolist()[0]], [0], 2, args.guidance, args.options)
    num_blocks, kinds = probe.num_blocks, tuple(probe.kinds)

    with resumable(os.path.join(args.out, "observed")):  # a stopped run resumes: observations are kept
        entries, budget, total_calls = _observe_all(pipe, args, (classes, cal_seeds), labels, num_blocks, log)
    shape = {"calibration": (classes, cal_seeds), "num_blocks": num_blocks, "kinds": kinds}
    return _finish(pipe, args, entries, labels, classifier, total_calls, budget, t_start, shape, log)


def _observe_all(pipe, args, calibration, labels, num_blocks, log) -> tuple[list[Entry], int, int]:
    """Every entry observed; (entries, the budget: FORA N = match's calls, the uncached calls)."""
    entries = build_entries(pipe, args, calibration, log)
    for i, entry in enumerate(entries):
        log(f"[{i + 1}/{len(entries)}] {entry.policy} {entry.setting}")
        observe(pipe, entry, args.seeds, labels.tolist(), args.steps, args.guidance, args.options)
    # module calls per uncached step, as the uncached run made them (mean over seeds): blocks x kinds, less where a
    # block lacks a kind (SD3's last block has no text MLP), whatever a pipeline does at some steps only
    per_step = entries[0].row["computed_calls"] / args.steps
    total_calls = round(args.steps * per_step)
    budget = round(len(full_steps(args.steps, args.match_interval)) * per_step)
    if diffusers_peers(pipe):
        log(f"fbcache: bisecting the threshold to FORA N={args.match_interval}'s budget of {budget} calls")
        entries.append(
            fbcache_at_budget(
                pipe, budget, args.seeds, labels.tolist(), args.steps, args.guidance, options=args.options
            )
        )
    if args.dbcache_intervals and not supports_cache_dit(pipe):
        log(f"cache-dit's DBCache does not run here on {type(pipe).__name__}: left out")
    elif args.dbcache_intervals:
        budgets = {n: round(len(full_steps(args.steps, n)) * per_step) for n in args.dbcache_intervals}
        log(f"dbcache: thresholds bisected to the costs of FORA N={', '.join(map(str, budgets))}")
        entries += dbcache_sweep(
            pipe,
            budgets,
            args.seeds,
            labels.tolist(),
            args.steps,
            args.guidance,
            args.dbcache_fn,
            args.dbcache_bn,
            args.dbcache_warmups,
            (None, *args.dbcache_orders),
            log=log,
            options=args.options,
        )
    return entries, budget, total_calls


def _finish(pipe, args, entries, labels, classifier, total_calls, budget, t_start, shape, log) -> dict:
    """Scores, timings, distribution columns and the JSON-ready result of the observed entries."""
    (classes, cal_seeds), num_blocks, kinds = shape["calibration"], shape["num_blocks"], shape["kinds"]
    reference = entries[0].images
    for entry in entries:
        score(entry, reference, total_calls, labels, classifier)
    if args.timing_pairs:
        log(f"timing {len(entries) - 1} settings against uncached, {args.timing_pairs} interleaved rounds")
        time_entries(
            pipe,
            entries,
            args.seeds[0],
            labels.tolist()[0],
            args.steps,
            args.guidance,
            args.timing_pairs,
            args.clock,
            on_round=lambda r, k: log(f"timed round {r} of {k}" if r else "timing: warm-up done"),
            options=args.options,
        )
    distribution = None
    if args.fid:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)  # quality only here: every core
        try:
            distribution = distribution_columns(
                pipe,
                budget_entries(entries, budget),
                args.fid,
                args.steps,
                args.guidance,
                args.out,
                args.fid_reference,
                log=log,
            )
        finally:
            torch.set_num_threads(threads)
    plans = {
        e.policy + " " + e.setting: e.config.plan.to_dict()
        for e in entries
        if isinstance(e.config, ForaConfig) and e.config.plan is not None
    }
    device = str(pipe.device)
    return {
        "settings": {
            "model": args.model,
            "steps": args.steps,
            "match_interval": args.match_interval,
            "seeds": args.seeds,
            "guidance": args.guidance,
            "intervals": args.intervals,
            "orders": args.orders,
            "thresholds": args.thresholds,
            "dbcache": {
                "intervals": args.dbcache_intervals,
                "fn": args.dbcache_fn,
                "bn": args.dbcache_bn,
                "warmups": args.dbcache_warmups,
                "taylorseer_orders": args.dbcache_orders,
            },
            "calibration": {"classes": classes, "seeds": cal_seeds},
            "prompts": sorted(set(labels.tolist())) if is_text_conditional(pipe) else None,
        },
        "budget_calls": budget,
        "total_calls": total_calls,
        "num_blocks": num_blocks,
        "kinds": list(kinds),
        "timing": (
            f"paired_speedups of one sample's call: {args.timing_pairs} ABBA pairs per setting after a warm-up, "
            f"interleaved round by round, no observers, {clock_label(args.clock)}; median of pair ratios (range)"
            if args.timing_pairs
            else "not measured (--timing-pairs 0)"
        ),
        "machine": machine(device, args.clock),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - t_start, 1),
        "rows": [e.row for e in entries],
        "distribution": distribution,
        "plans": plans,
        "_entries": entries,  # dropped when written: images and maps for the report
    }
