"""cache-dit's DBCache as a peer (`fora/peer_cache_dit.py`) on the embedded model, a tiny DiT and a tiny PixArt: why
the wrapper exists, resets, measured cost against what ran, exact removal, refusals and the bisection to a budget."""

import numpy as np
import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline, run_dit, run_pixart

from analysis.arena.dbcache import dbcache_at_budget, dbcache_sweep
from analysis.metrics.compute_map import ComputeMap
from fora import ForaConfig, apply_fora, full_steps
from fora.apply import find_blocks
from fora.peer_cache_dit import CacheDiTConfig, apply_cache_dit, remove_cache_dit
from fora.peers import apply_cache, apply_peer, fbcache, remove_peer


def same(a, b) -> bool:
    return torch.equal(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b)))


@pytest.fixture(scope="module")
def emoji():
    from fora.loading import load_pipeline

    pipe = load_pipeline("emoji-dit", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run_emoji(pipe, steps: int, label: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return pipe(
        class_labels=[label], num_inference_steps=steps, guidance_scale=3.0, generator=g, output_type="np"
    ).images


def snapshot(transformer: torch.nn.Module) -> tuple:
    """What removal must restore: instance attributes, submodules in order, state-dict keys."""
    return set(transformer.__dict__), list(transformer._modules), list(transformer.state_dict())


# ---- why the wrapper exists ----------------------------------------------------------------------------------------
def test_cache_dit_as_shipped_patches_the_pipeline_class_and_leaves_it_patched():
    """`cache_dit.enable_cache(pipe)` replaces `DiTPipeline.__call__` for every instance, and disabling two cached
    pipelines does not restore it (cache_adapter.py:222, :574). Restored by hand here, for the other tests."""
    import cache_dit
    from cache_dit import DBCacheConfig
    from diffusers import DiTPipeline

    original = DiTPipeline.__dict__["__call__"]
    first, second = make_dit_pipeline(), make_dit_pipeline()
    try:
        cache_dit.enable_cache(first, cache_config=DBCacheConfig(Fn_compute_blocks=1, max_warmup_steps=1))
        assert type(second).__call__ is not original  # an uncached pipeline of the same class runs the wrapper
        cache_dit.enable_cache(second, cache_config=DBCacheConfig(Fn_compute_blocks=1, max_warmup_steps=1))
        cache_dit.disable_cache(first)
        cache_dit.disable_cache(second)
        assert DiTPipeline.__dict__["__call__"] is not original  # still wrapped after both were disabled
    finally:
        DiTPipeline.__call__ = original
        for name in ("_original_call", "_is_cached"):
            if name in DiTPipeline.__dict__:
                delattr(DiTPipeline, name)


def test_cache_dit_on_the_transformer_as_shipped_carries_state_into_the_next_call():
    """Without a pipeline cache-dit's context persists: the second call starts at step 9 (no warm-up) and reuses the
    first call's residual, so the same call gives another image; `apply_cache_dit` resets per run (next tests)."""
    import cache_dit
    from cache_dit import BlockAdapter, DBCacheConfig, ForwardPattern
    from cache_dit.caching.patch_functors import DiTPatchFunctor

    pipe = make_dit_pipeline(num_layers=4)
    t = pipe.transformer
    adapter = BlockAdapter(
        transformer=t,
        blocks=t.transformer_blocks,
        forward_pattern=ForwardPattern.Pattern_3,
        patch_functor=DiTPatchFunctor(),
    )
    config = DBCacheConfig(
        Fn_compute_blocks=1, residual_diff_threshold=0.9, max_warmup_steps=2, enable_separate_cfg=False
    )
    cache_dit.enable_cache(adapter, cache_config=config)
    first = run_dit(pipe, steps=9)
    second = run_dit(pipe, steps=9)
    cache_dit.disable_cache(adapter)
    assert not same(first, second)
    assert "forward" in t.__dict__ and "_norm1_emb" in t._modules  # and disable_cache left these behind


# ---- resets, removal -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("order", [None, 1], ids=["dbcache", "taylorseer"])
def test_resets_between_calls_and_on_a_change_of_steps_and_removal_is_exact(order):
    pipe = make_dit_pipeline(num_layers=4)
    before = snapshot(pipe.transformer)
    call = type(pipe).__call__
    base = run_dit(pipe, steps=9)
    config = CacheDiTConfig(threshold=0.9, fn_blocks=1, bn_blocks=1, warmup=2, taylorseer_order=order)
    handle = apply_cache_dit(pipe, config)
    alone_12 = run_dit(pipe, steps=12)  # the first call after applying: fresh by construction
    first = run_dit(pipe, steps=9)
    assert same(run_dit(pipe, steps=9), first)  # a second call starts from a clean state
    assert same(run_dit(pipe, steps=12), alone_12)  # a call with other steps equals that call alone
    assert handle.last_run.num_steps == handle.last_run.steps_done == 12
    assert same(run_dit(pipe, steps=9), first)  # and back
    assert handle.last_run.cached_steps and not same(first, base)  # it skipped blocks and changed the image
    assert type(pipe).__call__ is call  # no class was patched
    remove_peer(pipe)  # the peers' remover takes DBCache too
    assert same(run_dit(pipe, steps=9), base)  # removed: exactly the original model
    assert snapshot(pipe.transformer) == before  # no forward, submodule or attribute left, module order kept


def test_embedded_model_resets_and_removal_restores_uncached_output(emoji):
    before = snapshot(emoji.transformer)
    base = run_emoji(emoji, steps=8)
    handle = apply_cache_dit(emoji, CacheDiTConfig(threshold=0.3, fn_blocks=1, warmup=1, taylorseer_order=1))
    try:
        alone_6 = run_emoji(emoji, steps=6)
        first = run_emoji(emoji, steps=10)
        assert same(run_emoji(emoji, steps=10), first)  # two identical calls, identical images
        assert same(run_emoji(emoji, steps=6), alone_6)  # other steps after a call with 10 equal that call alone
        assert handle.last_run.num_steps == 6 and handle.last_run.cached_steps
    finally:
        remove_cache_dit(emoji)
    assert same(run_emoji(emoji, steps=8), base)
    assert snapshot(emoji.transformer) == before


def test_pixart_resets_and_removal_is_exact(pixart_pipe):
    before = snapshot(pixart_pipe.transformer)
    base = run_pixart(pixart_pipe, steps=6)
    apply_cache(pixart_pipe, CacheDiTConfig(threshold=0.5, fn_blocks=1, warmup=1))
    a = run_pixart(pixart_pipe, steps=6)
    run_pixart(pixart_pipe, steps=8)
    b = run_pixart(pixart_pipe, steps=6)
    remove_peer(pixart_pipe)
    assert same(a, b) and not same(a, base)
    assert same(run_pixart(pixart_pipe, steps=6), base) and snapshot(pixart_pipe.transformer) == before


def test_taylorseer_order_0_is_plain_dbcache_and_order_1_extrapolates():
    """The calibrator is wired: order 0 reuses the residual as plain DBCache does (bit for bit), order 1 does not."""
    pipe = make_dit_pipeline(num_layers=4)
    images = {}
    for order in (None, 0, 1):
        apply_cache_dit(pipe, CacheDiTConfig(threshold=0.5, fn_blocks=1, warmup=1, taylorseer_order=order))
        images[order] = run_dit(pipe, steps=10)
        remove_cache_dit(pipe)
    assert same(images[0], images[None]) and not same(images[1], images[None])


def test_fn_1_bn_0_warmup_1_is_diffusers_first_block_cache_bit_for_bit():
    """The harness agrees with itself: DBCache with Fn = 1, Bn = 0 and a one-step warm-up makes First Block Cache's
    decisions (block 0's residual against the last computed step's) and gives its images and compute maps exactly."""
    pipe = make_dit_pipeline(num_layers=4)
    for threshold in (0.2, 0.5, 0.9):
        outputs = []
        for config in (fbcache(threshold), CacheDiTConfig(threshold, fn_blocks=1, bn_blocks=0, warmup=1)):
            remove = apply_cache(pipe, config)
            with ComputeMap(pipe.transformer) as cmap:
                outputs.append((run_dit(pipe, steps=10), cmap.matrix("attn")))
            remove(pipe)
        (fbc, fbc_map), (db, db_map) = outputs
        assert same(fbc, db) and (fbc_map == db_map).all(), threshold
    assert not db_map.all()  # it did skip


# ---- cost ----------------------------------------------------------------------------------------------------------
def _count_module_calls(transformer) -> tuple[list, list]:
    """Forward hooks on every block's attention/MLP modules themselves: what really executed."""
    calls, handles = [], []
    for block in transformer.transformer_blocks:
        for name in ("attn1", "attn2", "ff"):
            module = getattr(block, name, None)
            if module is not None:
                handles.append(module.register_forward_hook(lambda m, a, o: calls.append(1)))
    return calls, handles


@pytest.mark.parametrize("model", ["emoji", "dit", "pixart"])
def test_measured_cost_equals_the_calls_that_executed(model, request):
    if model == "emoji":
        pipe, run, config = request.getfixturevalue("emoji"), lambda p: run_emoji(p, 10), CacheDiTConfig(0.3, 1, 1, 1)
    elif model == "dit":
        pipe, run, config = (
            make_dit_pipeline(num_layers=4),
            lambda p: run_dit(p, steps=10),
            CacheDiTConfig(0.5, 1, 1, 1),
        )
    else:
        pipe, run, config = make_pixart_pipeline(num_layers=3), lambda p: run_pixart(p, steps=8), CacheDiTConfig(0.5)
    handle = apply_cache_dit(pipe, config)
    calls, hooks = _count_module_calls(pipe.transformer)
    try:
        with ComputeMap(pipe.transformer) as cmap:
            run(pipe)
    finally:
        for hook in hooks:
            hook.remove()
        remove_cache_dit(pipe)
    run_ = handle.last_run
    blocks, kinds = cmap.num_blocks, len(cmap.kinds)
    assert run_.cached_steps and cmap.computed_calls < run_.num_steps * blocks * kinds  # it skipped work
    assert (
        cmap.computed_calls == len(calls) == handle.block_calls() * kinds
    )  # measured = executed = cache-dit's record
    middle = slice(config.fn_blocks, blocks - config.bn_blocks)
    for kind in cmap.kinds:  # where: the middle blocks at cache-dit's cached steps, nothing else
        skipped = ~cmap.matrix(kind)
        assert skipped[middle][:, run_.cached_steps].all() and skipped.sum() == len(run_.cached_steps) * (
            middle.stop - middle.start
        )


def _mapped_run(pipe, call):
    """One call under a compute map, with a forward hook on every attention and MLP module of every block (FORA's
    block specs name them): the images, the map, the modules that executed (in order) and all the modules."""
    modules = [
        m
        for _, block, spec in find_blocks(pipe.transformer)
        for m in (getattr(block, child, None) for child, _ in spec.modules)
        if m is not None
    ]
    executed = []
    hooks = [m.register_forward_hook(lambda mod, a, o: executed.append(mod)) for m in modules]
    try:
        with ComputeMap(pipe.transformer) as cmap:
            images = call()
    finally:
        for hook in hooks:
            hook.remove()
    return images, cmap, executed, modules


# ---- the text-to-image families: SD3 joint blocks (Pattern_1), Sana (Pattern_3), the embedded MMDiT ---------------
@pytest.mark.parametrize("family", ["sd3", "sana", "emoji-mmdit"])
@pytest.mark.parametrize("order", [None, 1], ids=["dbcache", "taylorseer"])
def test_text_families_reset_between_calls_cost_what_ran_and_remove_exactly(family, order):
    from pipelines import build
    from test_emoji_mmdit import tiny_pipeline

    from fora.generate import Request, generate

    pipe = tiny_pipeline() if family == "emoji-mmdit" else build(family)
    prompt = "a cat" if family == "emoji-mmdit" else "a red bicycle"
    run = lambda steps: generate(pipe, Request(prompt=prompt, steps=steps, guidance=4.0))  # noqa: E731
    before = snapshot(pipe.transformer)
    base = run(10)
    handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.9, fn_blocks=1, warmup=2, taylorseer_order=order))
    first, cmap, executed, modules = _mapped_run(pipe, lambda: run(10))
    try:
        alone_7 = run(7)
        assert same(run(10), first) and same(run(7), alone_7)  # each call starts clean, whatever ran before
        assert handle.last_run.num_steps == 7
    finally:
        remove_peer(pipe)
    assert not same(first, base)
    # cost: what the compute map counted is what executed: every module call of the first run, no more, no fewer
    assert cmap.computed_calls == len(executed) < 10 * len(modules)
    attn = cmap.matrix("attn")
    assert attn[0].all() and attn[:, :2].all() and not attn[1:].all()  # block 0 always; warm-up 2: steps 0, 1
    assert same(run(10), base) and snapshot(pipe.transformer) == before
    # a warm-up over the whole run computes every block at every step through cache-dit's block wrapper: the
    # uncached images bit for bit, so the streams go in and come out in the blocks' own order
    _full_warmup_is_uncached(pipe, run, base, order)


