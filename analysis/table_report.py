"""Writing and reading a Table 3 folder: `table.csv`, `table.json`, `grid.png` and `report.html`, and the figures
the report and the app's Table 3 tab draw from `table.json` (so the app needs only the committed files).

- FID heatmap over T x N: each cell's Frechet distance to the reference set (lower is better).
- FID against measured speedup, one line per T: what each interval buys and costs.
- Image grid: the same samples (same seed, same class) at every N, one block of rows per T.
"""

import base64
import csv
import datetime
import html
import io
import json
import os
import platform
import sys

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
import torch
from PIL import Image

from .samples import Cell, read_shard, shard_path

COLUMNS = ["steps", "interval", "full_steps", "fid", "inception_score", "precision", "recall", "class_accuracy",
           "speedup", "speedup_low", "speedup_high", "ideal_speedup", "psnr_vs_uncached", "samples",
           "samples_per_s"]  # fmt: skip
GRID_SAMPLES = 6  # samples per row block of the grid (sample indices 0..5: six different classes)


def _finite(v):
    return None if isinstance(v, float) and not np.isfinite(v) else v


def write_outputs(args, settings, rows: list[dict], processes: int) -> None:
    """table.csv, table.json (settings, command, machine, rows), grid.png and report.html in `args.out`."""
    out = args.out
    with open(os.path.join(out, "table.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    meta = {
        "settings": settings.__dict__, "samples_per_cell": args.samples, "batch_size": args.batch_size,
        "command": "python -m analysis.table " + " ".join(sys.argv[1:]), "processes": processes,
        "timing": f"paired_speedup: {args.timing_pairs} ABBA pairs of timed calls of {args.timing_batch} samples, "
                  "no observers, after a warm-up; median of pair ratios (range)",
        "machine": {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "device": args.device or ("cuda" if torch.cuda.is_available() else "cpu")},
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": [{k: _finite(v) for k, v in r.items()} for r in rows],
    }  # fmt: skip
    with open(os.path.join(out, "table.json"), "w") as f:
        json.dump(meta, f, indent=1)
    grid = image_grid(out, sorted({r["steps"] for r in rows}), sorted({r["interval"] for r in rows}), args.seed)
    Image.fromarray(grid).save(os.path.join(out, "grid.png"))
    with open(os.path.join(out, "report.html"), "w") as f:
        f.write(report_html(meta, grid))


def load_table(folder: str) -> dict:
    """The `table.json` of a Table 3 folder; raises `FileNotFoundError` naming the file when there is none."""
    path = os.path.join(folder, "table.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no table at {path}: run python -m analysis.table --out {folder}")
    with open(path) as f:
        return json.load(f)


def image_grid(out: str, steps: list[int], intervals: list[int], seed: int, scale: int = 3) -> np.ndarray:
    """Rows: one per (T, sample); columns: N. The first `GRID_SAMPLES` samples of each cell, upscaled."""
    tiles = []
    for t in steps:
        for i in range(GRID_SAMPLES):
            row = []
            for n in intervals:
                end = _first_shard_end(out, Cell(t, n))
                shard = read_shard(shard_path(out, Cell(t, n), 0, end), 0, end, seed)
                row.append(shard["images"][i] if shard is not None and len(shard["images"]) > i else
                           np.zeros((32, 32, 3), np.uint8))  # fmt: skip
            tiles.append(np.concatenate([np.pad(im, ((1, 1), (1, 1), (0, 0)), constant_values=255) for im in row], 1))
        tiles.append(np.full((4, tiles[-1].shape[1], 3), 255, np.uint8))  # gap between T blocks
    grid = np.concatenate(tiles[:-1], 0)
    return grid.repeat(scale, 0).repeat(scale, 1)


def _first_shard_end(out: str, cell: Cell) -> int:
    folder = os.path.dirname(shard_path(out, cell, 0, 1))
    ends = [int(n[14:21]) for n in os.listdir(folder) if n.startswith("shard_0000000-") and n.endswith(".npz")
            and ".tmp" not in n] if os.path.isdir(folder) else []  # fmt: skip
    return max(ends, default=1)


def fid_heatmap(rows: list[dict]) -> go.Figure:
    steps = sorted({r["steps"] for r in rows})
    intervals = sorted({r["interval"] for r in rows})
    z = [[next((r["fid"] for r in rows if r["steps"] == t and r["interval"] == n), None) for n in intervals]
         for t in steps]  # fmt: skip
    fig = go.Figure(go.Heatmap(z=z, x=[f"N={n}" for n in intervals], y=[f"T={t}" for t in steps], colorscale="Magma_r",
                               text=[[f"{v:.2f}" if v is not None else "" for v in row] for row in z],
                               texttemplate="%{text}", colorbar=dict(title="FD"),
                               hovertemplate="%{y}, %{x}<br>FD %{z:.3f}<extra></extra>"))  # fmt: skip
    fig.update_layout(title="Frechet distance to the reference set (lower is better)", height=120 + 60 * len(steps),
                      margin=dict(l=60, r=20, t=50, b=40))  # fmt: skip
    return fig


def fid_speed_plot(rows: list[dict]) -> go.Figure:
    fig = go.Figure()
    for t in sorted({r["steps"] for r in rows}):
        rs = sorted((r for r in rows if r["steps"] == t), key=lambda r: r["interval"])
        speed = [r["speedup"] for r in rs]
        err_hi = [(r["speedup_high"] - r["speedup"]) if r["speedup"] is not None else None for r in rs]
        err_lo = [(r["speedup"] - r["speedup_low"]) if r["speedup"] is not None else None for r in rs]
        fig.add_trace(go.Scatter(
            x=speed, y=[r["fid"] for r in rs], mode="lines+markers+text", name=f"T={t}",
            text=[f"N={r['interval']}" for r in rs], textposition="top center",
            error_x=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True),
            hovertemplate="N=%{text}<br>speedup %{x:.2f}x<br>FD %{y:.3f}<extra>T=" + str(t) + "</extra>"))  # fmt: skip
    fig.update_layout(title="Quality against measured speedup (bars: range over timed pairs)",
                      xaxis_title="measured speedup (x)", yaxis_title="Frechet distance", height=380,
                      margin=dict(l=60, r=20, t=50, b=50))  # fmt: skip
    return fig


