"""FORA explorer: generate with a cache interval, compare with the uncached baseline, see live heatmaps.

`python app.py` serves it on http://127.0.0.1:7860 (GRADIO_SERVER_NAME / GRADIO_SERVER_PORT to change). Models
load lazily on first use; the UI only wires widgets to `fora/` and `analysis/`.
"""

import os
import shutil
import tempfile
import time
import uuid

import gradio as gr
import torch

from analysis import live
from analysis.memory import MODEL_SHAPES, hbm_answer, measure_read_seconds
from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip, step_error_plot, tradeoff_plot
from analysis.sweep import run_sweep, write_outputs
from fora import ForaConfig
from fora.emoji.classes import LABELS
from fora.emoji.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from fora.loading import MODELS

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
QUEUE_SIZE = int(os.environ.get("FORA_QUEUE_SIZE", "16"))
SWEEP_DIR = os.path.join(tempfile.gettempdir(), "fora-sweeps")
SWEEP_KEEP = 8
INTERVALS = [1, 2, 3, 4, 5, 7, 10]


def _choices():
    return [(c.label if c.available else f"{c.label} (unavailable: {c.reason})", c.key) for c in live.model_choices()]


def _error(e: Exception) -> gr.Error:
    return gr.Error(str(e), print_exception=False)


def _config(interval, cache_attn, cache_cross_attn, cache_mlp, cache_start, cache_end, blocks, num_blocks):
    end = int(cache_end) if cache_end not in (None, "", 0) else None
    return ForaConfig(interval=int(interval), cache_attn=bool(cache_attn), cache_cross_attn=bool(cache_cross_attn),
                      cache_mlp=bool(cache_mlp), cache_start=int(cache_start or 0), cache_end=end,
                      blocks=live.parse_blocks(blocks, num_blocks))  # fmt: skip


def _metrics_rows(m: dict, cached_baseline: bool) -> list[list]:
    base_note = " (cached baseline)" if cached_baseline else ""
    return [
        ["baseline time (whole call)", f"{m['baseline_s'] * 1e3:.0f} ms{base_note}"],
        ["FORA time (whole call)", f"{m['fora_s'] * 1e3:.0f} ms"],
        ["speedup, measured", f"{m['speedup']:.2f}x (loop {m['loop_speedup']:.2f}x)"],
        ["speedup, ideal T / full", f"{m['ideal_speedup']:.2f}x"],
        ["full / reuse steps", f"{m['full_steps']} / {m['reuse_steps']}"],
        ["PSNR vs baseline", "inf (identical)" if m["psnr"] == float("inf") else f"{m['psnr']:.2f} dB"],
        ["SSIM vs baseline", f"{m['ssim']:.4f}"],
        ["mean |difference|", f"{m['mad']:.4f}"],
        ["cache memory", f"{m['cache_bytes'] / 2**20:.2f} MiB"],
    ]


