"""The cache itself: one `CacheSlot` per cached module, holding its last computed output (and, for plans of order
k > 0, the divided differences that extrapolate it). An output is a tensor or, for joint attention, a tuple of
them (`(image, context)`, a part may be `None`); the arithmetic applies part by part."""

import torch

from .plan import extrapolation_weights


class CacheSlot:
    """The stored output of one cached module. One object per module, read as an attribute, so that compiled
    blocks see a tensor input of the same kind in every block rather than a per-block dictionary key.

    With a plan of order k > 0 it also keeps the divided differences of the last k + 1 computed outputs
    (`fora.plan`), and a reuse step reads `value(step)`, the Newton extrapolation, instead of `output`.

    A pipeline that calls the transformer in several contexts per step (conditional and unconditional) has one
    cache per context: `switch` puts the current context's away and brings out another's, so the hooks always
    read the current context's through the same attributes."""

    def __init__(self, key: str, block: int, kind: str, enabled: bool):
        self.key, self.block, self.kind, self.enabled = key, block, kind, enabled
        self.output: torch.Tensor | None = None
        self.order = 0
        self.diffs: list[torch.Tensor] = []  # d_0 = output, d_1, d_2: divided differences ending at the last step
        self.diff_steps: list[int] = []  # the computed steps they span, oldest first
        self.others: dict = {}  # the other contexts' caches: context -> (output, diffs, diff_steps)

    def clear(self) -> None:
        self.output, self.diffs, self.diff_steps, self.others = None, [], [], {}

    def drop(self) -> None:
        """Free the current context's cache (its run is over); the other contexts' stay."""
        self.output, self.diffs, self.diff_steps = None, [], []

    def switch(self, current, to) -> None:
        """Put context `current`'s cache away and make context `to`'s (empty if it has none) the current one."""
        self.others[current] = (self.output, self.diffs, self.diff_steps)
        self.output, self.diffs, self.diff_steps = self.others.pop(to, (None, [], []))

    def store(self, step: int, output) -> None:
        self.output = output
        if not self.order:
            return
        # differences in float32 at least: half precision would lose the small changes they are made of
        new = [_map(lambda x: x if x.dtype == torch.float64 else x.float(), output)]
        for j in range(min(self.order, len(self.diffs))):
            dt = step - self.diff_steps[-1 - j]
            new.append(_map(lambda a, b: (a - b) / dt, new[j], self.diffs[j]))
        self.diffs = new
        self.diff_steps = (self.diff_steps + [step])[-(self.order + 1) :]

    def value(self, step: int):
        if not self.order or len(self.diffs) < 2:
            return self.output
        out = self.diffs[0]
        for w, d in zip(extrapolation_weights(step, self.diff_steps)[1:], self.diffs[1:]):
            out = _map(lambda a, b: a + w * b, out, d)
        return _map(lambda a, ref: a.to(ref.dtype), out, self.output)

    @property
    def nbytes(self) -> int:
        held = self.diffs[1:] + ([self.output] if self.output is not None else [])
        if self.diffs and self.diffs[0] is not self.output:
            held.append(self.diffs[0])  # a float32 copy of a half-precision output
        for output, diffs, _ in self.others.values():
            held += diffs[1:] + ([output] if output is not None else [])
            if diffs and diffs[0] is not output:
                held.append(diffs[0])
        return sum(_nbytes(t) for t in held)


def _map(fn, first, *rest):
    """`fn` over a tensor, or part by part over tuples of tensors (a `None` part stays `None`)."""
    if isinstance(first, tuple):
        return tuple(None if a is None else fn(a, *others) for a, *others in zip(first, *rest))
    return fn(first, *rest)


def _nbytes(t) -> int:
    if isinstance(t, tuple):
        return sum(_nbytes(x) for x in t if x is not None)
    return t.numel() * t.element_size()
