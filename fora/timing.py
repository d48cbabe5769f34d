"""The one way this project times FORA against the uncached model: `paired_speedup`.

Timed calls carry no observers. After a warm-up of both variants, baseline and FORA calls alternate in pairs, in
ABBA order so that a drift of the machine's speed cancels, and each pair gives one ratio; the result is the median of
the pair ratios with their range ("2.31x, 2.27-2.36 over 5 pairs", rounded to what the range supports:
`format_speedup`). Several configs (a sweep) are timed together by
`paired_speedups`, their pairs interleaved round by round. On a GPU each call is timed with device events
after a synchronisation; on a CPU with the wall clock. `analysis.speed` and `python -m fora generate --time-pairs`
both use it.
"""

import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .peers import apply_cache


def synchronize(device) -> None:
    """Wait for the work queued on `device` (nothing to wait for on a CPU)."""
    device = torch.device(device)
    if device.type == "cpu":
        return
    if hasattr(torch, "accelerator") and torch.accelerator.is_available():
        torch.accelerator.synchronize(device)
    elif device.type == "cuda":
        torch.cuda.synchronize(device)


# what a `--clock` option's help says of "cpu": the rule `time_call` follows, which `clock_label` names per run
CPU_CLOCK_HELP = "CPU time: the calling thread's with one torch thread, the whole process's with more"


def _times_one_thread() -> bool:
    """With one torch thread the work runs in the calling thread: `time_call` counts that thread's CPU time."""
    return torch.get_num_threads() == 1


def clock_label(clock: str) -> str:
    """What `time_call(..., clock=clock)` counts now, in words for a label: "thread CPU time" (one torch thread),
    "process CPU time" (more) or "wall time" (on a GPU, device events between synchronisations)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r}: allowed 'wall' or 'cpu'")
    if clock == "wall":
        return "wall time"
    return "thread CPU time" if _times_one_thread() else "process CPU time"


def time_call(fn: Callable[[], object], device, clock: str = "wall") -> float:
    """Seconds `fn()` takes on `device`: CUDA events between two synchronisations on a GPU, the wall clock else.

    `clock="cpu"` (CPU device only) counts CPU time instead: on a shared machine it leaves out the time other
    processes hold the cores, which wall time includes. With one torch thread the work runs in the calling thread,
    so this thread's CPU time is counted (other threads of a server, such as other requests, are left out); with
    more torch threads the whole process's CPU time is.
    """
    device = torch.device(device)
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r}: allowed 'wall' or 'cpu'")
    if clock == "cpu":
        if device.type != "cpu":
            raise ValueError(f"clock='cpu' times only CPU work, got device {device}")
        clock_fn = time.thread_time if _times_one_thread() else time.process_time
        t0 = clock_fn()
        fn()
        return clock_fn() - t0
    synchronize(device)
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def speedup_decimals(low: float, high: float, pairs: int | None = None, ratio: float | None = None) -> int:
    """Decimals a speedup with the pair range `low`-`high` supports: down to the range's first significant digit,
    at least 1 ("0x" or "2x" would say less than was measured) and at most 3; one for a single pair (or a range of
    zero), which has no spread to read a precision from. More where fewer would misstate: a range whose ends round
    alike, or a slowdown (the whole range below 1) that would round to 1."""
    spread = high - low
    if pairs == 1 or not (spread > 0 and math.isfinite(spread)):
        d = 1
    else:
        d = min(3, max(1, -math.floor(math.log10(spread) + 1e-9)))  # 1e-9: a spread of 0.1 computed as 0.0999...
    while d < 3 and (
        (spread > 0 and round(low, d) == round(high, d)) or (ratio is not None and high < 1 <= round(ratio, d))
    ):
        d += 1
    return d


def format_speedup(ratio: float, low: float, high: float, pairs: int | None = None) -> str:
    """A measured speedup as every page and CLI of this project shows it, median and range rounded alike to what the
    range supports (`speedup_decimals`): (2.137, 1.9, 2.4) -> "2.1x, 1.9-2.4"; (2.137, 2.13, 2.15) -> "2.14x,
    2.13-2.15"; (0.96, 0.94, 0.97) -> "0.96x, 0.94-0.97"; with `pairs` "... over 5 pairs" (one pair: "2.1x over 1
    pair", no range)."""
    d = speedup_decimals(low, high, pairs, ratio)
    text = f"{ratio:.{d}f}x"
    if pairs != 1:
        text += f", {low:.{d}f}-{high:.{d}f}"
    if pairs is not None:
        text += f" over {pairs} pair{'' if pairs == 1 else 's'}"
    return text


