"""FORA explorer: generate with a cache interval, compare with the uncached baseline, see live heatmaps.

`python app.py` serves it on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change). Models
load lazily on first use; the UI only wires widgets to `fora/` and `analysis/`.

ZeroGPU (Hugging Face Spaces): only the `*_on_gpu` functions are decorated with `spaces.GPU`. There they run in a
forked worker process, so they read the model the main process loaded (`live.loaded`) and return everything a
later event needs (baseline, comparison, sweep result) as what they yield; the handlers around them run in the
main process: they parse the form, load models, hold the model lock and keep the results in the bounded caches.
"""

import os
import shutil
import tempfile
import time
import uuid

import gradio as gr
import torch

from analysis.arena.policies import POLICIES, PolicyResult
from analysis.arena.report import pareto_plot, plan_map_figure
from analysis.memory import MODEL_SHAPES, Bandwidth, hbm_answer, measure_bandwidth
from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip, step_error_plot, tradeoff_plot
from analysis.sweep import SweepResult
from analysis.sweep.report import write_outputs
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
from fora.loading import ASSETS, MODELS
from models.emoji.classes import LABELS
from models.emoji.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from ui import form, live
from ui.stream import stream_policies, stream_sweep

try:  # ZeroGPU on Hugging Face Spaces; a no-op decorator everywhere else
    import spaces

    gpu = spaces.GPU
except ImportError:  # pragma: no cover - depends on the host

    def gpu(fn=None, **kwargs):
        return fn if fn is not None else (lambda f: f)


DEFAULT_MODEL = "emoji-dit"
# Gradio runs handlers in worker threads. On the 2-core CPU machines this project is built on, a 2-thread torch
# run from a non-main thread took 1.25 s where a 1-thread run took 0.80 s and a main-thread 2-thread run 0.60 s
# (OpenMP teams of several threads contend), so the app uses one torch thread unless told otherwise.
TORCH_THREADS = int(os.environ.get("FORA_TORCH_THREADS", "1"))
QUEUE_SIZE = int(os.environ.get("FORA_QUEUE_SIZE", "16"))  # requests waiting beyond this are refused ("queue full")
# ZeroGPU reserves the GPU for `duration` seconds per call: estimated from the denoising steps a request runs
GPU_SECONDS_PER_STEP = float(os.environ.get("FORA_GPU_SECONDS_PER_STEP", "0.03"))
GPU_MAX_SECONDS = int(os.environ.get("FORA_GPU_MAX_SECONDS", "120"))
GPU_OVERHEAD_SECONDS = 10
CACHE_LIFETIME_S = 3600  # Gradio's temp files (images, downloads) older than this are deleted, checked hourly
SWEEP_DIR = os.path.join(tempfile.gettempdir(), "fora-sweeps")
SWEEP_KEEP = 8
SKIP = gr.skip()


def gpu_seconds(steps: int) -> int:
    """The `duration` asked of ZeroGPU for a request that runs `steps` denoising steps."""
    return int(min(GPU_MAX_SECONDS, GPU_OVERHEAD_SECONDS + steps * GPU_SECONDS_PER_STEP))