def _full_warmup_is_uncached(pipe, run, base, order=None, bn_blocks=0):
    """DBCache with a warm-up over the whole 10-step run computes every block at every step: `base` bit for bit."""
    apply_cache_dit(
        pipe, CacheDiTConfig(threshold=0.9, fn_blocks=1, bn_blocks=bn_blocks, warmup=10, taylorseer_order=order)
    )
    try:
        assert same(run(10), base)
    finally:
        remove_peer(pipe)


def test_the_text_stream_calibrator_runs_with_back_blocks_on_joint_blocks():
    """With Bn >= 1 the TaylorSeer calibrator extrapolates the text stream's residual too (with Bn = 0 cache-dit
    1.5.3 fails at the first skipped step, so it is off there): a 4-block MMDiT with Fn = 1, Bn = 1."""
    import torch

    from embedded.emoji_mmdit.text import build_text_encoder, build_tokenizer
    from embedded.emoji_mmdit.train import build_pipeline, build_transformer
    from fora.generate import Request, generate

    torch.manual_seed(0)
    tok = build_tokenizer()
    pipe = build_pipeline(build_transformer(4, 32, 2, 32).eval(), build_text_encoder(len(tok), 32, 1, 2).eval(), tok)
    pipe.set_progress_bar_config(disable=True)
    run = lambda steps: generate(pipe, Request(prompt="two cat", steps=steps, guidance=4.0))  # noqa: E731
    base = run(10)
    handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.9, fn_blocks=1, bn_blocks=1, taylorseer_order=1))
    try:
        first = run(10)
        run(6)
        assert same(run(10), first) and not same(first, base) and handle.last_run.cached_steps
        assert handle.encoder_stream
    finally:
        remove_peer(pipe)
    assert same(run(10), base)


