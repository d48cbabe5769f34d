"""Where the objects of a rendered or generated emoji scene are: the background fitted to the image's border (a
plane per channel: solid and two-colour gradient backgrounds are both planes; refitted without the border pixels the
first fit calls object), the object mask (pixels far from it, in blobs), the corner colour, and object crops, squared
and resized for a classifier. Used by the object classifier's training (`classifier.py`) and by the prompt-following
checks (`analysis/metrics/prompt_following.py`), so both see the same crops.
"""

import numpy as np
from skimage.measure import label as connected_components

from .captions import COLOURS, Scene

MASK_DISTANCE = 60  # L1 over RGB (0..255) from the fitted background: object
MIN_BLOB = 6  # pixels: smaller blobs are noise, not an object
CROP_FILL = 0.75  # an object crop is resized so that its longer side fills this much of the classifier's input


def as_uint8(image) -> np.ndarray:
    a = np.asarray(image)
    return a if a.dtype == np.uint8 else (np.clip(a, 0, 1) * 255).round().astype(np.uint8)


def background(image: np.ndarray) -> np.ndarray:
    """The background fitted to the border: H x W x 3 floats, a plane per channel."""
    img = image.astype(np.float64)
    h, w, _ = img.shape
    yy, xx = np.mgrid[:h, :w]
    ring = np.zeros((h, w), bool)
    ring[[0, -1], :] = ring[:, [0, -1]] = True
    design = np.stack([np.ones(h * w), xx.ravel() / w, yy.ravel() / h], 1)
    use = ring.ravel()
    for _ in range(2):
        coef, *_ = np.linalg.lstsq(design[use], img.reshape(-1, 3)[use], rcond=None)
        fit = design @ coef
        off = np.abs(img.reshape(-1, 3) - fit).sum(1) > MASK_DISTANCE
        if use.sum() - (use & off).sum() < 8:  # the object covers the border: keep the first fit
            break
        use = ring.ravel() & ~off
    return fit.reshape(h, w, 3)


def object_mask(image: np.ndarray) -> np.ndarray:
    """Pixels far from the fitted background, in blobs of at least MIN_BLOB pixels."""
    image = as_uint8(image)
    mask = np.abs(image.astype(np.float64) - background(image)).sum(-1) > MASK_DISTANCE
    blobs = connected_components(mask, connectivity=2)
    sizes = np.bincount(blobs.ravel())
    keep = np.nonzero(sizes >= MIN_BLOB)[0]
    return np.isin(blobs, keep[keep > 0])


def nearest_colour(rgb) -> str:
    names = list(COLOURS)
    d = [np.abs(np.asarray(rgb, float) - COLOURS[n]).sum() for n in names]
    return names[int(np.argmin(d))]


def corner_colour(image: np.ndarray) -> str:
    """The named colour nearest to the mean of the four 2x2 corners."""
    image = as_uint8(image).astype(np.float64)
    corners = np.concatenate([image[:2, :2], image[:2, -2:], image[-2:, :2], image[-2:, -2:]]).reshape(-1, 3)
    return nearest_colour(corners.mean(0))


def crop(image: np.ndarray, mask: np.ndarray, size: int) -> np.ndarray:
    """The object's bounding box, squared and padded with the background, resized for the classifier."""
    from PIL import Image

    ys, xs = np.nonzero(mask)
    if not len(ys):
        return np.asarray(Image.fromarray(image).resize((size, size), Image.Resampling.BILINEAR))
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / CROP_FILL
    pad = int(np.ceil(side))
    fill = background(image)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge").astype(np.float64)
    padded[pad : pad + image.shape[0], pad : pad + image.shape[1]] = image
    # outside the image: the background's colour at the nearest border (edge padding of the fit)
    fill = np.pad(fill, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
    inside = np.zeros(padded.shape[:2], bool)
    inside[pad : pad + image.shape[0], pad : pad + image.shape[1]] = True
    padded[~inside] = fill[~inside]
    y0, x0 = int(round(cy + pad - side / 2)), int(round(cx + pad - side / 2))
    s = int(round(side))
    box = padded[y0 : y0 + s, x0 : x0 + s].clip(0, 255).astype(np.uint8)
    return np.asarray(Image.fromarray(box).resize((size, size), Image.Resampling.BILINEAR))


def object_crops(image, scene: Scene, size: int = 32) -> list[np.ndarray]:
    """One crop per emoji the caption names, in its order: the mask's bounding box for one emoji, the left and the
    right half's for two (the first named is on the left). A half without object gives the whole half."""
    image = as_uint8(image)
    mask = object_mask(image)
    if len(scene.emoji) == 1:
        return [crop(image, mask, size)]
    w = image.shape[1]
    crops = []
    for lo, hi in ((0, w // 2), (w // 2, w)):
        half = np.zeros_like(mask)
        half[:, lo:hi] = mask[:, lo:hi]
        if not half.any():
            half[:, lo:hi] = True
        crops.append(crop(image, half, size))
    return crops
