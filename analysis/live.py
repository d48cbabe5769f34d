"""What the web demo runs, without the widgets: the model allowlist, input checks, the baseline cache, and a
FORA-vs-baseline comparison that streams partial results while it runs.

Settings come from the environment:
- `FORA_HUB_MODELS=1` lists the hub models (DiT-XL/2, PixArt-alpha) as available (default: only with CUDA and
  without `HF_HUB_OFFLINE`).
- `FORA_EXTRA_MODELS=path1,path2` lets an operator add pipeline folders or hub ids to the allowlist; the UI never
  loads anything a user types.
"""

import os
import queue
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from fora import ForaConfig
from fora.generate import Request, class_id, is_text_conditional
from fora.loading import MODELS, ModelLoadError, load_pipeline

from .experiment import RunResult, baseline_config, compare_runs, observe_run
from .similarity import default_blocks  # noqa: F401  (the app picks step x step blocks with it)

STEPS_RANGE = (2, 250)
SEED_MAX = 2**31 - 1
GUIDANCE_RANGE = (1.0, 20.0)
PROMPT_MAX = 500


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
            choices.append(ModelChoice(spec.key, f"{spec.key}: {spec.description}", ok,
                                       "" if ok else f"weights missing in {spec.source}"))  # fmt: skip
        else:
            reason = "" if hub_ok else "needs a GPU and Hugging Face Hub access (an operator can set FORA_HUB_MODELS=1)"
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


def check_inputs(pipe, label, prompt, steps, interval, seed, guidance) -> Request:
    """Turn raw UI values into a `Request`, or raise `ValueError` naming the bad value and the allowed range."""
    def integer(name, value, lo, hi):  # noqa: E306
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={value!r} is not a number; allowed {lo}..{hi}") from None
        if not v.is_integer() or not lo <= v <= hi:
            raise ValueError(f"{name}={value!r} out of range: allowed integers {lo}..{hi}")
        return int(v)

    steps = integer("steps", steps, *STEPS_RANGE)
    integer("interval", interval, 1, max(1, steps - 1))
    seed = integer("seed", seed, 0, SEED_MAX)
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise ValueError(f"guidance={guidance!r} is not a number; allowed {GUIDANCE_RANGE[0]}..{GUIDANCE_RANGE[1]}") from None
    if not GUIDANCE_RANGE[0] <= guidance <= GUIDANCE_RANGE[1]:
        raise ValueError(f"guidance={guidance} out of range: allowed {GUIDANCE_RANGE[0]}..{GUIDANCE_RANGE[1]}")
    if is_text_conditional(pipe):
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("prompt is empty: this model is text-conditional and needs a prompt")
        if len(prompt) > PROMPT_MAX:
            raise ValueError(f"prompt has {len(prompt)} characters: allowed 1..{PROMPT_MAX}")
        return Request(prompt=prompt, steps=steps, seed=seed, guidance=guidance)
    if label is None or str(label).strip() == "":
        raise ValueError("no class chosen: pick one of the model's classes")
    names = labels_of(pipe)
    if isinstance(label, str) and label in names:
        return Request(label=names.index(label), steps=steps, seed=seed, guidance=guidance)
    return Request(label=class_id(pipe, label), steps=steps, seed=seed, guidance=guidance)


def parse_blocks(text: str, num_blocks: int) -> tuple[int, ...] | None:
    """'0, 2, 5' -> (0, 2, 5); empty -> None (all blocks)."""
    text = (text or "").strip()
    if not text:
        return None
    try:
        blocks = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise ValueError(f"blocks={text!r}: give block indices separated by commas, e.g. 0,2,5") from None
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"blocks={list(bad)} out of range: allowed 0..{num_blocks - 1}")
    return blocks


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
class Progress:
    phase: str  # "baseline" or "fora"
    step: int  # steps done in this phase
    num_steps: int
    recorder: object  # the phase's SimilarityRecorder, partially filled
    baseline: RunResult | None = None  # set once the baseline is done
    comparison: object = None  # set at the end
    cached_baseline: bool = False


def stream_comparison(model_key: str, request: Request, config: ForaConfig, min_interval_s: float = 0.5):
    """Yield `Progress` while the baseline and the FORA run execute (in a worker thread), the last one complete.

    Partial updates come at most every `min_interval_s` seconds; errors in the run are raised here.
    """
    pipe, lock = get_model(model_key)
    config.check_num_steps(request.steps)
    key = (model_key, request)
    events: queue.Queue = queue.Queue()
    cached = BASELINES.get(key)

    last_put = [0.0]

    def on_step(phase):
        def report(step, num_steps, recorder):
            # rate-limited here, in the worker: waking the consumer every step costs GIL hand-offs (2x slower runs)
            now = time.perf_counter()
            if now - last_put[0] >= min_interval_s:
                last_put[0] = now
                events.put(("step", phase, step, num_steps, recorder))

        return report

    def work():
        try:
            with lock:  # one run at a time per model: hooks and the cache are per pipeline
                baseline = cached
                if baseline is None:
                    baseline = observe_run(pipe, request, baseline_config(config), on_step=on_step("baseline"))
                    BASELINES.put(key, baseline)
                events.put(("baseline", baseline))
                fora = observe_run(pipe, request, config, on_step=on_step("fora"))
            events.put(("done", compare_runs(baseline, fora)))
        except BaseException as e:  # handed to the caller, who raises it
            events.put(("error", e))

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    baseline = cached
    while True:
        event = events.get()
        if event[0] == "error":
            thread.join()
            raise event[1]
        if event[0] == "done":
            thread.join()
            comp = event[1]
            yield Progress("done", request.steps, request.steps, comp.fora.similarity, comp.baseline, comp, cached is not None)
            return
        if event[0] == "baseline":
            baseline = event[1]
            continue
        _, phase, step, num_steps, recorder = event
        yield Progress(phase, step + 1, num_steps, recorder, baseline, None, cached is not None)


def upscale(image: np.ndarray, size: int = 256) -> np.ndarray:
    """Nearest-neighbour upscale for display, so 32x32 pixels stay crisp; uint8 HxWx3."""
    img = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    factor = max(1, size // max(img.shape[:2]))
    return img.repeat(factor, axis=0).repeat(factor, axis=1)
