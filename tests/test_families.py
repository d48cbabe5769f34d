"""FORA on every family it supports, on tiny random transformers in a bare sampling loop (`tests/families.py`):
the uncached model untouched at N = 1, the official schedule counted from what really runs, the output equal to an
independent reference written here, the exact original back after `remove_fora`, positional calls read like keyword
ones, observers fed exactly the computed outputs, FORA's schedule as a plan equal to FORA, and unsupported blocks
refused by name."""

import inspect

import pytest
import torch
from diffusers.models.attention import BasicTransformerBlock
from families import FAMILIES, GUIDED

from fora import CachePlan, ForaConfig, apply_fora, full_steps, remove_fora

T, N = 7, 3
TIMESTEPS = torch.linspace(950.0, 50.0, T)


def build(family: str):
    torch.manual_seed(0)
    model, inputs = FAMILIES[family][0]()
    return model.eval(), inputs


def sample(model, inputs: dict, positional: bool = False) -> list[torch.Tensor]:
    """A T-step loop: the latent moves by each step's output, so reuse steps see what a sampler would feed them.
    `positional`: the arguments up to `timestep` are passed by position, in the forward's order."""
    params = list(inspect.signature(type(model).forward).parameters)[1:]
    x, outs = inputs["hidden_states"], []
    with torch.no_grad():
        for t in TIMESTEPS:
            kwargs = {**inputs, "hidden_states": x, "timestep": t.repeat(x.shape[0])}
            args = []
            if positional:
                for name in params[: params.index("timestep") + 1]:
                    args.append(kwargs.pop(name, None))
            out = model(*args, **kwargs, return_dict=False)[0]
            outs.append(out)
            x = x - 0.1 * (out if out.shape == x.shape else out[:, : x.shape[1]])
    return outs


def blocks_of(model) -> list[torch.nn.Module]:
    """The elements of the model's top-level block lists, in order (this test's own reading, not the engine's)."""
    return [b for child in model.children() if isinstance(child, torch.nn.ModuleList) for b in child]


def cached_modules(model, family: str) -> list[torch.nn.Module]:
    children = FAMILIES[family][1]
    pick = (lambda b: children[type(b).__name__]) if isinstance(children, dict) else (lambda b: children)
    return [getattr(b, c) for b in blocks_of(model) for c in pick(b) if getattr(b, c, None) is not None]


class Reference:
    """FORA written independently: plain forward hooks that replace each cached module's output on reuse steps with
    its output at the last full step (the module still runs; its output is thrown away)."""

    def __init__(self, model, modules, full: set[int]):
        self.step, self.full, self.kept, self.handles = -1, full, {}, []
        self.handles.append(model.register_forward_pre_hook(self._next))
        for m in modules:
            self.handles.append(m.register_forward_hook(self._replace))

    def _next(self, module, args):
        self.step += 1

    def _replace(self, module, args, output):
        if self.step in self.full:
            self.kept[module] = output
            return None
        return self.kept[module]

    def remove(self):
        for h in self.handles:
            h.remove()