def _error(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


# -- GPU functions: forked workers on ZeroGPU; they read only their arguments and the main process' loaded models ---
def _compare_seconds(job: form.GenerateJob, baseline=None) -> int:
    return gpu_seconds(job.denoising_steps(baseline_cached=baseline is not None))


@gpu(duration=_compare_seconds)
def compare_on_gpu(job: form.GenerateJob, baseline=None):
    """Baseline (unless given), FORA run and timed pairs of one Compare click, streamed (`live.Progress`)."""
    yield from live.stream_comparison(
        live.loaded(job.model_key), job.request, job.config, baseline, job.pairs, job.warmup
    )


@gpu(duration=lambda job: gpu_seconds(job.denoising_steps()))
def sweep_on_gpu(job: form.SweepJob):
    """One Sweep click, streamed: `(done, total, message)` after each run, then the `SweepResult`."""
    yield from stream_sweep(
        live.loaded(job.model_key), job.request, job.intervals, job.seeds, job.config, job.pairs, job.warmup
    )


@gpu(duration=lambda job, plans: gpu_seconds(job.denoising_steps(len(job.missing_plans(plans)))))
def policies_on_gpu(job, plans: dict):
    """One Policies click, streamed: progress strings, then `PolicyResult`s (its plans calibrated here included)."""
    yield from stream_policies(live.loaded(job.model_key), job, plans)


@gpu(duration=20)
def measure_read_on_gpu(nbytes: int) -> Bandwidth:
    """Read `nbytes` on the accelerator (CPU without one), next to a plain large copy: the Memory tab's measurement."""
    return measure_bandwidth(nbytes, "cuda" if torch.cuda.is_available() else "cpu")


# -- Compare ----------------------------------------------------------------------------------------------------
def _metrics_rows(
    comp, cached_baseline: bool, speed=None, pairs: int = form.COMPARE_PAIRS, measuring: bool = True, clock: str = ""
) -> list[list]:
    m = comp.metrics
    what_ran = m["policy"] + ("" if m["policy"].startswith("FORA") else ", shared schedule")
    if speed is not None:
        what = {"cpu": " (process CPU time)", "wall": " (wall time)"}.get(clock, "")
        timed, calls = f"{speed}{what}", f"{speed.baseline_s * 1e3:.0f} ms / {speed.fora_s * 1e3:.0f} ms"
    elif measuring and pairs:
        timed, calls = f"measuring: 1 warm-up + {pairs} pairs of calls without observers...", "..."
    else:
        timed = calls = "not measured (FORA_COMPARE_PAIRS=0)"
    return [
        ["speedup, measured (baseline / FORA, median of pairs)", timed],
        ["policy", what_ran],
        [
            "speedup, ideal (all calls / computed calls)" if m["policy"][:4] != "FORA" else "speedup, ideal T / full",
            f"{m['ideal_speedup']:.2f}x",
        ],
        ["call time, baseline / FORA (median)", calls],
        ["full / reuse steps", f"{m['full_steps']} / {m['reuse_steps']}"],
        ["PSNR vs baseline", "inf (identical)" if m["psnr"] == float("inf") else f"{m['psnr']:.2f} dB"],
        ["SSIM vs baseline", f"{m['ssim']:.4f}"],
        ["mean |difference|", f"{m['mad']:.4f}"],
        ["cache memory", f"{m['cache_bytes'] / 2**20:.2f} MiB"],
        ["baseline run", "cached from an earlier request" if cached_baseline else "run for this request"],
    ]


def _heatmaps(comp, source):
    run = comp.baseline if source == "uncached baseline" else comp.fora
    prefix = "uncached" if run is comp.baseline else comp.metrics["policy"]
    return (
        neighbour_heatmap(run.similarity, "attn", f"{prefix}: self-attention, cos to previous computed step"),
        neighbour_heatmap(run.similarity, "mlp", f"{prefix}: MLP, cos to previous computed step"),
    )


def _pairwise(comp, block, kind):
    rec = comp.baseline.similarity
    block = int(block) if block not in (None, "") else rec.blocks[-1]
    block = block if block in rec.blocks else rec.blocks[-1]
    return pairwise_heatmap(rec, block, kind if kind in rec.kinds else "attn")


def generate(
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
    progress=gr.Progress(),
):
    """Baseline and FORA image with the same seed and their heatmaps first, the measured speedup when timed."""
    try:
        pipe, lock = live.get_model(model_key)  # in the main process: a forked GPU worker inherits it
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
            live.known_plans(),
        )
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    key = (model_key, job.request)
    cached = live.BASELINES.get(key)
    comp = token = None
    plan = job.config.plan
    done = f"{plan.name} at N={job.config.interval}'s cost" if plan else f"N={job.config.interval}"
    done += f", seed {job.request.seed}"
    try:
        with lock:  # taken here, never in the worker: a lock held by another thread at fork time stays held there
            stream = compare_on_gpu(job, cached)
            try:
                for p in stream:
                    if p is None:  # heartbeat: lets a cancel close this generator while the pairs are timed
                        yield (SKIP,) * 11
                    elif p.phase in ("baseline", "fora"):
                        progress((p.step, p.num_steps), desc=f"{p.phase}: step {p.step}/{p.num_steps}")
                        yield (
                            SKIP,
                            SKIP,
                            SKIP,
                            SKIP,
                            neighbour_heatmap(p.maps, "attn", f"{p.phase}: self-attention"),
                            neighbour_heatmap(p.maps, "mlp", f"{p.phase}: MLP"),
                            SKIP,
                            SKIP,
                            SKIP,
                            f"running the {p.phase}: step {p.step} of {p.num_steps}",
                            SKIP,
                        )
                    elif p.phase == "baseline done":
                        live.BASELINES.put(key, p.baseline)
                        yield (live.upscale(p.baseline.images[0]),) + (SKIP,) * 10
                    elif p.phase == "compared":
                        comp, token = p.comparison, uuid.uuid4().hex
                        live.RESULTS.put(token, comp)
                        run = comp.fora.run
                        yield (
                            live.upscale(comp.baseline.images[0]),
                            live.upscale(comp.fora.images[0]),
                            live.upscale(comp.diff_image()),
                            _metrics_rows(comp, cached is not None, pairs=job.pairs),
                            *_heatmaps(comp, heat_source),
                            _pairwise(comp, block_choice, pair_kind),
                            schedule_strip(run.num_steps, run.full_steps, comp.fora.similarity.timesteps),
                            step_error_plot(comp.step_error, run.full_steps),
                            f"images ready: {done}, {len(run.full_steps)} full steps of {run.num_steps}; "
                            "timing the speedup...",
                            token,
                        )
                    elif p.phase == "timed":
                        comp.speed = p.speed
                        rows = _metrics_rows(comp, cached is not None, p.speed, measuring=False, clock=p.clock)
                        status = (
                            f"done: {done}, {len(comp.fora.run.full_steps)} full steps of {job.request.steps}; "
                            f"speedup {p.speed or 'not measured'}"
                        )
                        yield (SKIP, SKIP, SKIP, rows, *(SKIP,) * 5, status, SKIP)
            finally:
                stream.close()  # cancelled or failed: stop the run at its next step before the lock is released
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    except gr.Error:
        raise
    except Exception as e:  # e.g. out of memory: say what failed, never show a stack trace
        raise gr.Error(f"generation failed: {type(e).__name__}: {e}", print_exception=True) from None


