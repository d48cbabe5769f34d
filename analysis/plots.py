"""Plotly figures of the analysis: similarity heatmaps, the schedule strip, error curves, the trade-off curve."""

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

KIND_TITLES = {
    "attn": "self-attention",
    "context_attn": "joint attention, text stream",
    "attn2": "second self-attention",
    "cross_attn": "cross-attention",
    "mlp": "MLP",
    "context_mlp": "text-stream MLP",
    "attn_mlp": "fused attention + MLP",
}
ATTENTION_KINDS = ("attn", "context_attn", "attn2", "cross_attn")  # the rest are MLPs (attn_mlp holds both)
# short panel titles for figures with one panel per kind side by side
PANEL_TITLES = {
    "attn": "image attn",
    "context_attn": "text attn",
    "attn2": "attn2",
    "cross_attn": "cross-attn",
    "mlp": "image MLP",
    "context_mlp": "text MLP",
    "attn_mlp": "fused attn+MLP",
}
_SCALE = "Viridis"


def _timestep_labels(timesteps: np.ndarray, n: int) -> np.ndarray:
    ts = np.asarray(timesteps if timesteps is not None else np.full(n, np.nan), dtype=float)
    return np.array(["-" if np.isnan(t) else f"{t:g}" for t in ts], dtype=object)


def _color_floor(z: np.ndarray) -> float | None:
    """The colour scale's low end: the 2nd percentile of the finite cells, so that the few dissimilar early steps
    saturate instead of squeezing the many near-1 cells into one colour (28 layers x 250 steps); hover shows exact
    values."""
    finite = z[np.isfinite(z)]
    return float(np.percentile(finite, 2)) if finite.size > 50 else None


def neighbour_heatmap(recorder, kind: str, title: str | None = None) -> go.Figure:
    """Layer x step map: cosine similarity of each block's output with its previous computed output."""
    z = recorder.neighbour[kind]
    blocks, steps = z.shape
    ts = _timestep_labels(recorder.timesteps, steps)
    custom = np.broadcast_to(ts[None, :], z.shape)
    floor = _color_floor(z)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(steps)),
            y=list(range(blocks)),
            customdata=custom,
            colorscale=_SCALE,
            zmax=1.0,
            zmin=floor,
            colorbar=dict(title="cos" if floor is None else "cos<br>(2nd pct.<br>and below:<br>darkest)"),
            hoverongaps=False,
            hovertemplate="layer %{y}<br>step %{x} (t=%{customdata})<br>similarity %{z:.4f}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title or f"{KIND_TITLES.get(kind, kind)}: cos to previous computed step",
        xaxis_title="sampling step",
        yaxis_title="layer (block)",
        height=320 if blocks <= 12 else 400,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def neighbour_heatmaps(recorder, kinds, title: str) -> go.Figure:
    """`neighbour_heatmap` for several kinds side by side on one colour scale (its low end over all panels): every
    module kind of a family in one figure. A panel's height follows the layers (about 7 px each), so 57 layers x
    50 steps stay readable; hover shows the exact cell."""
    kinds = [k for k in kinds if k in recorder.neighbour]
    if not kinds:
        raise ValueError(f"none of the kinds {list(kinds)} was recorded; recorded: {list(recorder.neighbour)}")
    maps = [recorder.neighbour[k] for k in kinds]
    blocks, steps = maps[0].shape
    ts = _timestep_labels(recorder.timesteps, steps)
    floor = _color_floor(np.concatenate([z.ravel() for z in maps]))
    fig = make_subplots(
        1,
        len(kinds),
        shared_yaxes=True,
        horizontal_spacing=0.04,
        subplot_titles=[PANEL_TITLES.get(k, k) for k in kinds],
    )
    fig.update_annotations(font_size=12)
    for i, z in enumerate(maps, 1):
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(steps)),
                y=list(range(blocks)),
                customdata=np.broadcast_to(ts[None, :], z.shape),
                colorscale=_SCALE,
                zmax=1.0,
                zmin=floor,
                coloraxis="coloraxis",
                hoverongaps=False,
                hovertemplate="layer %{y}<br>step %{x} (t=%{customdata})<br>similarity %{z:.4f}<extra></extra>",
            ),
            1,
            i,
        )
        fig.update_xaxes(title_text="sampling step", row=1, col=i)
    fig.update_yaxes(title_text="layer (block)", row=1, col=1)
    fig.update_layout(
        title=title,
        coloraxis=dict(
            colorscale=_SCALE,
            cmax=1.0,
            cmin=floor,
            colorbar=dict(title="cos" if floor is None else "cos<br>(2nd pct.<br>and below:<br>darkest)"),
        ),
        height=max(320, min(900, 120 + 7 * blocks)),
        margin=dict(l=60, r=20, t=70, b=50),
    )
    return fig


