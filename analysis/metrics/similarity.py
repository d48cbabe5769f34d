"""Per-layer cosine similarity of attention/MLP outputs across sampling steps (the paper's Fig. 2), recorded live.

`SimilarityRecorder` is a FORA observer: it sees exactly the tensors the cache stores, as they are computed.

What the maps mean:
- neighbour map (layer x step, one per kind): cell (k, s) = cos(f_k(s), f_k(s')) where f_k(s) is the flattened
  output of block k's module at step s (whole batch, guidance halves included) and s' is the previous step at which
  the module was computed: s-1 on the uncached baseline, the previous full step under FORA. Reuse steps and the
  first step are NaN (blank): nothing was computed there.
- pairwise map (step x step, for chosen blocks): cell (s, t) = cos(f_k(s), f_k(t)) over computed steps.

Memory stays bounded for real models. The neighbour map streams: it keeps only the previous output of each module,
in float16 (DiT-XL/2 256, batch 2: 28 blocks x 2 kinds x 1.2 MB = 66 MB). The pairwise maps keep, per chosen block
and step, a fixed, evenly spaced subset of the tokens (all channels, whole batch) in float16, as many tokens as
`budget_bytes` allows for the run: every token for small models (exact up to float16), 41 of 256 for DiT-XL/2
with 250 steps and 4 blocks under the default 384 MB. The cosine over a token subset estimates the full one; its
error against the exact value is tested on a small model (tests/test_analysis.py).
"""

import time

import numpy as np
import torch

from fora.observers import Observation, RunEvent


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine similarity of two tensors flattened, computed in float32."""
    a, b = a.reshape(-1).float(), b.reshape(-1).float()
    return float(torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-12))


def default_blocks(num_blocks: int) -> list[int]:
    """First, two middle and last block, as the paper's 0/9/18/27 of 28."""
    picks = [0, round((num_blocks - 1) / 3), round(2 * (num_blocks - 1) / 3), num_blocks - 1]
    return sorted(set(picks))