def _flux(double: int = 3, single: int = 3):
    from diffusers import FluxTransformer2DModel
    from pipelines import PIPELINES, build

    pipe = build("flux")
    torch.manual_seed(1)
    config = {**pipe.transformer.config, "num_layers": double, "num_single_layers": single}
    pipe.transformer = FluxTransformer2DModel.from_config(config).eval()
    kwargs = PIPELINES["flux"][1]

    def run(steps: int):
        g = torch.Generator().manual_seed(0)
        return pipe("a red bicycle", num_inference_steps=steps, generator=g, output_type="np", **kwargs).images

    return pipe, run


@pytest.mark.parametrize("order", [None, 1], ids=["dbcache", "taylorseer"])
def test_flux_in_cache_dits_default_layout_resets_costs_what_ran_and_removes_exactly(order):
    """FLUX.1 as cache-dit's FLUX adapter lays it out by default: the double-stream and the single-stream blocks as
    one list (Fn from the first double-stream block, Bn from the last single-stream one), one decision per step,
    cache-dit's patched forward; a warm-up over the whole run gives diffusers' own images bit for bit."""
    pipe, run = _flux()
    base = run(10)
    before = snapshot(pipe.transformer)  # after a call: FLUX's pipeline leaves an (empty) hook registry of its own
    config = CacheDiTConfig(threshold=0.9, fn_blocks=1, bn_blocks=1, warmup=2, taylorseer_order=order)
    handle = apply_cache_dit(pipe, config)
    first, cmap, executed, modules = _mapped_run(pipe, lambda: run(10))
    try:
        cached, recorded_calls = list(handle.last_run.cached_steps), handle.block_calls()
        assert handle.num_blocks == 6 and cached
        alone_7 = run(7)
        assert same(run(10), first) and same(run(7), alone_7)  # each call starts clean
    finally:
        remove_peer(pipe)
    assert not same(first, base)
    assert cmap.computed_calls == len(executed) < 10 * len(modules)  # what the map counted is what executed
    # one block's computed steps: double-stream blocks 0..2 by their attention, single-stream 3..5 by their fused
    # attention+MLP; block 0 (Fn) and block 5 (Bn) every step, blocks 1..4 skipped exactly at cache-dit's steps
    per_block = np.concatenate([cmap.matrix("attn")[:3], cmap.matrix("attn_mlp")[3:]])
    assert per_block[0].all() and per_block[5].all()
    for b in range(1, 5):
        assert list(np.flatnonzero(~per_block[b])) == cached, b
    assert int(per_block.sum()) == recorded_calls  # cache-dit's record counts the block forwards that ran
    assert same(run(10), base) and snapshot(pipe.transformer) == before
    _full_warmup_is_uncached(pipe, run, base, order)  # cache-dit's patched FLUX forward computes what diffusers' does
    assert snapshot(pipe.transformer) == before


