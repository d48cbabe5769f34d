"""The reuse-step forward of diffusers' `BasicTransformerBlock`: only the work whose result is still read.

On a reuse step FORA replaces the output of each cached module (`attn1`, `attn2`, `ff`) with the stored one. The
block's original forward would still compute that module's input: the norm, its adaLN shift/scale modulation and,
for DiT's adaLN-Zero, the rows of the adaLN projection that produce them. This forward skips exactly that work and
nothing else, with the same operations in the same order for everything that remains, so its output equals the
original forward's (fed with the cached outputs) bit for bit:

- DiT (`ada_norm_zero`): the timestep/class embedding and the adaLN projection run, but only for the rows that are
  read (the two gates always; shift/scale of a module only when that module is recomputed). Rows are sliced from
  the weight in contiguous runs, so no weight is copied.
- PixArt-alpha (`ada_norm_single`): the modulation is a table plus a per-step vector; only the read chunks are
  added. The cross-attention is ungated and has no norm, so caching it skips only the module itself.

Blocks of other norm types, with positional embeddings, GLIGEN or only cross-attention run their original forward.
"""

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormZero

# adaLN chunk order of both block types: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
_SHIFT_MSA, _SCALE_MSA, _GATE_MSA, _SHIFT_MLP, _SCALE_MLP, _GATE_MLP = range(6)


def supports_lean_reuse(block: torch.nn.Module) -> bool:
    """Whether `reuse_step_forward` reproduces `block`'s forward (a plain DiT or PixArt-alpha block)."""
    if type(block).forward is not BasicTransformerBlock.forward or not isinstance(block, BasicTransformerBlock):
        return False
    if block.pos_embed is not None or block.only_cross_attention or hasattr(block, "fuser"):
        return False
    if block.norm_type == "ada_norm_zero":
        return type(block.norm1) is AdaLayerNormZero and block.norm1.emb is not None
    return block.norm_type == "ada_norm_single"


def needed_chunks(cached_attn: bool, cached_mlp: bool) -> tuple[int, ...]:
    """adaLN chunks a reuse step reads: both gates, and the shift/scale of each module that is recomputed."""
    chunks = {_GATE_MSA, _GATE_MLP}
    if not cached_attn:
        chunks |= {_SHIFT_MSA, _SCALE_MSA}
    if not cached_mlp:
        chunks |= {_SHIFT_MLP, _SCALE_MLP}
    return tuple(sorted(chunks))


def _runs(chunks: tuple[int, ...]) -> list[tuple[int, int]]:
    """Contiguous [start, stop) runs of sorted chunk indices: (0, 1, 2, 5) -> [(0, 3), (5, 6)]."""
    runs = []
    for c in chunks:
        if runs and runs[-1][1] == c:
            runs[-1] = (runs[-1][0], c + 1)
        else:
            runs.append((c, c + 1))
    return runs


def _adaln_zero_chunks(linear: torch.nn.Linear, x: torch.Tensor, chunks: tuple[int, ...]) -> dict[int, torch.Tensor]:
    """`linear(x).chunk(6, dim=1)` for the listed chunks only, one matmul per contiguous run of weight rows."""
    dim = linear.out_features // 6
    out = {}
    for start, stop in _runs(chunks):
        rows = slice(start * dim, stop * dim)
        bias = linear.bias[rows] if linear.bias is not None else None
        y = F.linear(x, linear.weight[rows], bias)
        out.update(zip(range(start, stop), y.chunk(stop - start, dim=1)))
    return out


def reuse_step_forward(
    block: BasicTransformerBlock,
    attn_out: torch.Tensor | None,
    cross_out: torch.Tensor | None,
    mlp_out: torch.Tensor | None,
    chunks: tuple[int, ...],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    timestep: torch.Tensor | None = None,
    cross_attention_kwargs: dict | None = None,
    class_labels: torch.Tensor | None = None,
    added_cond_kwargs: dict | None = None,
) -> torch.Tensor:
    """`block.forward` on a reuse step. `*_out` are the cached module outputs (`None`: recompute that module);
    `chunks` is `needed_chunks(...)` for them. The remaining arguments are `BasicTransformerBlock.forward`'s."""
    cross_attention_kwargs = dict(cross_attention_kwargs) if cross_attention_kwargs else {}
    cross_attention_kwargs.pop("gligen", None)  # the original drops it too; blocks with a fuser are not lean
    zero = block.norm_type == "ada_norm_zero"
    if zero:
        emb = block.norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        mod = _adaln_zero_chunks(block.norm1.linear, block.norm1.silu(emb), chunks)
        mod = {i: m[:, None] for i, m in mod.items()}  # (B, D) -> (B, 1, D), as the original's [:, None]/unsqueeze
    else:  # ada_norm_single: the table row plus this step's vector, added for the read chunks only
        table = timestep.reshape(hidden_states.shape[0], 6, -1)
        mod = {i: block.scale_shift_table[None, i : i + 1] + table[:, i : i + 1] for i in chunks}

    if attn_out is None:
        x = block.norm1.norm(hidden_states) if zero else block.norm1(hidden_states)
        x = x * (1 + mod[_SCALE_MSA]) + mod[_SHIFT_MSA]
        attn_out = block.attn1(x, encoder_hidden_states=None, attention_mask=attention_mask, **cross_attention_kwargs)
    hidden_states = mod[_GATE_MSA] * attn_out + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)

    if block.attn2 is not None:
        if cross_out is None:
            x = block.norm2(hidden_states) if zero else hidden_states  # PixArt applies no norm before attn2
            cross_out = block.attn2(x, encoder_hidden_states=encoder_hidden_states,
                                    attention_mask=encoder_attention_mask, **cross_attention_kwargs)  # fmt: skip
        hidden_states = cross_out + hidden_states

    if mlp_out is None:
        x = block.norm3(hidden_states) if zero else block.norm2(hidden_states)
        mlp_out = block.ff(x * (1 + mod[_SCALE_MLP]) + mod[_SHIFT_MLP])
    hidden_states = mod[_GATE_MLP] * mlp_out + hidden_states
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    return hidden_states
