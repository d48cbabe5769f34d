"""Apply and remove FORA: `apply_fora` finds the transformer's blocks and their attention/MLP children, sets up the
cache slots and registers the hooks (`fora.hooks`); `ForaHandle` is what it returns, and it keeps the record of each
run (`ForaRun`), counted step by step with the run bookkeeping of `fora.runs`.

Reuse steps multiply fresh adaLN gates with the stale, pre-gate outputs, exactly as the official code does.
"""

import inspect
import re

import torch
from diffusers.hooks import HookRegistry
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

from .config import ForaConfig, ForaRun
from .hooks import (
    FORA_BLOCK_HOOK,
    FORA_HOOK,
    FORA_MODULE_HOOK,
    ForaBlockHook,
    ForaFusedBlockHook,
    ForaModuleHook,
    ForaRunHook,
)
from .observers import RunEvent
from .plan import CachePlan
from .runs import ForaState, RunTracker
from .schedule import full_steps
from .slots import CacheSlot
from .specs import STREAMS, BlockSpec, enabled_kinds, spec_for, supported


def apply_fora(model, config: ForaConfig | None = None, num_steps: int | None = None) -> "ForaHandle":
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
    check_no_diffusers_cache(transformer)
    if pipeline is None and num_steps is not None:
        config.check_num_steps(num_steps)
    second = getattr(pipeline, "transformer_2", None) if pipeline is not None else None
    if isinstance(second, torch.nn.Module):  # Wan 2.2's low-noise expert takes over part-way: cached alike
        if getattr(second, "_fora_handle", None) is not None or getattr(second, "_peer_handle", None) is not None:
            raise ValueError("a cache is already applied to this pipeline's transformer_2; remove it first")
        check_no_diffusers_cache(second)
        if not hasattr(pipeline.scheduler, "step_index"):
            raise ValueError(
                f"{type(pipeline.scheduler).__name__} keeps no step_index: FORA cannot tell at which step "
                "transformer_2 takes over"
            )
        handle = _apply(transformer, config, pipeline, num_steps)
        try:
            handle.second = _apply(second, config, pipeline, num_steps, joins=True)
        except Exception:
            remove_fora(transformer)
            raise
        handle.second.runs.first, handle.second.first = handle.runs, handle
        return handle
    return _apply(transformer, config, pipeline, num_steps)


def _apply(transformer, config: ForaConfig, pipeline, num_steps: int | None, joins: bool = False) -> "ForaHandle":
    """`apply_fora` on one transformer (`joins`: a pipeline's second expert, which takes over part-way)."""
    handle = ForaHandle(transformer, config, pipeline=pipeline, num_steps=num_steps, joins=joins)
    enabled = enabled_kinds(config)
    targets, blocks = [], []
    pattern = re.compile(config.block_regex) if config.block_regex is not None else None
    for index, (name, block, spec) in enumerate(find_blocks(transformer)):
        if pattern is not None and not pattern.fullmatch(name):
            continue  # not cached, but numbered: the numbers stay those of the whole model
        _refuse_chunking(name, block)
        if any(kind == "attn_mlp" for _, kind in spec.modules) and config.cache_attn != config.cache_mlp:
            raise ValueError(
                f"block {name} ({type(block).__name__}) fuses attention and MLP before its gate: cache_attn and "
                f"cache_mlp must be equal there (got {config.cache_attn} and {config.cache_mlp})"
            )
        blocks.append((name, block, spec))
        for child, kind in spec.modules:
            module = getattr(block, child, None)
            if isinstance(module, torch.nn.Module):
                use = enabled[kind] and (config.blocks is None or index in config.blocks)
                if config.plan is not None:
                    use = kind in config.plan.steps
                targets.append((CacheSlot(f"{name}.{child}", index, kind, use), module))
    if not targets:
        what = f" matching block_regex={config.block_regex!r}" if pattern is not None else ""
        raise ValueError(f"{type(transformer).__name__}: no attention or MLP module found in its blocks{what}")
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
        # a plan names every (block, kind); where a block lacks a kind (SD3's last block has no context MLP, FLUX's
        # double- and single-stream blocks have different ones) that entry has no module to apply to, and the run
        # record counts only the modules that exist (`plan.computed_calls` counts the plan's entries)
        for slot, _ in targets:
            slot.order = plan.order if slot.enabled else 0
        handle._plan_reused = [
            sum(not plan.computes(slot.kind, slot.block, s) for slot, _ in targets) for s in range(plan.num_steps)
        ]

    run_hook = ForaRunHook(handle, timestep_index(transformer))
    HookRegistry.check_if_exists_or_initialize(transformer).register_hook(run_hook, FORA_HOOK)
    by_block = {}
    for slot, module in targets:
        by_block.setdefault(slot.key.rsplit(".", 1)[0], []).append((slot, module))
        handle.state.slots.append(slot)
        handle.modules.append((slot.key, slot.block, slot.kind))
    handle._num_cached = sum(slot.enabled for slot in handle.state.slots)
    handle._blocks = [(name, block) for name, block, _ in blocks]
    for name, block, spec in blocks:
        hooked = by_block.get(name, [])
        if spec.reuse_forward is not None and hooked:  # fused (FLUX single-stream): the block's own reuse step
            ((slot, _),) = hooked
            reuse = _reuse_steps(plan, slot) if plan is not None else None
            hook = ForaFusedBlockHook(handle, slot, spec.reuse_forward, reuse)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, FORA_BLOCK_HOOK)
            # and, below, the module hook on its projection, which stores and observes it on full steps
        if config.lean_reuse and spec.lean(block):
            slots = {slot.kind: slot for slot, _ in hooked}
            plan_steps = _plan_steps(plan, slots) if plan is not None else None
            hook = ForaBlockHook(handle, slots, spec.step_forward, plan_steps)
            HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, FORA_BLOCK_HOOK)
            continue
        for slot, module in hooked:  # any other block: hooks on the modules themselves
            reuse = _reuse_steps(plan, slot) if plan is not None else None
            hook = ForaModuleHook(handle, slot, reuse)
            HookRegistry.check_if_exists_or_initialize(module).register_hook(hook, FORA_MODULE_HOOK)
    _invalidate_registry_caches(transformer)
    transformer._fora_handle = handle
    return handle


