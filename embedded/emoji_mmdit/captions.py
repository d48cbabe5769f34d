"""The caption grammar of the embedded text-to-image model: scenes of one or two emoji, each with its caption.

    single:  "a [size] {emoji} [position] [on a {colour} background]"
    count:   "two {emoji} [on a {colour} background]"
    pair:    "a {emoji} and a {emoji} [on a {colour} background]"
    ("an" replaces "a" before a vowel sound: "an avocado", "on an orange background", but "a unicorn")

Square brackets mark optional parts; the emoji are named as the embedded DiT names its classes ("soccer ball",
"jack-o-lantern"), with "an" before a vowel. A caption names only what it constrains: an omitted size, position or
colour is drawn at random by the renderer (`scenes.py`), so "a cat" covers every cat scene.

Held out for evaluation: one background colour and one position per emoji (`HELD_OUT_COLOUR`, `HELD_OUT_POSITION`).
No training caption pairs an emoji with its held-out colour or position, so the evaluation captions
(`held_out_captions`) are combinations the model has never read: the test is compositional in the captions. (A
training image whose caption names no colour or position draws them at random, so it may happen to look like a
held-out pair; what the model never saw is the pair named.)
"""

from dataclasses import dataclass

import numpy as np

from embedded.emoji.classes import LABELS

SIZES = ("small", "large")
POSITIONS = ("on the left", "on the right", "at the top", "at the bottom", "in the middle")
# the background colours and the RGB each is rendered as (each channel jittered by +-JITTER); far enough apart that
# corner pixels tell them apart (`nearest_colour`)
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "orange": (245, 140, 20),
    "yellow": (240, 225, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 50, 190),
    "pink": (250, 150, 200),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "gray": (128, 128, 128),
}
JITTER = 12
COLOUR_NAMES = tuple(COLOURS)

# one (emoji, colour) and one (emoji, position) pair per emoji never seen in training
HELD_OUT_COLOUR = {emoji: COLOUR_NAMES[(7 * i + 3) % len(COLOUR_NAMES)] for i, emoji in enumerate(LABELS)}
HELD_OUT_POSITION = {emoji: POSITIONS[(3 * i + 1) % len(POSITIONS)] for i, emoji in enumerate(LABELS)}


@dataclass(frozen=True)
class Scene:
    """What a caption says: the emoji (one, or two for counts and pairs) and the optional attributes."""

    emoji: tuple[str, ...]
    size: str | None = None
    position: str | None = None
    colour: str | None = None

    @property
    def kind(self) -> str:
        if len(self.emoji) == 1:
            return "single"
        return "count" if self.emoji[0] == self.emoji[1] else "pair"

    @property
    def caption(self) -> str:
        if self.kind == "count":
            text = f"two {self.emoji[0]}"
        elif self.kind == "pair":
            text = " and ".join(_article(e) for e in self.emoji)
        else:
            text = f"a {self.size} {self.emoji[0]}" if self.size else _article(self.emoji[0])
            if self.position:
                text += f" {self.position}"
        if self.colour:
            text += f" on {_article(self.colour)} background"
        return text

    def held_out(self) -> bool:
        """Whether the caption pairs an emoji with its held-out colour or position."""
        if any(self.colour is not None and HELD_OUT_COLOUR[e] == self.colour for e in self.emoji):
            return True
        return any(self.position is not None and HELD_OUT_POSITION[e] == self.position for e in self.emoji)


def _article(word: str) -> str:
    """ "an" before a vowel sound: "an avocado", "an orange", "a unicorn"."""
    return f"{'an' if word[0] in 'aeio' else 'a'} {word}"


def vocabulary() -> list[str]:
    """Every word a caption can hold, sorted."""
    words = {"a", "an", "two", "and", "on", "background"}
    for part in (*LABELS, *SIZES, *POSITIONS, *COLOUR_NAMES):
        words.update(part.split())
    return sorted(words)


def random_scene(rng: np.random.Generator, split: str = "train") -> Scene:
    """A random scene: 70% single emoji, 15% counts, 15% pairs; each optional part present half the time.
    `split="train"` redraws until the scene is not held out; `"held_out"` until it is (a single emoji with its
    held-out colour or position, or a count or pair with a held-out colour)."""
    if split not in ("train", "held_out"):
        raise ValueError(f"split={split!r}; allowed: 'train', 'held_out'")
    while True:
        r = rng.random()
        first = LABELS[int(rng.integers(len(LABELS)))]
        colour = COLOUR_NAMES[int(rng.integers(len(COLOUR_NAMES)))] if rng.random() < 0.5 else None
        if r < 0.7:
            size = SIZES[int(rng.integers(len(SIZES)))] if rng.random() < 0.5 else None
            # a large emoji fills the image: it has no position
            position = POSITIONS[int(rng.integers(len(POSITIONS)))] if size != "large" and rng.random() < 0.5 else None
            scene = Scene((first,), size, position, colour)
        elif r < 0.85:
            scene = Scene((first, first), colour=colour)
        else:
            second = LABELS[int(rng.integers(len(LABELS) - 1))]
            second = second if second != first else LABELS[-1]
            scene = Scene((first, second), colour=colour)
        if scene.held_out() == (split == "held_out"):
            return scene


def held_out_captions(count: int = 256, seed: int = 5005) -> list[Scene]:
    """`count` distinct held-out scenes (fixed by `seed`): the evaluation set."""
    rng = np.random.default_rng(seed)
    scenes: dict[str, Scene] = {}
    while len(scenes) < count:
        scene = random_scene(rng, "held_out")
        scenes.setdefault(scene.caption, scene)
    return list(scenes.values())
