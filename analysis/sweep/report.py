"""A sweep's files: `sweep.csv`, `sweep.json` and an interactive `report.html` whose numbers all come from the run.

Everything user-given (model name, prompt, class) is HTML-escaped: the app serves these reports for download, so a
prompt must never become markup or script.
"""

import csv
import html
import json
import os

import plotly.io as pio

from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip, tradeoff_plot
from analysis.report_files import SPEEDUP_COLUMNS, image_data_uri, json_safe, speedup_cell
from analysis.sweep.experiment import COLUMNS, SweepResult
from fora.generate import to_uint8


def write_outputs(result: SweepResult, out_dir: str, model: str) -> dict:
    """sweep.csv, sweep.json and report.html in `out_dir`; returns their paths by kind."""
    os.makedirs(out_dir, exist_ok=True)
    rows = [r.as_dict() for r in result.rows]
    paths = {
        k: os.path.join(out_dir, f) for k, f in (("csv", "sweep.csv"), ("json", "sweep.json"), ("html", "report.html"))
    }
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "model": model,
        "request": result.request.__dict__,
        "config": result.config.__dict__,
        "seeds": result.seeds,
        "prompts": result.prompts,
        "rows": rows,
        "cached_module_fraction": result.cached_module_fraction,
        "timing": result.timing,
        "per_seed": {str(k): v for k, v in result.per_seed.items()},  # in sample order: prompt-major, then seed
    }
    with open(paths["json"], "w") as f:
        json.dump(json_safe(meta), f, indent=1, allow_nan=False)
    with open(paths["html"], "w") as f:
        f.write(report_html(result, model))
    return paths


def _fmt(v) -> str:
    if isinstance(v, float):
        return "inf" if v == float("inf") else f"{v:.4g}"
    return html.escape(str(v))


def report_html(result: SweepResult, model: str) -> str:
    """One self-contained page: the table, the image grid and the plots (plotly inlined once)."""
    rows, images, recorders = [r.as_dict() for r in result.rows], result.images, result.recorders
    scale = max(1, 128 // images[next(iter(images))].shape[-3])  # a clip's frames: F x H x W x 3
    figs = [tradeoff_plot(rows)]
    base = recorders.get(1)
    if base is not None:
        figs += [neighbour_heatmap(base, k, f"uncached: {k} similarity to the previous step") for k in base.kinds]
        figs.append(pairwise_heatmap(base, base.blocks[-1], "attn"))
    for n, rec in recorders.items():
        if n != 1 and rec is not None:
            figs += [
                schedule_strip(rec.num_steps, rec.full_steps, rec.timesteps),
                neighbour_heatmap(rec, "attn", f"N={n}: attention similarity between consecutive full steps"),
            ]
            break
    plots = "".join(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs))
    head = "".join(f"<th>{c}</th>" for c in COLUMNS)
    cell = lambda r, c: speedup_cell(r, c) if c in SPEEDUP_COLUMNS else _fmt(r[c])
    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in COLUMNS) + "</tr>" for r in rows)
    grid = "".join(
        f"<figure><img src='{image_data_uri(to_uint8(images[n]), scale)}'><figcaption>N={n}</figcaption></figure>"
        for n in sorted(images)
    )
    req, esc = result.request, html.escape
    if result.prompts:
        samples = f"{len(result.prompts)} prompts x seeds {result.seeds}"
        first = f"prompt {result.prompts[0]!r}, seed {result.seeds[0]}"
    else:
        prompt = "" if req.prompt is None else f", prompt {req.prompt!r}"
        samples = f"label {req.label!r}{prompt}, seeds {result.seeds}"
        first = f"seed {result.seeds[0]}"
    model = esc(model)
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>FORA interval sweep: {model}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:4px 8px;text-align:right}}figure{{display:inline-block;margin:4px;text-align:center}}
img{{image-rendering:pixelated}}</style></head><body>
<h1>FORA interval sweep: {model}</h1>
<p>{req.steps} steps, guidance {req.guidance}, {esc(samples)}, settings {esc(str(result.config))}. Quality: median over
the samples, each against the uncached image of the same sample. Speed: {esc(result.timing)}; speedup is the median of the pair ratios, low/high their range.
Measured share of the uncached transformer time spent in the cached modules (attention, MLP):
{result.cached_module_fraction:.1%}, which bounds what caching can save.</p>
<table><tr>{head}</tr>{body}</table><h2>Images ({esc(first)})</h2>{grid}<h2>Plots</h2>{plots}
</body></html>"""