@gpu
def generate(model_key, label, prompt, steps, interval, seed, guidance, cache_attn, cache_cross_attn, cache_mlp,
             cache_start, cache_end, blocks, block_choice, heat_source="FORA run", pair_kind="attn",
             progress=gr.Progress()):  # fmt: skip
    """Baseline and FORA image with the same seed, metrics, and heatmaps that fill in while the run goes."""
    try:
        pipe, _ = live.get_model(model_key)
        request = live.check_inputs(pipe, label, prompt, steps, interval, seed, guidance)
        config = _config(interval, cache_attn, cache_cross_attn, cache_mlp, cache_start, cache_end, blocks,
                         len(pipe.transformer.transformer_blocks))  # fmt: skip
        config.check_num_steps(request.steps)
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    skip = gr.skip()
    try:
        for p in live.stream_comparison(model_key, request, config):
            if p.comparison is None:
                progress((p.step, p.num_steps), desc=f"{p.phase}: step {p.step}/{p.num_steps}")
                base_img = live.upscale(p.baseline.images[0]) if p.baseline is not None else skip
                yield (base_img, skip, skip, skip, neighbour_heatmap(p.recorder, "attn", f"{p.phase}: self-attention"),
                       neighbour_heatmap(p.recorder, "mlp", f"{p.phase}: MLP"), skip, skip, skip,
                       f"running the {p.phase}: step {p.step} of {p.num_steps}", skip)  # fmt: skip
                continue
            comp = p.comparison
            token = uuid.uuid4().hex
            live.RESULTS.put(token, comp)
            block = int(block_choice) if block_choice not in (None, "") else comp.fora.similarity.blocks[-1]
            if block not in comp.baseline.similarity.blocks:
                block = comp.baseline.similarity.blocks[-1]
            yield (live.upscale(comp.baseline.images[0]), live.upscale(comp.fora.images[0]),
                   live.upscale(comp.diff_image()), _metrics_rows(comp.metrics, p.cached_baseline),
                   *_heatmaps(comp, heat_source),
                   pairwise_heatmap(comp.baseline.similarity, block,
                                    pair_kind if pair_kind in comp.baseline.similarity.kinds else "attn"),
                   schedule_strip(comp.fora.run.num_steps, comp.fora.run.full_steps, comp.fora.similarity.timesteps),
                   step_error_plot(comp.step_error, comp.fora.run.full_steps),
                   f"done: N={config.interval}, seed {request.seed}, {comp.metrics['full_steps']} full steps of {request.steps}",
                   token)  # fmt: skip
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    except Exception as e:  # e.g. out of memory: say what failed, never show a stack trace
        raise gr.Error(f"generation failed: {type(e).__name__}: {e}", print_exception=True) from None


def _last_result(token):
    comp = live.RESULTS.get(token) if token else None
    if comp is None:
        raise gr.Error("generate first: the plots are redrawn from your last run (kept for the 16 most recent runs)",
                       print_exception=False)  # fmt: skip
    return comp


def _heatmaps(comp, source):
    run = comp.baseline if source == "uncached baseline" else comp.fora
    prefix = "uncached" if run is comp.baseline else f"FORA N={comp.fora.config.interval}"
    return (neighbour_heatmap(run.similarity, "attn", f"{prefix}: self-attention, cos to previous computed step"),
            neighbour_heatmap(run.similarity, "mlp", f"{prefix}: MLP, cos to previous computed step"))  # fmt: skip


def redraw_heatmaps(token, source):
    return _heatmaps(_last_result(token), source) if token else (gr.skip(), gr.skip())


def redraw_pairwise(token, block, kind):
    rec = _last_result(token).baseline.similarity
    block = int(block)
    if block not in rec.blocks:
        raise gr.Error(f"block {block} has no step x step map; recorded blocks: {rec.blocks}", print_exception=False)
    if kind not in rec.kinds:
        raise gr.Error(f"kind {kind!r} not recorded; recorded: {', '.join(rec.kinds)}", print_exception=False)
    return pairwise_heatmap(rec, block, kind)