def test_flux_fn_and_bn_count_over_both_lists_and_are_refused_past_them():
    pipe, _ = _flux(double=1, single=2)
    with pytest.raises(ValueError, match=r"fn_blocks=2 \+ bn_blocks=1 with 3 blocks: Fn \+ Bn must be at most 2"):
        apply_cache_dit(pipe, CacheDiTConfig(threshold=0.5, fn_blocks=2, bn_blocks=1))
    assert not hasattr(pipe.transformer, "_peer_handle") and "forward" not in pipe.transformer.__dict__


# ---- the guidance halves as separate calls: Wan 2.1 (Pattern_2) and Qwen-Image (Pattern_1) -------------------------
def _separate(family: str, guided: bool = True):
    """A tiny pipeline of a family that calls the transformer once per guidance half, and a call of `steps`: Wan's
    whole pipeline (guidance 5, or 1: one call a step), Qwen-Image's on embeddings (true CFG with a negative
    prompt, or without one: one call a step)."""
    import families
    from pipelines import PIPELINES, build

    if family == "wan":
        pipe = build("wan")
        kwargs = {**PIPELINES["wan"][1], "guidance_scale": 5.0 if guided else 1.0}

        def run(steps):
            g = torch.Generator().manual_seed(0)
            return pipe("a red fox", num_inference_steps=steps, generator=g, output_type="np", **kwargs).frames

        return pipe, run
    torch.manual_seed(0)
    pipe, kwargs = families._guided_pipeline("qwen-image", families.qwen_image()[0])
    if not guided:
        kwargs = {k: v for k, v in kwargs.items() if not k.startswith("negative_")}

    def run(steps):
        g = torch.Generator().manual_seed(0)
        return pipe(num_inference_steps=steps, generator=g, **kwargs).images

    return pipe, run