def first_layer(module) -> torch.nn.Module:
    """The module's first weight layer (Sana's MLP is convolutional): it runs exactly when the module computes."""
    return next(m for m in module.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fora_on_the_family(family):
    model, inputs = build(family)
    baseline = sample(model, inputs)
    modules = cached_modules(model, family)
    full = full_steps(T, N)

    # N = 1: hooks on, nothing reused, bit for bit the model
    handle = apply_fora(model, ForaConfig(interval=1), num_steps=T)
    assert all(torch.equal(a, b) for a, b in zip(sample(model, inputs), baseline))
    remove_fora(model)

    # the schedule, counted from what really runs: each cached module's first weight layer, per step
    calls = [0] * T
    step = {"i": -1}
    counters = [model.register_forward_pre_hook(lambda m, a: step.update(i=step["i"] + 1))]
    for m in modules:
        counters.append(
            first_layer(m).register_forward_hook(lambda mod, a, o: calls.__setitem__(step["i"], calls[step["i"]] + 1))
        )
    handle = apply_fora(model, ForaConfig(interval=N), num_steps=T)
    got = sample(model, inputs)
    for c in counters:
        c.remove()
    assert calls == [len(modules) if s in full else 0 for s in range(T)]
    assert handle.last_run.full_steps == full
    assert handle.last_run.computed_calls == len(modules) * len(full)
    assert handle.last_run.reused_calls == len(modules) * (T - len(full))
    remove_fora(model)

    # equal to the independent reference, and the exact original after remove_fora
    ref = Reference(model, modules, set(full))
    expected = sample(model, inputs)
    ref.remove()
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert not any(torch.equal(a, b) for a, b in zip(got[-3:], baseline[-3:]))  # the cache changed the output
    assert all(torch.equal(a, b) for a, b in zip(sample(model, inputs), baseline))
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_positional_loop_caches_like_a_keyword_loop(family):
    model, inputs = build(family)
    handle = apply_fora(model, ForaConfig(interval=N), num_steps=T)
    keyword = sample(model, inputs)
    runs = handle.last_run
    positional = sample(model, inputs, positional=True)
    assert handle.last_run is not runs and handle.last_run.reused_calls == runs.reused_calls > 0
    assert handle.last_run.timesteps == pytest.approx(TIMESTEPS.tolist())  # the timestep found by name
    assert all(torch.equal(a, b) for a, b in zip(keyword, positional))


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_observers_see_exactly_the_computed_outputs_and_a_fora_plan_is_fora(family):
    model, inputs = build(family)
    seen = []
    handle = apply_fora(model, ForaConfig(interval=N), num_steps=T)
    handle.add_observer(lambda o: seen.append((o.block, o.kind, o.step)))
    fora_out = sample(model, inputs)
    kinds = {kind for _, _, kind in handle.modules}
    num_blocks = len({b for _, b, _ in handle.modules})
    remove_fora(model)
    full = set(full_steps(T, N))
    assert {s for _, _, s in seen} == full  # nothing observed on reuse steps
    computed = {(b, k) for _, b, k in handle.modules}
    # a joint attention's context part is observed as kind context_attn, from the same module as its image part
    assert {(b, "attn" if k == "context_attn" else k) for b, k, _ in seen} == computed
    assert any(k == "context_attn" for _, k, _ in seen) == (family in ("sd3", "sd3.5", "qwen-image", "flux", "flux2"))
    per_step = len(seen) // len(full)
    assert len(seen) == per_step * len(full)  # every module, every full step, once per stream

    # FORA's schedule as a plan is FORA, also where blocks lack some kind (SD3's last block, SD3.5's single
    # attention blocks, FLUX's two block types): those entries of the plan have no module and are left out
    plan = CachePlan.fora(T, N, num_blocks=num_blocks, kinds=tuple(kinds))
    handle = apply_fora(model, ForaConfig(plan=plan), num_steps=T)
    planned = sample(model, inputs)
    assert handle.last_run.full_steps == full_steps(T, N)
    assert handle.last_run.computed_calls == len(handle.modules) * len(full)  # the modules that exist
    remove_fora(model)
    assert all(torch.equal(a, b) for a, b in zip(planned, fora_out))


def test_flux_single_stream_blocks_skip_attention_and_mlp_on_reuse_steps():
    """FLUX's single-stream blocks cache the projection of their fused attention and MLP: on reuse steps neither
    the attention nor the MLP branch runs, and a config that caches only one of them is refused there."""
    model, inputs = build("flux")
    single = model.single_transformer_blocks
    ran = []
    counters = [b.attn.to_q.register_forward_hook(lambda *a: ran.append("attn")) for b in single]
    counters += [b.proj_mlp.register_forward_hook(lambda *a: ran.append("mlp")) for b in single]
    apply_fora(model, ForaConfig(interval=N), num_steps=T)
    sample(model, inputs)
    remove_fora(model)
    for c in counters:
        c.remove()
    assert len(ran) == 2 * len(single) * len(full_steps(T, N))
    with pytest.raises(ValueError, match="fuses attention and MLP.*cache_attn and cache_mlp must be equal"):
        apply_fora(model, ForaConfig(interval=N, cache_mlp=False), num_steps=T)
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())


