"""FORA's diffusers hooks. One `ForaRunHook` on the transformer: a forward call is one step, and the handle's run
bookkeeping decides `is_full_step`. One `ForaModuleHook` per cached module (blocks without a lean step): computes
and stores on full steps, returns the cache on reuse steps, hands computed outputs to observers. One
`ForaBlockHook` per block with a lean step (DiT/PixArt, SD3/SD3.5, FLUX double-stream; `fora.lean_reuse`): runs a
reuse step without the norms and adaLN rows that only cached modules read. One `ForaFusedBlockHook` per FLUX
single-stream block. Observers are called outside `torch.compile` (`torch.compiler.disable`); what a compiled
block traces is one boolean and the cached tensors, so it has one graph per kind of step.
"""

import torch
from diffusers.hooks import ModelHook
from diffusers.hooks.hooks import BaseState, StateManager

from .observers import Observation
from .slots import CacheSlot
from .specs import STREAMS

FORA_HOOK = "fora"
FORA_BLOCK_HOOK = "fora_block"
FORA_MODULE_HOOK = "fora_module"


class _NoState(BaseState):
    """The StateManager only carries the context's name: FORA's per-context caches are its slots' (`CacheSlot`)."""


def _observe(handle, slot: CacheSlot, output) -> None:
    """Hand one computed module output to the observers; a joint attention's `(image, context)` pair is observed
    as its two streams (`fora.specs.STREAMS`)."""
    state = handle.state
    parts = zip(STREAMS[slot.kind], output) if isinstance(output, tuple) else [(slot.kind, output)]
    for kind, part in parts:
        if part is None:
            continue
        for obs in handle.observers:
            obs(Observation(slot.block, kind, state.step, state.run.num_steps, state.timestep, part))


class ForaRunHook(ModelHook):
    """On the transformer (`handle`: its `ForaHandle`): one forward call is one sampling step. Stateful:
    `reset_stateful_hooks()` resets it."""

    _is_stateful = True

    def __init__(self, handle, timestep_index: int | None):
        super().__init__()
        self.handle = handle
        self.timestep_index = timestep_index  # where `timestep` stands among the forward's positional arguments
        # diffusers sets the pipeline's `transformer.cache_context(name)` on every stateful hook's StateManager:
        # it is how this hook learns that a step's calls come in several contexts (cond / uncond)
        self.contexts = StateManager(_NoState)

    def pre_forward(self, module, *args, **kwargs):
        if kwargs.get("kv_cache") is not None or kwargs.get("kv_cache_mode") is not None:
            raise ValueError(
                f"{type(module).__name__} was called with kv_cache / kv_cache_mode (FLUX.2's reference-image "
                "key/value cache, whose first step stores the reference tokens' keys and values for later steps to "
                "read): not supported with FORA yet; call without a KV cache"
            )
        i = self.timestep_index
        timestep = kwargs.get("timestep", args[i] if i is not None and len(args) > i else None)
        context = self.contexts._context
        self.handle._begin_step(timestep, context.name if context is not None else None)
        return args, kwargs

    def post_forward(self, module, output):
        self.handle._end_step()
        return output

    def reset_state(self, module):
        # called by diffusers' reset_stateful_hooks, which many pipelines run at the end of every call
        # (maybe_free_model_hooks): the cache goes, the finished run's record stays readable
        self.handle.reset(keep_record=True)
        return module