@pytest.mark.parametrize("family", ["wan", "qwen-image"])
@pytest.mark.parametrize("order", [None, 1], ids=["dbcache", "taylorseer"])
def test_separate_guidance_halves_are_cached_apart_reset_cost_what_ran_and_remove_exactly(family, order):
    """cache-dit's separate-CFG mode, as its Wan and Qwen-Image adapters set it: each half keeps its own residuals
    and decisions. Each call starts clean; the compute map (which counts both halves' calls) equals what executed
    and cache-dit's record of both halves; a warm-up over the whole run gives the uncached output bit for bit."""
    pipe, run = _separate(family)
    base = run(10)
    before = snapshot(pipe.transformer)
    config = CacheDiTConfig(threshold=0.9, fn_blocks=1, warmup=2, taylorseer_order=order)
    handle = apply_cache_dit(pipe, config)
    first, cmap, executed, modules = _mapped_run(pipe, lambda: run(10))
    try:
        record, recorded_calls = handle.last_run, handle.block_calls()
        assert record.calls_per_step == 2 and record.cached_steps and record.cfg_cached_steps
        alone_7 = run(7)
        assert same(run(10), first) and same(run(7), alone_7)  # each call starts clean
    finally:
        remove_peer(pipe)
    assert not same(first, base)
    assert cmap.num_steps == 20  # the map's columns are the transformer's calls: two a step
    # what the map counted is what executed, and cache-dit's record of both halves says the same
    assert cmap.computed_calls == len(executed) < 20 * len(modules)
    assert cmap.computed_calls == recorded_calls * len(modules) // cmap.num_blocks
    # where: the conditional call is the even column, the unconditional the odd one; block 0 computes at both
    attn = cmap.matrix("attn")
    assert attn[0].all()
    assert [s for s in range(10) if not attn[1:, 2 * s].any()] == record.cached_steps
    assert [s for s in range(10) if not attn[1:, 2 * s + 1].any()] == record.cfg_cached_steps
    assert same(run(10), base) and snapshot(pipe.transformer) == before
    _full_warmup_is_uncached(pipe, run, base, order)


@pytest.mark.parametrize("family", ["wan", "qwen-image"])
def test_one_call_a_step_without_guidance_and_a_broken_parity_stops_the_run(family):
    """Without guidance (Wan at guidance 1, Qwen-Image without a negative prompt) the pipeline calls the
    transformer once a step, which the run reads from the pipeline and caches as one stream. Were the calls a step
    misjudged, cache-dit would mix the halves by parity: the check on every call stops the run instead."""
    pipe, run = _separate(family, guided=False)
    handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.9, fn_blocks=1, warmup=2))
    try:
        with ComputeMap(pipe.transformer) as cmap:
            run(8)
        assert handle.last_run.calls_per_step == 1 and not handle.last_run.cfg_cached_steps
        assert cmap.num_steps == 8 and cmap.computed_calls == handle.block_calls() * len(cmap.kinds)
        handle._calls_per_step = lambda p: 2  # as if the pipeline had said it runs both halves
        with pytest.raises(RuntimeError, match=r"call 1 of the run \(step 1\) is not the unconditional one"):
            run(8)
    finally:
        remove_peer(pipe)


