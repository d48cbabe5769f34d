"""Load the pipelines the project knows: the embedded emoji DiT and MMDiT (offline) and the hub checkpoints of each
family FORA supports (DiT, PixArt-alpha/Sigma, SD3.5, FLUX.1, Sana, HunyuanDiT, Lumina 2, Wan 2.1, Qwen-Image).

`load_pipeline("emoji-dit")` and `load_pipeline("emoji-mmdit")` (the embedded text-to-image model) need nothing but
this repository. Hub models need internet access on first use (or
a filled Hugging Face cache) and realistically a GPU; where the download fails the error says so and names the
offline alternatives. Any `save_pretrained` folder of a supported pipeline class loads too (its class is read from
`model_index.json`).
"""

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from embedded.emoji.pipeline import DEFAULT_GUIDANCE as EMOJI_GUIDANCE
from embedded.emoji.pipeline import DEFAULT_STEPS as EMOJI_STEPS
from embedded.emoji_mmdit.pipeline import DEFAULT_GUIDANCE as MMDIT_GUIDANCE
from embedded.emoji_mmdit.pipeline import DEFAULT_STEPS as MMDIT_STEPS

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")


@dataclass(frozen=True)
class ModelSpec:
    """A model the project knows, with its family's recommended settings (from the model cards)."""

    key: str
    source: str  # hub repo id or local folder
    conditioning: str  # "class" or "text"
    default_steps: int
    default_guidance: float
    description: str
    pipeline: str = "DiTPipeline"  # the diffusers pipeline class
    output: str = "image"  # "image" or "video"
    runs_on: str = "a CUDA GPU"  # where it realistically runs (weights: approximate, from the models' sizes)
    call_kwargs: dict = field(default_factory=dict)  # further pipeline arguments the model card recommends

    @property
    def cuda_dtype(self) -> str:
        """The weights' dtype on CUDA (float32 on a CPU): its pipeline class's (`PIPELINES`)."""
        return PIPELINES[self.pipeline]


