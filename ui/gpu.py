"""The app's GPU entry points and the GPU seconds each asks for: the only functions ZeroGPU runs on its GPU.

On ZeroGPU (Hugging Face Spaces) a `@spaces.GPU` function runs in a forked worker process: it reads only its
arguments and the models the main process loaded (`registry.loaded`), and returns or yields everything a later event
needs (baseline, comparison, sweep result, calibrated plans), since whatever it writes to module state is lost with
the worker. The handlers that call these (ui/tabs/) run in the main process: they parse the form, load the models,
hold the model lock and keep the results in the bounded stores. Everywhere else `spaces` is missing and the
decorator does nothing.
"""

import os
from dataclasses import dataclass

import torch

from analysis.arena.policies import CALIBRATION_SAMPLES
from analysis.memory import Bandwidth, measure_bandwidth
from ui import form, registry
from ui.stream import stream_comparison, stream_policies, stream_sweep

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    GPU = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host

    def GPU(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)


# ZeroGPU reserves the GPU for `duration` seconds per call and stops the call there: the reservation counts every
# pipeline call the job makes (text encoding, each denoising step, the VAE decode) at its model's cost
GPU_MAX_SECONDS = int(os.environ.get("FORA_GPU_MAX_SECONDS", "300"))  # ZeroGPU's longest reservation: 5 min
GPU_SECONDS_SCALE = float(os.environ.get("FORA_GPU_SECONDS_SCALE", "1.0"))
GPU_OVERHEAD_SECONDS = 10  # worker start, moving the model to the GPU
ASSUMED_TFLOPS = 100.0  # sustained float16 throughput assumed: a tenth of an H200's dense peak (989 TFLOP/s)
STEP_FLOOR_S = 0.015  # below this a step is bound by kernel launches and the hooks' Python, not by FLOPs
OBSERVED_STEP_S = 0.01  # an observed step's host reads (similarity, predictions), on top of its doubled cost
MARGIN = 1.5


@dataclass(frozen=True)
class GpuCost:
    """What one pipeline call of a model costs on the Space's GPU: an estimate to reserve by, not a measurement."""

    step_tmac: float  # one uncached forward pass for one image at the model's resolution, in multiply-adds
    call_s: float  # the rest of a call: text encoding, the VAE decode, the image back to the host

    def step_s(self) -> float:
        """One uncached denoising step, the guidance batch of two included (2 FLOPs per multiply-add)."""
        return max(STEP_FLOOR_S, 2 * 2 * self.step_tmac / ASSUMED_TFLOPS)


# forward cost from the DiT paper (Table 4: XL/2 118.6 "Gflops" at 256 px, 524.6 at 512, counted as multiply-adds);
# PixArt-alpha is DiT-XL/2's width and depth plus cross-attention (~0.6 T at 512 px), and at 1024 px has 4x the
# tokens (linear layers 4x, attention 16x: ~2.7 T). Calls: VAE decodes of 256 to 1024 px, T5-XXL's encoding
GPU_COSTS = {
    "emoji-dit": GpuCost(0.0001, 0.05),
    "emoji-mmdit": GpuCost(0.0002, 0.05),
    "dit-xl-2-256": GpuCost(0.119, 0.2),
    "dit-xl-2-512": GpuCost(0.525, 0.5),
    "pixart-alpha-512": GpuCost(0.6, 1.0),
    "pixart-alpha-1024": GpuCost(2.7, 2.0),
}
UNKNOWN_COST = GpuCost(2.7, 2.0)  # an operator's model (FORA_EXTRA_MODELS): the largest listed


def gpu_seconds(model_key: str, steps: int, observed_calls: int, plain_calls: int) -> int:
    """The `duration` asked of ZeroGPU for a job of pipeline calls of `steps` steps each: `observed_calls` recorded
    (maps, predictions: twice a step's cost and its host reads) and `plain_calls` timed without observers. Raises
    `ValueError` past `FORA_GPU_MAX_SECONDS`, before anything runs: ZeroGPU would stop the call there."""
    cost = GPU_COSTS.get(model_key, UNKNOWN_COST)
    step = cost.step_s()
    observed = observed_calls * (cost.call_s + steps * (2 * step + OBSERVED_STEP_S))
    plain = plain_calls * (cost.call_s + steps * step)
    seconds = int(GPU_OVERHEAD_SECONDS + MARGIN * GPU_SECONDS_SCALE * (observed + plain)) + 1
    if seconds > GPU_MAX_SECONDS:
        raise ValueError(
            f"this request would reserve the GPU for about {seconds} s ({observed_calls + plain_calls} pipeline "
            f"calls of {steps} steps on {model_key}); one request may reserve at most {GPU_MAX_SECONDS} s here: "
            "fewer steps, seeds, intervals or policies"
        )
    return seconds


def _compare_seconds(job: form.GenerateJob, baseline=None) -> int:
    return gpu_seconds(job.model_key, job.request.steps, *job.pipeline_calls(baseline_cached=baseline is not None))


def _sweep_seconds(job: form.SweepJob) -> int:
    return gpu_seconds(job.model_key, job.request.steps, *job.pipeline_calls())


def _policies_seconds(job, plans: dict) -> int:
    # observed: the baseline, each policy's run and, with a plan to calibrate, the recording of its samples; the
    # rest (the policies' sweeps, the bisection, the candidates, the timed pairs) runs without observers
    calls = job.denoising_steps(len(job.missing_plans(plans))) // job.request.steps
    observed = 1 + len(job.policies) + (CALIBRATION_SAMPLES if job.missing_plans(plans) else 0)
    return gpu_seconds(job.model_key, job.request.steps, min(observed, calls), max(0, calls - observed))


@GPU(duration=_compare_seconds)
def compare_on_gpu(job: form.GenerateJob, baseline=None):
    """Baseline (unless given), FORA run and timed pairs of one Compare click, streamed (`stream.Progress`)."""
    yield from stream_comparison(
        registry.loaded(job.model_key), job.request, job.config, baseline, job.pairs, job.warmup
    )


@GPU(duration=_sweep_seconds)
def sweep_on_gpu(job: form.SweepJob):
    """One Sweep click, streamed: `(done, total, message)` after each run, then the `SweepResult`."""
    yield from stream_sweep(
        registry.loaded(job.model_key), job.request, job.intervals, job.seeds, job.config, job.pairs, job.warmup
    )


@GPU(duration=_policies_seconds)
def policies_on_gpu(job, plans: dict):
    """One Policies click, streamed: progress strings, then `PolicyResult`s (its plans calibrated here included)."""
    yield from stream_policies(registry.loaded(job.model_key), job, plans)


@GPU(duration=20)
def measure_read_on_gpu(nbytes: int) -> Bandwidth:
    """Read `nbytes` on the accelerator (CPU without one), next to a plain large copy: the Memory tab's measurement."""
    return measure_bandwidth(nbytes, "cuda" if torch.cuda.is_available() else "cpu")