def test_flux2_single_stream_blocks_cache_their_fused_module_and_refuse_half_of_it():
    """FLUX.2's single-stream attention module fuses the MLP: on reuse steps its one input projection does not run;
    caching only attention or only the MLP is refused, and so is a call with FLUX.2's reference-image KV cache."""
    model, inputs = build("flux2")
    single = model.single_transformer_blocks
    ran = []
    counters = [b.attn.to_qkv_mlp_proj.register_forward_hook(lambda *a: ran.append(1)) for b in single]
    apply_fora(model, ForaConfig(interval=N), num_steps=T)
    sample(model, inputs)
    for kv in ({"kv_cache": object()}, {"kv_cache_mode": "extract"}):
        with pytest.raises(ValueError, match="kv_cache"):
            model(**inputs, timestep=TIMESTEPS[:1].repeat(2), **kv, return_dict=False)
    remove_fora(model)
    for c in counters:
        c.remove()
    assert len(ran) == len(single) * len(full_steps(T, N))
    with pytest.raises(ValueError, match="fuses attention and MLP.*cache_attn and cache_mlp must be equal"):
        apply_fora(model, ForaConfig(interval=N, cache_attn=False), num_steps=T)


class Subclassed(BasicTransformerBlock):
    """A block class FORA has no spec for (a subclass may change the forward, so it is not taken on trust)."""


def test_a_block_without_a_spec_is_refused_by_name():
    model = torch.nn.Module()
    model.transformer_blocks = torch.nn.ModuleList([Subclassed(16, 2, 8)])
    with pytest.raises(ValueError, match=r"no block spec for Subclassed \(e\.g\. transformer_blocks\.0\).*supported"):
        apply_fora(model, ForaConfig(), num_steps=T)
    assert not any(hasattr(m, "_diffusers_hook") for m in model.modules())  # nothing half-applied
    with pytest.raises(ValueError, match="no transformer block"):
        apply_fora(torch.nn.Sequential(torch.nn.Linear(2, 2)), ForaConfig(), num_steps=T)


def test_similarity_maps_record_the_context_stream_with_its_own_token_count():
    """The recorder keeps a token subset per kind: SD3's text stream (5 tokens) beside its image stream (16)."""
    from analysis.metrics.similarity import SimilarityRecorder

    model, inputs = build("sd3")
    handle = apply_fora(model, ForaConfig(interval=1), num_steps=T)
    recorder = SimilarityRecorder(3, kinds=("attn", "context_attn", "mlp", "context_mlp"), blocks=[0, 2])
    handle.add_observer(recorder)
    sample(model, inputs)
    remove_fora(model)
    for kind in recorder.kinds:
        steps = recorder.neighbour[kind][0, 1:]  # block 0 from step 1 on: every cell a cosine
        assert torch.isfinite(torch.as_tensor(steps)).all() and (steps <= 1 + 1e-6).all(), kind
        pairwise = recorder.pairwise(0, kind)
        assert pairwise.shape == (T, T) and abs(pairwise[3, 3] - 1) < 1e-3


def test_attention_outside_known_blocks_is_refused_wherever_it_is_held():
    """A known block in a ModuleList and an unknown one elsewhere (a Sequential, a plain attribute): refused."""
    for holder in (torch.nn.Sequential, lambda b: b):
        model = torch.nn.Module()
        model.transformer_blocks = torch.nn.ModuleList([BasicTransformerBlock(16, 2, 8)])
        model.extra = holder(Subclassed(16, 2, 8))
        with pytest.raises(ValueError, match="no block spec for Subclassed"):
            apply_fora(model, ForaConfig(), num_steps=T)


def test_block_regex_keeps_the_models_block_numbers():
    model, inputs = build("sd3")
    handle = apply_fora(
        model, ForaConfig(interval=N, block_regex=r"transformer_blocks\.[12]", blocks=(2,)), num_steps=T
    )
    assert {b for _, b, _ in handle.modules} == {1, 2}  # block 0 is not cached, but 1 and 2 keep their numbers
    sample(model, inputs)
    remove_fora(model)


