"""FORA on the full-size DiT-XL/2, prepared for a GPU session: `python -m benchmarks.bench_gpu --out gpu.jsonl`.

The DiT-XL/2 architecture (28 blocks, hidden 1152, 16 heads of 72, patch 2) with random weights (timing does not
depend on the weights) and the VAE of `facebook/DiT-XL-2-*` (sd-vae-ft-ema's architecture, random weights), float16,
batch 2 (one image with classifier-free guidance), at 256 and 512. For each resolution:
- the cache's read on this device: GB/s of a read of the cache's size next to a plain copy (`analysis.memory`), and
  the calculator's read time at the datasheet bandwidth; the cache bytes of a real FORA run;
- a reuse step's cost relative to a full step, official (original block forward) and lean;
- speedups by `paired_speedup` (no observers, warm-up, ABBA pairs, median with range, CUDA events), DDPM 250 steps
  and DDIM 50 steps, N = 2, 3, 5, eager and then compiled (regional: every block), whole call; the VAE decode is
  timed apart, so the loop-only speedup (what the paper's 2.80x at N=3 / 250 steps / 256 measures) is derived too.

Results print as they come (a timeout keeps what was printed) and append to `--out` as JSON lines. On an H100 the
default plan takes about 8-10 minutes; cut it with --resolutions/--schedulers/--intervals/--modes/--pairs.
Smoke test on a CPU: `python -m benchmarks.bench_gpu --device cpu --dtype float32 --blocks 2 --tiny-vae
--ddpm-steps 6 --ddim-steps 4 --intervals 3 --pairs 1 --resolutions 256`.
"""

import argparse
import json
import statistics
import time

import torch

from analysis.memory import H100_SXM_BANDWIDTH, MODEL_SHAPES, cache_bytes, measure_bandwidth
from benchmarks.bench_compile import compile_transformer
from benchmarks.bench_engine import reuse_step_fraction
from fora import ForaConfig, apply_fora, ideal_speedup, remove_fora
from fora.generate import Request, generate
from fora.timing import paired_speedup, time_call

PAPER_N3_250 = 2.80  # FORA paper, DiT-XL/2 256, 250 DDPM steps, N=3 (sampling loop only)
SCHEDULERS = {"ddpm": "DDPMScheduler", "ddim": "DDIMScheduler"}


