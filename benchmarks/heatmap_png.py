"""The app's heatmaps at the paper's size, to look at: `python -m benchmarks.heatmap_png --out /tmp/heatmaps`.

Feeds a `SimilarityRecorder` with synthetic observations for 28 layers x 250 steps (features that drift slowly,
faster in early steps and deeper layers, so the map has structure), draws the layer x step and step x step maps
with `analysis.plots` as the app does, and screenshots them in headless Chromium (Debian's) to PNG files.
"""

import argparse
import os

import numpy as np
import plotly.io as pio
import torch

from analysis.metrics.similarity import SimilarityRecorder
from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip
from fora.observers import Observation, RunEvent
from fora.schedule import full_steps


def synthetic_recorder(num_blocks: int = 28, steps: int = 250, interval: int = 1, tokens: int = 16, width: int = 64):
    rec = SimilarityRecorder(num_blocks)
    full = full_steps(steps, interval)
    rec.on_run_start(RunEvent(steps, tuple(full)))
    g = torch.Generator().manual_seed(0)
    state = {(b, k): torch.randn(2, tokens, width, generator=g) for b in range(num_blocks) for k in ("attn", "mlp")}
    for step in range(steps):
        t = 999.0 * (1 - step / steps)
        for block in range(num_blocks):
            for kind in ("attn", "mlp"):
                drift = 0.02 + 0.4 * (t / 1000) ** 2 * (
                    1 + block / num_blocks
                )  # early steps and deep layers move more
                state[(block, kind)] = state[(block, kind)] + drift * torch.randn(2, tokens, width, generator=g)
                if step in full:
                    rec(Observation(block, kind, step, steps, t, state[(block, kind)]))
    rec.on_run_end(RunEvent(steps, tuple(full)))
    return rec


def screenshot(fig, path: str, width: int, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    html = path[:-4] + ".html"
    with open(html, "w") as f:
        f.write(pio.to_html(fig, full_html=True, include_plotlyjs=True, default_width=f"{width}px"))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": width + 40, "height": 900})
        page.goto("file://" + os.path.abspath(html))
        page.wait_for_selector(".js-plotly-plot .heatmaplayer, .js-plotly-plot .hm", timeout=30_000)
        page.locator(".js-plotly-plot").first.screenshot(path=path)
        browser.close()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="heatmaps")
    p.add_argument("--width", type=int, default=640, help="pixels: about the width of one map in the app")
    p.add_argument("--chromium", default="/usr/bin/chromium")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for interval in (1, 3):
        rec = synthetic_recorder(interval=interval)
        figs = {f"neighbour-N{interval}": neighbour_heatmap(rec, "attn", f"28 layers x 250 steps, N={interval}")}
        if interval == 1:
            figs["pairwise"] = pairwise_heatmap(rec, 27, "attn")
        else:
            figs["strip"] = schedule_strip(rec.num_steps, rec.full_steps, rec.timesteps)
        for name, fig in figs.items():
            path = os.path.join(args.out, f"{name}.png")
            screenshot(fig, path, args.width, args.chromium)
            print(f"wrote {path}; neighbour finite cells: {int(np.isfinite(rec.neighbour['attn']).sum())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
