"""Interval sweep (the paper's Table 3, on the machine at hand): `python -m analysis.sweep --intervals 1 2 3 5`.

For every seed the uncached baseline runs once, then FORA at each interval with the same seed; each row is the
median over seeds of (interval, full steps, speedup, ideal speedup, PSNR, SSIM, cache bytes). Writes
`sweep.csv`, `sweep.json` and an interactive `report.html` (trade-off curve, heatmaps, image grid) whose numbers
all come from this run.
"""

import argparse
import base64
import csv
import io
import json
import os
import statistics
import time
from dataclasses import replace

import numpy as np
import plotly.io as pio
from PIL import Image
from tqdm.auto import tqdm

from fora import ForaConfig, apply_fora, remove_fora
from fora.generate import Request, to_uint8
from fora.loading import ModelLoadError, load_pipeline, resolve_model

from .experiment import baseline_config, compare_runs, num_blocks, observe_run
from .speed import cached_module_fraction, time_generation
from .plots import neighbour_heatmap, pairwise_heatmap, schedule_strip, tradeoff_plot

COLUMNS = ["interval", "full_steps", "speedup", "loop_speedup", "ideal_speedup", "psnr", "ssim", "mad",
           "cache_bytes", "fora_s", "baseline_s"]  # fmt: skip


def _median(values):
    finite = [v for v in values if np.isfinite(v)]
    return statistics.median(finite) if finite else float("inf")


def run_sweep(pipe, request: Request, intervals: list[int], seeds: list[int], config: ForaConfig | None = None,
              progress=None, timing_repeats: int = 0) -> dict:  # fmt: skip
    """Baseline once per seed, then each interval; returns rows (medians over seeds), images and the recorders.

    With `timing_repeats` > 0 the speed columns come from separate timed runs without observers (one warm-up, then
    the median of `timing_repeats` calls per interval, first seed); otherwise from the observed runs themselves.
    """
    config = config or ForaConfig()
    intervals = sorted(set(intervals))
    for n in intervals:
        replace(config, interval=n).check_num_steps(request.steps)
    if not seeds:
        raise ValueError("seeds is empty: give at least one seed")
    per_interval = {n: [] for n in intervals}
    images, recorders = {}, {}
    total = len(seeds) * (1 + len(intervals))
    bar = tqdm(total=total, desc="sweep", disable=progress is not None)
    done = 0
    for seed in seeds:
        req = replace(request, seed=seed)
        baseline = observe_run(pipe, req, baseline_config(config))
        done += 1
        bar.update(1)
        if progress:
            progress(done, total, f"seed {seed}: baseline")
        if seed == seeds[0]:
            images[1], recorders[1] = baseline.images[0], baseline.similarity
        for n in intervals:
            if n == 1:
                result, metrics = baseline, compare_runs(baseline, baseline).metrics
            else:
                result = observe_run(pipe, req, replace(config, interval=n))
                metrics = compare_runs(baseline, result).metrics
            per_interval[n].append(metrics)
            if seed == seeds[0]:
                images[n], recorders[n] = result.images[0], result.similarity
            done += 1
            bar.update(1)
            if progress:
                progress(done, total, f"seed {seed}: N={n}")
    first = replace(request, seed=seeds[0])
    if timing_repeats > 0:  # the uncached baseline is always timed, as the reference
        timed = {}
        for n in sorted({1, *intervals}):
            apply_fora(pipe, replace(config, interval=n))
            try:
                timed[n] = time_generation(pipe, first, repeats=timing_repeats, warmup=1)
            finally:
                remove_fora(pipe)
            if progress:
                progress(done, total, f"timing N={n}")
        for n in intervals:
            for m in per_interval[n]:
                m.update(fora_s=timed[n].call, baseline_s=timed[1].call, speedup=timed[1].call / timed[n].call,
                         loop_speedup=timed[1].loop / timed[n].loop)  # fmt: skip
    bar.close()
    blocks = pipe.transformer.transformer_blocks
    names = [f"transformer_blocks.{i}.{c}" for i in range(num_blocks(pipe)) for c in ("attn1", "attn2", "ff")
             if getattr(blocks[i], c, None) is not None]  # fmt: skip
    fraction = cached_module_fraction(pipe, first, names)
    rows = []
    for n in intervals:
        ms = per_interval[n]
        row = {k: _median([m[k] for m in ms]) for k in COLUMNS if k not in ("interval", "full_steps", "cache_bytes")}
        row.update(interval=n, full_steps=ms[0]["full_steps"], cache_bytes=ms[0]["cache_bytes"])
        rows.append({k: row[k] for k in COLUMNS})
    return {"rows": rows, "images": images, "recorders": recorders, "request": request.__dict__, "seeds": seeds,
            "per_seed": {n: per_interval[n] for n in intervals}, "cached_module_fraction": fraction,
            "timing": f"median of {timing_repeats} timed runs after a warm-up" if timing_repeats else "observed runs"}


