"""What every tab shows the same way: small images upscaled for the page, a video's frames as an animated image,
and a bad input as a message."""

import os
import re
import tempfile
import threading
import uuid

import gradio as gr
import numpy as np

from analysis.report_files import animated_webp

# an absolute path: a "/" at the start, after a space, quote, bracket, "=" or "," (not in a URL, a hub id "org/name",
# a unit "GB/s" or a tag "</b>"), and its parts; the last part is kept
_ABSOLUTE_PATH = re.compile(r"(?<![^\s'\"`(\[=,])/(?:[^\s'\"`:,;()\[\]{}<>/]+/)*([^\s'\"`:,;()\[\]{}<>/]+)/?")


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so 32x32 pixels stay crisp; uint8 HxWx3."""
    img = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    factor = max(1, size // max(img.shape[:2]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


# the animated images of videos, written for Gradio to copy into its cache (which `ui.layout` clears): only the newest
# CLIPS_KEPT stay here, so a long-running server does not fill its disk
CLIPS_DIR = os.path.join(tempfile.gettempdir(), f"fora-clips-{os.getpid()}")
CLIPS_KEPT = 64
_clips_lock = threading.Lock()


def show(media: np.ndarray, size: int = 256):
    """What an image box or gallery shows of an image (H x W x 3 floats in [0, 1]: `upscale`) or of a video's frames
    (F x H x W x 3: the path of an animated WebP, each frame enlarged as `upscale` does, looping at Wan's 16 fps)."""
    media = np.asarray(media)
    if media.ndim == 3:
        return upscale(media, size)
    if media.ndim != 4:
        raise ValueError(f"an image is H x W x 3 and a video F x H x W x 3, got shape {media.shape}")
    frames = (np.clip(media, 0, 1) * 255).round().astype(np.uint8)
    data = animated_webp(frames, scale=max(1, size // max(frames.shape[1:3])))
    with _clips_lock:
        os.makedirs(CLIPS_DIR, exist_ok=True)
        path = os.path.join(CLIPS_DIR, f"{uuid.uuid4().hex}.webp")
        with open(path, "wb") as f:
            f.write(data)
        kept = sorted((os.path.join(CLIPS_DIR, n) for n in os.listdir(CLIPS_DIR)), key=os.path.getmtime)
        for old in kept[:-CLIPS_KEPT]:
            os.remove(old)
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