def _last_result(token):
    comp = live.RESULTS.get(token) if token else None
    if comp is None:
        raise gr.Error(
            "generate first: the plots are redrawn from your last run (kept for the 16 most recent runs)",
            print_exception=False,
        )
    return comp


def redraw_heatmaps(token, source):
    return _heatmaps(_last_result(token), source) if token else (SKIP, SKIP)


def redraw_pairwise(token, block, kind):
    rec = _last_result(token).baseline.similarity
    block = int(block)
    if block not in rec.blocks:
        raise gr.Error(f"block {block} has no step x step map; recorded blocks: {rec.blocks}", print_exception=False)
    if kind not in rec.kinds:
        raise gr.Error(f"kind {kind!r} not recorded; recorded: {', '.join(rec.kinds)}", print_exception=False)
    return pairwise_heatmap(rec, block, kind)


# -- Sweep ------------------------------------------------------------------------------------------------------
def _sweep_outputs(result: SweepResult, model_key: str):
    os.makedirs(SWEEP_DIR, exist_ok=True)
    old = sorted((os.path.join(SWEEP_DIR, d) for d in os.listdir(SWEEP_DIR)), key=os.path.getmtime)
    for d in old[: max(0, len(old) - SWEEP_KEEP + 1)]:
        shutil.rmtree(d, ignore_errors=True)
    paths = write_outputs(result, tempfile.mkdtemp(dir=SWEEP_DIR), model_key)
    gallery = [(live.upscale(img), f"N={n}") for n, img in sorted(result.images.items())]
    table = [
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
    files = [paths["csv"], paths["json"], paths["html"]]
    return tradeoff_plot([r.as_dict() for r in result.rows]), gallery, table, files


def sweep(
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
    progress=gr.Progress(),
):
    """The interval sweep for the current settings (seed and Advanced included): curve, images, files."""
    try:
        pipe, lock = live.get_model(model_key)
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
        )
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    result = None
    try:
        with lock:
            stream = sweep_on_gpu(job)
            try:
                for event in stream:
                    if isinstance(event, SweepResult):
                        result = event
                    elif event is not None:
                        done, total, message = event
                        progress((done, total), desc=message)
                        yield SKIP, SKIP, SKIP, SKIP, f"{message} ({done}/{total})"
                    else:
                        yield SKIP, SKIP, SKIP, SKIP, SKIP
            finally:
                stream.close()
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    except Exception as e:
        raise gr.Error(f"sweep failed: {type(e).__name__}: {e}", print_exception=True) from None
    yield *_sweep_outputs(result, model_key), f"done: {result.timing}"


