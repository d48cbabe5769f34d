"""The Sweep tab: the current settings at several cache intervals (and seeds), timed in interleaved pairs: the
speed / quality curve, one image per interval, the table and the CSV / JSON / HTML report to download."""

import os
import shutil
import tempfile

import gradio as gr

from analysis.plots import tradeoff_plot
from analysis.sweep import SweepResult
from analysis.sweep.report import write_outputs
from fora.loading import ModelLoadError
from ui import form, gpu, registry
from ui.display import failure, show, user_error
from ui.settings import Settings

SWEEP_DIR = os.path.join(tempfile.gettempdir(), "fora-sweeps")
SWEEP_KEEP = 8  # report folders kept for download; older ones are deleted when a sweep writes a new one


def write_report(result: SweepResult, model_key: str) -> list[str]:
    """The sweep's CSV, JSON and HTML in a new folder under `SWEEP_DIR` (the oldest beyond `SWEEP_KEEP` go)."""
    os.makedirs(SWEEP_DIR, exist_ok=True)
    old = sorted((os.path.join(SWEEP_DIR, d) for d in os.listdir(SWEEP_DIR)), key=os.path.getmtime)
    for d in old[: max(0, len(old) - SWEEP_KEEP + 1)]:
        shutil.rmtree(d, ignore_errors=True)
    paths = write_outputs(result, tempfile.mkdtemp(dir=SWEEP_DIR), model_key)
    return [paths["csv"], paths["json"], paths["html"]]


def table_rows(result: SweepResult) -> list[list]:
    return [
        [
            r.interval,
            r.full_steps,
            str(r.speed),
            f"{r.ideal_speedup:.2f}x",
            "inf" if r.psnr == float("inf") else f"{r.psnr:.2f}",
            f"{r.ssim:.4f}",
            f"{r.cache_bytes / 2**20:.2f}",
        ]
        for r in result.rows
    ]


class SweepTab:
    """The tab's widgets, built where this is constructed (inside a `gr.Tab`), and the handler that fills them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        gr.Markdown(
            f"Uses the model, class or prompt, steps, seed, guidance and Advanced settings on the left. One request "
            f"runs at most {form.STEP_BUDGET} denoising steps, timing included."
        )
        self.intervals = gr.CheckboxGroup(
            [str(n) for n in form.SWEEP_INTERVALS], value=["1", "2", "3", "5", "7", "10"], label="intervals"
        )
        self.seeds = gr.Slider(1, form.SWEEP_SEEDS_MAX, value=2, step=1, label="seeds (from the chosen seed on)")
        self.run = gr.Button("Run sweep", variant="primary")
        self.status = gr.Markdown("")
        self.plot = gr.Plot(label="speed / quality")
        self.gallery = gr.Gallery(label="images per interval (first seed)", columns=7, height=220)
        self.table = gr.Dataframe(
            headers=["N", "full", "speedup (paired)", "ideal", "PSNR", "SSIM", "cache MiB"], interactive=False
        )
        self.files = gr.File(label="download CSV / JSON / HTML report", file_count="multiple")

    def wire(self) -> gr.events.Dependency:
        """Run sweep (`/sweep`, queued with the other GPU events); returns its event."""
        s = self.settings
        return self.run.click(
            self.sweep,
            [
                s.model,
                s.label,
                s.prompt,
                s.steps,
                s.seed,
                s.guidance,
                self.intervals,
                self.seeds,
                *s.advanced,
                s.frames,
            ],
            [self.plot, self.gallery, self.table, self.files, self.status],
            api_name="sweep",
            concurrency_limit=1,
            concurrency_id="gpu",
        )

    def sweep(
        self,
        model_key,
        label,
        prompt,
        steps,
        seed,
        guidance,
        intervals,
        num_seeds,
        cache_attn=True,
        cache_cross_attn=True,
        cache_mlp=True,
        cache_start=0,
        cache_end=0,
        blocks="",
        frames=None,
        progress=gr.Progress(),
    ):
        """The interval sweep for the current settings (seed and Advanced included): curve, images, files."""
        try:
            pipe, _ = registry.get_model(model_key)
            job = form.parse_sweep(
                pipe,
                model_key,
                label,
                prompt,
                steps,
                seed,
                guidance,
                intervals,
                num_seeds,
                cache_attn,
                cache_cross_attn,
                cache_mlp,
                cache_start,
                cache_end,
                blocks,
                frames,
            )
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        result = None
        try:
            with registry.hold(model_key, pipe):
                stream = gpu.sweep_on_gpu(job)
                try:
                    for event in stream:
                        if isinstance(event, SweepResult):
                            result = event
                        elif event is not None:
                            done, total, message = event
                            progress((done, total), desc=message)
                            yield {self.status: f"{message} ({done}/{total})"}
                        else:  # heartbeat: lets a cancel close this generator between runs
                            yield gr.skip()
                finally:
                    stream.close()
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        except gr.Error:  # already a message for the page
            raise
        except Exception as e:
            raise failure("sweep", e) from None
        yield {
            self.plot: tradeoff_plot([r.as_dict() for r in result.rows]),
            self.gallery: [(show(img), f"N={n}") for n, img in sorted(result.images.items())],
            self.table: table_rows(result),
            self.files: write_report(result, model_key),
            self.status: f"done: {result.timing}",
        }
