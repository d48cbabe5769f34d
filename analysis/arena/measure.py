"""One setting of one method on the arena's harness: `Entry` (how to apply it, what it measured), `observe` (its
images, measured cost and maps over the seeds) and `bisect_threshold`, the search First Block Cache and DBCache share
for the threshold at a budget.

Inside `resumable(folder)` every observation is kept in `folder` under a key of everything that made it (the
model's weights, dtype, device, scheduler and library versions, the method's full config, seeds, classes or prompts,
steps, guidance, the model card's arguments), so an arena run stopped part-way resumes where it stopped: a rerun
loads what was observed and runs only the rest."""

import contextlib
import contextvars
import hashlib
import json
import os
import re
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from analysis.metrics.compute_map import ComputeMap
from fora import ForaConfig
from fora.generate import generate_batch
from fora.peers import apply_cache

EQUAL_COST = 0.05  # a setting costing at most 5% over the budget counts as equal cost (cheaper ones count too)


@dataclass
class Entry:
    """One setting of one method: how to apply it and what it measured."""

    policy: str
    setting: str
    config: object  # ForaConfig (FORA, plans) or a peer's config (fora.peers); None for uncached
    interval: int | None = None
    order: int | None = None
    threshold: float | None = None
    row: dict = field(default_factory=dict)
    images: np.ndarray | None = None  # one per seed
    maps: dict = field(default_factory=dict)  # kind -> blocks x steps bool (first seed)


_KEPT: contextvars.ContextVar[str | None] = contextvars.ContextVar("arena_observations", default=None)


@contextlib.contextmanager
def resumable(folder: str):
    """Keep every `observe` inside in `folder` and load it from there when asked again (module doc)."""
    os.makedirs(folder, exist_ok=True)
    token = _KEPT.set(folder)
    try:
        yield
    finally:
        _KEPT.reset(token)


def observation_key(pipe, entry: Entry, seeds, labels, steps: int, guidance: float, options: tuple) -> str:
    """A hash of everything an observation depends on (a plan by its full steps, not its summary)."""
    config = entry.config
    if isinstance(config, ForaConfig) and config.plan is not None:  # what it computes, not its record (meta)
        plan = config.plan
        described = [repr(replace(config, plan=None)), plan.num_steps, plan.order, plan.to_dict()["steps"]]
    else:
        described = repr(config)
    text = json.dumps(
        [
            model_fingerprint(pipe),
            entry.policy,
            entry.setting,
            described,
            [str(s) for s in seeds],
            [str(x) for x in labels],
            steps,
            guidance,
            [list(o) for o in options],
        ],
        default=str,
        sort_keys=True,
    )
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def model_fingerprint(pipe) -> str:
    """What the images depend on besides the method: the weights (each parameter's shape and first values: a
    retrained or other checkpoint differs), their dtype and device, the scheduler's config and the versions of the
    libraries that run it."""
    import cache_dit
    import diffusers
    import torch

    h = hashlib.sha256()
    for name, p in pipe.transformer.named_parameters():
        h.update(f"{name}{tuple(p.shape)}".encode())
        h.update(p.detach().flatten()[:64].float().cpu().numpy().tobytes())
    transformer = pipe.transformer
    parts = [type(pipe).__name__, str(transformer.dtype), transformer.device.type, repr(dict(pipe.scheduler.config))]
    parts += [torch.__version__, diffusers.__version__, getattr(cache_dit, "__version__", "")]
    h.update(json.dumps(parts, default=str).encode())
    return h.hexdigest()


def _load(path: str, entry: Entry) -> bool:
    try:
        with np.load(path) as z:
            entry.images = z["images"]
            calls = float(z["computed_calls"])
            entry.maps = {k[len("map_") :]: z[k] for k in z.files if k.startswith("map_")}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # a file cut short: observe again
        return False
    entry.row.update(computed_calls=calls)
    return True


