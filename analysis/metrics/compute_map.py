"""Which block computed which module at which step, as measured, for any caching method.

A `ComputeMap` puts a forward hook on the first `Linear` inside each block's `attn1`, `attn2` and `ff`: that layer
runs exactly when the module really computes, whoever decides (FORA, a cache plan, TaylorSeer, First Block Cache,
which skips whole blocks). Cell (block, step) of `matrix(kind)` is True where the module computed at that step of
the call; `computed_calls` counts them, the cost every policy is compared at. One pipeline call per map.
"""

import re

import numpy as np
import torch

_BLOCK_RE = re.compile(r"(?:transformer_blocks|blocks)\.(\d+)")
_CHILDREN = {"attn1": "attn", "attn2": "cross_attn", "ff": "mlp"}


def _first_linear(module: torch.nn.Module) -> torch.nn.Linear | None:
    return next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)


class ComputeMap:
    """Records the computed (step, block, kind) cells of the transformer's calls until `remove()`."""

    def __init__(self, transformer: torch.nn.Module):
        self.step = -1
        self.cells: set[tuple[int, int, str]] = set()
        self.kinds: list[str] = []
        self.num_blocks = 0
        self._handles = [transformer.register_forward_pre_hook(self._next_step)]
        for name, block in transformer.named_modules():
            match = _BLOCK_RE.fullmatch(name)
            if match is None:
                continue
            index = int(match.group(1))
            self.num_blocks = max(self.num_blocks, index + 1)
            for child, kind in _CHILDREN.items():
                module = getattr(block, child, None)
                linear = _first_linear(module) if isinstance(module, torch.nn.Module) else None
                if linear is None:
                    continue
                if kind not in self.kinds:
                    self.kinds.append(kind)
                self._handles.append(linear.register_forward_hook(self._marker(index, kind)))
        if not self.num_blocks:
            raise ValueError(f"no transformer blocks found in {type(transformer).__name__}")

    def _next_step(self, module, args):
        self.step += 1

    def _marker(self, block: int, kind: str):
        def hook(module, args, output):
            self.cells.add((self.step, block, kind))

        return hook

    @property
    def num_steps(self) -> int:
        return self.step + 1

    @property
    def computed_calls(self) -> int:
        return len(self.cells)

    def matrix(self, kind: str) -> np.ndarray:
        """blocks x steps booleans: where `kind` computed."""
        out = np.zeros((self.num_blocks, self.num_steps), dtype=bool)
        for step, block, k in self.cells:
            if k == kind:
                out[block, step] = True
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.remove()
