"""The FORA engine on real (tiny, random) diffusers pipelines."""

import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline, run_dit, run_pixart, torch_threads
from torch.utils._python_dispatch import TorchDispatchMode

from fora import ForaConfig, apply_fora, full_steps, get_fora_handle, remove_fora


def count_inner_calls(transformer):
    """Count calls of each block's attention `to_q` and of the MLP's first Linear: real computation, not modules."""
    counts = {}

    def counter(key):
        def hook(module, args, output):
            counts[key] = counts.get(key, 0) + 1

        return hook

    handles = []
    for i, block in enumerate(transformer.transformer_blocks):
        handles.append(block.attn1.to_q.register_forward_hook(counter((i, "attn"))))
        handles.append(block.ff.net[0].proj.register_forward_hook(counter((i, "mlp"))))
        if block.attn2 is not None:
            handles.append(block.attn2.to_q.register_forward_hook(counter((i, "cross_attn"))))
    return counts, handles


def test_interval_one_is_bit_identical(dit_pipe):
    base = run_dit(dit_pipe)
    handle = apply_fora(dit_pipe, ForaConfig(interval=1))
    out = run_dit(dit_pipe)
    assert torch.equal(torch.from_numpy(out), torch.from_numpy(base))
    assert handle.last_run.full_steps == list(range(10)) and handle.last_run.reused_calls == 0
    assert handle.last_run.cache_bytes == 0


@pytest.mark.parametrize("interval", [2, 3, 5])
def test_attention_and_mlp_really_skipped(dit_pipe, interval):
    steps = 12
    counts, _ = count_inner_calls(dit_pipe.transformer)
    handle = apply_fora(dit_pipe, ForaConfig(interval=interval))
    run_dit(dit_pipe, steps=steps)
    n_full = len(full_steps(steps, interval))
    assert n_full < steps
    for block in range(3):
        assert counts[(block, "attn")] == n_full
        assert counts[(block, "mlp")] == n_full
    run = handle.last_run
    assert run.num_steps == steps and run.complete
    assert run.full_steps == full_steps(steps, interval)
    assert run.computed_calls == 3 * 2 * n_full
    assert run.reused_calls == 3 * 2 * (steps - n_full)


def reference_dit_forward(model, x, t, y, cache, full):
    """DiT forward written out by hand with FORA: attn1/ff outputs cached before the gate, all else every step."""
    p = model.config.patch_size
    h, w = x.shape[-2] // p, x.shape[-1] // p
    hs = model.pos_embed(x)
    for k, block in enumerate(model.transformer_blocks):
        emb = block.norm1.linear(block.norm1.silu(block.norm1.emb(t, y, hidden_dtype=hs.dtype)))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = emb.chunk(6, dim=1)
        n = block.norm1.norm(hs) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        if full:
            cache[("attn", k)] = block.attn1(n)
        hs = hs + gate_msa.unsqueeze(1) * cache[("attn", k)]
        n = block.norm3(hs) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        if full:
            cache[("mlp", k)] = block.ff(n)
        hs = hs + gate_mlp.unsqueeze(1) * cache[("mlp", k)]
    cond = model.transformer_blocks[0].norm1.emb(t, y, hidden_dtype=hs.dtype)
    shift, scale = model.proj_out_1(torch.nn.functional.silu(cond)).chunk(2, dim=1)
    hs = model.proj_out_2(model.norm_out(hs) * (1 + scale[:, None]) + shift[:, None])
    hs = hs.reshape(-1, h, w, p, p, model.out_channels)
    return torch.einsum("nhwpqc->nchpwq", hs).reshape(-1, model.out_channels, h * p, w * p)


