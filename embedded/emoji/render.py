"""Training data for the embedded model: emoji rendered from the Noto Color Emoji font, with augmentation.

The font is Debian's `fonts-noto-color-emoji` (SIL Open Font License 1.1): `apt-get install fonts-noto-color-emoji`.
Noto Color Emoji is a bitmap font: Pillow renders it only at size 109 (136x128 glyphs), so each glyph is drawn
once at that size and every sample is an affine transform of it onto a 32x32 background.
"""

import os
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .classes import EMOJI_CLASSES

FONT_SIZE = 109  # the only size at which the bitmap font renders
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf",
    "/usr/share/fonts/noto/NotoColorEmoji.ttf",
    "/System/Library/Fonts/Apple Color Emoji.ttc",
)


def find_font(path: str | None = None) -> str:
    """Path of the Noto Color Emoji font: `path`, $FORA_EMOJI_FONT, or the usual system locations."""
    for candidate in (path, os.environ.get("FORA_EMOJI_FONT"), *FONT_CANDIDATES):
        if candidate and os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(
        "Noto Color Emoji font not found (looked at $FORA_EMOJI_FONT and "
        f"{', '.join(FONT_CANDIDATES)}). Install it with `apt-get install fonts-noto-color-emoji` "
        "or point FORA_EMOJI_FONT at NotoColorEmoji.ttf."
    )


@lru_cache(maxsize=4)
def render_glyphs(font_path: str | None = None) -> tuple[Image.Image, ...]:
    """One tightly cropped RGBA image per class, in class-id order."""
    font = ImageFont.truetype(find_font(font_path), FONT_SIZE)
    glyphs = []
    for name, char in EMOJI_CLASSES:
        canvas = Image.new("RGBA", (160, 160), (0, 0, 0, 0))
        ImageDraw.Draw(canvas).text((8, 8), char, font=font, embedded_color=True)
        box = canvas.getbbox()
        if box is None:
            raise RuntimeError(f"the font at {font_path!r} has no glyph for {name} ({char!r})")
        glyphs.append(canvas.crop(box))
    return tuple(glyphs)


def _background(rng: np.random.Generator, size: int) -> Image.Image:
    """A solid colour or a vertical/horizontal two-colour gradient, light or dark."""
    c0 = rng.integers(0, 256, 3)
    if rng.random() < 0.5:
        return Image.new("RGB", (size, size), tuple(int(v) for v in c0))
    c1 = rng.integers(0, 256, 3)
    ramp = np.linspace(0.0, 1.0, size)[:, None, None]
    grad = c0[None, None] * (1 - ramp) + c1[None, None] * ramp  # (size, 1, 3)
    grad = np.broadcast_to(grad, (size, size, 3))
    if rng.random() < 0.5:
        grad = grad.transpose(1, 0, 2)
    return Image.fromarray(grad.astype(np.uint8), "RGB")


def render_sample(glyph: Image.Image, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """One augmented sample (size x size x 3 uint8): scale, rotation, flip, position and background are random."""
    scale = rng.uniform(0.55, 0.95)  # longest side of the emoji as a fraction of the image
    angle = rng.uniform(-20.0, 20.0)
    g = glyph.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else glyph
    g = g.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    side = max(2, round(size * scale * max(g.size) / max(glyph.size)))
    ratio = side / max(g.size)
    g = g.resize((max(1, round(g.width * ratio)), max(1, round(g.height * ratio))), Image.Resampling.LANCZOS)
    x = int(rng.integers(min(0, size - g.width), max(0, size - g.width) + 1))
    y = int(rng.integers(min(0, size - g.height), max(0, size - g.height) + 1))
    bg = _background(rng, size)
    bg.paste(g, (x, y), g)
    return np.asarray(bg, dtype=np.uint8)


def render_dataset(per_class: int, seed: int, size: int = 32, font_path: str | None = None):
    """`per_class` samples of every class: (images uint8 [N, size, size, 3], labels int64 [N]), class-major."""
    glyphs = render_glyphs(font_path)
    rng = np.random.default_rng(seed)
    images = np.empty((len(glyphs) * per_class, size, size, 3), dtype=np.uint8)
    labels = np.repeat(np.arange(len(glyphs), dtype=np.int64), per_class)
    for i, label in enumerate(labels):
        images[i] = render_sample(glyphs[label], rng, size)
    return images, labels
