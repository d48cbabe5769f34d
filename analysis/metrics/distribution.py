"""Distribution quality of generated samples against a reference set: Frechet distance, Inception-style score,
precision and recall (Kynkaenniemi et al. 2019, k = 3), in the feature space of a pluggable extractor.

- `EmojiFeatures` (offline default for `emoji-dit`): the project's emoji classifier (`assets/`), its 192 penultimate
  features for FD / precision / recall and its 32 class logits for the score. These numbers measure the same things
  as FID / IS in a much smaller feature space: they rank settings of this model, and are NOT comparable with
  Inception FID numbers of papers.
- `InceptionFeatures` (DiT-XL/2 on a machine that has the files): torch-fidelity's Inception-v3 (the network and
  resize of TF1 FID) from a local weights file, 2048 pool features and 1008 logits. It never downloads.

The math comes from libraries: torchmetrics' `FrechetInceptionDistance` and `InceptionScore` (fed with features
computed once per image set, through `_Precomputed`), and prdc's `compute_prdc` for precision and recall.

What each number means: FD, the Frechet distance between Gaussians fitted to reference and generated features (0 for
identical statistics, lower is better); score, exp(E KL(p(y|x) || p(y))) over 10 splits (high when each sample is
classified confidently and the classes are balanced; at most the number of classes); precision, the share of
generated samples inside the k-NN balls of the reference features (fidelity); recall, the share of reference samples
inside the k-NN balls of the generated ones (diversity).
"""

import contextlib
import hashlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from embedded.emoji.classifier import _to_tensor  # the classifier's own uint8 -> [-1, 1] input conversion

PR_NEIGHBOURS = 3
IS_SPLITS = 10


@dataclass
class Features:
    features: np.ndarray  # n x d, float64
    logits: np.ndarray | None  # n x classes, float32 (None where the extractor has no classifier head)
    spatial: np.ndarray | None = None  # n x d', mid-level spatial features for sFID (None where not computed)


class _Precomputed(torch.nn.Module):
    """Lets torchmetrics' metrics take features computed once: the `feature` module of FID/IS is the identity."""

    def __init__(self, num_features: int):
        super().__init__()
        self.num_features = num_features

    def forward(self, x):
        return x


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:12]


# sFID's spatial features from the emoji classifier, as the paper's sFID takes the first 7 channels of Inception's
# spatial mixed_6/conv map (17 x 17): the first SPATIAL_CHANNELS channels of the classifier's second stage, an
# 8 x 8 map (after its pooling: `features[:SPATIAL_LAYER]`), 7 x 64 = 448 values per image
SPATIAL_LAYER = 8
SPATIAL_CHANNELS = 7


class EmojiFeatures:
    """Penultimate features, class logits and (for sFID) second-stage spatial features of the emoji classifier;
    images uint8 N x 32 x 32 x 3."""

    def __init__(self, weights: str | None = None, batch_size: int = 512):
        from safetensors.torch import load_file

        from embedded.emoji.classes import LABELS
        from embedded.emoji.classifier import EmojiClassifier
        from fora.loading import ASSETS

        weights = weights or os.path.join(ASSETS, "emoji-classifier.safetensors")
        if not os.path.isfile(weights):
            raise ValueError(f"emoji classifier weights {weights!r}: no such file")
        self.model = EmojiClassifier()
        self.model.load_state_dict(load_file(weights))
        self.model.eval()
        self.batch_size = batch_size
        self.key = f"emoji-classifier-{_sha256(weights)}-spatial{SPATIAL_LAYER}x{SPATIAL_CHANNELS}"
        self.labels = LABELS

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        feats, logits, spatial = [], [], []
        stem, rest = self.model.features[:SPATIAL_LAYER], self.model.features[SPATIAL_LAYER:]
        for i in range(0, len(images), self.batch_size):
            mid = stem(_to_tensor(np.ascontiguousarray(images[i : i + self.batch_size])))
            f = rest(mid).mean(dim=(2, 3))  # = self.model.embed
            feats.append(f.double().numpy())
            logits.append(self.model.head(f).numpy())
            spatial.append(mid[:, :SPATIAL_CHANNELS].flatten(1).double().numpy())
        return Features(np.concatenate(feats), np.concatenate(logits), np.concatenate(spatial))


