"""The arena's outputs: arena.csv, arena.json and a self-contained report.html (Pareto plot, cost plot, plan maps,
image grid); the figures are shared with the app's Policies tab."""

import csv
import html
import io
import json
import math
import os

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.subplots import make_subplots

from analysis.arena.experiment import COLUMNS, EQUAL_COST, FAMILIES, at_budget, budget_entries, cost_ladder
from analysis.report_files import SPEEDUP_COLUMNS, finite, html_cell, png_base64, speedup_cell, write_text_atomic

COLORS = {
    "uncached": "#444",
    "fora": "#1f77b4",
    "calibrated": "#d62728",
    "calibrated-o1": "#ff7f0e",
    "taylorseer": "#2ca02c",
    "fbcache": "#9467bd",
    "dbcache": "#8c564b",
    "dbcache-taylorseer": "#e377c2",
}


def pareto_plot(rows: list[dict], x: str = "speedup", title: str | None = None) -> go.Figure:
    """Quality (PSNR against uncached) against measured speedup (or `x="computed_fraction"`), one trace per
    method, settings joined in order of cost; the dashed line is the Pareto front over all methods."""
    fig = go.Figure()
    pts = [r for r in rows if r["policy"] != "uncached" and r.get(x) is not None]
    for policy in COLORS:
        sub = sorted((r for r in pts if r["policy"] == policy), key=lambda r: r[x])
        if not sub:
            continue
        if policy in ("taylorseer", "dbcache-taylorseer"):  # one line per order
            groups = {o: [r for r in sub if r.get("order") == o] for o in sorted({r.get("order") for r in sub})}
        else:
            groups = {None: sub}
        for order, g in groups.items():
            name = policy if order is None else f"{policy} order {order}"
            err = None
            if x == "speedup" and all(r.get("speedup_low") is not None for r in g):
                err = {
                    "type": "data",
                    "symmetric": False,
                    "array": [r["speedup_high"] - r["speedup"] for r in g],
                    "arrayminus": [r["speedup"] - r["speedup_low"] for r in g],
                }
            fig.add_trace(
                go.Scatter(
                    x=[r[x] for r in g],
                    y=[r["psnr"] for r in g],
                    mode="lines+markers",
                    name=name,
                    error_x=err,
                    line={"color": COLORS[policy], "dash": ["solid", "dot", "dash"][order or 0]},
                    text=[f"{r['policy']} {r['setting']}<br>{r['computed_calls']:.0f} calls" for r in g],
                    hovertemplate="%{text}<br>x=%{x:.2f}, PSNR %{y:.2f} dB<extra></extra>",
                )
            )
    front, best = [], -math.inf
    # the front: settings no other beats on both axes (more speed is better; fewer computed calls is better)
    for r in sorted(pts, key=lambda r: (-r[x] if x == "speedup" else r[x], -r["psnr"])):
        if r["psnr"] > best:
            front.append(r)
            best = r["psnr"]
    if front:
        fig.add_trace(
            go.Scatter(
                x=[r[x] for r in front],
                y=[r["psnr"] for r in front],
                mode="lines",
                name="Pareto front",
                line={"color": "rgba(0,0,0,0.3)", "dash": "dash", "width": 6},
                hoverinfo="skip",
            )
        )
    label = "measured speedup over uncached (x)" if x == "speedup" else "computed attention/MLP calls (fraction)"
    fig.update_layout(
        title=title or "Quality against speed (up and right is better)",
        xaxis_title=label,
        yaxis_title="PSNR vs uncached (dB)",
        height=460,
        margin={"t": 50, "b": 40},
    )
    return fig


def plan_map_figure(maps: dict[str, np.ndarray], kind: str = "attn", title: str | None = None) -> go.Figure:
    """One block x step map per method: dark where the module computed at that step (measured by `ComputeMap`)."""
    labels = list(maps)
    fig = make_subplots(
        rows=len(labels), cols=1, subplot_titles=labels, shared_xaxes=True, vertical_spacing=0.3 / max(1, len(labels))
    )
    for i, label in enumerate(labels, start=1):
        m = np.asarray(maps[label], dtype=float)
        fig.add_trace(
            go.Heatmap(
                z=m,
                colorscale=[[0, "#eeeeee"], [1, "#1f3b73"]],
                zmin=0,
                zmax=1,
                showscale=False,
                hovertemplate="step %{x}, block %{y}: %{z}<extra></extra>",
            ),
            row=i,
            col=1,
        )
        fig.update_yaxes(title_text="block", row=i, col=1, autorange="reversed")
    fig.update_xaxes(title_text="step", row=len(labels), col=1)
    fig.update_layout(
        title=title or f"Plan maps ({kind}): which block computed at which step",
        height=140 + 140 * len(labels),
        margin={"t": 70, "b": 40},
    )
    return fig