@torch.no_grad()
def test_matches_reference_implementation():
    model = make_dit_pipeline(num_layers=4).transformer
    T, N = 9, 3
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([3, 1000])
    timesteps = torch.linspace(900, 0, T).long()

    def loop(forward):
        x = x0.clone()
        for t in timesteps:
            x = x - 0.1 * forward(x, t.expand(2))[:, :4]
        return x

    cache = {}
    schedule = full_steps(T, N)
    step = iter(range(T))
    ref = loop(lambda x, t: reference_dit_forward(model, x, t, y, cache, next(step) in schedule))
    handle = apply_fora(model, ForaConfig(interval=N), num_steps=T)
    out = loop(lambda x, t: model(x, timestep=t, class_labels=y).sample)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)
    assert handle.last_run.full_steps == schedule
    # the gates really change on reuse steps: without them the result would differ from the reference
    plain = loop(lambda x, t: reference_dit_forward(model, x, t, y, {}, True))
    assert not torch.allclose(out, plain)


def test_consecutive_calls_identical_and_shape_changes(dit_pipe):
    handle = apply_fora(dit_pipe, ForaConfig(interval=3))
    a = run_dit(dit_pipe, steps=10)
    b = run_dit(dit_pipe, steps=10)
    assert torch.equal(torch.from_numpy(a), torch.from_numpy(b))
    # another batch size and number of steps right after: same as on a freshly built, freshly hooked pipeline
    c = run_dit(dit_pipe, steps=7, labels=(5, 6, 7))
    assert handle.last_run.num_steps == 7
    fresh = make_dit_pipeline()
    apply_fora(fresh, ForaConfig(interval=3))
    assert torch.equal(torch.from_numpy(c), torch.from_numpy(run_dit(fresh, steps=7, labels=(5, 6, 7))))


def test_interrupted_run_does_not_leak(dit_pipe):
    apply_fora(dit_pipe, ForaConfig(interval=2))
    calls = []
    original = dit_pipe.scheduler.step

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    dit_pipe.scheduler.step = failing_step
    with pytest.raises(KeyboardInterrupt):
        run_dit(dit_pipe, steps=10)
    dit_pipe.scheduler.step = original
    out = run_dit(dit_pipe, steps=10)
    fresh = make_dit_pipeline()
    apply_fora(fresh, ForaConfig(interval=2))
    assert torch.equal(torch.from_numpy(out), torch.from_numpy(run_dit(fresh, steps=10)))


def test_remove_restores_and_double_apply(dit_pipe):
    base = run_dit(dit_pipe)
    apply_fora(dit_pipe, ForaConfig(interval=4))
    with pytest.raises(ValueError, match="already applied"):
        apply_fora(dit_pipe, ForaConfig(interval=2))
    assert not torch.equal(torch.from_numpy(run_dit(dit_pipe)), torch.from_numpy(base))
    remove_fora(dit_pipe)
    assert get_fora_handle(dit_pipe) is None
    assert torch.equal(torch.from_numpy(run_dit(dit_pipe)), torch.from_numpy(base))
    assert not any(hasattr(m, "_diffusers_hook") or "forward" in m.__dict__ for m in dit_pipe.transformer.modules())
    apply_fora(dit_pipe, ForaConfig(interval=2))  # can be applied again after removal
    remove_fora(dit_pipe)
    remove_fora(dit_pipe)  # removing twice is harmless


def test_cache_bytes_and_release(dit_pipe):
    handle = apply_fora(dit_pipe, ForaConfig(interval=2))
    run_dit(dit_pipe, steps=6, labels=(1, 2))
    # batch 2 x 2 for guidance, 16 tokens, width 16, float32; attn + mlp per block, 3 blocks
    assert handle.last_run.cache_bytes == 3 * 2 * (4 * 16 * 16 * 4)
    assert handle.state.cache == {}  # freed at the end of the run


def test_window_and_blocks(dit_pipe):
    counts, _ = count_inner_calls(dit_pipe.transformer)
    apply_fora(dit_pipe, ForaConfig(interval=3, cache_start=2, cache_end=8, blocks=[1]))
    run_dit(dit_pipe, steps=12)
    expected = len(full_steps(12, 3, window=(2, 8)))
    assert counts[(1, "attn")] == counts[(1, "mlp")] == expected
    assert counts[(0, "attn")] == counts[(2, "mlp")] == 12


