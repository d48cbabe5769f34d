"""FORA on each family at its native width, on this machine: `python -m benchmarks.bench_families`.

For every family a transformer with the family's native width, heads and attention layout but one block of each
kind (random weights: timing does not depend on them), at the token count of a 512 px image (Wan: three latent
frames of 512 x 512), batch 1. Three transformer calls form a run under FORA N = 2 (steps 0 and 2 full, step 1
reuse); the run is repeated and each step's call timed (CPU time of one torch thread on a CPU, device time on a
GPU). Printed per family:

- a reuse step's cost relative to a full step (median of the reuse calls / median of the full calls), with the
  lean reuse step and, for the families that have one (PixArt, SD3.5, FLUX), with the plain one
  (`lean_reuse=False`, the block's own forward fed with the cached outputs);
- from it, the speedup it implies at T = 50, N = 3 (18 full steps, 32 reuse steps) against the ideal 50/18;
- the time of a full call (one block of each kind), the work a reuse step mostly replaces;
- the full model's cache at 512 px: the bytes each kind of block caches, measured from the outputs its modules
  compute (checked equal to the bytes the run's cache really held), times the model's count of such blocks; and
  the time to read it back at an H100-class HBM bandwidth (3.35 TB/s): is the cache cheap to read back?

`--speedup` measures instead, per family, the speedup of whole sampling loops (`--steps` T calls, a real diffusers
scheduler, the same one-block model) at N = 3 and at N = 1 (the hooks' overhead), timed in ABBA pairs by
`fora.timing.paired_speedups` (median and range of `--pairs` pair ratios).

`--tiny` runs the same code on small widths (a smoke test). The numbers are per block, so they hold for the full
model only as far as its other per-step work (embeddings, final layer) is small beside its blocks.
"""

import argparse
import statistics
import time

import torch

from analysis.memory import H100_SXM_BANDWIDTH
from fora import ForaConfig, apply_fora, ideal_speedup, remove_fora
from fora.apply import find_blocks
from fora.timing import clock_label, format_speedup, paired_speedups, time_call

LEAN_FAMILIES = ("sd3.5-medium", "flux.1", "pixart-sigma")  # blocks with a lean reuse step besides the plain one


