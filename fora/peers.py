"""FORA's peers on the same pipelines: diffusers' own TaylorSeer and First Block Cache, made correct on DiT/PixArt.

- TaylorSeer (Liu et al., arXiv 2503.06923): on a reuse step a module's output is the Taylor expansion of its past
  computed outputs (finite differences in steps), of order 0 (reuse, like FORA), 1 or 2. Knobs: the refresh
  interval and the order. diffusers' `apply_taylorseer_cache` computes at step 0 .. warmup-1 and then at steps
  s with (s - warmup - 1) % interval == 0; with warmup 1 and T - 3 divisible by N that is exactly FORA's schedule.
- First Block Cache (ParaAttention; after TeaCache, arXiv 2411.19108): every step runs block 0; when the relative
  mean absolute change of block 0's residual since the last full step is at most `threshold`, the other blocks are
  skipped and their cached residual is added. Knob: the threshold.

Applied as diffusers ships them, three things make them wrong or unusable on DiT and PixArt pipelines, which do
not call `transformer.cache_context(...)` and have no `CacheMixin`:
1. no cache context is set, so the hooks raise at the first step;
2. hook state is never reset, so a second call (or a call with another number of steps) continues the first
   call's step count and residuals;
3. TaylorSeer's default module patterns (`^transformer_blocks.*attn`, matched whole) find no module in a DiT block,
   whose modules are `attn1`, `attn2` and `ff`: nothing would be cached.
`apply_peer` fixes all three without touching diffusers' code: a run hook on the transformer sets the context on
each call and resets the stateful hooks whenever the scheduler's timesteps are set anew (a new pipeline call), and
TaylorSeer gets patterns for `attn1`/`attn2`/`ff`.

cache-dit's DBCache, the third peer, lives in `peer_cache_dit.py`; `apply_cache` and `remove_peer` take it too.
"""

from dataclasses import dataclass

import torch
from diffusers.hooks import (
    FirstBlockCacheConfig,
    HookRegistry,
    ModelHook,
    TaylorSeerCacheConfig,
    apply_first_block_cache,
    apply_taylorseer_cache,
)
from diffusers.hooks.hooks import CacheContext, _set_cache_context

from .apply import check_no_diffusers_cache
from .peer_cache_dit import CacheDiTConfig, CacheDiTHandle, apply_cache_dit, remove_cache_dit
from .runs import RunTracker

_PEER_RUN_HOOK = "fora_peer_run"
_DIFFUSERS_HOOKS = ("taylorseer_cache", "fbc_leader_block_hook", "fbc_block_hook")
_TAYLORSEER_MODULES = (r"(?:transformer_blocks|blocks)\.\d+\.(?:attn1|attn2|ff)",)
_MAX_TAYLOR_ORDER = 2