def test_observers_see_computed_outputs_without_changing_them(dit_pipe):
    apply_fora(dit_pipe, ForaConfig(interval=3))
    plain = run_dit(dit_pipe)
    seen = []
    handle = get_fora_handle(dit_pipe)
    handle.add_observer(lambda o: seen.append((o.block, o.kind, o.step, tuple(o.output.shape), o.timestep)))
    observed = run_dit(dit_pipe)
    assert torch.equal(torch.from_numpy(plain), torch.from_numpy(observed))
    schedule = full_steps(10, 3)
    assert sorted({s for _, _, s, _, _ in seen}) == schedule
    assert len(seen) == len(schedule) * 3 * 2
    assert {k for _, k, _, _, _ in seen} == {"attn", "mlp"}
    assert seen[0][3] == (4, 16, 16) and seen[0][4] == 900.0  # before the gate: the module's own output


def test_bare_transformer_needs_num_steps():
    model = make_dit_pipeline().transformer
    apply_fora(model, ForaConfig(interval=2))
    x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.tensor([1])
    with pytest.raises(ValueError, match="num_steps is unknown"):
        model(x, timestep=t, class_labels=y)
    handle = get_fora_handle(model)
    handle.start_run(4)
    for _ in range(4):
        model(x, timestep=t, class_labels=y)
    assert handle.last_run.complete and handle.last_run.full_steps == [0, 1, 3]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interval": 0}, "interval=0"),
        ({"interval": 2.5}, "interval=2.5"),
        ({"cache_start": -1}, "cache_start=-1"),
        ({"cache_start": 5, "cache_end": 5}, "cache_end=5"),
        ({"blocks": []}, "blocks="),
        ({"blocks": [0, 2, 0, 2, 1]}, "blocks=(0, 2, 0, 2, 1): [0, 2] listed more than once"),
        ({"blocks": [True]}, "blocks=(True,)"),
        ({"block_regex": "("}, "block_regex"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        ForaConfig(**kwargs)


def test_interval_too_large_for_steps(dit_pipe):
    apply_fora(dit_pipe, ForaConfig(interval=10))
    with pytest.raises(ValueError, match=r"interval=10 out of range for 10 steps: allowed 1..9"):
        run_dit(dit_pipe, steps=10)


def test_unknown_block_and_chunking(dit_pipe):
    with pytest.raises(ValueError, match=r"no block \[7\]; allowed 0..2"):
        apply_fora(dit_pipe, ForaConfig(blocks=[7]))
    dit_pipe.transformer.transformer_blocks[0].set_chunk_feed_forward(2, 1)
    with pytest.raises(ValueError, match="chunking"):
        apply_fora(dit_pipe, ForaConfig())


@pytest.mark.parametrize("lean_reuse", [True, False])
def test_chunking_taken_up_after_apply_is_refused_at_the_next_run(dit_pipe, lean_reuse):
    """A module hook on a chunked MLP stores one chunk and answers every chunk of a reuse step with it (a wrong
    image, silently), and the lean step does not chunk: a run does not start while a block chunks."""
    config = ForaConfig(interval=3, lean_reuse=lean_reuse)
    apply_fora(dit_pipe, config)
    expected = run_dit(dit_pipe, steps=9)
    block = dit_pipe.transformer.transformer_blocks[1]
    block.set_chunk_feed_forward(2, 0)
    with pytest.raises(ValueError, match="block transformer_blocks.1 uses feed-forward chunking"):
        run_dit(dit_pipe, steps=9)
    block.set_chunk_feed_forward(None)
    assert np.array_equal(run_dit(dit_pipe, steps=9), expected)
    remove_fora(dit_pipe)


def test_pixart_bit_identical_and_cross_attention_option():
    pipe = make_pixart_pipeline()
    base = run_pixart(pipe)
    apply_fora(pipe, ForaConfig(interval=1))
    assert torch.equal(torch.from_numpy(run_pixart(pipe)), torch.from_numpy(base))
    remove_fora(pipe)

    counts, _ = count_inner_calls(pipe.transformer)
    handle = apply_fora(pipe, ForaConfig(interval=2))
    cached = run_pixart(pipe, steps=8)
    n_full = len(full_steps(8, 2))
    assert counts[(0, "attn")] == counts[(0, "mlp")] == counts[(0, "cross_attn")] == n_full
    assert handle.last_run.computed_calls == 2 * 3 * n_full
    remove_fora(pipe)

    counts.clear()
    apply_fora(pipe, ForaConfig(interval=2, cache_cross_attn=False))
    partial = run_pixart(pipe, steps=8)
    assert counts[(1, "cross_attn")] == 8 and counts[(1, "attn")] == n_full
    assert not torch.equal(torch.from_numpy(partial), torch.from_numpy(cached))


def test_pixart_resolution_change():
    pipe = make_pixart_pipeline()
    apply_fora(pipe, ForaConfig(interval=3))
    run_pixart(pipe, steps=7)
    g = torch.Generator().manual_seed(0)
    kw = dict(
        num_inference_steps=7,
        generator=g,
        output_type="np",
        use_resolution_binning=False,
        clean_caption=False,
        max_sequence_length=8,
    )
    out = pipe(prompt="a red dog", height=24, width=24, **kw).images
    fresh = make_pixart_pipeline()
    apply_fora(fresh, ForaConfig(interval=3))
    ref = fresh(
        prompt="a red dog", height=24, width=24, **{**kw, "generator": torch.Generator().manual_seed(0)}
    ).images
    assert out.shape == (1, 24, 24, 3)
    assert torch.equal(torch.from_numpy(out), torch.from_numpy(ref))


CACHE_COMBOS = [
    dict(cache_attn=a, cache_cross_attn=c, cache_mlp=m)
    for a in (True, False)
    for c in (True, False)
    for m in (True, False)
    if a or c or m
]


def lean_and_plain(make, run, config):
    """Outputs with the block-level step (reuse steps skip dead work) and with hooks on the modules only."""
    pipe = make()
    apply_fora(pipe, config)
    assert any(hasattr(b, "_diffusers_hook") for b in pipe.transformer.transformer_blocks)  # the block path is on
    lean, lean_run = run(pipe), get_fora_handle(pipe).last_run
    remove_fora(pipe)
    handle = apply_fora(pipe, replace(config, lean_reuse=False))
    assert not any(hasattr(b, "_diffusers_hook") for b in pipe.transformer.transformer_blocks)
    plain = run(pipe)
    assert (lean_run.computed_calls, lean_run.reused_calls, lean_run.cache_bytes) == (
        handle.last_run.computed_calls,
        handle.last_run.reused_calls,
        handle.last_run.cache_bytes,
    )
    return torch.from_numpy(lean), torch.from_numpy(plain)


@pytest.mark.parametrize("combo", CACHE_COMBOS)
def test_lean_reuse_bit_identical_dit(combo):
    for config in (ForaConfig(interval=3, **combo), ForaConfig(interval=2, blocks=[0, 2], cache_start=1, **combo)):
        lean, plain = lean_and_plain(make_dit_pipeline, lambda p: run_dit(p, steps=9), config)
        assert torch.equal(lean, plain)


@pytest.mark.parametrize("combo", CACHE_COMBOS)
def test_lean_reuse_bit_identical_pixart(combo):
    for config in (ForaConfig(interval=3, **combo), ForaConfig(interval=2, blocks=[1], cache_end=6, **combo)):
        lean, plain = lean_and_plain(make_pixart_pipeline, lambda p: run_pixart(p, steps=8), config)
        assert torch.equal(lean, plain)


@pytest.mark.parametrize(
    "gate_dtype, update_dtype, hidden_dtype",
    [
        (torch.bfloat16, torch.bfloat16, torch.float32),  # a bfloat16 block on a float32 residual stream
        (torch.float16, torch.float16, torch.float32),
        (torch.float32, torch.bfloat16, torch.bfloat16),  # a float32 gate (PixArt's table) on a bfloat16 stream
        (torch.bfloat16, torch.bfloat16, torch.bfloat16),
        (torch.float32, torch.float32, torch.float32),
    ],
)
@pytest.mark.parametrize("gate_shape", [(2, 1, 16), (2, 5, 16)])
def test_gated_residual_is_the_originals_sum_in_value_and_dtype(gate_dtype, update_dtype, hidden_dtype, gate_shape):
    """The lean step's `gate * update + hidden_states` adds in place into the product where it can; under mixed
    precision the original sum promotes to the wider dtype, and so must the lean one (a float32 stream added into a
    bfloat16 product would come back bfloat16)."""
    from fora.lean_reuse import _gated_residual

    g = torch.Generator().manual_seed(0)
    gate = torch.randn(gate_shape, generator=g).to(gate_dtype)
    update = torch.randn(2, 5, 16, generator=g).to(update_dtype)
    hidden = torch.randn(2, 5, 16, generator=g).to(hidden_dtype)
    expected = gate * update + hidden
    got = _gated_residual(gate, update, hidden)
    assert got.dtype == expected.dtype and torch.equal(got, expected)


def recorded(pipe, run) -> list[torch.Tensor]:
    """Every transformer output of a run and the images: a difference the VAE or its clamp would hide shows here."""
    outputs = []
    hook = pipe.transformer.register_forward_hook(lambda module, args, output: outputs.append(output[0].clone()))
    try:
        images = torch.from_numpy(run(pipe))
    finally:
        hook.remove()
    return [*outputs, images]


@pytest.mark.parametrize(
    "threads, dtype",
    [(2, torch.float32), (1, torch.float16), (1, torch.bfloat16), (2, torch.float16), (2, torch.bfloat16)],
    ids=lambda v: str(v).removeprefix("torch."),
)
def test_bit_for_bit_claims_hold_with_two_threads_and_in_half_precision(threads, dtype):
    """The other tests run one CPU thread at float32. Here, on wider blocks (the MLP's activations and the matmuls
    are large enough to be split between threads): N = 1 with an observer (every block through the lean step on
    every step) is the uncached model, and lean reuse is the plain one for each set of adaLN rows a reuse step
    slices (both gates alone, with the attention's shift/scale, with the MLP's), every transformer output bit for
    bit."""
    with torch_threads(threads):
        for make, run in (
            (lambda: make_dit_pipeline(sample_size=16, attention_head_dim=32), lambda p: run_dit(p, steps=7)),
            (lambda: make_pixart_pipeline(attention_head_dim=32), lambda p: run_pixart(p, steps=7)),
        ):
            pipe = make().to(dtype)
            baseline = recorded(pipe, run)
            assert baseline[0].dtype == dtype
            handle = apply_fora(pipe, ForaConfig(interval=1))
            handle.add_observer(lambda observation: None)
            assert all(torch.equal(a, b) for a, b in zip(recorded(pipe, run), baseline, strict=True))
            remove_fora(pipe)
            for cache_attn, cache_mlp in [(True, True), (False, True), (True, False)]:
                config = ForaConfig(interval=3, cache_attn=cache_attn, cache_mlp=cache_mlp)
                apply_fora(pipe, config)
                lean = recorded(pipe, run)
                remove_fora(pipe)
                apply_fora(pipe, replace(config, lean_reuse=False))
                plain = recorded(pipe, run)
                remove_fora(pipe)
                assert all(torch.equal(a, b) for a, b in zip(lean, plain, strict=True))
                assert not torch.equal(lean[-1], baseline[-1])  # reuse steps ran


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_adaln_row_slices_are_the_full_products_rows_at_dit_xl_width_with_two_threads(dtype):
    """A reuse step computes only some rows of DiT's adaLN projection (1152 -> 6 x 1152 in DiT-XL/2): one matmul per
    contiguous run of weight rows. They are the full product's rows bit for bit, with two threads too."""
    from fora.lean_reuse import _adaln_zero_chunks, needed_chunks

    torch.manual_seed(0)
    linear = torch.nn.Linear(1152, 6 * 1152).to(dtype)
    with torch_threads(2):
        for batch in (1, 2, 8):
            x = torch.randn(batch, 1152).to(dtype)
            full = linear(x).chunk(6, dim=1)
            for cached_attn, cached_mlp in [(True, True), (False, True), (True, False)]:
                chunks = needed_chunks(cached_attn, cached_mlp)
                rows = _adaln_zero_chunks(linear, x, chunks)
                assert all(torch.equal(rows[i], full[i]) for i in chunks)


def count_calls(modules: dict) -> tuple[dict, list]:
    counts = dict.fromkeys(modules, 0)

    def counter(key):
        def hook(module, args, output):
            counts[key] += 1

        return hook

    return counts, [m.register_forward_hook(counter(k)) for k, m in modules.items()]


class WeightReads(TorchDispatchMode):
    """Output columns of every matmul that reads `weight` (the rows of it that were used)."""

    def __init__(self, weight):
        super().__init__()
        self.ptr, self.columns = weight.untyped_storage().data_ptr(), 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in (torch.ops.aten.addmm.default, torch.ops.aten.mm.default):
            if any(isinstance(a, torch.Tensor) and a.untyped_storage().data_ptr() == self.ptr for a in args):
                self.columns += out.shape[-1]
        return out


@pytest.mark.parametrize("cache_attn, cache_mlp", [(True, True), (True, False), (False, True)])
def test_reuse_steps_skip_the_norms_and_adaln_rows_of_cached_modules(cache_attn, cache_mlp):
    pipe = make_dit_pipeline()
    block = pipe.transformer.transformer_blocks[1]
    counts, _ = count_calls({"norm1": block.norm1.norm, "norm3": block.norm3, "emb": block.norm1.emb})
    apply_fora(pipe, ForaConfig(interval=3, cache_attn=cache_attn, cache_mlp=cache_mlp))
    with WeightReads(block.norm1.linear.weight) as adaln:
        run_dit(pipe, steps=12)
    n_full, dim = len(full_steps(12, 3)), block.norm1.linear.in_features
    assert counts["emb"] == 12  # the gates need the embedding every step
    # full steps: all 6 chunks (shift, scale, gate for attention and MLP); reuse steps: the 2 gates, plus shift and
    # scale of a module that is recomputed
    per_reuse_step = 2 + 2 * (not cache_attn) + 2 * (not cache_mlp)
    assert adaln.columns == dim * (6 * n_full + per_reuse_step * (12 - n_full))
    assert counts["norm1"] == (n_full if cache_attn else 12)
    assert counts["norm3"] == (n_full if cache_mlp else 12)


def test_pixart_reuse_steps_skip_the_norms_of_cached_modules():
    pipe = make_pixart_pipeline()
    block = pipe.transformer.transformer_blocks[0]
    counts, _ = count_calls({"norm1": block.norm1, "norm2": block.norm2})
    apply_fora(pipe, ForaConfig(interval=2, cache_mlp=False))
    run_pixart(pipe, steps=8)
    assert counts["norm1"] == len(full_steps(8, 2)) and counts["norm2"] == 8


def test_bare_transformer_interrupted_loop_starts_a_new_run():
    model = make_dit_pipeline().transformer
    x0, y = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1)), torch.tensor([3, 1000])
    timesteps = torch.linspace(900, 0, 6).long()

    @torch.no_grad()
    def loop(stop=None):
        x = x0.clone()
        for i, t in enumerate(timesteps[:stop]):
            x = x - 0.1 * model(x, timestep=t.expand(2), class_labels=y).sample[:, :4]
        return x

    handle = apply_fora(model, ForaConfig(interval=3), num_steps=6)
    reference = loop()
    loop(stop=4)  # interrupted after 4 of 6 steps
    assert torch.equal(loop(), reference)
    assert handle.last_run.complete and handle.last_run.timesteps == [float(t) for t in timesteps]
    loop(stop=1)  # interrupted right after the first step: the same first timestep again is a new loop
    assert torch.equal(loop(), reference)


