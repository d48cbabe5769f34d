"""Render a caption's scene (`captions.Scene`) from the Noto Color Emoji glyphs of the embedded DiT's data.

Render rules (32x32 by default; fractions are of the image side):
- one emoji: "small" 0.36-0.48 of the side, "large" 0.80-0.95, unsized 0.48-0.62 with a position and 0.45-0.90
  without. Its centre: "on the left" x 0.24-0.32, y 0.35-0.65 ("on the right", "at the top", "at the bottom" by
  symmetry), "in the middle" x, y 0.45-0.55; without a position, anywhere that keeps it inside the image.
- two emoji ("two cat", "a cat and a dog"): each 0.40-0.50, the first centred at x 0.22-0.30, the second at
  x 0.70-0.78, each at y 0.35-0.65: the first named is on the left.
- every emoji rotated by -15..15 degrees and mirrored half the time.
- a named background: its colour (`captions.COLOURS`) with each channel jittered by +-JITTER, solid; none named:
  a random solid colour (60%) or a two-colour gradient (40%), as the embedded DiT's data.
"""

import numpy as np
from PIL import Image

from embedded.emoji.classes import LABELS
from embedded.emoji.render import _background, render_glyphs

from .captions import COLOURS, JITTER, Scene, random_scene

_INDEX = {name: i for i, name in enumerate(LABELS)}
_CENTRES = {
    "on the left": ((0.24, 0.32), (0.35, 0.65)),
    "on the right": ((0.68, 0.76), (0.35, 0.65)),
    "at the top": ((0.35, 0.65), (0.24, 0.32)),
    "at the bottom": ((0.35, 0.65), (0.68, 0.76)),
    "in the middle": ((0.45, 0.55), (0.45, 0.55)),
}


def _glyph(name: str, rng: np.random.Generator, side: float, glyphs) -> Image.Image:
    glyph = glyphs[_INDEX[name]]
    g = glyph.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else glyph
    g = g.rotate(rng.uniform(-15.0, 15.0), resample=Image.Resampling.BICUBIC, expand=True)
    ratio = max(2.0, side * max(g.size) / max(glyph.size)) / max(g.size)
    return g.resize((max(1, round(g.width * ratio)), max(1, round(g.height * ratio))), Image.Resampling.LANCZOS)


def _paste(canvas: Image.Image, g: Image.Image, cx: float, cy: float) -> None:
    canvas.paste(g, (round(cx - g.width / 2), round(cy - g.height / 2)), g)


def render_scene(scene: Scene, rng: np.random.Generator, size: int = 32, glyphs=None) -> np.ndarray:
    """The scene as a size x size x 3 uint8 image; everything the caption leaves open is drawn from `rng`."""
    glyphs = glyphs or render_glyphs()
    if scene.colour is not None:
        rgb = np.clip(np.array(COLOURS[scene.colour]) + rng.integers(-JITTER, JITTER + 1, 3), 0, 255)
        canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rgb))
    elif rng.random() < 0.6:
        canvas = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(0, 256, 3)))
    else:
        canvas = _background(np.random.default_rng(rng.integers(2**32)), size)
        while canvas.getextrema()[0][0] == canvas.getextrema()[0][1]:  # _background may give a solid colour
            canvas = _background(np.random.default_rng(rng.integers(2**32)), size)
    if len(scene.emoji) == 2:
        for name, (x0, x1) in zip(scene.emoji, ((0.22, 0.30), (0.70, 0.78))):
            g = _glyph(name, rng, size * rng.uniform(0.40, 0.50), glyphs)
            _paste(canvas, g, size * rng.uniform(x0, x1), size * rng.uniform(0.35, 0.65))
        return np.asarray(canvas, dtype=np.uint8)
    low, high = {"small": (0.36, 0.48), "large": (0.80, 0.95)}.get(
        scene.size, (0.48, 0.62) if scene.position else (0.45, 0.90)
    )
    g = _glyph(scene.emoji[0], rng, size * rng.uniform(low, high), glyphs)
    if scene.position is not None:
        (x0, x1), (y0, y1) = _CENTRES[scene.position]
        cx, cy = size * rng.uniform(x0, x1), size * rng.uniform(y0, y1)
    else:  # anywhere inside (centred when it does not fit)
        cx = g.width / 2 + rng.uniform(0, max(0, size - g.width)) if g.width < size else size / 2
        cy = g.height / 2 + rng.uniform(0, max(0, size - g.height)) if g.height < size else size / 2
    _paste(canvas, g, cx, cy)
    return np.asarray(canvas, dtype=np.uint8)


def render_dataset(count: int, seed: int, size: int = 32, split: str = "train", font_path: str | None = None):
    """`count` random scenes of `split` ("train" or "held_out"): (images uint8 [count, size, size, 3], scenes)."""
    glyphs = render_glyphs(font_path)
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), dtype=np.uint8)
    scenes = []
    for i in range(count):
        scene = random_scene(rng, split)
        images[i] = render_scene(scene, rng, size, glyphs)
        scenes.append(scene)
    return images, scenes
