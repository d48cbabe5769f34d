"""The Compare tab: one seed uncached and with FORA (or a calibrated plan at N's cost), their images, metrics and
layer x step maps streamed while they run, then the measured speedup; the plots redraw from the kept result."""

import math
import uuid

import gradio as gr

from analysis.memory import size_text
from analysis.plots import ATTENTION_KINDS, neighbour_heatmaps, pairwise_heatmap, schedule_strip, step_error_plot
from fora.loading import ModelLoadError
from fora.timing import clock_label
from ui import form, gpu, registry, store
from ui.display import failure, show, user_error
from ui.settings import Settings


def _duration(seconds: float) -> str:
    """A median call time to 3 significant figures (a few pairs' timings support no more), never in exponent form:
    "48.2 ms", "0.120 ms", "271 s", "2713 s"."""
    value, unit = (seconds * 1e3, "ms") if float(f"{seconds:.3g}") < 1 else (seconds, "s")
    value = float(f"{value:.3g}")  # rounded first: 0.9997 s is "1.00 s", not "1000 ms"
    decimals = max(0, 2 - math.floor(math.log10(value))) if value > 0 else 0
    return f"{value:.{decimals}f} {unit}"


def _worst_frame_rows(worst: dict | None) -> list[list]:
    """A video's worst frame, which the clip's PSNR and mean SSIM average away; no row for an image."""
    if worst is None:
        return []
    value = "inf (identical)" if worst["psnr"] == float("inf") else f"{worst['psnr']:.2f} dB"
    return [
        [
            "worst frame (lowest PSNR)",
            f"frame {worst['frame']} of {worst['frames']}: {value}, SSIM {worst['ssim']:.4f}; lowest SSIM "
            f"{worst['min_ssim']:.4f} at frame {worst['min_ssim_frame']}",
        ]
    ]


def _metrics_rows(
    comp, cached_baseline: bool, speed=None, pairs: int = form.COMPARE_PAIRS, measuring: bool = True, clock: str = ""
) -> list[list]:
    """The metrics table of a comparison; the speedup rows say "measuring" until the timed pairs are in."""
    m = comp.metrics
    what_ran = m["policy"] + ("" if m["policy"].startswith("FORA") else ", shared schedule")
    if speed is not None:
        what = f" ({clock_label(clock)})" if clock else ""
        timed, calls = f"{speed}{what}", f"{_duration(speed.baseline_s)} / {_duration(speed.fora_s)}"
    elif measuring and pairs:
        timed, calls = f"measuring: 1 warm-up + {pairs} pairs of calls without observers...", "..."
    else:
        timed = calls = "not measured (FORA_COMPARE_PAIRS=0)"
    # the three side by side: the share of attention/MLP calls computed, the speedup that share allows, and the one
    # measured; the gap between the last two is what the rest of the model (and the machine) takes
    computed = f"{m['computed_calls']} of {m['module_calls']} ({m['computed_calls'] / m['module_calls']:.0%})"
    return [
        ["attention/MLP calls computed", computed],
        ["speedup, ideal (module calls / computed calls)", f"{m['ideal_speedup']:.2f}x"],
        ["speedup, measured (baseline / FORA, median of pairs)", timed],
        ["policy", what_ran],
        ["call time, baseline / FORA (median)", calls],
        ["full / reuse steps", f"{m['full_steps']} / {m['reuse_steps']}"],
        ["PSNR vs baseline", "inf (identical)" if m["psnr"] == float("inf") else f"{m['psnr']:.2f} dB"],
        ["SSIM vs baseline", f"{m['ssim']:.4f}" + (" (mean of the frames)" if "worst_frame" in m else "")],
        *_worst_frame_rows(m.get("worst_frame")),
        [
            "LPIPS vs baseline (AlexNet)",
            f"{m['lpips']:.4f}" if m.get("lpips") is not None else f"not computed: {m.get('lpips_note', '')}",
        ],
        ["mean |difference|", f"{m['mad']:.4f}"],
        ["cache memory", f"{m['cache_bytes'] / 2**20:.2f} MiB"],
        ["baseline run", "cached from an earlier request" if cached_baseline else "run for this request"],
    ]