class GuidedReference:
    """FORA with several transformer calls per step, written independently: the pipeline's `scheduler.step` ends a
    step, the k-th call within a step is context k, and each context keeps its own outputs: it computes at the full
    steps and at its first call (a context that starts late has nothing to reuse), and reuses its own otherwise."""

    def __init__(self, pipe, modules, full: set[int], transformers=None):
        self.step, self.position, self.full, self.kept, self.pipe = 0, -1, full, {}, pipe
        self.handles = [t.register_forward_pre_hook(self._call) for t in transformers or [pipe.transformer]]
        self.handles += [m.register_forward_hook(self._replace) for m in modules]
        step = pipe.scheduler.step

        def counted_step(*args, **kwargs):
            self.step, self.position = self.step + 1, -1
            return step(*args, **kwargs)

        pipe.scheduler.step = counted_step

    def _call(self, module, args):
        self.position += 1

    def _replace(self, module, args, output):
        key = (self.position, module)
        if self.step in self.full or key not in self.kept:
            self.kept[key] = output
            return None
        return self.kept[key]

    def remove(self):
        del self.pipe.scheduler.step
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("family", sorted(GUIDED))
def test_separate_guidance_calls_each_cache_their_own_on_the_same_schedule(family):
    """Pipelines that call the transformer several times per step: FLUX's true CFG, Qwen-Image and Wan in named
    cache contexts, Lumina 2's CFG unnamed, SD3's skip-layer call (unnamed, on some steps only, one block skipped).
    Each call reuses its own context's outputs: the result is the independent reference's, bit for bit."""
    model, _ = build(family)
    pipe, kwargs = GUIDED[family](model)
    full = full_steps(T, N)

    def run():
        torch.manual_seed(1)
        return pipe(**kwargs, num_inference_steps=T, generator=torch.Generator().manual_seed(2))[0]

    baseline = run()
    handle = apply_fora(pipe, ForaConfig(interval=N))
    seen = []
    handle.add_observer(lambda o: seen.append(o.step))
    got = run()
    record = handle.last_run
    assert torch.equal(run(), got)  # a second call: nothing of the first run's contexts carries over
    # after the call every context's cache is freed (Lumina's unconditional one stops after step 0, SD3's
    # skip-layer one before the last step; this pipeline may not reset the hooks itself)
    assert all(slot.output is None and not slot.others for slot in handle.state.slots)
    remove_fora(pipe)
    ref = GuidedReference(pipe, cached_modules(model, family), set(full))
    expected = run()
    ref.remove()
    assert torch.equal(got, expected)
    assert not torch.equal(got, baseline)
    assert record.complete and record.full_steps == full and record.contexts == 2
    modules = len(handle.modules)  # the record counts the primary context's calls
    assert record.computed_calls == modules * len(full) and record.reused_calls == modules * (T - len(full))
    assert set(seen) == set(full)  # observers see the primary context: nothing on reuse steps
    assert torch.equal(run(), baseline)  # removed: the original again
    if family in ("lumina2", "wan"):  # every block has every kind: FORA's schedule as a plan is FORA
        kinds = tuple(sorted({kind for _, _, kind in handle.modules}))
        blocks = len({b for _, b, _ in handle.modules})
        apply_fora(pipe, ForaConfig(plan=CachePlan.fora(T, N, num_blocks=blocks, kinds=kinds)))
        assert torch.equal(run(), got)
        remove_fora(pipe)