def image_grid(columns: list[np.ndarray], scale: int = 3, gap: int = 2) -> np.ndarray:
    """Images (each n x H x W x 3 in [0, 1]) as a grid: one column per method, one row per seed."""
    cols = [np.clip(np.asarray(c), 0, 1) for c in columns]
    n, h, w = cols[0].shape[:3]
    grid = np.ones((n * (h + gap), len(cols) * (w + gap), 3))
    for j, c in enumerate(cols):
        for i in range(n):
            grid[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = c[i]
    grid = (grid * 255).round().astype(np.uint8)
    return np.kron(grid, np.ones((scale, scale, 1), dtype=np.uint8))


def _table(rows: list[dict], columns: list[str]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    cell = lambda r, c: speedup_cell(r, c) if c in SPEEDUP_COLUMNS else html_cell(r.get(c), 2)
    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _distribution_html(d: dict | None, rows: list[dict]) -> str:
    """The report's distribution section (`rows`: the scored settings, uncached first), in a div that
    `rewrite_tables` can replace after a rescore."""
    return f'<div id="distribution">{_distribution_body(d, rows)}</div><!-- /distribution -->'


def _distribution_body(d: dict | None, rows: list[dict]) -> str:
    if not d:
        return "<p>Distribution metrics: not measured (<code>--fid K</code>).</p>"
    cols = [
        "policy",
        "setting",
        "computed_calls",
        "fd_vs_uncached",
        "fid",
        "fid_precision",
        "fid_recall",
        "fid_score",
        "fid_class_accuracy",
        "fid_samples",
    ]
    return (
        f"<h3>Distribution quality ({d['samples']} class-balanced samples each, seeds from {d['seed']})</h3>"
        f"<p>fd_vs_uncached: Frechet distance to the uncached model's samples of the same seeds (how far caching "
        f"moved the distribution; 0 is uncached). fid, precision, recall, score, class accuracy: Table 3's "
        f"metrics in {html.escape(d['feature_space'])}, against {html.escape(d['reference'])}.</p>"
        + _table(rows, cols)
    )


def _ladder_html(ladder: list[dict]) -> str:
    """`cost_ladder` as a table: each library's best setting and PSNR (worst seed) at each FORA N's cost."""

    def cell(r):
        return "-" if r is None else f"{r['policy']} {r['setting']}: {r['psnr']:.2f} dB ({r['psnr_min']:.2f})"

    def margin(r):
        if r["margin_db"] is None:
            return "-"
        ci = "" if r.get("margin_low") is None else f" ({r['margin_low']:+.2f} to {r['margin_high']:+.2f})"
        return f"{r['margin_db']:+.2f}{ci}"

    head = "".join(
        f"<th>{h}</th>" for h in ("cost of", "calls", *FAMILIES, "margin over the best peer, dB (95% CI over seeds)")
    )
    body = "".join(
        f"<tr><td>N={r['interval']}</td><td>{r['budget_calls']:.0f}</td>"
        + "".join(f"<td>{html.escape(cell(r[f]))}</td>" for f in FAMILIES)
        + f"<td>{margin(r)}</td></tr>"
        for r in ladder
    )
    return (
        f'<div id="ladder"><h2>At each FORA N\'s cost: the best of each library</h2><table><tr>{head}</tr>{body}'
        "</table></div><!-- /ladder -->"
    )


def report_html(result: dict) -> str:
    s, rows, entries = result["settings"], result["rows"], result["_entries"]
    budget = result["budget_calls"]
    shown = budget_entries(entries, budget)
    figs = [
        pareto_plot(rows),
        pareto_plot(rows, x="computed_fraction", title="Quality against cost in module calls"),
        plan_map_figure({f"{e.policy} {e.setting}": e.maps.get("attn") for e in shown[1:]}),
    ]
    plots = "".join(pio.to_html(f, full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs))
    grid = image_grid([e.images[:8] for e in shown])
    cols = [
        "policy",
        "setting",
        "computed_calls",
        "computed_fraction",
        "speedup",
        "speedup_low",
        "speedup_high",
        "psnr",
        "psnr_min",
        "ssim",
        "class_accuracy",
    ]
    esc = html.escape
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>Caching arena: {esc(s["model"])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:3px 7px;text-align:right}}img{{image-rendering:pixelated}}</style></head><body>
<h1>FORA, calibrated plans and peers on {esc(s["model"])}</h1>
<p>{s["steps"]} DDIM steps, guidance {s["guidance"]}, evaluation seeds {esc(str(s["seeds"]))} (class = seed mod classes),
one sample per call. Calibrated plans were fit on classes {esc(str(s["calibration"]["classes"]))} with seeds
{esc(str(s["calibration"]["seeds"]))}. PSNR/SSIM: final image against the uncached one of the same seed, mean over
seeds (PSNR capped at 100 dB for identical images). Cost: attention/MLP calls that really ran per call (counted on
the modules), out of {result["total_calls"]}. Speed: {esc(result["timing"])}. Measured on
{esc(result["machine"]["processor"])} ({esc(result["machine"]["device"])}, {result["machine"]["threads"]} thread(s),
torch {esc(result["machine"]["torch"])}), {esc(result["date"])}, {result["seconds"]:.0f} s in all.</p>
<h2>At FORA N={s["match_interval"]}'s cost (at most {budget} calls + {EQUAL_COST:.0%})</h2>
{_table(at_budget(rows, budget), cols)}
{_distribution_html(result.get("distribution"), [e.row for e in shown])}
{_ladder_html(cost_ladder(rows))}
<h2>Plots</h2>{plots}
<h2>The same seeds</h2><p>Columns: {esc(", ".join(f"{e.policy} {e.setting}" for e in shown))}; rows: the first
seeds.</p><img src="data:image/png;base64,{png_base64(grid)}">
<h2>Every setting</h2>{_table(rows, cols)}
<p>Command: <code>{esc(result.get("command", ""))}</code></p></body></html>"""


def plan_filename(plan: dict) -> str:
    meta = plan["meta"]
    return f"{plan['name']}-T{plan['num_steps']}-N{meta['match_interval']}-g{meta['guidance']:g}.json"


def write_plans(out: str, plans: dict) -> list[str]:
    """Each calibrated plan as its own file under DIR/plans, loadable by `CachePlan.load` and `--plan`."""
    folder = os.path.join(out, "plans")
    os.makedirs(folder, exist_ok=True)
    paths = []
    for plan in plans.values():
        paths.append(os.path.join(folder, plan_filename(plan)))
        write_text_atomic(paths[-1], json.dumps(plan, indent=1) + "\n")
    return paths


def rewrite_tables(out: str, data: dict) -> None:
    """arena.csv, arena.json and report.html's distribution section again from `data` (an arena.json's content),
    e.g. after a rescore (`rescore.py`)."""
    data["rows"] = [{k: finite(v) for k, v in r.items()} for r in data["rows"]]  # as write_outputs does
    write_text_atomic(os.path.join(out, "arena.csv"), _csv(data["rows"]))
    report = os.path.join(out, "report.html")
    if os.path.isfile(report):
        scored = sorted(
            (r for r in data["rows"] if r.get("fid_samples")),
            key=lambda r: (r["policy"] != "uncached", -(r.get("psnr") or 0)),
        )
        page = open(report, encoding="utf-8").read()
        start = page.find('<div id="distribution">')
        if start >= 0:
            end = page.index("<!-- /distribution -->", start) + len("<!-- /distribution -->")
        else:  # a report written before the section had its div: from its heading to the end of its table
            start = page.find("<h3>Distribution quality")
            end = page.index("</table>", start) + len("</table>") if start >= 0 else -1
        if start >= 0:
            page = page[:start] + _distribution_html(data.get("distribution"), scored) + page[end:]
        start = page.find('<div id="ladder">')
        if start >= 0:
            end = page.index("<!-- /ladder -->", start) + len("<!-- /ladder -->")
        else:  # a report written before the ladder had its div: its heading to the end of its table
            start = page.find("<h2>At each FORA N's cost: the best of each library</h2>")
            end = page.index("</table>", start) + len("</table>") if start >= 0 else -1
        if start >= 0:
            page = page[:start] + _ladder_html(cost_ladder(data["rows"])) + page[end:]
        write_text_atomic(report, page)
    data["at_budget"] = at_budget(data["rows"], data["budget_calls"])
    data["cost_ladder"] = cost_ladder(data["rows"])
    write_text_atomic(os.path.join(out, "arena.json"), json.dumps(data, indent=1) + "\n")


def _csv(rows: list[dict]) -> str:

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_outputs(out: str, result: dict) -> None:
    """arena.csv, report.html, the plans (DIR/plans) and, last, arena.json, each written whole and renamed."""
    write_text_atomic(os.path.join(out, "arena.csv"), _csv(result["rows"]))
    write_text_atomic(os.path.join(out, "report.html"), report_html(result))
    write_plans(out, result["plans"])
    data = {k: v for k, v in result.items() if not k.startswith("_")}
    data["rows"] = [{k: finite(v) for k, v in r.items()} for r in data["rows"]]
    data["at_budget"] = at_budget(data["rows"], result["budget_calls"])
    data["cost_ladder"] = cost_ladder(data["rows"])
    write_text_atomic(os.path.join(out, "arena.json"), json.dumps(data, indent=1) + "\n")
