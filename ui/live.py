"""What the web demo runs, without the widgets: the model allowlist, the bounded caches the server keeps, and a
FORA-vs-baseline comparison that streams partial results while it runs (input checks: `form.py`).

Settings come from the environment:
- `FORA_HUB_MODELS=1` lists the hub models (DiT-XL/2, PixArt-alpha) as available (default: only with CUDA and
  without `HF_HUB_OFFLINE`).
- `FORA_EXTRA_MODELS=path1,path2` lets an operator add pipeline folders or hub ids to the allowlist; the UI never
  loads anything a user types.
"""

import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from analysis.comparison import (
    Comparison,
    RunResult,
    baseline_config,
    compare_runs,
    default_clock,
    observe_run,
    timed_speedup,
)
from analysis.metrics.similarity import default_blocks  # noqa: F401  (the app picks step x step blocks with it)
from analysis.speed import SpeedRatio
from fora import ForaConfig
from fora.generate import Request, is_text_conditional
from fora.loading import MODELS, ModelLoadError, load_pipeline  # noqa: F401  (ModelLoadError: the app catches it)
from ui.stream import stream_job


@dataclass(frozen=True)
class ModelChoice:
    key: str
    label: str
    available: bool
    reason: str  # why not available


def model_choices() -> list[ModelChoice]:
    """Every model the demo may show, with whether this machine can load it and why not."""
    hub_ok = os.environ.get("FORA_HUB_MODELS", "").lower() in ("1", "true", "yes") or (
        torch.cuda.is_available() and os.environ.get("HF_HUB_OFFLINE", "0") in ("0", "", "false")
    )
    choices = []
    for spec in MODELS.values():
        if spec.key == "emoji-dit":
            ok = os.path.isfile(os.path.join(spec.source, "model_index.json"))
            choices.append(
                ModelChoice(
                    spec.key, f"{spec.key}: {spec.description}", ok, "" if ok else f"weights missing in {spec.source}"
                )
            )
        else:
            reason = (
                "" if hub_ok else "needs a GPU and Hugging Face Hub access (an operator can set FORA_HUB_MODELS=1)"
            )
            choices.append(ModelChoice(spec.key, f"{spec.key}: {spec.description}", hub_ok, reason))
    for extra in filter(None, (s.strip() for s in os.environ.get("FORA_EXTRA_MODELS", "").split(","))):
        choices.append(ModelChoice(extra, f"{extra} (added by the operator)", True, ""))
    return choices


_models: dict[str, object] = {}
_locks: dict[str, threading.Lock] = {}
_registry_lock = threading.Lock()


def get_model(key: str):
    """The loaded pipeline for an allowlisted key (loaded once, then cached) and its lock."""
    choice = next((c for c in model_choices() if c.key == key), None)
    if choice is None:
        raise ValueError(f"unknown model {key!r}; allowed: {', '.join(c.key for c in model_choices())}")
    if not choice.available:
        raise ValueError(f"model {key!r} is unavailable here: {choice.reason}")
    with _registry_lock:
        if key not in _models:
            pipe = load_pipeline(key)
            pipe.set_progress_bar_config(disable=True)
            _models[key] = pipe
            _locks[key] = threading.Lock()
        return _models[key], _locks[key]


def loaded(key: str):
    """The pipeline `get_model` loaded for `key`, without loading: what a GPU function (a forked ZeroGPU worker)
    uses, so that the model is loaded once, in the main process, and never again per worker. No lock is taken: a
    lock held by another thread at fork time would stay held in the child forever."""
    pipe = _models.get(key)
    if pipe is None:
        raise RuntimeError(f"model {key!r} is not loaded in the main process: call get_model first")
    return pipe


def labels_of(pipe) -> list[str]:
    """Class names in id order (class-conditional models), or [] for text models."""
    if is_text_conditional(pipe):
        return []
    id2label = getattr(pipe, "id2label", None)
    if id2label:
        return [id2label[i].split(",")[0].strip() for i in sorted(id2label)]
    labels = getattr(pipe, "labels", {}) or {}
    first = {}
    for name, cid in labels.items():
        first.setdefault(cid, name)
    return [first[i] for i in sorted(first)]


def result_bytes(result) -> int:
    """Memory a kept `RunResult` or `Comparison` holds: similarity features, per-step predictions, images."""
    runs = [result.baseline, result.fora] if hasattr(result, "fora") else [result]
    total = 0
    for run in runs:
        total += run.images.nbytes + sum(p.numel() * p.element_size() for p in run.predictions)
        total += run.similarity.memory_bytes if run.similarity is not None else 0
    return total