def dit_xl2_pipeline(resolution: int, device, dtype, blocks: int = 28, tiny_vae: bool = False):
    """DiT-XL/2 at `resolution` with random weights; the real VAE architecture unless `tiny_vae`."""
    from diffusers import AutoencoderKL, DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=blocks,
        sample_size=resolution // 8,
        patch_size=2,
        num_embeds_ada_norm=1000,
    )
    if tiny_vae:
        vae = AutoencoderKL(
            block_out_channels=(8,),
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            norm_num_groups=8,
            down_block_types=("DownEncoderBlock2D",),
            up_block_types=("UpDecoderBlock2D",),
        )
    else:  # stabilityai/sd-vae-ft-ema, the VAE the DiT pipelines ship with
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            latent_channels=4,
            block_out_channels=(128, 256, 512, 512),
            down_block_types=("DownEncoderBlock2D",) * 4,
            up_block_types=("UpDecoderBlock2D",) * 4,
            layers_per_block=2,
            norm_num_groups=32,
            sample_size=resolution,
            scaling_factor=0.18215,
        )
    pipe = DiTPipeline(transformer.eval(), vae.eval(), DDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


def vae_decode_seconds(pipe, repeats: int = 3) -> float:
    """Median time of the pipeline's VAE decode of one latent (what a call spends after the loop)."""
    size = pipe.transformer.config.sample_size
    latents = torch.randn(1, 4, size, size, device=pipe.device, dtype=pipe.vae.dtype)
    with torch.no_grad():
        pipe.vae.decode(latents)
        return statistics.median(time_call(lambda: pipe.vae.decode(latents), pipe.device) for _ in range(repeats))


def emit(out, record: dict) -> None:
    if out:
        with open(out, "a") as f:
            f.write(json.dumps(record) + "\n")


def memory_section(args, pipe, resolution: int) -> None:
    shape = MODEL_SHAPES[f"dit-xl-2-{resolution}"] if args.blocks == 28 else None
    handle = apply_fora(pipe, ForaConfig(interval=3))
    generate(pipe, Request(label=207, steps=4, seed=0, guidance=4.0))
    measured_bytes = handle.last_run.cache_bytes
    remove_fora(pipe)
    bw = measure_bandwidth(measured_bytes, pipe.device)
    line = f"[{resolution}] cache of a real FORA run: {measured_bytes / 2**20:.1f} MiB; {bw}"
    if shape is not None and pipe.dtype == torch.float16:
        line += (
            f"; calculator: {cache_bytes(shape) / 2**20:.1f} MiB, "
            f"{cache_bytes(shape) / H100_SXM_BANDWIDTH * 1e3:.3f} ms at H100 SXM's 3.35 TB/s"
        )
    print(line, flush=True)
    emit(
        args.out,
        {
            "section": "memory",
            "resolution": resolution,
            "cache_bytes": measured_bytes,
            "read_s": bw.read_s,
            "read_GBps": bw.read_GBps,  # None: bound by the call's fixed cost
            "call_s": bw.call_s,
            "copy_GBps": bw.copy_GBps,
        },
    )
    for lean in (False, True):
        cost = reuse_step_fraction(pipe.transformer, ForaConfig(lean_reuse=lean), repeats=4, runs=2)
        print(
            f"[{resolution}] reuse step / full step ({'lean' if lean else 'official'}): {cost * 100:.2f}%", flush=True
        )
        emit(args.out, {"section": "reuse_cost", "resolution": resolution, "lean": lean, "fraction": cost})


def speed_section(args, pipe, resolution: int, mode: str, vae_s: float) -> None:
    import diffusers

    for name in args.schedulers:
        steps = args.ddpm_steps if name == "ddpm" else args.ddim_steps
        pipe.scheduler = getattr(diffusers, SCHEDULERS[name])()
        request = Request(label=207, steps=steps, seed=0, guidance=4.0)
        for n in args.intervals:
            t0 = time.perf_counter()
            r = paired_speedup(pipe, lambda: generate(pipe, request), ForaConfig(interval=n), pairs=args.pairs)
            ideal = ideal_speedup(steps, n)
            loop = (r.baseline_s - vae_s) / (r.fora_s - vae_s)
            paper = f"; paper {PAPER_N3_250:.2f}x (loop)" if (n, steps, resolution) == (3, 250, 256) else ""
            print(
                f"[{resolution} {mode} {name}-{steps} N={n}] call {r} (baseline {r.baseline_s:.3f}s, FORA "
                f"{r.fora_s:.3f}s); loop only {loop:.2f}x; ideal {ideal:.2f}x{paper} "
                f"[{time.perf_counter() - t0:.0f}s]",
                flush=True,
            )
            emit(
                args.out,
                {
                    "section": "speed",
                    "resolution": resolution,
                    "mode": mode,
                    "scheduler": name,
                    "steps": steps,
                    "interval": n,
                    "ideal": ideal,
                    "loop_speedup": loop,
                    "vae_s": vae_s,
                    **r.as_dict(),
                },
            )


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu for a smoke test")
    p.add_argument("--dtype", default="float16", choices=["float16", "bfloat16", "float32"])
    p.add_argument("--resolutions", type=int, nargs="+", default=[256, 512], choices=[256, 512])
    p.add_argument("--schedulers", nargs="+", default=["ddpm", "ddim"], choices=list(SCHEDULERS))
    p.add_argument("--ddpm-steps", type=int, default=250)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5])
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"])
    p.add_argument("--pairs", type=int, default=3, help="ABBA pairs per setting")
    p.add_argument("--blocks", type=int, default=28, help="28 is DiT-XL/2; fewer for a smoke test")
    p.add_argument("--tiny-vae", action="store_true", help="a one-block VAE instead of sd-vae-ft-ema's (smoke test)")
    p.add_argument("--out", default=None, help="append results as JSON lines here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; for a smoke test pass --device cpu (see the module docstring)")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}, {card}, {args.dtype}, DiT-XL/2 ({args.blocks} blocks), batch 2", flush=True)
    emit(args.out, {"section": "device", "card": card, "torch": torch.__version__, "dtype": args.dtype})
    for resolution in args.resolutions:
        pipe = dit_xl2_pipeline(resolution, device, getattr(torch, args.dtype), args.blocks, args.tiny_vae)
        vae_s = vae_decode_seconds(pipe)
        print(f"[{resolution}] VAE decode {vae_s * 1e3:.1f} ms", flush=True)
        memory_section(args, pipe, resolution)
        for mode in args.modes:
            if mode == "compiled":
                t0 = time.perf_counter()
                compile_transformer(pipe.transformer, "regional")
                generate(pipe, Request(label=207, steps=4, seed=0, guidance=4.0))
                apply_fora(pipe, ForaConfig(interval=3))
                generate(pipe, Request(label=207, steps=4, seed=0, guidance=4.0))
                remove_fora(pipe)
                print(f"[{resolution}] regional compile, both step kinds: {time.perf_counter() - t0:.1f}s", flush=True)
            speed_section(args, pipe, resolution, mode, vae_s)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