def families(tiny: bool) -> dict:
    """family -> (transformer builder, inputs builder, blocks of the full model)."""
    from diffusers import (
        FluxTransformer2DModel,
        Lumina2Transformer2DModel,
        PixArtTransformer2DModel,
        QwenImageTransformer2DModel,
        SanaTransformer2DModel,
        SD3Transformer2DModel,
        WanTransformer3DModel,
    )

    s = 8 if tiny else 1  # width divisor for --tiny
    side = 8 if tiny else 64  # latent side at 512 px (f8 VAE)
    text = 8 if tiny else 256

    def t(*shape):
        return torch.randn(*shape)

    return {
        "sd3.5-medium": (
            lambda: SD3Transformer2DModel(
                sample_size=side,
                patch_size=2,
                in_channels=16,
                num_layers=1,
                attention_head_dim=64,
                num_attention_heads=24 // s,
                joint_attention_dim=4096 // s,
                caption_projection_dim=1536 // s,
                pooled_projection_dim=2048 // s,
                out_channels=16,
                dual_attention_layers=(0,),
                qk_norm="rms_norm",
            ),
            lambda: {
                "hidden_states": t(1, 16, side, side),
                "encoder_hidden_states": t(1, text, 4096 // s),
                "pooled_projections": t(1, 2048 // s),
            },
            {"JointTransformerBlock": 24},
        ),
        "flux.1": (
            lambda: FluxTransformer2DModel(
                patch_size=1,
                in_channels=64,
                num_layers=1,
                num_single_layers=1,
                attention_head_dim=128 // s,
                num_attention_heads=24 // s,
                joint_attention_dim=4096 // s,
                pooled_projection_dim=768 // s,
                axes_dims_rope=(4, 6, 6) if tiny else (16, 56, 56),
            ),
            lambda: {
                "hidden_states": t(1, (side // 2) ** 2, 64),
                "encoder_hidden_states": t(1, text, 4096 // s),
                "pooled_projections": t(1, 768 // s),
                "txt_ids": torch.zeros(text, 3),
                "img_ids": torch.zeros((side // 2) ** 2, 3),
            },
            {"FluxTransformerBlock": 19, "FluxSingleTransformerBlock": 38},
        ),
        "pixart-sigma": (
            lambda: PixArtTransformer2DModel(
                sample_size=side,
                num_layers=1,
                patch_size=2,
                attention_head_dim=72,
                num_attention_heads=16 // s,
                caption_channels=4096 // s,
                in_channels=4,
                cross_attention_dim=1152 // s,
                out_channels=8,
                attention_bias=True,
                activation_fn="gelu-approximate",
                num_embeds_ada_norm=1000,
                norm_type="ada_norm_single",
                norm_elementwise_affine=False,
                norm_eps=1e-6,
                use_additional_conditions=False,
            ),
            lambda: {
                "hidden_states": t(1, 4, side, side),
                "encoder_hidden_states": t(1, text, 4096 // s),
                "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
            },
            {"BasicTransformerBlock": 28},
        ),
        "sana-1600m": (
            lambda: SanaTransformer2DModel(
                in_channels=32,
                out_channels=32,
                num_attention_heads=20 // s,
                attention_head_dim=112,
                num_layers=1,
                num_cross_attention_heads=20 // s,
                cross_attention_head_dim=112,
                cross_attention_dim=20 // s * 112,
                caption_channels=2304 // s,
                sample_size=side // 2,
                patch_size=1,
            ),
            # Sana's DC-AE compresses 32x: 512 px is 16 x 16 latents; 1024 px (its native size) 32 x 32
            lambda: {"hidden_states": t(1, 32, side // 2, side // 2), "encoder_hidden_states": t(1, text, 2304 // s)},
            {"SanaTransformerBlock": 20},
        ),
        "wan2.1-1.3b": (
            lambda: WanTransformer3DModel(
                patch_size=(1, 2, 2),
                num_attention_heads=12 // s,
                attention_head_dim=128,
                in_channels=16,
                out_channels=16,
                text_dim=4096 // s,
                freq_dim=256,
                ffn_dim=8960 // s,
                num_layers=1,
            ),
            lambda: {"hidden_states": t(1, 16, 3, side, side), "encoder_hidden_states": t(1, text, 4096 // s)},
            {"WanTransformerBlock": 30},
        ),
        "lumina-image-2": (
            lambda: Lumina2Transformer2DModel(
                sample_size=side,
                patch_size=2,
                in_channels=16,
                hidden_size=2304 // s,
                num_layers=1,
                num_refiner_layers=1,
                num_attention_heads=24 // s,
                num_kv_heads=8 // s,
                multiple_of=256 // s,
                axes_dim_rope=(32, 32, 32),
                axes_lens=(300, 512, 512),
                cap_feat_dim=2304 // s,
            ),
            lambda: {
                "hidden_states": t(1, 16, side, side),
                "encoder_hidden_states": t(1, text, 2304 // s),
                "encoder_attention_mask": torch.ones(1, text, dtype=torch.bool),
            },
            {"Lumina2TransformerBlock": 26 + 2 + 2},
        ),
        "qwen-image": (
            lambda: QwenImageTransformer2DModel(
                patch_size=2,
                in_channels=64,
                out_channels=16,
                num_layers=1,
                attention_head_dim=128,
                num_attention_heads=24 // s,
                joint_attention_dim=3584 // s,
                axes_dims_rope=(16, 56, 56),
            ),
            lambda: {
                "hidden_states": t(1, (side // 2) ** 2, 64),
                "encoder_hidden_states": t(1, text, 3584 // s),
                "encoder_hidden_states_mask": torch.ones(1, text),
                "img_shapes": [[(1, side // 2, side // 2)]],
            },
            {"QwenImageTransformerBlock": 60},
        ),
    }


def measure(build, inputs, repeats: int, clock: str, lean: bool = True) -> dict:
    torch.manual_seed(0)
    model = build().eval()
    kwargs = inputs()
    calls = [(torch.tensor([ts]), step) for step, ts in enumerate((900.0, 500.0, 100.0))]
    # steps 0, 2 full; step 1 reuses
    handle = apply_fora(model, ForaConfig(interval=2, lean_reuse=lean), num_steps=3)
    times = {0: [], 1: [], 2: []}
    with torch.no_grad():
        for r in range(repeats + 1):  # the first run warms up; no observer while timed
            for timestep, step in calls:
                seconds = time_call(lambda: model(**kwargs, timestep=timestep, return_dict=False), "cpu", clock)
                if r:
                    times[step].append(seconds)
        by_class = {}  # then one observed run: the bytes each block caches, by block class
        classes = [type(b).__name__ for _, b, _ in find_blocks(model)]

        def count(obs):
            if obs.step == 0:
                cls = classes[obs.block]
                by_class[cls] = by_class.get(cls, 0) + obs.output.numel() * obs.output.element_size()

        handle.add_observer(count)
        for timestep, _ in calls:
            model(**kwargs, timestep=timestep, return_dict=False)
    held = handle.last_run.cache_bytes  # the peak bytes the run's cache really held
    remove_fora(model)
    if held != sum(by_class.values()):
        raise RuntimeError(f"the run held {held} cache bytes, its modules' outputs are {sum(by_class.values())}")
    full = statistics.median(times[0] + times[2])
    return {"reuse_fraction": statistics.median(times[1]) / full, "full_s": full, "bytes_by_class": by_class}


class Loop:
    """A sampling loop around one transformer, what `paired_speedups` times like a pipeline: each call sets a real
    diffusers scheduler's T timesteps and makes one transformer call per step (no text encoder, no VAE; the
    inputs stay the same, which changes no timing)."""

    def __init__(self, model, kwargs: dict, steps: int):
        from diffusers import FlowMatchEulerDiscreteScheduler

        self.transformer, self.kwargs, self.steps = model, kwargs, steps
        self.scheduler = FlowMatchEulerDiscreteScheduler()
        self.device = torch.device("cpu")

    def __call__(self):
        self.scheduler.set_timesteps(self.steps)
        with torch.no_grad():
            for t in self.scheduler.timesteps:
                self.transformer(**self.kwargs, timestep=t.expand(1), return_dict=False)


def speedups(table: dict, names: list, steps: int, pairs: int, clock: str) -> int:
    ideal = ideal_speedup(steps, 3)
    print(
        f"{'family':<16} {'N=3 speedup, range':>22} {'ideal':>6} {'N=1, range':>20}  "
        f"(T = {steps} loop, 512 px, one block of each kind, {clock_label(clock)}, {pairs} ABBA pairs)"
    )
    for name in names:
        build, inputs, _ = table[name]
        torch.manual_seed(0)
        loop = Loop(build().eval(), inputs(), steps)
        t0 = time.perf_counter()
        n3, n1 = paired_speedups(loop, loop, [ForaConfig(interval=3), ForaConfig(interval=1)], pairs, clock=clock)
        print(
            f"{name:<16} {format_speedup(n3.ratio, n3.low, n3.high):>22} {ideal:>5.2f}x "
            f"{format_speedup(n1.ratio, n1.low, n1.high):>20}  ({time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.bench_families", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", default=None, help="families to run (default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of 3 calls each, after one warm-up run")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu")
    p.add_argument("--tiny", action="store_true", help="small widths: a smoke test of this script")
    p.add_argument("--speedup", action="store_true", help="time whole loops at N = 3 and N = 1 in ABBA pairs")
    p.add_argument("--steps", type=int, default=7, help="--speedup: steps T of each loop (default 7)")
    p.add_argument("--pairs", type=int, default=3, help="--speedup: ABBA pairs per family (default 3)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    table = families(args.tiny)
    unknown = sorted(set(args.only or []) - set(table))
    if unknown:
        p.error(f"--only {unknown}: known families: {', '.join(table)}")
    if args.speedup:
        if args.steps < 4 or args.pairs < 1:
            p.error(f"--steps {args.steps} --pairs {args.pairs}: need steps >= 4 (N = 3 in range) and pairs >= 1")
        return speedups(table, args.only or list(table), args.steps, args.pairs, args.clock)
    print(
        f"{'family':<16} {'reuse/full':>10} {'(plain)':>8} {'T=50 N=3':>9} {'full call':>10} {'model cache':>12} "
        f"{'HBM read':>9}  (512 px, batch 1, one block of each kind, {args.clock} clock, {args.repeats} runs; "
        f"ideal at T=50 N=3: {ideal_speedup(50, 3):.2f}x)"
    )
    for name in args.only or table:
        build, inputs, model_blocks = table[name]
        t0 = time.perf_counter()
        r = measure(build, inputs, args.repeats, args.clock)
        plain = measure(build, inputs, args.repeats, args.clock, lean=False) if name in LEAN_FAMILIES else None
        model_bytes = sum(r["bytes_by_class"][cls] * n for cls, n in model_blocks.items())
        implied = 50 / (18 + 32 * r["reuse_fraction"])  # T / (full steps + reuse steps x their cost)
        print(
            f"{name:<16} {r['reuse_fraction']:>9.1%} "
            f"{format(plain['reuse_fraction'], '.1%') if plain else '-':>8} {implied:>8.2f}x "
            f"{r['full_s'] * 1e3:>7.0f} ms {model_bytes / 2**20:>8.0f} MiB "
            f"{model_bytes / H100_SXM_BANDWIDTH * 1e3:>6.2f} ms  ({sum(model_blocks.values())} blocks; "
            f"{time.perf_counter() - t0:.0f}s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
