"""FORA: Fast-Forward Caching for diffusion transformers (arXiv 2407.01425), as diffusers model hooks.

Every N steps each transformer block computes its attention and MLP and caches their outputs; on the N-1 steps
in between the block reuses them. Only `attn1` (self-attention), `attn2` (cross-attention, PixArt) and `ff` are
skipped: timestep/class embeddings, adaLN modulation and gates, norms, residuals, patch embedding and the final
layer run every step. What is cached is the module output *before* the adaLN gate, so a reuse step multiplies
fresh gates with stale outputs, exactly as the official code does.

One `_ForaRunHook` on the transformer counts the steps of a run and decides `is_full_step`; one `_ForaModuleHook`
per cached module computes-and-stores or returns the cache, and hands computed outputs to observers; one
`_ForaBlockHook` per DiT/PixArt block runs a reuse step without the norms and adaLN rows that only cached modules
read (`fora.reuse`). The step bookkeeping runs outside `torch.compile` (`torch.compiler.disable`); what compiled
blocks trace is one boolean and the cached tensors, so a compiled block has one graph per kind of step.
"""

import logging
import re
import weakref
from dataclasses import dataclass, field

import torch
from diffusers.hooks import HookRegistry, ModelHook

from .lean_reuse import ALL_CHUNKS, block_step_forward, needed_chunks, supports_lean_reuse
from .observers import Observation, RunEvent
from .plan import CachePlan, extrapolation_weights
from .schedule import full_steps

logger = logging.getLogger(__name__)

_FORA_HOOK = "fora"
_FORA_BLOCK_HOOK = "fora_block"
_FORA_MODULE_HOOK = "fora_module"
_BLOCK_REGEX = r"(?:transformer_blocks|blocks)\.(\d+)"
_MODULE_KINDS = {"attn1": "attn", "attn2": "cross_attn", "ff": "mlp"}