def _png_base64(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(v, digits=3):
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return html.escape(str(v))


def table_html(meta: dict) -> str:
    """The paper's layout: one block of rows per T, one row per N, metrics as columns."""
    head = ("<tr><th>T</th><th>N</th><th>full steps</th><th>FD &darr;</th><th>score &uarr;</th><th>precision &uarr;"
            "</th><th>recall &uarr;</th><th>class acc. &uarr;</th><th>PSNR vs N=1 (dB)</th><th>speedup (range)</th>"
            "<th>ideal</th></tr>")  # fmt: skip
    body = []
    for r in meta["rows"]:
        speed = (f"{r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f})"
                 if r.get("speedup") is not None else "-")  # fmt: skip
        psnr = "&infin;" if r.get("psnr_vs_uncached") is None and r["interval"] == 1 else _fmt(r.get("psnr_vs_uncached"), 1)
        body.append(f"<tr><td>{r['steps']}</td><td>{r['interval']}</td><td>{r['full_steps']}</td><td>{_fmt(r['fid'])}"
                    f"</td><td>{_fmt(r['inception_score'], 2)}</td><td>{_fmt(r['precision'])}</td>"
                    f"<td>{_fmt(r['recall'])}</td><td>{_fmt(r['class_accuracy'])}</td><td>{psnr}</td><td>{speed}</td>"
                    f"<td>{r['ideal_speedup']:.2f}x</td></tr>")  # fmt: skip
    return f"<table>{head}{''.join(body)}</table>"


def report_html(meta: dict, grid: np.ndarray) -> str:
    """A self-contained page: settings, the table, the plots and the image grid (embedded)."""
    s = meta["settings"]
    figs = [fid_heatmap(meta["rows"]), fid_speed_plot(meta["rows"])]
    plots = "".join(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs))
    feature_note = ("Feature space: the project's emoji classifier (192 penultimate features; 32 class logits for the "
                    "score). These numbers rank settings of this model; they are not comparable with Inception FID."
                    if s["extractor"] == "emoji" else "Feature space: Inception-v3 (2048 pool features, 1008 logits).")
    esc = html.escape
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>FORA Table 3: {esc(s['model'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{image-rendering:pixelated}}</style></head><body>
<h1>FORA Table 3 on {esc(s['model'])}</h1>
<p>{esc(s['sampler'].upper())} sampler, guidance {s['guidance']}, {meta['samples_per_cell']} class-balanced samples per
cell (sample i: class i mod classes, noise seed from (base seed {s['seed']}, i); the same seeds in every cell).
{esc(feature_note)} Speedup: {esc(meta['timing'])}. Measured on {esc(meta['machine']['processor'])}
({esc(meta['machine']['device'])}, torch {esc(meta['machine']['torch'])}), {esc(meta['date'])}.</p>
<p>Command: <code>{esc(meta['command'])}</code> ({meta['processes']} process(es))</p>
{table_html(meta)}
<h2>Plots</h2>{plots}
<h2>The same samples across N</h2><p>Rows: samples 0..{GRID_SAMPLES - 1} (one per class) of each T; columns: N =
{', '.join(str(n) for n in sorted({r['interval'] for r in meta['rows']}))}.</p><img src="data:image/png;base64,{_png_base64(grid)}">
</body></html>"""
