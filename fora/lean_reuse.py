"""One FORA step of a block that runs only the work whose result is still read: diffusers' `BasicTransformerBlock`
(DiT, PixArt-alpha/Sigma), the MMDiT blocks (SD3/SD3.5 `JointTransformerBlock`, FLUX.1's double-stream
`FluxTransformerBlock`) and FLUX.1's single-stream block.

On a reuse step FORA replaces the output of each cached module (`attn1`, `attn2`, `ff`) with the stored one. The
block's original forward would still compute that module's input: the norm, its adaLN shift/scale modulation and,
for DiT's adaLN-Zero, the rows of the adaLN projection that produce them. `block_step_forward` skips exactly that work
and nothing else, with the original's operations in the original's order for everything that remains, so its output
equals the original forward's (fed with the cached outputs) bit for bit. On a full step it is the original forward,
and it returns the module outputs alongside: FORA then needs no hook inside the block, which keeps a compiled block
to one graph per kind of step instead of one per block (a hooked submodule is guarded by identity).

- DiT (`ada_norm_zero`): the timestep/class embedding and the adaLN projection run, but only for the rows that are
  read (the two gates always; shift/scale of a module only when that module is recomputed). Rows are sliced from
  the weight in contiguous runs, so no weight is copied. The sliced matmul equals the full one's rows wherever the
  matrix library reduces each output element alike for any number of rows: torch's CPU library does at one and two
  threads, float32, float16 and bfloat16 (tested at DiT-XL/2's width); a GPU library need not.
- PixArt-alpha (`ada_norm_single`): the modulation is a table plus a per-step vector; only the read chunks are
  added. The cross-attention is ungated and has no norm, so caching it skips only the module itself.

Blocks of other norm types, with positional embeddings, GLIGEN or only cross-attention run their original forward.

The MMDiT blocks (`mmdit_step_forward`) work alike on both streams: the adaLN rows of a stream's gates always run,
the norm and the shift/scale rows of a module only when it is recomputed (SD3.5's second attention reads the same
norm of the image tokens as the first, with its own rows; a last SD3 block's context stream is pre-only, and its
continuous norm runs only with the attention). Each step function returns `(block output, computed outputs by
kind)` and is bit for bit the block's forward fed with the cached outputs (tested on the CPU at float32; SD3.5's
also with two threads and at float16 and bfloat16, FLUX's with two threads and at bfloat16: the test loop's FLUX
timesteps overflow float16 even uncached)."""

import torch
import torch.nn.functional as F
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.normalization import AdaLayerNormZero

# adaLN chunk order of both block types: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp
_SHIFT_MSA, _SCALE_MSA, _GATE_MSA, _SHIFT_MLP, _SCALE_MLP, _GATE_MLP = range(6)


def supports_lean_reuse(block: torch.nn.Module) -> bool:
    """Whether `block_step_forward` reproduces `block`'s forward (a plain DiT or PixArt-alpha block)."""
    if type(block).forward is not BasicTransformerBlock.forward or not isinstance(block, BasicTransformerBlock):
        return False
    if block.pos_embed is not None or block.only_cross_attention or hasattr(block, "fuser"):
        return False
    if block.norm_type == "ada_norm_zero":
        return type(block.norm1) is AdaLayerNormZero and block.norm1.emb is not None
    return block.norm_type == "ada_norm_single"


ALL_CHUNKS = tuple(range(6))


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


def _adaln_zero_chunks(
    linear: torch.nn.Linear, x: torch.Tensor, chunks: tuple[int, ...], count: int = 6
) -> dict[int, torch.Tensor]:
    """`linear(x).chunk(count, dim=1)` for the listed chunks only, one matmul per contiguous run of weight rows."""
    dim = linear.out_features // count
    out = {}
    for start, stop in _runs(chunks):
        rows = slice(start * dim, stop * dim)
        bias = linear.bias[rows] if linear.bias is not None else None
        y = F.linear(x, linear.weight[rows], bias)
        out.update(zip(range(start, stop), y.chunk(stop - start, dim=1)))
    return out


