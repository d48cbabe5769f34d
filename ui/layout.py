"""The page: the settings column beside the five tabs, and the events between them (Stop cancels every GPU event).

`build_layout()` returns the Blocks with its tabs, for tests and scripts that call the handlers; `build_demo()` just
the Blocks, what `app.py` serves.
"""

from dataclasses import dataclass

import gradio as gr

from ui.settings import Settings
from ui.tabs.compare import CompareTab
from ui.tabs.memory import MemoryTab
from ui.tabs.policies import PoliciesTab
from ui.tabs.sweep import SweepTab
from ui.tabs.table3 import Table3Tab

CACHE_LIFETIME_S = 3600  # Gradio's temp files (images, downloads) older than this are deleted, checked hourly
INTRO = (
    "# FORA: Fast-Forward Caching explorer\nEvery N steps each transformer block computes attention "
    "and MLP and caches them; the N-1 steps in between reuse the cache. Generate to compare with the "
    "uncached baseline (same seed) and watch the per-layer similarity that makes caching work."
)


@dataclass(frozen=True)
class Layout:
    demo: gr.Blocks
    settings: Settings
    compare: CompareTab
    sweep: SweepTab
    policies: PoliciesTab
    memory: MemoryTab
    table3: Table3Tab


def build_layout() -> Layout:
    """The whole page, its widgets and events; no model is loaded (they load on first use)."""
    with gr.Blocks(title="FORA explorer", delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=1):
                settings = Settings()
            with gr.Column(scale=2):
                with gr.Tab("Compare"):
                    compare = CompareTab(settings)
                with gr.Tab("Sweep"):
                    sweep = SweepTab(settings)
                with gr.Tab("Policies"):
                    policies = PoliciesTab(settings)
                with gr.Tab("Memory"):
                    memory = MemoryTab()
                with gr.Tab("Table 3"):
                    table3 = Table3Tab()
        settings.wire(compare.block_choice, compare.kind_choice)
        gpu_events = [compare.wire(), sweep.wire(), policies.wire()]
        settings.stop.click(None, None, None, cancels=gpu_events, api_name=False)
        table3.wire()
        memory.wire()
    return Layout(demo, settings, compare, sweep, policies, memory, table3)


def build_demo() -> gr.Blocks:
    """The app's Blocks, ready to `queue()` and `launch()`."""
    return build_layout().demo