# -- Policies ---------------------------------------------------------------------------------------------------
def _policy_outputs(result: PolicyResult):
    gallery = [(live.upscale(result.baseline), "uncached")]
    table = []
    for row, image in zip(result.rows, result.images):
        name = f"{row['policy']} {row['setting']}"
        gallery.append((live.upscale(image), f"{name}: {row['psnr']:.1f} dB"))
        if row.get("speedup") is not None:
            speed = (
                f"{row['speedup']:.2f}x, {row['speedup_low']:.2f}-{row['speedup_high']:.2f} over {row['pairs']} "
                f"pairs ({row['clock']} clock)"
            )
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
    maps = plan_map_figure({k: v for k, v in result.maps.items() if v is not None})
    pareto = pareto_plot(
        result.sweep_rows, x="computed_fraction", title="Small sweep: quality against cost (this seed)"
    )
    return gallery, table, maps, pareto


def policies(model_key, label, prompt, steps, seed, guidance, chosen, interval, progress=gr.Progress()):
    """The same seed through up to three policies at FORA N's cost, next to the uncached baseline."""
    try:
        pipe, lock = live.get_model(model_key)
        plans = live.known_plans()
        job = form.parse_policies(pipe, model_key, label, prompt, steps, seed, guidance, chosen, interval, plans)
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    try:
        with lock:
            stream = policies_on_gpu(job, plans)
            try:
                for event in stream:
                    if event is None:
                        yield (SKIP,) * 5
                    elif isinstance(event, str):
                        progress(None, desc=event)
                        yield *(SKIP,) * 4, f"running: {event}"
                    else:
                        live.learn_plans(event.new_plans)
                        status = (
                            "done: speedups measured without observers"
                            if event.timed
                            else "images ready; timing each policy against uncached..."
                        )
                        yield *_policy_outputs(event), status
            finally:
                stream.close()
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    except gr.Error:
        raise
    except Exception as e:
        raise gr.Error(f"policies failed: {type(e).__name__}: {e}", print_exception=True) from None


# -- Memory -----------------------------------------------------------------------------------------------------
def _memory_answer(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization, measure: bool):
    try:
        q = form.parse_memory(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization)
    except ValueError as e:
        raise _error(e) from None
    a = hbm_answer(
        MODEL_SHAPES[q.shape_key],
        q.batch,
        q.dtype,
        q.steps,
        q.interval,
        q.bandwidth_tbps * 1e12,
        q.tflops * 1e12,
        q.utilization,
    )
    if a["cache_bytes"] > 2**30:
        where = "Too large to measure here (over 1 GiB)."
    elif not measure:
        where = "Measuring the read on this machine (after any running generation)..."
    else:
        try:
            bw = measure_read_on_gpu(a["cache_bytes"])
            where = (
                f"Measured on this machine ({bw.device}): reading {bw.nbytes / 2**20:.1f} MiB took "
                f"{bw.read_s * 1e3:.3g} ms, {bw.read_GBps:.1f} GB/s; a plain copy of {bw.copy_bytes / 2**20:.0f} "
                f"MiB on the same device runs at {bw.copy_GBps:.1f} GB/s (read + write)."
            )
        except Exception as e:  # the calculator above stands; say why the measurement is missing
            where = f"Could not measure the read on this machine: {type(e).__name__}: {e}"
    verdict = "yes" if a["compute_over_read"] > 1 else "no"
    return f"""
| | per reuse step | per run ({a["reuse_steps"]} reuse steps of {q.steps}) |
|---|---|---|
| cache size ({q.dtype}, batch {q.batch} x 2 for guidance) | {a["cache_bytes"] / 2**20:.1f} MiB | same buffer, reused |
| read the cache at {q.bandwidth_tbps:g} TB/s | {a["read_ms_per_step"]:.3f} ms | {a["read_ms_per_run"]:.2f} ms |
| attention + MLP it replaces at {q.tflops:g} TFLOP/s x {q.utilization:g} | {a["compute_ms_per_step"]:.3f} ms | {a["compute_ms_per_step"] * a["reuse_steps"]:.2f} ms |
| net time saved | {a["compute_ms_per_step"] - a["read_ms_per_step"]:.3f} ms | {a["saved_ms_per_run"]:.2f} ms |

**Is HBM fast enough? {verdict}:** the replaced compute takes **{a["compute_over_read"]:.0f}x** longer than reading
the cache back. {where}
"""


