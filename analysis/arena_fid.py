"""The arena's distribution columns (`--fid K`): each method's best setting at FORA N's cost, and the uncached model,
over K class-balanced samples, scored with Table 3's metrics (`analysis.distribution`).

Sample i has class i mod classes and the noise seed `samples.sample_seed(FID_SEED, i)`, the same in every set.
Static methods (uncached, FORA, plans, TaylorSeer) run in batches; First Block Cache one sample per call, since it
decides from the whole batch. Images are kept under DIR/samples/<method>.npz, so a rerun with the same settings
reuses them. The feature space is the embedded model's emoji classifier against fresh renders (10,016 by default,
render seed 3003), exactly as Table 3's: numbers that rank methods on this model, not Inception FIDs.
"""

import argparse
import os

import numpy as np
import torch

from fora.generate import to_uint8
from fora.peers import apply_cache

from .distribution import EmojiFeatures, distribution_metrics
from .samples import sample_labels, sample_seed
from .table_metrics import reference_features

FID_SEED = 7007  # sample seeds of the distribution sets: unlike the evaluation seeds 0.., far from calibration's
REFERENCE_SAMPLES = 10_000


def _generate(pipe, entry, labels, seeds, steps: int, guidance: float, batch_size: int) -> np.ndarray:
    batch = 1 if entry.policy == "fbcache" else batch_size
    images = []
    remove = apply_cache(pipe, entry.config)
    try:
        for b in range(0, len(seeds), batch):
            generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds[b : b + batch]]
            out = pipe(class_labels=labels[b : b + batch].tolist(), num_inference_steps=steps,
                       guidance_scale=guidance, generator=generators, output_type="np").images  # fmt: skip
            images.append(to_uint8(out))
    finally:
        remove(pipe)
    return np.concatenate(images)


def _cached_samples(path: str, entry, labels, seeds, steps, guidance, batch_size, pipe) -> np.ndarray:
    key = f"{entry.policy} {entry.setting} T{steps} g{guidance} seed{FID_SEED} n{len(seeds)}"
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


def distribution_columns(pipe, entries: list, samples: int, steps: int, guidance: float, out: str,
                         reference_samples: int = REFERENCE_SAMPLES, batch_size: int = 16, log=print) -> dict:  # fmt: skip
    """FD, precision, recall, score and class accuracy of `samples` samples of each entry (`fid_*` columns added to
    the entries' rows). Returns what the report says about them."""
    num_classes = getattr(pipe.transformer.config, "num_embeds_ada_norm", None) or 1000
    extractor = EmojiFeatures()
    if num_classes != len(extractor.labels):
        raise ValueError(f"--fid scores in the emoji classifier's feature space: the model has {num_classes} classes, "
                         f"the classifier {len(extractor.labels)}")  # fmt: skip
    args = argparse.Namespace(extractor="emoji", reference_samples=reference_samples, out=out)
    real = reference_features(args, extractor)
    labels = sample_labels(range(samples), num_classes)
    seeds = np.array([sample_seed(FID_SEED, i) for i in range(samples)], dtype=np.int64)
    for entry in entries:
        log(f"distribution set: {entry.policy} {entry.setting} ({samples} samples)")
        name = f"{entry.policy}_{entry.setting}".replace(" ", "_").replace("=", "").replace("(", "").replace(")", "")
        images = _cached_samples(os.path.join(out, "samples", f"{name}.npz"), entry, labels, seeds, steps, guidance,
                                 batch_size, pipe)  # fmt: skip
        fake = extractor(images)
        metrics = distribution_metrics(real, fake)
        entry.row.update(fid=metrics["fid"], fid_precision=metrics["precision"], fid_recall=metrics["recall"],
                         fid_score=metrics["inception_score"], fid_class_accuracy=float(np.mean(
                             fake.logits.argmax(1) == labels)), fid_samples=samples)  # fmt: skip
    return {"samples": samples, "seed": FID_SEED, "reference": f"{len(real.features):,} fresh renders (render seed 3003)",
            "feature_space": "the emoji classifier's 192 penultimate features (32 logits for score and accuracy)"}
