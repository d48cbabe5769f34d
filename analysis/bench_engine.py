"""Benchmark of the FORA engine itself: `python -m analysis.bench_engine`.

(a) overhead of the hooks at interval=1 against no FORA, on a small model where per-call hook cost shows
    (6 blocks, width 128, 30 steps): target <= 1%.
(b) speedup of the whole pipeline call at N = 2, 3, 5 on the DiT-XL/2 block width (hidden 1152, 16 heads, patch 2,
    32x32 latent, batch 2 for guidance, random weights, 4 blocks) against the ideal T / full steps: target >= 95%.

One thread, paired runs (with and without FORA back to back), median of the pair ratios: this machine is noisy,
and pairing cancels slow drifts.
"""

import argparse
import statistics
import time

import torch

from fora import ForaConfig, apply_fora, ideal_speedup, remove_fora
from fora.generate import Request, generate


def paired_ratio(pipe, request: Request, config: ForaConfig, pairs: int) -> tuple[float, float, float]:
    """Median of (time without FORA / time with FORA) over back-to-back pairs; also both median times."""
    generate(pipe, request)  # warm-up
    ratios, plain, cached = [], [], []
    for i in range(pairs):
        order = (False, True) if i % 2 == 0 else (True, False)  # alternate which runs first
        times = {}
        for use in order:
            if use:
                apply_fora(pipe, config)
            t0 = time.perf_counter()
            generate(pipe, request)
            times[use] = time.perf_counter() - t0
            if use:
                remove_fora(pipe)
        ratios.append(times[False] / times[True])
        plain.append(times[False])
        cached.append(times[True])
    return statistics.median(ratios), statistics.median(plain), statistics.median(cached)


@torch.no_grad()
def reuse_step_fraction(transformer, repeats: int = 5) -> float:
    """Time of a transformer call on a reuse step over that of a full step (what FORA cannot skip)."""
    cfg = transformer.config
    x = torch.randn(2, cfg.in_channels, cfg.sample_size, cfg.sample_size)
    t, y = torch.tensor([500, 500]), torch.tensor([1, cfg.num_embeds_ada_norm])
    n = repeats + 2  # steps 0 and n-1 are full, 1..n-2 reuse
    handle = apply_fora(transformer, ForaConfig(interval=n - 1), num_steps=n)
    for run in range(2):  # the first run warms up
        times = []
        for _ in range(n):
            t0 = time.perf_counter()
            transformer(x, timestep=t, class_labels=y)
            times.append(time.perf_counter() - t0)
    assert handle.last_run.full_steps == [0, n - 1]
    remove_fora(transformer)
    return statistics.median(times[1:-1]) / statistics.mean([times[0], times[-1]])


def small_pipeline():
    from fora.emoji.train import build_pipeline, build_transformer

    torch.manual_seed(0)
    pipe = build_pipeline(build_transformer(layers=6, width=128, heads=4, patch=2).eval())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def dit_xl_width_pipeline(blocks: int):
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                                        num_layers=blocks, sample_size=32, patch_size=2)  # fmt: skip
    vae = AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",),
                        up_block_types=("UpDecoderBlock2D",), latent_channels=4, norm_num_groups=8)  # fmt: skip
    pipe = DiTPipeline(transformer.eval(), vae.eval(), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(args):
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.pairs} pairs per ratio, median of pair ratios")
    if args.only in ("a", "all"):
        overhead(args)
    if args.only in ("b", "all"):
        speedups(args)


def overhead(args):
    pipe = small_pipeline()
    request = Request(label=0, steps=30, seed=0, guidance=3.0)
    ratio, plain, cached = paired_ratio(pipe, request, ForaConfig(interval=1), args.pairs)
    print(f"(a) overhead at interval=1, 6 blocks x 128, 30 steps, batch 2: no FORA {plain * 1e3:.1f} ms, "
          f"FORA {cached * 1e3:.1f} ms, overhead {(1 / ratio - 1) * 100:+.2f}% (target <= 1%)")  # fmt: skip



def speedups(args):
    pipe = dit_xl_width_pipeline(args.blocks)
    request = Request(label=207, steps=args.steps, seed=0, guidance=4.0)
    r = reuse_step_fraction(pipe.transformer)
    print(f"    a reuse step costs {r * 100:.1f}% of a full step here (adaLN, norms, residuals, final layer)")
    for n in args.intervals:
        ratio, plain, cached = paired_ratio(pipe, request, ForaConfig(interval=n), max(2, args.pairs // 3))
        ideal = ideal_speedup(args.steps, n)
        full = args.steps / ideal
        reachable = args.steps / (full + (args.steps - full) * r)
        print(f"(b) N={n}: DiT-XL/2 width, {args.blocks} blocks, T={args.steps}, batch 2: no FORA {plain:.2f}s, "
              f"FORA {cached:.2f}s, speedup {ratio:.3f}x, ideal {ideal:.3f}x, {ratio / ideal * 100:.1f}% of ideal "
              f"(target >= 95%); {ratio / reachable * 100:.1f}% of the {reachable:.3f}x that the uncached parts allow")  # fmt: skip


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=15, help="paired runs for (a); (b) uses a third of it")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=4)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--only", choices=["a", "b", "all"], default="all", help="run only (a) or (b)")
    main(p.parse_args())