def _gated_residual(gate: torch.Tensor, update: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
    """`gate * update + hidden_states`, adding into the product's fresh buffer where it has the sum's shape and
    dtype: the same values, one buffer fewer to allocate and write, which on a memory-bound reuse step is a good part
    of what is left. Otherwise (a broadcast, or a product narrower than the residual stream under mixed precision,
    which the sum promotes) the sum gets a buffer of its own."""
    out = gate * update
    # promote_types, not result_type, which a compiled graph cannot hold: for tensors of one shape they agree
    if out.shape == hidden_states.shape and out.dtype == torch.promote_types(out.dtype, hidden_states.dtype):
        return out.add_(hidden_states)
    return out + hidden_states


def block_step_forward(
    block: BasicTransformerBlock,
    cached: dict[str, torch.Tensor],
    chunks: tuple[int, ...],
    hidden_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    encoder_hidden_states: torch.Tensor | None = None,
    encoder_attention_mask: torch.Tensor | None = None,
    timestep: torch.Tensor | None = None,
    cross_attention_kwargs: dict | None = None,
    class_labels: torch.Tensor | None = None,
    added_cond_kwargs: dict | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """`block.forward` with the outputs in `cached` (by kind: `attn`, `cross_attn`, `mlp`) used instead of running
    those modules. `chunks`: the adaLN chunks to compute, `needed_chunks(...)` for a reuse step, `ALL_CHUNKS` for a
    full one. The remaining arguments are `BasicTransformerBlock.forward`'s. Returns the block output and the outputs
    of the modules that ran, by kind."""
    cross_attention_kwargs = dict(cross_attention_kwargs) if cross_attention_kwargs else {}
    gligen = cross_attention_kwargs.pop("gligen", None)
    computed = {}
    zero = block.norm_type == "ada_norm_zero"
    if zero:
        emb = block.norm1.emb(timestep, class_labels, hidden_dtype=hidden_states.dtype)
        mod = _adaln_zero_chunks(block.norm1.linear, block.norm1.silu(emb), chunks)
        mod = {i: m[:, None] for i, m in mod.items()}  # (B, D) -> (B, 1, D), as the original's [:, None]/unsqueeze
    else:  # ada_norm_single: the table row plus this step's vector, added for the read chunks only
        table = timestep.reshape(hidden_states.shape[0], 6, -1)
        mod = {i: block.scale_shift_table[None, i : i + 1] + table[:, i : i + 1] for i in chunks}

    attn_out = cached.get("attn")
    if attn_out is None:
        x = block.norm1.norm(hidden_states) if zero else block.norm1(hidden_states)
        x = x * (1 + mod[_SCALE_MSA]) + mod[_SHIFT_MSA]
        attn_out = computed["attn"] = block.attn1(
            x, encoder_hidden_states=None, attention_mask=attention_mask, **cross_attention_kwargs
        )
    hidden_states = _gated_residual(mod[_GATE_MSA], attn_out, hidden_states)
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    if gligen is not None:  # as the original; a block with a fuser runs its own forward, so this one raises like it
        hidden_states = block.fuser(hidden_states, gligen["objs"])

    if block.attn2 is not None:
        cross_out = cached.get("cross_attn")
        if cross_out is None:
            x = block.norm2(hidden_states) if zero else hidden_states  # PixArt applies no norm before attn2
            cross_out = computed["cross_attn"] = block.attn2(
                x,
                encoder_hidden_states=encoder_hidden_states,
                attention_mask=encoder_attention_mask,
                **cross_attention_kwargs,
            )
        hidden_states = cross_out + hidden_states

    mlp_out = cached.get("mlp")
    if mlp_out is None:
        x = block.norm3(hidden_states) if zero else block.norm2(hidden_states)
        mlp_out = computed["mlp"] = block.ff(x * (1 + mod[_SCALE_MLP]) + mod[_SHIFT_MLP])
    hidden_states = _gated_residual(mod[_GATE_MLP], mlp_out, hidden_states)
    if hidden_states.ndim == 4:
        hidden_states = hidden_states.squeeze(1)
    return hidden_states, computed


def basic_step(block: BasicTransformerBlock, cached: dict, *args, **kwargs):
    """`block_step_forward` with the adaLN chunks a step with these cached kinds reads."""
    chunks = needed_chunks("attn" in cached, "mlp" in cached) if cached else ALL_CHUNKS
    return block_step_forward(block, cached, chunks, *args, **kwargs)


# SD3.5's dual-attention norm (SD35AdaLayerNormZeroX) appends the second attention's three chunks
_SHIFT_MSA2, _SCALE_MSA2, _GATE_MSA2 = 6, 7, 8


def _joint_attention(block, cached, x, context, **kwargs):
    """The joint attention's `(image, context)` pair: from the cache, or computed (then also returned as new)."""
    if "attn" in cached:
        return cached["attn"], None
    out = block.attn(hidden_states=x, encoder_hidden_states=context, **kwargs)
    if len(out) != 2:  # FLUX's IP-adapter adds an ungated third output, which FORA does not cache
        raise RuntimeError(f"{type(block).__name__}.attn returned {len(out)} outputs; FORA caches (image, context)")
    return out, out


def mmdit_step_forward(
    block: torch.nn.Module,
    cached: dict,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    attention_kwargs: dict,
):
    """One step of an MMDiT block (`JointTransformerBlock`, `FluxTransformerBlock`) with the outputs in `cached`
    (by kind: `attn` the joint pair, `attn2`, `mlp`, `context_mlp`) used instead of running those modules."""
    computed = {}
    dual = getattr(block, "use_dual_attention", False)
    attn_cached = "attn" in cached
    chunks = {_GATE_MSA, _GATE_MLP}
    if not attn_cached:
        chunks |= {_SHIFT_MSA, _SCALE_MSA}
    if "mlp" not in cached:
        chunks |= {_SHIFT_MLP, _SCALE_MLP}
    if dual:
        chunks |= {_GATE_MSA2} | ({_SHIFT_MSA2, _SCALE_MSA2} if "attn2" not in cached else set())
    silu_temb = block.norm1.silu(temb)
    mod = _adaln_zero_chunks(block.norm1.linear, silu_temb, tuple(sorted(chunks)), 9 if dual else 6)
    needs_norm = not attn_cached or (dual and "attn2" not in cached)
    norm_h = block.norm1.norm(hidden_states) if needs_norm else None

    pre_only = getattr(block, "context_pre_only", False)
    norm_c, cmod = None, {}
    if pre_only:  # a continuous norm feeds the attention's context input; the stream ends here
        if not attn_cached:
            norm_c = block.norm1_context(encoder_hidden_states, temb)
    else:
        cchunks = {_GATE_MSA, _GATE_MLP}
        if not attn_cached:
            cchunks |= {_SHIFT_MSA, _SCALE_MSA}
        if "context_mlp" not in cached:
            cchunks |= {_SHIFT_MLP, _SCALE_MLP}
        cmod = _adaln_zero_chunks(block.norm1_context.linear, block.norm1_context.silu(temb), tuple(sorted(cchunks)))
        if not attn_cached:
            norm_c = block.norm1_context.norm(encoder_hidden_states)
            norm_c = norm_c * (1 + cmod[_SCALE_MSA][:, None]) + cmod[_SHIFT_MSA][:, None]

    x = None if attn_cached else norm_h * (1 + mod[_SCALE_MSA][:, None]) + mod[_SHIFT_MSA][:, None]
    (attn_out, context_attn_out), new = _joint_attention(block, cached, x, norm_c, **attention_kwargs)
    if new is not None:
        computed["attn"] = new
    hidden_states = hidden_states + mod[_GATE_MSA].unsqueeze(1) * attn_out

    if dual:
        attn2_out = cached.get("attn2")
        if attn2_out is None:
            x2 = norm_h * (1 + mod[_SCALE_MSA2][:, None]) + mod[_SHIFT_MSA2][:, None]
            attn2_out = computed["attn2"] = block.attn2(hidden_states=x2, **attention_kwargs)
        hidden_states = hidden_states + mod[_GATE_MSA2].unsqueeze(1) * attn2_out

    ff_out = cached.get("mlp")
    if ff_out is None:
        x = block.norm2(hidden_states) * (1 + mod[_SCALE_MLP][:, None]) + mod[_SHIFT_MLP][:, None]
        ff_out = computed["mlp"] = block.ff(x)
    hidden_states = hidden_states + mod[_GATE_MLP].unsqueeze(1) * ff_out

    if pre_only:
        return (None, hidden_states), computed
    encoder_hidden_states = encoder_hidden_states + cmod[_GATE_MSA].unsqueeze(1) * context_attn_out
    context_ff_out = cached.get("context_mlp")
    if context_ff_out is None:
        x = block.norm2_context(encoder_hidden_states)
        x = x * (1 + cmod[_SCALE_MLP][:, None]) + cmod[_SHIFT_MLP][:, None]
        context_ff_out = computed["context_mlp"] = block.ff_context(x)
    encoder_hidden_states = encoder_hidden_states + cmod[_GATE_MLP].unsqueeze(1) * context_ff_out
    return (encoder_hidden_states, hidden_states), computed


def joint_step(block, cached, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None):
    """`mmdit_step_forward` with `JointTransformerBlock.forward`'s signature (SD3, SD3.5)."""
    return mmdit_step_forward(block, cached, hidden_states, encoder_hidden_states, temb, joint_attention_kwargs or {})


def flux_double_step(
    block, cached, hidden_states, encoder_hidden_states, temb, image_rotary_emb=None, joint_attention_kwargs=None
):
    """`mmdit_step_forward` with `FluxTransformerBlock.forward`'s signature; its float16 clip of the text stream."""
    kwargs = {"image_rotary_emb": image_rotary_emb, **(joint_attention_kwargs or {})}
    (context, image), computed = mmdit_step_forward(block, cached, hidden_states, encoder_hidden_states, temb, kwargs)
    if context.dtype == torch.float16:
        context = context.clip(-65504, 65504)
    return (context, image), computed


def flux_single_reuse(
    block: torch.nn.Module,
    cached: torch.Tensor,
    hidden_states: torch.Tensor,
    encoder_hidden_states: torch.Tensor,
    temb: torch.Tensor,
    image_rotary_emb=None,
    joint_attention_kwargs=None,
):
    """A reuse step of FLUX's single-stream block (`FluxSingleTransformerBlock`, diffusers 0.42).

    Its attention and MLP branch are concatenated and projected by `proj_out` before the one gate, so the pre-gate
    tensor FORA caches is `proj_out`'s output: it holds both modules' contributions, and caching it skips the
    attention, the MLP and the projection together. What remains is the gate (only the adaLN rows' gate chunk is
    read; the norm of the input is not needed) and the residual add, in the original's order, so the output equals
    the original forward fed with the cached projection bit for bit.
    """
    text_seq_len = encoder_hidden_states.shape[1]
    hidden_states = torch.cat([encoder_hidden_states, hidden_states], dim=1)
    residual = hidden_states
    gate = block.norm.linear(block.norm.silu(temb)).chunk(3, dim=1)[2]
    hidden_states = gate.unsqueeze(1) * cached
    hidden_states = residual + hidden_states
    if hidden_states.dtype == torch.float16:
        hidden_states = hidden_states.clip(-65504, 65504)
    return hidden_states[:, :text_seq_len], hidden_states[:, text_seq_len:]
