"""Run bookkeeping: where one sampling loop (a *run*) ends and the next begins, and the state the hooks share in it.

A cache is only correct within one run: the step counter, the schedule and the cached outputs all start afresh with
each sampling loop. `RunTracker` finds those boundaries call by call, for FORA and for the peer caches alike;
`ForaState` is what FORA's hooks read during a run (the step, whether it recomputes, the cache slots).
"""

import logging
import sys
import weakref
from collections.abc import Callable

import torch

from .config import ForaRun, first_value
from .slots import CacheSlot

logger = logging.getLogger(__name__)
_SEVERAL_CALLS = (
    "the transformer was called more often than the run has steps ({what}): either the pipeline calls it more than "
    "once per denoising step without telling the calls apart (a cache context per call, as in "
    "transformer.cache_context('uncond'), or a scheduler with step_index that steps once per step), or it was "
    "called past the end of its run. Wrap each call of a step in its own transformer.cache_context(name), or call "
    "the transformer once per step"
)
_NO_INDEX = object()  # a scheduler without `step_index` (DDIM, DDPM)
_PIPELINE_GONE = (
    "the pipeline the cache was applied to no longer exists, and no pipeline calling the transformer was found: "
    "apply the cache to the pipeline that calls it"
)


class RunTracker:
    r"""
    Counts the transformer calls of each run and says when a call starts a new one. One step is one forward call,
    or several where the pipeline calls the transformer more than once per step (see *contexts* below).

    - With a pipeline (anything with `.scheduler`): every pipeline call sets the scheduler's timesteps anew, so a
      call that sees a timesteps tensor other than the last one starts a run of `len(timesteps)` steps. The
      scheduler read is the calling pipeline's: the nearest caller on the stack that is an object whose
      `.transformer` is this transformer (so a second pipeline built on the same transformer runs its own
      schedule), else the pipeline given here.
    - With a bare transformer (a hand-written loop) of `num_steps` steps: a run starts on the first call and after
      a complete run, and also when a new loop begins before the last one finished, which shows in the timestep:
      sampling timesteps go down (or repeat, for second-order samplers), so a timestep above the previous one means a
      new loop, and so does the first timestep again right after a run's first step, which no scheduler repeats.
      This reads the timestep on the host (free for a number or a CPU tensor, one wait per step on a GPU).
    - `start(num_steps)`: a run of exactly `num_steps` calls, whatever timesteps they pass; nothing is read.

    *Contexts.* Pipelines that run classifier-free guidance (or skip-layer guidance) as separate calls call the
    transformer several times per step. Each such call belongs to a *context*: the name of the diffusers cache
    context it runs in (`transformer.cache_context("uncond")`: Wan, Qwen-Image, FLUX's true CFG), or, where the
    pipeline names none, its position among the calls the pipeline makes with the same timestep before its
    scheduler steps (`scheduler.step_index` unchanged: Lumina 2's unconditional call, SD3's skip-layer call; a loop
    that takes the scheduler's timesteps but never steps it passes a new timestep each call, and is one context).
    The run's first context is its *primary* one: its calls count the steps. Any other context's call belongs to
    the primary context's current step, at most once per step; it may start late (SD3's skip-layer guidance runs on
    some steps only) and is then `fresh`: it has nothing of its own cached yet.

    Args:
        pipeline (*optional*): the pipeline whose scheduler delimits runs (held weakly: once it is gone, a call that
            no pipeline on the stack makes raises `ValueError`).
        transformer (*optional*): the module whose calls are counted, to find the pipeline calling it.
        joins (`bool`, defaults to `False`): the transformer is a pipeline's second expert (Wan 2.2's
            `transformer_2`), which takes over part-way through each run: its first call is the step the
            pipeline's scheduler is at (`step_index`), and the steps before it are the first expert's.
        num_steps (`int`, *optional*): a bare transformer's run length.
        check_num_steps (`Callable[[int], None]`, *optional*): called with a new run's length before it starts; its
            `ValueError` refuses the run (and the call) and leaves the tracker as it was.

    Attributes:
        run_steps (`int`): steps of the current run (0: none yet).
        step (`int`): 0-based index of the current step in its run (-1 before the first).
        steps_done (`int`): steps of the current run whose primary call has finished.
        context: the current call's context: a cache context's name, or an int (its position in its step).
        primary (`bool`): whether the current call is in the run's primary context.
        fresh (`bool`): whether the current call is its context's first in this run.
    """

    def __init__(
        self,
        pipeline=None,
        num_steps: int | None = None,
        check_num_steps: Callable[[int], None] | None = None,
        transformer: torch.nn.Module | None = None,
        joins: bool = False,
    ):
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self.joins = joins  # a second expert (Wan 2.2's transformer_2): its first call comes part-way into a run
        self.first: RunTracker | None = None  # with `joins`: the first expert's tracker
        self._transformer = weakref.ref(transformer) if transformer is not None else None
        self.num_steps = num_steps
        self._check = check_num_steps
        self.reset()

    def reset(self) -> None:
        """Forget the current run; the next call starts a new one."""
        self.run_steps, self.step, self.steps_done = 0, -1, 0
        self._timesteps_seen = None
        self._last_timestep: float | None = None  # bare transformer: the previous call's timestep
        self._explicit = False  # the current run was started by start(): the caller delimits it
        self._direction = 0.0  # bare loop: +1 or -1 once the run's timesteps have moved, 0 before
        # the scheduler's step_index at the last call, the call's position in its step, and its timestep
        self._index_seen, self._position, self._timestep_seen = _NO_INDEX, 0, None
        self._contexts: dict = {}  # context -> the last step it was called at, in the current run
        self._primary = None
        self.context, self.primary, self.fresh = None, True, True

    @property
    def ongoing(self) -> bool:
        return self.run_steps > 0 and self.steps_done < self.run_steps

    @property
    def contexts(self) -> list:
        """The contexts the current run has called, primary first."""
        return list(self._contexts)

    def finished_contexts(self) -> list:
        """Once the primary context has finished the run: the other contexts that will not be called again in it
        (last called before the step before the last: Lumina 2's truncated CFG, SD3's skip-layer call). They are
        forgotten, so that a call in one after all would start it afresh."""
        done = [k for k, last in self._contexts.items() if k != self._primary and last < self.run_steps - 2]
        for key in done:
            del self._contexts[key]
        return done

    def start(self, num_steps: int | None = None) -> int:
        """Begin a run of exactly `num_steps` calls (default: the `num_steps` given at construction)."""
        num_steps = self._begin_run(num_steps)
        self._explicit = True
        return num_steps

    def begin_call(self, timestep, context: str | None = None) -> int | None:
        """Before each transformer call: the length of the run this call starts, or `None` when it continues one.

        `context`: the name of the diffusers cache context the call runs in (`transformer.cache_context("cond")`),
        if any. Raises `RuntimeError` for a call the run has no step for: more primary calls than steps, a context
        called twice in one step."""
        new = None
        pipe = self._calling_pipeline() if self._pipeline is not None else None
        if pipe is None and self._pipeline is not None:
            # the pipeline is gone (its weak reference dead) and no other calls: there is no scheduler to read, and
            # a run it left unfinished must not go on as a count of bare calls (a peer's residuals, FORA's cache)
            raise ValueError(_PIPELINE_GONE)
        if pipe is not None:
            timesteps = pipe.scheduler.timesteps
            index = getattr(pipe.scheduler, "step_index", _NO_INDEX)
            if timesteps is not self._timesteps_seen:
                # img2img pipelines start part-way (set_begin_index): the run is the steps they take
                begin = getattr(pipe.scheduler, "begin_index", None) or 0
                new = self._begin_run(len(timesteps) - begin)
                self._timesteps_seen = timesteps
                position = 0
                if self.joins:
                    self.step = self._joining_step(pipe.scheduler, index, begin, timesteps) - 1
            elif context is None and index is not _NO_INDEX and index == self._index_seen:
                # the scheduler has not stepped since the last call: the same step, if the timestep is the same
                # too (a loop that never steps its scheduler keeps step_index at None; one that does, never at the
                # same value, so the timestep is read only then)
                same = index is not None or _same(timestep, self._timestep_seen)
                position = self._position + 1 if same else 0
            else:
                position = 0
            self._index_seen, self._position, self._timestep_seen = index, position, timestep
            key = context if context is not None else position
        else:
            key = context if context is not None else 0
        if new is None and self._primary is not None and key != self._primary:
            return self._other_context_call(key)
        if pipe is not None:
            if new is None and not self.ongoing:  # the same pipeline call goes on after its run's steps
                raise RuntimeError(
                    _SEVERAL_CALLS.format(what=f"{self.steps_done + 1} calls for {self.run_steps} steps")
                )
        else:
            ongoing = self.ongoing
            t = None if ongoing and self._explicit else first_value(timestep)
            restarted = ongoing and not self._explicit and self._is_restart(t)
            if restarted:
                logger.info("FORA: a new sampling loop began before the last run finished; starting a new run")
            if not ongoing or restarted:
                new = self._begin_run(None)
            self._last_timestep = t
        self.step += 1
        if self.step >= self.run_steps:
            raise RuntimeError(
                f"the transformer was called {self.step + 1} times in a run of {self.run_steps} steps; FORA expects "
                "one call per scheduler step (for a hand-written loop call handle.start_run(num_steps) first)"
            )
        if self._primary is None:
            self._primary = key
        self.fresh = key not in self._contexts
        self._contexts[key] = self.step
        self.context, self.primary = key, True
        return new

    def _joining_step(self, scheduler, index, begin: int, timesteps) -> int:
        """The step at which a second expert takes over: where the scheduler is (`step_index`), checked against the
        steps the first expert's tracker (`self.first`) has done in the same run."""
        if index is _NO_INDEX:
            raise RuntimeError(
                f"{type(scheduler).__name__} keeps no step_index: FORA cannot tell at which step the second "
                "transformer takes over"
            )
        step = (index or begin) - begin
        first = self.first
        done = first.steps_done if first is not None and first._timesteps_seen is timesteps else 0
        if done != step:
            raise RuntimeError(
                f"the second transformer takes over at scheduler step {step}, but the first has done {done} steps "
                "of this run: FORA cannot number its steps"
            )
        return step

    def _other_context_call(self, key) -> None:
        """A call in a context other than the run's primary one: it belongs to the primary context's current step."""
        if self._contexts.get(key) == self.step:
            raise RuntimeError(
                f"the transformer was called twice in context {key!r} at step {self.step}: FORA caches one call per "
                "context and step"
            )
        self.fresh = key not in self._contexts
        self._contexts[key] = self.step
        self.context, self.primary = key, False
        return None

    def end_call(self) -> bool:
        """After each transformer call; returns whether this call completed the run (its primary context's last
        step)."""
        if not self.primary:
            return False
        self.steps_done = self.step + 1
        return self.steps_done == self.run_steps

    def _calling_pipeline(self):
        """The pipeline calling the transformer now: the nearest frame's `self` that is a `DiffusionPipeline` with
        this `.transformer` (a few frames up: the hooks, `nn.Module.__call__`, the pipeline's `__call__`; about 10-25
        us); else the pipeline given at construction, or `None` once it is gone."""
        transformer = self._transformer() if self._transformer is not None else None
        if transformer is not None:
            from diffusers import DiffusionPipeline  # here, not at import: only pipelines pay for importing it

            frame = sys._getframe(1)
            while frame is not None:
                caller = frame.f_locals.get("self")
                if isinstance(caller, DiffusionPipeline) and transformer in (
                    getattr(caller, "transformer", None),
                    getattr(caller, "transformer_2", None),
                ):
                    return caller
                frame = frame.f_back
        return self._pipeline()

    def _begin_run(self, num_steps: int | None) -> int:
        num_steps = num_steps or self.num_steps
        if not num_steps and self._pipeline is not None and self._pipeline() is None:
            raise ValueError(_PIPELINE_GONE)
        if not num_steps:
            raise ValueError("num_steps is unknown: pass num_steps to apply_fora(transformer, ...) or start_run()")
        if self._check is not None:
            self._check(num_steps)
        self.run_steps, self.step, self.steps_done = num_steps, -1, 0
        self._explicit = False
        self._direction = 0.0
        self._contexts, self._primary = {}, None
        return num_steps

    def _is_restart(self, t: float | None) -> bool:
        """Sampling timesteps move one way in a loop (down for most schedulers, up for Lumina 2's `1 - t`) or repeat
        (second-order samplers); the run's first two calls set the direction, and a call that moves against it, or
        the first timestep again right after it, begins a new loop."""
        previous = self._last_timestep
        if t is None or previous is None:
            return False
        if self.steps_done == 1:
            self._direction = 0.0 if t == previous else (1.0 if t > previous else -1.0)
            return t == previous
        return self._direction != 0 and (t - previous) * self._direction < 0

    def __repr__(self):
        return f"RunTracker(step={self.step}, run_steps={self.run_steps}, steps_done={self.steps_done})"


