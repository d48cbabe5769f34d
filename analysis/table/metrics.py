"""The rows of the Table 3 report: distribution metrics of each cell's samples, with the cell's speed and schedule.

The reference set and its features are cached under `DIR/reference/`, keyed by everything that made them (the
extractor and its weights, the render seed and count, or the reference file), so a rerun or a larger table reuses
them and a change of any input makes new ones.
"""

import os

import numpy as np

from analysis.metrics.bootstrap import BOOTSTRAP_RESAMPLES, paired_interval
from analysis.metrics.distribution import (
    EmojiFeatures,
    Features,
    InceptionFeatures,
    distribution_metrics,
    frechet_distance,
    load_features,
    precision_recall,
    save_features,
)
from analysis.metrics.quality import psnr
from analysis.samples import Cell, iter_cell
from fora.schedule import full_steps, ideal_speedup

_TO_REFERENCE = ("fid", "sfid", "inception_score", "inception_score_std", "precision", "recall")  # need renders
REFERENCE_RENDER_SEED = 3003  # emoji renders: training used data seed 1, the classifier 1001 and 2002
FLOOR_RENDER_SEED = 4004  # a second set of real renders, scored like a generator's samples


def make_extractor(args):
    if args.extractor == "emoji":
        return EmojiFeatures()
    return InceptionFeatures(args.inception_weights, device=args.device or "cpu")


def _interleaved_renders(per_class: int, seed: int) -> np.ndarray:
    """Fresh emoji renders with the classes interleaved, so that any prefix (a precision/recall subset) is balanced."""
    from embedded.emoji.render import render_dataset

    images, _ = render_dataset(per_class, seed=seed)
    return images[np.argsort(np.arange(len(images)) % per_class, kind="stable")]


