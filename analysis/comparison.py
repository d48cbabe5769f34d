"""One observed generation, and a FORA run compared with its uncached baseline: what the app and the sweep run.

Images, the `ForaRun` record of the hooks, the similarity maps and the per-step predictions come from the observed
run. Speed never does: observers cost time, so the speedup is measured apart by `timed_speedup`, which calls
`speed.paired_speedup` with the very call the observed run makes (`timed_call`), so both give the same images.
"""

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch

from analysis.metrics.quality import PredictionRecorder, compare_images, diff_image, prediction_error
from analysis.metrics.similarity import SimilarityRecorder
from analysis.speed import LoopTimer, SpeedRatio, _sync, paired_speedup, paired_speedups
from fora import ForaConfig, ForaRun, apply_fora, get_fora_handle, remove_fora
from fora.apply import find_blocks, observed_kinds
from fora.generate import Request, generate


@dataclass
class RunResult:
    request: Request
    config: ForaConfig
    images: np.ndarray  # B x H x W x 3 in [0, 1]
    call_s: float  # whole pipeline call, less the time spent recording similarity (not a benchmark: observed)
    loop_s: float  # denoising loop, less the time spent recording similarity (not a benchmark: observed)
    record_s: float  # time the similarity observer took (left out of the two above)
    run: ForaRun
    similarity: SimilarityRecorder | None
    predictions: list = field(default_factory=list, repr=False)  # the transformer's output at each call
    prediction_steps: list = field(default_factory=list, repr=False)  # the step of each call

    def to_cpu(self) -> "RunResult":
        """Every tensor moved to the CPU, so that the result can cross a process boundary (ZeroGPU) and be kept."""
        self.predictions = [p.cpu() for p in self.predictions]
        if self.similarity is not None:
            for name, value in vars(self.similarity).items():
                if isinstance(value, torch.Tensor):
                    setattr(self.similarity, name, value.cpu())
                elif isinstance(value, dict) and any(isinstance(v, torch.Tensor) for v in value.values()):
                    setattr(
                        self.similarity,
                        name,
                        {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in value.items()},
                    )
        return self


def num_blocks(pipe) -> int:
    """The blocks FORA numbers on `pipe` (`fora.apply.find_blocks`: FLUX's double- then single-stream blocks)."""
    return len(find_blocks(pipe.transformer))


def timed_call(pipe, request: Request):
    """The call that both the observed run and the timed pairs make: `generate(pipe, request)`."""
    return lambda: generate(pipe, request)


def default_clock(pipe) -> str:
    """ "cpu" (CPU time; `fora.timing.clock_label` says whose) for a pipeline on the CPU, where wall time also counts
    whatever else the shared cores run (two identical sweeps differed by up to 38% per row in wall time on this
    project's machine); "wall" (device events) on a GPU."""
    return "cpu" if pipe.device.type == "cpu" else "wall"


def timed_speedup(
    pipe, request: Request, config: ForaConfig, pairs: int = 3, warmup: int = 1, clock: str | None = None
) -> SpeedRatio:
    """Speedup of FORA at `config` for `request`, measured by `paired_speedup` (no observers, warm-up, ABBA pairs),
    with `clock` (default: `default_clock(pipe)`)."""
    return paired_speedup(
        pipe, timed_call(pipe, request), config, pairs=pairs, warmup=warmup, clock=clock or default_clock(pipe)
    )


def timed_speedups(
    pipe,
    request: Request,
    configs: list[ForaConfig],
    pairs: int = 3,
    warmup: int = 1,
    clock: str | None = None,
    on_round=None,
) -> list[SpeedRatio]:
    """`timed_speedup` for several configs, their pairs interleaved round by round (`fora.timing.paired_speedups`)."""
    return paired_speedups(
        pipe,
        timed_call(pipe, request),
        configs,
        pairs=pairs,
        warmup=warmup,
        clock=clock or default_clock(pipe),
        on_round=on_round,
    )


def recorded_kinds(pipe) -> tuple[str, ...]:
    """The module kinds `observe_run` records on `pipe`: every kind its blocks have (`fora.apply.observed_kinds`:
    cross-attention in PixArt, the context stream's attention and MLP in SD3's joint blocks, ...)."""
    return observed_kinds(pipe.transformer)


