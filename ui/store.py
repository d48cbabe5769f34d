"""What the server keeps between requests, each bounded: uncached baselines, finished comparisons (the plots redraw
from them) and the cache plans the Policies tab calibrated, next to those shipped with the embedded model.

Kept in the main process only: on ZeroGPU a GPU function returns what belongs here and the handler puts it here.
"""

import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from analysis.metrics.similarity import SimilarityRecorder
from fora.generate import to_uint8


@dataclass(frozen=True)
class Redraws:
    """What the plots of a finished comparison redraw from, and all the server keeps of it: both runs' maps (a
    finished recorder keeps only its maps), the policy that ran and the model, and a video's frames. Kilobytes to a
    few megabytes for an image; a video's three clips are 3 x F x H x W x 3 bytes (40 MB at 13 frames of 480x832,
    290 MB at 81), counted in the store's byte bound."""

    baseline: SimilarityRecorder
    fora: SimilarityRecorder
    policy: str
    model: str
    clips: tuple = ()  # a video's (baseline, FORA, |difference|) frames, uint8 F x H x W x 3: the frame slider's

    @classmethod
    def of(cls, comparison, model: str) -> "Redraws":
        base, fora = comparison.baseline.images[0], comparison.fora.images[0]
        clips = tuple(to_uint8(c) for c in (base, fora, comparison.diff_image())) if np.ndim(base) == 4 else ()
        return cls(
            comparison.baseline.similarity, comparison.fora.similarity, comparison.metrics["policy"], model, clips
        )


def result_bytes(result) -> int:
    """Memory a kept `RunResult`, `Comparison` or `Redraws` holds: maps, per-step predictions, images."""
    if isinstance(result, Redraws):
        return result.baseline.memory_bytes + result.fora.memory_bytes + sum(c.nbytes for c in result.clips)
    runs = [result.baseline, result.fora] if hasattr(result, "fora") else [result]
    total = 0
    for run in runs:
        total += run.images.nbytes + sum(p.numel() * p.element_size() for p in run.predictions)
        total += run.similarity.memory_bytes if run.similarity is not None else 0
    return total


class BoundedCache:
    """Thread-safe LRU bounded by entry count and by bytes: what the server keeps between requests. One entry may
    take at most half the bytes (`largest`): a bigger one (an 81-frame video's run) is not kept, rather than push out
    what every other user keeps."""

    def __init__(self, size: int = 8, max_bytes: int = 512 * 2**20):
        self.size, self.max_bytes = size, max_bytes
        self.largest = max_bytes // 2
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

    def put(self, key, value) -> bool:
        """Keep `value` under `key`, the oldest entries making room; False (nothing kept, nothing pushed out) when it
        is over `largest`."""
        nbytes = result_bytes(value)
        if nbytes > self.largest:
            return False
        with self._lock:
            self._items[key] = (value, nbytes)
            self._items.move_to_end(key)
            while len(self._items) > self.size or self.nbytes > self.max_bytes:
                self._items.popitem(last=False)
            return key in self._items

    @property
    def nbytes(self) -> int:
        return sum(b for _, b in self._items.values())

    def __len__(self):
        return len(self._items)


BASELINES = BoundedCache(size=8)  # uncached runs by (model, request): changing only N reuses them
RESULTS = BoundedCache(size=16)  # `Redraws` of finished comparisons by token; sessions hold only the token

_SESSIONS_MAX = 4096
_current: OrderedDict = OrderedDict()  # per page session, the token of the comparison its boxes show (None: running)
_current_lock = threading.Lock()


def set_current(session: str | None, token: str | None) -> None:
    """What a session's Compare boxes show now: a run's token, or None while a run replaces it."""
    if not session:
        return
    with _current_lock:
        _current[session] = token
        _current.move_to_end(session)
        while len(_current) > _SESSIONS_MAX:
            _current.popitem(last=False)


def is_current(session: str | None, token: str | None) -> bool:
    """Whether a redraw with `token` still belongs on the session's page: a redraw sent just before a new run
    started carries the old token after the run has cleared it. True for a session this server has not seen."""
    with _current_lock:
        return not session or session not in _current or _current[session] == token


_PLANS_MAX = 64
_learned_plans: OrderedDict = OrderedDict()  # plans calibrated by the Policies tab, newest last
_shipped_plans: dict | None = None
_plans_lock = threading.Lock()


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
    with _plans_lock:
        return {**_shipped_plans, **_learned_plans}


def learn_plans(plans: dict) -> None:
    """Keep plans a run calibrated (in the main process: a ZeroGPU worker returns them), the newest 64."""
    with _plans_lock:
        for key, plan in plans.items():
            _learned_plans[key] = plan
            _learned_plans.move_to_end(key)
        while len(_learned_plans) > _PLANS_MAX:
            _learned_plans.popitem(last=False)
