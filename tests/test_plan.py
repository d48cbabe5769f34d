"""Cache plans through FORA's hooks: FORA's schedule as a plan is FORA, budgets are exact, bad plans are refused."""

import json

import pytest
import torch
from conftest import make_dit_pipeline, run_dit, run_pixart
from test_cache import count_inner_calls

from fora import CachePlan, ForaConfig, apply_fora, full_steps, remove_fora
from fora.plan import extrapolation_weights


@pytest.mark.parametrize("lean", [True, False])
@pytest.mark.parametrize("interval", [2, 3])
def test_fora_schedule_as_plan_is_fora_bit_for_bit(dit_pipe, interval, lean):
    apply_fora(dit_pipe, ForaConfig(interval=interval, lean_reuse=lean))
    fora = run_dit(dit_pipe, steps=10)
    fora_run = dit_pipe.transformer._fora_handle.last_run
    remove_fora(dit_pipe)
    handle = apply_fora(dit_pipe, ForaConfig(plan=CachePlan.fora(10, interval, num_blocks=3), lean_reuse=lean))
    planned = run_dit(dit_pipe, steps=10)
    assert torch.equal(torch.from_numpy(planned), torch.from_numpy(fora))
    run = handle.last_run
    assert run.full_steps == fora_run.full_steps
    assert (run.computed_calls, run.reused_calls) == (fora_run.computed_calls, fora_run.reused_calls)


def test_pixart_plan_equal_to_fora(pixart_pipe):
    apply_fora(pixart_pipe, ForaConfig(interval=2))
    fora = run_pixart(pixart_pipe, steps=6)
    remove_fora(pixart_pipe)
    plan = CachePlan.fora(6, 2, num_blocks=2, kinds=("attn", "cross_attn", "mlp"))
    apply_fora(pixart_pipe, ForaConfig(plan=plan))
    assert torch.equal(torch.from_numpy(run_pixart(pixart_pipe, steps=6)), torch.from_numpy(fora))


@pytest.mark.parametrize("lean", [True, False])
def test_per_block_plan_honours_its_budget_exactly(dit_pipe, lean):
    steps = {"attn": [[0, 1, 5], [0, 3], [0, 2, 4, 6, 8]], "mlp": [[0, 9], [0, 1, 2, 3], [0]]}
    plan = CachePlan(10, steps)
    assert plan.computed_calls == 3 + 2 + 5 + 2 + 4 + 1
    counts, hooks = count_inner_calls(dit_pipe.transformer)
    handle = apply_fora(dit_pipe, ForaConfig(plan=plan, lean_reuse=lean))
    run_dit(dit_pipe, steps=10)
    for kind, per_block in steps.items():
        for block, computed in enumerate(per_block):
            assert counts[(block, kind)] == len(computed), (kind, block)
    run = handle.last_run
    assert run.computed_calls == plan.computed_calls  # what the engine counts = what really ran
    assert run.reused_calls == 10 * 6 - plan.computed_calls
    assert run.full_steps == [0]  # the only step at which every module computed
    for h in hooks:
        h.remove()


def test_lean_and_plain_paths_agree_on_a_per_block_plan(dit_pipe):
    plan = CachePlan(8, {"attn": [[0, 2, 5], [0, 4], [0, 1, 7]], "mlp": [[0, 3], [0, 6, 7], [0, 5]]}, order=1)
    from analysis.metrics.compute_map import ComputeMap

    base = run_dit(dit_pipe, steps=8)
    outs = []
    for lean in (True, False):
        apply_fora(dit_pipe, ForaConfig(plan=plan, lean_reuse=lean))
        with ComputeMap(dit_pipe.transformer) as cmap:
            outs.append(run_dit(dit_pipe, steps=8))
        remove_fora(dit_pipe)
        for kind in ("attn", "mlp"):  # each path honours the plan, module by module
            assert cmap.matrix(kind).tolist() == plan.matrix(kind)
    assert torch.equal(torch.from_numpy(outs[0]), torch.from_numpy(outs[1]))
    assert not torch.equal(torch.from_numpy(outs[0]), torch.from_numpy(base))  # and the plan did reuse