@gpu
def sweep(model_key, label, prompt, steps, guidance, intervals, num_seeds, progress=gr.Progress()):
    """The interval sweep for the current settings: trade-off curve, image grid, files to download."""
    try:
        pipe, lock = live.get_model(model_key)
        request = live.check_inputs(pipe, label, prompt, steps, 1, 0, guidance)
        intervals = sorted({int(n) for n in (intervals or [])})
        if not intervals:
            raise ValueError("no interval chosen: tick at least one")
        bad = [n for n in intervals if n != 1 and n > request.steps - 1]
        if bad:
            raise ValueError(f"intervals {bad} out of range for {request.steps} steps: allowed 1..{request.steps - 1}")
        num_seeds = int(num_seeds)
        if not 1 <= num_seeds <= 8:
            raise ValueError(f"seeds={num_seeds} out of range: allowed 1..8")
        seeds = list(range(request.seed, request.seed + num_seeds))
        with lock:
            result = run_sweep(pipe, request, intervals, seeds,
                               progress=lambda d, t, msg: progress((d, t), desc=msg))  # fmt: skip
    except (ValueError, live.ModelLoadError) as e:
        raise _error(e) from None
    except Exception as e:
        raise gr.Error(f"sweep failed: {type(e).__name__}: {e}", print_exception=True) from None
    os.makedirs(SWEEP_DIR, exist_ok=True)
    old = sorted((os.path.join(SWEEP_DIR, d) for d in os.listdir(SWEEP_DIR)), key=os.path.getmtime)
    for d in old[: max(0, len(old) - SWEEP_KEEP + 1)]:
        shutil.rmtree(d, ignore_errors=True)
    paths = write_outputs(result, tempfile.mkdtemp(dir=SWEEP_DIR), model_key)
    gallery = [(live.upscale(img), f"N={n}") for n, img in sorted(result["images"].items())]
    table = [[r["interval"], r["full_steps"], f"{r['speedup']:.2f}x", f"{r['ideal_speedup']:.2f}x",
              "inf" if r["psnr"] == float("inf") else f"{r['psnr']:.2f}", f"{r['ssim']:.4f}",
              f"{r['cache_bytes'] / 2**20:.2f}"] for r in result["rows"]]  # fmt: skip
    return tradeoff_plot(result["rows"]), gallery, table, [paths["csv"], paths["json"], paths["html"]]


def memory(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization):
    """Cache size and HBM read time against the compute it replaces."""
    try:
        if shape_key not in MODEL_SHAPES:
            raise ValueError(f"unknown model {shape_key!r}; allowed: {', '.join(MODEL_SHAPES)}")
        batch, steps, interval = int(batch), int(steps), int(interval)
        if not 1 <= batch <= 64:
            raise ValueError(f"batch={batch} out of range: allowed 1..64")
        if not 2 <= steps <= 1000 or not 1 <= interval <= steps - 1:
            raise ValueError(f"steps={steps}, interval={interval}: allowed steps 2..1000 and interval 1..steps-1")
        if not bandwidth_tbps or not tflops or bandwidth_tbps <= 0 or tflops <= 0:
            raise ValueError("bandwidth and throughput must be > 0")
        a = hbm_answer(MODEL_SHAPES[shape_key], batch, dtype, steps, interval, bandwidth_tbps * 1e12, tflops * 1e12,
                       float(utilization))  # fmt: skip
    except ValueError as e:
        raise _error(e) from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    measured = measure_read_seconds(a["cache_bytes"], device) if a["cache_bytes"] <= 2**30 else None
    where = (f"Measured on this machine ({device}): reading {a['cache_bytes'] / 2**20:.1f} MiB took "
             f"{measured * 1e3:.2f} ms." if measured is not None else "Too large to measure here (over 1 GiB).")
    verdict = "yes" if a["compute_over_read"] > 1 else "no"
    return f"""
| | per reuse step | per run ({a['reuse_steps']} reuse steps of {steps}) |
|---|---|---|
| cache size ({dtype}, batch {batch} x 2 for guidance) | {a['cache_bytes'] / 2**20:.1f} MiB | same buffer, reused |
| read the cache at {bandwidth_tbps:g} TB/s | {a['read_ms_per_step']:.3f} ms | {a['read_ms_per_run']:.2f} ms |
| attention + MLP it replaces at {tflops:g} TFLOP/s x {utilization:g} | {a['compute_ms_per_step']:.3f} ms | {a['compute_ms_per_step'] * a['reuse_steps']:.2f} ms |
| net time saved | {a['compute_ms_per_step'] - a['read_ms_per_step']:.3f} ms | {a['saved_ms_per_run']:.2f} ms |

**Is HBM fast enough? {verdict}:** the replaced compute takes **{a['compute_over_read']:.0f}x** longer than reading
the cache back. {where}
"""


