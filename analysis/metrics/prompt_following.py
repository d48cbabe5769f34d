"""Does an image show what its caption says? Checks of the embedded text-to-image model's scenes that do not use the
model: the object (a classifier trained on object crops of renders, `embedded.emoji_mmdit.classifier`), the
background colour (the corners against the named colours), the position and the size (the object mask's centroid
and area) and the count (the mask's blobs). The mask, crops and colours are `embedded.emoji_mmdit.objects`'.

Every threshold here is validated on renders of the held-out captions, where the truth is known
(`tests/test_emoji_mmdit.py`): `check_ceiling` is what the checks score on renders, the most a model can score.
"""

from dataclasses import dataclass

import numpy as np
import torch
from skimage.measure import label as connected_components

from embedded.emoji.classes import LABELS
from embedded.emoji_mmdit.captions import Scene
from embedded.emoji_mmdit.objects import MIN_BLOB, as_uint8, corner_colour, object_crops, object_mask

# fractions of the side: a centroid left of LEFT is "on the left", ...; the middle is within MIDDLE of the centre
LEFT, RIGHT, MIDDLE = 0.42, 0.58, 0.12
SMALL_AREA, LARGE_AREA = 0.22, 0.30  # mask area fractions: "small" below, "large" above
CHECKS = ("object", "colour", "position", "size", "count")


@dataclass(frozen=True)
class SceneCheck:
    """Which of the caption's claims an image meets (`None`: the caption makes no such claim)."""

    object: bool
    colour: bool | None
    position: bool | None
    size: bool | None
    count: bool | None


@torch.no_grad()
def _classify(classifier, crops: list[np.ndarray]) -> list[str]:
    x = torch.from_numpy(np.stack(crops).astype(np.float32) / 127.5 - 1).permute(0, 3, 1, 2)
    return [LABELS[i] for i in classifier.eval()(x).argmax(1).tolist()]


def position_of(mask: np.ndarray) -> str | None:
    """Where the mask's centroid is, in the grammar's words (`None` for an empty mask)."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    cx, cy = (xs.mean() + 0.5) / mask.shape[1], (ys.mean() + 0.5) / mask.shape[0]
    if abs(cx - 0.5) < MIDDLE and abs(cy - 0.5) < MIDDLE:
        return "in the middle"
    if abs(cx - 0.5) >= abs(cy - 0.5):
        return "on the left" if cx < LEFT else "on the right" if cx > RIGHT else "in the middle"
    return "at the top" if cy < LEFT else "at the bottom" if cy > RIGHT else "in the middle"


def check_scene(image, scene: Scene, classifier) -> SceneCheck:
    """The checks of one image (H x W x 3, uint8 or floats in [0, 1]) against its caption's scene."""
    image = as_uint8(image)
    mask = object_mask(image)
    colour = None if scene.colour is None else corner_colour(image) == scene.colour
    obj = _classify(classifier, object_crops(image, scene)) == list(scene.emoji)
    position = size = count = None
    if scene.position is not None:
        position = position_of(mask) == scene.position
    if scene.size is not None:
        area = mask.mean()
        size = bool(area < SMALL_AREA if scene.size == "small" else area > LARGE_AREA)
    if scene.kind == "count":
        blobs = np.bincount(connected_components(mask, connectivity=2).ravel())[1:]
        count = int((blobs >= 4 * MIN_BLOB).sum()) == 2
    return SceneCheck(obj, colour, position, size, count)


def accuracies(checks: list[SceneCheck]) -> dict[str, dict]:
    """Per check: the share right among the images whose caption makes that claim, and how many do."""
    out = {}
    for name in CHECKS:
        values = [getattr(c, name) for c in checks if getattr(c, name) is not None]
        out[name] = {"right": float(np.mean(values)) if values else None, "count": len(values)}
    return out
