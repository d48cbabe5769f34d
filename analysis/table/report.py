"""Writing and reading a Table 3 folder: `table.csv`, `table.json`, `grid.png` and `report.html`, and the figures
the report and the app's Table 3 tab draw from `table.json` (so the app needs only the committed files).

- FID heatmap over T x N: each cell's Frechet distance to the reference set (lower is better).
- FID against measured speedup, one line per T: what each interval buys and costs.
- Image grid: the same samples (same seed, same class) at every N, one block of rows per T.
"""

import csv
import datetime
import html
import io
import json
import os
import zipfile
import zlib

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from PIL import Image

from analysis.report_files import finite, html_cell, machine, png_base64, write_atomic
from analysis.samples import SHARD_SIZE, Cell, read_shard, shard_path
from analysis.table.metrics import reference_description
from fora.timing import clock_label, format_speedup

COLUMNS = [
    "steps",
    "interval",
    "full_steps",
    "fid",
    "fid_low",
    "fid_high",
    "fid_diff",
    "fid_diff_low",
    "fid_diff_high",
    "sfid",
    "fd_to_uncached",
    "fd_to_uncached_low",
    "fd_to_uncached_high",
    "sfid_to_uncached",
    "precision_to_uncached",
    "recall_to_uncached",
    "inception_score",
    "precision",
    "recall",
    "class_accuracy",
    "speedup",
    "speedup_low",
    "speedup_high",
    "ideal_speedup",
    "psnr_vs_uncached",
    "samples",
    "samples_per_s",
    "fid_common",
    "inception_score_std",
    "generation_process_s",
]
GRID_PER_CLASS = 2  # samples of each class kept for the grids (sample indices c and c + classes)
GRID_CLASSES = 6  # classes (a text model's: prompts) in the report's grid
GRID_TILE = 128  # the largest tile side in the grid: larger samples are shrunk to it