def _hub(key, source, pipeline, steps, guidance, description, runs_on, **extra) -> ModelSpec:
    """A text-to-image (or -video) family checkpoint on the hub."""
    output = extra.pop("output", "image")
    return ModelSpec(key, source, "text", steps, guidance, description, pipeline, output, runs_on, extra)


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
            "EmojiDiTPipeline",
            runs_on="a CPU, offline (shipped in assets/)",
        ),
        ModelSpec(
            "emoji-mmdit",
            os.path.join(ASSETS, "emoji-mmdit"),
            "text",
            MMDIT_STEPS,
            MMDIT_GUIDANCE,
            "embedded 32x32 pixel-space MMDiT (SD3 blocks), emoji scenes from captions, trained by this project "
            "(CPU, offline)",
            "EmojiMMDiTPipeline",
            runs_on="a CPU, offline (shipped in assets/)",
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
            "PixArtAlphaPipeline",
        ),
        ModelSpec(
            "pixart-alpha-1024",
            "PixArt-alpha/PixArt-XL-2-1024-MS",
            "text",
            20,
            4.5,
            "PixArt-alpha XL/2, text-to-image 1024x1024",
            "PixArtAlphaPipeline",
        ),
        _hub(
            "pixart-sigma-1024",
            "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS",
            "PixArtSigmaPipeline",
            20,
            4.5,
            "PixArt-Sigma XL/2 (0.6B), text-to-image 1024x1024",
            "a CUDA GPU: about 11 GB of weights with the T5-XXL text encoder",
        ),
        _hub(
            "sd3.5-medium",
            "stabilityai/stable-diffusion-3.5-medium",
            "StableDiffusion3Pipeline",
            40,
            4.5,
            "Stable Diffusion 3.5 Medium (MMDiT-X, 2.5B), text-to-image 1024x1024",
            "a CUDA GPU: about 16 GB of weights with T5-XXL (gated on the hub: accept its licence)",
        ),
        _hub(
            "flux.1-schnell",
            "black-forest-labs/FLUX.1-schnell",
            "FluxPipeline",
            4,
            0.0,
            "FLUX.1 [schnell] (12B, timestep-distilled), text-to-image 1024x1024",
            "a CUDA GPU: about 34 GB of weights with T5-XXL",
            max_sequence_length=256,
        ),
        _hub(
            "flux.1-dev",
            "black-forest-labs/FLUX.1-dev",
            "FluxPipeline",
            50,
            3.5,
            "FLUX.1 [dev] (12B, guidance-distilled: one call per step), text-to-image 1024x1024",
            "a CUDA GPU: about 34 GB of weights with T5-XXL (gated on the hub: accept its licence)",
        ),
        _hub(
            "sana-1600m-1024",
            "Efficient-Large-Model/Sana_1600M_1024px_BF16_diffusers",
            "SanaPipeline",
            20,
            4.5,
            "Sana 1.6B (linear attention, 32x DC-AE), text-to-image 1024x1024",
            "a CUDA GPU: about 9 GB of weights with the Gemma-2 text encoder",
        ),
        _hub(
            "hunyuan-dit-1.2",
            "Tencent-Hunyuan/HunyuanDiT-v1.2-Diffusers",
            "HunyuanDiTPipeline",
            50,
            5.0,
            "HunyuanDiT v1.2 (1.5B, Chinese and English prompts), text-to-image 1024x1024",
            "a CUDA GPU: about 7 GB of weights with its two text encoders",
        ),
        _hub(
            "lumina-image-2",
            "Alpha-VLLM/Lumina-Image-2.0",
            "Lumina2Pipeline",
            50,
            4.0,
            "Lumina-Image 2.0 (2.6B, Gemma-2 2B text encoder), text-to-image 1024x1024",
            "a CUDA GPU: about 11 GB of weights with the Gemma-2 text encoder",
            cfg_trunc_ratio=0.25,
            cfg_normalization=True,
        ),
        _hub(
            "wan2.1-t2v-1.3b",
            "Wan-AI/Wan2.1-T2V-1.3B-Diffusers",
            "WanPipeline",
            50,
            5.0,
            "Wan 2.1 T2V 1.3B, text-to-video 480x832, 81 frames at 16 fps",
            "a CUDA GPU: about 14 GB of weights with UMT5-XXL, plus the video's activations",
            output="video",
            height=480,
            width=832,
            num_frames=81,
        ),
        _hub(
            "qwen-image",
            "Qwen/Qwen-Image",
            "QwenImagePipeline",
            50,
            4.0,
            "Qwen-Image (20B MMDiT, Qwen2.5-VL 7B text encoder), text-to-image 1328x1328; guidance is true CFG",
            "a CUDA GPU: about 57 GB of weights with the Qwen2.5-VL text encoder",
            height=1328,  # the model card's 1:1 size; the pipeline's own default is 1024
            width=1328,
        ),
    ]
}
_BY_SOURCE = {spec.source: spec for spec in MODELS.values()}