# ---- HunyuanDiT: cache-dit's patch functor for its long skip connections -------------------------------------------
def _hunyuan():
    """A tiny HunyuanDiT pipeline (4 blocks: block 3 takes block 0's output as its long skip) run on embeddings."""
    import families
    from diffusers import DDPMScheduler, HunyuanDiTPipeline

    torch.manual_seed(0)
    model = families.hunyuan_dit()[0].eval()
    pipe = HunyuanDiTPipeline(
        vae=None,
        text_encoder=None,
        tokenizer=None,
        transformer=model,
        scheduler=DDPMScheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    text = lambda: torch.randn(1, families.TEXT, 16)  # noqa: E731
    mask = torch.ones(1, families.TEXT)
    kwargs = {
        **{f"{k}prompt_embeds{n}": text() for k in ("", "negative_") for n in ("", "_2")},
        **{f"{k}prompt_attention_mask{n}": mask for k in ("", "negative_") for n in ("", "_2")},
    }

    def run(steps):
        g = torch.Generator().manual_seed(0)
        return pipe(
            num_inference_steps=steps,
            guidance_scale=5.0,
            height=64,
            width=64,
            use_resolution_binning=False,
            output_type="latent",
            generator=g,
            **kwargs,
        ).images

    return pipe, run


def test_hunyuan_dit_pairs_its_skip_connections_right_on_skipping_steps_and_removes_exactly():
    """With Fn = Bn = 1, a skipping step runs blocks 0 and 3 only: block 3's long skip input must be block 0's output
    of the same call, as in the uncached model. Resets, cost as executed, a full warm-up bit for bit, and removal
    leaves the transformer and every block as they were (the functor patches each block)."""
    pipe, run = _hunyuan()
    blocks = pipe.transformer.blocks
    base = run(10)
    before = snapshot(pipe.transformer), [set(b.__dict__) for b in blocks]
    handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.9, fn_blocks=1, bn_blocks=1, warmup=2))
    outputs, skips = [], []
    hooks = [
        blocks[0].register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone())),
        blocks[3].skip_norm.register_forward_pre_hook(lambda m, a: skips.append(a[0][..., 16:].detach().clone())),
    ]
    try:
        first, cmap, executed, modules = _mapped_run(pipe, lambda: run(10))
    finally:
        for hook in hooks:
            hook.remove()
    try:
        cached, recorded = list(handle.last_run.cached_steps), handle.block_calls()
        assert cached and len(skips) == len(outputs) == 10  # blocks 0 and 3 run at every step
        assert all(torch.equal(s, o) for s, o in zip(skips, outputs))  # the partner of the same step, every step
        assert cmap.computed_calls == len(executed) == recorded * len(modules) // len(blocks)
        assert [s for s in range(10) if not cmap.matrix("attn")[1:3, s].any()] == cached
        alone_7 = run(7)
        assert same(run(10), first) and same(run(7), alone_7)
    finally:
        remove_peer(pipe)
    assert not same(first, base) and same(run(10), base)
    assert (snapshot(pipe.transformer), [set(b.__dict__) for b in blocks]) == before
    _full_warmup_is_uncached(pipe, run, base, bn_blocks=1)  # the functor's forward computes what diffusers' does


def test_hunyuan_dit_knobs_that_pair_the_wrong_skip_connection_are_refused(monkeypatch):
    """On 6 blocks (blocks 0, 1 push a long skip; 4, 5 pop, 5 pairing with 0), Fn = 2, Bn = 1 runs blocks 0, 1 and 5
    on a skipping step: as cache-dit ships it block 5 then gets block 1's output, not block 0's. Refused; Bn = 2
    pairs right and runs."""
    from diffusers import HunyuanDiT2DModel

    import fora.peer_cache_dit as peer

    pipe, run = _hunyuan()
    torch.manual_seed(0)
    pipe.transformer = HunyuanDiT2DModel.from_config({**pipe.transformer.config, "num_layers": 6}).eval()
    blocks = pipe.transformer.blocks

    def pairs(fn, bn):
        handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.9, fn_blocks=fn, bn_blocks=bn, warmup=2))
        outputs, skips = [], []
        hooks = [
            blocks[0].register_forward_hook(lambda m, a, o: outputs.append(o.detach().clone())),
            blocks[5].skip_norm.register_forward_pre_hook(lambda m, a: skips.append(a[0][..., 16:].detach().clone())),
        ]
        try:
            run(6)
        finally:
            for hook in hooks:
                hook.remove()
            remove_peer(pipe)
        cached = handle.last_run.cached_steps
        assert cached and len(skips) == len(outputs) == 6
        return [torch.equal(s, o) for s, o in zip(skips, outputs)], [s not in cached for s in range(6)]

    with pytest.raises(ValueError, match=r"fn_blocks=2, bn_blocks=1 on HunyuanDiT \(6 blocks\).*Bn = min\(Fn, 2\)"):
        apply_cache_dit(pipe, CacheDiTConfig(fn_blocks=2, bn_blocks=1))
    right, _ = pairs(2, 2)
    assert right == [True] * 6
    monkeypatch.setattr(peer, "check_knobs", lambda *a: None)  # as cache-dit ships it
    right, computed = pairs(2, 1)
    assert right == computed  # every skipping step pairs block 5 with the wrong block, every computed step right