@dataclass
class ForaConfig:
    r"""
    Configuration of the FORA static cache.

    Args:
        interval (`int`, defaults to 3):
            N, the cache interval: attention and MLP are recomputed every N steps and reused for the N-1 steps in
            between. 1 disables reuse (the model runs uncached, hooks still observe); allowed 1..T-1 for T steps.
        cache_attn (`bool`, defaults to `True`):
            Cache the self-attention (`attn1`) output.
        cache_cross_attn (`bool`, defaults to `True`):
            Cache the cross-attention (`attn2`) output of text-conditional models (PixArt-alpha). Its output is
            not gated, so a stale value enters the residual stream as is; turn off to recompute it every step.
        cache_mlp (`bool`, defaults to `True`):
            Cache the MLP (`ff`) output.
        cache_start (`int`, defaults to 0):
            First step (0-based, sampling order) at which reuse is allowed; earlier steps always recompute.
            Early steps set the image layout, so a later start trades speed for fidelity.
        cache_end (`int`, *optional*):
            Steps from this one on always recompute (`None`: caching allowed to the end). Late steps refine detail.
        blocks (`tuple[int, ...]`, *optional*):
            Indices of the blocks that cache; the others compute every step. `None` means all blocks.
        block_regex (`str`, defaults to `r"(?:transformer_blocks|blocks)\.(\d+)"`):
            `re.fullmatch` pattern over `named_modules()` that finds the transformer blocks; group 1 is the index.
        lean_reuse (`bool`, defaults to `True`):
            On reuse steps of DiT/PixArt blocks, skip the norms, modulation and adaLN rows that only cached modules
            read (same output; `fora.lean_reuse`). `False` runs each block's original forward with the cached module
            outputs, as the official code does: slower reuse steps, and a compiled block then traces one graph per
            block (the hooked modules are guarded by identity).
        plan (`CachePlan` or path, *optional*):
            A policy beyond the fixed interval: the steps at which each block computes each module, and how reuse
            steps extrapolate (`fora.plan`). When given, `interval` is not used, and the plan alone says what is
            cached (`cache_*`, `cache_start/end` and `blocks` must keep their defaults). A plan equal to FORA's
            schedule gives FORA's outputs bit for bit.
    """

    interval: int = 3
    cache_attn: bool = True
    cache_cross_attn: bool = True
    cache_mlp: bool = True
    cache_start: int = 0
    cache_end: int | None = None
    blocks: tuple[int, ...] | None = None
    block_regex: str = _BLOCK_REGEX
    lean_reuse: bool = True
    plan: CachePlan | None = None

    def __post_init__(self):
        if self.plan is not None and not isinstance(self.plan, CachePlan):
            if not isinstance(self.plan, (str, bytes)) and not hasattr(self.plan, "__fspath__"):
                raise ValueError(f"plan={self.plan!r}: must be a CachePlan or the path of a plan JSON file")
            self.plan = CachePlan.load(self.plan)
        if self.plan is not None:
            fixed = {
                "cache_attn": True,
                "cache_cross_attn": True,
                "cache_mlp": True,
                "cache_start": 0,
                "cache_end": None,
                "blocks": None,
            }
            changed = [k for k, v in fixed.items() if getattr(self, k) != v]
            if changed:
                raise ValueError(f"plan and {', '.join(changed)} cannot be combined: the plan says what is cached")
        if isinstance(self.interval, bool) or not isinstance(self.interval, int) or self.interval < 1:
            raise ValueError(f"interval={self.interval!r}: must be an integer >= 1 (and at most T-1 for T steps)")
        if not isinstance(self.cache_start, int) or self.cache_start < 0:
            raise ValueError(f"cache_start={self.cache_start!r}: must be an integer >= 0")
        if self.cache_end is not None and (not isinstance(self.cache_end, int) or self.cache_end <= self.cache_start):
            raise ValueError(
                f"cache_end={self.cache_end!r}: must be None or an integer > cache_start={self.cache_start}"
            )
        if self.blocks is not None:
            self.blocks = tuple(self.blocks)
            if not self.blocks or any(not isinstance(b, int) or b < 0 for b in self.blocks):
                raise ValueError(f"blocks={self.blocks!r}: must be None or a non-empty list of block indices >= 0")
        try:
            re.compile(self.block_regex)
        except re.error as e:
            raise ValueError(f"block_regex={self.block_regex!r} is not a valid regular expression: {e}") from None

    @property
    def caches(self) -> bool:
        """Whether any module output is ever reused (False for interval 1)."""
        if self.plan is None:
            return self.interval > 1
        return self.plan.computed_calls < self.plan.num_steps * len(self.plan.kinds) * self.plan.num_blocks

    @property
    def window(self) -> tuple[int, int | None]:
        return (self.cache_start, self.cache_end)

    def check_num_steps(self, num_steps: int) -> None:
        """Raise `ValueError` unless this config fits a run of `num_steps` steps."""
        if num_steps < 1:
            raise ValueError(f"num_steps={num_steps}: must be >= 1")
        if self.plan is not None:
            self.plan.check_num_steps(num_steps)
            return
        if self.interval > 1 and self.interval > num_steps - 1:
            raise ValueError(
                f"interval={self.interval} out of range for {num_steps} steps: allowed 1..{num_steps - 1}"
            )


@dataclass
class ForaRun:
    """What happened in one run (one sampling loop of T transformer calls): counts and timesteps, no features."""

    num_steps: int
    full_steps: list[int]  # 0-based step indices, sampling order, at which attention/MLP were computed
    steps_done: int = 0
    computed_calls: int = 0  # cached-module calls that ran the module
    reused_calls: int = 0  # cached-module calls answered from the cache
    cache_bytes: int = 0  # peak bytes held by the cache during the run
    # the timestep of each step as passed (a number or a tensor): read to floats only on request, so that the hot
    # path never waits for the device
    raw_timesteps: list = field(default_factory=list, repr=False)

    @property
    def complete(self) -> bool:
        return self.steps_done == self.num_steps

    @property
    def reuse_steps(self) -> list[int]:
        full = set(self.full_steps)
        return [s for s in range(self.num_steps) if s not in full]

    @property
    def timesteps(self) -> list[float]:
        """The scheduler timestep of each step so far (`float`, or `None` where none was passed)."""
        return [_first_value(t) for t in self.raw_timesteps]

    def summary(self) -> str:
        return (
            f"{self.num_steps} steps, {len(self.full_steps)} full / {len(self.reuse_steps)} reuse; "
            f"module calls computed {self.computed_calls}, reused {self.reused_calls}; "
            f"cache {self.cache_bytes / 2**20:.2f} MiB"
        )


