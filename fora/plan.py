"""Cache plans: which block computes which module at which step, for policies beyond FORA's fixed interval.

FORA's static schedule is one policy: every cached module of every block computes on the same steps (`schedule.py`).
A `CachePlan` states the decision for every (step, block, module) instead, so a schedule calibrated on a model
(`analysis.calibrate`) or any hand-written one runs through FORA's own hooks, observers and run records:
`apply_fora(pipe, ForaConfig(plan=plan))`. A plan whose steps are FORA's schedule reproduces FORA bit for bit.

On a reuse step a module either returns its last computed output (`order=0`, as FORA) or extrapolates from its
last `order + 1` computed outputs with the Newton polynomial through them, in units of steps (`order=1`: the line
through the last two; `order=2`: the parabola through the last three). Until a module has computed `order + 1`
times it extrapolates with the order it has.

The cost of a plan is its number of computed module calls per transformer call, `computed_calls`: with T steps,
B blocks and the module kinds K of the model, FORA at interval N costs `len(full_steps(T, N)) * B * |K|`.
"""

import json
from dataclasses import dataclass, field
from pathlib import Path

from .schedule import full_steps as fora_full_steps
from .specs import KINDS

MAX_ORDER = 2


class _Steps(dict):
    """A plan's steps, kind -> one tuple of steps per block, read-only: the plan held by a frozen `ForaConfig` is
    what the hooks were set up from, and must not change under an applied cache. A dict still (JSON, pickling)."""

    def _refuse(self, *args, **kwargs):
        raise TypeError(
            "a CachePlan's steps are read-only: make a new plan, e.g. dataclasses.replace(plan, steps=...)"
        )

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):
        return type(self), (dict(self),)


