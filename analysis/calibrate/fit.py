"""A cache schedule calibrated on the model from its own step x step similarity: this project's policy `calibrated`.

The algorithm (one shared step schedule for all blocks and modules, at an exact budget of computed calls):

1. **Record.** Run the model uncached on calibration samples (classes and seeds of their own, never the ones an
   evaluation uses) and keep every attention/MLP output of every block at every step, as FORA's observers see it
   (a fixed, evenly spaced subset of tokens when the model is large). From them, per module, the Gram matrix
   G[s, t] = <f(s), f(t)> over steps: the step x step similarity map, unnormalised.
2. **Cost of reuse.** Reusing at step b what was computed at step a costs the relative error of the stale output,
   e0(a, b) = |f(a) - f(b)| / |f(b)|; with order-1 extrapolation from computed steps p < a it costs
   e1(p, a, b) = |f(a) + (b - a) / (a - p) (f(a) - f(p)) - f(b)| / |f(b)|. Both come from G alone; each is averaged
   over blocks and modules.
3. **Propose.** For a budget of K computed steps (by default FORA N's count, `len(full_steps(T, N))`), dynamic
   programming finds the K steps, step 0 among them, that minimise sum_b w(b) e(b)^p over the reuse steps b, where
   e(b) is the cost of b given the computed steps before it. One proposal per exponent p in {0.5, 1, 2, 4} (how much
   a few large errors weigh against many small ones) and tilt in {-1, 0, 1} (w(b) = exp(tilt (1 - 2 b / (T-1))):
   early or late steps weigh more), plus FORA's own schedule.
4. **Judge by the image.** Each proposal runs on the calibration samples; the plan kept is the one whose final
   images are closest to the uncached ones (mean PSNR). Feature drift proposes, the image error decides, and
   FORA's schedule is among the candidates, so on calibration data the plan is never worse than FORA.

Scale: order 0 needs one T x T table and a DP over T states per computed step (T = 250 takes seconds); order 1
needs T^3 and T^2 states, so it is limited to T <= 100. The recording keeps as many tokens as 256 MiB hold (all of
them for the embedded model; a few per image for DiT-XL/2 at 50 steps, whose errors are then estimated from
a token subset of every sample, channel and step).

Why shared steps: on the embedded model per-block plans whose steps differed from block to block lost to FORA at
equal budget (a block fed by a neighbour that recomputed while it reused sees inputs its cache never saw), while a
shared schedule placed where the maps show low similarity won by several dB.

    python -m analysis.calibrate --model emoji-dit --steps 30 --match-interval 3 --order 1 --out plan.json
"""

import time

import numpy as np
import torch

from analysis.metrics.quality import psnr
from analysis.prompts import load_prompts, prompt_set
from fora import CachePlan, ForaConfig, apply_fora, full_steps, remove_fora
from fora.generate import generate_batch, is_text_conditional
from fora.generate import num_classes as class_count
from fora.specs import KINDS

# calibration samples: seeds far from any evaluation's, classes from the top of the label range
CALIBRATION_SEED = 900_000
EXPONENTS = (0.5, 1.0, 2.0, 4.0)
MAX_STEPS_ORDER1 = 100  # order 1's cost table is T^3 per module and its DP visits T^2 states per computed step
TILTS = (-1.0, 0.0, 1.0)


def calibration_set(num_classes: int, count: int = 8, seed: int = CALIBRATION_SEED) -> tuple[list[int], list[int]]:
    """(classes, seeds) of the calibration samples: the last `count` classes (wrapping), seeds seed, seed+1, ..."""
    classes = [(num_classes - 1 - i) % num_classes for i in range(count)]
    return classes, [seed + i for i in range(count)]