class _CacheSlot:
    """The stored output of one cached module. One object per module, read as an attribute, so that compiled
    blocks see a tensor input of the same kind in every block rather than a per-block dictionary key.

    With a plan of order k > 0 it also keeps the divided differences of the last k + 1 computed outputs
    (`fora.plan`), and a reuse step reads `value(step)`, the Newton extrapolation, instead of `output`."""

    def __init__(self, key: str, block: int, kind: str, enabled: bool):
        self.key, self.block, self.kind, self.enabled = key, block, kind, enabled
        self.output: torch.Tensor | None = None
        self.order = 0
        self.diffs: list[torch.Tensor] = []  # d_0 = output, d_1, d_2: divided differences ending at the last step
        self.diff_steps: list[int] = []  # the computed steps they span, oldest first

    def clear(self) -> None:
        self.output, self.diffs, self.diff_steps = None, [], []

    def store(self, step: int, output: torch.Tensor) -> None:
        self.output = output
        if not self.order:
            return
        # differences in float32 at least: half precision would lose the small changes they are made of
        new = [output if output.dtype == torch.float64 else output.float()]
        for j in range(min(self.order, len(self.diffs))):
            new.append((new[j] - self.diffs[j]) / (step - self.diff_steps[-1 - j]))
        self.diffs = new
        self.diff_steps = (self.diff_steps + [step])[-(self.order + 1) :]

    def value(self, step: int) -> torch.Tensor:
        if not self.order or len(self.diffs) < 2:
            return self.output
        out = self.diffs[0]
        for w, d in zip(extrapolation_weights(step, self.diff_steps)[1:], self.diffs[1:]):
            out = out + w * d
        return out.to(self.output.dtype)

    @property
    def nbytes(self) -> int:
        held = self.diffs[1:] + ([self.output] if self.output is not None else [])
        if self.diffs and self.diffs[0] is not self.output:
            held.append(self.diffs[0])  # a float32 copy of a half-precision output
        return sum(_nbytes(t) for t in held)


class ForaState:
    """Per-run state shared by all hooks of one transformer: step counter, schedule and the cached outputs."""

    def __init__(self):
        self.slots: list[_CacheSlot] = []  # one per hooked module, fixed at apply time
        self.reset()

    def reset(self, num_steps: int = 0, full: list[int] | None = None):
        self.run = ForaRun(num_steps, full or []) if num_steps else None
        self.full_set = frozenset(self.run.full_steps) if self.run else frozenset()
        self.step = -1
        self.is_full_step = True
        self.timestep_input = None  # the timestep argument of this step, as passed
        self._timestep: float | None = None
        self.caching = False  # interval 1: nothing is ever reused, so nothing is kept
        for slot in self.slots:
            slot.clear()

    @property
    def timestep(self) -> float | None:
        """This step's timestep as a float. Reading a device tensor waits for the device: only observers ask."""
        if self._timestep is None and self.timestep_input is not None:
            self._timestep = _first_value(self.timestep_input)
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


