"""Load the pipelines the project knows: the embedded emoji DiT (offline) and hub checkpoints (DiT-XL/2, PixArt-alpha).

`load_pipeline("emoji-dit")` needs nothing but this repository. Hub models need internet access on first use (or
a filled Hugging Face cache) and realistically a GPU; where the download fails the error says so and names the
offline alternatives.
"""

import json
import os
from dataclasses import dataclass

import torch

from embedded.emoji.pipeline import DEFAULT_GUIDANCE as EMOJI_GUIDANCE
from embedded.emoji.pipeline import DEFAULT_STEPS as EMOJI_STEPS

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


@dataclass(frozen=True)
class ModelSpec:
    key: str
    source: str  # hub repo id or local folder
    conditioning: str  # "class" or "text"
    default_steps: int
    default_guidance: float
    description: str


MODELS: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in [
        ModelSpec(
            "emoji-dit",
            os.path.join(ASSETS, "emoji-dit"),
            "class",
            EMOJI_STEPS,
            EMOJI_GUIDANCE,
            "embedded 32x32 pixel-space DiT, 32 emoji classes, trained by this project (CPU, offline)",
        ),
        ModelSpec("dit-xl-2-256", "facebook/DiT-XL-2-256", "class", 50, 4.0, "DiT-XL/2, ImageNet 256x256"),
        ModelSpec("dit-xl-2-512", "facebook/DiT-XL-2-512", "class", 50, 4.0, "DiT-XL/2, ImageNet 512x512"),
        ModelSpec(
            "pixart-alpha-512",
            "PixArt-alpha/PixArt-XL-2-512x512",
            "text",
            20,
            4.5,
            "PixArt-alpha XL/2, text-to-image 512x512",
        ),
        ModelSpec(
            "pixart-alpha-1024",
            "PixArt-alpha/PixArt-XL-2-1024-MS",
            "text",
            20,
            4.5,
            "PixArt-alpha XL/2, text-to-image 1024x1024",
        ),
    ]
}
_BY_SOURCE = {spec.source: spec for spec in MODELS.values()}


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what works offline."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model(model_id: str) -> ModelSpec | None:
    """The known model for a key ("dit-xl-2-256") or hub id ("facebook/DiT-XL-2-256"), else `None`."""
    return MODELS.get(model_id) or _BY_SOURCE.get(model_id)


def _pipeline_class(name: str):
    from diffusers import DiTPipeline, PixArtAlphaPipeline

    from embedded.emoji.pipeline import EmojiDiTPipeline

    classes = {
        "EmojiDiTPipeline": EmojiDiTPipeline,
        "DiTPipeline": DiTPipeline,
        "PixArtAlphaPipeline": PixArtAlphaPipeline,
    }
    if name not in classes:
        raise ModelLoadError(f"pipeline class {name!r} is not supported; supported: {', '.join(classes)}")
    return classes[name]


def _hub_class(source: str) -> str:
    return "PixArtAlphaPipeline" if "pixart" in source.lower() else "DiTPipeline"


def load_pipeline(
    model_id: str = "emoji-dit",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
):
    r"""
    Load a diffusers pipeline by project key, hub id or local folder (one written by `save_pretrained`).

    Args:
        model_id (`str`, defaults to `"emoji-dit"`): a key of `MODELS`, a hub repo id, or a pipeline folder.
        device (`str`, *optional*): defaults to CUDA when available, else CPU.
        dtype (`torch.dtype`, *optional*): defaults to float16 for hub models on CUDA, float32 otherwise.
        local_files_only (`bool`, *optional*): only use the local Hugging Face cache (default: $HF_HUB_OFFLINE).

    >>> pipe = load_pipeline("emoji-dit")
    >>> image = pipe(class_labels=["cat"], generator=torch.Generator().manual_seed(0)).images[0]
    """
    device = device or default_device()
    spec = resolve_model(model_id)
    source = spec.source if spec else model_id
    local = os.path.isdir(source)
    if dtype is None:
        dtype = torch.float16 if (device.startswith("cuda") and not local) else torch.float32
    if local:
        index = os.path.join(source, "model_index.json")
        if not os.path.isfile(index):
            raise ModelLoadError(f"{source!r} is a folder without model_index.json: not a diffusers pipeline folder")
        with open(index) as f:
            class_name = json.load(f).get("_class_name", "")
        try:
            pipe = _pipeline_class(class_name).from_pretrained(source, dtype=dtype)
        except ModelLoadError:
            raise
        except Exception as e:  # a corrupt or incomplete folder
            raise ModelLoadError(f"could not load the pipeline folder {source!r}: {type(e).__name__}: {e}") from e
    else:
        if spec is None and "/" not in model_id:
            raise ModelLoadError(f"unknown model {model_id!r}; known: {', '.join(MODELS)}, or a pipeline folder path")
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            pipe = _pipeline_class(_hub_class(source)).from_pretrained(
                source, dtype=dtype, local_files_only=local_files_only
            )
        except Exception as e:
            raise ModelLoadError(
                f"could not load {source!r} from the Hugging Face Hub ({type(e).__name__}: {str(e)[:300]}). "
                "This machine may have no internet access and the model is not in the local Hugging Face cache. "
                "Offline alternatives: the embedded model 'emoji-dit' (the default, shipped in assets/), or a "
                "pipeline folder written by save_pretrained (pass its path)."
            ) from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(leave=False)
    return pipe