def test_extrapolation_weights_and_slot_arithmetic():
    # Newton through (2, y2), (5, y5): at step 6 the line gives y5 + (6 - 5) * (y5 - y2) / 3
    assert extrapolation_weights(6, [2, 5]) == [1.0, 1.0]
    assert extrapolation_weights(7, [1, 2, 5]) == [1.0, 2.0, 2.0 * 5.0]
    from fora.slots import CacheSlot

    slot = CacheSlot("b.attn1", 0, "attn", True)
    slot.order = 2
    f = lambda s: 3.0 + 2.0 * s - 0.5 * s * s  # a parabola is reproduced exactly at order 2
    for s in (0, 2, 5):
        slot.store(s, torch.tensor([f(s)], dtype=torch.float64))
    for s in (6, 7, 9):
        assert slot.value(s).item() == pytest.approx(f(s), rel=1e-12)
    slot.order, slot.diffs, slot.diff_steps = 1, [], []
    slot.store(2, torch.tensor([4.0]))
    assert torch.equal(slot.value(3), torch.tensor([4.0]))  # one point: order 0
    slot.store(5, torch.tensor([10.0]))
    assert slot.value(6).item() == pytest.approx(12.0)  # 10 + 1 * (10 - 4) / 3


def test_extrapolating_plan_computes_foras_calls_and_resets_between_calls(dit_pipe):
    """Order 1 on FORA's schedule: the same modules compute at the same steps as FORA, only reuse steps differ; no
    state (divided differences) survives a call."""
    from analysis.metrics.compute_map import ComputeMap

    apply_fora(dit_pipe, ForaConfig(interval=3))
    with ComputeMap(dit_pipe.transformer) as fora_map:
        fora = run_dit(dit_pipe, steps=10)
    remove_fora(dit_pipe)
    handle = apply_fora(dit_pipe, ForaConfig(plan=CachePlan.fora(10, 3, num_blocks=3, order=1)))
    with ComputeMap(dit_pipe.transformer) as plan_map:
        first = run_dit(dit_pipe, steps=10)
    assert plan_map.cells == fora_map.cells
    assert not torch.equal(torch.from_numpy(first), torch.from_numpy(fora))  # extrapolated reuse steps differ
    assert handle.state.cache_bytes == 0 and all(not s.diffs for s in handle.state.slots)  # freed at run end
    second = run_dit(dit_pipe, steps=10)
    assert torch.equal(torch.from_numpy(first), torch.from_numpy(second))