class _FeatureRecorder:
    """FORA observer keeping each computed module output (a token subset, float16, on CPU) for Gram matrices."""

    def __init__(self, budget_bytes: int):
        self.budget = budget_bytes  # for one call's features: a finished call's are folded into the Grams
        self.features: dict[tuple[int, str], list[torch.Tensor]] = {}
        self.index: dict[str, torch.Tensor] = {}  # per kind and call: a prompt's text stream has its own length
        self.num_steps = 0
        self.num_modules = 1  # set once FORA is applied
        self._grams: dict[tuple[int, str], np.ndarray] = {}

    def on_run_start(self, event):
        self._fold()
        self.num_steps = event.num_steps
        self.index = {}

    def on_run_end(self, event):
        self._fold()

    def _fold(self) -> None:
        """A finished call's features into the Gram sums: summed over calls, a Gram is the one of all the calls'
        samples in one batch (its entries are sums over the samples' tokens)."""
        for key, steps in self.features.items():
            f = torch.stack(steps).double()
            gram = (f @ f.T).numpy()
            self._grams[key] = self._grams[key] + gram if key in self._grams else gram
        self.features = {}

    def __call__(self, obs):
        out = obs.output.detach()
        if out.ndim == 2:
            out = out[:, None]
        index = self.index.get(obs.kind)
        if index is None:  # the same tokens for every module and step of a kind, as many as the budget holds
            per_token = out.shape[0] * out.shape[-1] * 2  # bytes of one token, whole batch, float16
            tokens = out.shape[1]
            keep = max(1, min(tokens, self.budget // (per_token * self.num_steps * self.num_modules)))
            index = self.index[obs.kind] = torch.linspace(0, tokens - 1, keep).round().long()
        feats = out[:, index].reshape(-1).to("cpu", torch.float16)
        self.features.setdefault((obs.block, obs.kind), []).append(feats)

    def grams(self) -> dict[tuple[int, str], np.ndarray]:
        self._fold()
        return dict(self._grams)


def record_grams(
    pipe, classes, seeds, steps: int, guidance: float, budget_bytes: int = 256 * 2**20, options: tuple = ()
):
    """Run uncached on the calibration samples (`classes`: class ids, or prompts for a text model): (per-module
    Gram matrices over steps, the uncached images)."""
    recorder = _FeatureRecorder(budget_bytes)
    handle = apply_fora(pipe, ForaConfig(interval=1))
    handle.add_observer(recorder)
    recorder.num_modules = len(handle.modules)
    try:
        images = generate_batch(pipe, classes, seeds, steps, guidance, options)
    finally:
        remove_fora(pipe)
    return recorder.grams(), images


def reuse_costs(grams: dict, order: int) -> np.ndarray:
    """Mean relative error of reusing over modules: e0[a, b] (order 0) or e1[p, a, b] (order 1, p < a; p = a
    holds e0[a, b], used when only one step was computed before b)."""
    total = None
    for g in grams.values():
        d = np.diag(g)
        norm_b = np.sqrt(np.maximum(d, 1e-30))
        e0 = np.sqrt(np.maximum(d[:, None] + d[None, :] - 2 * g, 0)) / norm_b[None, :]
        if order == 0:
            e = e0
        else:
            t = len(d)
            p, a, b = np.meshgrid(np.arange(t), np.arange(t), np.arange(t), indexing="ij")
            c = np.where(a > p, (b - a) / np.maximum(a - p, 1), 0.0)
            sq = (
                (d[a] + d[b] - 2 * g[a, b])
                + 2 * c * (d[a] - g[a, p] - g[a, b] + g[b, p])
                + c**2 * (d[a] + d[p] - 2 * g[a, p])
            )
            e = np.sqrt(np.maximum(sq, 0)) / norm_b[b]
            e = np.where(a > p, e, e0[a, b])
        total = e if total is None else total + e
    return total / len(grams)


def best_steps(costs: np.ndarray, num_full: int, exponent: float = 1.0, tilt: float = 0.0) -> list[int]:
    """The `num_full` computed steps (step 0 first) minimising sum over reuse steps b of w(b) e(b)^exponent.

    Dynamic programming over the last computed step (order 0, `costs` = e0[a, b]) or the last two (order 1,
    `costs` = e1[p, a, b]); exact for the cost model."""
    order = costs.ndim - 2
    t = costs.shape[-1]
    if not 1 <= num_full <= t:
        raise ValueError(f"budget of {num_full} computed steps out of range: allowed 1..{t}")
    w = np.exp(tilt * (1 - 2 * np.arange(t) / max(t - 1, 1)))
    c = w[None, :] * np.power(costs, exponent) if order == 0 else w[None, None, :] * np.power(costs, exponent)
    # seg(state, n): cost of the reuse steps between the last computed step a and the next computed step n
    cum = np.concatenate([np.zeros(c.shape[:-1] + (1,)), np.cumsum(c, axis=-1)], axis=-1)

    def seg(state, n):
        a = state[-1]
        row = cum[a] if order == 0 else cum[state[0], a]
        return row[n] - row[a + 1]

    best = {((0,) if order == 0 else (0, 0)): (0.0, None)}  # state -> (cost, previous state)
    history = [best]
    for _ in range(num_full - 1):
        nxt = {}
        for state, (cost, _) in best.items():
            a = state[-1]
            for n in range(a + 1, t):
                new = (n,) if order == 0 else (a, n)
                total = cost + seg(state, n)
                if new not in nxt or total < nxt[new][0]:
                    nxt[new] = (total, state)
        best = nxt
        history.append(best)
    end = min(best, key=lambda s: best[s][0] + seg(s, t))
    steps, state = [], end
    for layer in reversed(history):
        steps.append(state[-1])
        state = layer[state][1]
    return sorted(set(steps))


def calibrate(
    pipe,
    num_steps: int,
    match_interval: int = 3,
    order: int = 0,
    guidance: float = 3.0,
    num_samples: int = 8,
    seed: int = CALIBRATION_SEED,
    num_full: int | None = None,
    recording: tuple | None = None,
    options: tuple = (),
) -> CachePlan:
    """Calibrate a shared schedule for `pipe` at `num_steps` (the module docstring has the algorithm).

    The budget is FORA N = `match_interval`'s number of computed steps unless `num_full` gives it. Returns a plan
    named `calibrated` (order 0) or `calibrated-o1` whose `meta` records the calibration and every candidate's score.
    `recording`: what `record_grams` returned for these calibration samples, to calibrate several budgets from one
    recording. A text model calibrates on the shipped calibration prompts (`analysis.prompts`, never the evaluated
    ones), one seed each, with the family's pipeline `options`.
    """
    if order not in (0, 1):
        raise ValueError(f"order={order!r}: calibration searches orders 0 and 1")
    if order == 1 and num_steps > MAX_STEPS_ORDER1:
        raise ValueError(
            f"order 1 searches pairs of computed steps (T^3 costs): allowed T <= {MAX_STEPS_ORDER1}, got "
            f"{num_steps}; calibrate order 0 for longer schedules"
        )
    ForaConfig(interval=match_interval).check_num_steps(num_steps)  # names a bad N or T before anything runs
    fora_steps = full_steps(num_steps, match_interval)
    if num_full is None:
        num_full = len(fora_steps)
    if not 1 <= num_full <= num_steps:
        raise ValueError(f"budget of {num_full} computed steps out of range: allowed 1..{num_steps}")
    if num_samples < 1:
        raise ValueError(f"num_samples={num_samples}: must be >= 1")
    if is_text_conditional(pipe):
        prompts = load_prompts(prompt_set(pipe, "calibration"))
        classes = [prompts[i % len(prompts)] for i in range(num_samples)]  # prompts, for a text model
        seeds = [seed + i for i in range(num_samples)]
    else:
        classes, seeds = calibration_set(class_count(pipe), num_samples, seed)
    t0 = time.perf_counter()
    grams, reference = recording or record_grams(pipe, classes, seeds, num_steps, guidance, options=options)
    costs = reuse_costs(grams, order)
    num_blocks = 1 + max(b for b, _ in grams)
    kinds = tuple(k for k in KINDS if any(kk == k for _, kk in grams))  # the plan's (observers' context_attn: no)
    candidates = {"fora": fora_steps} if len(fora_steps) == num_full else {}
    for exponent in EXPONENTS:
        for tilt in TILTS:
            candidates.setdefault(f"p={exponent:g} tilt={tilt:+g}", best_steps(costs, num_full, exponent, tilt))
    scores, seen = {}, {}
    for label, steps in candidates.items():
        key = tuple(steps)
        if key not in seen:
            plan = CachePlan.shared(num_steps, steps, num_blocks, kinds, order=order)
            apply_fora(pipe, ForaConfig(plan=plan))
            try:
                images = generate_batch(pipe, classes, seeds, num_steps, guidance, options)
            finally:
                remove_fora(pipe)
            seen[key] = float(np.mean([min(psnr(x, y), 100.0) for x, y in zip(images, reference)]))
        scores[label] = seen[key]
    chosen = max(scores, key=scores.get)
    name = "calibrated" if order == 0 else f"calibrated-o{order}"
    meta = {
        "algorithm": "shared steps; DP on mean relative reuse error from step x step Gram matrices; "
        "candidates judged by final-image PSNR on calibration samples",
        "model": type(pipe.transformer).__name__,
        "num_blocks": num_blocks,
        "guidance": guidance,
        ("calibration_prompts" if is_text_conditional(pipe) else "calibration_classes"): classes,
        "calibration_seeds": seeds,
        "match_interval": match_interval,
        "budget_steps": num_full,
        "chosen": chosen,
        "candidate_psnr": scores,
        "candidate_steps": {k: list(v) for k, v in candidates.items()},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    return CachePlan.shared(num_steps, candidates[chosen], num_blocks, kinds, order=order, name=name, meta=meta)