def _runs(out: str) -> list[dict]:
    path = os.path.join(out, "runs.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def write_outputs(args, settings, rows: list[dict], notes: dict) -> None:
    """table.csv, grid_samples.npz, grid.png, report.html and, last, table.json (what the app reads), each written
    whole under a temporary name and renamed, so a killed run never leaves a table without its grid."""
    out = args.out
    meta = {
        "settings": settings.__dict__,
        "samples_per_cell": _per_cell(args.samples_by_steps),
        "batch_size": args.batch_size,
        "reference": reference_description(args),
        "floor": notes["floor"],
        "common_samples": notes["common_samples"],
        "command": args.command,
        "processes": args.processes,
        "runs": _runs(out),
        "timing": (
            f"paired_speedup: {args.timing_pairs} ABBA pairs of timed calls of {args.timing_batch} samples, "
            f"no observers, after a warm-up, {clock_label(args.clock)}; median of pair ratios (range)"
            if args.timing_pairs
            else "not measured (--timing-pairs 0)"
        ),
        "machine": machine(args.device, args.clock),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "rows": [{k: finite(v) for k, v in r.items()} for r in rows],
    }

    def write_csv(f):
        text = io.TextIOWrapper(f, newline="")
        writer = csv.DictWriter(text, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        text.detach()

    write_atomic(os.path.join(out, "table.csv"), write_csv)
    steps, intervals = sorted({r["steps"] for r in rows}), sorted({r["interval"] for r in rows})
    keep = GRID_CLASSES if getattr(args, "prompt_list", None) else None  # a text model's large images: 6 prompts
    samples = collect_grid_samples(out, steps, intervals, args.num_classes, args.samples_by_steps, args.seed, keep)
    write_atomic(
        os.path.join(out, "grid_samples.npz"),
        lambda f: np.savez_compressed(f, images=samples, steps=steps, intervals=intervals),
    )
    grid = class_grid(samples, list(range(min(GRID_CLASSES, samples.shape[2]))))
    write_atomic(os.path.join(out, "grid.png"), lambda f: Image.fromarray(grid).save(f, format="PNG"))
    write_atomic(os.path.join(out, "report.html"), lambda f: f.write(report_html(meta, grid).encode()))
    write_atomic(os.path.join(out, "table.json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))


def _per_cell(samples_by_steps: dict[int, int]) -> int | dict[str, int]:
    """One number when every T has the same samples per cell, else {T: samples}."""
    values = set(samples_by_steps.values())
    return values.pop() if len(values) == 1 else {str(t): n for t, n in sorted(samples_by_steps.items())}


def samples_text(meta: dict) -> str:
    n = meta["samples_per_cell"]
    return f"{n}" if isinstance(n, int) else ", ".join(f"{v} at T={k}" for k, v in n.items())


def load_table(folder: str) -> dict:
    """The `table.json` of a Table 3 folder; raises `FileNotFoundError` naming the file when there is none and
    `ValueError` naming it when it cannot be shown: not JSON (cut short), or JSON without the fields the app reads
    (hand-edited, another version)."""
    path = os.path.join(folder, "table.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no table at {path}: run python -m analysis.table --out {folder}")
    with open(path) as f:
        try:
            meta = json.load(f)
        except ValueError as e:  # a JSONDecodeError, or a UnicodeDecodeError for a binary file
            raise ValueError(f"{path} is not JSON: {e}") from None
    try:  # these two read every field that the tab and its plots read: what they cannot show is refused here
        describe(meta)
        display_rows(meta)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"{path} is not a table the app can show ({type(e).__name__}: {e})") from None
    return meta


def collect_grid_samples(
    out: str,
    steps: list[int],
    intervals: list[int],
    num_classes: int,
    samples_by_steps: dict[int, int],
    seed: int,
    keep: int | None = None,
) -> np.ndarray:
    """uint8 [T, N, class, k, H, W, 3]: the first k <= GRID_PER_CLASS samples of each class in every cell (sample
    indices c, c + classes, ...) from the first shard, small enough to commit, so the app can show a class across N
    without the shards. Models with more classes than the first shard holds keep the classes it holds; `keep`
    keeps the first that many at most."""
    shortest = min(SHARD_SIZE, min(samples_by_steps[t] for t in steps))
    classes = min(num_classes, shortest, keep or num_classes)
    per_class = max(1, min(GRID_PER_CLASS, shortest // num_classes))
    idx = [c + k * num_classes for c in range(classes) for k in range(per_class)]
    per_cell = []
    for t in steps:
        end = min(SHARD_SIZE, samples_by_steps[t])  # each T's own first shard
        for n in intervals:
            shard = read_shard(shard_path(out, Cell(t, n), 0, end), 0, end, seed)
            if shard is None:
                raise FileNotFoundError(f"the first shard of {Cell(t, n).name} is missing under {out}/samples")
            per_cell.append(shard["images"][idx].reshape(classes, per_class, *shard["images"].shape[1:]))
    return np.stack(per_cell).reshape(len(steps), len(intervals), *per_cell[0].shape)


def class_grid(grid: np.ndarray, class_ids: list[int], scale: int = 3) -> np.ndarray:
    """Rows: the samples of the chosen classes, one block per T; columns: N."""
    rows = []
    for t in range(grid.shape[0]):
        for c in class_ids:
            for k in range(grid.shape[3]):
                tiles = [
                    np.pad(grid[t, n, c, k], ((1, 1), (1, 1), (0, 0)), constant_values=255)
                    for n in range(grid.shape[1])
                ]
                rows.append(np.concatenate(tiles, 1))
        rows.append(np.full((6, rows[-1].shape[1], 3), 255, np.uint8))  # gap between T blocks
    image = np.concatenate(rows[:-1], 0)
    side = max(grid.shape[4], grid.shape[5])
    if side > GRID_TILE:  # a hub model's 1024 px samples: tiles of GRID_TILE px, not a gigapixel page
        h, w = image.shape[:2]
        return np.asarray(Image.fromarray(image).resize((w * GRID_TILE // side, h * GRID_TILE // side), Image.LANCZOS))
    scale = scale if side <= 32 else 1  # the embedded models' 32 px samples are enlarged; others shown as they are
    return image.repeat(scale, 0).repeat(scale, 1)


def load_grid_samples(folder: str) -> np.ndarray:
    """The images of `grid_samples.npz`; `FileNotFoundError` when there is none, `ValueError` naming it when it is
    unreadable (cut short, a Git LFS pointer, no images)."""
    path = os.path.join(folder, "grid_samples.npz")
    try:
        with np.load(path) as z:
            return z["images"]
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({type(e).__name__}: {e})") from None


def _fd_key(rows: list[dict]) -> tuple[str, str]:
    """Which FD to compare across T: at one common sample count when T's counts differ (FD's bias depends on it)."""
    if any(r.get("fid_common") is not None for r in rows):
        return "fid_common", " at a common sample count"
    if rows and all(r.get("fid") is None or r["fid"] != r["fid"] for r in rows):  # a text model: no reference set
        return "fd_to_uncached", " to the uncached samples (same prompts and seeds)"
    return "fid", ""


def fid_heatmap(rows: list[dict], floor: dict | None = None) -> go.Figure:
    steps = sorted({r["steps"] for r in rows})
    intervals = sorted({r["interval"] for r in rows})
    key, note = _fd_key(rows)
    z = [
        [next((r[key] for r in rows if r["steps"] == t and r["interval"] == n), None) for n in intervals]
        for t in steps
    ]
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[f"N={n}" for n in intervals],
            y=[f"T={t}" for t in steps],
            colorscale="Magma_r",
            text=[[f"{v:.2f}" if v is not None else "" for v in row] for row in z],
            texttemplate="%{text}",
            colorbar=dict(title="FD"),
            hovertemplate="%{y}, %{x}<br>FD %{z:.3f}<extra></extra>",
        )
    )
    floor_text = f"; real images: {floor['fid']:.2f}" if floor else ""
    fig.update_layout(
        title=f"FD{note} (lower is better{floor_text})",
        height=140 + 60 * len(steps),
        margin=dict(l=60, r=20, t=50, b=40),
    )
    return fig


def _fd_error(rows: list[dict], key: str) -> dict | None:
    """FD's 95% bootstrap interval as error bars, where the table has it (not for FD at a common count)."""
    if key != "fid" or any(r.get("fid_low") is None or r.get("fid_low") != r.get("fid_low") for r in rows):
        return None
    return dict(
        type="data",
        array=[r["fid_high"] - r["fid"] for r in rows],
        arrayminus=[r["fid"] - r["fid_low"] for r in rows],
        visible=True,
    )


def fid_speed_plot(rows: list[dict], floor: dict | None = None) -> go.Figure:
    key, note = _fd_key(rows)
    fig = go.Figure()
    for t in sorted({r["steps"] for r in rows}):
        rs = sorted((r for r in rows if r["steps"] == t), key=lambda r: r["interval"])
        speed = [r["speedup"] for r in rs]
        err_hi = [(r["speedup_high"] - r["speedup"]) if r["speedup"] is not None else None for r in rs]
        err_lo = [(r["speedup"] - r["speedup_low"]) if r["speedup"] is not None else None for r in rs]
        fig.add_trace(
            go.Scatter(
                x=speed,
                y=[r[key] for r in rs],
                mode="lines+markers+text",
                name=f"T={t}",
                text=[f"N={r['interval']}" for r in rs],
                textposition="top center",
                error_x=dict(type="data", array=err_hi, arrayminus=err_lo, visible=True),
                error_y=_fd_error(rs, key),
                hovertemplate="N=%{text}<br>speedup %{x:.2f}x<br>FD %{y:.3f}<extra>T=" + str(t) + "</extra>",
            )
        )
    if floor:
        fig.add_hline(y=floor["fid"], line_dash="dot", annotation_text=f"real renders ({floor['samples']})")
    fig.update_layout(
        title="FD against measured speedup (bars: speedup's range over pairs, FD's 95% bootstrap interval)",
        xaxis_title="measured speedup (x)",
        yaxis_title=f"Frechet distance{note}",
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def table_html(meta: dict) -> str:
    """The paper's layout: one block of rows per T, one row per N, metrics as columns."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in DISPLAY_HEADERS)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in display_rows(meta)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def report_html(meta: dict, grid: np.ndarray) -> str:
    """A self-contained page: settings, the table, the plots and the image grid (embedded)."""
    s = meta["settings"]
    figs = [fid_heatmap(meta["rows"], meta.get("floor")), fid_speed_plot(meta["rows"], meta.get("floor"))]
    plots = "".join(pio.to_html(fig, full_html=False, include_plotlyjs=(i == 0)) for i, fig in enumerate(figs))
    feature_note = (
        "Feature space: the project's emoji classifier (192 penultimate features; 32 class logits for the "
        "score). These numbers rank settings of this model; they are not comparable with Inception FID."
        if s["extractor"] == "emoji"
        else "Feature space: Inception-v3 (2048 pool features, 1008 logits)."
    )
    esc = html.escape
    cond = "prompt" if s.get("prompts") else "class"  # a text model's samples cycle through its prompt set
    runs = "".join(
        f"<br><code>{esc(r['command'])}</code> ({esc(r['date'])}, {esc(str(r['device']))}, "
        f"{r['threads']} thread(s) per process)"
        for r in meta.get("runs", [])
    )
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>FORA Table 3: {esc(s["model"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1100px}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}img{{image-rendering:pixelated}}</style></head><body>
<h1>FORA Table 3 on {esc(s["model"])}</h1>
<p>{esc(s["sampler"].upper())} sampler, guidance {s["guidance"]}, {esc(samples_text(meta))} {esc(cond)}-balanced samples per
cell (sample i: {esc(cond)} i mod {esc(cond)}s, noise seed from (base seed {s["seed"]}, i); the same seeds in every cell).
Reference: {esc(meta.get("reference", "-"))}.
{esc(feature_note)} Speedup: {esc(meta["timing"])}. Measured on {esc(meta["machine"]["processor"])}
({esc(meta["machine"]["device"])}, torch {esc(meta["machine"]["torch"])}), {esc(meta["date"])}.</p>
<p>Runs into this folder: {runs}</p>
{table_html(meta)}
<p>{esc(floor_text(meta))}</p>
<h2>Plots</h2>{plots}
<h2>The same samples across N</h2><p>Rows: the first samples of {esc(cond)}s 0..{GRID_CLASSES - 1}, one block per T;
columns: N =
{", ".join(str(n) for n in sorted({r["interval"] for r in meta["rows"]}))}.</p><img src="data:image/png;base64,{png_base64(grid)}">
</body></html>"""


def floor_text(meta: dict) -> str:
    """What the FD numbers are measured against: real images scored like a generator, and the common count."""
    parts = []
    floor = meta.get("floor")
    if floor:
        parts.append(
            f"Real images scored like a generator ({floor['samples']} fresh renders of another seed against "
            f"the same reference): FD {floor['fid']:.3f}, precision {floor['precision']:.3f}, recall "
            f"{floor['recall']:.3f}, score {floor['inception_score']:.2f}. FD is biased upwards at a finite "
            "sample count: this, not 0, is what 'as good as real' reads."
        )
    if meta.get("common_samples"):
        parts.append(
            f"Sample counts differ between T: compare FD across T with 'FD at common n' "
            f"(the first {meta['common_samples']} samples of every cell)."
        )
    return " ".join(parts)


def ci_cell(r: dict, key: str, digits: int = 2) -> str:
    """A value with its 95% interval, "8.38 (8.05 to 8.71)"; the value alone where the table has no interval,
    "-" where it has no value (a table made before the column existed, or a cell without its N = 1 twin)."""
    value, low, high = r.get(key), r.get(f"{key}_low"), r.get(f"{key}_high")
    if value is None or value != value:
        return "-"
    if low is None or high is None or low != low or high != high:
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} ({low:.{digits}f} to {high:.{digits}f})"


DISPLAY_HEADERS = [
    "T",
    "N",
    "full steps",
    "samples",
    "FD to renders (95% CI)",
    "FD - N=1's (95% CI)",
    "sFID",
    "FD to uncached (95% CI)",
    "precision / recall to uncached",
    "FD at common n",
    "score",
    "precision",
    "recall",
    "class acc.",
    "PSNR vs N=1",
    "speedup (range)",
    "ideal",
    "samples/s",
]


def display_rows(meta: dict) -> list[list]:
    """The table as rows of text for a UI, in the order of `DISPLAY_HEADERS`."""
    out = []
    for r in meta["rows"]:
        speed = (
            format_speedup(r["speedup"], r["speedup_low"], r["speedup_high"], r.get("pairs"))
            if r.get("speedup") is not None
            else "-"
        )
        psnr = "inf" if r["interval"] == 1 else html_cell(r.get("psnr_vs_uncached"), 1)
        out.append(
            [
                r["steps"],
                r["interval"],
                r["full_steps"],
                r["samples"],
                ci_cell(r, "fid") if r["fid"] is not None else "-",  # a row without FD is no table row
                ci_cell(r, "fid_diff"),
                html_cell(r.get("sfid"), 2),
                ci_cell(r, "fd_to_uncached", 3),
                (
                    f"{r['precision_to_uncached']:.3f} / {r['recall_to_uncached']:.3f}"
                    if r.get("precision_to_uncached") is not None
                    else "-"
                ),
                html_cell(r.get("fid_common")),
                html_cell(r["inception_score"], 2),
                html_cell(r["precision"]),
                html_cell(r["recall"]),
                html_cell(r["class_accuracy"]),
                psnr,
                speed,
                f"{r['ideal_speedup']:.2f}x",
                html_cell(r.get("samples_per_s"), 1),
            ]
        )
    return out


def describe(meta: dict) -> str:
    """How the table was made, in Markdown: settings, samples, feature space, timing, machine, command."""
    s = meta["settings"]
    space = (
        "the project's emoji classifier (192 penultimate features; its 32 class logits for the score): these "
        "numbers rank settings of this model and are not comparable with Inception FID"
        if s["extractor"] == "emoji"
        else "Inception-v3"
    )
    return (
        f"**{s['model']}**, {s['sampler'].upper()} sampler, guidance {s['guidance']}, "
        f"{samples_text(meta)} class-balanced samples per cell, the same seeds in every cell (base seed "
        f"{s['seed']}). Reference: {meta.get('reference', '-')}. Feature space: {space}. Speedup and samples/s: "
        f"{meta['timing']}, on {meta['machine']['processor']} ({meta['machine']['device']}, "
        f"{meta['machine']['threads']} threads, torch {meta['machine']['torch']}), {meta['date']}. "
        f"{floor_text(meta)}\n\nRegenerate (resumable): `{meta['command']}`"
    )