def memory_calculator(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization):
    """The calculator's answer at once (arithmetic only); the measured read follows from `memory`."""
    return _memory_answer(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization, False)


def memory(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization):
    """Cache size and HBM read time against the compute it replaces (arithmetic here, the read on the GPU)."""
    return _memory_answer(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization, True)


# -- widgets ----------------------------------------------------------------------------------------------------
def on_model_change(model_key):
    try:
        pipe, _ = live.get_model(model_key)
    except (ValueError, live.ModelLoadError) as e:
        gr.Warning(str(e))
        return SKIP, SKIP, SKIP, SKIP
    labels = live.labels_of(pipe)
    spec = MODELS.get(model_key)
    steps = spec.default_steps if spec else 30
    blocks = [str(b) for b in live.default_blocks(form.num_blocks(pipe))]
    if labels:
        return (
            gr.update(choices=labels, value=labels[0], visible=True),
            gr.update(visible=False),
            gr.update(value=steps),
            gr.update(choices=blocks, value=blocks[-1]),
        )
    return (
        gr.update(visible=False),
        gr.update(visible=True),
        gr.update(value=steps),
        gr.update(choices=blocks, value=blocks[-1]),
    )


def on_steps_change(steps, interval):
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        return SKIP
    top = max(1, steps - 1)
    return gr.update(maximum=top, value=min(int(interval or 1), top))


def _settings():
    choices = [
        (c.label if c.available else f"{c.label} (unavailable: {c.reason})", c.key) for c in live.model_choices()
    ]
    w = {
        "model": gr.Dropdown(choices, value=DEFAULT_MODEL, label="model"),
        "label": gr.Dropdown(LABELS, value="cat", label="class", allow_custom_value=False),
        "prompt": gr.Textbox(label="prompt", visible=False, placeholder="an astronaut riding a horse"),
        "steps": gr.Slider(form.STEPS_RANGE[0], form.STEPS_RANGE[1], value=DEFAULT_STEPS, step=1, label="steps T"),
        "interval": gr.Slider(1, DEFAULT_STEPS - 1, value=3, step=1, label="cache interval N (1 = uncached)"),
    }
    with gr.Row():
        w["seed"] = gr.Number(
            0, label="seed", precision=0
        )  # range checked by form.parse_request, with a clear message
        w["randomize"] = gr.Button("🎲 random seed", size="sm")
    w["guidance"] = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="guidance scale")
    with gr.Accordion("Advanced (Compare and Sweep)", open=False):
        w["cache_attn"] = gr.Checkbox(True, label="cache self-attention")
        w["cache_cross"] = gr.Checkbox(True, label="cache cross-attention (PixArt)")
        w["cache_mlp"] = gr.Checkbox(True, label="cache MLP")
        w["cache_start"] = gr.Number(0, label="cache_start: first step allowed to reuse", precision=0)
        w["cache_end"] = gr.Number(0, label="cache_end: steps from here on recompute (0 = none)", precision=0)
        w["blocks"] = gr.Textbox("", label="blocks that cache (e.g. 0,2,5; empty = all)")
        w["policy"] = gr.Radio(
            list(form.COMPARE_POLICIES),
            value="FORA",
            label="Compare: policy at N's cost (calibrated plans: see the Policies tab)",
        )
    with gr.Row():
        w["run"] = gr.Button("Generate", variant="primary")
        w["stop"] = gr.Button("Stop", variant="stop")
    w["status"] = gr.Markdown("")
    gr.Examples(
        [["cat", 30, 3, 0], ["rocket", 30, 5, 1], ["rainbow", 50, 10, 2], ["ghost", 30, 2, 3]],
        [w["label"], w["steps"], w["interval"], w["seed"]],
        label="try (class, steps, N, seed)",
    )
    return w