def _refuse_chunking(name: str, block: torch.nn.Module) -> None:
    """Feed-forward chunking (`set_chunk_feed_forward`) calls the MLP once per chunk: a module hook would store one
    chunk and answer every chunk with it, and the lean step does not chunk."""
    if getattr(block, "_chunk_size", None) is not None:
        raise ValueError(f"block {name} uses feed-forward chunking, which FORA cannot cache; disable it first")


def find_blocks(transformer: torch.nn.Module) -> list[tuple[str, torch.nn.Module, BlockSpec]]:
    """The transformer blocks FORA knows, as (name, block, spec), in `named_modules()` order: the order of the block
    lists (e.g. FLUX's double- then single-stream blocks), which numbers them for `blocks`, plans and maps.

    Refused with `ValueError`: any attention module outside the blocks found (an unknown block class, wherever it
    is held: caching the rest would be a silent partial cache), and a transformer with no block FORA knows."""
    modules = dict(transformer.named_modules())
    found, unknown, inside = [], {}, ()  # inside: the name prefixes of the blocks found
    for name, module in modules.items():
        if inside and name.startswith(inside):
            continue  # inside a block already found: its children are the spec's business
        spec = spec_for(module)
        if spec is not None:
            inside = (*inside, name + ".")
            found.append((name, module, spec))
        elif isinstance(module, (Attention, AttentionModuleMixin)):
            where, block = _enclosing_block(modules, name)
            unknown.setdefault(type(block).__name__, where)
    if unknown:
        listed = ", ".join(f"{cls} (e.g. {where})" for cls, where in unknown.items())
        raise ValueError(
            f"{type(transformer).__name__}: FORA has no block spec for {listed}; supported block classes: "
            f"{supported()}"
        )
    if not found:
        raise ValueError(
            f"{type(transformer).__name__}: no transformer block FORA knows; supported block classes: {supported()}"
        )
    return found


OBSERVED_ORDER = ("attn", "context_attn", "attn2", "cross_attn", "mlp", "context_mlp", "attn_mlp")


def observed_kinds(transformer: torch.nn.Module) -> tuple[str, ...]:
    """The kinds observers see on `transformer`'s blocks, in `OBSERVED_ORDER`: every cached module's kind, a joint
    attention's two streams as `attn` and `context_attn` (`fora.specs.STREAMS`)."""
    seen = set()
    for _, block, spec in find_blocks(transformer):
        for child, kind in spec.modules:
            if getattr(block, child, None) is not None:
                seen.update(STREAMS[kind] if kind in spec.joint else (kind,))
    return tuple(k for k in OBSERVED_ORDER if k in seen)


