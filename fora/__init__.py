"""FORA (Fast-Forward Caching) for diffusion transformers, as hooks on Hugging Face diffusers models."""

from .apply import ForaHandle, apply_fora, get_fora_handle, remove_fora
from .config import ForaConfig, ForaRun
from .observers import Observation, RunEvent
from .plan import CachePlan
from .schedule import full_steps, ideal_speedup, is_full_step

__all__ = [
    "ForaConfig",
    "ForaHandle",
    "ForaRun",
    "apply_fora",
    "get_fora_handle",
    "remove_fora",
    "CachePlan",
    "Observation",
    "RunEvent",
    "full_steps",
    "ideal_speedup",
    "is_full_step",
    "load_pipeline",
]


def __getattr__(name):
    if name == "load_pipeline":  # loading pulls in transformers etc.; keep `import fora` light
        from .loading import load_pipeline

        return load_pipeline
    raise AttributeError(f"module 'fora' has no attribute {name!r}")