def _compare_tab():
    w = {}
    with gr.Row():
        w["base_img"] = gr.Image(label="uncached baseline", height=256, format="png", elem_id="baseline")
        w["fora_img"] = gr.Image(label="FORA", height=256, format="png", elem_id="fora")
        w["diff_img"] = gr.Image(label="|difference| x4", height=256, format="png", elem_id="diff")
    w["metrics"] = gr.Dataframe(headers=["metric", "value"], label="metrics", interactive=False)
    w["strip"] = gr.Plot(label="schedule")
    w["heat_source"] = gr.Radio(
        ["FORA run", "uncached baseline"],
        value="FORA run",
        label="layer x step maps from (FORA: blank columns are reuse steps)",
    )
    with gr.Row():
        w["heat_attn"] = gr.Plot(label="self-attention: layer x step", elem_id="heat-attn")
        w["heat_mlp"] = gr.Plot(label="MLP: layer x step", elem_id="heat-mlp")
    with gr.Row():
        w["block_choice"] = gr.Dropdown(["0", "2", "3", "5"], value="5", label="block for step x step")
        w["kind_choice"] = gr.Dropdown(["attn", "mlp", "cross_attn"], value="attn", label="module")
    w["pairwise"] = gr.Plot(label="step x step (uncached run)")
    w["err"] = gr.Plot(label="error per step")
    return w


def _sweep_tab():
    gr.Markdown(
        f"Uses the model, class or prompt, steps, seed, guidance and Advanced settings on the left. One request "
        f"runs at most {form.STEP_BUDGET} denoising steps, timing included."
    )
    w = {
        "intervals": gr.CheckboxGroup(
            [str(n) for n in form.SWEEP_INTERVALS], value=["1", "2", "3", "5", "7", "10"], label="intervals"
        ),
        "seeds": gr.Slider(1, form.SWEEP_SEEDS_MAX, value=2, step=1, label="seeds (from the chosen seed on)"),
        "run": gr.Button("Run sweep", variant="primary"),
        "status": gr.Markdown(""),
        "plot": gr.Plot(label="speed / quality"),
        "gallery": gr.Gallery(label="images per interval (first seed)", columns=7, height=220),
        "table": gr.Dataframe(
            headers=["N", "full", "speedup (paired)", "ideal", "PSNR", "SSIM", "cache MiB"], interactive=False
        ),
        "files": gr.File(label="download CSV / JSON / HTML report", file_count="multiple"),
    }
    return w


def _policies_tab():
    gr.Markdown(
        "The same seed (model, class, steps, seed and guidance on the left) through up to three caching "
        "policies at FORA N's cost, next to the uncached baseline. *calibrated*: this project's schedule "
        "fit on the model's own step x step similarity (shared by all blocks; -o1 extrapolates linearly). "
        "*TaylorSeer* and *First Block Cache* are diffusers' implementations (TaylorSeer at interval N with "
        "the warm-up that matches the cost, often FORA's own schedule: the arena searches all its settings; "
        "FBCache's threshold is bisected to the cost). Plan maps are measured: which block really computed "
        "attention at which step."
    )
    with gr.Row():
        w = {
            "chosen": gr.CheckboxGroup(
                list(POLICIES), value=["FORA", "calibrated-o1", "TaylorSeer order 1"], label="policies (up to 3)"
            ),
            "interval": gr.Slider(2, 10, value=3, step=1, label="cost: FORA N's computed calls"),
        }
    w["run"] = gr.Button("Compare policies", variant="primary")
    w["status"] = gr.Markdown("")
    w["gallery"] = gr.Gallery(label="same seed", columns=4, height=260, elem_id="policy-gallery")
    w["table"] = gr.Dataframe(
        headers=["policy", "computed calls", "PSNR (dB)", "SSIM", "speedup (paired)"],
        interactive=False,
        label="at equal cost",
    )
    w["maps"] = gr.Plot(label="plan maps (measured)")
    w["pareto"] = gr.Plot(label="small sweep")
    return w