def _enclosing_block(modules: dict, name: str) -> tuple[str, torch.nn.Module]:
    """The block an attention module belongs to: the element of the nearest block list (ModuleList, Sequential,
    ModuleDict) above it, else its parent module."""
    parts = name.split(".")
    for k in range(1, len(parts)):
        if isinstance(
            modules[".".join(parts[: k - 1])], (torch.nn.ModuleList, torch.nn.Sequential, torch.nn.ModuleDict)
        ):
            return ".".join(parts[:k]), modules[".".join(parts[:k])]
    parent = ".".join(parts[:-1])
    return parent or name, modules[parent]


def timestep_index(transformer: torch.nn.Module) -> int | None:
    """The position of the `timestep` argument in the transformer's forward (`None`: it has none). Each family puts
    it elsewhere (DiT second, PixArt and SD3 third or fourth), so it is read from the signature."""
    params = list(inspect.signature(type(transformer).forward).parameters)[1:]  # without self
    return params.index("timestep") if "timestep" in params else None


class ForaHandle:
    r"""
    Returned by `apply_fora`: the config, the record of the most recent run and the observers.

    Attributes:
        config (`ForaConfig`): the active configuration.
        last_run (`ForaRun` or `None`): the most recent (or current) run.
        observers (`list`): callables receiving every computed `Observation`; objects may also define
            `on_run_start(RunEvent)` and `on_run_end(RunEvent)`.
        second (`ForaHandle` or `None`): for a pipeline with two experts (Wan 2.2's `transformer_2`, which takes
            over part-way through each run), the second expert's handle: its own cache, record and observers, on
            the same schedule (its first call computes).
    """

    def __init__(
        self, transformer, config: ForaConfig, pipeline=None, num_steps: int | None = None, joins: bool = False
    ):
        self.transformer = transformer
        self.config = config
        self.state = ForaState()
        self.runs = RunTracker(pipeline, num_steps, self._check_run, transformer, joins=joins)
        self.second: ForaHandle | None = None  # Wan 2.2: the handle of the pipeline's transformer_2
        self.first: ForaHandle | None = None  # on the second's handle: the first's
        self.observers: list = []
        self.modules: list[tuple[str, int, str]] = []  # (module name, block index, kind)
        self._num_cached = 0
        self._plan_reused: list[int] = []  # with a plan: the number of module calls reused at each step
        self._blocks: list[tuple[str, torch.nn.Module]] = []  # the cached blocks, by name

    def _check_run(self, num_steps: int) -> None:
        """Before a run starts: the config fits its length, and no block took up chunking since `apply_fora`."""
        self.config.check_num_steps(num_steps)
        for name, block in self._blocks:
            _refuse_chunking(name, block)

    @property
    def num_steps(self) -> int | None:
        """A bare transformer's run length (runs delimited by count); settable, checked against the config."""
        return self.runs.num_steps

    @num_steps.setter
    def num_steps(self, value: int | None) -> None:
        if value is not None:
            self.config.check_num_steps(value)
        self.runs.num_steps = value

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
        return self._start_run(self.runs.start(num_steps))

    def reset(self, keep_record: bool = False) -> None:
        """Forget the current run and its cache; the next call starts a new run. `keep_record`: `last_run` still
        shows the run that ended (diffusers resets stateful hooks at the end of each call of many pipelines)."""
        record = self.state.run
        self.state.reset()
        self.runs.reset()
        if keep_record:
            self.state.run = record

    def _start_run(self, num_steps: int) -> ForaRun:
        plan = self.config.plan
        if plan is None:
            full = full_steps(num_steps, self.config.interval, self.config.window)
        else:  # the run's full steps: those at which every module computes
            full = [s for s in range(num_steps) if all(plan.computes(k, b, s) for _, b, k in self.modules)]
        self.state.reset(num_steps, full)
        self.state.caching = self.config.caches
        for obs in self.observers:
            if hasattr(obs, "on_run_start"):
                obs.on_run_start(RunEvent(num_steps, tuple(self.state.run.full_steps)))
        if self.first is not None and self.first.runs.ongoing:  # the first expert's part of the run is over
            self.first._hand_over()
        return self.state.run

    def _hand_over(self) -> None:
        """The second expert has taken over: this expert's part of the run is over; its cache (every context's)
        is freed, its observers are told the run ended. Its record keeps the steps it ran (`steps_done`)."""
        for slot in self.state.slots:
            slot.clear()
        self.runs.steps_done = self.runs.run_steps  # a later call in this run is refused, not answered from nothing
        self._run_ended()

    @torch.compiler.disable
    def _begin_step(self, timestep, context: str | None = None) -> None:
        state, runs = self.state, self.runs
        new_run = runs.begin_call(timestep, context)
        if new_run is not None:
            self._start_run(new_run)
        state.use_context(runs.context)  # a guidance call in its own context reads its own cache
        state.step = runs.step
        state.fresh = runs.fresh  # a context's first call computes: it has nothing to reuse
        state.is_full_step = state.fresh or state.step in state.full_set
        state.observed = runs.primary
        if runs.fresh and not runs.primary:
            state.run.contexts = len(runs.contexts)
        if runs.primary:
            state.timestep_input = timestep  # kept as passed (a tensor shares its storage like a view); read lazily
            state._timestep = None
            state.run.raw_timesteps.append(state.timestep_input)

    @torch.compiler.disable
    def _end_step(self) -> None:
        state = self.state
        run = state.run
        completed = self.runs.end_call()
        run.steps_done = self.runs.steps_done
        if self.runs.primary:
            self._count(run)
        else:  # the record counts the primary context's calls; the memory is every context's
            run.cache_bytes = max(run.cache_bytes, state.cache_bytes)
        if state.step == run.num_steps - 1:  # this context's last step: free its cache (and extrapolation terms)
            for slot in state.slots:
                slot.drop()
        if completed:
            for context in self.runs.finished_contexts():  # their caches would wait for the next run
                state.drop_context(context)
            self._run_ended()

    def _run_ended(self) -> None:
        run = self.state.run
        for obs in self.observers:
            if hasattr(obs, "on_run_end"):
                obs.on_run_end(RunEvent(run.num_steps, tuple(run.full_steps)))

    def _count(self, run: ForaRun) -> None:
        """The record of one primary call: counted here, not in the module hooks, so that compiled blocks do no
        bookkeeping (each hooked module runs once per call; on a reuse step the cached ones answer from the cache)."""
        state = self.state
        total, cached = len(state.slots), self._num_cached
        if self.config.plan is not None:
            reused = 0 if state.fresh else self._plan_reused[state.step]
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

    def __repr__(self):
        return f"ForaHandle(config={self.config!r}, modules={len(self.modules)}, state={self.state!r})"


