"""What the FORA hooks hand to observers: every attention/MLP output they compute, as it is cached.

An observer is any callable taking an `Observation`. It runs inside the forward pass, so it must not modify
`output` and should reduce it right away (a norm, a projection, a similarity with the previous step) instead of
keeping it: a DiT-XL/2 run of 250 steps produces ~16 GB of raw features. `analysis.metrics.similarity` builds on this.
"""

from dataclasses import dataclass

import torch

KINDS = ("attn", "cross_attn", "mlp")  # attn1 (self-attention), attn2 (cross-attention), ff (MLP)


@dataclass(frozen=True)
class Observation:
    block: int  # index of the transformer block
    kind: str  # one of KINDS
    step: int  # 0-based sampling step of the run
    num_steps: int  # T of the run
    timestep: float | None  # the scheduler timestep passed to the transformer at this step
    output: torch.Tensor  # the module output before the adaLN gate, exactly what the cache stores; read-only


@dataclass(frozen=True)
class RunEvent:
    """Sent to observers that define `on_run_start(event)` / `on_run_end(event)`."""

    num_steps: int
    full_steps: tuple[int, ...]
