"""Timing: the denoising loop and the whole pipeline call apart, with warm-up, repeats, medians, CUDA sync.

The loop is timed by the transformer itself (first call's start to last call's end, through forward hooks), so the
pipeline code needs no change; the call time adds text encoding, noise setup and VAE decode. Speedups are measured
with `paired_speedup` (defined in `fora.timing` so that `python -m fora generate` uses the same method; re-exported
here): no observers, warm-up, ABBA pairs, median of the pair ratios with their range, CUDA events on a GPU.
"""

import statistics
import time
from dataclasses import dataclass, field

from fora.generate import Request, generate
from fora.timing import SpeedRatio, paired_speedup, paired_speedups, synchronize, time_call

_sync = synchronize  # the name other analysis modules import

__all__ = [
    "LoopTimer",
    "ModuleTimer",
    "SpeedRatio",
    "Timing",
    "cached_module_fraction",
    "paired_speedup",
    "paired_speedups",
    "time_call",
    "time_generation",
]


class LoopTimer:
    """Forward hooks on the transformer: wall time from the first call's start to the last call's end."""

    def __init__(self, transformer):
        self.device = next(transformer.parameters()).device
        self.first = self.last = None
        self._handles = [
            transformer.register_forward_pre_hook(self._pre),
            transformer.register_forward_hook(self._post),
        ]

    def _pre(self, module, args):
        if self.first is None:
            _sync(self.device)
            self.first = time.perf_counter()

    def _post(self, module, args, output):
        _sync(self.device)
        self.last = time.perf_counter()

    def reset(self):
        self.first = self.last = None

    @property
    def seconds(self) -> float:
        return (self.last - self.first) if self.first is not None else float("nan")

    def remove(self):
        for h in self._handles:
            h.remove()


@dataclass
class Timing:
    call_s: list[float] = field(default_factory=list)  # whole pipeline call, one entry per repeat
    loop_s: list[float] = field(default_factory=list)  # denoising loop only

    @property
    def call(self) -> float:
        return statistics.median(self.call_s)

    @property
    def loop(self) -> float:
        return statistics.median(self.loop_s)


def time_generation(
    pipe, request: Request, repeats: int = 3, warmup: int = 1, images_out: list | None = None
) -> Timing:
    """Median timings of `generate(pipe, request)` over `repeats` runs after `warmup` untimed runs."""
    timer = LoopTimer(pipe.transformer)
    timing = Timing()
    try:
        for i in range(warmup + repeats):
            timer.reset()
            _sync(pipe.device)
            t0 = time.perf_counter()
            images = generate(pipe, request)
            _sync(pipe.device)
            if i >= warmup:
                timing.call_s.append(time.perf_counter() - t0)
                timing.loop_s.append(timer.seconds)
            if images_out is not None and i == warmup + repeats - 1:
                images_out.append(images)
    finally:
        timer.remove()
    return timing


class ModuleTimer:
    """Time spent inside the attention/MLP modules that FORA caches, against the transformer's total time."""

    def __init__(self, transformer, module_names: list[str]):
        self.device = next(transformer.parameters()).device
        self.inside = 0.0
        self.total = 0.0
        self._start: dict[int, float] = {}
        self._handles = []
        modules = dict(transformer.named_modules())
        for name in module_names:
            m = modules[name]
            self._handles += [m.register_forward_pre_hook(self._pre), m.register_forward_hook(self._post_module)]
        self._handles += [
            transformer.register_forward_pre_hook(self._pre),
            transformer.register_forward_hook(self._post_model),
        ]

    def _pre(self, module, args):
        _sync(self.device)
        self._start[id(module)] = time.perf_counter()

    def _elapsed(self, module) -> float:
        _sync(self.device)
        return time.perf_counter() - self._start.pop(id(module))

    def _post_module(self, module, args, output):
        self.inside += self._elapsed(module)

    def _post_model(self, module, args, output):
        self.total += self._elapsed(module)

    @property
    def fraction(self) -> float:
        return self.inside / self.total if self.total else float("nan")

    def remove(self):
        for h in self._handles:
            h.remove()


def cached_module_fraction(pipe, request: Request, module_names: list[str]) -> float:
    """Measured fraction of the transformer's time spent in `module_names` on an uncached run."""
    timer = ModuleTimer(pipe.transformer, module_names)
    try:
        generate(pipe, request)
    finally:
        timer.remove()
    return timer.fraction