def pairwise_heatmap(recorder, block: int, kind: str) -> go.Figure:
    """Step x step map of one block: cosine similarity between every pair of computed steps."""
    z = recorder.pairwise(block, kind)
    n = z.shape[0]
    ts = _timestep_labels(recorder.timesteps, n)
    custom = np.stack(np.broadcast_arrays(ts[None, :], ts[:, None]), axis=-1)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(n)),
            y=list(range(n)),
            customdata=custom,
            colorscale=_SCALE,
            zmax=1.0,
            zmin=_color_floor(z),
            colorbar=dict(title="cos"),
            hoverongaps=False,
            hovertemplate=(
                "step %{y} (t=%{customdata[1]}) vs step %{x} (t=%{customdata[0]})<br>"
                "similarity %{z:.4f}<extra>layer " + str(block) + "</extra>"
            ),
        )
    )
    kept = recorder.tokens_kept
    note = f" ({kept[0]} of {kept[1]} tokens)" if kept and kept[0] < kept[1] else ""
    fig.update_layout(
        title=f"layer {block} {KIND_TITLES.get(kind, kind)}: step x step similarity{note}",
        xaxis_title="step",
        yaxis_title="step",
        yaxis_autorange="reversed",
        height=380,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def schedule_strip(num_steps: int, full_steps: list[int], timesteps=None) -> go.Figure:
    """One row, one cell per step: full (computed) or reuse (served from the cache)."""
    full = set(full_steps)
    z = np.array([[1.0 if s in full else 0.0 for s in range(num_steps)]])
    ts = _timestep_labels(timesteps, num_steps)
    text = np.array([["full" if s in full else "reuse" for s in range(num_steps)]], dtype=object)
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=list(range(num_steps)),
            y=["step"],
            text=text,
            customdata=ts[None, :],
            showscale=False,
            colorscale=[[0, "#f4b183"], [0.5, "#f4b183"], [0.5, "#2f5597"], [1, "#2f5597"]],
            zmin=0,
            zmax=1,
            xgap=1 if num_steps <= 60 else 0,  # gaps between 250 cells of 2 px would be all one sees
            hovertemplate="step %{x} (t=%{customdata}): %{text}<extra></extra>",
        )
    )
    fig.update_layout(
        title=f"schedule: {len(full)} full (blue) / {num_steps - len(full)} reuse (orange) steps",
        height=150,
        margin=dict(l=60, r=20, t=40, b=30),
        yaxis_showticklabels=False,
    )
    return fig


def step_error_plot(errors: np.ndarray, full_steps: list[int]) -> go.Figure:
    """Relative error of the model prediction per step, cached against uncached; full steps marked."""
    steps = np.arange(len(errors))
    fig = go.Figure(
        go.Scatter(
            x=steps,
            y=errors,
            mode="lines+markers",
            name="relative error",
            hovertemplate="step %{x}: %{y:.4f}<extra></extra>",
        )
    )
    full = [s for s in full_steps if s < len(errors)]
    fig.add_trace(
        go.Scatter(
            x=full, y=errors[full], mode="markers", name="full step", marker=dict(symbol="circle-open", size=10)
        )
    )
    fig.update_layout(
        title="prediction error per step (||FORA - baseline|| / ||baseline||)",
        height=300,
        xaxis_title="sampling step",
        yaxis_title="relative L2 error",
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def tradeoff_plot(rows: list[dict]) -> go.Figure:
    """Speed/quality trade-off over intervals: measured and ideal speedup against PSNR and SSIM."""
    rows = sorted(rows, key=lambda r: r["interval"])
    fig = make_subplots(rows=1, cols=2, subplot_titles=("PSNR vs speedup", "SSIM vs speedup"))
    for col, metric in ((1, "psnr"), (2, "ssim")):
        y = [r[metric] if np.isfinite(r[metric]) else None for r in rows]
        fig.add_trace(
            go.Scatter(
                x=[r["speedup"] for r in rows],
                y=y,
                mode="lines+markers+text",
                text=[f"N={r['interval']}" for r in rows],
                textposition="top center",
                name=f"measured ({metric})",
                showlegend=col == 1,
                hovertemplate="N=%{text}<br>speedup %{x:.2f}x<br>" + metric + " %{y:.3f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=[r["ideal_speedup"] for r in rows],
                y=y,
                mode="markers",
                name="ideal (module calls / computed)",
                marker=dict(symbol="x", color="grey"),
                showlegend=col == 1,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="speedup over uncached (x)", row=1, col=col)
    fig.update_yaxes(title_text="PSNR vs uncached (dB)", row=1, col=1)
    fig.update_yaxes(title_text="SSIM vs uncached", row=1, col=2)
    fig.update_layout(height=380, margin=dict(l=60, r=20, t=50, b=50))
    return fig
