"""Which block computed which module at which step, as measured, for any caching method.

A `ComputeMap` puts a forward hook on the first weight layer (`Linear`, or `Conv2d` for Sana's convolutional MLP)
inside each attention and MLP module of each block, the modules FORA's block specs name (`fora.specs`): that layer
runs exactly when the module really computes, whoever decides (FORA, a cache plan, TaylorSeer, First Block Cache,
which skips whole blocks). Cell (block, step) of `matrix(kind)` is True where the module computed at that step of
the call; `computed_calls` counts them, the cost every policy is compared at. One pipeline call per map.
"""

import numpy as np
import torch

from fora.apply import find_blocks
from fora.specs import KINDS


def _first_layer(module: torch.nn.Module) -> torch.nn.Module | None:
    return next((m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))), None)


class ComputeMap:
    """Records the computed (step, block, kind) cells of the transformer's calls until `remove()`."""

    def __init__(self, transformer: torch.nn.Module):
        self.step = -1
        self.cells: set[tuple[int, int, str]] = set()
        self.kinds: list[str] = []
        self.num_blocks = 0
        self._handles = [transformer.register_forward_pre_hook(self._next_step)]
        for index, (_, block, spec) in enumerate(find_blocks(transformer)):
            self.num_blocks = index + 1
            for child, kind in spec.modules:
                module = getattr(block, child, None)
                layer = _first_layer(module) if isinstance(module, torch.nn.Module) else None
                if layer is None:
                    continue
                if kind not in self.kinds:
                    self.kinds.append(kind)
                self._handles.append(layer.register_forward_hook(self._marker(index, kind)))
        self.kinds.sort(key=KINDS.index)

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
