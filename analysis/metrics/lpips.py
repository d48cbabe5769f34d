"""LPIPS (Zhang et al. 2018, AlexNet variant) of a cached image against its uncached twin, from local weights only.

LPIPS needs two sets of weights:
- the linear layers on top of the backbone: torchmetrics ships them (`lpips_models/alex.pth`, LPIPS v0.1);
- the AlexNet backbone trained on ImageNet: torchvision's file (`alexnet-owt-7be5be79.pth`), given by a local path
  (`FORA_LPIPS_ALEXNET`, or `path=`); it is never downloaded.

torchmetrics' own LPIPS module builds the backbone through torchvision, whose CPU build does not install against
this project's torch pin, so the backbone here is AlexNet's feature stack with torchvision's exact layer layout
(`features.0` ... `features.12`), which loads torchvision's state dict by name. The rest follows LPIPS v0.1: inputs in
[-1, 1], its scaling layer, the five ReLU outputs, channel-normalised (with torchmetrics' eps), squared differences
weighted by the linear layers, averaged over space and summed; 0 means identical. Images are scored at their own
size, as torchmetrics does; under 32 px, where AlexNet's second pooling has nothing left to pool, they are upsampled
bilinearly to 32 first.
"""

import os
from functools import lru_cache
from importlib import resources

import numpy as np
import torch
from torch import nn

ENV = "FORA_LPIPS_ALEXNET"
MIN_SIDE = 32  # the smallest side AlexNet's stack takes through its fifth ReLU
TAPS = (1, 4, 7, 9, 11)  # features.N whose outputs (ReLU 1..5) LPIPS compares
CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)  # LPIPS v0.1's scaling layer
SCALE = (0.458, 0.448, 0.450)
FRAMES_PER_BATCH = 8  # frames of a clip LPIPS compares per forward


def alexnet_features() -> nn.Sequential:
    """AlexNet's convolutional stack, laid out as torchvision's `alexnet().features` (its state dict loads by key)."""
    return nn.Sequential(
        nn.Conv2d(3, 64, 11, stride=4, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
        nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2),
    )  # fmt: skip


class LPIPS(nn.Module):
    """LPIPS-Alex with the backbone from `backbone_path` (torchvision's AlexNet state dict, or just its `features.*`
    entries) and the linear layers shipped with torchmetrics."""

    def __init__(self, backbone_path: str):
        super().__init__()
        if not os.path.isfile(backbone_path):
            raise FileNotFoundError(
                f"LPIPS backbone {backbone_path!r} is not a file: give torchvision's AlexNet weights "
                "(alexnet-owt-7be5be79.pth) by a local path; nothing is downloaded"
            )
        state = torch.load(backbone_path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict):
            raise ValueError(f"{backbone_path!r} holds a {type(state).__name__}, not torchvision's AlexNet state dict")
        self.features = alexnet_features()
        wanted = self.features.state_dict()
        got = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        missing = sorted(set(wanted) - set(got))
        wrong = sorted(k for k in wanted if k in got and tuple(got[k].shape) != tuple(wanted[k].shape))
        if missing or wrong:
            raise ValueError(
                f"{backbone_path!r} is not torchvision's AlexNet state dict: "
                + (f"missing features.{missing[0]} (and {len(missing) - 1} more)" if missing else "")
                + (
                    f"{'; ' if missing else ''}features.{wrong[0]} has shape {tuple(got[wrong[0]].shape)}, "
                    f"AlexNet's is {tuple(wanted[wrong[0]].shape)}"
                    if wrong
                    else ""
                )
            )
        self.features.load_state_dict({k: got[k] for k in wanted})
        lin_file = resources.files("torchmetrics") / "functional" / "image" / "lpips_models" / "alex.pth"
        with resources.as_file(lin_file) as f:
            lin = torch.load(f, map_location="cpu", weights_only=True)
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in CHANNELS)
        for k, conv in enumerate(self.lins):
            conv.weight.data.copy_(lin[f"lin{k}.model.1.weight"])
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: TAPS[-1] + 1]):  # the last pooling feeds no tap
            x = layer(x)
            if i in TAPS:
                out.append(x / torch.sqrt(1e-8 + x.pow(2).sum(dim=1, keepdim=True)))  # LPIPS' channel norm
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Per-image distances of batches in [-1, 1], shape (B, 3, H, W)."""
        if min(a.shape[-2:]) < MIN_SIDE:
            size = [round(s * MIN_SIDE / min(a.shape[-2:])) for s in a.shape[-2:]]
            a, b = (nn.functional.interpolate(t, size=size, mode="bilinear", align_corners=False) for t in (a, b))
        fa, fb = self._taps((a - self.shift) / self.scale), self._taps((b - self.shift) / self.scale)
        return sum(lin((x - y) ** 2).mean(dim=(2, 3)) for lin, x, y in zip(self.lins, fa, fb)).flatten()


def _to_tensor(image: np.ndarray) -> torch.Tensor:
    """HxWx3 (or BxHxWx3) in [0, 1] -> (B, 3, H, W) in [-1, 1]."""
    x = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"LPIPS takes HxWx3 images, got shape {tuple(x.shape)}")
    return x.permute(0, 3, 1, 2) * 2 - 1


@lru_cache(maxsize=2)
def _model(path: str, stamp: tuple) -> LPIPS:
    return LPIPS(path)  # `stamp` (the file's size and time): a file replaced under the same path loads anew


def configured_path() -> str | None:
    """The backbone file `FORA_LPIPS_ALEXNET` names, or None when it is not set."""
    return os.environ.get(ENV) or None


def lpips(a: np.ndarray, b: np.ndarray, path: str | None = None) -> float:
    """LPIPS-Alex between two HxWx3 images in [0, 1] (the backbone from `path` or `FORA_LPIPS_ALEXNET`); between
    two clips (F x H x W x 3, Wan's frames), the mean over their frames."""
    path = path or configured_path()
    if path is None:
        raise ValueError(f"LPIPS needs AlexNet's weights by a local path: set {ENV} (nothing is downloaded)")
    if np.shape(a) != np.shape(b):
        raise ValueError(f"images differ in shape: {np.shape(a)} vs {np.shape(b)}")
    if np.ndim(a) not in (3, 4):
        raise ValueError(f"LPIPS takes one HxWx3 image (or FxHxWx3 clip) per side, got shape {np.shape(a)}")
    path = os.path.abspath(path)
    try:
        stat = os.stat(path)
    except OSError:
        stat = None
    stamp = (stat.st_size, stat.st_mtime_ns) if stat else None
    model = _model(path, stamp)
    if np.ndim(a) == 3:
        return float(model(_to_tensor(a), _to_tensor(b))[0])
    chunks = range(0, len(a), FRAMES_PER_BATCH)  # a clip's frames a few at a time: 81 at 480x832 at once is GBs
    return float(
        torch.cat(
            [model(_to_tensor(a[i : i + FRAMES_PER_BATCH]), _to_tensor(b[i : i + FRAMES_PER_BATCH])) for i in chunks]
        ).mean()
    )
