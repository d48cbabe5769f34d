"""FORA's configuration (`ForaConfig`) and the record of one run (`ForaRun`).

FORA (arXiv 2407.01425, Sec. 3) is a static cache: every N steps (the cache interval) each transformer block
computes its attention and MLP and caches their outputs, and the N-1 steps in between reuse them. The config says
which modules cache and when; `fora.schedule` turns it into the steps of a run that recompute.
"""

import re
from dataclasses import dataclass, field

import torch

from .plan import CachePlan


@dataclass(frozen=True)
class ForaConfig:
    r"""
    Configuration of the FORA static cache. Frozen: the hooks `apply_fora` registers are fixed by it, so a change
    would not take effect where it should; make another with `dataclasses.replace(config, interval=5)` and apply it.

    Args:
        interval (`int`, defaults to 3):
            N, the cache interval: attention and MLP are recomputed every N steps and reused for the N-1 steps in
            between. 1 disables reuse (the model runs uncached, hooks still observe); allowed 1..T-1 for T steps.
        cache_attn (`bool`, defaults to `True`):
            Cache the self-attention outputs (kinds `attn`, `attn2`; a joint attention's image and text parts).
        cache_cross_attn (`bool`, defaults to `True`):
            Cache the cross-attention output of text-conditional models (kind `cross_attn`: PixArt, Sana,
            HunyuanDiT, Wan). It is not gated, so a stale value enters the residual stream as is; turn off to
            recompute it every step.
        cache_mlp (`bool`, defaults to `True`):
            Cache the MLP outputs (kinds `mlp`, `context_mlp`). Which child module is which kind, per block
            class: `fora.specs`.
        cache_start (`int`, defaults to 0):
            First step (0-based, sampling order) at which reuse is allowed; earlier steps always recompute.
            Early steps set the image layout, so a later start trades speed for fidelity.
        cache_end (`int`, *optional*):
            Steps from this one on always recompute (`None`: caching allowed to the end). Late steps refine detail.
        blocks (`tuple[int, ...]`, *optional*):
            Indices of the blocks that cache, each once; the others compute every step. `None` means all blocks.
        block_regex (`str`, *optional*):
            `re.fullmatch` pattern over `named_modules()` names: only the blocks it matches cache (`None`: every
            block of a class `fora.specs` knows). Blocks are numbered in `named_modules()` order over all block
            lists (`blocks` and plans use these numbers).
        lean_reuse (`bool`, defaults to `True`):
            On reuse steps of the blocks with a lean step (DiT/PixArt, SD3/SD3.5, FLUX.1 double-stream), skip the
            norms, modulation and adaLN rows that only cached modules read (same output; `fora.lean_reuse`). `False`
            runs each block's original forward with the cached module outputs, as the official code does: slower
            reuse steps, and a compiled block then traces one graph per block (the hooked modules are guarded by
            identity). FLUX.1's single-stream blocks run their own reuse step either way.
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
    block_regex: str | None = None
    lean_reuse: bool = True
    plan: CachePlan | None = None

    def __post_init__(self):
        if self.plan is not None and not isinstance(self.plan, CachePlan):
            if not isinstance(self.plan, (str, bytes)) and not hasattr(self.plan, "__fspath__"):
                raise ValueError(f"plan={self.plan!r}: must be a CachePlan or the path of a plan JSON file")
            object.__setattr__(self, "plan", CachePlan.load(self.plan))  # frozen: set once, here
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
            object.__setattr__(self, "blocks", tuple(self.blocks))
            if not self.blocks or any(isinstance(b, bool) or not isinstance(b, int) or b < 0 for b in self.blocks):
                raise ValueError(f"blocks={self.blocks!r}: must be None or a non-empty list of block indices >= 0")
            repeated = sorted({b for b in self.blocks if self.blocks.count(b) > 1})
            if repeated:
                raise ValueError(f"blocks={self.blocks!r}: {repeated} listed more than once; list each block once")
        try:
            if self.block_regex is not None:
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
    """What happened in one run (one sampling loop of T steps): counts and timesteps, no features.

    Where a pipeline calls the transformer in several contexts per step (separate guidance calls, `fora.runs`), the
    counts and timesteps are those of the primary context (its first); `contexts` says how many called, each with its
    own cache on the same schedule, and `cache_bytes` holds all of theirs."""

    num_steps: int
    full_steps: list[int]  # 0-based step indices, sampling order, at which attention/MLP were computed
    steps_done: int = 0
    computed_calls: int = 0  # cached-module calls that ran the module
    reused_calls: int = 0  # cached-module calls answered from the cache
    cache_bytes: int = 0  # peak bytes held by the cache during the run, all contexts together
    contexts: int = 1  # the contexts that called the transformer (2 with separate cond/uncond calls)
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
        return [first_value(t) for t in self.raw_timesteps]

    def summary(self) -> str:
        return (
            f"{self.num_steps} steps, {len(self.full_steps)} full / {len(self.reuse_steps)} reuse; "
            f"module calls computed {self.computed_calls}, reused {self.reused_calls}; "
            f"cache {self.cache_bytes / 2**20:.2f} MiB"
            + (
                f"; {self.contexts} contexts (separate guidance calls), each with its own cache: the counts are "
                "the first's"
                if self.contexts > 1
                else ""
            )
        )


def first_value(timestep) -> float | None:
    if timestep is None:
        return None
    if isinstance(timestep, torch.Tensor):
        return float(timestep.reshape(-1)[0]) if timestep.numel() else None
    return float(timestep)
