"""The emoji classifier: a small CNN trained on held-out renders (a data seed the diffusion model never saw), never
on generated images. It judges whether generated samples show the class asked for, and its penultimate features
and class probabilities are the offline feature space of the distribution metrics (`analysis/metrics/distribution.py`).
"""

import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .classes import NUM_CLASSES
from .render import render_dataset

CLASSIFIER_DATA_SEED = 1001  # the diffusion model trains on data seed 1
CLASSIFIER_TEST_SEED = 2002


class EmojiClassifier(nn.Module):
    """Four conv stages with batch norm, global pooling, linear head: ~0.3M parameters, 32x32x3 in [-1, 1]."""

    def __init__(self, width: int = 48):
        super().__init__()
        chans = [3, width, width * 2, width * 2, width * 4]
        layers = []
        for i in range(4):
            layers += [nn.Conv2d(chans[i], chans[i + 1], 3, padding=1), nn.BatchNorm2d(chans[i + 1]), nn.GELU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], NUM_CLASSES)

    def embed(self, x):
        """Penultimate features (B x 192, globally pooled): the space of the distribution metrics."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x):
        return self.head(self.embed(x))


def _to_tensor(images_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(images_uint8).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def train_classifier(per_class: int = 400, epochs: int = 6, seed: int = 0, log=print) -> tuple[EmojiClassifier, float]:
    """Train on renders of data seed 1001; return the model and its accuracy on renders of seed 2002."""
    torch.manual_seed(seed)
    x, y = render_dataset(per_class, seed=CLASSIFIER_DATA_SEED)
    xt, yt = render_dataset(50, seed=CLASSIFIER_TEST_SEED)
    x, y, xt, yt = _to_tensor(x), torch.from_numpy(y), _to_tensor(xt), torch.from_numpy(yt)
    return fit(EmojiClassifier(), x, y, xt, yt, epochs, 3e-3, seed, log, "classifier", "held-out render")


def fit(model, x, y, xt, yt, epochs: int, lr: float, seed: int, log, name: str, held_out: str):
    """AdamW with a one-cycle schedule over batches of 128, label smoothing 0.05; the model (in eval mode) and its
    accuracy on (xt, yt) after the last epoch."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * (len(x) // 128)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    g = torch.Generator().manual_seed(seed)
    for epoch in range(epochs):
        model.train()
        perm = torch.randperm(len(x), generator=g)
        for i in range(len(x) // 128):
            idx = perm[i * 128 : (i + 1) * 128]
            loss = F.cross_entropy(model(x[idx]), y[idx], label_smoothing=0.05)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        acc = accuracy(model, xt, yt)
        log(f"{name} epoch {epoch + 1}/{epochs}: loss {loss.item():.3f}, {held_out} accuracy {acc:.3f}")
    return model.eval(), acc


@torch.no_grad()
def accuracy(model: EmojiClassifier, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    pred = torch.cat([model(x[i : i + 512]).argmax(1) for i in range(0, len(x), 512)])
    return float((pred == y).float().mean())


@torch.no_grad()
def classify(model: EmojiClassifier, images: np.ndarray) -> np.ndarray:
    """Class ids for B x H x W x 3 images in [0, 1]."""
    x = torch.from_numpy(np.asarray(images, dtype=np.float32)).permute(0, 3, 1, 2) * 2 - 1
    return model.eval()(x).argmax(1).numpy()


def load_or_train_classifier(path: str, log=print) -> tuple[EmojiClassifier, float | None]:
    if os.path.exists(path):
        model = EmojiClassifier()
        model.load_state_dict(load_file(path))
        return model.eval(), None
    model, acc = train_classifier(log=log)
    save_file(model.state_dict(), path)
    return model, acc