@pytest.mark.parametrize("family", ["sd3", "sd3.5", "flux"])
def test_mmdit_blocks_reuse_lean_bit_for_bit_as_their_own_forward(family):
    """SD3/SD3.5's and FLUX's double-stream blocks run a lean reuse step (no norm, no shift/scale rows for the
    cached modules): bit for bit the block's own forward fed with the cached outputs, for each switch combination
    (FLUX's single-stream blocks cache attention and MLP together), with the same record."""
    from dataclasses import replace

    from fora.hooks import FORA_BLOCK_HOOK

    model, inputs = build(family)
    mmdit = [b for b in blocks_of(model) if type(b).__name__ in ("JointTransformerBlock", "FluxTransformerBlock")]
    # FLUX's single-stream blocks cache attention and MLP together: its double-stream ones alone take each switch
    only = {"block_regex": r"transformer_blocks\.\d+"} if family == "flux" else {}
    for cache_attn, cache_mlp in [(True, True), (True, False), (False, True)]:
        config = ForaConfig(interval=N, cache_attn=cache_attn, cache_mlp=cache_mlp, **only)
        handle = apply_fora(model, config, num_steps=T)
        assert all(FORA_BLOCK_HOOK in b._diffusers_hook.hooks for b in mmdit)  # the lean step is on
        lean, lean_run = sample(model, inputs), handle.last_run
        remove_fora(model)
        handle = apply_fora(model, replace(config, lean_reuse=False), num_steps=T)
        assert not any(hasattr(b, "_diffusers_hook") for b in mmdit)
        plain, plain_run = sample(model, inputs), handle.last_run
        remove_fora(model)
        assert all(torch.equal(a, b) for a, b in zip(lean, plain))
        assert (lean_run.computed_calls, lean_run.reused_calls) == (plain_run.computed_calls, plain_run.reused_calls)

    # what a reuse step leaves out: the norms in front of the cached modules, in both streams
    norms = [
        m
        for b in mmdit
        for m in (b.norm1.norm, b.norm1_context.norm, b.norm2, getattr(b, "norm2_context", None))
        if m is not None
    ]
    calls, step = [0] * T, {"i": -1}
    counters = [model.register_forward_pre_hook(lambda m, a: step.update(i=step["i"] + 1))]
    counters += [
        n.register_forward_hook(lambda m, a, o: calls.__setitem__(step["i"], calls[step["i"]] + 1)) for n in norms
    ]
    apply_fora(model, ForaConfig(interval=N), num_steps=T)
    sample(model, inputs)
    remove_fora(model)
    for c in counters:
        c.remove()
    full = set(full_steps(T, N))
    assert calls == [len(norms) if s in full else 0 for s in range(T)]


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16


@pytest.mark.parametrize(
    "family, threads, dtype",
    # not FLUX at float16: it scales the timestep by 1000, and this loop's timesteps (950..50) overflow float16
    [("sd3.5", 2, F32), ("sd3.5", 1, F16), ("sd3.5", 2, F16), ("sd3.5", 1, BF16), ("sd3.5", 2, BF16)]
    + [("flux", 2, F32), ("flux", 1, BF16), ("flux", 2, BF16)],
    ids=str,
)
def test_lean_mmdit_step_is_bit_for_bit_with_two_threads_and_in_half_precision(family, threads, dtype):
    """The lean MMDiT step's equalities with two torch threads and at float16/bfloat16: N = 1 with an observer
    (every block through the lean step) is the uncached model, and lean reuse is the plain reuse step."""
    from dataclasses import replace

    from conftest import torch_threads

    model, inputs = build(family)
    model = model.to(dtype)
    inputs = {
        k: v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()
    }
    only = {"block_regex": r"transformer_blocks\.\d+"} if family == "flux" else {}
    with torch_threads(threads):
        baseline = sample(model, inputs)
        assert baseline[-1].dtype == dtype and all(torch.isfinite(out).all() for out in baseline)
        handle = apply_fora(model, ForaConfig(interval=1), num_steps=T)
        handle.add_observer(lambda observation: None)
        assert all(torch.equal(a, b) for a, b in zip(sample(model, inputs), baseline))
        remove_fora(model)
        for cache_attn, cache_mlp in [(True, True), (True, False), (False, True)]:
            config = ForaConfig(interval=N, cache_attn=cache_attn, cache_mlp=cache_mlp, **only)
            apply_fora(model, config, num_steps=T)
            lean = sample(model, inputs)
            remove_fora(model)
            apply_fora(model, replace(config, lean_reuse=False), num_steps=T)
            plain = sample(model, inputs)
            remove_fora(model)
            assert all(torch.equal(a, b) for a, b in zip(lean, plain))
            assert not torch.equal(lean[-1], baseline[-1])  # reuse steps ran


@pytest.mark.parametrize("family", ["sd3.5", "flux"])
def test_a_plan_that_mixes_kinds_per_step_runs_the_lean_mmdit_step_bit_for_bit(family):
    """A plan in which each kind computes on its own steps (attention on FORA's, the second attention and the MLPs
    on others, block by block) reaches every branch of the lean MMDiT step (e.g. attention cached, second
    attention computed); it equals the plain reuse step bit for bit, with extrapolation of order 1 too."""
    from dataclasses import replace

    model, inputs = build(family)
    handle = apply_fora(model, ForaConfig(interval=N), num_steps=T)
    kinds = sorted({kind for _, _, kind in handle.modules})
    num_blocks = len({b for _, b, _ in handle.modules})
    remove_fora(model)
    fora = full_steps(T, N)
    steps = {
        kind: [fora if (i + b) % 2 == 0 else [0, 2, 4, 5] for b in range(num_blocks)] for i, kind in enumerate(kinds)
    }
    for order in (0, 1):
        config = ForaConfig(plan=CachePlan(T, steps, order=order))
        apply_fora(model, config, num_steps=T)
        lean = sample(model, inputs)
        remove_fora(model)
        apply_fora(model, replace(config, lean_reuse=False), num_steps=T)
        plain = sample(model, inputs)
        remove_fora(model)
        assert all(torch.equal(a, b) for a, b in zip(lean, plain))


