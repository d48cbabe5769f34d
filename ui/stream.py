"""The app's three GPU jobs as streams: each runs in a worker thread and yields its events; closing the stream stops
it at the next denoising step.

The app's handlers are generators: Gradio closes them when the user leaves, the job is cancelled (`job.cancel()`
from gradio_client, the Stop button) or, on ZeroGPU, when the main process stops the worker. `stream_job` turns that
close into a cancel flag that a forward pre-hook on the transformer checks before every denoising step, then waits
for the worker to finish, so the pipeline (and the lock around it) is free again when the close returns.
`stream_comparison` (the Compare tab), `stream_sweep` and `stream_policies` are the jobs the GPU functions run.
"""

import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from analysis.arena.policies import PolicyJob, run_policies
from analysis.comparison import (
    Comparison,
    RunResult,
    baseline_config,
    compare_runs,
    default_clock,
    observe_run,
    timed_speedup,
)
from analysis.speed import SpeedRatio
from analysis.sweep import run_sweep
from fora import ForaConfig
from fora.generate import Request


class Cancelled(Exception):
    """Raised inside the pipeline call when the stream was closed: the run stops at the next denoising step."""


class CancelHook:
    """A forward pre-hook on `transformer` that raises `Cancelled` once `event` is set."""

    def __init__(self, transformer, event: threading.Event):
        self.event = event
        self._handle = transformer.register_forward_pre_hook(self._check)

    def _check(self, module, args):
        if self.event.is_set():
            raise Cancelled("stopped: the request was cancelled")

    def remove(self) -> None:
        self._handle.remove()


class Emitter:
    """What a job calls to report: `emit(event)`; `emit(event, often=True)` for per-step events, rate-limited."""

    def __init__(self, events: queue.Queue, min_interval_s: float):
        self._events, self._min, self._last = events, min_interval_s, 0.0

    def __call__(self, event, often: bool = False) -> None:
        if often:
            # rate-limited here, in the worker: waking the consumer every step costs GIL hand-offs (2x slower runs)
            now = time.perf_counter()
            if now - self._last < self._min:
                return
            self._last = now
        self._events.put(("event", event))


def stream_job(
    transformer, job: Callable[[Emitter], None], min_interval_s: float = 0.5, heartbeat_s: float | None = None
) -> Iterator:
    """Yield what `job(emit)` emits while it runs in a worker thread; its exceptions are raised here.

    Closing the returned generator (or an exception in the consumer) cancels the job at its next denoising step
    and returns only once the worker has stopped. With `heartbeat_s`, `None` is yielded whenever nothing was
    emitted for that long: a generator can only be closed while it waits at a `yield`, so this keeps a long silent
    stretch (the timed pairs) cancellable.
    """
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    emit = Emitter(events, min_interval_s)

    def work():
        hook = CancelHook(transformer, cancel)
        try:
            job(emit)
            events.put(("end", None))
        except BaseException as e:  # handed to the consumer, who raises it
            events.put(("error", e))
        finally:
            hook.remove()

    thread = threading.Thread(target=work, daemon=True, name="fora-job")
    thread.start()
    try:
        while True:
            try:
                kind, value = events.get(timeout=heartbeat_s)
            except queue.Empty:
                yield None
                continue
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value
    finally:
        cancel.set()
        thread.join()


@dataclass
class MapsSnapshot:
    """The layer x step maps of a running recorder, copied: small enough to stream to the page every half second."""

    neighbour: dict
    timesteps: np.ndarray
    num_steps: int

    @classmethod
    def of(cls, recorder) -> "MapsSnapshot":
        return cls({k: v.copy() for k, v in recorder.neighbour.items()}, recorder.timesteps.copy(), recorder.num_steps)


@dataclass
class Progress:
    """One event of a streamed comparison. `phase`: "baseline" or "fora" while they run (`maps` set), "baseline
    done" (`baseline` set), "compared" (`comparison` set: images and maps final), "timed" (`speed` set)."""

    phase: str
    step: int = 0  # steps done in this phase
    num_steps: int = 0
    maps: MapsSnapshot | None = None
    baseline: RunResult | None = None
    comparison: Comparison | None = None
    speed: SpeedRatio | None = None
    clock: str = ""  # what timed the pairs: "cpu" (CPU time, `fora.timing.clock_label`) or "wall"


def stream_comparison(
    pipe,
    request: Request,
    config: ForaConfig,
    baseline: RunResult | None = None,
    pairs: int = 3,
    warmup: int = 1,
    min_interval_s: float = 0.5,
):
    """Yield `Progress` while the baseline (unless given) and the FORA run execute, then time them in pairs
    (`pairs=0`: not timed; the "timed" event comes with `speed=None`).

    Runs in a worker thread (`stream_job`): closing the generator stops the work at the next denoising step;
    `None` comes as a heartbeat when nothing else did for `min_interval_s`.
    Everything yielded is on the CPU and picklable, so this can run in a forked ZeroGPU worker; the caller keeps
    what later requests need (the baseline, the comparison) in its own process.
    """
    config.check_num_steps(request.steps)

    def job(emit):
        def observe(phase):
            def report(step, num_steps, rec):
                emit(Progress(phase, step + 1, num_steps, MapsSnapshot.of(rec)), often=True)

            return report

        base = baseline
        if base is None:
            base = observe_run(pipe, request, baseline_config(config), on_step=observe("baseline")).to_cpu()
            emit(Progress("baseline done", request.steps, request.steps, baseline=base))
        fora = observe_run(pipe, request, config, on_step=observe("fora")).to_cpu()
        emit(
            Progress(
                "compared",
                request.steps,
                request.steps,
                baseline=base,
                comparison=compare_runs(base, fora, with_lpips=True),
            )
        )
        clock = default_clock(pipe)
        speed = timed_speedup(pipe, request, config, pairs=pairs, warmup=warmup, clock=clock) if pairs else None
        emit(Progress("timed", speed=speed, clock=clock))

    yield from stream_job(pipe.transformer, job, min_interval_s, heartbeat_s=max(min_interval_s, 0.1))


def stream_sweep(
    pipe,
    request: Request,
    intervals,
    seeds,
    config: ForaConfig,
    pairs: int = 3,
    warmup: int = 1,
    clock: str | None = None,
):
    """`run_sweep` in a worker thread: yields `(done, total, message)` after each run, then the `SweepResult`;
    `None` every half second in between. Closing the generator stops the sweep at the next denoising step.
    """

    def job(emit):  # noqa: E306
        emit(
            run_sweep(
                pipe,
                request,
                intervals,
                seeds,
                config,
                pairs,
                warmup,
                progress=lambda d, t, msg: emit((d, t, msg)),
                clock=clock,
            )
        )

    yield from stream_job(pipe.transformer, job, min_interval_s=0.0, heartbeat_s=0.5)


def stream_policies(pipe, job: PolicyJob, plans: dict):
    """`run_policies` in a worker thread: yields progress strings and `PolicyResult`s (None as a heartbeat);
    closing the stream stops the run at the next step."""
    yield from stream_job(pipe.transformer, lambda emit: run_policies(pipe, job, plans, emit), 0.2, heartbeat_s=0.2)