def _heatmaps(kept: store.Redraws, source: str):
    """The layer x step maps of the FORA run or of the uncached baseline (`source`, checked: one of
    `form.HEAT_SOURCES`): the attention kinds the family has side by side (self-attention, the text stream of
    joint attention, cross-attention), then its MLP kinds."""
    uncached = source == "uncached baseline"
    rec, prefix = (kept.baseline, "uncached") if uncached else (kept.fora, kept.policy)
    return _maps(rec, f"{prefix}: ", ", cos to previous computed step")


def _maps(rec, before: str, after: str = ""):
    """The attention and the MLP figure of a recorder (or a live `MapsSnapshot`): every kind it recorded."""
    kinds = list(rec.neighbour)
    attention = [k for k in kinds if k in ATTENTION_KINDS]
    mlps = [k for k in kinds if k not in ATTENTION_KINDS]
    return (
        neighbour_heatmaps(rec, attention, f"{before}attention{after}"),
        neighbour_heatmaps(rec, mlps, f"{before}MLP{after}"),
    )


def _pairwise(kept: store.Redraws, view: form.PlotView):
    """The step x step map of the uncached run at the view's block and module (checked: both recorded)."""
    return pairwise_heatmap(kept.baseline, view.block, view.kind)


def _last_result(token) -> store.Redraws:
    """The maps of the comparison the session's token names, kept in the server (`store.RESULTS`)."""
    kept = store.RESULTS.get(token) if token else None
    if kept is None:
        raise gr.Error(
            "generate again: the plots are redrawn from your last run, and the server keeps the maps of the "
            f"{store.RESULTS.size} most recent runs of all its users only, in {size_text(store.RESULTS.max_bytes)}",
            print_exception=False,
        )
    return kept


def _session(request) -> str | None:
    return getattr(request, "session_hash", None)


def _superseded(token, request) -> bool:
    """A redraw with nothing to draw: no run yet, or a new run has cleared the session's page since `token`."""
    return not token or not store.is_current(_session(request), token)


def redraw_pairwise(token, block, kind, model_key=None, request: gr.Request = None):
    """The step x step map for another block or module of the session's last comparison. Skipped (nothing
    redrawn, no error) before the first run, while a new run replaces it, and when the model has changed since it
    (a model switch refills the block list, whose change event lands here: the last result is another model's)."""
    if _superseded(token, request):
        return gr.skip()
    kept = _last_result(token)
    if model_key is not None and kept.model != model_key:
        return gr.skip()
    try:  # the checks a Generate makes before it runs, against what this result recorded
        view = form.parse_view(kept.baseline.blocks, kept.baseline.kinds, block, kind)
    except ValueError as e:
        raise user_error(e) from None
    return _pairwise(kept, view)


