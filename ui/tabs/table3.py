"""The Table 3 tab: the committed distribution-quality table of the embedded model (the paper's Table 3), its
plots and the same seeds of one class at every N; read from files, nothing runs. Without a readable table it says
how to make one, and the app starts anyway."""

import os

import gradio as gr

from analysis.table.report import (
    DISPLAY_HEADERS,
    class_grid,
    describe,
    display_rows,
    fid_heatmap,
    fid_speed_plot,
    load_grid_samples,
    load_table,
)
from embedded.emoji.classes import LABELS
from fora.loading import ASSETS
from ui.display import safe_text
from ui.form import echo

TABLE3_DIR = os.environ.get("FORA_TABLE3_DIR", os.path.join(ASSETS, "emoji-dit", "table3"))
TABLE3_COMMAND = (
    "python -m analysis.table --model emoji-dit --steps 20 50 --intervals 1 2 3 5 7 10 --samples 1000 "
    "--out assets/emoji-dit/table3"
)


def table3_grid(class_name: str):
    """The committed samples of one class at every N (columns), one block of rows per T."""
    if class_name not in LABELS:
        raise gr.Error(safe_text(f"unknown class {echo(class_name)}; allowed: {', '.join(LABELS)}"))
    try:
        return class_grid(load_grid_samples(TABLE3_DIR), [LABELS.index(class_name)])
    except (FileNotFoundError, IndexError) as e:
        raise gr.Error(safe_text(f"no samples of class {class_name!r} in {TABLE3_DIR}: {e}")) from None


class Table3Tab:
    """The tab's widgets, built where this is constructed (inside a `gr.Tab`), from the table in `TABLE3_DIR`;
    `grid` is None when there is no readable table (the tab then only says so)."""

    def __init__(self):
        self.class_choice: gr.Dropdown | None = None
        self.grid: gr.Image | None = None
        try:
            meta = load_table(TABLE3_DIR)
            first = table3_grid(LABELS[0])
        except (OSError, ValueError, KeyError, gr.Error) as e:  # no table yet, or an unreadable one: say so, go on
            gr.Markdown(
                f"No readable Table 3 in `{TABLE3_DIR}` ({type(e).__name__}: {e}). Make it with "
                f"`{TABLE3_COMMAND}` (CPU hours; `torchrun --nproc_per_node K -m analysis.table ...` splits the "
                "work)."
            )
            return
        gr.Markdown(
            "Distribution quality over many samples per setting, the paper's Table 3 on the embedded "
            "model. FD to renders: Frechet distance to fresh renders of the emoji (lower is better; the paper's "
            "question: are the samples still like the data? It mixes the model's own bias with the cache's "
            "change). FD to uncached: to the uncached model's own samples of the same seeds (what did the cache "
            "change?). Intervals: 95%, paired bootstrap over the seeds; a change from N=1 is resolved only where "
            "its interval excludes 0. Score, precision, recall and class accuracy from the emoji classifier. "
            + describe(meta)
        )
        gr.Dataframe(value=display_rows(meta), headers=DISPLAY_HEADERS, interactive=False)
        gr.Plot(fid_heatmap(meta["rows"], meta.get("floor")))
        gr.Plot(fid_speed_plot(meta["rows"], meta.get("floor")))
        self.class_choice = gr.Dropdown(LABELS, value=LABELS[0], label="class")
        self.grid = gr.Image(first, label="the same seeds at every N (columns), one block per T", interactive=False)

    def wire(self) -> None:
        """A class chosen shows its grid (`/table3_grid`); nothing without a table."""
        if self.grid is not None:
            self.class_choice.change(table3_grid, self.class_choice, self.grid, api_name="table3_grid")
