"""What the experiments' reports share: PNG data (animated WebP for videos) for HTML pages, atomic file writes,
JSON-safe numbers and the description of the machine that timed a run."""

import base64
import html
import io
import os
import platform

import numpy as np
import torch
from PIL import Image

from fora.timing import speedup_decimals

SPEEDUP_COLUMNS = ("speedup", "speedup_low", "speedup_high")


def png_base64(image: np.ndarray, scale: int = 1) -> str:
    """A uint8 H x W x 3 image as base64 PNG (for `<img src="data:image/png;base64,...">`), enlarged `scale` times
    without smoothing, so that a 32 x 32 sample stays sharp."""
    im = Image.fromarray(image)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


VIDEO_FPS = 16  # Wan 2.1's frame rate (its model card exports at 16 fps)


def animated_webp(
    frames: np.ndarray, fps: float = VIDEO_FPS, scale: int = 1, quality: int = 90, lossless: bool = False
) -> bytes:
    """A uint8 F x H x W x 3 clip as an animated WebP that loops (what a page shows of a video without a player or
    ffmpeg), each frame enlarged `scale` times without smoothing. Lossy at `quality` unless `lossless`: the metrics
    are computed on the frames themselves, never on this file."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or not len(frames):
        raise ValueError(f"a clip is uint8 F x H x W x 3 with F >= 1, got {frames.dtype} {frames.shape}")
    ims = [Image.fromarray(f) for f in frames]
    if scale > 1:
        ims = [im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST) for im in ims]
    buf = io.BytesIO()
    ims[0].save(
        buf,
        format="WEBP",
        save_all=True,
        append_images=ims[1:],
        duration=round(1000 / fps),
        loop=0,
        quality=quality,
        lossless=lossless,
    )
    return buf.getvalue()


def image_data_uri(image: np.ndarray, scale: int = 1) -> str:
    """A uint8 H x W x 3 image (PNG) or F x H x W x 3 clip (animated WebP) as a `data:` URI for `<img src>`."""
    if np.ndim(image) == 4:
        return "data:image/webp;base64," + base64.b64encode(animated_webp(image, scale=scale)).decode()
    return "data:image/png;base64," + png_base64(image, scale)


def write_atomic(path: str, write) -> None:
    """`write(f)` into a binary file under a temporary name, closed, then renamed to `path`: a reader never sees a
    half-written file, and a killed run leaves the previous one."""
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)


def write_text_atomic(path: str, text: str) -> None:
    """`text` to `path` as `write_atomic` does (UTF-8, newlines as given)."""
    write_atomic(path, lambda f: f.write(text.encode()))


def finite(v):
    """A float that JSON can hold: inf and NaN (the PSNR of identical images) become None."""
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    return v


def json_safe(v):
    """`finite` through dicts, lists and numpy scalars."""
    if isinstance(v, dict):
        return {str(k): json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_safe(x) for x in v]
    if isinstance(v, np.integer):
        return int(v)
    return finite(v)


def speedup_cell(row: dict, column: str) -> str:
    """A report table's cell of one of `SPEEDUP_COLUMNS`, to the decimals the row's pair range supports
    (`fora.timing.speedup_decimals`); the CSV and JSON keep every digit."""
    v, low, high = row.get(column), row.get("speedup_low"), row.get("speedup_high")
    if not isinstance(v, (int, float)) or low is None or high is None:
        return html_cell(v)
    return f"{v:.{speedup_decimals(low, high, row.get('pairs'), row.get('speedup'))}f}"


def html_cell(v, digits: int = 3) -> str:
    """A table cell's text: `-` for a missing value, floats to `digits` decimals, anything else escaped."""
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def machine(device: str | None, clock: str | None = None) -> dict:
    """What a timing ran on; timings are comparable only on the same machine, device, threads and clock."""
    device = device or "cpu"
    name = (
        torch.cuda.get_device_name(torch.device(device))
        if device.startswith("cuda")
        else (platform.processor() or platform.machine())
    )
    return {
        "platform": platform.platform(),
        "processor": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": device,
        "clock": clock,
    }