def observe_run(
    pipe, request: Request, config: ForaConfig, similarity: bool = True, blocks: list[int] | None = None, on_step=None
) -> RunResult:
    """Generate once with FORA at `config` (interval 1 is the uncached baseline), observing everything.

    `on_step(step, num_steps, recorder)` is called after each denoising step, for live progress.
    """
    if get_fora_handle(pipe) is not None:
        raise ValueError("this pipeline already has FORA applied; observe_run applies and removes its own")
    recorder = SimilarityRecorder(num_blocks(pipe), kinds=recorded_kinds(pipe), blocks=blocks) if similarity else None
    handle = apply_fora(pipe, config)
    timer = LoopTimer(pipe.transformer)
    predictions = PredictionRecorder(pipe.transformer, step_of=lambda: handle.state.step)
    step_hook = None
    if on_step is not None:

        def after_step(module, args, output):  # noqa: E306
            on_step(handle.state.step, handle.state.run.num_steps, recorder)

        step_hook = pipe.transformer.register_forward_hook(after_step)
    if recorder is not None:
        handle.add_observer(recorder)
    try:
        _sync(pipe.device)
        t0 = time.perf_counter()
        images = timed_call(pipe, request)()
        _sync(pipe.device)
        call_s = time.perf_counter() - t0
    finally:
        timer.remove()
        predictions.remove()
        if step_hook is not None:
            step_hook.remove()
        run = handle.last_run
        remove_fora(pipe)
    record_s = recorder.seconds if recorder is not None else 0.0
    return RunResult(
        request,
        config,
        np.asarray(images),
        call_s - record_s,
        timer.seconds - record_s,
        record_s,
        run,
        recorder,
        predictions.outputs,
        predictions.steps,
    )


@dataclass
class Comparison:
    baseline: RunResult
    fora: RunResult
    metrics: dict  # schedule, quality and cache size; no speed (see `speed`)
    speed: SpeedRatio | None = None  # set once the timed pairs are measured

    @property
    def step_error(self) -> np.ndarray:
        """The relative error of the transformer's prediction at each denoising step. Where a step makes several
        calls (Wan's and Qwen-Image's guidance halves, Lumina 2's, SD3's skip-layer call), they are taken together:
        one error per step, over all of its calls' outputs."""
        fora, base = (per_step(r.predictions, r.prediction_steps) for r in (self.fora, self.baseline))
        return prediction_error(fora, base)

    def diff_image(self) -> np.ndarray:
        return diff_image(self.fora.images[0], self.baseline.images[0])


def per_step(predictions: list[torch.Tensor], steps: list[int]) -> list[torch.Tensor]:
    """A run's transformer outputs, one tensor per denoising step: where a step made several calls (`steps`: the
    step of each call), their outputs flattened and joined in call order."""
    if len(steps) != len(predictions):
        raise ValueError(f"{len(predictions)} outputs but {len(steps)} step indices")
    if len(set(steps)) == len(steps):
        return list(predictions)
    grouped: dict[int, list[torch.Tensor]] = {}
    for step, p in zip(steps, predictions):
        grouped.setdefault(step, []).append(p.flatten())
    return [torch.cat(grouped[s]) for s in sorted(grouped)]


def compare_runs(baseline: RunResult, fora: RunResult, with_lpips: bool = False) -> Comparison:
    """Quality of a FORA run against the uncached run of the same request (speed: `timed_speedup`); LPIPS too with
    `with_lpips` (where local AlexNet weights are set: `compare_images`)."""
    if baseline.request != fora.request:
        raise ValueError(f"the runs answer different requests: {baseline.request} vs {fora.request}")
    if baseline.config.interval != 1:
        raise ValueError(f"the baseline must be uncached (interval=1), got interval={baseline.config.interval}")
    quality = compare_images(fora.images[0], baseline.images[0], with_lpips)
    steps = fora.run.num_steps
    metrics = {
        "interval": fora.config.interval,
        "steps": steps,
        "full_steps": len(fora.run.full_steps),
        "reuse_steps": len(fora.run.reuse_steps),
        # all attention/MLP module calls over those computed: T / full steps where every module caches, less with
        # `blocks` or a switch off. It weighs every module call alike, so it bounds the speedup only as far as the
        # modules cost alike (caching only attention where attention dominates can beat it)
        "ideal_speedup": (fora.run.computed_calls + fora.run.reused_calls) / fora.run.computed_calls,
        "policy": describe_config(fora.config),
        "computed_calls": fora.run.computed_calls,
        "module_calls": fora.run.computed_calls + fora.run.reused_calls,
        "cache_bytes": fora.run.cache_bytes,
        **quality,
    }
    return Comparison(baseline, fora, metrics)


def describe_config(config: ForaConfig) -> str:
    """ "FORA N=3", or a plan's name and cost: "calibrated-o1 (132 calls)"."""
    if config.plan is None:
        return f"FORA N={config.interval}"
    return f"{config.plan.name} ({config.plan.computed_calls} calls)"


def baseline_config(config: ForaConfig) -> ForaConfig:
    """The uncached twin of `config` (interval 1, same everything else)."""
    return replace(config, interval=1, cache_start=0, cache_end=None, plan=None)


@torch.no_grad()
def compare(pipe, request: Request, config: ForaConfig, baseline: RunResult | None = None, **kw) -> Comparison:
    """Run the uncached baseline (unless given) and FORA with the same request, and compare them."""
    if baseline is None:
        baseline = observe_run(pipe, request, baseline_config(config), **kw)
    return compare_runs(baseline, observe_run(pipe, request, config, **kw))