class ForaHandle:
    r"""
    Returned by `apply_fora`: the config, the record of the most recent run and the observers.

    Attributes:
        config (`ForaConfig`): the active configuration.
        last_run (`ForaRun` or `None`): the most recent (or current) run.
        observers (`list`): callables receiving every computed `Observation`; objects may also define
            `on_run_start(RunEvent)` and `on_run_end(RunEvent)`.
    """

    def __init__(self, transformer, config: ForaConfig, pipeline=None, num_steps: int | None = None):
        self.transformer = transformer
        self.config = config
        self.state = ForaState()
        self.observers: list = []
        self.num_steps = num_steps
        self.modules: list[tuple[str, int, str]] = []  # (module name, block index, kind)
        self._pipeline = weakref.ref(pipeline) if pipeline is not None else None
        self._timesteps_seen = None
        self._last_timestep: float | None = None  # bare transformer: the previous call's timestep
        self._explicit_run = False  # the current run was started by start_run(): the caller delimits it
        self._num_cached = 0
        self._plan_reused: list[int] = []  # with a plan: the number of module calls reused at each step

    @property
    def last_run(self) -> ForaRun | None:
        return self.state.run

    def add_observer(self, observer) -> None:
        self.observers.append(observer)

    def remove_observer(self, observer) -> None:
        self.observers.remove(observer)

    def start_run(self, num_steps: int | None = None) -> ForaRun:
        """Begin a new run of `num_steps` transformer calls (default: the `num_steps` given to `apply_fora`).

        Pipelines need not call this: a new run starts whenever the scheduler's timesteps are set anew. In a
        hand-written loop a run started here lasts exactly `num_steps` calls, whatever timesteps they pass.
        """
        run = self._start_run(num_steps)
        self._explicit_run = True
        return run

    def reset(self) -> None:
        """Forget the current run and its cache; the next call starts a new run."""
        self.state.reset()
        self._timesteps_seen = None
        self._last_timestep = None
        self._explicit_run = False

    def _start_run(self, num_steps: int | None) -> ForaRun:
        num_steps = num_steps or self.num_steps
        if not num_steps:
            raise ValueError("num_steps is unknown: pass num_steps to apply_fora(transformer, ...) or start_run()")
        self.config.check_num_steps(num_steps)
        plan = self.config.plan
        if plan is None:
            full = full_steps(num_steps, self.config.interval, self.config.window)
        else:  # the run's full steps: those at which every module computes
            full = [s for s in range(num_steps) if all(plan.computes(k, b, s) for _, b, k in self.modules)]
        self.state.reset(num_steps, full)
        self.state.caching = self.config.caches
        self._explicit_run = False
        for obs in self.observers:
            if hasattr(obs, "on_run_start"):
                obs.on_run_start(RunEvent(num_steps, tuple(self.state.run.full_steps)))
        return self.state.run

    def _is_restart(self, t: float | None) -> bool:
        """Bare transformer: has a new sampling loop begun although the current run is not complete?

        Sampling timesteps go down (or repeat, for second-order samplers), so a timestep above the previous one means
        a new loop; so does the first timestep again right after a run's first step, which no scheduler repeats.
        """
        previous = self._last_timestep
        if t is None or previous is None:
            return False
        return t > previous or (t == previous and self.state.run.steps_done == 1)

    @torch.compiler.disable
    def _begin_step(self, timestep) -> None:
        state = self.state
        pipe = self._pipeline() if self._pipeline is not None else None
        if pipe is not None:
            timesteps = pipe.scheduler.timesteps
            if timesteps is not self._timesteps_seen or state.run is None or state.run.complete:
                self._timesteps_seen = timesteps
                self._start_run(len(timesteps))
        else:
            # runs delimited automatically read the timestep on the host: free for a number or a CPU tensor, one wait
            # per step for a device tensor; a run started with start_run() lasts its num_steps calls without it
            run = state.run
            ongoing = run is not None and not run.complete
            t = None if ongoing and self._explicit_run else _first_value(timestep)
            restarted = ongoing and not self._explicit_run and self._is_restart(t)
            if restarted:
                logger.info("FORA: a new sampling loop began before the last run finished; starting a new run")
            if not ongoing or restarted:
                self._start_run(None)
            self._last_timestep = t
        run = state.run
        state.step += 1
        if state.step >= run.num_steps:
            raise RuntimeError(
                f"the transformer was called {state.step + 1} times in a run of {run.num_steps} steps; FORA expects "
                "one call per scheduler step (for a hand-written loop call handle.start_run(num_steps) first)"
            )
        state.is_full_step = state.step in state.full_set
        state.timestep_input = timestep  # kept as passed (a tensor shares its storage like any view); read lazily
        state._timestep = None
        run.raw_timesteps.append(state.timestep_input)

    @torch.compiler.disable
    def _end_step(self) -> None:
        state = self.state
        run = state.run
        run.steps_done = state.step + 1
        # counted here, not in the module hooks, so that compiled blocks do no bookkeeping: each hooked module
        # runs once per step, and on a reuse step the cached ones are answered from the cache
        total, cached = len(state.slots), self._num_cached
        if self.config.plan is not None:
            reused = self._plan_reused[state.step]
            run.computed_calls += total - reused
            run.reused_calls += reused
            run.cache_bytes = max(run.cache_bytes, state.cache_bytes)
        elif state.is_full_step:
            run.computed_calls += total
            if state.caching:
                run.cache_bytes = max(run.cache_bytes, state.cache_bytes)
        else:
            run.computed_calls += total - cached
            run.reused_calls += cached
        if run.complete:
            for slot in state.slots:  # the run is over: free the cache (and extrapolation terms), keep the record
                slot.clear()
            for obs in self.observers:
                if hasattr(obs, "on_run_end"):
                    obs.on_run_end(RunEvent(run.num_steps, tuple(run.full_steps)))

    def __repr__(self):
        return f"ForaHandle(config={self.config!r}, modules={len(self.modules)}, state={self.state!r})"


