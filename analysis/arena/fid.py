"""The arena's distribution columns (`--fid K`): each method's best setting at FORA N's cost, and the uncached model,
over K class-balanced samples, scored with Table 3's metrics (`analysis.metrics.distribution`).

Sample i has class i mod classes and the noise seed `samples.sample_seed(FID_SEED, i)`, the same in every set.
Static methods (uncached, FORA, plans, TaylorSeer) run in batches; First Block Cache one sample per call, since it
decides from the whole batch. Images are kept under DIR/samples/<method>.npz, so a rerun with the same settings
reuses them. The feature space is the embedded model's emoji classifier against fresh renders (10,016 by default,
render seed 3003), exactly as Table 3's: numbers that rank methods on this model, not Inception FIDs.
"""

import argparse
import hashlib
import json
import os

import numpy as np
import torch

from analysis.metrics.distribution import EmojiFeatures, distribution_metrics, frechet_distance
from analysis.samples import sample_labels, sample_seed
from analysis.table.metrics import reference_features
from fora.generate import num_classes as class_count
from fora.generate import to_uint8
from fora.peers import apply_cache

FID_SEED = 7007  # sample seeds of the distribution sets: unlike the evaluation seeds 0.., far from calibration's
REFERENCE_SAMPLES = 10_000


def _generate(pipe, entry, labels, seeds, steps: int, guidance: float, batch_size: int) -> np.ndarray:
    batch = 1 if entry.policy == "fbcache" else batch_size
    images = []
    remove = apply_cache(pipe, entry.config)
    try:
        for b in range(0, len(seeds), batch):
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[b : b + batch]]
            out = pipe(
                class_labels=labels[b : b + batch].tolist(),
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=generators,
                output_type="np",
            ).images
            images.append(to_uint8(out))
    finally:
        remove(pipe)
    return np.concatenate(images)


def _cached_samples(path: str, entry, labels, seeds, steps, guidance, batch_size, pipe) -> np.ndarray:
    # what made the samples: the method's full config (a plan's steps, a peer's knobs) and the model's weights
    weights = sum(float(p.double().sum()) for p in pipe.transformer.parameters())
    plan = getattr(entry.config, "plan", None)  # a plan's repr omits per-block steps: hash what it runs
    config = (
        json.dumps([plan.num_steps, plan.steps, plan.order], sort_keys=True)
        if plan is not None
        else repr(entry.config)
    )
    made_by = hashlib.sha256(f"{config} {type(pipe.transformer).__name__} {weights!r}".encode()).hexdigest()[:16]
    key = f"{entry.policy} {entry.setting} T{steps} g{guidance} seed{FID_SEED} n{len(seeds)} {made_by}"
    if os.path.isfile(path):
        with np.load(path) as z:
            if str(z["key"]) == key:
                return z["images"]
    images = _generate(pipe, entry, labels, seeds, steps, guidance, batch_size)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp{os.getpid()}.npz"
    np.savez_compressed(tmp, images=images, labels=labels, seeds=seeds, key=key)
    os.replace(tmp, path)
    return images


def set_path(out: str, policy: str, setting: str) -> str:
    name = f"{policy}_{setting}".replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
    return os.path.join(out, "samples", f"{name}.npz")


def _columns(real, fake, labels, uncached) -> dict:
    """Table 3's metrics against the renders, and the Frechet distance to the uncached model's own samples (same
    seeds): how far caching moved the distribution, whatever the model's own gap to the renders is."""
    metrics = distribution_metrics(real, fake)
    return {
        "fid": metrics["fid"],
        "fid_precision": metrics["precision"],
        "fid_recall": metrics["recall"],
        "fid_score": metrics["inception_score"],
        "fid_class_accuracy": float(np.mean(fake.logits.argmax(1) == labels)),
        "fd_vs_uncached": frechet_distance(uncached.features, fake.features) if uncached is not None else None,
        "fid_samples": len(labels),
    }


def rescore_rows(out: str, reference_samples: int = REFERENCE_SAMPLES) -> tuple[dict, list[dict]]:
    """The distribution columns of DIR/arena.json recomputed from the stored sample sets (after a change of metrics:
    no sample is generated again); the uncached set must be among them. Returns the updated arena data and the
    rescored rows (the same dicts); `rescore.py` writes them back."""
    path = os.path.join(out, "arena.json")
    data = json.load(open(path))
    extractor = EmojiFeatures()
    real = reference_features(
        argparse.Namespace(extractor="emoji", reference_samples=reference_samples, out=out), extractor
    )
    rows = [r for r in data["rows"] if r.get("fid_samples")]
    rows.sort(key=lambda r: r["policy"] != "uncached")
    if not rows or rows[0]["policy"] != "uncached":
        raise ValueError(f"{path}: no distribution columns with an uncached set to rescore")
    uncached = None
    for row in rows:
        with np.load(set_path(out, row["policy"], row["setting"])) as z:
            images, labels = z["images"], z["labels"]
        fake = extractor(images)
        uncached = fake if row["policy"] == "uncached" else uncached
        row.update(_columns(real, fake, labels, uncached))
    return data, rows


def distribution_columns(
    pipe,
    entries: list,
    samples: int,
    steps: int,
    guidance: float,
    out: str,
    reference_samples: int = REFERENCE_SAMPLES,
    batch_size: int = 16,
    log=print,
) -> dict:
    """FD, precision, recall, score and class accuracy of `samples` samples of each entry (`fid_*` columns added to
    the entries' rows). Returns what the report says about them."""
    num_classes = class_count(pipe)
    extractor = EmojiFeatures()
    if num_classes != len(extractor.labels):
        raise ValueError(
            f"--fid scores in the emoji classifier's feature space: the model has {num_classes} classes, "
            f"the classifier {len(extractor.labels)}"
        )
    args = argparse.Namespace(extractor="emoji", reference_samples=reference_samples, out=out)
    real = reference_features(args, extractor)
    labels = sample_labels(range(samples), num_classes)
    seeds = np.array([sample_seed(FID_SEED, i) for i in range(samples)], dtype=np.int64)
    uncached = None
    for entry in entries:
        log(f"distribution set: {entry.policy} {entry.setting} ({samples} samples)")
        images = _cached_samples(
            set_path(out, entry.policy, entry.setting), entry, labels, seeds, steps, guidance, batch_size, pipe
        )
        fake = extractor(images)
        uncached = fake if entry.policy == "uncached" else uncached
        entry.row.update(_columns(real, fake, labels, uncached))
    return {
        "samples": samples,
        "seed": FID_SEED,
        "reference": f"{len(real.features):,} fresh renders (render seed 3003)",
        "feature_space": "the emoji classifier's 192 penultimate features (32 logits for score and accuracy)",
    }