def _png_data_uri(image: np.ndarray, scale: int) -> str:
    im = Image.fromarray(to_uint8(image))
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def write_outputs(result: dict, out_dir: str, model: str) -> dict:
    """sweep.csv, sweep.json and report.html in `out_dir`; returns their paths."""
    os.makedirs(out_dir, exist_ok=True)
    rows = result["rows"]
    paths = {k: os.path.join(out_dir, f) for k, f in (("csv", "sweep.csv"), ("json", "sweep.json"),
                                                      ("html", "report.html"))}  # fmt: skip
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {"model": model, "request": result["request"], "seeds": result["seeds"], "rows": rows,
            "cached_module_fraction": result["cached_module_fraction"], "timing": result["timing"],
            "per_seed": {str(k): v for k, v in result["per_seed"].items()}}  # fmt: skip
    with open(paths["json"], "w") as f:
        json.dump(meta, f, indent=1, default=lambda v: None if isinstance(v, float) and not np.isfinite(v) else v)
    with open(paths["html"], "w") as f:
        f.write(report_html(result, model))
    return paths


def report_html(result: dict, model: str) -> str:
    rows, images, recorders = result["rows"], result["images"], result["recorders"]
    scale = max(1, 128 // images[next(iter(images))].shape[0])
    figs = [tradeoff_plot(rows)]
    base = recorders.get(1)
    if base is not None:
        figs += [neighbour_heatmap(base, k, f"uncached: {k} similarity to the previous step") for k in base.kinds]
        figs.append(pairwise_heatmap(base, base.blocks[-1], "attn"))
    for n, rec in recorders.items():
        if n != 1 and rec is not None:
            figs += [schedule_strip(rec.num_steps, rec.full_steps, rec.timesteps), neighbour_heatmap(rec, "attn",
                     f"N={n}: attention similarity between consecutive full steps")]  # fmt: skip
            break
    plots = "".join(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs))
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(r[c])}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    grid = "".join(f"<figure><img src='{_png_data_uri(images[n], scale)}'><figcaption>N={n}</figcaption></figure>"
                   for n in sorted(images))  # fmt: skip
    req = result["request"]
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>FORA interval sweep: {model}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:4px;text-align:center}}
img{{image-rendering:pixelated}}</style></head><body>
<h1>FORA interval sweep: {model}</h1>
<p>{req['steps']} steps, guidance {req['guidance']}, label {req['label']!r}, prompt {req['prompt']!r},
seeds {result['seeds']}. Each row: median over seeds; quality against the uncached image of the same seed.
Speed: {result['timing']} (observed runs leave out the time spent recording similarity). Measured share of the
uncached transformer time spent in the cached modules (attention, MLP): {result['cached_module_fraction']:.1%},
which bounds what caching can save.</p>
<table><tr>{head}</tr>{body}</table><h2>Images (seed {result['seeds'][0]})</h2>{grid}<h2>Plots</h2>{plots}
</body></html>"""


def _fmt(v):
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.4g}"
    return str(v)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji-dit", help="model key, hub id or pipeline folder")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5, 7, 10], help="cache intervals N")
    p.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--class", dest="class_label", default="0", help="class id or name (class-conditional models)")
    p.add_argument("--prompt", default=None, help="prompt (text-conditional models)")
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--device", default=None)
    p.add_argument("--repeats", type=int, default=3, help="timed runs per interval for the speed columns (0: use the "
                   "observed runs)")
    p.add_argument("--out", default="out/sweep", help="output folder")
    args = p.parse_args(argv)
    spec = resolve_model(args.model)
    request = Request(label=args.class_label, prompt=args.prompt, steps=args.steps or (spec.default_steps if spec else 30),
                      guidance=args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0))
    try:
        pipe = load_pipeline(args.model, device=args.device)
        pipe.set_progress_bar_config(disable=True)
        t0 = time.perf_counter()
        result = run_sweep(pipe, request, args.intervals, args.seeds, timing_repeats=args.repeats)
    except (ValueError, ModelLoadError) as e:
        print(f"error: {e}")
        return 2
    paths = write_outputs(result, args.out, args.model)
    print(f"{'N':>3} {'full':>4} {'speedup':>8} {'ideal':>6} {'PSNR':>7} {'SSIM':>6}  cache")
    for r in result["rows"]:
        print(f"{r['interval']:>3} {r['full_steps']:>4} {r['speedup']:>7.2f}x {r['ideal_speedup']:>5.2f}x "
              f"{r['psnr']:>7.2f} {r['ssim']:>6.3f}  {r['cache_bytes'] / 2**20:.2f} MiB")  # fmt: skip
    print(f"share of uncached transformer time in the cached modules: {result['cached_module_fraction']:.1%} "
          f"(speed: {result['timing']})")
    print(f"sweep took {time.perf_counter() - t0:.1f}s; wrote {', '.join(paths.values())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
