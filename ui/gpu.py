"""The app's GPU entry points and the GPU seconds each asks for: the only functions ZeroGPU runs on its GPU.

On ZeroGPU (Hugging Face Spaces) a `@spaces.GPU` function runs in a forked worker process: it reads only its
arguments and the models the main process loaded (`registry.loaded`), and returns or yields everything a later event
needs (baseline, comparison, sweep result, calibrated plans), since whatever it writes to module state is lost with
the worker. The handlers that call these (ui/tabs/) run in the main process: they parse the form, load the models,
hold the model lock and keep the results in the bounded stores. Everywhere else `spaces` is missing and the
decorator does nothing.
"""

import os

import torch

from analysis.memory import Bandwidth, measure_bandwidth
from ui import form, registry
from ui.stream import stream_comparison, stream_policies, stream_sweep

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    GPU = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host

    def GPU(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)


# ZeroGPU reserves the GPU for `duration` seconds per call: estimated from the denoising steps a request runs
GPU_SECONDS_PER_STEP = float(os.environ.get("FORA_GPU_SECONDS_PER_STEP", "0.03"))
GPU_MAX_SECONDS = int(os.environ.get("FORA_GPU_MAX_SECONDS", "120"))
GPU_OVERHEAD_SECONDS = 10


def gpu_seconds(steps: int) -> int:
    """The `duration` asked of ZeroGPU for a request that runs `steps` denoising steps."""
    return int(min(GPU_MAX_SECONDS, GPU_OVERHEAD_SECONDS + steps * GPU_SECONDS_PER_STEP))


def _compare_seconds(job: form.GenerateJob, baseline=None) -> int:
    return gpu_seconds(job.denoising_steps(baseline_cached=baseline is not None))


@GPU(duration=_compare_seconds)
def compare_on_gpu(job: form.GenerateJob, baseline=None):
    """Baseline (unless given), FORA run and timed pairs of one Compare click, streamed (`stream.Progress`)."""
    yield from stream_comparison(
        registry.loaded(job.model_key), job.request, job.config, baseline, job.pairs, job.warmup
    )


@GPU(duration=lambda job: gpu_seconds(job.denoising_steps()))
def sweep_on_gpu(job: form.SweepJob):
    """One Sweep click, streamed: `(done, total, message)` after each run, then the `SweepResult`."""
    yield from stream_sweep(
        registry.loaded(job.model_key), job.request, job.intervals, job.seeds, job.config, job.pairs, job.warmup
    )


@GPU(duration=lambda job, plans: gpu_seconds(job.denoising_steps(len(job.missing_plans(plans)))))
def policies_on_gpu(job, plans: dict):
    """One Policies click, streamed: progress strings, then `PolicyResult`s (its plans calibrated here included)."""
    yield from stream_policies(registry.loaded(job.model_key), job, plans)


@GPU(duration=20)
def measure_read_on_gpu(nbytes: int) -> Bandwidth:
    """Read `nbytes` on the accelerator (CPU without one), next to a plain large copy: the Memory tab's measurement."""
    return measure_bandwidth(nbytes, "cuda" if torch.cuda.is_available() else "cpu")