def test_wan_2_2_two_experts_each_cache_on_the_runs_schedule():
    """Wan 2.2 A14B: `transformer` denoises the high-noise steps, `transformer_2` takes over at the boundary. Both
    are cached, each with its own cache on the run's schedule (the second's first call computes), with CFG in named
    contexts: equal to the independent reference, and both experts restored by remove_fora."""
    torch.manual_seed(0)
    first, second = FAMILIES["wan"][0]()[0].eval(), FAMILIES["wan"][0]()[0].eval()
    pipe, kwargs = GUIDED["wan"](first)
    # timesteps 999, 947, 882, ...: the second expert takes over at step 2, a reuse step (full: 0, 3, 6)
    pipe = type(pipe)(**{**pipe.components, "transformer_2": second}, boundary_ratio=0.9)
    pipe.set_progress_bar_config(disable=True)
    full = full_steps(T, N)

    def run():
        return pipe(**kwargs, num_inference_steps=T, generator=torch.Generator().manual_seed(2))[0]

    baseline = run()
    handle = apply_fora(pipe, ForaConfig(interval=N))
    calls = {first: [], second: []}
    hooks = [m.register_forward_pre_hook(lambda m, a, k: calls[m].append(1), with_kwargs=True) for m in calls]
    first_held = []  # at each call of the second expert: the bytes the first's cache still holds
    hooks.append(second.register_forward_pre_hook(lambda m, a: first_held.append(handle.state.cache_bytes)))
    got = run()
    for h in hooks:
        h.remove()
    a, b = handle.last_run, handle.second.last_run
    took_over = len(calls[first]) // 2  # CFG: two calls a step
    assert took_over == 2 and len(calls[second]) == 2 * (T - took_over)
    # held until the second expert takes over (its first call, before FORA's hook runs), freed from then on
    assert first_held[0] > 0 and not any(first_held[1:])
    assert b.complete and b.num_steps == T and b.steps_done == T and a.steps_done == took_over
    # the second expert's first step computes (nothing cached yet), then it follows the run's schedule
    assert b.reused_calls == len(handle.second.modules) * len([s for s in range(took_over + 1, T) if s not in full])
    remove_fora(pipe)
    assert not any(hasattr(m, "_diffusers_hook") for t in (first, second) for m in t.modules())
    modules = cached_modules(first, "wan") + cached_modules(second, "wan")
    ref = GuidedReference(pipe, modules, set(full), transformers=[first, second])
    expected = run()
    ref.remove()
    assert torch.equal(got, expected) and not torch.equal(got, baseline)
    assert torch.equal(run(), baseline)
    apply_fora(pipe, ForaConfig(interval=N))
    remove_fora(first)  # given the first expert alone: both are restored
    assert not any(hasattr(m, "_diffusers_hook") for t in (first, second) for m in t.modules())


def test_lean_pixart_step_on_a_one_token_sequence_is_the_blocks_own_forward():
    """A 2x2 latent in patches of 2 is a sequence of one token, (B, 1, D). diffusers' block attends over the normed
    input as it is; the lean step once squeezed it to (B, D) first, which the attention refuses. At N = 1 with an
    observer (every step through the lean step) it is the uncached model, and lean reuse is the plain reuse step
    (the block's own forward fed with the cached outputs), bit for bit."""
    from dataclasses import replace

    model, inputs = build("pixart-sigma")
    inputs = {**inputs, "hidden_states": torch.randn(2, 4, 2, 2)}
    baseline = sample(model, inputs)
    handle = apply_fora(model, ForaConfig(interval=1), num_steps=T)
    handle.add_observer(lambda observation: None)
    assert all(torch.equal(a, b) for a, b in zip(sample(model, inputs), baseline))
    remove_fora(model)
    config = ForaConfig(interval=N)
    apply_fora(model, config, num_steps=T)
    lean = sample(model, inputs)
    remove_fora(model)
    apply_fora(model, replace(config, lean_reuse=False), num_steps=T)
    plain = sample(model, inputs)
    remove_fora(model)
    assert all(torch.equal(a, b) for a, b in zip(lean, plain))
    assert not torch.equal(lean[-1], baseline[-1])  # reuse steps ran


