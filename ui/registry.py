"""The models the app may load: the allowlist (and why a model is unavailable on this machine), the loaded models
with a lock each, and how many stay loaded.

Settings come from the environment:
- `FORA_HUB_MODELS=1` lists the hub models (DiT-XL/2, PixArt-alpha) as available (default: only with CUDA and
  without `HF_HUB_OFFLINE`).
- `FORA_EXTRA_MODELS=path1,path2` lets an operator add pipeline folders or hub ids to the allowlist; the UI never
  loads anything a user types.
- `FORA_MAX_LOADED_MODELS` (default 2): models kept loaded besides those pinned (the default model, and on ZeroGPU
  every model, loaded at start-up); loading one more unloads the least recently used one not running.

Loading holds only that model's loader lock: while a hub model downloads, requests for the loaded ones go on, and a
second request for the same model waits for the first load instead of starting another. A model loaded next to
others takes their text encoders where its files are the same (`fora.loading.load_pipeline(share_from=...)`): the
two PixArt-alpha checkpoints hold one T5-XXL between them.
"""

import contextlib
import gc
import logging
import os
import threading
import time
from dataclasses import dataclass

import torch

from fora.generate import is_text_conditional
from fora.loading import MODELS, ModelLoadError, load_pipeline

DEFAULT_MODEL = "emoji-dit"
log = logging.getLogger(__name__)


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
        if os.path.isabs(spec.source):  # an embedded model, shipped in assets/
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
        # a folder is labelled by its name: the page shows no server paths (the key, what loads, stays the path)
        name = os.path.basename(os.path.normpath(extra)) if os.path.isabs(extra) else extra
        choices.append(ModelChoice(extra, f"{name} (added by the operator)", True, ""))
    return [ModelChoice(c.key, c.label, False, _failed[c.key]) if c.key in _failed else c for c in choices]


def max_loaded() -> int:
    """`FORA_MAX_LOADED_MODELS`: how many unpinned models stay loaded (at least 1)."""
    raw = os.environ.get("FORA_MAX_LOADED_MODELS", "2")
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"FORA_MAX_LOADED_MODELS={raw!r} is not an integer; allowed 1 or more") from None
    if value < 1:
        raise ValueError(f"FORA_MAX_LOADED_MODELS={value} out of range: allowed 1 or more")
    return value


def on_zerogpu() -> bool:
    return os.environ.get("SPACES_ZERO_GPU", "").lower() not in ("", "0", "false", "no")


_models: dict[str, object] = {}  # loaded pipelines, least recently used first
_locks: dict[str, threading.Lock] = {}  # held while a request runs on the model
_loaders: dict[str, threading.Lock] = {}  # held while the model loads
_pinned: set[str] = {DEFAULT_MODEL}  # never unloaded
_failed: dict[str, str] = {}  # ZeroGPU: models whose start-up load failed, and why
_registry_lock = threading.Lock()  # guards the dicts above; never held while a model loads
_preloading = False  # ZeroGPU: loads are allowed only while `preload` runs
_load_failures: dict[str, tuple[float, Exception]] = {}  # the last failed load of each model: when, and why


def _choice(key: str) -> ModelChoice:
    choice = next((c for c in model_choices() if c.key == key), None)
    if choice is None:
        raise ValueError(f"unknown model {key!r}; allowed: {', '.join(c.key for c in model_choices())}")
    if not choice.available:
        raise ValueError(f"model {key!r} is unavailable here: {choice.reason}")
    return choice


def get_model(key: str):
    """The loaded pipeline for an allowlisted key (loaded on first use, then kept while it is used) and its lock.
    Take the lock with `hold` to run on it."""
    _choice(key)
    max_loaded()  # a bad bound is named before anything loads
    with _registry_lock:
        if key in _models:
            _models[key] = _models.pop(key)  # most recently used: last
            return _models[key], _locks[key]
        if on_zerogpu() and not _preloading:  # a worker forked before a later load would lack it (`preload`)
            why = _failed.get(key, "it was not loaded at start-up")
            raise ModelLoadError(f"model {key!r} is not available on this Space: {why}")
        loader = _loaders.setdefault(key, threading.Lock())
    waited_from = time.monotonic()
    with loader:  # one load per key; the other keys' requests go on meanwhile
        with _registry_lock:
            if key in _models:  # loaded by the request this one waited for
                return _models[key], _locks[key]
            failed = _load_failures.get(key)
            if failed is not None and failed[0] >= waited_from:  # the load this one waited for failed: say so
                raise ModelLoadError(str(failed[1]))
            # room first, so that the memory held peaks at the bound; the models a load shares from stay
            _evict(room_for=0 if key in _pinned else 1)
            others = list(_models.values())
        try:
            pipe = load_pipeline(key, share_from=others)
        except Exception as e:
            with _registry_lock:
                _load_failures[key] = (time.monotonic(), e)
            raise
        pipe.set_progress_bar_config(disable=True)
        with _registry_lock:
            _models[key], _locks[key] = pipe, threading.Lock()
            _evict(room_for=0, keep=key)
            return pipe, _locks[key]


def _evict(room_for: int, keep: str | None = None) -> None:
    """Unload least recently used, unpinned models that no request holds, until `room_for` more fit under
    `max_loaded()`; never `keep` (the one just loaded). Called with `_registry_lock` held."""
    bound = max_loaded() - room_for
    unpinned = [k for k in _models if k not in _pinned and k != keep]
    excess = len(unpinned) + (keep is not None and keep not in _pinned) - bound
    evicted = 0
    for key in unpinned:
        if evicted >= excess:
            break
        if not _locks[key].acquire(blocking=False):  # running: unloaded by a later load once free
            continue
        try:
            del _models[key]
            evicted += 1
            log.info("unloaded model %r to keep %d loaded", key, max_loaded())
        finally:
            _locks.pop(key).release()
    if evicted:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


@contextlib.contextmanager
def hold(key: str, pipe):
    """Run on `pipe` (from `get_model(key)`) holding its lock: requests never interleave on one pipeline, and a
    held model is never unloaded. Refuses, with a message to retry, if the model was unloaded in the meantime."""
    with _registry_lock:
        lock = _locks.get(key) if _models.get(key) is pipe else None
    gone = ModelLoadError(f"model {key!r} was unloaded to make room for another model meanwhile: run again")
    if lock is None:
        raise gone
    with lock:
        with _registry_lock:
            unloaded = _models.get(key) is not pipe  # between the look-up and the lock
        if unloaded:
            raise gone
        yield pipe


def preload() -> list[str]:
    """Load every available model now and pin it (ZeroGPU: GPU workers fork from this process, and one forked
    before a later load would not have that model). A model that fails to load is reported as unavailable, with the
    reason, instead of taking the app down. Returns the keys loaded."""
    global _preloading
    done, _preloading = [], True
    try:
        for choice in model_choices():
            if choice.available:
                _preload(choice.key, done)
    finally:
        _preloading = False
    return done


def _preload(key: str, done: list) -> None:
    _pinned.add(key)
    try:
        get_model(key)
        done.append(key)
    except Exception as e:  # noqa: BLE001 - out of memory, a CUDA error: the app starts without this model
        _pinned.discard(key)
        _failed[key] = f"its load at start-up failed ({type(e).__name__})"
        log.warning("model %r not preloaded: %s", key, e)


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
