"""The Memory tab: is reading the cache back from HBM fast enough? Cache size and read time against the compute a
reuse step saves (arithmetic, answered at once), then the read measured on this machine (queued with the GPU
events: it must not share the device with a generation)."""

import gradio as gr

from analysis.memory import MODEL_SHAPES, hbm_answer
from ui import form, gpu
from ui.display import safe_text, user_error


def _memory_answer(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization, measure: bool):
    try:
        q = form.parse_memory(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization)
    except ValueError as e:
        raise user_error(e) from None
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
            bw = gpu.measure_read_on_gpu(a["cache_bytes"])
            where = (
                f"Measured on this machine ({bw.device}): {bw.read_text()}; a plain copy of "
                f"{bw.copy_bytes / 2**20:.0f} MiB on the same device runs at {bw.copy_GBps:.1f} GB/s (read + write); "
                f"{bw.overhead_text()}."
            )
        except Exception as e:  # the calculator above stands; say why the measurement is missing
            where = safe_text(f"Could not measure the read on this machine: {type(e).__name__}: {e}")
    verdict = "yes" if a["compute_over_read"] > 1 else "no"
    guided = MODEL_SHAPES[q.shape_key].guidance_rows == 2
    rows = " x 2 for guidance" if guided else "; one forward per step: distilled guidance"
    step_ms, run_ms = a["compute_ms_per_step"], a["compute_ms_per_step"] * a["reuse_steps"]  # the compute replaced
    return f"""
| | per reuse step | per run ({a["reuse_steps"]} reuse steps of {q.steps}) |
|---|---|---|
| cache size ({q.dtype}, batch {q.batch}{rows}) | {a["cache_bytes"] / 2**20:.1f} MiB | same buffer, reused |
| read the cache at {q.bandwidth_tbps:g} TB/s | {a["read_ms_per_step"]:.3f} ms | {a["read_ms_per_run"]:.2f} ms |
| attention + MLP it replaces at {q.tflops:g} TFLOP/s x {q.utilization:g} | {step_ms:.3f} ms | {run_ms:.2f} ms |
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


def _shape_label(shape) -> str:
    text = f" + {shape.text_tokens} text" if shape.text_tokens else ""
    return f"{shape.name}: {shape.total_blocks} blocks x {shape.hidden}, {shape.tokens} image{text} tokens"


class MemoryTab:
    """The tab's widgets, built where this is constructed (inside a `gr.Tab`); its handlers fill one output each."""

    def __init__(self):
        gr.Markdown("The cache lives in GPU memory (HBM), not on-chip. Is reading it back fast enough?")
        with gr.Row():
            self.model = gr.Dropdown(
                [(_shape_label(shape), key) for key, shape in MODEL_SHAPES.items()],
                value="dit-xl-2-256",
                label="model (at its native size)",
            )
            self.batch = gr.Number(1, label="batch", precision=0)
            self.dtype = gr.Dropdown(["float16", "bfloat16", "float32"], value="float16", label="dtype")
        with gr.Row():
            self.steps = gr.Number(50, label="steps", precision=0)
            self.interval = gr.Number(3, label="interval N", precision=0)
            self.bw = gr.Number(3.35, label="memory bandwidth TB/s (H100 SXM 3.35)")
            self.tflops = gr.Number(989, label="TFLOP/s (H100 SXM dense BF16 989)")
            self.util = gr.Slider(0.05, 1.0, value=0.5, step=0.05, label="utilization of peak FLOP/s")
        self.run = gr.Button("Calculate")
        self.out = gr.Markdown()

    def wire(self) -> None:
        """Calculate: the arithmetic at once, then the measured read (`/memory`) in the GPU queue."""
        inputs = [self.model, self.batch, self.dtype, self.steps, self.interval, self.bw, self.tflops, self.util]
        # the arithmetic answers at once; the measured read queues with the generations: it must not share the device
        self.run.click(memory_calculator, inputs, self.out, api_name=False).success(
            memory,
            inputs,
            self.out,
            api_name="memory",
            concurrency_limit=1,
            concurrency_id="gpu",
            show_progress="hidden",
        )  # the calculator's answer stays readable while the read waits its turn
