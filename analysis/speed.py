"""Timing: the denoising loop and the whole pipeline call apart, with warm-up, repeats, medians, CUDA sync.

The loop is timed by the transformer itself (first call's start to last call's end, through forward hooks), so the
pipeline code needs no change; the call time adds text encoding, noise setup and VAE decode.
"""

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from fora import ForaConfig, apply_fora, remove_fora
from fora.generate import Request, generate


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class LoopTimer:
    """Forward hooks on the transformer: wall time from the first call's start to the last call's end."""

    def __init__(self, transformer):
        self.device = next(transformer.parameters()).device
        self.first = self.last = None
        self._handles = [transformer.register_forward_pre_hook(self._pre), transformer.register_forward_hook(self._post)]

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


def time_generation(pipe, request: Request, repeats: int = 3, warmup: int = 1, images_out: list | None = None) -> Timing:
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
        self._handles += [transformer.register_forward_pre_hook(self._pre),
                          transformer.register_forward_hook(self._post_model)]  # fmt: skip

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


@dataclass(frozen=True)
class SpeedRatio:
    """A speedup measured in pairs: the median of the per-pair ratios `baseline time / FORA time`, with its spread."""

    ratio: float  # median over pairs
    low: float  # smallest pair ratio
    high: float  # largest pair ratio
    pairs: int
    baseline_s: float  # median seconds of the uncached call
    fora_s: float  # median seconds of the FORA call

    def __str__(self) -> str:
        return f"{self.ratio:.2f}x, {self.low:.2f}-{self.high:.2f} over {self.pairs} pairs"

    def as_dict(self) -> dict:
        return {"speedup": self.ratio, "speedup_low": self.low, "speedup_high": self.high, "pairs": self.pairs,
                "baseline_s": self.baseline_s, "fora_s": self.fora_s}  # fmt: skip


def _timed(fn: Callable[[], object], device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def paired_speedup(pipe, call: Callable[[], object], config: ForaConfig, pairs: int = 5, warmup: int = 1) -> SpeedRatio:
    """Speedup of FORA at `config` over the pipeline without FORA, timed the same way everywhere in this project.

    `call()` runs the pipeline once (same inputs every time). No observer is attached; FORA is applied and removed
    outside the timed window. After `warmup` untimed calls of each variant, the baseline and FORA calls alternate in
    pairs (ABBA order, so a drift of the machine's speed cancels) and each pair gives one ratio; the result is their
    median and range. Wall time with CUDA synchronisation on GPU.
    """
    if pairs < 1:
        raise ValueError(f"pairs={pairs}: must be >= 1")
    device = pipe.device

    def run(cached: bool) -> float:
        if not cached:
            return _timed(call, device)
        apply_fora(pipe, config)
        try:
            return _timed(call, device)
        finally:
            remove_fora(pipe)

    for _ in range(warmup):
        run(False)
        run(True)
    base, fora = [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)
        times = {cached: run(cached) for cached in order}
        base.append(times[False])
        fora.append(times[True])
    ratios = [b / f for b, f in zip(base, fora)]
    return SpeedRatio(statistics.median(ratios), min(ratios), max(ratios), pairs, statistics.median(base),
                      statistics.median(fora))  # fmt: skip
