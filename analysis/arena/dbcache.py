"""cache-dit's DBCache in the arena and the Policies tab: its threshold bisected to FORA N's measured cost, over a
small sweep of its other knobs (Fn, Bn, warm-up), without (`dbcache`) and with its TaylorSeer calibrator
(`dbcache-taylorseer`).

The first Fn and last Bn blocks compute at every step and the warm-up computes all of them, so each (Fn, Bn, warm-up)
has a cheapest cost, which threshold 1 reaches (cache-dit takes it as "always similar": every step after the warm-up
skips the middle blocks): T (Fn + Bn) + warm-up (L - Fn - Bn) block calls of L blocks, e.g. 35 of 180 per module kind
for Fn = 1, Bn = 0, warm-up 1 on the embedded model at T = 30 (FORA N = 6 computes 36). The sweep measures that
cheapest setting once and bisects the threshold only to the budgets within `EQUAL_COST` of it.
"""

from itertools import product

from analysis.arena.measure import EQUAL_COST, Entry, bisect_threshold, observe
from fora.peer_cache_dit import CacheDiTConfig, check_knobs

FN_BLOCKS = (1, 2)  # the small sweep of the arena
BN_BLOCKS = (0, 1)
WARMUPS = (1, 3)
TAYLORSEER_ORDERS = (1,)  # of `dbcache-taylorseer` (cache-dit recommends 1 or 2)
ALWAYS = 1.0  # cache-dit's "always similar" threshold: the setting's cheapest cost


def knobs(fn: int, bn: int, warmup: int, order: int | None = None) -> str:
    return f"Fn={fn} Bn={bn} warmup={warmup}" + ("" if order is None else f" order={order}")


def dbcache_entry(
    threshold: float, fn: int = 1, bn: int = 0, warmup: int = 1, order: int | None = None, interval=None, note=""
) -> Entry:
    """DBCache at these knobs (`order`: its TaylorSeer calibrator's, `None` without), as an arena entry."""
    config = CacheDiTConfig(threshold, fn, bn, warmup, order)
    setting = f"{knobs(fn, bn, warmup, order)} threshold={threshold:.4g}{note}"
    return Entry(config.name, setting, config, interval=interval, order=order, threshold=round(threshold, 6))


def dbcache_at_budget(
    pipe,
    budget: float,
    seeds,
    labels,
    steps,
    guidance,
    fn=1,
    bn=0,
    warmup=1,
    order=None,
    interval=None,
    iterations=7,
    options: tuple = (),
) -> Entry:
    """DBCache at the threshold whose mean measured cost over `seeds` is closest to `budget` (`bisect_threshold`);
    `interval`: the FORA N whose cost `budget` is, for the setting's name."""
    note = " (at budget)" if interval is None else f" (at N={interval}'s cost)"
    make = lambda x: dbcache_entry(x, fn, bn, warmup, order, interval, note)
    return bisect_threshold(pipe, make, budget, seeds, labels, steps, guidance, iterations, options)


def dbcache_sweep(
    pipe,
    budgets: dict[int, float],
    seeds,
    labels,
    steps: int,
    guidance: float,
    fn_blocks=FN_BLOCKS,
    bn_blocks=BN_BLOCKS,
    warmups=WARMUPS,
    orders=(None, *TAYLORSEER_ORDERS),
    iterations: int = 7,
    log=print,
    options: tuple = (),
) -> list[Entry]:
    """For each TaylorSeer order (`None`: plain DBCache) and (Fn, Bn, warm-up): the cheapest setting, then the
    threshold bisected to each budget (FORA N -> computed calls) it can reach. Settings the model cannot take
    (`fora.peer_cache_dit.check_knobs`: Fn + Bn leaving none of the blocks DBCache wraps to skip, HunyuanDiT's skip
    connections with Bn not 0 or min(Fn, L/2 - 1)) are left out, saying why."""
    entries = []
    for order, fn, bn, warmup in product(orders, fn_blocks, bn_blocks, warmups):
        name = knobs(fn, bn, warmup, order)
        try:  # Fn + Bn leaving no block to skip; HunyuanDiT's skip connections with Bn not 0 or min(Fn, L/2 - 1)
            check_knobs(pipe.transformer, fn, bn)
        except ValueError as e:
            log(f"dbcache {name}: {e}; left out")
            continue
        cheapest = dbcache_entry(ALWAYS, fn, bn, warmup, order, note=" (cheapest)")
        log(f"{cheapest.policy} {cheapest.setting}")
        observe(pipe, cheapest, seeds, labels, steps, guidance, options)
        entries.append(cheapest)
        floor = cheapest.row["computed_calls"]
        for n, budget in budgets.items():
            if floor > (1 + EQUAL_COST) * budget:
                log(f"{cheapest.policy} {name}: N={n}'s cost, {budget:.0f} calls, is out of reach (>= {floor:.0f})")
                continue
            log(f"{cheapest.policy} {name}: bisecting the threshold to N={n}'s cost of {budget:.0f} calls")
            entries.append(
                dbcache_at_budget(
                    pipe, budget, seeds, labels, steps, guidance, fn, bn, warmup, order, n, iterations, options
                )
            )
    return entries