def _same(timestep, other) -> bool:
    """Whether two calls passed the same timestep: the same object (pipelines pass one tensor to a step's calls,
    free to check), else equal values (read on the host)."""
    if timestep is other:
        return True
    return timestep is not None and other is not None and first_value(timestep) == first_value(other)


class ForaState:
    """Per-run state shared by all hooks of one transformer: step counter, schedule and the cached outputs."""

    def __init__(self):
        self.slots: list[CacheSlot] = []  # one per hooked module, fixed at apply time
        self.reset()

    def reset(self, num_steps: int = 0, full: list[int] | None = None):
        self.run = ForaRun(num_steps, full or []) if num_steps else None
        self.full_set = frozenset(self.run.full_steps) if self.run else frozenset()
        self.step = -1
        self.is_full_step = True
        self.timestep_input = None  # the timestep argument of this step, as passed
        self._timestep: float | None = None
        self.caching = False  # interval 1: nothing is ever reused, so nothing is kept
        self.context = None  # the context whose cache the slots hold now (`None`: the slots are empty)
        self.fresh = True  # this call is its context's first in the run: it has nothing cached, so it computes
        self.observed = True  # observers see the run's primary context only
        for slot in self.slots:
            slot.clear()

    def drop_context(self, context) -> None:
        """Free the cache of a context other than the current one."""
        for slot in self.slots:
            slot.others.pop(context, None)

    def use_context(self, context) -> None:
        """Make `context`'s cache the one the hooks read (a pipeline's conditional and unconditional calls)."""
        if self.context is not None and context != self.context:
            for slot in self.slots:
                slot.switch(self.context, context)
        self.context = context

    @property
    def timestep(self) -> float | None:
        """This step's timestep as a float. Reading a device tensor waits for the device: only observers ask."""
        if self._timestep is None and self.timestep_input is not None:
            self._timestep = first_value(self.timestep_input)
        return self._timestep

    @property
    def cache(self) -> dict[str, torch.Tensor]:
        """The cached outputs held now, by module name."""
        return {s.key: s.output for s in self.slots if s.output is not None}

    @property
    def cache_bytes(self) -> int:
        return sum(s.nbytes for s in self.slots)

    def __repr__(self):
        cache = ", ".join(f"{k}: {tuple(v.shape)} {v.dtype}" for k, v in list(self.cache.items())[:4])
        more = f", ... ({len(self.cache)} tensors)" if len(self.cache) > 4 else ""
        return f"ForaState(step={self.step}, run={self.run!r}, cache={{{cache}{more}}})"
