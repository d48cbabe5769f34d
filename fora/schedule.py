"""The static FORA schedule (arXiv 2407.01425, Sec. 3), exactly as the official code computes it.

Steps are counted in sampling order, `step = 0 .. T-1`. The official code indexes them counting down,
`i = T-1-step`, and recomputes when `i == T-1` (the first step) or `i % N == 0`; every other step reuses the cache.
Example: T=50, N=3 -> 18 full steps (i = 49, 48, 45, ..., 3, 0).
"""


def is_full_step(step: int, num_steps: int, interval: int, window: tuple[int, int | None] = (0, None)) -> bool:
    """Whether sampling step `step` (0-based) of `num_steps` recomputes attention and MLP.

    Steps outside the caching window `[start, end)` always recompute; inside it the official rule applies.
    """
    if not 0 <= step < num_steps:
        raise ValueError(f"step={step} out of range: allowed 0..{num_steps - 1}")
    start, end = window
    in_window = start <= step and (end is None or step < end)
    i = num_steps - 1 - step
    return not in_window or i == num_steps - 1 or i % interval == 0


def full_steps(num_steps: int, interval: int, window: tuple[int, int | None] = (0, None)) -> list[int]:
    """The 0-based indices (sampling order) of the full steps of a run."""
    return [s for s in range(num_steps) if is_full_step(s, num_steps, interval, window)]


def ideal_speedup(num_steps: int, interval: int, window: tuple[int, int | None] = (0, None)) -> float:
    """T / (number of full steps): the speedup if attention and MLP were all of a step's time."""
    return num_steps / len(full_steps(num_steps, interval, window))