def _memory_tab():
    gr.Markdown("The cache lives in GPU memory (HBM), not on-chip. Is reading it back fast enough?")
    with gr.Row():
        w = {
            "model": gr.Dropdown(list(MODEL_SHAPES), value="dit-xl-2-256", label="model"),
            "batch": gr.Number(1, label="batch", precision=0),
            "dtype": gr.Dropdown(["float16", "bfloat16", "float32"], value="float16", label="dtype"),
        }
    with gr.Row():
        w.update(
            steps=gr.Number(50, label="steps", precision=0),
            interval=gr.Number(3, label="interval N", precision=0),
            bw=gr.Number(3.35, label="memory bandwidth TB/s (H100 SXM 3.35)"),
            tflops=gr.Number(989, label="TFLOP/s (H100 SXM dense BF16 989)"),
            util=gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="utilization of peak FLOP/s"),
        )
    w["run"] = gr.Button("Calculate")
    w["out"] = gr.Markdown()
    return w


TABLE3_DIR = os.environ.get("FORA_TABLE3_DIR", os.path.join(ASSETS, "emoji-dit", "table3"))
TABLE3_COMMAND = (
    "python -m analysis.table --model emoji-dit --steps 20 50 --intervals 1 2 3 5 7 10 --samples 1000 "
    "--out assets/emoji-dit/table3"
)


def table3_grid(class_name: str):
    """The committed samples of one class at every N (columns), one block of rows per T."""
    if class_name not in LABELS:
        raise gr.Error(f"unknown class {class_name!r}; allowed: {', '.join(LABELS)}")
    try:
        return class_grid(load_grid_samples(TABLE3_DIR), [LABELS.index(class_name)])
    except (FileNotFoundError, IndexError) as e:
        raise gr.Error(f"no samples of class {class_name!r} in {TABLE3_DIR}: {e}") from None