# ---- refusals ------------------------------------------------------------------------------------------------------
def test_unsupported_pipelines_and_knobs_are_refused_and_leave_the_model_as_it_was(dit_pipe):
    import families
    from pipelines import build

    lumina, _ = families.GUIDED["lumina2"](families.lumina2()[0])  # CFG truncated after a quarter of the steps
    with pytest.raises(ValueError, match=r"Lumina2Pipeline: cache-dit's DBCache runs here on DiTPipeline, "):
        apply_cache_dit(lumina, CacheDiTConfig())
    assert not hasattr(lumina.transformer, "_peer_handle") and "forward" not in lumina.transformer.__dict__
    wan = build("wan")
    wan.transformer_2 = None
    wan.register_modules(transformer_2=families.wan()[0])  # Wan 2.2's two experts
    with pytest.raises(ValueError, match=r"second expert \(transformer_2, Wan 2.2\): DBCache runs here on one"):
        apply_cache_dit(wan, CacheDiTConfig())
    assert not hasattr(wan.transformer, "_peer_handle") and "forward" not in wan.transformer.__dict__
    with pytest.raises(TypeError, match="needs a diffusers pipeline"):
        apply_cache_dit(dit_pipe.transformer, CacheDiTConfig())
    before = snapshot(dit_pipe.transformer)
    with pytest.raises(ValueError, match=r"fn_blocks=2 \+ bn_blocks=1 with 3 blocks: Fn \+ Bn must be at most 2"):
        apply_cache_dit(dit_pipe, CacheDiTConfig(fn_blocks=2, bn_blocks=1))  # cache-dit would run block 1 twice
    assert snapshot(dit_pipe.transformer) == before
    for kwargs, message in (
        ({"fn_blocks": 0}, "fn_blocks=0: must be an integer >= 1"),
        ({"bn_blocks": -1}, "bn_blocks=-1"),
        ({"warmup": 1.5}, "warmup=1.5"),
        ({"threshold": -0.1}, "threshold=-0.1"),
        ({"threshold": float("nan")}, "threshold=nan"),
        ({"taylorseer_order": 3}, r"taylorseer_order=3: allowed None \(no calibrator\) or 0..2"),
    ):
        with pytest.raises(ValueError, match=message):
            CacheDiTConfig(**kwargs)
    apply_cache_dit(dit_pipe, CacheDiTConfig())
    with pytest.raises(ValueError, match="already applied"):
        apply_cache_dit(dit_pipe, CacheDiTConfig())
    with pytest.raises(ValueError, match="already applied"):
        apply_peer(dit_pipe, fbcache())
    with pytest.raises(ValueError, match="a peer cache is already applied"):
        apply_fora(dit_pipe, ForaConfig(interval=2))
    remove_peer(dit_pipe)
    assert snapshot(dit_pipe.transformer) == before


# ---- the bisection to a budget --------------------------------------------------------------------------------------
def test_bisection_reaches_foras_cost_on_the_embedded_model(emoji):
    steps, blocks, kinds = 10, 6, 2
    budget = len(full_steps(steps, 3)) * blocks * kinds  # FORA N=3: 4 computed steps of 10, 48 calls
    entry = dbcache_at_budget(emoji, budget, [0], [3], steps, 3.0, fn=1, bn=0, warmup=1, interval=3)
    # the cost moves in steps of the 5 skippable blocks x 2 kinds: the closest setting is within half of one
    assert abs(entry.row["computed_calls"] - budget) <= 5 and 0 < entry.threshold < 1
    assert entry.policy == "dbcache" and entry.setting.endswith("(at N=3's cost)")


def test_sweep_bisects_only_the_budgets_in_reach_and_the_cheapest_cost_is_its_formula(dit_pipe):
    steps, blocks, kinds = 8, 3, 2
    budget = len(full_steps(steps, 2)) * blocks * kinds  # 5 computed steps: 30 calls
    logged = []
    entries = dbcache_sweep(
        dit_pipe, {2: budget}, [0], [1], steps, 4.0, (1, 2), (0, 1), (1,), (None,), log=logged.append
    )
    settings = [e.setting for e in entries]
    assert settings[0] == "Fn=1 Bn=0 warmup=1 threshold=1 (cheapest)" and "(at N=2's cost)" in settings[1]
    cheapest = {e.setting.split(" threshold")[0]: e.row["computed_calls"] for e in entries if "cheapest" in e.setting}
    # threshold 1 skips every step after the warm-up: T (Fn + Bn) + warm-up (L - Fn - Bn) block calls per kind
    assert cheapest == {
        f"Fn={fn} Bn={bn} warmup=1": (steps * (fn + bn) + (blocks - fn - bn)) * kinds
        for fn, bn in ((1, 0), (1, 1), (2, 0))
    }
    assert len(entries) == 4 and entries[1].row["computed_calls"] <= 1.05 * budget  # out of reach: not bisected
    assert any("Fn=2 Bn=1 warmup=1: DBCache fn_blocks=2 + bn_blocks=1 with 3 blocks: Fn + Bn" in m for m in logged)