def _reuse_steps(plan: CachePlan, slot: CacheSlot) -> frozenset[int]:
    """The steps at which `plan` has this slot's module reuse."""
    return frozenset(s for s in range(plan.num_steps) if not plan.computes(slot.kind, slot.block, s))


def _plan_steps(plan: CachePlan, slots: dict[str, CacheSlot]) -> list[tuple]:
    """For each step of `plan`: the kinds this block reuses."""
    return [
        tuple(k for k, slot in slots.items() if slot.enabled and not plan.computes(k, slot.block, step))
        for step in range(plan.num_steps)
    ]


def get_fora_handle(model) -> ForaHandle | None:
    """The handle of FORA applied to a pipeline or transformer, or `None`."""
    transformer = getattr(model, "transformer", model)
    return getattr(transformer, "_fora_handle", None)


def remove_fora(model) -> None:
    """Remove FORA from a pipeline or transformer (both experts of a two-expert pipeline, also when given the
    first): its forward passes are exactly the original ones again."""
    second = getattr(model, "transformer_2", None)
    if isinstance(second, torch.nn.Module) and hasattr(model, "transformer"):
        remove_fora(second)
    transformer = getattr(model, "transformer", model)
    handle = getattr(transformer, "_fora_handle", None)
    if handle is None:
        return
    if handle.second is not None:
        remove_fora(handle.second.transformer)
    for module in [transformer] + [m for m in transformer.modules() if m is not transformer]:
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in (FORA_HOOK, FORA_BLOCK_HOOK, FORA_MODULE_HOOK):
            registry.remove_hook(name, recurse=False)
        if not registry.hooks:  # leave no trace: drop the registry and the instance-level forward
            del module._diffusers_hook
            module.__dict__.pop("forward", None)
    handle.reset()
    transformer._fora_handle = None
    del transformer._fora_handle
    _invalidate_registry_caches(transformer)


def check_no_diffusers_cache(transformer) -> None:
    """`ValueError` where a cache of diffusers' own is enabled on `transformer` (`transformer.enable_cache(...)`:
    First Block Cache, FasterCache, PAB, ...): a second cache over it would reuse what the first already reused."""
    if getattr(transformer, "is_cache_enabled", False):
        raise ValueError(
            f"diffusers' {type(transformer._cache_config).__name__} is enabled on this {type(transformer).__name__} "
            "(transformer.enable_cache); call transformer.disable_cache() before applying another cache"
        )


def _invalidate_registry_caches(transformer) -> None:
    """Registries cache the list of their children's registries; adding or removing FORA's hooks changes it."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