class InceptionFeatures:
    """Inception-v3 as FID uses it (torch-fidelity's TF1-compatible network and resize, weights from a local file):
    2048 pool features and 1008 unbiased logits per image; images uint8 N x H x W x 3, any size."""

    def __init__(self, weights: str, device: str = "cpu", batch_size: int = 100):
        if not weights or not os.path.isfile(weights):
            raise ValueError(f"--inception-weights {weights!r}: no such file (it is never downloaded)")
        try:
            from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
        except ImportError as e:
            raise ValueError(
                "--extractor inception needs torch-fidelity and the torchvision that matches your torch "
                "(pip install torch-fidelity torchvision)"
            ) from e
        self.model = (
            FeatureExtractorInceptionV3(
                "inception-v3-compat", ["2048", "logits_unbiased"], feature_extractor_weights_path=weights
            )
            .eval()
            .to(device)
        )
        self.device, self.batch_size = device, batch_size
        self.key = f"inception-v3-{_sha256(weights)}"
        self.labels = None  # 1008 ImageNet-style logits, not a generator's classes

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> Features:
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[i : i + self.batch_size])).permute(0, 3, 1, 2)
            f, lg = self.model(x.to(self.device))  # the network returns one tensor per requested feature
            feats.append(f.double().cpu().numpy())
            logits.append(lg.float().cpu().numpy())
        return Features(np.concatenate(feats), np.concatenate(logits))


def frechet_distance(real: np.ndarray, fake: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (n x d each, n >= 2)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError(f"Frechet distance needs >= 2 samples per set, got {len(real)} and {len(fake)}")
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=_Precomputed(real.shape[1]), sync_on_compute=False)  # rank 0 alone
    metric.update(torch.from_numpy(np.asarray(real, dtype=np.float64)), real=True)
    metric.update(torch.from_numpy(np.asarray(fake, dtype=np.float64)), real=False)
    return float(metric.compute())


def inception_score(logits: np.ndarray, splits: int = IS_SPLITS, seed: int = 0) -> tuple[float, float]:
    """Mean and standard deviation over `splits` of exp(E KL(p(y|x) || p(y))), from class logits (n x classes)."""
    from torchmetrics.image.inception import InceptionScore

    # it warns that it keeps all features (they are in memory anyway) and, for one split, that std is undefined
    with warnings.catch_warnings(), torch.random.fork_rng():  # it shuffles samples into splits with the global RNG
        warnings.simplefilter("ignore", UserWarning)
        torch.manual_seed(seed)
        metric = InceptionScore(feature=_Precomputed(logits.shape[1]), splits=splits, sync_on_compute=False)
        metric.update(torch.from_numpy(np.asarray(logits, dtype=np.float64)))
        mean, std = metric.compute()
    return float(mean), float(std)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = PR_NEIGHBOURS) -> tuple[float, float]:
    """Improved precision and recall (k-NN manifolds); use sets of equal size, the radii depend on it."""
    if len(real) <= k or len(fake) <= k:
        raise ValueError(
            f"precision/recall with k={k} needs more than {k} samples per set, got {len(real)}, {len(fake)}"
        )
    from prdc import compute_prdc

    with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
        out = compute_prdc(np.asarray(real, np.float32), np.asarray(fake, np.float32), nearest_k=k)
    return float(out["precision"]), float(out["recall"])


def distribution_metrics(real: Features, fake: Features) -> dict:
    """FD over all reference features; sFID over the spatial ones where both sets have them; precision/recall
    against the first len(fake) reference samples (equal sets); the score from the generated samples' logits."""
    n = min(len(real.features), len(fake.features))
    precision, recall = precision_recall(real.features[:n], fake.features[:n])
    score, score_std = inception_score(fake.logits) if fake.logits is not None else (float("nan"), float("nan"))
    # images of another size give spatial maps of another size: no sFID between them (NaN)
    both = real.spatial is not None and fake.spatial is not None and real.spatial.shape[1] == fake.spatial.shape[1]
    return {
        "fid": frechet_distance(real.features, fake.features),
        "sfid": frechet_distance(real.spatial, fake.spatial) if both else float("nan"),
        "inception_score": score,
        "inception_score_std": score_std,
        "precision": precision,
        "recall": recall,
    }


def save_features(path: str, feats: Features) -> None:
    """`feats` to an .npz (atomically: a file under the final name is complete)."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path[:-4]}.tmp{os.getpid()}.npz"
    arrays = {"features": feats.features}
    arrays.update({k: v for k, v in (("logits", feats.logits), ("spatial", feats.spatial)) if v is not None})
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


def load_features(path: str) -> Features:
    with np.load(path) as z:
        return Features(
            z["features"], z["logits"] if "logits" in z else None, z["spatial"] if "spatial" in z else None
        )
