"""How noisy is this machine for paired timing? `python -m benchmarks.noise_floor --rounds 30`.

Times the embedded model (T=30, one sample with guidance, one torch thread) at a few intervals against uncached with
`paired_speedups` (interleaved rounds, CPU time on a CPU) and prints, per interval, the median speedup and the spread
of single pairs relative to the median: their standard deviation, and the robust one (1.4826 x the median absolute
deviation), which the rare far-off pairs that the median ignores do not inflate. From each, the pairs two identical
measurements would need to agree within 5% about 19 times in 20 if pairs were independent (the median of n pairs has
a standard error of about 1.25 sd / sqrt(n)): n >= (1.96 * sqrt(2) * 1.25 * sd / 5%)^2. The sd overstates what the
median needs (the few far-off pairs it inflates are the ones the median ignores), the robust one understates it on a
shared VM, where pairs are not independent (a slow spell moves several pairs in a row, and the speedup with them):
on this project's VM, two runs of 30 rounds gave 3-7 (robust) and 19-64 (sd) pairs, and two sweeps of 20 pairs
agreed within 1.4% per row for N = 1..7 and 6.1% at N = 10 (with two earlier orders of the pairs: 4.2%, and
1.1-5.2% at N = 10); `benchmarks.sweep_repeat --cli-pairs 20` is the direct test.
"""

import argparse
import math
import statistics

import torch

from fora import ForaConfig
from fora.generate import Request, generate
from fora.loading import load_pipeline
from fora.timing import paired_speedups


def pairs_needed(sd: float, agree: float = 0.05) -> int:
    """Pairs for two medians to differ by less than `agree` (relative) about 95% of the time, given a pair's sd."""
    return max(1, math.ceil((1.96 * math.sqrt(2) * 1.2533 * sd / agree) ** 2))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=30, help="pairs per interval (interleaved rounds)")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 3, 7])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu", help="cpu (CPU time, default) or wall")
    args = p.parse_args(argv)
    if args.rounds < 3:
        p.error(f"--rounds={args.rounds}: at least 3 are needed for a spread")
    torch.set_num_threads(args.threads)
    pipe = load_pipeline("emoji-dit", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    request = Request(label="cat", steps=args.steps, guidance=3.0)
    configs = [ForaConfig(interval=n) for n in args.intervals]

    def progress(r, k):
        if r and r % 10 == 0:
            print(f"round {r} of {k}", flush=True)

    ratios = paired_speedups(
        pipe, lambda: generate(pipe, request), configs, pairs=args.rounds, clock=args.clock, on_round=progress
    )
    print(f"emoji-dit T={args.steps}, {args.threads} thread(s), {args.clock} clock, {args.rounds} interleaved pairs")
    for n, r in zip(args.intervals, ratios):
        sd = statistics.stdev(r.ratios) / r.ratio
        robust = 1.4826 * statistics.median(abs(x - r.ratio) for x in r.ratios) / r.ratio
        print(
            f"  N={n:>2}: median {r.ratio:.3f}x (range {r.low:.3f}-{r.high:.3f}); one pair's sd {sd:.1%}, robust "
            f"{robust:.1%}; pairs for two runs to agree within 5% if pairs were independent: "
            f"{pairs_needed(robust)} (robust) to {pairs_needed(sd)} (sd)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