class BoundedCache:
    """Thread-safe LRU bounded by entry count and by bytes: what the server keeps between requests."""

    def __init__(self, size: int = 8, max_bytes: int = 512 * 2**20):
        self.size, self.max_bytes = size, max_bytes
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
                self.hits += 1
            else:
                self.misses += 1
            return item[0] if item is not None else None

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = (value, result_bytes(value))
            self._items.move_to_end(key)
            while len(self._items) > 1 and (len(self._items) > self.size or self.nbytes > self.max_bytes):
                self._items.popitem(last=False)

    @property
    def nbytes(self) -> int:
        return sum(b for _, b in self._items.values())

    def __len__(self):
        return len(self._items)


BASELINES = BoundedCache(size=8)  # uncached runs by (model, request): changing only N reuses them
RESULTS = BoundedCache(size=16)  # finished comparisons by token, for redrawing plots; sessions hold only the token


@dataclass
class MapsSnapshot:
    """The layer x step maps of a running recorder, copied: small enough to stream to the page every half second."""

    neighbour: dict
    timesteps: np.ndarray
    num_steps: int

    @classmethod
    def of(cls, recorder) -> "MapsSnapshot":
        return cls({k: v.copy() for k, v in recorder.neighbour.items()}, recorder.timesteps.copy(), recorder.num_steps)


@dataclass
class Progress:
    """One event of a streamed comparison. `phase`: "baseline" or "fora" while they run (`maps` set), "baseline
    done" (`baseline` set), "compared" (`comparison` set: images and maps final), "timed" (`speed` set)."""

    phase: str
    step: int = 0  # steps done in this phase
    num_steps: int = 0
    maps: MapsSnapshot | None = None
    baseline: RunResult | None = None
    comparison: Comparison | None = None
    speed: SpeedRatio | None = None
    clock: str = ""  # what timed the pairs: "cpu" (process CPU time) or "wall"


def stream_comparison(
    pipe,
    request: Request,
    config: ForaConfig,
    baseline: RunResult | None = None,
    pairs: int = 3,
    warmup: int = 1,
    min_interval_s: float = 0.5,
):
    """Yield `Progress` while the baseline (unless given) and the FORA run execute, then time them in pairs
    (`pairs=0`: not timed; the "timed" event comes with `speed=None`).

    Runs in a worker thread (`stream.stream_job`): closing the generator stops the work at the next denoising step;
    `None` comes as a heartbeat when nothing else did for `min_interval_s`.
    Everything yielded is on the CPU and picklable, so this can run in a forked ZeroGPU worker; the caller keeps
    what later requests need (the baseline, the comparison) in its own process.
    """
    config.check_num_steps(request.steps)

    def job(emit):
        def observe(phase):
            def report(step, num_steps, rec):
                emit(Progress(phase, step + 1, num_steps, MapsSnapshot.of(rec)), often=True)

            return report

        base = baseline
        if base is None:
            base = observe_run(pipe, request, baseline_config(config), on_step=observe("baseline")).to_cpu()
            emit(Progress("baseline done", request.steps, request.steps, baseline=base))
        fora = observe_run(pipe, request, config, on_step=observe("fora")).to_cpu()
        emit(Progress("compared", request.steps, request.steps, baseline=base, comparison=compare_runs(base, fora)))
        clock = default_clock(pipe)
        speed = timed_speedup(pipe, request, config, pairs=pairs, warmup=warmup, clock=clock) if pairs else None
        emit(Progress("timed", speed=speed, clock=clock))

    yield from stream_job(pipe.transformer, job, min_interval_s, heartbeat_s=max(min_interval_s, 0.1))


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so 32x32 pixels stay crisp; uint8 HxWx3."""
    img = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    factor = max(1, size // max(img.shape[:2]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)


_PLANS_MAX = 64
_learned_plans: OrderedDict = OrderedDict()  # plans calibrated by the Policies tab, newest last
_shipped_plans: dict | None = None


def known_plans() -> dict:
    """Calibrated plans by `policies.plan_key`: those shipped with the embedded model and those calibrated here."""
    global _shipped_plans
    if _shipped_plans is None:
        from analysis.arena.policies import shipped_plans

        try:
            _shipped_plans = shipped_plans()
        except (OSError, ValueError, KeyError) as e:  # a broken file must not take the app down: calibrate instead
            logging.getLogger(__name__).warning("shipped cache plans not loaded (%s); they will be calibrated", e)
            _shipped_plans = {}
    with _registry_lock:
        return {**_shipped_plans, **_learned_plans}


def learn_plans(plans: dict) -> None:
    """Keep plans a run calibrated (in the main process: a ZeroGPU worker returns them), the newest 64."""
    with _registry_lock:
        for key, plan in plans.items():
            _learned_plans[key] = plan
            _learned_plans.move_to_end(key)
        while len(_learned_plans) > _PLANS_MAX:
            _learned_plans.popitem(last=False)
