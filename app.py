"""FORA explorer: generate with a cache interval, compare with the uncached baseline, see live heatmaps.

`python app.py` serves it on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change). This file
only builds the page (`ui/`) and launches it; models load lazily on first use, or all at start-up on ZeroGPU
(Hugging Face Spaces, which runs this file), whose GPU entry points are in `ui/gpu.py`.
"""

import os

import torch

from ui import registry
from ui.layout import build_demo

# Gradio runs handlers in worker threads. On the 2-core CPU machines this project is built on, a 2-thread torch
# run from a non-main thread took 1.25 s where a 1-thread run took 0.80 s and a main-thread 2-thread run 0.60 s
# (OpenMP teams of several threads contend), so the app uses one torch thread unless told otherwise.
TORCH_THREADS = int(os.environ.get("FORA_TORCH_THREADS", "1"))
QUEUE_SIZE = int(os.environ.get("FORA_QUEUE_SIZE", "16"))  # requests waiting beyond this are refused ("queue full")

torch.set_num_threads(TORCH_THREADS)
if registry.on_zerogpu():  # every model, loaded in the main process before a GPU worker forks from it, and before
    registry.preload()  # the page is built, so that the model list shows the ones that failed as unavailable
elif os.environ.get("FORA_PRELOAD"):
    registry.get_model(registry.DEFAULT_MODEL)
demo = build_demo()

if __name__ == "__main__":
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