def _save(path: str, entry: Entry) -> None:
    tmp = f"{path[:-4]}.tmp{os.getpid()}.npz"
    maps = {f"map_{k}": v for k, v in entry.maps.items()}
    np.savez(tmp, images=entry.images, computed_calls=entry.row["computed_calls"], **maps)
    os.replace(tmp, path)


def observe(
    pipe, entry: Entry, seeds: list[int], labels: list[int], steps: int, guidance: float, options: tuple = ()
) -> None:
    """Run `entry` once per seed (class `labels[i]`, or a prompt) with a `ComputeMap`: images, mean computed calls,
    the first seed's maps. `options`: a text model's card arguments (`ModelSpec.call_kwargs`). Inside `resumable`,
    an observation made before is loaded instead."""
    folder = _KEPT.get()
    path = None
    if folder is not None:
        path = os.path.join(folder, observation_key(pipe, entry, seeds, labels, steps, guidance, options) + ".npz")
        if os.path.isfile(path) and _load(path, entry):
            _describe(entry)
            return
    images, calls = [], []
    remove = apply_cache(pipe, entry.config)
    try:
        for i, (seed, label) in enumerate(zip(seeds, labels)):
            with ComputeMap(pipe.transformer) as cmap:
                images.append(generate_batch(pipe, [label], [seed], steps, guidance, options)[0])
            calls.append(cmap.computed_calls)
            if i == 0:
                entry.maps = {kind: cmap.matrix(kind) for kind in cmap.kinds}
    finally:
        remove(pipe)
    entry.images = np.stack(images)
    entry.row.update(computed_calls=float(np.mean(calls)))
    _describe(entry)
    if path is not None:
        _save(path, entry)


def _describe(entry: Entry) -> None:
    entry.row.update(
        policy=entry.policy,
        setting=entry.setting,
        interval=entry.interval,
        order=entry.order,
        threshold=entry.threshold,
    )


def bisect_threshold(
    pipe,
    make: Callable[[float], Entry],
    budget: float,
    seeds,
    labels,
    steps,
    guidance,
    iterations: int = 7,
    options: tuple = (),
) -> Entry:
    """The entry `make(threshold)` whose mean measured cost over `seeds` is closest to `budget`: threshold 1 first
    (the cheapest: the methods skip whenever they may, and the cost can drop there only, e.g. cache-dit's DBCache
    on the embedded model costs the same from 0.75 to 0.99 and less at 1), then, if it is under the budget,
    `iterations` bisection steps in [0, 1] (cost falls as the threshold rises): `iterations + 1` runs over the seeds
    at most. An entry still over the budget by more than `EQUAL_COST` says so in its setting: the closest reached,
    not an equal-cost one."""
    best = make(1.0)
    observe(pipe, best, seeds, labels, steps, guidance, options)
    lo, hi = 0.0, 1.0
    if best.row["computed_calls"] <= budget:
        for _ in range(iterations):
            mid = (lo + hi) / 2
            entry = make(mid)
            observe(pipe, entry, seeds, labels, steps, guidance, options)
            if _closer(entry.row["computed_calls"], best.row["computed_calls"], budget):
                best = entry
            lo, hi = (mid, hi) if entry.row["computed_calls"] > budget else (lo, mid)
    cost = best.row["computed_calls"]
    if cost > (1 + EQUAL_COST) * budget:
        best.setting = (
            re.sub(r" \(at [^)]*\)$", "", best.setting)
            + f" (closest reached: {cost:.0f} calls, over the {budget:.0f} of the budget)"
        )
        best.row["setting"] = best.setting
    return best


def _closer(cost: float, than: float, budget: float) -> bool:
    """Whether `cost` is a better match to `budget` than `than`: one that counts at the budget (at most `EQUAL_COST`
    over, cheaper included) before one that does not, then the nearer."""
    over = (cost > (1 + EQUAL_COST) * budget, abs(cost - budget))
    return over < (than > (1 + EQUAL_COST) * budget, abs(than - budget))