class CompareTab:
    """The tab's widgets, built where this is constructed (inside a `gr.Tab`), and the handlers that fill them."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.status = settings.status  # the status line under Generate, in the settings column
        with gr.Row():
            self.base_img = gr.Image(label="uncached baseline", height=256, format="png", elem_id="baseline")
            self.fora_img = gr.Image(label="FORA", height=256, format="png", elem_id="fora")
            self.diff_img = gr.Image(label="|difference| x4", height=256, format="png", elem_id="diff")
        # a video's frame in all three boxes at once, to compare them frame by frame (0: the three clips, playing)
        self.frame = gr.Slider(0, 1, value=0, step=1, label="frame (0 = play)", visible=False, elem_id="frame")
        self.metrics = gr.Dataframe(headers=["metric", "value"], label="metrics", interactive=False)
        self.strip = gr.Plot(label="schedule")
        self.heat_source = gr.Radio(
            list(form.HEAT_SOURCES),
            value=form.HEAT_SOURCES[0],
            label="layer x step maps from (FORA: blank columns are reuse steps)",
        )
        with gr.Row():
            self.heat_attn = gr.Plot(label="attention (each kind of the family): layer x step", elem_id="heat-attn")
            self.heat_mlp = gr.Plot(label="MLP (each kind of the family): layer x step", elem_id="heat-mlp")
        with gr.Row():
            # the default model's blocks and modules (emoji-dit); both lists follow the model (`Settings.wire`). Any
            # value reaches the handlers, which check it against what the run records (`form.parse_view`) and say so
            # safely; Gradio's own refusal would echo the value as HTML
            self.block_choice = gr.Dropdown(
                ["0", "2", "3", "5"], value="5", label="block for step x step", allow_custom_value=True
            )
            self.kind_choice = gr.Dropdown(["attn", "mlp"], value="attn", label="module", allow_custom_value=True)
        self.pairwise = gr.Plot(label="step x step (uncached run)", elem_id="pairwise")
        self.err = gr.Plot(label="error per step")
        self.last: gr.State | None = None  # made by `wire`

    def wire(self) -> gr.events.Dependency:
        """Generate (`/generate`, queued with the other GPU events) and the redraws; returns Generate's event."""
        # the token of this session's last comparison; the comparison stays in the server. Made here, after the
        # tabs, so the page's components keep their ids (the API names unlabelled outputs by id)
        self.last = gr.State(None)
        s = self.settings
        generated = s.run.click(
            self.generate,
            [
                s.model,
                s.label,
                s.prompt,
                s.steps,
                s.interval,
                s.seed,
                s.guidance,
                *s.advanced,
                self.block_choice,
                self.heat_source,
                self.kind_choice,
                s.policy,
                s.frames,
            ],
            [
                self.base_img,
                self.fora_img,
                self.diff_img,
                self.metrics,
                self.heat_attn,
                self.heat_mlp,
                self.pairwise,
                self.strip,
                self.err,
                self.status,
                self.last,
                self.frame,
            ],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        self.frame.input(  # every input event of a drag: the last one wins, so the boxes end at the slider's frame
            self.redraw_frame,
            [self.last, self.frame],
            [self.base_img, self.fora_img, self.diff_img],
            trigger_mode="always_last",
            api_name=False,
        )
        self.heat_source.change(
            self.redraw_heatmaps, [self.last, self.heat_source], [self.heat_attn, self.heat_mlp], api_name=False
        )
        for widget in (self.block_choice, self.kind_choice):
            widget.change(
                redraw_pairwise,
                [self.last, self.block_choice, self.kind_choice, self.settings.model],
                self.pairwise,
                api_name=False,
            )
        return generated

    def generate(
        self,
        model_key,
        label,
        prompt,
        steps,
        interval,
        seed,
        guidance,
        cache_attn,
        cache_cross_attn,
        cache_mlp,
        cache_start,
        cache_end,
        blocks,
        block_choice,
        heat_source="FORA run",
        pair_kind="attn",
        policy="FORA",
        frames=None,
        progress=gr.Progress(),
        request: gr.Request = None,
    ):
        """Baseline and FORA image with the same seed and their heatmaps first, the measured speedup when timed."""
        try:
            pipe, _ = registry.get_model(model_key)  # in the main process: a forked GPU worker inherits it
            job = form.parse_generate(
                pipe,
                model_key,
                label,
                prompt,
                steps,
                interval,
                seed,
                guidance,
                cache_attn,
                cache_cross_attn,
                cache_mlp,
                cache_start,
                cache_end,
                blocks,
                policy,
                store.known_plans(),
                frames,
            )
            view = form.parse_view(*form.recorded_view(pipe), block_choice, pair_kind, heat_source, stale_ok=True)
            key = (model_key, job.request)
            cached = store.BASELINES.get(key)
            if registry.on_zerogpu():  # a request over the reservation's cap is refused before it clears the page
                gpu.compare_seconds(job, cached)
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        comp = None
        plan = job.config.plan
        done = f"{plan.name} at N={job.config.interval}'s cost" if plan else f"N={job.config.interval}"
        done += f", seed {job.request.seed}"
        try:
            # the lock is taken here, never in the worker: a lock held by another thread at fork time stays held there
            with registry.hold(model_key, pipe):
                # once, as the run starts: the last result goes, so no box, row or plot of it stands beside this
                # run's, and its redraws stop (the frame slider would put its frames over this run's baseline). Never
                # with every progress event: the browser then dropped the 'compared' update
                store.set_current(_session(request), None)  # a redraw sent before this, with the old token, skips
                yield {
                    self.base_img: show(cached.images[0]) if cached is not None else None,
                    self.fora_img: None,
                    self.diff_img: None,
                    self.metrics: None,
                    self.strip: None,
                    self.err: None,
                    self.last: None,
                    self.frame: gr.update(visible=False, value=0),
                }
                stream = gpu.compare_on_gpu(job, cached)
                try:
                    for p in stream:
                        if p is None:  # heartbeat: lets a cancel close this generator while the pairs are timed
                            yield gr.skip()
                        elif p.phase in ("baseline", "fora"):
                            progress((p.step, p.num_steps), desc=f"{p.phase}: step {p.step}/{p.num_steps}")
                            heat_attn, heat_mlp = _maps(p.maps, f"{p.phase}: ")
                            yield {
                                self.heat_attn: heat_attn,
                                self.heat_mlp: heat_mlp,
                                self.status: f"running the {p.phase}: step {p.step} of {p.num_steps}",
                            }
                        elif p.phase == "baseline done":
                            store.BASELINES.put(key, p.baseline)
                            yield {self.base_img: show(p.baseline.images[0])}
                        elif p.phase == "compared":
                            comp, token = p.comparison, uuid.uuid4().hex
                            kept = store.Redraws.of(comp, model_key)  # the redraws skip once the model changed
                            kept_ok = store.RESULTS.put(token, kept)
                            store.set_current(_session(request), token if kept_ok else None)
                            if not kept_ok:
                                token = None  # too big to keep: shown, not redrawn
                                size, largest = size_text(store.result_bytes(kept)), size_text(store.RESULTS.largest)
                                done += (
                                    f" (its maps and frames, {size}, are more than the server keeps of one run, "
                                    f"{largest}: the plots and frames are not redrawn; fewer frames or steps are)"
                                )
                            run = comp.fora.run
                            heat_attn, heat_mlp = _heatmaps(kept, view.source)
                            strip = schedule_strip(run.num_steps, run.full_steps, comp.fora.similarity.timesteps)
                            base, cached_run, diff = kept.clips or (
                                comp.baseline.images[0],
                                comp.fora.images[0],
                                comp.diff_image(),
                            )
                            yield {
                                self.base_img: show(base),
                                self.fora_img: show(cached_run),
                                self.diff_img: show(diff, lossless=True),
                                self.metrics: _metrics_rows(comp, cached is not None, pairs=job.pairs),
                                self.heat_attn: heat_attn,
                                self.heat_mlp: heat_mlp,
                                self.pairwise: _pairwise(kept, view),
                                self.strip: strip,
                                self.err: step_error_plot(comp.step_error, run.full_steps),
                                self.status: f"images ready: {done}, {len(run.full_steps)} full steps of "
                                f"{run.num_steps}; timing the speedup...",
                                self.last: token,
                                self.frame: gr.update(
                                    visible=bool(kept.clips and token),
                                    maximum=len(kept.clips[0]) if kept.clips else 1,
                                    value=0,
                                ),
                            }
                        elif p.phase == "timed":
                            comp.speed = p.speed
                            yield {
                                self.metrics: _metrics_rows(
                                    comp, cached is not None, p.speed, measuring=False, clock=p.clock
                                ),
                                self.status: f"done: {done}, {len(comp.fora.run.full_steps)} full steps of "
                                f"{job.request.steps}; speedup {p.speed or 'not measured'}",
                            }
                finally:
                    stream.close()  # cancelled or failed: stop the run at its next step before the lock is released
        except (ValueError, ModelLoadError) as e:
            raise user_error(e) from None
        except gr.Error:
            raise
        except Exception as e:  # e.g. out of memory: say what failed, never show a stack trace
            raise failure("generation", e) from None

    def redraw_frame(self, token, frame, request: gr.Request = None):
        """The session's last comparison at one frame of its video, in all three boxes (0: the clips, playing).
        Skipped while a new run replaces it: a move sent just before Generate carries the old token."""
        if _superseded(token, request):
            return gr.skip()
        kept = _last_result(token)
        if not kept.clips:
            return gr.skip()
        try:
            frame = form.integer("frame", frame, 0, len(kept.clips[0]))
        except ValueError as e:
            raise user_error(e) from None
        shown = [clip if frame == 0 else clip[frame - 1] for clip in kept.clips]
        boxes = (self.base_img, self.fora_img, self.diff_img)
        out = {box: show(x, lossless=box is self.diff_img) for box, x in zip(boxes, shown)}
        return gr.skip() if _superseded(token, request) else out  # a run that started while the clips were encoded

    def redraw_heatmaps(self, token, source, request: gr.Request = None):
        """The layer x step maps of the session's last comparison, from its FORA run or its uncached baseline."""
        if _superseded(token, request):
            return gr.skip()
        try:
            source = form.one_of("layer x step maps from", source, form.HEAT_SOURCES)
        except ValueError as e:
            raise user_error(e) from None
        heat_attn, heat_mlp = _heatmaps(_last_result(token), source)
        return {self.heat_attn: heat_attn, self.heat_mlp: heat_mlp}