# the pipeline classes FORA runs on, by their model_index.json name (one block spec family each, `fora.specs`), and
# the dtype each loads in on CUDA: float16 where the checkpoints were published in it (DiT, PixArt, HunyuanDiT),
# bfloat16 for the newer families, whose activations overflow float16; the embedded model stays float32
PIPELINES = {
    "EmojiDiTPipeline": "float32",
    "EmojiMMDiTPipeline": "float32",
    "DiTPipeline": "float16",
    "PixArtAlphaPipeline": "float16",
    "PixArtSigmaPipeline": "float16",
    "HunyuanDiTPipeline": "float16",
    "StableDiffusion3Pipeline": "bfloat16",
    "FluxPipeline": "bfloat16",
    "SanaPipeline": "bfloat16",
    "Lumina2Pipeline": "bfloat16",
    "WanPipeline": "bfloat16",
    "QwenImagePipeline": "bfloat16",
}
_FLOAT32_PARTS = {"WanPipeline": ("vae",)}  # components the model card keeps in float32 (Wan's VAE)


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message says why and what works offline."""


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_model(model_id: str) -> ModelSpec | None:
    """The known model for a key ("dit-xl-2-256") or hub id ("facebook/DiT-XL-2-256"), else `None`."""
    return MODELS.get(model_id) or _BY_SOURCE.get(model_id)


def _pipeline_class(name: str):
    if name not in PIPELINES:
        raise ModelLoadError(f"pipeline class {name!r} is not supported; supported: {', '.join(PIPELINES)}")
    if name == "EmojiDiTPipeline":
        from embedded.emoji.pipeline import EmojiDiTPipeline

        return EmojiDiTPipeline
    if name == "EmojiMMDiTPipeline":
        from embedded.emoji_mmdit.pipeline import EmojiMMDiTPipeline

        return EmojiMMDiTPipeline
    import diffusers

    return getattr(diffusers, name)


def _dtypes(cls, dtype: torch.dtype | None, device: str):
    """`from_pretrained`'s dtype: as given, else the class's on CUDA (`PIPELINES`) and float32 elsewhere; with
    the components the model card keeps in float32 as a per-component dict."""
    if dtype is None:
        dtype = getattr(torch, PIPELINES[cls.__name__]) if device.startswith("cuda") else torch.float32
    parts = _FLOAT32_PARTS.get(cls.__name__, ())
    return {**dict.fromkeys(parts, torch.float32), "default": dtype} if parts and dtype != torch.float32 else dtype


def _hub_class(source: str, local_files_only: bool) -> str:
    """The pipeline class of a hub repo the project has no key for: read from its model_index.json alone."""
    from diffusers import DiffusionPipeline

    return DiffusionPipeline.load_config(source, local_files_only=local_files_only).get("_class_name", "")


def load_pipeline(
    model_id: str = "emoji-dit",
    device: str | None = None,
    dtype: torch.dtype | None = None,
    local_files_only: bool | None = None,
    share_from=(),
):
    r"""
    Load a diffusers pipeline by project key, hub id or local folder (one written by `save_pretrained`).

    Args:
        model_id (`str`, defaults to `"emoji-dit"`): a key of `MODELS`, a hub repo id, or a pipeline folder.
        device (`str`, *optional*): defaults to CUDA when available, else CPU.
        dtype (`torch.dtype`, *optional*): defaults, on CUDA, to the dtype of the pipeline class (`PIPELINES`:
            float16 for DiT, PixArt and HunyuanDiT, bfloat16 for the newer families, float32 for the embedded
            model), for keys, hub ids and folders alike; float32 on a CPU.
        local_files_only (`bool`, *optional*): only use the local Hugging Face cache (default: $HF_HUB_OFFLINE).
        share_from (iterable of pipelines, defaults to none): loaded pipelines whose text encoders this one takes
            instead of loading its own, where the files, class, dtype and device are the same (`_shared_encoders`).
            Only text encoders are shared: they hold no state between calls, where the transformer carries the
            FORA hooks and the scheduler the step count. A shared encoder is one module in both pipelines: moving
            one pipeline (`.to`, CPU offload) moves it under the other too.

    >>> pipe = load_pipeline("emoji-dit")
    >>> image = pipe(class_labels=["cat"], generator=torch.Generator().manual_seed(0)).images[0]
    """
    device = device or default_device()
    spec = resolve_model(model_id)
    source = spec.source if spec else model_id
    if os.path.isdir(source):
        index = os.path.join(source, "model_index.json")
        if not os.path.isfile(index):
            raise ModelLoadError(f"{source!r} is a folder without model_index.json: not a diffusers pipeline folder")
        with open(index) as f:
            cls = _pipeline_class(json.load(f).get("_class_name", ""))
        try:
            folder, dtypes = source, _dtypes(cls, dtype, device)
            shared = _shared_encoders(folder, dtypes, device, share_from)
            pipe = cls.from_pretrained(folder, dtype=dtypes, **shared)
        except Exception as e:  # a corrupt or incomplete folder
            raise ModelLoadError(f"could not load the pipeline folder {source!r}: {type(e).__name__}: {e}") from e
    else:
        if spec is None and "/" not in model_id:
            raise ModelLoadError(f"unknown model {model_id!r}; known: {', '.join(MODELS)}, or a pipeline folder path")
        if local_files_only is None:
            local_files_only = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
        try:
            cls = _pipeline_class(spec.pipeline if spec else _hub_class(source, local_files_only))
            # what `from_pretrained(source)` does first, done here to know the files before loading (sharing)
            folder, dtypes = cls.download(source, local_files_only=local_files_only), _dtypes(cls, dtype, device)
            shared = _shared_encoders(folder, dtypes, device, share_from)
            pipe = cls.from_pretrained(folder, dtype=dtypes, **shared)
        except ModelLoadError:
            raise
        except Exception as e:
            raise ModelLoadError(
                f"could not load {source!r} from the Hugging Face Hub ({type(e).__name__}: {str(e)[:300]}). "
                "This machine may have no internet access and the model is not in the local Hugging Face cache. "
                "Offline alternatives: the embedded models 'emoji-dit' (the default) and 'emoji-mmdit' "
                "(text-to-image), shipped in assets/, or a pipeline folder written by save_pretrained (pass its path)."
            ) from e
    pipe = pipe.to(device)
    pipe.set_progress_bar_config(leave=False)
    pipe._fora_folder = folder  # where its components' files are: what a later load compares with
    return pipe


def _shared_encoders(folder: str, dtypes, device: str, share_from) -> dict:
    """The text encoders of `share_from` pipelines that a pipeline in `folder` would load identically: same class
    (in its model_index.json), same files byte for byte, same dtype and device. By name, for `from_pretrained`."""
    with open(os.path.join(folder, "model_index.json")) as f:
        index = json.load(f)
    shared = {}
    for name, entry in index.items():
        if not name.startswith("text_encoder") or not isinstance(entry, list) or entry[1] is None:
            continue
        want = dtypes.get(name, dtypes["default"]) if isinstance(dtypes, dict) else dtypes
        for other in share_from:
            module, other_folder = getattr(other, name, None), getattr(other, "_fora_folder", None)
            if not isinstance(module, torch.nn.Module) or other_folder is None or type(module).__name__ != entry[1]:
                continue
            param = next(module.parameters(), None)
            if param is None or param.dtype != want or not same_device(param.device, device):
                continue
            if _same_files(os.path.join(folder, name), os.path.join(other_folder, name)):
                shared[name] = module
                break
    return shared


def same_device(a, b) -> bool:
    """Whether two devices are one: `cuda` is `cuda:0` (the current device), as a parameter reports it."""
    a, b = torch.device(a), torch.device(b)
    return a.type == b.type and (a.index or 0) == (b.index or 0)


def _listing(folder: str) -> list[tuple[str, int, str]]:
    """(path in the folder, size, real path) of each file under `folder`, sorted."""
    out = []
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            out.append((os.path.relpath(path, folder), os.path.getsize(path), os.path.realpath(path)))
    return sorted(out)


def _same_files(a: str, b: str) -> bool:
    """Whether two component folders hold the same files with the same bytes. Files in the Hugging Face cache are
    named by their content's hash (`blobs/<sha>`), so two such are compared by name; any other pair by SHA-256,
    read only when names and sizes already agree."""
    if not (os.path.isdir(a) and os.path.isdir(b)):
        return False
    la, lb = _listing(a), _listing(b)
    if not la or [f[:2] for f in la] != [f[:2] for f in lb]:
        return False
    for (_, _, ra), (_, _, rb) in zip(la, lb):
        if ra == rb:
            continue
        if all(os.path.basename(os.path.dirname(r)) == "blobs" for r in (ra, rb)):
            if os.path.basename(ra) != os.path.basename(rb):
                return False
        elif _sha256(ra, _stamp(ra)) != _sha256(rb, _stamp(rb)):
            return False
    return True


def _stamp(path: str) -> tuple[int, int]:
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


@functools.lru_cache(maxsize=256)
def _sha256(path: str, stamp: tuple[int, int]) -> str:
    """The file's SHA-256, cached while its size and modification time (`stamp`) stay the same."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(2**24), b""):
            h.update(chunk)
    return h.hexdigest()
