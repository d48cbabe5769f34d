"""The Policies tab: one seed through up to three caching policies at FORA N's cost, next to the uncached baseline:
images, the equal-cost table with paired speedups, measured plan maps and a small quality / cost sweep. Plans it
calibrates are kept (`store.learn_plans`) for the Compare tab."""

import gradio as gr

from analysis.arena.policies import POLICIES, PolicyResult
from analysis.arena.report import pareto_plot, plan_map_figure
from fora.loading import ModelLoadError
from fora.timing import clock_label, format_speedup
from ui import form, gpu, registry, store
from ui.display import failure, show, user_error
from ui.settings import Settings

ABOUT = (
    "The same seed (model, class, steps, seed and guidance on the left) through up to three caching "
    "policies at FORA N's cost, next to the uncached baseline. *calibrated*: this project's schedule "
    "fit on the model's own step x step similarity (shared by all blocks; -o1 extrapolates linearly). "
    "*TaylorSeer* and *First Block Cache* are diffusers' implementations (TaylorSeer at interval N with "
    "the warm-up that matches the cost, often FORA's own schedule: the arena searches all its settings; "
    "FBCache's threshold is bisected to the cost). *DBCache* is cache-dit's (Fn = 1, Bn = 0, warm-up 1; "
    "optionally its TaylorSeer calibrator), its threshold bisected to the cost; a row that cannot reach it says "
    "so. Plan maps are measured: which block really computed attention at which step."
)


def gallery_and_table(result: PolicyResult) -> tuple[list, list[list]]:
    """The images with their captions (baseline first) and the equal-cost table, one row per policy."""
    gallery = [(show(result.baseline), "uncached")]
    table = []
    for row, image in zip(result.rows, result.images):
        name = f"{row['policy']} {row['setting']}"
        gallery.append((show(image), f"{name}: {row['psnr']:.1f} dB"))
        if row.get("speedup") is not None:
            speed = format_speedup(row["speedup"], row["speedup_low"], row["speedup_high"], row["pairs"])
            speed += f" ({clock_label(row['clock'])})"
        else:
            speed = "measuring..." if not result.timed else "not measured"
        table.append(
            [
                name,
                f"{row['computed_calls']:.0f} of {result.total_calls} ({row['computed_fraction']:.0%})",
                f"{row['psnr']:.2f}",
                f"{row['ssim']:.4f}",
                speed,
            ]
        )
    return gallery, table


class PoliciesTab:
    """The tab's widgets, built where this is constructed (inside a `gr.Tab`), and the handler that fills them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        gr.Markdown(ABOUT)
        with gr.Row():
            self.chosen = gr.CheckboxGroup(
                list(POLICIES), value=["FORA", "calibrated-o1", "TaylorSeer order 1"], label="policies (up to 3)"
            )
            self.interval = gr.Slider(2, 10, value=3, step=1, label="cost: FORA N's computed calls")
        self.run = gr.Button("Compare policies", variant="primary")
        self.status = gr.Markdown("")
        self.gallery = gr.Gallery(label="same seed", columns=4, height=260, elem_id="policy-gallery")
        self.table = gr.Dataframe(
            headers=["policy", "computed calls", "PSNR (dB)", "SSIM", "speedup (paired)"],
            interactive=False,
            label="at equal cost",
        )
        self.maps = gr.Plot(label="plan maps (measured)")
        self.pareto = gr.Plot(label="small sweep")

    def wire(self) -> gr.events.Dependency:
        """Compare policies (`/policies`, queued with the other GPU events); returns its event."""
        s = self.settings
        return self.run.click(
            self.policies,
            [s.model, s.label, s.prompt, s.steps, s.seed, s.guidance, self.chosen, self.interval, s.frames],
            [self.gallery, self.table, self.maps, self.pareto, self.status],
            api_name="policies",
            concurrency_limit=1,
            concurrency_id="gpu",
        )

    def outputs(self, result: PolicyResult) -> dict:
        """Everything the tab shows of one `PolicyResult` (images first, then again with the speedups)."""
        gallery, table = gallery_and_table(result)
        maps = plan_map_figure({k: v for k, v in result.maps.items() if v is not None})
        pareto = pareto_plot(
            result.sweep_rows, x="computed_fraction", title="Small sweep: quality against cost (this seed)"
        )
        status = (
            "done: speedups measured without observers"
            if result.timed
            else "images ready; timing each policy against uncached..."
        )
        return {self.gallery: gallery, self.table: table, self.maps: maps, self.pareto: pareto, self.status: status}

    def policies(
        self, model_key, label, prompt, steps, seed, guidance, chosen, interval, frames=None, progress=gr.Progress()
    ):
        """The same seed through up to three policies at FORA N's cost, next to the uncached baseline."""
        try:
            pipe, _ = registry.get_model(model_key)
            plans = store.known_plans()
            job = form.parse_policies(
                pipe, model_key, label, prompt, steps, seed, guidance, chosen, interval, plans, frames
            )
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        try:
            with registry.hold(model_key, pipe):
                stream = gpu.policies_on_gpu(job, plans)
                try:
                    for event in stream:
                        if event is None:  # heartbeat: lets a cancel close this generator while it waits
                            yield gr.skip()
                        elif isinstance(event, str):
                            progress(None, desc=event)
                            yield {self.status: f"running: {event}"}
                        else:
                            store.learn_plans(event.new_plans)  # calibrated in the (ZeroGPU) worker, kept here
                            yield self.outputs(event)
                finally:
                    stream.close()
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        except gr.Error:
            raise
        except Exception as e:
            raise failure("policies", e) from None