def _first_value(timestep) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0]) if timestep.numel() else None
    return float(timestep)


class _ForaRunHook(ModelHook):
    """On the transformer: one forward call is one sampling step. Stateful: `reset_stateful_hooks()` resets it."""

    _is_stateful = True

    def __init__(self, handle: ForaHandle):
        super().__init__()
        self.handle = handle

    def pre_forward(self, module, *args, **kwargs):
        timestep = kwargs.get("timestep", args[1] if len(args) > 1 else None)
        self.handle._begin_step(timestep)
        return args, kwargs

    def post_forward(self, module, output):
        self.handle._end_step()
        return output

    def reset_state(self, module):
        self.handle.reset()
        return module


class _ForaModuleHook(ModelHook):
    """On one attention or MLP module of a block that `fora.lean_reuse` does not cover: compute and cache on full steps,
    return the cache on reuse steps (the block's own forward still computes the module's input)."""

    def __init__(self, handle: ForaHandle, slot: _CacheSlot, reuse_steps: frozenset[int] | None = None):
        super().__init__()
        self.handle, self.state, self.slot = handle, handle.state, slot
        self.reuse_steps = reuse_steps  # with a plan: the steps at which this module reuses

    def new_forward(self, module, *args, **kwargs):
        state, slot = self.state, self.slot
        if self.reuse_steps is not None:
            if state.step in self.reuse_steps:
                return slot.value(state.step)
        elif slot.enabled and not state.is_full_step:
            return slot.output
        output = self.fn_ref.original_forward(*args, **kwargs)
        if slot.enabled and state.caching:
            slot.store(state.step, output)
        if self.handle.observers:
            self._notify(output)
        return output

    @torch.compiler.disable
    def _notify(self, output: torch.Tensor) -> None:
        state, slot = self.state, self.slot
        for obs in self.handle.observers:
            obs(Observation(slot.block, slot.kind, state.step, state.run.num_steps, state.timestep, output))


