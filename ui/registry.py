"""The models the app may load: the allowlist (and why a model is unavailable on this machine), each model loaded
once in the main process and kept with its lock.

Settings come from the environment:
- `FORA_HUB_MODELS=1` lists the hub models (DiT-XL/2, PixArt-alpha) as available (default: only with CUDA and
  without `HF_HUB_OFFLINE`).
- `FORA_EXTRA_MODELS=path1,path2` lets an operator add pipeline folders or hub ids to the allowlist; the UI never
  loads anything a user types.
"""

import os
import threading
from dataclasses import dataclass

import torch

from fora.generate import is_text_conditional
from fora.loading import MODELS, load_pipeline

DEFAULT_MODEL = "emoji-dit"


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
        if not spec.app:  # the newer families: from the command line and the library for now
            continue
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