class SingleBlocks(torch.nn.Module):
    """Two PixArt-like blocks (adaLN-single) of any configuration, with the modulation made from the timestep and,
    given `objs`, GLIGEN's grounding tokens passed on to every block."""

    def __init__(self, objs: torch.Tensor | None = None, **block_kwargs):
        super().__init__()
        kwargs = dict(norm_type="ada_norm_single", cross_attention_dim=16, num_embeds_ada_norm=1000, **block_kwargs)
        self.transformer_blocks = torch.nn.ModuleList([BasicTransformerBlock(16, 2, 8, **kwargs) for _ in range(2)])
        self.t_proj = torch.nn.Linear(1, 6 * 16)
        self.objs = objs

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        temb = self.t_proj(timestep[:, None] / 1000)
        gligen = {"gligen": {"objs": self.objs}} if self.objs is not None else None
        for block in self.transformer_blocks:
            hidden_states = block(
                hidden_states,
                encoder_hidden_states=encoder_hidden_states,
                timestep=temb,
                cross_attention_kwargs=gligen,
            )
        return (hidden_states,)


@pytest.mark.parametrize(
    "what, kwargs",
    [
        ("positional embeddings", dict(positional_embeddings="sinusoidal", num_positional_embeddings=16)),
        ("cross-attention only", dict(only_cross_attention=True)),
        ("GLIGEN", dict(attention_type="gated", objs=torch.randn(2, 3, 16))),
    ],
)
def test_basic_blocks_the_lean_step_does_not_cover_run_their_own_forward(what, kwargs):
    """`block_step_forward` implements neither a positional embedding, nor an `attn1` that attends to the text,
    nor GLIGEN's fuser: blocks with them are left to their own forward with hooks on the modules, which every step
    through the lean step (N = 1, observed) shows to be bit for bit the uncached model."""
    from fora.hooks import FORA_MODULE_HOOK
    from fora.lean_reuse import supports_lean_reuse

    torch.manual_seed(0)
    model = SingleBlocks(**kwargs).eval()
    inputs = {"hidden_states": torch.randn(2, 16, 16), "encoder_hidden_states": torch.randn(2, 5, 16)}
    assert not any(supports_lean_reuse(b) for b in model.transformer_blocks)
    baseline = sample(model, inputs)
    handle = apply_fora(model, ForaConfig(interval=1), num_steps=T)
    handle.add_observer(lambda observation: None)
    block = model.transformer_blocks[0]
    assert not hasattr(block, "_diffusers_hook") and FORA_MODULE_HOOK in block.ff._diffusers_hook.hooks
    assert all(torch.equal(a, b) for a, b in zip(sample(model, inputs), baseline))
    remove_fora(model)


def test_the_lean_pixart_step_passes_gligen_on_like_the_blocks_own_forward():
    """The original pops `gligen` from the attention kwargs and hands it to the block's fuser; a block without one
    (the only kind the lean step runs) raises there, and so does the lean step, rather than drop it silently."""
    from fora.lean_reuse import ALL_CHUNKS, block_step_forward

    torch.manual_seed(0)
    model = SingleBlocks()
    block, x = model.transformer_blocks[0], torch.randn(2, 16, 16)
    kwargs = dict(
        encoder_hidden_states=torch.randn(2, 5, 16),
        timestep=model.t_proj(torch.ones(2, 1)),
        cross_attention_kwargs={"gligen": {"objs": torch.randn(2, 3, 16)}},
    )
    with pytest.raises(AttributeError, match="fuser"):
        block(x, **kwargs)
    with pytest.raises(AttributeError, match="fuser"):
        block_step_forward(block, {}, ALL_CHUNKS, x, **kwargs)
