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
LARGE_TFLOPS = 300.0  # for models of 10 T multiply-adds a step and more (FLUX.1 at 1024 px: ~0.4 s a forward)
STEP_FLOOR_S = 0.015  # below this a step is bound by kernel launches and the hooks' Python, not by FLOPs
OBSERVED_STEP_S = 0.01  # an observed step's host reads (similarity, predictions), on top of its doubled cost
MARGIN = 1.5


@dataclass(frozen=True)
class GpuCost:
    """What one pipeline call of a model costs on the Space's GPU: an estimate to reserve by, not a measurement."""

    step_tmac: float  # one uncached forward pass for one image at the model's resolution, in multiply-adds
    call_s: float  # the rest of a call: text encoding, the VAE decode, the image back to the host
    native_px: int = 1024 * 1024  # the resolution step_tmac is for
    attention: float = 0.15  # the share of step_tmac in attention's token x token products (quadratic in pixels)
    guidance_batch: int = 2  # forwards per step: 2 with classifier-free guidance, 1 for guidance-distilled FLUX
    tflops: float = ASSUMED_TFLOPS  # sustained: 300 for the 10 T multiply-add models, whose matmuls run near peak

    def step_s(self, pixels: int | None = None) -> float:
        """One uncached denoising step at `pixels` (default: native), all its forwards (2 FLOPs per multiply-add);
        linear layers scale with the pixels, attention with their square."""
        r = (pixels or self.native_px) / self.native_px
        tmac = self.step_tmac * ((1 - self.attention) * r + self.attention * r * r)
        return max(STEP_FLOOR_S, self.guidance_batch * 2 * tmac / self.tflops)


# forward multiply-adds per image: from the DiT paper (Table 4: XL/2 118.6 "Gflops" at 256 px, 524.6 at 512,
# counted as multiply-adds); for the others parameters x tokens plus attention (layers x tokens^2 x width x 2), at
# their native size: PixArt-alpha/Sigma 1024 (DiT-XL/2's blocks plus cross-attention, 4096 tokens), SD3.5 Medium
# (2.5B, 4096 + 333 tokens), FLUX.1 (12B, 4096 + 512 tokens, one forward per step), Sana 1.6B (1024 tokens of its
# 32x autoencoder, linear attention), HunyuanDiT (1.5B, 4096 tokens), Lumina 2 (2.6B, 4096 + 256 tokens),
# Qwen-Image (20B, 6889 + ~100 tokens at 1328 px). Calls: text encoders (T5-XXL, Gemma-2, Qwen2.5-VL) and the VAE
# decode at the native size
GPU_COSTS = {
    "emoji-dit": GpuCost(0.0001, 0.05, 32 * 32),
    "emoji-mmdit": GpuCost(0.0002, 0.05, 32 * 32),
    "dit-xl-2-256": GpuCost(0.119, 0.2, 256 * 256, 0.05),
    "dit-xl-2-512": GpuCost(0.525, 0.5, 512 * 512, 0.15),
    "pixart-alpha-512": GpuCost(0.6, 1.0, 512 * 512, 0.1),
    "pixart-alpha-1024": GpuCost(2.7, 2.0),
    "pixart-sigma-1024": GpuCost(2.7, 2.0),
    "sd3.5-medium": GpuCost(11.0, 2.0, tflops=LARGE_TFLOPS),
    "flux.1-schnell": GpuCost(62.0, 2.0, guidance_batch=1, tflops=LARGE_TFLOPS),
    "flux.1-dev": GpuCost(62.0, 2.0, guidance_batch=1, tflops=LARGE_TFLOPS),
    "sana-1600m-1024": GpuCost(1.7, 1.5, attention=0.02),
    "hunyuan-dit-1.2": GpuCost(8.0, 2.0, attention=0.25),
    "lumina-image-2": GpuCost(13.6, 2.0, attention=0.17, tflops=LARGE_TFLOPS),
    "qwen-image": GpuCost(158.0, 2.5, 1328 * 1328, 0.11, tflops=LARGE_TFLOPS),
    # Wan: per 480x832 clip of 81 frames, 21 latent frames (its VAE keeps 1 + (F - 1) / 4 of F frames)
    "wan2.1-t2v-1.3b": GpuCost(140.0, 8.0, 480 * 832 * 21, 0.7, tflops=LARGE_TFLOPS),
}
UNKNOWN_COST = GpuCost(2.7, 2.0)  # an operator's model (FORA_EXTRA_MODELS): PixArt at 1024 px