def test_reset_stateful_hooks_resets_fora():
    from diffusers.hooks import HookRegistry

    model = make_dit_pipeline().transformer
    handle = apply_fora(model, ForaConfig(interval=2), num_steps=4)
    x, y = torch.randn(1, 4, 8, 8), torch.tensor([1])
    with torch.no_grad():
        model(x, timestep=torch.tensor([900]), class_labels=y)
    assert handle.state.cache and handle.last_run.steps_done == 1
    run = handle.last_run
    HookRegistry.check_if_exists_or_initialize(model).reset_stateful_hooks()
    # the cache is freed and the next call starts a new run; the record stays readable (diffusers resets stateful
    # hooks at the end of every call of FLUX's, SD3's, ... pipelines, and last_run must survive that)
    assert handle.state.cache == {} and handle.last_run is run
    with torch.no_grad():
        model(x, timestep=torch.tensor([900]), class_labels=y)
    assert handle.last_run is not run and handle.last_run.steps_done == 1
    handle.reset()  # an explicit reset forgets the record too
    assert handle.last_run is None


def count_host_reads(fn) -> int:
    """Calls of `aten._local_scalar_dense`, the op behind `float(tensor)` / `.item()`: a host wait on a GPU."""

    class Reads(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                Reads.n += 1
            return func(*args, **(kwargs or {}))

    with Reads():
        fn()
    return Reads.n


def test_no_host_reads_per_step_unless_observed(dit_pipe):
    steps = 9
    base = count_host_reads(lambda: run_dit(dit_pipe, steps=steps))
    handle = apply_fora(dit_pipe, ForaConfig(interval=3))
    assert count_host_reads(lambda: run_dit(dit_pipe, steps=steps)) == base  # FORA adds no read of its own
    assert handle.last_run.timesteps == [float(t) for t in dit_pipe.scheduler.timesteps]  # read when asked
    handle.add_observer(lambda obs: None)
    observed = count_host_reads(lambda: run_dit(dit_pipe, steps=steps))
    assert base < observed <= base + steps  # an observer pays for one read per computed step, no more


def test_a_second_pipeline_on_the_same_transformer_runs_its_own_schedule(dit_pipe):
    """FORA applied through one pipeline; a second pipeline object shares the transformer with a scheduler of its
    own: each call runs the schedule of the pipeline that makes it, and its images are FORA's on that pipeline."""
    from diffusers import DDIMScheduler, DiTPipeline

    other = DiTPipeline(dit_pipe.transformer, dit_pipe.vae, DDIMScheduler(), id2label={1: "goldfish"})
    other.set_progress_bar_config(disable=True)
    handle = apply_fora(dit_pipe, ForaConfig(interval=2))
    run_dit(dit_pipe, steps=10)
    assert handle.last_run.num_steps == 10
    shared = run_dit(other, steps=6)
    assert handle.last_run.num_steps == 6 and handle.last_run.full_steps == full_steps(6, 2)
    assert handle.last_run.complete
    remove_fora(dit_pipe)
    apply_fora(other, ForaConfig(interval=2))
    own = run_dit(other, steps=6)
    remove_fora(other)
    assert np.array_equal(shared, own)


def test_num_steps_of_a_bare_loop_can_be_changed_and_is_checked(dit_pipe):
    handle = apply_fora(dit_pipe.transformer, ForaConfig(interval=3), num_steps=10)
    handle.num_steps = 6
    assert handle.runs.num_steps == 6
    with pytest.raises(ValueError, match="interval=3 out of range for 3 steps"):
        handle.num_steps = 3
    remove_fora(dit_pipe.transformer)


def test_a_config_cannot_change_under_an_applied_cache(dit_pipe):
    """The modules cached were fixed at apply time; an interval or switch changed afterwards would be read live by
    some hooks and not others. The config is frozen: changing it raises, and `replace` makes a new one."""
    import dataclasses

    config = ForaConfig(interval=3, blocks=[0, 1])
    handle = apply_fora(dit_pipe, config)
    for field, value in (("interval", 2), ("cache_mlp", False), ("blocks", (0,))):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(handle.config, field, value)
    assert handle.config.blocks == (0, 1) and dataclasses.replace(config, interval=2).interval == 2
    remove_fora(dit_pipe)