def reference_description(args) -> str:
    if getattr(args, "prompt_list", None):
        return (
            f"none shipped for a text model: each cell against the uncached (N = 1) samples of the same "
            f"{len(args.prompt_list)} prompts and seeds (prompt set {args.prompt_tag})"
        )
    if args.extractor == "emoji":
        from embedded.emoji.classes import NUM_CLASSES

        count = -(-args.reference_samples // NUM_CLASSES) * NUM_CLASSES
        return f"{count:,} fresh renders of the emoji (render seed {REFERENCE_RENDER_SEED}, never used in training)"
    return f"the images of {os.path.basename(args.reference_npz)}"


def reference_features(args, extractor) -> Features:
    """Features of the reference set, computed once and cached on disk."""
    if args.extractor == "emoji":
        from embedded.emoji.classes import NUM_CLASSES

        per_class = -(-args.reference_samples // NUM_CLASSES)
        key = f"{extractor.key}_renders-seed{REFERENCE_RENDER_SEED}-{per_class}x{NUM_CLASSES}"
    else:
        stat = os.stat(args.reference_npz)
        key = f"{extractor.key}_{os.path.basename(args.reference_npz)}-{stat.st_size}-{int(stat.st_mtime)}"
    path = os.path.join(args.out, "reference", f"{key}.npz")
    if os.path.isfile(path):
        return load_features(path)
    if args.extractor == "emoji":
        images = _interleaved_renders(per_class, REFERENCE_RENDER_SEED)
    else:
        with np.load(args.reference_npz) as z:
            name = "arr_0" if "arr_0" in z else "images"
            if name not in z:
                raise ValueError(f"--reference-npz {args.reference_npz!r} has no 'arr_0' or 'images' array")
            images = z[name]
    feats = extractor(images)
    save_features(path, feats)
    return feats


def _cell_features(extractor, args, cell: Cell, twin: Cell | None):
    """Features, labels, generation seconds, and the PSNR of each sample against its uncached twin, shard by shard
    (a paper-size cell of 50,000 images never sits in memory at once)."""
    feats, logits, spatial, labels, psnrs, seconds = [], [], [], [], [], 0.0
    n = args.samples_by_steps[cell.steps]
    twins = iter_cell(args.out, twin, n, args.seed) if twin is not None else None
    for shard in iter_cell(args.out, cell, n, args.seed):
        f = extractor(shard["images"])
        feats.append(f.features)
        logits.append(f.logits)
        spatial.append(f.spatial)
        labels.append(shard["labels"])
        seconds += float(shard["seconds"])
        if twins is not None:
            psnrs += [psnr(a, b, 255.0) for a, b in zip(shard["images"], next(twins)["images"])]
    has_logits, has_spatial = logits[0] is not None, spatial[0] is not None
    return (
        Features(
            np.concatenate(feats),
            np.concatenate(logits) if has_logits else None,
            np.concatenate(spatial) if has_spatial else None,
        ),
        np.concatenate(labels),
        seconds,
        psnrs,
    )


def render_floor(args, extractor, real: Features, n: int) -> dict | None:
    """The metrics of `n` *real* images (fresh renders, another seed) against the reference: the best a generator
    can score at this sample count. FD is biased upwards at finite n, so this floor, not 0, means "as good as real"."""
    if args.extractor != "emoji":
        return None
    from embedded.emoji.classes import NUM_CLASSES

    path = os.path.join(args.out, "reference", f"{extractor.key}_floor-seed{FLOOR_RENDER_SEED}-{n}.npz")
    if os.path.isfile(path):
        feats = load_features(path)
    else:
        feats = extractor(_interleaved_renders(-(-n // NUM_CLASSES), FLOOR_RENDER_SEED)[:n])
        save_features(path, feats)
    return {"samples": n, **distribution_metrics(real, feats)}


def table_rows(args, cells: list[Cell], speed: dict, extractor) -> tuple[list[dict], dict]:
    """One row per cell (schedule, distribution metrics, class accuracy, PSNR against the N = 1 twin, speed), and
    the table's notes: the real-image floor and, when T's sample counts differ, the common count of `fid_common`.

    A text model (`args.prompt_list`) has no reference set: its rows hold only what the cache changed, against the
    uncached samples of the same prompts and seeds (`damage_metrics`), and the PSNR to them."""
    text = bool(getattr(args, "prompt_list", None))
    real = None if text else reference_features(args, extractor)
    intervals = {(c.steps, c.interval) for c in cells}
    common = min(args.samples_by_steps[c.steps] for c in cells)
    differ = len({args.samples_by_steps[c.steps] for c in cells}) > 1
    # class accuracy needs the generator's classes to be the classifier's (the emoji model's 32)
    has_classes = not text and args.extractor == "emoji" and args.num_classes == len(extractor.labels)
    rows = []
    uncached = {}  # T -> the N = 1 cell's features: the reference of "what the cache changed"
    resamples = getattr(args, "bootstrap", BOOTSTRAP_RESAMPLES)
    for cell in sorted(cells, key=lambda c: (c.steps, c.interval)):  # N = 1 first within each T
        twin = Cell(cell.steps, 1) if cell.interval > 1 and (cell.steps, 1) in intervals else None
        fake, labels, seconds, psnrs = _cell_features(extractor, args, cell, twin)
        if cell.interval == 1:
            uncached[cell.steps] = fake
        row = {
            "steps": cell.steps,
            "interval": cell.interval,
            "full_steps": len(full_steps(cell.steps, cell.interval)),
            "ideal_speedup": ideal_speedup(cell.steps, cell.interval),
            "samples": len(labels),
            **(distribution_metrics(real, fake) if real is not None else dict.fromkeys(_TO_REFERENCE, float("nan"))),
        }
        if differ and real is not None:  # FD's bias depends on the sample count: compare across T at one count
            row["fid_common"] = frechet_distance(real.features, fake.features[:common])
        row["class_accuracy"] = float(np.mean(fake.logits.argmax(1) == labels)) if has_classes else float("nan")
        # median over samples of the PSNR against the same seed uncached (inf for N = 1 itself)
        row["psnr_vs_uncached"] = (
            float(np.median(psnrs)) if psnrs else (float("inf") if cell.interval == 1 else float("nan"))
        )
        row.update(damage_metrics(real, fake, uncached.get(cell.steps), resamples, args.seed))
        row["generation_process_s"] = seconds  # summed over the processes that made the shards, pauses left out
        timing = speed.get(cell)
        keys = ("speedup", "speedup_low", "speedup_high")
        row.update({k: timing[k] for k in keys} if timing else dict.fromkeys(keys, float("nan")))
        row["speedup_text"] = timing["text"] if timing else ""
        # throughput from the timed calls (quiet, warm), not from the generation run
        row["samples_per_s"] = timing["batch"] / timing["fora_s"] if timing else float("nan")
        rows.append(row)
    floor = None if text else render_floor(args, extractor, real, max(args.samples_by_steps[c.steps] for c in cells))
    order = {(c.steps, c.interval): i for i, c in enumerate(cells)}  # the rows in the cells' order
    rows.sort(key=lambda r: order[(r["steps"], r["interval"])])
    return rows, {"floor": floor, "common_samples": common if differ else None}


def damage_metrics(
    real: Features | None,
    fake: Features,
    uncached: Features | None,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
) -> dict:
    """What the cache changed, apart from the model's own bias, with paired-bootstrap intervals over the seeds:

    - FD to the renders with its interval, and its difference from the uncached cell of the same T, resampling
      the same seed indices for both cells (`fid_diff`: this cell minus N = 1; its interval excludes 0 only where
      the samples resolve a change);
    - FD, sFID, precision and recall against the uncached model's own samples of the same seeds (`*_to_uncached`:
      0, 0, 1 and 1 for the N = 1 cell itself), FD's with its interval (sFID's without).

    Without an N = 1 cell of the same T and sample count the comparisons are NaN; without renders (`real` None: a
    text model) so is everything against them. `resamples` = 0 leaves the intervals out (NaN)."""
    out = {}
    n = len(fake.features)
    nan = float("nan")

    def interval(name, statistic):
        if resamples and n >= 2:
            ci = paired_interval(statistic, n, resamples, seed=seed)
            out.update({f"{name}_low": ci.low, f"{name}_high": ci.high})
        else:
            out.update({f"{name}_low": nan, f"{name}_high": nan})

    if real is not None:
        interval("fid", lambda i: frechet_distance(real.features, fake.features[i]))
    else:
        out.update(fid_low=nan, fid_high=nan)
    if uncached is None or len(uncached.features) != n:  # no N = 1 twin with the same seeds: not comparable
        keys = ("fid_diff", "fd_to_uncached", "sfid_to_uncached", "precision_to_uncached", "recall_to_uncached")
        out.update(dict.fromkeys(keys, nan))
        out.update({f"{k}_{end}": nan for k in ("fid_diff", "fd_to_uncached") for end in ("low", "high")})
        return out
    base = uncached
    same = fake is base
    if real is None:
        out.update(fid_diff=nan, fid_diff_low=nan, fid_diff_high=nan)
    elif same:  # N = 1 itself: every difference is exactly 0
        out.update(fid_diff=0.0, fid_diff_low=0.0, fid_diff_high=0.0)
    else:
        out["fid_diff"] = frechet_distance(real.features, fake.features) - frechet_distance(
            real.features, base.features
        )
        interval(
            "fid_diff",
            lambda i: (
                frechet_distance(real.features, fake.features[i]) - frechet_distance(real.features, base.features[i])
            ),
        )
    out["fd_to_uncached"] = 0.0 if same else frechet_distance(base.features, fake.features)
    if same:
        out.update(fd_to_uncached_low=0.0, fd_to_uncached_high=0.0)
    else:
        interval("fd_to_uncached", lambda i: frechet_distance(base.features[i], fake.features[i]))
    precision, recall = (1.0, 1.0) if same else precision_recall(base.features, fake.features)
    out.update(precision_to_uncached=precision, recall_to_uncached=recall)
    if fake.spatial is not None and base.spatial is not None:
        out["sfid_to_uncached"] = 0.0 if same else frechet_distance(base.spatial, fake.spatial)
    return out