def gpu_seconds(
    model_key: str,
    steps: int,
    observed_calls: int,
    plain_calls: int,
    pixels: int | None = None,
    least_pixels: int | None = None,
) -> int:
    """The `duration` asked of ZeroGPU for a job of pipeline calls of `steps` steps each: `observed_calls` recorded
    (maps, predictions: twice a step's cost and its host reads) and `plain_calls` timed without observers, at
    `pixels` per image (default: the model's native size; the calls' decode grows with it too). Raises
    `ValueError` past `FORA_GPU_MAX_SECONDS`, before anything runs: ZeroGPU would stop the call there.
    `least_pixels`: a video's pixels at one frame; the message suggests fewer frames only where that would fit."""
    seconds = _estimate(model_key, steps, observed_calls, plain_calls, pixels)
    if seconds > GPU_MAX_SECONDS:
        fits = [  # the video frame counts (4k + 1) that would fit with everything else as asked
            f
            for f in range(1, form.FRAMES_RANGE[1] + 1, 4)
            if least_pixels is not None
            and _estimate(model_key, steps, observed_calls, plain_calls, least_pixels * latent_frames(f))
            <= GPU_MAX_SECONDS
        ]
        fewer = (
            f"steps, seeds, intervals, policies or frames (at most {fits[-1]} frames fit as asked)"
            if fits
            else "steps, seeds, intervals or policies"
        )
        raise ValueError(
            f"this request would reserve the GPU for about {seconds} s ({observed_calls + plain_calls} pipeline "
            f"calls of {steps} steps on {model_key}); one request may reserve at most {GPU_MAX_SECONDS} s here: "
            f"fewer {fewer}"
        )
    return seconds


def _estimate(model_key: str, steps: int, observed_calls: int, plain_calls: int, pixels: int | None) -> int:
    cost = GPU_COSTS.get(model_key, UNKNOWN_COST)
    step = cost.step_s(pixels)
    call = cost.call_s * max(1.0, (pixels or cost.native_px) / cost.native_px)
    observed = observed_calls * (call + steps * (2 * step + OBSERVED_STEP_S))
    plain = plain_calls * (call + steps * step)
    return int(GPU_OVERHEAD_SECONDS + MARGIN * GPU_SECONDS_SCALE * (observed + plain)) + 1


def _pixels(request, frames: int | None = None) -> int | None:
    """A request's pixels per sample when it sets its size, explicitly or by its model card's arguments, times a
    video's latent frames (Wan's VAE keeps 1 + (F - 1) / 4 of F frames: the transformer's tokens grow with those;
    `frames` in place of the request's); None: the model's native size, as `GpuCost.native_px` counts it."""
    options = dict(request.options)
    height, width = request.height or options.get("height"), request.width or options.get("width")
    if not (height and width):
        return None
    return int(height) * int(width) * latent_frames(frames or options.get("num_frames", 1))


def _sizes(request) -> dict:
    """`gpu_seconds`' size arguments for a request: its pixels, and a video's at one frame."""
    video = "num_frames" in dict(request.options)
    return {"pixels": _pixels(request), "least_pixels": _pixels(request, frames=1) if video else None}


def latent_frames(frames: int) -> int:
    """The latent frames of a video of `frames` frames (Wan 2.1's VAE: the first frame, then one per 4)."""
    return 1 + (int(frames) - 1) // 4


def compare_seconds(job: form.GenerateJob, baseline=None) -> int:
    """The reservation of one Compare click (`gpu_seconds`: raises past the cap)."""
    calls = job.pipeline_calls(baseline_cached=baseline is not None)
    return gpu_seconds(job.model_key, job.request.steps, *calls, **_sizes(job.request))


def _sweep_seconds(job: form.SweepJob) -> int:
    return gpu_seconds(job.model_key, job.request.steps, *job.pipeline_calls(), **_sizes(job.request))


def _policies_seconds(job, plans: dict) -> int:
    # observed: the baseline, each policy's run and, with a plan to calibrate, the recording of its samples; the
    # rest (the policies' sweeps, the bisection, the candidates, the timed pairs) runs without observers
    calls = job.denoising_steps(len(job.missing_plans(plans))) // job.request.steps
    observed = 1 + len(job.policies) + (CALIBRATION_SAMPLES if job.missing_plans(plans) else 0)
    observed, plain = min(observed, calls), max(0, calls - observed)
    return gpu_seconds(job.model_key, job.request.steps, observed, plain, **_sizes(job.request))


@GPU(duration=compare_seconds)
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
