"""What every tab shows the same way: small images upscaled for the page, a video's frames as an animated image,
and a bad input as a message."""

import atexit
import contextlib
import os
import re
import shutil
import tempfile
import threading
import time
import uuid

import gradio as gr
import numpy as np

from analysis.report_files import animated_webp
from fora.generate import to_uint8

# an absolute path: a "/" at the start, after a space, quote, bracket, "=" or "," (not in a URL, a hub id "org/name",
# a unit "GB/s" or a tag "</b>"), and its parts; the last part is kept
_ABSOLUTE_PATH = re.compile(r"(?<![^\s'\"`(\[=,])/(?:[^\s'\"`:,;()\[\]{}<>/]+/)*([^\s'\"`:,;()\[\]{}<>/]+)/?")


def _uint8(media: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] as uint8; uint8 as it is (a kept video's frames: no float copy of a whole clip)."""
    media = np.asarray(media)
    return media if media.dtype == np.uint8 else to_uint8(media)


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so 32x32 pixels stay crisp; uint8 HxWx3 (from floats in [0, 1] or
    uint8)."""
    img = _uint8(image)
    factor = max(1, size // max(img.shape[:2]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


# the animated images of videos, written for Gradio to copy into its cache (which `ui.layout` clears), into a folder
# of this process's own (mode 700, removed at exit). Gradio copies a file as soon as the handler yields it, so one
# older than CLIP_LIFETIME_S has been served and is deleted: a long-running server does not fill its disk
CLIP_LIFETIME_S = 600
_clips_dir: str | None = None
_clips_lock = threading.Lock()


def _clip_folder() -> str:
    global _clips_dir
    if _clips_dir is None or not os.path.isdir(_clips_dir):
        _clips_dir = tempfile.mkdtemp(prefix="fora-clips-")
        atexit.register(shutil.rmtree, _clips_dir, ignore_errors=True)
    return _clips_dir


def show(media: np.ndarray, size: int = 256, lossless: bool = False):
    """What an image box or gallery shows of an image (H x W x 3 floats in [0, 1] or uint8: `upscale`) or of a video's
    frames (F x H x W x 3: the path of an animated WebP, each frame enlarged as `upscale` does, looping at 16 fps;
    `lossless` for a difference clip, whose values are as small as a lossy encoder's artefacts)."""
    media = np.asarray(media)
    if media.ndim == 3:
        return upscale(media, size)
    if media.ndim != 4:
        raise ValueError(f"an image is H x W x 3 and a video F x H x W x 3, got shape {media.shape}")
    frames = _uint8(media)
    data = animated_webp(frames, scale=max(1, size // max(frames.shape[1:3])), lossless=lossless)
    with _clips_lock:
        folder = _clip_folder()
        now = time.time()
        for name in os.listdir(folder):
            old = os.path.join(folder, name)
            with contextlib.suppress(FileNotFoundError):
                if now - os.path.getmtime(old) > CLIP_LIFETIME_S:
                    os.remove(old)
        path = os.path.join(folder, f"{uuid.uuid4().hex}.webp")
        with open(path, "wb") as f:
            f.write(data)
    return path


def safe_text(text) -> str:
    """A message built from user input or an exception, as the page may show it: absolute paths shortened to their
    last part (the server's folders are no business of the page's), then HTML-escaped (Gradio's toasts render HTML:
    a value "<b>0" shows as typed, not bold). Only "&" and "<" are escaped: text without them starts no tag or
    entity, and an API client reads the rest as it is."""
    text = _ABSOLUTE_PATH.sub(lambda m: m.group(1), str(text))
    return text.replace("&", "&amp;").replace("<", "&lt;")  # no tag or entity can start; "T >= 4" stays readable


def user_error(e: Exception) -> gr.Error:
    """`e` as the message the page shows (`safe_text`): a bad input or an unloadable model is no failure to log a
    trace of."""
    return gr.Error(safe_text(e), print_exception=False)


def failure(what: str, e: Exception) -> gr.Error:
    """An unexpected failure (e.g. out of memory) as the page shows it: what failed and why, never a stack trace;
    the server logs the trace."""
    return gr.Error(safe_text(f"{what} failed: {type(e).__name__}: {e}"), print_exception=True)