class ForaModuleHook(ModelHook):
    """On one attention or MLP module of a block that `fora.lean_reuse` does not cover: compute and cache on full
    steps, return the cache on reuse steps (the block's own forward still computes the module's input)."""

    def __init__(self, handle, slot: CacheSlot, reuse_steps: frozenset[int] | None = None):
        super().__init__()
        self.handle, self.state, self.slot = handle, handle.state, slot
        self.reuse_steps = reuse_steps  # with a plan: the steps at which this module reuses

    def new_forward(self, module, *args, **kwargs):
        state, slot = self.state, self.slot
        if self.reuse_steps is not None:
            if state.step in self.reuse_steps and not state.fresh:
                return slot.value(state.step)
        elif slot.enabled and not state.is_full_step:
            return slot.output
        output = self.fn_ref.original_forward(*args, **kwargs)
        if isinstance(output, tuple) and len(output) != len(STREAMS.get(slot.kind, ())):
            raise RuntimeError(
                f"{slot.key} returned {len(output)} outputs where FORA knows the streams {STREAMS.get(slot.kind)} "
                "(an IP-adapter's extra attention output, for instance, is ungated and is not cached)"
            )
        if slot.enabled and state.caching:
            slot.store(state.step, output)
        if self.handle.observers and state.observed:
            self._notify(output)
        return output

    @torch.compiler.disable
    def _notify(self, output) -> None:
        _observe(self.handle, self.slot, output)


class ForaBlockHook(ModelHook):
    """On a block with a lean step (`BlockSpec.step_forward`: DiT/PixArt, SD3/SD3.5, FLUX double-stream): runs every
    step through it, which on a reuse step skips the cached modules together with the norms and adaLN rows that only
    they read, and returns what the modules computed. Replaces the module hooks inside the block, so a compiled
    block traces no per-block hook objects."""

    def __init__(self, handle, slots: dict[str, CacheSlot], step_forward, plan_steps: list[tuple] | None = None):
        super().__init__()
        self.handle, self.state, self.slots = handle, handle.state, slots
        self.step_forward = step_forward
        self.cached_kinds = tuple(kind for kind, slot in slots.items() if slot.enabled)
        self.plan_steps = plan_steps  # with a plan: for each step, the kinds this block reuses

    def new_forward(self, block, *args, **kwargs):
        state = self.state
        if not state.caching and not self.handle.observers:  # interval 1, unobserved: nothing to keep or show
            return self.fn_ref.original_forward(*args, **kwargs)
        if self.plan_steps is not None:
            kinds = self.plan_steps[state.step] if not state.fresh else ()
            cached = {kind: self.slots[kind].value(state.step) for kind in kinds}
        elif self.cached_kinds and not state.is_full_step:
            cached = {kind: self.slots[kind].output for kind in self.cached_kinds}
        else:
            cached = {}
        output, computed = self.step_forward(block, cached, *args, **kwargs)
        if state.caching:
            for kind in self.cached_kinds:
                if kind in computed:
                    self.slots[kind].store(state.step, computed[kind])
        if self.handle.observers and state.observed:
            self._notify(computed)
        return output

    @torch.compiler.disable
    def _notify(self, computed: dict) -> None:
        for kind, output in computed.items():
            _observe(self.handle, self.slots[kind], output)


class ForaFusedBlockHook(ModelHook):
    """On a block whose attention and MLP meet in one projection before the gate (FLUX single-stream): on a reuse
    step `reuse_forward(block, cached, *args, **kwargs)` runs instead of the block (the gate and the residual add on
    the cached projection); on a full step the block's own forward runs, and the `ForaModuleHook` on the
    projection stores and observes its output."""

    def __init__(self, handle, slot: CacheSlot, reuse_forward, reuse_steps: frozenset[int] | None = None):
        super().__init__()
        self.handle, self.state, self.slot = handle, handle.state, slot
        self.reuse_forward = reuse_forward
        self.reuse_steps = reuse_steps  # with a plan: the steps at which this block reuses

    def new_forward(self, block, *args, **kwargs):
        state, slot = self.state, self.slot
        if self.reuse_steps is not None:
            is_reuse = state.step in self.reuse_steps and not state.fresh
        else:
            is_reuse = slot.enabled and not state.is_full_step
        if is_reuse:
            return self.reuse_forward(block, slot.value(state.step), *args, **kwargs)
        return self.fn_ref.original_forward(*args, **kwargs)
