"""Quality of a FORA image against the uncached baseline with the same seed: PSNR, SSIM, LPIPS, mean absolute
difference, a difference image, and the per-step error of the transformer's prediction (how error accumulates).

A video (Wan's frames, F x H x W x 3) is compared as a clip: PSNR and the mean difference over all its pixels, SSIM
and LPIPS as the mean of the frames' values, the difference image frame by frame; and its worst frame (the lowest
PSNR), which a mean over the clip would hide (a cache's drift can grow along the frames)."""

import pickle

import numpy as np
import torch
from skimage.metrics import structural_similarity

from analysis.metrics.lpips import ENV as LPIPS_ENV
from analysis.metrics.lpips import configured_path as lpips_path
from analysis.metrics.lpips import lpips


def _check_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # a clip at least in float32 (81 frames at 480x832 are 0.8 GB a side in float64); numpy's pairwise sums keep its
    # means exact to float32's precision
    dtype = np.result_type(np.asarray(a).dtype, np.asarray(b).dtype, np.float32) if np.ndim(a) == 4 else np.float64
    a, b = np.asarray(a, dtype=dtype), np.asarray(b, dtype=dtype)  # never down: a float64 clip stays float64
    if a.shape != b.shape:
        raise ValueError(f"images differ in shape: {a.shape} vs {b.shape}")
    return a, b


def psnr(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, data_range]; inf for identical images."""
    a, b = _check_pair(a, b)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(data_range**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> float:
    """Structural similarity (scikit-image) of HxWx3 images, the window shrunk for tiny images; of two clips
    (F x H x W x 3), the mean over their frames (not a 3-D SSIM that would slide its window across frames)."""
    a, b = _check_pair(a, b)
    if a.ndim == 4:
        return float(np.mean(ssim_frames(a, b, data_range)))
    side = min(a.shape[0], a.shape[1])
    win = min(7, side if side % 2 else side - 1)
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1, win_size=win))


def ssim_frames(a: np.ndarray, b: np.ndarray, data_range: float = 1.0) -> list[float]:
    """SSIM of each frame of two clips (F x H x W x 3)."""
    a, b = _check_pair(a, b)
    if a.ndim != 4:
        raise ValueError(f"a clip is F x H x W x 3, got shape {a.shape}")
    return [ssim(x, y, data_range) for x, y in zip(a, b)]


def worst_frame(a: np.ndarray, b: np.ndarray, ssims: list[float] | None = None) -> dict:
    """The frame of two clips with the lowest PSNR: its number (1-based, as the page's frame slider counts), PSNR and
    SSIM, and the lowest SSIM of any frame with its number."""
    a, b = _check_pair(a, b)
    ssims = ssim_frames(a, b) if ssims is None else ssims
    psnrs = [psnr(x, y) for x, y in zip(a, b)]
    k, j = int(np.argmin(psnrs)), int(np.argmin(ssims))
    return {
        "frame": k + 1,
        "frames": len(psnrs),
        "psnr": psnrs[k],
        "ssim": ssims[k],
        "min_ssim": ssims[j],
        "min_ssim_frame": j + 1,
    }


def mean_abs_diff(a: np.ndarray, b: np.ndarray) -> float:
    a, b = _check_pair(a, b)
    return float(np.mean(np.abs(a - b)))


def diff_image(a: np.ndarray, b: np.ndarray, gain: float = 4.0) -> np.ndarray:
    """|a - b| averaged over channels, amplified by `gain` and shown in a heat colour map: HxWx3 in [0, 1]."""
    a, b = _check_pair(a, b)
    d = np.clip(np.abs(a - b).mean(axis=-1) * gain, 0, 1)
    return np.stack([np.clip(3 * d, 0, 1), np.clip(3 * d - 1, 0, 1), np.clip(3 * d - 2, 0, 1)], axis=-1)


def compare_images(fora_image: np.ndarray, baseline_image: np.ndarray, with_lpips: bool = False) -> dict:
    """PSNR, SSIM and mean |difference|; with `with_lpips`, LPIPS too where AlexNet's weights are given locally
    (`FORA_LPIPS_ALEXNET`, `analysis/metrics/lpips.py`): `lpips` is None otherwise, and `lpips_note` says why (not
    set, or what is wrong with the file), so a bad setting never loses the comparison."""
    clip = np.ndim(fora_image) == 4
    ssims = ssim_frames(fora_image, baseline_image) if clip else None
    out = {
        "psnr": psnr(fora_image, baseline_image),
        "ssim": float(np.mean(ssims)) if clip else ssim(fora_image, baseline_image),
        "mad": mean_abs_diff(fora_image, baseline_image),
        "lpips": None,
    }
    if clip:
        out["worst_frame"] = worst_frame(fora_image, baseline_image, ssims)
    if not with_lpips:
        return out
    if not lpips_path():
        return {**out, "lpips_note": f"{LPIPS_ENV} not set"}
    try:
        return {**out, "lpips": lpips(fora_image, baseline_image)}
    except (OSError, EOFError, ValueError, RuntimeError, pickle.UnpicklingError) as e:  # missing, foreign, corrupt
        return {**out, "lpips_note": f"{LPIPS_ENV}: {type(e).__name__}: {str(e).splitlines()[0][:200]}"}


class PredictionRecorder:
    """Forward hook keeping the transformer's output of every call (on CPU, float32) for error curves; with
    `step_of`, also the denoising step each call belongs to (`steps`: a step may make several calls)."""

    def __init__(self, transformer, step_of=None):
        self.outputs: list[torch.Tensor] = []
        self.steps: list[int] = []
        self._step_of = step_of
        self._handle = transformer.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        sample = output[0] if isinstance(output, tuple) else output.sample
        self.outputs.append(sample.detach().to("cpu", torch.float32))
        self.steps.append(self._step_of() if self._step_of is not None else len(self.steps))

    def remove(self):
        self._handle.remove()


def prediction_error(cached: list[torch.Tensor], baseline: list[torch.Tensor]) -> np.ndarray:
    """Relative L2 error ||p_fora - p_base|| / ||p_base|| of the model prediction at each step."""
    if len(cached) != len(baseline):
        raise ValueError(f"runs differ in length: {len(cached)} vs {len(baseline)} steps")
    return np.array([float((c - b).norm() / b.norm().clamp_min(1e-12)) for c, b in zip(cached, baseline)])
