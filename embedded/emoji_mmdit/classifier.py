"""The object classifier of the prompt-following checks: the emoji DiT's classifier architecture
(`embedded.emoji.classifier.EmojiClassifier`) trained on object crops (`objects.object_crops`) of scene renders of
a data seed the text-to-image model never saw, never on generated images. The crops are what the checks classify,
so a small emoji, upscaled from a dozen pixels, is judged by a classifier that has seen such crops.

`python -m embedded.emoji_mmdit.classifier` trains it and writes `assets/emoji-mmdit-object-classifier.safetensors`.
"""

import argparse
import os

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from embedded.emoji.classes import LABELS
from embedded.emoji.classifier import EmojiClassifier, fit
from embedded.emoji.render import render_glyphs

from .captions import random_scene
from .objects import object_crops
from .scenes import render_scene

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "assets")
OBJECT_CLASSIFIER = os.path.join(ASSETS, "emoji-mmdit-object-classifier.safetensors")
DATA_SEED, TEST_SEED = 1001, 2002  # the text-to-image model trains on data seed 1
_INDEX = {name: i for i, name in enumerate(LABELS)}


def crops_dataset(count: int, seed: int, split: str = "train"):
    """Object crops of `count` random scenes (both splits' grammar): (crops uint8 [M, 32, 32, 3], labels [M])."""
    rng, glyphs = np.random.default_rng(seed), render_glyphs()
    crops, labels = [], []
    for _ in range(count):
        scene = random_scene(rng, split)
        for name, c in zip(scene.emoji, object_crops(render_scene(scene, rng, 32, glyphs), scene)):
            crops.append(c)
            labels.append(_INDEX[name])
    return np.stack(crops), np.array(labels)


def _tensor(crops: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 127.5 - 1


def train(scenes: int = 12000, epochs: int = 6, seed: int = 0, log=print) -> tuple[EmojiClassifier, float]:
    """Train on crops of `scenes` renders (data seed DATA_SEED); accuracy on crops of held-out captions' renders
    (TEST_SEED)."""
    torch.manual_seed(seed)
    x, y = crops_dataset(scenes, DATA_SEED)
    xt, yt = crops_dataset(2000, TEST_SEED, "held_out")
    x, y, xt, yt = _tensor(x), torch.from_numpy(y), _tensor(xt), torch.from_numpy(yt)
    return fit(EmojiClassifier(), x, y, xt, yt, epochs, 2e-3, seed, log, "object classifier", "held-out crop")


def load_object_classifier(path: str = OBJECT_CLASSIFIER) -> EmojiClassifier:
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"no object classifier at {path}: train it with `python -m embedded.emoji_mmdit.classifier`"
        )
    model = EmojiClassifier()
    model.load_state_dict(load_file(path))
    return model.eval()


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scenes", type=int, default=12000)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--out", default=OBJECT_CLASSIFIER)
    args = p.parse_args()
    model, acc = train(args.scenes, args.epochs)
    save_file(model.state_dict(), args.out)
    print(f"wrote {args.out}: held-out crop accuracy {acc:.4f}")
