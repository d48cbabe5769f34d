"""FORA with torch.compile: `python -m benchmarks.bench_compile [--device cuda] [--mode regional|whole]`.

On the DiT-XL/2 block width (hidden 1152, 16 heads, patch 2, 32x32 latent, batch 2 for guidance, random weights,
`--blocks` blocks), it measures:
- the compile time: the first call after compiling, without FORA and then with FORA (the reuse-step graph), against
  a warm eager call;
- the graphs compiled (`torch._dynamo` counters) and that timing recompiles nothing;
- speedups by `paired_speedup`: FORA over no FORA in eager and compiled mode; and from the same medians, compiled
  over eager without FORA, and compiled FORA over the eager baseline.

`regional` compiles each transformer block (what diffusers' `compile_repeated_blocks` does for models that declare
`_repeated_blocks`); `whole` compiles the transformer (FORA's step bookkeeping then runs between two graph breaks;
applying FORA again after removing it recompiles there, so the paired timing is reported as not measurable).
"""

import argparse

import torch
from torch._dynamo.utils import counters

from benchmarks.bench_engine import dit_xl_width_pipeline
from fora import ForaConfig, apply_fora, ideal_speedup, remove_fora
from fora.generate import Request, generate
from fora.timing import CPU_CLOCK_HELP, clock_label, paired_speedup, time_call


def compile_transformer(transformer, mode: str = "regional", **compile_kwargs) -> None:
    """Compile in place: `regional` compiles every transformer block, `whole` the transformer's forward."""
    if mode == "regional":
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=True, **compile_kwargs)
    elif mode == "whole":
        transformer.compile(**compile_kwargs)
    else:
        raise ValueError(f"mode={mode!r}: allowed 'regional' or 'whole'")


def graphs() -> int:
    return counters["stats"]["unique_graphs"]


def measure(
    pipe, request: Request, config: ForaConfig, mode: str, pairs: int, label: str = "", clock: str = "wall"
) -> dict:
    """Eager and compiled timings of `pipe` for `request` (compiles `pipe.transformer` in place). Prints as it goes."""
    call = lambda: generate(pipe, request)
    ideal = ideal_speedup(request.steps, config.interval, config.window)
    eager = paired_speedup(pipe, call, config, pairs=pairs, clock=clock)
    print(
        f"{label}eager: FORA N={config.interval} {eager} (baseline {eager.baseline_s:.3f}s, FORA "
        f"{eager.fora_s:.3f}s; ideal {ideal:.2f}x)",
        flush=True,
    )
    warm = time_call(call, pipe.device)
    torch._dynamo.reset()
    counters.clear()
    compile_transformer(pipe.transformer, mode)
    first = time_call(call, pipe.device)
    base_graphs = graphs()
    apply_fora(pipe, config)
    first_fora = time_call(call, pipe.device)
    remove_fora(pipe)
    fora_graphs = graphs() - base_graphs
    print(
        f"{label}{mode} compile: first call {first:.1f}s without FORA ({base_graphs} graphs), {first_fora:.1f}s "
        f"with FORA (+{fora_graphs} graphs); a warm eager call takes {warm:.3f}s",
        flush=True,
    )
    try:
        with torch._dynamo.config.patch(error_on_recompile=True):  # a recompilation inside timing raises
            compiled = paired_speedup(pipe, call, config, pairs=pairs, clock=clock)
    except torch._dynamo.exc.RecompileError as e:
        # whole-model graphs guard the blocks' forward objects by identity, and applying FORA again makes new ones
        print(
            f"{label}{mode} compiled: applying FORA again recompiles, so the paired timing (which applies and "
            f"removes FORA around every FORA call) is not measured: {str(e).splitlines()[0]}",
            flush=True,
        )
        return {
            "mode": mode,
            "interval": config.interval,
            "eager": eager.as_dict(),
            "compile_first_call_s": first,
            "compile_first_fora_call_s": first_fora,
            "graphs": base_graphs,
            "fora_graphs": fora_graphs,
            "recompiles_on_reapply": True,
        }
    print(
        f"{label}{mode} compiled: FORA N={config.interval} {compiled} (baseline {compiled.baseline_s:.3f}s, FORA "
        f"{compiled.fora_s:.3f}s; ideal {ideal:.2f}x); compiled/eager without FORA "
        f"{eager.baseline_s / compiled.baseline_s:.2f}x; compiled FORA over the eager baseline "
        f"{eager.baseline_s / compiled.fora_s:.2f}x; no recompiles while timing",
        flush=True,
    )
    return {
        "mode": mode,
        "interval": config.interval,
        "steps": request.steps,
        "ideal": ideal,
        "eager": eager.as_dict(),
        "compiled": compiled.as_dict(),
        "compile_first_call_s": first,
        "compile_first_fora_call_s": first_fora,
        "warm_eager_call_s": warm,
        "graphs": base_graphs,
        "fora_graphs": fora_graphs,
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--mode", default="regional", choices=["regional", "whole"])
    p.add_argument("--blocks", type=int, default=2)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--interval", type=int, default=3)
    p.add_argument("--pairs", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"], help=f"wall time, or cpu: {CPU_CLOCK_HELP}")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), {clock_label(args.clock)}, DiT-XL/2 "
        f"width, {args.blocks} blocks, T={args.steps}, batch 2",
        flush=True,
    )
    pipe = dit_xl_width_pipeline(args.blocks, args.device, getattr(torch, args.dtype))
    measure(
        pipe,
        Request(label=207, steps=args.steps, seed=0, guidance=4.0),
        ForaConfig(interval=args.interval),
        args.mode,
        args.pairs,
        clock=args.clock,
    )


if __name__ == "__main__":
    main()