@dataclass(frozen=True)
class SpeedRatio:
    """A speedup measured in pairs: the median of the per-pair ratios `baseline time / FORA time`, with its spread."""

    ratio: float  # median over pairs
    low: float  # smallest pair ratio
    high: float  # largest pair ratio
    pairs: int
    baseline_s: float  # median seconds of the uncached call
    fora_s: float  # median seconds of the FORA call
    ratios: tuple[float, ...] = ()  # every pair's ratio, in the order timed (for noise studies; not in as_dict)

    def __str__(self) -> str:
        return format_speedup(self.ratio, self.low, self.high, self.pairs)

    def as_dict(self) -> dict:
        return {
            "speedup": self.ratio,
            "speedup_low": self.low,
            "speedup_high": self.high,
            "pairs": self.pairs,
            "baseline_s": self.baseline_s,
            "fora_s": self.fora_s,
        }


def paired_speedup(
    pipe, call: Callable[[], object], config, pairs: int = 5, warmup: int = 1, clock: str = "wall"
) -> SpeedRatio:
    """Speedup of FORA at `config` over the pipeline without FORA, timed the same way everywhere in this project.
    `config` may also be a peer's config (`fora.peers`): every method is timed alike.

    `call()` runs the pipeline once (same inputs every time). No observer is attached; FORA is applied and removed
    outside the timed window (`pipe` must not have FORA applied). After `warmup` untimed calls of each variant, the
    baseline and FORA calls alternate in ABBA pairs and each pair gives one ratio; the result is their median and
    range. Each call is timed by `time_call` on `pipe.device` with `clock` ("wall", or "cpu" for CPU time).
    """
    return paired_speedups(pipe, call, [config], pairs, warmup, clock)[0]


def paired_calls(num_configs: int, pairs: int, warmup: int = 1) -> int:
    """Pipeline calls `paired_speedups` makes for `num_configs` configs: per warm-up one baseline and each config,
    then per round a baseline and a FORA call for each config (`paired_speedup`: `num_configs` = 1)."""
    return warmup * (1 + num_configs) + 2 * num_configs * pairs


def paired_speedups(
    pipe,
    call: Callable[[], object],
    configs: list,
    pairs: int = 5,
    warmup: int = 1,
    clock: str = "wall",
    on_round: Callable[[int, int], None] | None = None,
) -> list[SpeedRatio]:
    """`paired_speedup` for several configs at once (a sweep), their pairs interleaved round by round.

    Round r times one pair of every config, always in the same order, baseline first in even rounds and FORA first
    in odd ones (B F0 B F1 B F2 | F0 B F1 B F2 B | ...): every config has its pairs in ABBA order, exactly one round
    apart. Each config's pairs are thus spread over the whole measurement: a slow spell of a shared machine shorter
    than about a round (a round less one pair) lands in at most one pair of each config, which the median of an odd
    number of pairs can leave out, instead of in all the pairs of whichever config was being timed.
    `on_round(done, total)` is called after the warm-up (done = 0, only when `warmup` > 0) and after each round;
    `paired_calls` counts the calls.
    """
    if pairs < 1:
        raise ValueError(f"pairs={pairs}: must be >= 1")
    if not configs:
        raise ValueError("configs is empty: give at least one config to time")
    device = pipe.device

    def run(config) -> float:
        if config is None:
            return time_call(call, device, clock)
        remove = apply_cache(pipe, config)
        try:
            return time_call(call, device, clock)
        finally:
            remove(pipe)

    for _ in range(warmup):
        run(None)
        for config in configs:
            run(config)
    if on_round is not None and warmup > 0:
        on_round(0, pairs)
    base = [[] for _ in configs]
    cached = [[] for _ in configs]
    for r in range(pairs):
        for i in range(len(configs)):
            if r % 2 == 0:
                base[i].append(run(None))
                cached[i].append(run(configs[i]))
            else:
                cached[i].append(run(configs[i]))
                base[i].append(run(None))
        if on_round is not None:
            on_round(r + 1, pairs)
    out = []
    for b, f in zip(base, cached):
        ratios = [x / y for x, y in zip(b, f)]
        out.append(
            SpeedRatio(
                statistics.median(ratios),
                min(ratios),
                max(ratios),
                pairs,
                statistics.median(b),
                statistics.median(f),
                tuple(ratios),
            )
        )
    return out
