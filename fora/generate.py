"""One call that generates with any pipeline the project knows, class-conditional or text-conditional (images or,
for Wan, video frames)."""

import inspect
from dataclasses import dataclass

import numpy as np
import torch

# the transformer sample sizes PixArt's and Sana's pipelines keep aspect-ratio bin tables for; their resolution
# binning refuses any other ("Invalid sample size")
BINNED_SAMPLE_SIZES = {
    "PixArtAlphaPipeline": (32, 64, 128),
    "PixArtSigmaPipeline": (32, 64, 128, 256),
    "SanaPipeline": (16, 32, 64, 128),
}


@dataclass(frozen=True)
class Request:
    """What to generate. `label` (class id or name) for class-conditional models, `prompt` for text models."""

    label: int | str | None = None
    prompt: str | None = None
    steps: int = 30
    seed: int = 0
    guidance: float = 3.0
    batch: int = 1  # images per call, all with the same label/prompt
    height: int | None = None  # text models only; None: the model's default resolution
    width: int | None = None
    options: tuple = ()  # further (argument, value) pairs for the pipeline (a model card's, e.g. num_frames)


def is_text_conditional(pipe) -> bool:
    return hasattr(pipe, "tokenizer") and hasattr(pipe, "text_encoder")


def num_classes(pipe) -> int:
    """Classes of a class-conditional pipeline (DiT's config says how many; ImageNet's 1000 otherwise)."""
    return getattr(pipe.transformer.config, "num_embeds_ada_norm", None) or 1000


def class_id(pipe, label: int | str) -> int:
    """A class id from an id or a label name, with a clear error for either kind of bad value."""
    num = num_classes(pipe)
    if isinstance(label, str) and not label.strip().lstrip("-").isdigit():
        labels = getattr(pipe, "labels", {}) or {}
        if label not in labels:
            examples = ", ".join(list(labels)[:8])
            raise ValueError(
                f"unknown class {label!r}; give a class id 0..{num - 1} or a label name (e.g. {examples})"
            )
        return int(labels[label])
    cid = int(label)
    if not 0 <= cid < num:
        raise ValueError(f"class id {cid} out of range: allowed 0..{num - 1}")
    return cid


def is_video(pipe) -> bool:
    """Whether the pipeline makes videos (Wan): it returns `.frames`, B x F x H x W x 3."""
    return "num_frames" in inspect.signature(type(pipe).__call__).parameters


def generate(pipe, request: Request, output_type: str = "np"):
    """Run the pipeline once for `request`; returns its images (`np`: B x H x W x 3 floats in [0, 1]) or, for a
    video pipeline, its frames (B x F x H x W x 3)."""
    generator = torch.Generator(device="cpu").manual_seed(int(request.seed))
    if is_text_conditional(pipe):
        if not request.prompt or not request.prompt.strip():
            raise ValueError("prompt is empty: a text-conditional model needs a prompt")
        params = inspect.signature(type(pipe).__call__).parameters
        kwargs = {"prompt": request.prompt, "num_inference_steps": request.steps, "generator": generator}
        if type(pipe).__name__ == "QwenImagePipeline":  # its guidance is true CFG, active with a negative prompt
            kwargs["true_cfg_scale"] = request.guidance
            kwargs["negative_prompt"] = " " if request.guidance > 1 else None
        else:  # FLUX.1-dev: the distilled guidance embedding; the others: classifier-free guidance
            kwargs["guidance_scale"] = request.guidance
        batch = "num_videos_per_prompt" if "num_videos_per_prompt" in params else "num_images_per_prompt"
        kwargs[batch] = request.batch
        kwargs.update(request.options)  # the model card's arguments; an explicit size below overrides theirs
        kwargs.update((k, v) for k, v in (("height", request.height), ("width", request.width)) if v is not None)
        if type(pipe).__name__ == "SanaPipeline" and not kwargs.keys() & {"height", "width"}:
            # Sana's pipeline defaults to 1024 px whatever the checkpoint: its native size is the transformer's
            # (a multiple of 32, which the pipeline requires)
            native = -(-pipe.transformer.config.sample_size * pipe.vae_scale_factor // 32) * 32
            kwargs.update(height=native, width=native)
        if "use_resolution_binning" in params and (
            "height" in kwargs
            or "width" in kwargs
            or pipe.transformer.config.sample_size not in BINNED_SAMPLE_SIZES.get(type(pipe).__name__, (None,))
            and type(pipe).__name__ in BINNED_SAMPLE_SIZES
        ):  # an explicit size is used as given, not snapped to bins; so is a checkpoint's size that has no bin table
            kwargs["use_resolution_binning"] = False
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"{type(pipe).__name__} takes no argument {unknown}")
        out = pipe(**kwargs, output_type=output_type)
        return out.frames if is_video(pipe) else out.images
    if request.label is None:
        raise ValueError("label is missing: a class-conditional model needs a class id or name")
    labels = [class_id(pipe, request.label)] * request.batch
    return pipe(
        class_labels=labels,
        num_inference_steps=request.steps,
        guidance_scale=request.guidance,
        generator=generator,
        output_type=output_type,
    ).images


def to_uint8(images) -> np.ndarray:
    """B x H x W x 3 floats in [0, 1] to uint8."""
    return (np.clip(np.asarray(images), 0, 1) * 255).round().astype(np.uint8)


def generate_batch(pipe, labels, seeds, steps: int, guidance: float, options: tuple = ()) -> np.ndarray:
    """Several samples, each with its own condition and noise seed, so that a sample is the same whatever else is
    in the batch: B x H x W x 3 floats (a video pipeline's: B x F x H x W x 3). `labels` are classes (ids or names)
    for a class-conditional pipeline, run in one call with a generator per sample; prompts for a text-conditional
    one, run one call per sample (batched prompts are padded together, which can change a prompt's embedding), with
    the family's `options`."""
    if len(labels) != len(seeds) or not len(labels):
        raise ValueError(f"labels ({len(labels)}) and seeds ({len(seeds)}) must be equally many, at least one")
    if is_text_conditional(pipe):
        images = []
        for p, s in zip(labels, seeds):
            torch.manual_seed(int(s))  # as the class path: a sampler drawing from the global generator repeats
            request = Request(prompt=p, steps=steps, seed=int(s), guidance=guidance, options=tuple(options))
            images.append(np.asarray(generate(pipe, request)[0]))
        return np.stack(images)
    generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
    torch.manual_seed(int(seeds[0]))  # pipelines whose sampler draws from the global generator stay reproducible
    return pipe(
        class_labels=[class_id(pipe, label) for label in labels],
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=generators,
        output_type="np",
    ).images