class _ForaBlockHook(ModelHook):
    """On a DiT/PixArt block: runs every step through `block_step_forward`, which on a reuse step skips the cached
    modules together with the norms and adaLN rows that only they read, and returns what the modules computed.
    Replaces the module hooks inside the block, so a compiled block traces no per-block hook objects."""

    def __init__(self, handle: ForaHandle, slots: dict[str, _CacheSlot], plan_steps: list[tuple] | None = None):
        super().__init__()
        self.handle, self.state, self.slots = handle, handle.state, slots
        self.cached_kinds = tuple(kind for kind, slot in slots.items() if slot.enabled)
        self.reuse_chunks = needed_chunks("attn" in self.cached_kinds, "mlp" in self.cached_kinds)
        # with a plan: for each step, the kinds this block reuses and the adaLN chunks it then reads
        self.plan_steps = plan_steps

    def new_forward(self, block, *args, **kwargs):
        state = self.state
        if not state.caching and not self.handle.observers:  # interval 1, unobserved: nothing to keep or show
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.plan_steps is not None:
            kinds, chunks = self.plan_steps[state.step]
            cached = {kind: self.slots[kind].value(state.step) for kind in kinds}
        else:
            reuse = self.cached_kinds and not state.is_full_step
            cached = {kind: self.slots[kind].output for kind in self.cached_kinds} if reuse else {}
            chunks = self.reuse_chunks if reuse else ALL_CHUNKS
        output, computed = block_step_forward(block, cached, chunks, *args, **kwargs)
        if state.caching:
            for kind in self.cached_kinds:
                if kind in computed:
                    self.slots[kind].store(state.step, computed[kind])
        if self.handle.observers:
            self._notify(computed)
        return output

    @torch.compiler.disable
    def _notify(self, computed: dict[str, torch.Tensor]) -> None:
        state = self.state
        for kind, output in computed.items():
            slot = self.slots[kind]
            for obs in self.handle.observers:
                obs(Observation(slot.block, kind, state.step, state.run.num_steps, state.timestep, output))


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def apply_fora(model, config: ForaConfig | None = None, num_steps: int | None = None) -> ForaHandle:
    r"""
    Apply the FORA cache to a diffusers pipeline (anything with `.transformer`) or to a bare transformer.

    With a pipeline, each call is a run whose length is read from the scheduler; no reset is needed between calls.
    With a bare transformer (a hand-written sampling loop), pass `num_steps`: every `num_steps` consecutive
    forward calls form a run, or call `handle.start_run(T)` before each loop. Applying twice raises `ValueError`;
    call `remove_fora` first.

    Example:

    >>> from fora import ForaConfig, apply_fora, remove_fora
    >>> handle = apply_fora(pipe, ForaConfig(interval=3))
    >>> image = pipe(class_labels=[207], num_inference_steps=50).images[0]
    >>> handle.last_run.full_steps[:4]
    [0, 1, 4, 7]
    >>> remove_fora(pipe)
    """
    config = config or ForaConfig()
    pipeline = model if hasattr(model, "transformer") and isinstance(model.transformer, torch.nn.Module) else None
    transformer = pipeline.transformer if pipeline is not None else model
    if not isinstance(transformer, torch.nn.Module):
        raise TypeError(
            f"apply_fora needs a diffusers pipeline with .transformer or a torch module, got {type(model)}"
        )
    if getattr(transformer, "_fora_handle", None) is not None:
        raise ValueError("FORA is already applied to this model; call remove_fora() before applying it again")
    if getattr(transformer, "_peer_handle", None) is not None:
        raise ValueError("a peer cache is already applied to this model; call fora.peers.remove_peer() first")
    if pipeline is None and num_steps is not None:
        config.check_num_steps(num_steps)

    handle = ForaHandle(transformer, config, pipeline=pipeline, num_steps=num_steps)
    block_re = re.compile(config.block_regex)
    enabled = {"attn": config.cache_attn, "cross_attn": config.cache_cross_attn, "mlp": config.cache_mlp}
    targets, blocks = [], []
    for name, block in transformer.named_modules():
        match = block_re.fullmatch(name)
        if match is None:
            continue
        index = int(match.group(1))
        if getattr(block, "_chunk_size", None) is not None:
            raise ValueError(f"block {name} uses feed-forward chunking, which FORA cannot cache; disable it first")
        blocks.append((name, block))
        for child, kind in _MODULE_KINDS.items():
            module = getattr(block, child, None)
            if isinstance(module, torch.nn.Module):
                use = enabled[kind] and (config.blocks is None or index in config.blocks)
                if config.plan is not None:
                    use = kind in config.plan.steps
                targets.append((_CacheSlot(f"{name}.{child}", index, kind, use), module))
    if not targets:
        raise ValueError(
            f"no transformer blocks matched block_regex={config.block_regex!r} in {type(transformer).__name__}"
        )
    if config.blocks is not None:
        found = {slot.block for slot, _ in targets}
        missing = sorted(set(config.blocks) - found)
        if missing:
            raise ValueError(f"blocks={list(config.blocks)}: no block {missing}; allowed 0..{max(found)}")

    plan = config.plan
    if plan is not None:
        indices = sorted({slot.block for slot, _ in targets})
        if indices != list(range(len(indices))):
            raise ValueError(f"a plan needs blocks numbered 0..B-1; {type(transformer).__name__} has {indices}")
        plan.check_model(len(indices), {slot.kind for slot, _ in targets})
        for slot, _ in targets:
            slot.order = plan.order if slot.enabled else 0
        handle._plan_reused = [
            sum(not plan.computes(slot.kind, slot.block, s) for slot, _ in targets) for s in range(plan.num_steps)
        ]

    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(_ForaRunHook(handle), _FORA_HOOK)
    by_block = {}
    for slot, module in targets:
        by_block.setdefault(slot.key.rsplit(".", 1)[0], []).append((slot, module))
        handle.state.slots.append(slot)
        handle.modules.append((slot.key, slot.block, slot.kind))
    handle._num_cached = sum(slot.enabled for slot in handle.state.slots)
    for name, block in blocks:
        hooked = by_block.get(name, [])
        if config.lean_reuse and supports_lean_reuse(block):
            slots = {slot.kind: slot for slot, _ in hooked}
            hook = _ForaBlockHook(handle, slots, _plan_steps(plan, slots) if plan is not None else None)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, _FORA_BLOCK_HOOK)
            continue
        for slot, module in hooked:  # any other block: hooks on the modules themselves
            reuse = None
            if plan is not None:
                reuse = frozenset(s for s in range(plan.num_steps) if not plan.computes(slot.kind, slot.block, s))
            hook = _ForaModuleHook(handle, slot, reuse)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, _FORA_MODULE_HOOK)
    _invalidate_registry_caches(transformer)
    transformer._fora_handle = handle
    return handle


