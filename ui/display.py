"""What every tab shows the same way: small images upscaled for the page, and a bad input as a message."""

import gradio as gr
import numpy as np


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so 32x32 pixels stay crisp; uint8 HxWx3."""
    img = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    factor = max(1, size // max(img.shape[:2]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


def user_error(e: Exception) -> gr.Error:
    """`e` as the message the page shows: a bad input or an unloadable model is no failure to log a trace of."""
    return gr.Error(str(e), print_exception=False)
