"""The settings column every tab reads (model, class or prompt, steps, N, seed, guidance, the Advanced cache
settings, Generate and Stop), and its handlers: a model's classes, steps and blocks fill in when it is chosen."""

import time

import gradio as gr

from analysis.prompts import example_prompts
from embedded.emoji.classes import LABELS
from embedded.emoji.pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS
from fora.generate import is_video
from fora.loading import MODELS, ModelLoadError
from ui import form, registry
from ui.display import safe_text

# the examples under Generate: (class, steps, N, seed) of the emoji DiT
CLASS_EXAMPLES = [["cat", 30, 3, 0], ["rocket", 30, 5, 1], ["rainbow", 50, 10, 2], ["ghost", 30, 2, 3]]


class Settings:
    """The column's widgets, built where this is constructed (inside a `gr.Blocks`)."""

    def __init__(self):
        choices = [
            (c.label if c.available else f"{c.label} (unavailable: {c.reason})", c.key)
            for c in registry.model_choices()
        ]
        self.model = gr.Dropdown(choices, value=registry.DEFAULT_MODEL, label="model")
        self.label = gr.Dropdown(LABELS, value="cat", label="class", allow_custom_value=False)
        self.prompt = gr.Textbox(label="prompt", visible=False, placeholder="an astronaut riding a horse")
        # a text model's example prompts (its evaluation set's, `analysis.prompts.example_prompts`): picking one
        # fills the prompt box
        self.examples = gr.Dropdown([], value=None, label="example prompts", visible=False, allow_custom_value=False)
        self.steps = gr.Slider(form.STEPS_RANGE[0], form.STEPS_RANGE[1], value=DEFAULT_STEPS, step=1, label="steps T")
        self.interval = gr.Slider(1, DEFAULT_STEPS - 1, value=3, step=1, label="cache interval N (1 = uncached)")
        with gr.Row():
            # any number is accepted here: form.parse_request checks the range, with a clear message
            self.seed = gr.Number(0, label="seed", precision=0)
            self.randomize = gr.Button("🎲 random seed", size="sm")
        self.guidance = gr.Slider(1.0, 10.0, value=DEFAULT_GUIDANCE, step=0.5, label="guidance scale")
        # a video model's frames (Wan: 4k + 1); shown only for one. Any value reaches the handlers, which check it
        self.frames = gr.Slider(
            form.FRAMES_RANGE[0],
            form.FRAMES_RANGE[1],
            value=form.APP_FRAMES,
            step=4,
            label="frames (video models; 4k + 1)",
            visible=False,
        )
        with gr.Accordion("Advanced (Compare and Sweep)", open=False):
            self.cache_attn = gr.Checkbox(True, label="cache self-attention")
            self.cache_cross = gr.Checkbox(True, label="cache cross-attention (PixArt)")
            self.cache_mlp = gr.Checkbox(True, label="cache MLP")
            self.cache_start = gr.Number(0, label="cache_start: first step allowed to reuse", precision=0)
            self.cache_end = gr.Number(0, label="cache_end: steps from here on recompute (0 = none)", precision=0)
            self.blocks = gr.Textbox("", label="blocks that cache (e.g. 0,2,5; empty = all)")
            self.policy = gr.Radio(
                list(form.COMPARE_POLICIES),
                value="FORA",
                label="Compare: policy at N's cost (calibrated plans: see the Policies tab)",
            )
        with gr.Row():
            self.run = gr.Button("Generate", variant="primary")
            self.stop = gr.Button("Stop", variant="stop")
        self.status = gr.Markdown("")
        with gr.Column() as self.class_examples:  # shown for a model with these classes only (the emoji DiT)
            gr.Examples(
                CLASS_EXAMPLES,
                [self.label, self.steps, self.interval, self.seed],
                label="try (class, steps, N, seed)",
            )
        self.block_choice: gr.Dropdown | None = None  # the Compare tab's block list, which follows the model
        self.kind_choice: gr.Dropdown | None = None  # and its module list

    @property
    def advanced(self) -> list[gr.components.Component]:
        """The Advanced settings, in the order the Compare and Sweep handlers take them."""
        return [self.cache_attn, self.cache_cross, self.cache_mlp, self.cache_start, self.cache_end, self.blocks]

    def wire(self, block_choice: gr.Dropdown, kind_choice: gr.Dropdown) -> None:
        """The column's own events; a model change also refills `block_choice` and `kind_choice` (the Compare
        tab's recorded blocks and modules: no cross-attention for a model without it)."""
        self.block_choice, self.kind_choice = block_choice, kind_choice
        # a first use loads the model here, holding up only the requests for that model (ui/registry.py): several
        # users' switches to different models load side by side
        self.model.change(
            self.on_model_change,
            [self.model, kind_choice],
            [
                self.label,
                self.prompt,
                self.examples,
                self.steps,
                self.guidance,
                self.frames,
                self.class_examples,
                block_choice,
                kind_choice,
            ],
            api_name=False,
            concurrency_limit=4,
        )
        self.examples.input(lambda example: example or gr.skip(), self.examples, self.prompt, api_name=False)
        self.steps.change(on_steps_change, [self.steps, self.interval], self.interval, api_name=False)
        self.randomize.click(random_seed, None, self.seed, api_name=False)

    def on_model_change(self, model_key, kind=None):
        """The chosen model's classes (or the prompt box for a text model), default steps, and the blocks and modules
        a comparison records (`kind` stays chosen where the new model records it)."""
        try:
            pipe, _ = registry.get_model(model_key)
        except (ValueError, ModelLoadError) as e:
            gr.Warning(safe_text(e))
            return gr.skip()
        labels = registry.labels_of(pipe)
        spec = MODELS.get(model_key)
        steps = spec.default_steps if spec else 30
        recorded, kinds = form.recorded_view(pipe)
        blocks = [str(b) for b in recorded]
        frames = gr.update(visible=False)
        if is_video(pipe):  # the card's frames where fewer than the app's default (which fits ZeroGPU's reservation)
            card = dict(spec.call_kwargs).get("num_frames", form.APP_FRAMES) if spec else form.APP_FRAMES
            frames = gr.update(visible=True, value=min(card, form.APP_FRAMES))
        if labels:
            label, prompt = gr.update(choices=labels, value=labels[0], visible=True), gr.update(visible=False)
            examples = gr.update(visible=False)
        else:
            shown = example_prompts(pipe)
            label, examples = gr.update(visible=False), gr.update(choices=shown, value=None, visible=True)
            prompt = gr.update(visible=True, value=shown[0], placeholder=shown[-1])
        return {
            self.label: label,
            self.prompt: prompt,
            self.examples: examples,
            self.steps: gr.update(value=steps),
            self.guidance: gr.update(value=max(1.0, spec.default_guidance) if spec else DEFAULT_GUIDANCE),
            self.frames: frames,
            self.class_examples: gr.update(visible={e[0] for e in CLASS_EXAMPLES} <= set(labels)),
            self.block_choice: gr.update(choices=blocks, value=blocks[-1]),
            self.kind_choice: gr.update(choices=list(kinds), value=kind if kind in kinds else kinds[0]),
        }


def on_steps_change(steps, interval):
    """N's slider ends at T - 1: a new T moves its end, and N with it when N no longer fits."""
    try:
        steps = int(steps)
    except (TypeError, ValueError):
        return gr.skip()
    top = max(1, steps - 1)
    return gr.update(maximum=top, value=min(int(interval or 1), top))


def random_seed() -> int:
    return int(time.time_ns() % form.SEED_MAX)