def taylorseer(interval: int = 3, order: int = 1, warmup: int = 1) -> TaylorSeerCacheConfig:
    r"""
    diffusers' TaylorSeer config for DiT/PixArt blocks.

    Args:
        interval (`int`, defaults to 3): compute every `interval` steps after the warm-up (>= 1).
        order (`int`, defaults to 1): Taylor order of the prediction, 0..2 (0 reuses the last output).
        warmup (`int`, defaults to 1): first steps always computed (>= 1: step 0 must compute).
    """
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"TaylorSeer interval={interval!r}: must be an integer >= 1")
    if isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= _MAX_TAYLOR_ORDER:
        raise ValueError(f"TaylorSeer order={order!r}: allowed 0..{_MAX_TAYLOR_ORDER}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 1:
        raise ValueError(f"TaylorSeer warmup={warmup!r}: must be an integer >= 1 (step 0 has nothing to predict from)")
    # factors in the model's dtype (None keeps it): diffusers' default bfloat16 would add its own error to the peer
    return TaylorSeerCacheConfig(
        cache_interval=interval,
        disable_cache_before_step=warmup,
        max_order=order,
        taylor_factors_dtype=None,
        cache_identifiers=list(_TAYLORSEER_MODULES),
    )


def taylorseer_steps(num_steps: int, interval: int, warmup: int = 1) -> list[int]:
    """The steps at which diffusers' TaylorSeer computes (its own rule, reproduced to state its cost)."""
    return [s for s in range(num_steps) if s < warmup or (s - warmup - 1) % interval == 0]


def taylorseer_at_cost(num_steps: int, interval: int, order: int = 1) -> TaylorSeerCacheConfig:
    """TaylorSeer at refresh interval N with the warm-up whose number of computed steps is closest to FORA N's
    (the smallest such warm-up): the peer at FORA's cost whatever T is."""
    from .schedule import full_steps

    target = len(full_steps(num_steps, interval))
    warmup = min(
        range(1, interval + 1), key=lambda w: (abs(len(taylorseer_steps(num_steps, interval, w)) - target), w)
    )
    return taylorseer(interval, order, warmup)


def fbcache(threshold: float = 0.1) -> FirstBlockCacheConfig:
    r"""
    diffusers' First Block Cache config.

    Args:
        threshold (`float`, defaults to 0.1): skip blocks 1..L-1 while block 0's residual changed (relative mean
            absolute difference) by at most this much since the last full step; >= 0 (0 never skips).
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not threshold >= 0:
        raise ValueError(f"First Block Cache threshold={threshold!r}: must be a number >= 0")
    return FirstBlockCacheConfig(threshold=float(threshold))


@dataclass
class PeerRun:
    """What happened in one run of a peer: its length and the steps done (module counts come from
    `analysis.metrics.compute_map`, which sees what really ran whatever the method)."""

    num_steps: int
    steps_done: int = 0


class PeerHandle:
    """Returned by `apply_peer`: the config and the record of the most recent run."""

    def __init__(self, pipeline, config):
        self.config = config
        self.last_run: PeerRun | None = None
        self.runs = RunTracker(pipeline, transformer=pipeline.transformer)  # a run is one pipeline call

    @property
    def name(self) -> str:
        return "taylorseer" if isinstance(self.config, TaylorSeerCacheConfig) else "fbcache"

    def __repr__(self):
        return f"PeerHandle({self.config!r}, last_run={self.last_run!r})"


class _PeerRunHook(ModelHook):
    """On the transformer: one call is one step. Starts a run (resetting every stateful hook below) when the
    scheduler's timesteps are new, and gives the hooks a cache context for the call."""

    def __init__(self, handle: PeerHandle):
        super().__init__()
        self.handle = handle

    def pre_forward(self, module, *args, **kwargs):
        handle = self.handle
        new_run = handle.runs.begin_call(None)
        if not handle.runs.primary:
            raise RuntimeError(
                "the pipeline called the transformer a second time in one step (separate guidance calls): the peer "
                "caches run on pipelines with one call per step only (DiT, PixArt)"
            )
        if new_run is not None:
            HookRegistry.check_if_exists_or_initialize(module).reset_stateful_hooks(recurse=True)
            handle.last_run = PeerRun(new_run)
        _set_cache_context(module, CacheContext("cond"))
        return args, kwargs

    def post_forward(self, module, output):
        _set_cache_context(module, None)
        self.handle.runs.end_call()
        self.handle.last_run.steps_done = self.handle.runs.steps_done
        return output


def apply_peer(pipe, config: TaylorSeerCacheConfig | FirstBlockCacheConfig) -> PeerHandle:
    """Apply diffusers' TaylorSeer or First Block Cache to a DiT/PixArt pipeline, correctly (see the module doc).

    Only pipelines are supported (a run is one pipeline call, read from the scheduler). FORA and a peer cannot be
    applied together; `remove_peer` restores the original forwards.

    Example:

    >>> handle = apply_peer(pipe, taylorseer(interval=3, order=1))
    >>> images = pipe(class_labels=[3], num_inference_steps=30).images
    >>> handle.last_run
    PeerRun(num_steps=30, steps_done=30)
    >>> remove_peer(pipe)
    """
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module) or not hasattr(pipe, "scheduler"):
        raise TypeError(f"apply_peer needs a diffusers pipeline with .transformer and .scheduler, got {type(pipe)}")
    if isinstance(getattr(pipe, "transformer_2", None), torch.nn.Module):
        raise ValueError(f"{type(pipe).__name__} has a second transformer (transformer_2): the peers cache one only")
    if getattr(transformer, "_fora_handle", None) is not None or getattr(transformer, "_peer_handle", None):
        raise ValueError("a cache is already applied to this model; remove it first (remove_fora / remove_peer)")
    check_no_diffusers_cache(transformer)
    handle = PeerHandle(pipe, config)
    if isinstance(config, TaylorSeerCacheConfig):
        apply_taylorseer_cache(transformer, config)
    elif isinstance(config, FirstBlockCacheConfig):
        apply_first_block_cache(transformer, config)
    else:
        raise TypeError(f"apply_peer takes a TaylorSeerCacheConfig or FirstBlockCacheConfig, got {type(config)}")
    hooked = sum(
        name in getattr(m, "_diffusers_hook", None).hooks
        for m in transformer.modules()
        if getattr(m, "_diffusers_hook", None) is not None
        for name in _DIFFUSERS_HOOKS
    )
    if not hooked:
        raise ValueError(f"{handle.name} found no module to hook in {type(transformer).__name__}")
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(_PeerRunHook(handle), _PEER_RUN_HOOK)
    if hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
    transformer._peer_handle = handle
    return handle


def apply_cache(pipe, config):
    """Apply FORA (a `ForaConfig`, plans included), a peer (a diffusers TaylorSeer/FBCache config, or cache-dit's
    DBCache as a `CacheDiTConfig`) or nothing (`None`); returns the function that removes it again."""
    from .apply import apply_fora, remove_fora
    from .config import ForaConfig

    if config is None:
        return lambda p: None
    if isinstance(config, ForaConfig):
        apply_fora(pipe, config)
        return remove_fora
    if isinstance(config, CacheDiTConfig):
        apply_cache_dit(pipe, config)
        return remove_peer
    apply_peer(pipe, config)
    return remove_peer


def remove_peer(pipe) -> None:
    """Remove a peer applied by `apply_peer` or `apply_cache_dit`: the forward passes are exactly the original ones
    again."""
    transformer = getattr(pipe, "transformer", pipe)
    handle = getattr(transformer, "_peer_handle", None)
    if handle is None:
        return
    if isinstance(handle, CacheDiTHandle):
        remove_cache_dit(transformer)
        return
    for module in transformer.modules():
        registry = getattr(module, "_diffusers_hook", None)
        if registry is None:
            continue
        for name in (_PEER_RUN_HOOK, *_DIFFUSERS_HOOKS):
            if name in registry.hooks:
                registry.remove_hook(name, recurse=False)
        if not registry.hooks:
            del module._diffusers_hook
            module.__dict__.pop("forward", None)
    del transformer._peer_handle
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
