"""Block specs: for each transformer block class FORA supports, which children are its attention and MLP modules,
what kind each one is, and which streams a module's output carries.

FORA's rule is the same for every family (arXiv 2407.01425, Sec. 3): every attention and MLP output of every
transformer block is cached before the adaLN gate, and everything else (embeddings, modulation, gates, norms,
residual adds, RoPE, skip connections, patch embedding, final layer) runs every step. A spec names those children,
so the engine needs no `isinstance` branch per family; it is data, read by `fora.apply`, like diffusers'
`TransformerBlockRegistry` (`diffusers/hooks/_helpers.py`). A block class without a spec is refused by name.

Kinds (what `ForaConfig`'s switches and `CachePlan` name):

- `attn`: the block's (first) self-attention. In joint-attention blocks (SD3, FLUX double-stream, Qwen-Image) one
  module attends over image and text tokens together and returns both streams, `(image, context)`: it is cached as
  the pair, and observers see the two parts as kinds `attn` and `context_attn`.
- `attn2`: SD3.5's second self-attention (image stream only, `dual_attention_layers`).
- `cross_attn`: cross-attention to the text (PixArt, Sana, HunyuanDiT, Wan). Ungated in all of them: a stale
  value enters the residual stream as is.
- `mlp`: the image stream's MLP; `context_mlp`: the text stream's (SD3 `ff_context`, FLUX, Qwen-Image `txt_mlp`).
- `attn_mlp`: FLUX's single-stream block, where attention and MLP are concatenated and projected (`proj_out`)
  before the one gate: the projection's output is the pre-gate tensor, and caching it skips all three
  (`fora.lean_reuse.flux_single_reuse`); FLUX.2's single-stream block, whose `attn` module holds the fused
  attention and MLP and returns that projection itself. Cached only with both `cache_attn` and `cache_mlp`.

The config switches map onto kinds: `cache_attn` -> `attn`, `attn2`; `cache_cross_attn` -> `cross_attn`;
`cache_mlp` -> `mlp`, `context_mlp`.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch

KINDS = ("attn", "attn2", "cross_attn", "mlp", "context_mlp", "attn_mlp")
SWITCHES = {
    "attn": "cache_attn",
    "attn2": "cache_attn",
    "cross_attn": "cache_cross_attn",
    "mlp": "cache_mlp",
    "context_mlp": "cache_mlp",
}
STREAMS = {"attn": ("attn", "context_attn")}  # a tuple output's parts, as observers see them


def enabled_kinds(config) -> dict[str, bool]:
    """Which kinds `config` (a `ForaConfig`) caches. The fused `attn_mlp` holds both attention and MLP, so it
    caches only when both switches are on, and a config that caches one without the other is refused for it by
    `fora.apply` (it cannot be honoured there)."""
    enabled = {kind: getattr(config, switch) for kind, switch in SWITCHES.items()}
    enabled["attn_mlp"] = config.cache_attn and config.cache_mlp
    return enabled


@dataclass(frozen=True)
class BlockSpec:
    """What FORA caches in one block class.

    Args:
        family (`str`): the models that use this block, for messages and docs.
        modules (`tuple[tuple[str, str], ...]`): (child attribute, kind) for each attention and MLP module. A child
            that is `None` or absent in an instance (SD3's `attn2` outside its dual-attention layers, a last block's
            `ff_context`) is skipped for that block.
        joint (`tuple[str, ...]`): the kinds whose module returns `(image, context)` (joint attention).
        reuse_forward (`Callable`, *optional*): for a block whose one cached module is fused (`attn_mlp`): the reuse
            step, `reuse_forward(block, cached, *args, **kwargs)`, which runs instead of the block's forward.
        step_forward (`Callable`, *optional*): the block's lean step (`fora.lean_reuse`),
            `step_forward(block, cached_by_kind, *args, **kwargs) -> (output, computed_by_kind)`: the block's forward
            with the cached outputs, skipping the work only they would read. Without it (or where `lean_check`
            says no, or with `lean_reuse=False`) the block runs its own forward and the modules are hooked.
        lean_check (`Callable`, *optional*): whether `step_forward` reproduces this instance (e.g. a DiT block's
            norm type); absent: always.
    """

    family: str
    modules: tuple[tuple[str, str], ...]
    joint: tuple[str, ...] = ()
    reuse_forward: Callable | None = None
    step_forward: Callable | None = None
    lean_check: Callable | None = None

    def lean(self, block: torch.nn.Module) -> bool:
        """Whether `block` runs through `step_forward`."""
        return self.step_forward is not None and (self.lean_check is None or self.lean_check(block))


def _specs() -> dict[type, BlockSpec]:
    from diffusers.models.attention import BasicTransformerBlock, JointTransformerBlock
    from diffusers.models.transformers.hunyuan_transformer_2d import HunyuanDiTBlock
    from diffusers.models.transformers.sana_transformer import SanaTransformerBlock
    from diffusers.models.transformers.transformer_flux import FluxSingleTransformerBlock, FluxTransformerBlock
    from diffusers.models.transformers.transformer_flux2 import Flux2SingleTransformerBlock, Flux2TransformerBlock
    from diffusers.models.transformers.transformer_lumina2 import Lumina2TransformerBlock
    from diffusers.models.transformers.transformer_qwenimage import QwenImageTransformerBlock
    from diffusers.models.transformers.transformer_wan import WanTransformerBlock

    from .lean_reuse import basic_step, flux_double_step, flux_single_reuse, joint_step, supports_lean_reuse

    cross = (("attn1", "attn"), ("attn2", "cross_attn"), ("ff", "mlp"))
    joint = (("attn", "attn"), ("attn2", "attn2"), ("ff", "mlp"), ("ff_context", "context_mlp"))
    return {
        BasicTransformerBlock: BlockSpec(
            "DiT, PixArt-alpha, PixArt-Sigma", cross, step_forward=basic_step, lean_check=supports_lean_reuse
        ),
        SanaTransformerBlock: BlockSpec("Sana", cross),
        HunyuanDiTBlock: BlockSpec("HunyuanDiT", cross),
        WanTransformerBlock: BlockSpec("Wan 2.1/2.2", (("attn1", "attn"), ("attn2", "cross_attn"), ("ffn", "mlp"))),
        Lumina2TransformerBlock: BlockSpec("Lumina 2", (("attn", "attn"), ("feed_forward", "mlp"))),
        JointTransformerBlock: BlockSpec("SD3, SD3.5", joint, joint=("attn",), step_forward=joint_step),
        FluxTransformerBlock: BlockSpec(
            "FLUX.1 (double-stream)", joint, joint=("attn",), step_forward=flux_double_step
        ),
        FluxSingleTransformerBlock: BlockSpec(
            "FLUX.1 (single-stream)", (("proj_out", "attn_mlp"),), reuse_forward=flux_single_reuse
        ),
        Flux2TransformerBlock: BlockSpec(
            "FLUX.2 (double-stream)", (("attn", "attn"), ("ff", "mlp"), ("ff_context", "context_mlp")), joint=("attn",)
        ),
        # FLUX.2's single-stream attention module fuses the MLP (one input and one output projection for both):
        # its output, projected before the gate, is the block's one pre-gate tensor
        Flux2SingleTransformerBlock: BlockSpec("FLUX.2 (single-stream)", (("attn", "attn_mlp"),)),
        QwenImageTransformerBlock: BlockSpec(
            "Qwen-Image", (("attn", "attn"), ("img_mlp", "mlp"), ("txt_mlp", "context_mlp")), joint=("attn",)
        ),
    }


_REGISTRY: dict[type, BlockSpec] = {}


def registry() -> dict[type, BlockSpec]:
    """Block class -> spec (built on first use: it imports the diffusers modules of every family)."""
    if not _REGISTRY:
        _REGISTRY.update(_specs())
    return _REGISTRY


def spec_for(block: torch.nn.Module) -> BlockSpec | None:
    """The spec of `block`'s exact class (a subclass may change the forward, so it is not taken on trust)."""
    return registry().get(type(block))


def supported() -> str:
    """The supported block classes and their families, for error messages."""
    return "; ".join(f"{cls.__name__} ({spec.family})" for cls, spec in registry().items())