def test_plan_json_round_trip_and_path_in_config(tmp_path, dit_pipe):
    plan = CachePlan(
        10, {"attn": [[0, 4, 8]] * 3, "mlp": [[0, 5]] * 3}, order=1, name="calibrated", meta={"seeds": [1]}
    )
    path = plan.save(tmp_path / "plan.json")
    loaded = CachePlan.load(path)
    assert loaded == plan and json.loads(path.read_text())["computed_calls"] == 15
    handle = apply_fora(dit_pipe, ForaConfig(plan=str(path)))
    run_dit(dit_pipe, steps=10)
    assert handle.last_run.computed_calls == 15


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_steps": 10, "steps": {"attn": [[1, 2]]}}, "must compute step 0"),
        ({"num_steps": 10, "steps": {"attn": [[0, 10]]}}, "step 10: allowed 0..9"),
        ({"num_steps": 10, "steps": {"attn": [[0, 3, 2]]}}, "sorted"),
        ({"num_steps": 10, "steps": {"attn": [[0]], "mlp": [[0], [0]]}}, "has 2 blocks"),
        ({"num_steps": 10, "steps": {"ffn": [[0]]}}, "kind 'ffn'"),
        ({"num_steps": 10, "steps": {"attn": [[0]]}, "order": 3}, "order=3: allowed 0..2"),
        ({"num_steps": 1, "steps": {"attn": [[0]]}}, "num_steps=1"),
    ],
)
def test_bad_plans_are_refused_with_the_value(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CachePlan(**kwargs)


def test_plan_must_fit_the_model_and_the_run(tmp_path):
    pipe = make_dit_pipeline()
    with pytest.raises(ValueError, match="for 4 blocks, the model has 3"):
        apply_fora(pipe, ForaConfig(plan=CachePlan.fora(10, 2, num_blocks=4)))
    with pytest.raises(ValueError, match="cross_attn"):
        apply_fora(pipe, ForaConfig(plan=CachePlan.fora(10, 2, num_blocks=3, kinds=("attn", "cross_attn"))))
    with pytest.raises(ValueError, match=r"names the kinds \['attn'\], the model has \['attn', 'mlp'\]"):
        apply_fora(pipe, ForaConfig(plan=CachePlan.fora(10, 2, num_blocks=3, kinds=("attn",))))
    apply_fora(pipe, ForaConfig(plan=CachePlan.fora(10, 2, num_blocks=3)))
    with pytest.raises(ValueError, match="is for 10 steps, the run has 12"):
        run_dit(pipe, steps=12)
    with pytest.raises(ValueError, match="must be a list of integer steps"):
        CachePlan(10, {"attn": [[0, 1.7]]})
    with pytest.raises(ValueError, match="computed_calls=99, its steps count 2"):
        CachePlan.from_dict({**CachePlan(10, {"attn": [[0, 3]]}).to_dict(), "computed_calls": 99})
    with pytest.raises(ValueError, match="cannot be combined"):
        ForaConfig(plan=CachePlan.fora(10, 2, num_blocks=3), cache_mlp=False)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        ForaConfig(plan=tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        ForaConfig(plan=tmp_path / "missing.json")
    with pytest.raises(ValueError, match="format 'fora-plan/1'"):
        CachePlan.from_dict({"num_steps": 10})


def test_full_steps_helper_still_matches_shared_plan():
    plan = CachePlan.fora(50, 3, num_blocks=2)
    assert plan.shared_steps == full_steps(50, 3)
    assert plan.computed_calls == len(full_steps(50, 3)) * 2 * 2


def test_a_plan_cannot_change_under_an_applied_cache(dit_pipe):
    """The hooks read the plan's steps at apply time (the steps each module reuses) and at each run's start (its
    full steps): a plan changed in between would run one schedule and report another. The plan is frozen like the
    config holding it; every way in raises, the run is the plan's as applied, and it still pickles (ZeroGPU sends
    configs to its worker) and saves as before."""
    import dataclasses
    import pickle

    steps = {"attn": [[0, 3, 6]] * 3, "mlp": [[0, 2, 4, 6]] * 3}
    plan = CachePlan(8, steps)
    handle = apply_fora(dit_pipe, ForaConfig(plan=plan))
    expected = run_dit(dit_pipe, steps=8)
    for change in (
        lambda: setattr(plan, "order", 1),
        lambda: setattr(plan, "steps", {"attn": [[0]] * 3, "mlp": [[0]] * 3}),
        lambda: plan.steps.__setitem__("attn", [[0]] * 3),
        lambda: plan.steps.update(mlp=[[0]] * 3),
        lambda: plan.steps.pop("mlp"),
        lambda: plan.steps["attn"][1].append(7),
    ):
        with pytest.raises((dataclasses.FrozenInstanceError, TypeError, AttributeError)):
            change()
    steps["attn"][1].append(7)  # the lists it was made from are not its own
    assert plan.steps["attn"][1] == (0, 3, 6) and handle.config.plan is plan
    assert torch.equal(torch.from_numpy(run_dit(dit_pipe, steps=8)), torch.from_numpy(expected))
    assert handle.last_run.computed_calls == plan.computed_calls == 3 * (3 + 4)
    assert pickle.loads(pickle.dumps(plan)) == plan and dataclasses.replace(plan, order=1).order == 1
    assert plan.to_dict()["steps"] == {"attn": [[0, 3, 6]] * 3, "mlp": [[0, 2, 4, 6]] * 3}