def on_model_change(model_key):
    try:
        pipe, _ = live.get_model(model_key)
    except (ValueError, live.ModelLoadError) as e:
        gr.Warning(str(e))
        return gr.skip(), gr.skip(), gr.skip(), gr.skip()
    labels = live.labels_of(pipe)
    spec = MODELS.get(model_key)
    steps = spec.default_steps if spec else 30
    blocks = [str(b) for b in live.default_blocks(len(pipe.transformer.transformer_blocks))]
    if labels:
        return (gr.update(choices=labels, value=labels[0], visible=True), gr.update(visible=False),
                gr.update(value=steps), gr.update(choices=blocks, value=blocks[-1]))  # fmt: skip
    return (gr.update(visible=False), gr.update(visible=True), gr.update(value=steps),
            gr.update(choices=blocks, value=blocks[-1]))  # fmt: skip


def on_steps_change(steps, interval):
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        return gr.skip()
    top = max(1, steps - 1)
    return gr.update(maximum=top, value=min(int(interval or 1), top))


def build_demo() -> gr.Blocks:
    choices = _choices()
    with gr.Blocks(title="FORA explorer") as demo:
        gr.Markdown("# FORA: Fast-Forward Caching explorer\nEvery N steps each transformer block computes attention "
                    "and MLP and caches them; the N-1 steps in between reuse the cache. Generate to compare with the "
                    "uncached baseline (same seed) and watch the per-layer similarity that makes caching work.")
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(choices, value=DEFAULT_MODEL, label="model")
                label = gr.Dropdown(LABELS, value="cat", label="class", allow_custom_value=False)
                prompt = gr.Textbox(label="prompt", visible=False, placeholder="an astronaut riding a horse")
                steps = gr.Slider(live.STEPS_RANGE[0] + 1, 100, value=DEFAULT_STEPS, step=1, label="steps T")
                interval = gr.Slider(1, DEFAULT_STEPS - 1, value=3, step=1, label="cache interval N (1 = uncached)")
                with gr.Row():
                    seed = gr.Number(0, label="seed", precision=0)  # range checked by live.check_inputs, with a clear message
                    randomize = gr.Button("🎲 random seed", size="sm")
                guidance = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="guidance scale")
                with gr.Accordion("Advanced", open=False):
                    cache_attn = gr.Checkbox(True, label="cache self-attention")
                    cache_cross = gr.Checkbox(True, label="cache cross-attention (PixArt)")
                    cache_mlp = gr.Checkbox(True, label="cache MLP")
                    cache_start = gr.Number(0, label="cache_start: first step allowed to reuse", precision=0)
                    cache_end = gr.Number(0, label="cache_end: steps from here on recompute (0 = none)", precision=0)
                    blocks = gr.Textbox("", label="blocks that cache (e.g. 0,2,5; empty = all)")
                run = gr.Button("Generate", variant="primary")
                status = gr.Markdown("")
                gr.Examples([["cat", 30, 3, 0], ["rocket", 30, 5, 1], ["rainbow", 50, 10, 2], ["ghost", 30, 2, 3]],
                            [label, steps, interval, seed], label="try (class, steps, N, seed)")
            with gr.Column(scale=2):
                with gr.Tab("Compare"):
                    with gr.Row():
                        base_img = gr.Image(label="uncached baseline", height=256, format="png", elem_id="baseline")
                        fora_img = gr.Image(label="FORA", height=256, format="png", elem_id="fora")
                        diff_img = gr.Image(label="|difference| x4", height=256, format="png", elem_id="diff")
                    metrics = gr.Dataframe(headers=["metric", "value"], label="metrics", interactive=False)
                    strip = gr.Plot(label="schedule")
                    heat_source = gr.Radio(["FORA run", "uncached baseline"], value="FORA run",
                                           label="layer x step maps from (FORA: blank columns are reuse steps)")
                    with gr.Row():
                        heat_attn = gr.Plot(label="self-attention: layer x step", elem_id="heat-attn")
                        heat_mlp = gr.Plot(label="MLP: layer x step", elem_id="heat-mlp")
                    with gr.Row():
                        block_choice = gr.Dropdown(["0", "2", "3", "5"], value="5", label="block for step x step")
                        kind_choice = gr.Dropdown(["attn", "mlp", "cross_attn"], value="attn", label="module")
                    pairwise = gr.Plot(label="step x step (uncached run)")
                    err = gr.Plot(label="error per step")
                with gr.Tab("Sweep"):
                    sweep_intervals = gr.CheckboxGroup([str(n) for n in INTERVALS], value=["1", "2", "3", "5", "7", "10"],
                                                       label="intervals")  # fmt: skip
                    sweep_seeds = gr.Slider(1, 8, value=2, step=1, label="seeds")
                    sweep_run = gr.Button("Run sweep", variant="primary")
                    sweep_plot = gr.Plot(label="speed / quality")
                    sweep_gallery = gr.Gallery(label="images per interval (first seed)", columns=7, height=220)
                    sweep_table = gr.Dataframe(headers=["N", "full", "speedup", "ideal", "PSNR", "SSIM", "cache MiB"],
                                               interactive=False)  # fmt: skip
                    sweep_files = gr.File(label="download CSV / JSON / HTML report", file_count="multiple")
                with gr.Tab("Memory"):
                    gr.Markdown("The cache lives in GPU memory (HBM), not on-chip. Is reading it back fast enough?")
                    with gr.Row():
                        mem_model = gr.Dropdown(list(MODEL_SHAPES), value="dit-xl-2-256", label="model")
                        mem_batch = gr.Number(1, label="batch", precision=0)
                        mem_dtype = gr.Dropdown(["float16", "bfloat16", "float32"], value="float16", label="dtype")
                    with gr.Row():
                        mem_steps = gr.Number(50, label="steps", precision=0)
                        mem_interval = gr.Number(3, label="interval N", precision=0)
                        mem_bw = gr.Number(3.35, label="memory bandwidth TB/s (H100 SXM 3.35)")
                        mem_tflops = gr.Number(989, label="TFLOP/s (H100 SXM dense BF16 989)")
                        mem_util = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="utilization of peak FLOP/s")
                    mem_run = gr.Button("Calculate")
                    mem_out = gr.Markdown()
        last = gr.State(None)

        model.change(on_model_change, model, [label, prompt, steps, block_choice], api_name=False)
        steps.change(on_steps_change, [steps, interval], interval, api_name=False)
        randomize.click(lambda: int(time.time_ns() % live.SEED_MAX), None, seed, api_name=False)
        run.click(generate, [model, label, prompt, steps, interval, seed, guidance, cache_attn, cache_cross, cache_mlp,
                             cache_start, cache_end, blocks, block_choice, heat_source, kind_choice],
                  [base_img, fora_img, diff_img, metrics, heat_attn, heat_mlp, pairwise, strip, err, status, last],
                  api_name="generate", concurrency_limit=1, concurrency_id="gpu")  # fmt: skip
        heat_source.change(redraw_heatmaps, [last, heat_source], [heat_attn, heat_mlp], api_name=False)
        for widget in (block_choice, kind_choice):
            widget.change(redraw_pairwise, [last, block_choice, kind_choice], pairwise, api_name=False)
        sweep_run.click(sweep, [model, label, prompt, steps, guidance, sweep_intervals, sweep_seeds],
                        [sweep_plot, sweep_gallery, sweep_table, sweep_files], api_name="sweep",
                        concurrency_limit=1, concurrency_id="gpu")  # fmt: skip
        mem_run.click(memory, [mem_model, mem_batch, mem_dtype, mem_steps, mem_interval, mem_bw, mem_tflops, mem_util],
                      mem_out, api_name="memory")  # fmt: skip
    return demo


torch.set_num_threads(TORCH_THREADS)
demo = build_demo()

if __name__ == "__main__":
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1).launch(
        server_name=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"),
        server_port=int(os.environ.get("GRADIO_SERVER_PORT", "7860")),
    )