def test_policies_tab_runs_dbcache_at_the_cost_with_the_steps_it_announces(dit_pipe):
    from analysis.arena.policies import PolicyJob, run_policies
    from fora.generate import Request

    job = PolicyJob("tiny-dit", Request(label=1, steps=8, guidance=4.0), ("DBCache", "DBCache + TaylorSeer"), 2, 0)
    calls = []
    hook = dit_pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(1))
    results = []
    try:
        run_policies(dit_pipe, job, {}, lambda event: results.append(event) if not isinstance(event, str) else None)
    finally:
        hook.remove()
    assert len(calls) == job.denoising_steps(0)  # the step budget it announced, exactly
    (result,) = results
    assert [r["policy"] for r in result.rows] == ["dbcache", "dbcache-taylorseer"]
    for row in result.rows:
        assert abs(row["computed_calls"] - result.budget_calls) <= 2 and row["psnr"] < 100
    assert {r["policy"] for r in result.sweep_rows} == {"dbcache", "dbcache-taylorseer"}


def test_observations_are_kept_and_loaded_by_a_resumed_arena(tmp_path, monkeypatch):
    """Issue 19 item 6: the arena resumes. Inside `resumable(folder)` an observation is written once and a rerun
    loads it (no generation), with the same images, cost and maps; another setting, seed or model is another key."""
    import analysis.arena.measure as measure
    from analysis.arena.measure import Entry, observe, resumable

    pipe = make_dit_pipeline(num_layers=3)
    runs = []
    real = measure.generate_batch
    monkeypatch.setattr(measure, "generate_batch", lambda *a, **k: runs.append(1) or real(*a, **k))

    def entry(threshold=0.5):
        return Entry("dbcache", f"threshold={threshold}", CacheDiTConfig(threshold, 1, 0, 1))

    with resumable(str(tmp_path)):
        first = entry()
        observe(pipe, first, [0, 1], [0, 1], 6, 3.0)
        assert len(runs) == 2 and len(list(tmp_path.glob("*.npz"))) == 1
        again = entry()
        observe(pipe, again, [0, 1], [0, 1], 6, 3.0)
        assert len(runs) == 2  # loaded, not run
        assert same(again.images, first.images) and again.row == first.row
        assert all((again.maps[k] == first.maps[k]).all() for k in first.maps)
        observe(pipe, entry(0.9), [0, 1], [0, 1], 6, 3.0)  # another threshold
        observe(pipe, entry(), [0, 2], [0, 1], 6, 3.0)  # another seed
        assert len(runs) == 6 and len(list(tmp_path.glob("*.npz"))) == 3
    key = measure.observation_key(pipe, entry(), [0, 1], [0, 1], 6, 3.0, ())
    whole = (tmp_path / f"{key}.npz").read_bytes()
    (tmp_path / f"{key}.npz").write_bytes(whole[: len(whole) // 2])  # a file a killed run left: observed again
    with resumable(str(tmp_path)):
        for e in (entry(), entry(0.9), entry()):
            observe(pipe, e, [0, 1], [0, 1], 6, 3.0)
    assert len(runs) == 8  # only the broken one ran again (two seeds), then it loads
    observe(pipe, entry(), [0, 1], [0, 1], 6, 3.0)  # outside: nothing kept or loaded
    assert len(runs) == 10
    # another model (other weights, same config), another dtype: other keys
    other = make_dit_pipeline(num_layers=3, seed=1)
    keys = {measure.observation_key(p, entry(), [0, 1], [0, 1], 6, 3.0, ()) for p in (pipe, other)}
    assert len(keys) == 2
    pipe.transformer.to(torch.float64)
    assert measure.observation_key(pipe, entry(), [0, 1], [0, 1], 6, 3.0, ()) not in keys
    pipe.transformer.to(torch.float32)


def test_no_cache_goes_over_a_cache_diffusers_enabled_itself():
    """A user's `transformer.enable_cache(...)` (diffusers' own First Block Cache, on Wan): FORA, diffusers' peers and
    DBCache all refuse to cache over it, naming it, and apply once it is disabled."""
    from diffusers import FirstBlockCacheConfig

    from fora import remove_fora

    pipe, _ = _separate("wan")
    transformer = pipe.transformer
    transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    try:
        for apply in (
            lambda: apply_fora(pipe, ForaConfig(interval=2)),
            lambda: apply_peer(pipe, fbcache(0.2)),
            lambda: apply_cache_dit(pipe, CacheDiTConfig()),
        ):
            with pytest.raises(ValueError, match=r"diffusers' FirstBlockCacheConfig is enabled on this Wan"):
                apply()
            assert not hasattr(transformer, "_peer_handle") and getattr(transformer, "_fora_handle", None) is None
    finally:
        transformer.disable_cache()
    apply_fora(pipe, ForaConfig(interval=2))
    remove_fora(pipe)
    # Wan 2.2's second expert is checked too
    import families

    pipe.register_modules(transformer_2=families.wan()[0])
    pipe.transformer_2.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(ValueError, match=r"diffusers' FirstBlockCacheConfig is enabled on this Wan"):
        apply_fora(pipe, ForaConfig(interval=2))
    assert getattr(pipe.transformer, "_fora_handle", None) is None