@dataclass(frozen=True)
class CachePlan:
    r"""
    The steps at which each block computes each cached module; every other step reuses (or extrapolates). Frozen,
    like `ForaConfig`, which holds it: `dataclasses.replace(plan, order=1)` makes another.

    Args:
        num_steps (`int`):
            T, the number of sampling steps the plan is for; a run of another length is refused.
        steps (`dict[str, list[list[int]]]`):
            For each module kind (`attn`, `cross_attn`, `mlp`), one sorted list of 0-based steps per block. Step 0 is
            always computed (nothing is cached before it). A kind the plan does not name computes every step. Held
            read-only, each block's steps as a tuple.
        order (`int`, defaults to 0):
            What a reuse step returns: 0 the last computed output (FORA), 1 or 2 the Newton extrapolation of that
            order from the last computed outputs. Orders 1 and 2 keep 2 or 3 tensors per module instead of 1.
        name (`str`, defaults to `"plan"`):
            A label for reports (`fora`, `calibrated`, `calibrated-o1`, ...).
        meta (`dict`, *optional*):
            What the plan was made from (model, seeds, classes, budget, algorithm, scores); saved with it. The
            engine never reads it, so it stays an ordinary dict that reports may add to.
    """

    num_steps: int
    steps: dict[str, tuple[tuple[int, ...], ...]] = field(hash=False)
    order: int = 0
    name: str = "plan"
    meta: dict = field(default_factory=dict, hash=False)

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int) or self.num_steps < 2:
            raise ValueError(f"plan num_steps={self.num_steps!r}: must be an integer >= 2")
        if isinstance(self.order, bool) or not isinstance(self.order, int) or not 0 <= self.order <= MAX_ORDER:
            raise ValueError(f"plan order={self.order!r}: allowed 0..{MAX_ORDER}")
        if not isinstance(self.steps, dict) or not self.steps:
            raise ValueError("plan steps must map at least one module kind to per-block step lists")
        num_blocks = None
        clean = {}
        for kind, per_block in self.steps.items():
            if kind not in KINDS:
                raise ValueError(f"plan kind {kind!r}: allowed {', '.join(KINDS)}")
            if not isinstance(per_block, (list, tuple)) or not per_block:
                raise ValueError(f"plan steps[{kind!r}] must be a non-empty list with one step list per block")
            if num_blocks is None:
                num_blocks = len(per_block)
            elif len(per_block) != num_blocks:
                raise ValueError(f"plan steps[{kind!r}] has {len(per_block)} blocks, other kinds have {num_blocks}")
            rows = []
            for b, steps in enumerate(per_block):
                if not isinstance(steps, (list, tuple)) or any(
                    isinstance(x, bool) or not isinstance(x, int) for x in steps
                ):
                    raise ValueError(f"plan steps[{kind!r}][{b}] must be a list of integer steps, got {steps!r}")
                steps = list(steps)
                bad = [s for s in steps if not 0 <= s < self.num_steps]
                if bad:
                    raise ValueError(f"plan steps[{kind!r}][{b}] has step {bad[0]}: allowed 0..{self.num_steps - 1}")
                if sorted(set(steps)) != steps:
                    raise ValueError(f"plan steps[{kind!r}][{b}] must be sorted without repeats, got {steps}")
                if not steps or steps[0] != 0:
                    raise ValueError(f"plan steps[{kind!r}][{b}] must compute step 0 (nothing is cached before it)")
                rows.append(tuple(steps))
            clean[kind] = tuple(rows)
        object.__setattr__(self, "steps", _Steps(clean))  # frozen: set once, here

    # -- construction ---------------------------------------------------------------------------------------------
    @classmethod
    def shared(cls, num_steps: int, steps, num_blocks: int, kinds=("attn", "mlp"), **kw) -> "CachePlan":
        """Every block and kind computes on the same `steps` (FORA's shape, with any step set)."""
        steps = sorted({int(s) for s in steps})
        return cls(num_steps, {k: [list(steps) for _ in range(num_blocks)] for k in kinds}, **kw)

    @classmethod
    def fora(
        cls, num_steps: int, interval: int, num_blocks: int, kinds=("attn", "mlp"), order: int = 0
    ) -> "CachePlan":
        """FORA's static schedule at `interval` as a plan (for budgets and as the reference to beat)."""
        return cls.shared(
            num_steps, fora_full_steps(num_steps, interval), num_blocks, kinds, order=order, name=f"fora N={interval}"
        )

    # -- reading --------------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(next(iter(self.steps.values())))

    @property
    def kinds(self) -> tuple[str, ...]:
        return tuple(k for k in KINDS if k in self.steps)

    @property
    def computed_calls(self) -> int:
        """Module calls computed per transformer call over the run: the plan's cost."""
        return sum(len(s) for rows in self.steps.values() for s in rows)

    @property
    def shared_steps(self) -> list[int] | None:
        """The step list when every block and kind shares one, else `None`."""
        rows = [s for per_block in self.steps.values() for s in per_block]
        return list(rows[0]) if all(r == rows[0] for r in rows) else None

    def computes(self, kind: str, block: int, step: int) -> bool:
        if kind not in self.steps:
            return True
        return step in self.steps[kind][block]

    def matrix(self, kind: str) -> list[list[bool]]:
        """blocks x steps: True where the module computes (for plan maps)."""
        return [[s in set(row) for s in range(self.num_steps)] for row in self.steps[kind]]

    def check_model(self, num_blocks: int, kinds) -> None:
        """Raise `ValueError` unless the plan fits a model with `num_blocks` blocks and module `kinds`: it must name
        exactly the model's kinds. Where some blocks lack a kind (SD3's last block), `computed_calls` counts entries
        with no module; the run record counts what ran."""
        if self.num_blocks != num_blocks:
            raise ValueError(f"plan {self.name!r} is for {self.num_blocks} blocks, the model has {num_blocks}")
        kinds = [k for k in KINDS if k in kinds]
        if list(self.kinds) != kinds:
            raise ValueError(
                f"plan {self.name!r} names the kinds {list(self.kinds)}, the model has {kinds}: name "
                "every kind (list every step for a kind that should always compute)"
            )

    def check_num_steps(self, num_steps: int) -> None:
        if num_steps != self.num_steps:
            raise ValueError(
                f"plan {self.name!r} is for {self.num_steps} steps, the run has {num_steps}; "
                "calibrate a plan for this number of steps"
            )

    # -- files ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "format": "fora-plan/1",
            "name": self.name,
            "num_steps": self.num_steps,
            "order": self.order,
            "computed_calls": self.computed_calls,
            "steps": {kind: [list(steps) for steps in rows] for kind, rows in self.steps.items()},
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "CachePlan":
        if not isinstance(data, dict) or data.get("format") != "fora-plan/1":
            raise ValueError("not a FORA cache plan (expected a JSON object with format 'fora-plan/1')")
        try:
            plan = cls(
                data["num_steps"], data["steps"], data.get("order", 0), data.get("name", "plan"), data.get("meta", {})
            )
        except KeyError as e:
            raise ValueError(f"cache plan is missing {e.args[0]!r}") from None
        if data.get("computed_calls", plan.computed_calls) != plan.computed_calls:
            raise ValueError(
                f"cache plan says computed_calls={data['computed_calls']}, its steps count "
                f"{plan.computed_calls}: the file was edited inconsistently"
            )
        return plan

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path) -> "CachePlan":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"plan file {str(path)!r} does not exist") from None
        except OSError as e:
            raise ValueError(f"plan file {str(path)!r} cannot be read: {e.strerror or e}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"plan file {str(path)!r} is not JSON: {e}") from None
        return cls.from_dict(data)

    def __repr__(self):
        shared = self.shared_steps
        where = f"steps={shared}" if shared is not None else "per-block steps"
        return (
            f"CachePlan(name={self.name!r}, num_steps={self.num_steps}, blocks={self.num_blocks}, "
            f"kinds={self.kinds}, order={self.order}, computed_calls={self.computed_calls}, {where})"
        )


def extrapolation_weights(step: int, history_steps: list[int]) -> list[float]:
    """Coefficients of the Newton differences for predicting at `step` from computed steps (oldest first).

    With points s_0 < ... < s_k (s_k the latest) and divided differences d_0 = y(s_k), d_j the j-th difference
    ending at s_k, the prediction is sum_j w_j d_j with w_0 = 1, w_j = prod_{i<j} (step - s_{k-i}).
    """
    weights, w = [1.0], 1.0
    for i in range(len(history_steps) - 1):
        w *= step - history_steps[-1 - i]
        weights.append(w)
    return weights