def _plan_steps(plan: CachePlan, slots: dict[str, _CacheSlot]) -> list[tuple]:
    """For each step of `plan`: the kinds this block reuses and the adaLN chunks its step reads."""
    out = []
    for step in range(plan.num_steps):
        kinds = tuple(k for k, slot in slots.items() if slot.enabled and not plan.computes(k, slot.block, step))
        out.append((kinds, needed_chunks("attn" in kinds, "mlp" in kinds) if kinds else ALL_CHUNKS))
    return out


def get_fora_handle(model) -> ForaHandle | None:
    """The handle of FORA applied to a pipeline or transformer, or `None`."""
    transformer = getattr(model, "transformer", model)
    return getattr(transformer, "_fora_handle", None)


def remove_fora(model) -> None:
    """Remove FORA from a pipeline or transformer: its forward passes are exactly the original ones again."""
    transformer = getattr(model, "transformer", model)
    handle = getattr(transformer, "_fora_handle", None)
    if handle is None:
        return
    for module in [transformer] + [m for m in transformer.modules() if m is not transformer]:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in (_FORA_HOOK, _FORA_BLOCK_HOOK, _FORA_MODULE_HOOK):
            registry.remove_hook(name, recurse=False)
        if not registry.hooks:  # leave no trace: drop the registry and the instance-level forward
            del module._diffusers_hook
            module.__dict__.pop("forward", None)
    handle.state.reset()
    transformer._fora_handle = None
    del transformer._fora_handle
    _invalidate_registry_caches(transformer)


def _invalidate_registry_caches(transformer) -> None:
    """Registries cache the list of their children's registries; adding or removing FORA's hooks changes it."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