def _table3_tab():
    """The committed Table 3 of the embedded model: read from files, nothing runs."""
    try:
        meta = load_table(TABLE3_DIR)
        first = table3_grid(LABELS[0])
    except (OSError, ValueError, KeyError, gr.Error) as e:  # no table yet, or an unreadable one: say so, start anyway
        gr.Markdown(
            f"No readable Table 3 in `{TABLE3_DIR}` ({type(e).__name__}: {e}). Make it with "
            f"`{TABLE3_COMMAND}` (CPU hours; `torchrun --nproc_per_node K -m analysis.table ...` splits the "
            "work)."
        )
        return None
    gr.Markdown(
        "Distribution quality over many samples per setting, the paper's Table 3 on the embedded "
        "model. FD: Frechet distance to fresh renders of the emoji (lower is better); score, precision, "
        "recall and class accuracy from the emoji classifier. " + describe(meta)
    )
    gr.Dataframe(value=display_rows(meta), headers=DISPLAY_HEADERS, interactive=False)
    gr.Plot(fid_heatmap(meta["rows"], meta.get("floor")))
    gr.Plot(fid_speed_plot(meta["rows"], meta.get("floor")))
    w = {"class": gr.Dropdown(LABELS, value=LABELS[0], label="class")}
    w["grid"] = gr.Image(first, label="the same seeds at every N (columns), one block per T", interactive=False)
    return w


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="FORA explorer", delete_cache=(CACHE_LIFETIME_S, CACHE_LIFETIME_S)) as demo:
        gr.Markdown(
            "# FORA: Fast-Forward Caching explorer\nEvery N steps each transformer block computes attention "
            "and MLP and caches them; the N-1 steps in between reuse the cache. Generate to compare with the "
            "uncached baseline (same seed) and watch the per-layer similarity that makes caching work."
        )
        with gr.Row():
            with gr.Column(scale=1):
                s = _settings()
            with gr.Column(scale=2):
                with gr.Tab("Compare"):
                    c = _compare_tab()
                with gr.Tab("Sweep"):
                    sw = _sweep_tab()
                with gr.Tab("Policies"):
                    pol = _policies_tab()
                with gr.Tab("Memory"):
                    m = _memory_tab()
                with gr.Tab("Table 3"):
                    t3 = _table3_tab()
        last = gr.State(None)  # the token of this session's last comparison; the comparison stays in the server

        advanced = [s["cache_attn"], s["cache_cross"], s["cache_mlp"], s["cache_start"], s["cache_end"], s["blocks"]]
        s["model"].change(
            on_model_change, s["model"], [s["label"], s["prompt"], s["steps"], c["block_choice"]], api_name=False
        )
        s["steps"].change(on_steps_change, [s["steps"], s["interval"]], s["interval"], api_name=False)
        s["randomize"].click(lambda: int(time.time_ns() % form.SEED_MAX), None, s["seed"], api_name=False)
        gen = s["run"].click(
            generate,
            [
                s["model"],
                s["label"],
                s["prompt"],
                s["steps"],
                s["interval"],
                s["seed"],
                s["guidance"],
                *advanced,
                c["block_choice"],
                c["heat_source"],
                c["kind_choice"],
                s["policy"],
            ],
            [
                c["base_img"],
                c["fora_img"],
                c["diff_img"],
                c["metrics"],
                c["heat_attn"],
                c["heat_mlp"],
                c["pairwise"],
                c["strip"],
                c["err"],
                s["status"],
                last,
            ],
            api_name="generate",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        c["heat_source"].change(
            redraw_heatmaps, [last, c["heat_source"]], [c["heat_attn"], c["heat_mlp"]], api_name=False
        )
        for widget in (c["block_choice"], c["kind_choice"]):
            widget.change(redraw_pairwise, [last, c["block_choice"], c["kind_choice"]], c["pairwise"], api_name=False)
        swept = sw["run"].click(
            sweep,
            [
                s["model"],
                s["label"],
                s["prompt"],
                s["steps"],
                s["seed"],
                s["guidance"],
                sw["intervals"],
                sw["seeds"],
                *advanced,
            ],
            [sw["plot"], sw["gallery"], sw["table"], sw["files"], sw["status"]],
            api_name="sweep",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        compared = pol["run"].click(
            policies,
            [
                s["model"],
                s["label"],
                s["prompt"],
                s["steps"],
                s["seed"],
                s["guidance"],
                pol["chosen"],
                pol["interval"],
            ],
            [pol["gallery"], pol["table"], pol["maps"], pol["pareto"], pol["status"]],
            api_name="policies",
            concurrency_limit=1,
            concurrency_id="gpu",
        )
        s["stop"].click(None, None, None, cancels=[gen, swept, compared], api_name=False)
        if t3 is not None:
            t3["class"].change(table3_grid, t3["class"], t3["grid"], api_name="table3_grid")
        inputs = [m["model"], m["batch"], m["dtype"], m["steps"], m["interval"], m["bw"], m["tflops"], m["util"]]
        # the arithmetic answers at once; the measured read queues with the generations: it must not share the device
        m["run"].click(memory_calculator, inputs, m["out"], api_name=False).success(
            memory,
            inputs,
            m["out"],
            api_name="memory",
            concurrency_limit=1,
            concurrency_id="gpu",
            show_progress="hidden",
        )  # the calculator's answer stays readable while the read waits its turn
    return demo


torch.set_num_threads(TORCH_THREADS)
demo = build_demo()
if os.environ.get("SPACES_ZERO_GPU") or os.environ.get("FORA_PRELOAD"):
    live.get_model(DEFAULT_MODEL)  # ZeroGPU: load at startup in the main process, where every worker forks from

if __name__ == "__main__":
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
