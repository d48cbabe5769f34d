"""The paper's Fig. 2 for any model, live: `python -m analysis.heatmaps --interval 1 --steps 30 --out fig2.html`.

One observed run; writes the layer x step maps (attention, MLP, and cross-attention for PixArt), the step x step
maps of the chosen blocks, and the schedule strip to one interactive HTML file.
"""

import argparse
import html

import plotly.io as pio

from analysis.comparison import num_blocks, observe_run
from analysis.metrics.similarity import default_blocks
from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip
from fora import ForaConfig
from fora.generate import Request
from fora.loading import ModelLoadError, load_pipeline, resolve_model


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m analysis.heatmaps", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="emoji-dit")
    p.add_argument("--interval", type=int, default=1, help="1: every step computed (the paper's figure)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--class", dest="class_label", default="0")
    p.add_argument("--prompt", default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--blocks", type=int, nargs="+", default=None, help="blocks for step x step maps")
    p.add_argument("--out", default="fig2.html")
    args = p.parse_args(argv)
    spec = resolve_model(args.model)
    try:
        pipe = load_pipeline(args.model)
        pipe.set_progress_bar_config(disable=True)
        request = Request(
            label=args.class_label,
            prompt=args.prompt,
            seed=args.seed,
            steps=args.steps or (spec.default_steps if spec else 30),
            guidance=args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0),
        )
        blocks = args.blocks or default_blocks(num_blocks(pipe))
        result = observe_run(pipe, request, ForaConfig(interval=args.interval), blocks=blocks)
    except (ValueError, ModelLoadError) as e:
        print(f"error: {e}")
        return 2
    rec = result.similarity
    figs = [schedule_strip(rec.num_steps, rec.full_steps, rec.timesteps)]
    figs += [neighbour_heatmap(rec, k) for k in rec.kinds]
    figs += [pairwise_heatmap(rec, b, k) for b in rec.blocks for k in ("attn", "mlp")]
    plots = "".join(pio.to_html(f, full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    model = html.escape(args.model)  # a folder's name may hold anything
    with open(args.out, "w") as f:
        f.write(
            f"<!doctype html><html><head><meta charset='utf-8'><title>{model} similarity</title></head>"
            f"<body style='font-family:sans-serif'><h1>{model}: feature similarity across steps "
            f"(N={args.interval})</h1>{plots}</body></html>"
        )
    print(f"{result.run.summary()}; recorder held {rec.memory_bytes / 2**20:.1f} MiB; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