class SimilarityRecorder:
    r"""
    FORA observer recording the neighbour maps for every block and the pairwise maps for chosen blocks.

    Args:
        num_blocks (`int`): transformer blocks of the model.
        kinds (`tuple[str, ...]`, defaults to `("attn", "mlp")`): module kinds to record.
        blocks (`list[int]`, *optional*): blocks for the pairwise maps; default `default_blocks(num_blocks)`.
        budget_bytes (`int`, defaults to 384 MiB): memory for the pairwise features of one run.
    """

    def __init__(
        self, num_blocks: int, kinds=("attn", "mlp"), blocks: list[int] | None = None, budget_bytes: int = 384 * 2**20
    ):
        self.num_blocks = num_blocks
        self.kinds = tuple(kinds)
        self.blocks = list(blocks) if blocks is not None else default_blocks(num_blocks)
        bad = [b for b in self.blocks if not 0 <= b < num_blocks]
        if bad:
            raise ValueError(f"blocks={bad} out of range: allowed 0..{num_blocks - 1}")
        self.budget_bytes = budget_bytes
        self.seconds = 0.0  # time spent recording, so that timings can leave it out
        self.num_steps = 0
        self._maps = None

    # -- run lifecycle -------------------------------------------------------------------------------------------
    def on_run_start(self, event: RunEvent) -> None:
        self.num_steps = event.num_steps
        self.full_steps = list(event.full_steps)
        self.neighbour = {k: np.full((self.num_blocks, event.num_steps), np.nan) for k in self.kinds}
        self.timesteps = np.full(event.num_steps, np.nan)
        self.steps_seen = 0
        self._prev: dict[tuple[int, str], tuple[int, torch.Tensor]] = {}
        self._features: dict[tuple[int, str], torch.Tensor] = {}
        self._observed: dict[tuple[int, str], list[int]] = {}
        self._token_index: dict[str, torch.Tensor] = {}  # per kind: a context stream has its own token count
        self.tokens_kept = None
        self._maps: dict[tuple[int, str], np.ndarray] | None = None  # the step x step maps, once the run has ended

    def on_run_end(self, event: RunEvent) -> None:
        """Keep only the maps: the step x step ones are computed now and the features behind them dropped, so that
        a finished run holds kilobytes to megabytes (DiT-XL/2 at 250 steps: 8 maps of 250 x 250 in float32, 2 MB)
        where its features held up to `budget_bytes`."""
        t0 = time.perf_counter()
        self._prev.clear()
        self._maps = {key: self._pairwise_from_features(key) for key in self._features}
        self._features.clear()
        self.seconds += time.perf_counter() - t0

    def __call__(self, obs: Observation) -> None:
        if obs.kind not in self.kinds or not self.num_steps:
            return
        t0 = time.perf_counter()
        out = obs.output.detach()
        key = (obs.block, obs.kind)
        prev = self._prev.get(key)
        if prev is not None:
            self.neighbour[obs.kind][obs.block, obs.step] = cosine(out, prev[1])
        self._prev[key] = (obs.step, out.to(torch.float16, copy=True))
        if obs.timestep is not None:
            self.timesteps[obs.step] = obs.timestep
        self.steps_seen = max(self.steps_seen, obs.step + 1)
        if obs.block in self.blocks:
            self._store_pairwise(key, obs.step, out)
        if out.is_cuda:
            torch.cuda.synchronize(out.device)
        self.seconds += time.perf_counter() - t0

    def _store_pairwise(self, key, step: int, out: torch.Tensor) -> None:
        x = out.reshape(out.shape[0], -1, out.shape[-1]) if out.dim() >= 3 else out.reshape(out.shape[0], 1, -1)
        index = self._token_index.get(key[1])
        if index is None:
            batch, tokens, width = x.shape
            per_token = batch * width * 2 * self.num_steps * len(self.blocks) * len(self.kinds)
            keep = int(max(1, min(tokens, self.budget_bytes // per_token)))
            index = self._token_index[key[1]] = torch.linspace(0, tokens - 1, keep).round().long().unique()
            index = self._token_index[key[1]] = index.to(x.device)
            if self.tokens_kept is None:  # the first kind's (the image stream's): what reports quote
                self.tokens_kept = (len(index), tokens)
        feats = self._features.get(key)
        if feats is None:
            size = x.shape[0] * len(index) * x.shape[-1]
            feats = self._features[key] = torch.zeros(self.num_steps, size, dtype=torch.float16)
            self._observed[key] = []
        feats[step] = x.index_select(1, index).reshape(-1).to("cpu", torch.float16)
        self._observed[key].append(step)

    # -- results -------------------------------------------------------------------------------------------------
    def pairwise(self, block: int, kind: str) -> np.ndarray:
        """step x step cosine similarity for a chosen block; NaN where either step was not computed."""
        if block not in self.blocks:
            raise ValueError(f"block {block} has no pairwise map; recorded blocks: {self.blocks}")
        key = (block, kind)
        if self._maps is not None:
            maps = self._maps.get(key)
            return maps.astype(np.float64) if maps is not None else np.full((self.num_steps,) * 2, np.nan)
        return self._pairwise_from_features(key).astype(np.float64)

    def _pairwise_from_features(self, key) -> np.ndarray:
        result = np.full((self.num_steps, self.num_steps), np.nan, dtype=np.float32)
        if key not in self._features:
            return result
        steps = list(self._observed[key])
        f = self._features[key][steps].float()
        f = f / f.norm(dim=1, keepdim=True).clamp_min(1e-12)
        result[np.ix_(steps, steps)] = (f @ f.T).clamp(-1, 1).numpy()
        return result

    @property
    def memory_bytes(self) -> int:
        """Bytes held now: while recording, the pairwise features and the previous outputs kept for the neighbour
        map; once the run has ended, the maps."""
        if not self.num_steps:
            return 0
        feats = sum(f.numel() * f.element_size() for f in self._features.values())
        prev = sum(p.numel() * p.element_size() for _, p in self._prev.values())
        maps = sum(m.nbytes for m in (self._maps or {}).values()) + sum(m.nbytes for m in self.neighbour.values())
        return feats + prev + maps
