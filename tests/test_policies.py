"""Policies beyond the fixed interval: diffusers' peers made correct, measured compute maps, the calibrated plan and
the arena, on real tiny pipelines."""

import csv
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import make_dit_pipeline, run_dit, run_pixart
from diffusers.hooks import apply_first_block_cache, apply_taylorseer_cache

from analysis.calibrate.fit import best_steps, calibrate, reuse_costs
from analysis.metrics.compute_map import ComputeMap
from fora import CachePlan, ForaConfig, apply_fora, full_steps, remove_fora
from fora.peers import apply_peer, fbcache, remove_peer, taylorseer, taylorseer_at_cost, taylorseer_steps


def same(a, b) -> bool:
    return torch.equal(torch.from_numpy(np.asarray(a)), torch.from_numpy(np.asarray(b)))


# ---- peers -------------------------------------------------------------------------------------------------------
def test_diffusers_peers_as_shipped_do_not_work_on_dit(dit_pipe):
    """Why `apply_peer` exists: on a DiT pipeline TaylorSeer's default patterns hook nothing, and First Block Cache
    has no cache context (DiT's pipeline never sets one)."""
    apply_taylorseer_cache(dit_pipe.transformer, taylorseer(3, 1).__class__())
    assert not any(hasattr(m, "_diffusers_hook") for m in dit_pipe.transformer.transformer_blocks.modules())
    pipe = make_dit_pipeline()
    apply_first_block_cache(pipe.transformer, fbcache(0.1))
    with pytest.raises(ValueError, match="cache context"):
        run_dit(pipe, steps=4)


def test_taylorseer_order_0_on_foras_schedule_is_fora_bit_for_bit(dit_pipe):
    # T = 9, N = 3: FORA computes steps 0, 2, 5, 8; TaylorSeer with warm-up 1 computes 0 and (s - 2) % 3 == 0
    apply_fora(dit_pipe, ForaConfig(interval=3))
    fora = run_dit(dit_pipe, steps=9)
    remove_fora(dit_pipe)
    apply_peer(dit_pipe, taylorseer(interval=3, order=0))
    with ComputeMap(dit_pipe.transformer) as cmap:
        peer = run_dit(dit_pipe, steps=9)
    assert same(peer, fora)
    assert sorted({s for s, _, _ in cmap.cells}) == full_steps(9, 3)


def test_taylorseer_order_1_on_foras_schedule_equals_the_plans_order_1(dit_pipe):
    """The harness agrees with itself: diffusers' order-1 Taylor step and this engine's order-1 Newton extrapolation
    are the same line through the last two computed outputs."""
    apply_peer(dit_pipe, taylorseer(interval=3, order=1))
    peer = run_dit(dit_pipe, steps=9)
    remove_peer(dit_pipe)
    apply_fora(dit_pipe, ForaConfig(plan=CachePlan.fora(9, 3, num_blocks=3, order=1)))
    assert same(run_dit(dit_pipe, steps=9), peer)


@pytest.mark.parametrize("config", [taylorseer(3, 1), taylorseer(2, 2), fbcache(0.3)], ids=["ts1", "ts2", "fbc"])
def test_peers_reset_between_calls_and_on_a_change_of_steps(config):
    pipe = make_dit_pipeline()
    base = run_dit(pipe, steps=9)
    handle = apply_peer(pipe, config)
    first = run_dit(pipe, steps=9)
    assert same(run_dit(pipe, steps=9), first)  # a second call starts from a clean state
    run_dit(pipe, steps=12)
    assert handle.last_run.num_steps == 12 and handle.last_run.steps_done == 12
    assert same(run_dit(pipe, steps=9), first)  # and after a call with another number of steps
    assert not same(first, base)  # the peer did change something (it is not a no-op)
    remove_peer(pipe)
    assert same(run_dit(pipe, steps=9), base)  # removed: exactly the original model
    assert not hasattr(pipe.transformer, "_diffusers_hook") and not hasattr(pipe.transformer, "_peer_handle")


def test_peers_on_pixart_reset_between_calls(pixart_pipe):
    base = run_pixart(pixart_pipe, steps=6)
    for config in (taylorseer(2, 1), fbcache(0.5)):
        apply_peer(pixart_pipe, config)
        with ComputeMap(pixart_pipe.transformer) as cmap:
            a = run_pixart(pixart_pipe, steps=6)
        b = run_pixart(pixart_pipe, steps=6)
        run_pixart(pixart_pipe, steps=8)
        c = run_pixart(pixart_pipe, steps=6)
        remove_peer(pixart_pipe)
        assert same(a, b) and same(a, c) and not same(a, base)
        assert cmap.computed_calls < 6 * 2 * 3 and "cross_attn" in cmap.kinds  # it skipped work, cross-attention too


class Interrupt(Exception):
    pass


@pytest.mark.parametrize("make", [taylorseer, fbcache, ForaConfig], ids=["taylorseer", "fbcache", "fora"])
def test_a_run_left_by_a_pipeline_that_is_gone_is_refused_not_continued(make):
    """The run tracker holds the pipeline weakly. Once it is gone, a call with no pipeline on the stack has no
    scheduler to read: it raises, also where the pipeline left a run unfinished (interrupted), which the call would
    otherwise have continued as a count of bare calls (TaylorSeer extrapolating from the old run; First Block Cache
    comparing with a residual of another batch size)."""
    import gc

    from fora.peers import apply_cache

    pipe = make_dit_pipeline()
    apply_cache(pipe, make())
    calls = []

    def interrupt(module, args, output):
        calls.append(1)
        if len(calls) == 2:
            raise Interrupt

    hook = pipe.transformer.register_forward_hook(interrupt)
    with pytest.raises(Interrupt):
        run_dit(pipe, steps=6)
    hook.remove()
    transformer = pipe.transformer
    del pipe
    gc.collect()
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([500, 500]), torch.tensor([1, 2])
    with pytest.raises(ValueError, match="the pipeline the cache was applied to no longer exists"):
        transformer(x, timestep=t, class_labels=y)
    with pytest.raises(ValueError, match="no longer exists"):  # and again: nothing was half-started
        transformer(x, timestep=t, class_labels=y)
    pipe = make_dit_pipeline()  # a pipeline built on the same transformer starts a run of its own
    pipe.transformer = transformer
    assert run_dit(pipe, steps=6).shape == (2, 8, 8, 3)


def test_taylorseer_at_foras_cost_picks_the_warmup():
    for t, n in ((30, 3), (30, 4), (50, 5), (12, 2)):
        config = taylorseer_at_cost(t, n, order=1)
        steps = taylorseer_steps(t, n, config.disable_cache_before_step)
        assert abs(len(steps) - len(full_steps(t, n))) <= 1, (t, n)
    assert taylorseer_at_cost(30, 3).disable_cache_before_step == 1  # (30 - 3) % 3 == 0: FORA's own schedule
    assert taylorseer_steps(30, 3, 1) == full_steps(30, 3)


def test_fbcache_threshold_zero_computes_everything_and_a_high_one_skips(dit_pipe):
    base = run_dit(dit_pipe, steps=8)
    for threshold, expect_all in ((0.0, True), (10.0, False)):
        apply_peer(dit_pipe, fbcache(threshold))
        with ComputeMap(dit_pipe.transformer) as cmap:
            out = run_dit(dit_pipe, steps=8)
        remove_peer(dit_pipe)
        assert (cmap.computed_calls == 8 * 3 * 2) == expect_all
        if expect_all:
            assert same(out, base)
        else:  # block 0 always runs; the rest only at step 0
            assert cmap.matrix("attn")[0].all() and cmap.matrix("attn")[1:, 1:].sum() == 0


def test_one_cache_at_a_time_and_bad_knobs(dit_pipe):
    apply_peer(dit_pipe, taylorseer())
    with pytest.raises(ValueError, match="already applied"):
        apply_fora(dit_pipe, ForaConfig(interval=2))
    with pytest.raises(ValueError, match="already applied"):
        apply_peer(dit_pipe, fbcache())
    remove_peer(dit_pipe)
    for make, message in (
        (lambda: taylorseer(order=3), "order=3: allowed 0..2"),
        (lambda: taylorseer(interval=0), "interval=0"),
        (lambda: taylorseer(warmup=0), "warmup=0"),
        (lambda: fbcache(-0.1), "threshold=-0.1"),
    ):
        with pytest.raises(ValueError, match=message):
            make()


# ---- compute maps ------------------------------------------------------------------------------------------------
def test_compute_map_agrees_with_the_engines_count(dit_pipe):
    plan = CachePlan(10, {"attn": [[0, 3], [0, 1, 2], [0, 9]], "mlp": [[0], [0, 5], [0, 4, 8]]})
    handle = apply_fora(dit_pipe, ForaConfig(plan=plan))
    with ComputeMap(dit_pipe.transformer) as cmap:
        run_dit(dit_pipe, steps=10)
    assert cmap.computed_calls == handle.last_run.computed_calls == plan.computed_calls
    assert cmap.matrix("attn").tolist() == plan.matrix("attn") and cmap.matrix("mlp").tolist() == plan.matrix("mlp")


# ---- calibration -------------------------------------------------------------------------------------------------
def test_reuse_costs_from_gram_matrices_equal_the_direct_errors():
    torch.manual_seed(0)
    feats = {(0, "attn"): torch.randn(6, 40, dtype=torch.float64), (1, "mlp"): torch.randn(6, 40, dtype=torch.float64)}
    grams = {k: (f @ f.T).numpy() for k, f in feats.items()}
    e0, e1 = reuse_costs(grams, 0), reuse_costs(grams, 1)
    for p, a, b in [(0, 2, 3), (1, 4, 5), (2, 3, 5)]:
        d0 = np.mean([float((f[a] - f[b]).norm() / f[b].norm()) for f in feats.values()])
        pred = [f[a] + (b - a) / (a - p) * (f[a] - f[p]) for f in feats.values()]
        d1 = np.mean([float((q - f[b]).norm() / f[b].norm()) for q, f in zip(pred, feats.values())])
        assert e0[a, b] == pytest.approx(d0, rel=1e-9) and e1[p, a, b] == pytest.approx(d1, rel=1e-9)


@pytest.mark.parametrize("order", [0, 1])
def test_dynamic_programme_finds_the_brute_force_optimum(order):
    rng = np.random.default_rng(order)
    t, k = 7, 3
    costs = rng.random((t, t) if order == 0 else (t, t, t))

    def total(steps):
        cost = 0.0
        for b in range(t):
            if b in steps:
                continue
            before = [s for s in steps if s < b]
            cost += costs[before[-1], b] if order == 0 or len(before) < 2 else costs[before[-2], before[-1], b]
        return cost

    def total1(steps):  # order 1 with one computed step uses e1[a, a, b], which reuse_costs fills with e0
        cost = 0.0
        for b in set(range(t)) - set(steps):
            before = [s for s in steps if s < b]
            p = before[-2] if len(before) > 1 else before[-1]
            cost += costs[p, before[-1], b]
        return cost

    score = total if order == 0 else total1
    brute = min(([0, *rest] for rest in itertools.combinations(range(1, t), k - 1)), key=score)
    found = best_steps(costs, k)
    assert len(found) == k and found[0] == 0
    assert score(found) == pytest.approx(score(brute))


@pytest.mark.parametrize("order", [0, 1])
def test_calibrated_plan_meets_foras_budget_exactly_and_is_not_worse_on_calibration(order):
    pipe = make_dit_pipeline()
    plan = calibrate(pipe, 12, match_interval=3, order=order, guidance=4.0, num_samples=2)
    assert plan.computed_calls == len(full_steps(12, 3)) * 3 * 2
    assert plan.shared_steps[0] == 0 and plan.order == order
    scores = plan.meta["candidate_psnr"]
    assert plan.name == ("calibrated" if order == 0 else "calibrated-o1")
    # the judge's score of FORA's schedule is the PSNR of FORA's own images on the calibration samples, recomputed
    from analysis.calibrate.fit import calibration_set
    from analysis.metrics.quality import psnr
    from fora.generate import generate_batch

    classes, seeds = calibration_set(1000, 2)
    assert plan.meta["calibration_classes"] == classes and plan.meta["calibration_seeds"] == seeds
    reference = generate_batch(pipe, classes, seeds, 12, 4.0)
    apply_fora(pipe, ForaConfig(plan=CachePlan.fora(12, 3, num_blocks=3, order=order)))
    images = generate_batch(pipe, classes, seeds, 12, 4.0)
    remove_fora(pipe)
    assert scores["fora"] == pytest.approx(np.mean([min(psnr(a, b), 100) for a, b in zip(images, reference)]))
    apply_fora(pipe, ForaConfig(plan=plan))
    run_dit(pipe, steps=12)
    assert pipe.transformer._fora_handle.last_run.computed_calls == plan.computed_calls


def test_calibration_budget_out_of_range_is_named():
    pipe = make_dit_pipeline()
    with pytest.raises(ValueError, match="budget of 13 computed steps out of range: allowed 1..12"):
        calibrate(pipe, 12, num_full=13, num_samples=1)
    with pytest.raises(ValueError, match="interval=12 out of range"):
        calibrate(pipe, 12, match_interval=12, num_samples=1)
    with pytest.raises(ValueError, match="allowed T <= 100, got 250"):
        calibrate(pipe, 250, match_interval=3, order=1, num_samples=1)
    with pytest.raises(ValueError, match="interval=0"):
        calibrate(pipe, 12, match_interval=0, num_samples=1)


# ---- the arena ---------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def arena_out(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dit")
    make_dit_pipeline().save_pretrained(folder)
    out = tmp_path_factory.mktemp("arena")
    cmd = [
        sys.executable,
        "-m",
        "analysis.arena",
        "--model",
        str(folder),
        "--steps",
        "8",
        "--match-interval",
        "2",
        "--intervals",
        "2",
        "3",
        "--seeds",
        "0",
        "1",
        "--orders",
        "0",
        "1",
        "--warmups",
        "1",
        "2",
        "--thresholds",
        "0.2",
        "--dbcache-intervals",
        "2",
        "--dbcache-fn",
        "1",
        "--dbcache-bn",
        "0",
        "--dbcache-warmups",
        "1",
        "--calibration-samples",
        "2",
        "--timing-pairs",
        "1",
        "--guidance",
        "4",
        "--out",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def test_arena_writes_every_policy_at_measured_cost(arena_out):
    rows = list(csv.DictReader(open(arena_out / "arena.csv")))
    for column in ("policy", "setting", "computed_calls", "speedup", "psnr", "ssim", "class_accuracy"):
        assert column in rows[0]
    assert {r["policy"] for r in rows} == {
        "uncached",
        "fora",
        "calibrated",
        "calibrated-o1",
        "taylorseer",
        "fbcache",
        "dbcache",
        "dbcache-taylorseer",
    }
    fora = {r["setting"]: float(r["computed_calls"]) for r in rows if r["policy"] == "fora"}
    assert fora == {"N=2": len(full_steps(8, 2)) * 6, "N=3": len(full_steps(8, 3)) * 6}
    calibrated = {r["setting"]: float(r["computed_calls"]) for r in rows if r["policy"] == "calibrated"}
    assert calibrated == {"budget of N=2": fora["N=2"], "budget of N=3": fora["N=3"]}  # equal cost, measured
    ts0 = next(r for r in rows if r["policy"] == "taylorseer" and r["setting"] == "N=2 warmup=1 order=0")
    assert float(ts0["speedup"]) > 0 and float(ts0["psnr"]) < 100
    # both of TaylorSeer's knobs are swept: every (N, warm-up) of --intervals x --warmups that caches at all
    warmups = {r["setting"].split()[1] for r in rows if r["policy"] == "taylorseer"}
    assert warmups == {"warmup=1", "warmup=2"}
    for r in (r for r in rows if r["policy"] == "taylorseer"):
        n, w = int(r["setting"].split()[0][2:]), int(r["setting"].split()[1][7:])
        assert float(r["computed_calls"]) == len(taylorseer_steps(8, n, w)) * 6  # its own rule, measured
    # DBCache, with and without its TaylorSeer calibrator: its cheapest setting, its threshold bisected to N=2's cost
    for policy, knobs in (("dbcache", "Fn=1 Bn=0 warmup=1"), ("dbcache-taylorseer", "Fn=1 Bn=0 warmup=1 order=1")):
        dbcache = {r["setting"]: float(r["computed_calls"]) for r in rows if r["policy"] == policy}
        assert dbcache[f"{knobs} threshold=1 (cheapest)"] == (8 * 1 + 2) * 2  # T Fn + warm-up (L - Fn), per kind
        (bisected,) = [c for k, c in dbcache.items() if k.endswith("(at N=2's cost)")]
        assert abs(bisected - fora["N=2"]) <= 2  # the cost moves in steps of 2 skippable blocks x 2 kinds
    data = json.loads((arena_out / "arena.json").read_text())
    assert data["budget_calls"] == fora["N=2"] and data["at_budget"]
    assert all(r["policy"] != "uncached" for r in data["at_budget"])
    assert any(k.startswith("calibrated") for k in data["plans"])
    # the cost ladder: at each FORA N's cost, each library's best setting within it, and this project's margin
    for step in data["cost_ladder"]:
        budget = fora[f"N={step['interval']}"]
        assert step["budget_calls"] == budget
        for family, policies in (("this project", ("fora", "calibrated")), ("cache-dit", ("dbcache",))):
            best = step[family]
            fits = [
                r for r in rows if r["policy"].startswith(policies) and float(r["computed_calls"]) <= 1.05 * budget
            ]
            assert best["computed_calls"] <= 1.05 * budget and best["psnr"] == max(float(r["psnr"]) for r in fits)
        peers = [step[f]["psnr"] for f in ("cache-dit", "diffusers") if step[f]]
        assert step["margin_db"] == pytest.approx(step["this project"]["psnr"] - max(peers))
        assert step["margin_low"] <= step["margin_db"] <= step["margin_high"]  # paired over the 2 seeds
        ours = step["this project"]
        assert len(ours["psnr_seeds"]) == 2 and np.mean(ours["psnr_seeds"]) == pytest.approx(ours["psnr"])
    html = (arena_out / "report.html").read_text()
    assert "At each FORA N's cost: the best of each library" in html
    assert "Pareto front" in html and "Plan maps" in html and "data:image/png;base64," in html
    plans = sorted(p.name for p in (arena_out / "plans").iterdir())
    assert plans == [
        "calibrated-T8-N2-g4.json",
        "calibrated-T8-N3-g4.json",
        "calibrated-o1-T8-N2-g4.json",
        "calibrated-o1-T8-N3-g4.json",
    ]
    assert CachePlan.load(arena_out / "plans" / "calibrated-T8-N3-g4.json").computed_calls == fora["N=3"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--steps", "3"], "--steps 3: must be >= 4"),
        (["--match-interval", "30"], "--match-interval 30: allowed 2..29"),
        (["--intervals", "1"], r"--intervals \[1\]: allowed 2..29"),
        (["--orders", "3"], "--orders"),
        (["--seeds", "1", "1"], "distinct seeds"),
        (["--thresholds", "-1"], "--thresholds"),
        (["--dbcache-fn", "0"], r"--dbcache-fn \[0\]: must be >= 1"),
        (["--dbcache-intervals", "40"], r"--dbcache-intervals \[40\]: allowed 2..29"),
        (["--dbcache-orders", "3"], "--dbcache-orders"),
    ],
)
def test_arena_bad_input_is_named(tmp_path, args, message):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis.arena", "--out", str(tmp_path / "o"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert __import__("re").search(message, proc.stderr), proc.stderr


def test_calibrate_and_generate_command_lines(tmp_path):
    folder = tmp_path / "dit"
    make_dit_pipeline().save_pretrained(folder)
    plan_path = tmp_path / "plan.json"
    run = lambda *a: subprocess.run([sys.executable, *a], capture_output=True, text=True, timeout=300)
    cal = run(
        "-m",
        "analysis.calibrate",
        "--model",
        str(folder),
        "--steps",
        "9",
        "--match-interval",
        "3",
        "--samples",
        "2",
        "--guidance",
        "4",
        "--out",
        str(plan_path),
    )
    assert cal.returncode == 0, cal.stderr
    plan = CachePlan.load(plan_path)
    assert plan.num_steps == 9 and plan.computed_calls == len(full_steps(9, 3)) * 3 * 2
    assert plan.meta["calibration_seeds"] and plan.meta["chosen"] in plan.meta["candidate_psnr"]
    gen = run(
        "-m",
        "fora",
        "generate",
        "--model",
        str(folder),
        "--plan",
        str(plan_path),
        "--class",
        "1",
        "--out",
        str(tmp_path / "x.png"),
    )
    assert gen.returncode == 0, gen.stderr
    assert f"module calls computed {plan.computed_calls}," in gen.stdout
    bad = run("-m", "fora", "generate", "--model", str(folder), "--plan", str(plan_path), "--steps", "12")
    assert bad.returncode == 2 and "is for 9 steps, the run has 12" in bad.stderr
    bad = run(
        "-m",
        "analysis.calibrate",
        "--model",
        str(folder),
        "--steps",
        "9",
        "--match-interval",
        "9",
        "--out",
        str(tmp_path / "p2.json"),
    )
    assert bad.returncode == 2 and "interval=9 out of range for 9 steps: allowed 1..8" in bad.stderr
    assert not (tmp_path / "p2.json").exists()  # the early write check leaves no empty plan file behind


def test_arena_distribution_columns_on_the_embedded_model(tmp_path):
    """--fid scores each method's best setting at the cost and the uncached model with Table 3's metrics; a rerun
    reuses the sample sets. Run from another working directory: the shipped classifier is found all the same (a
    path relative to the working directory trained a new one there, or failed to save it)."""
    cmd = [
        sys.executable,
        "-m",
        "analysis.arena",
        "--steps",
        "4",
        "--match-interval",
        "2",
        "--intervals",
        "2",
        "--seeds",
        "0",
        "1",
        "--orders",
        "1",
        "--warmups",
        "1",
        "--thresholds",
        "0.3",
        "--calibration-samples",
        "1",
        "--timing-pairs",
        "0",
        "--dbcache-fn",  # one DBCache setting: the sweep over its knobs is tested on its own
        "1",
        "--dbcache-bn",
        "0",
        "--dbcache-warmups",
        "1",
        "--fid",
        "64",
        "--fid-reference",
        "320",
        "--out",
        str(tmp_path),
    ]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=elsewhere, env=env)
    assert proc.returncode == 0, proc.stderr
    assert not any(elsewhere.iterdir()) and "classifier epoch" not in proc.stdout  # nothing trained, nothing left
    data = json.loads((tmp_path / "arena.json").read_text())
    assert all(r.get("class_accuracy") is not None for r in data["rows"])
    scored = {(r["policy"], r["setting"]): r for r in data["rows"] if r.get("fid") is not None}
    assert ("uncached", "T steps computed") in scored and ("fora", "N=2") in scored
    assert {p for p, _ in scored} == {"uncached"} | {r["policy"] for r in data["at_budget"]}
    assert {"fora", "calibrated-o1"} <= {p for p, _ in scored}
    for r in scored.values():
        assert r["fid_samples"] == 64 and r["fid"] > 0 and 0 <= r["fid_recall"] <= 1
        assert (abs(r["fd_vs_uncached"]) < 1e-3) == (r["policy"] == "uncached")  # same seeds: 0 only for itself
    assert data["distribution"]["samples"] == 64 and "Distribution quality" in (tmp_path / "report.html").read_text()
    sets = sorted((tmp_path / "samples").iterdir())
    assert len(sets) == len(scored)
    stamp = {p.name: p.stat().st_mtime_ns for p in sets}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "samples").iterdir()} == stamp  # reused, not redone
    assert json.loads((tmp_path / "arena.json").read_text())["rows"][0]["fid"] == data["rows"][0]["fid"]
    from analysis.arena.rescore import rescore

    rescored = {(r["policy"], r["setting"]): r for r in rescore(str(tmp_path), reference_samples=320)}
    assert rescored.keys() == scored.keys()
    for key, r in rescored.items():  # recomputed from the stored sets: the same numbers
        assert r["fd_vs_uncached"] == pytest.approx(scored[key]["fd_vs_uncached"], abs=1e-4)
        assert r["fid"] == pytest.approx(scored[key]["fid"])
    report = (tmp_path / "report.html").read_text()
    assert report.count('<div id="distribution">') == 1 and "fd_vs_uncached" in report  # the section rewritten


def test_pareto_front_keeps_only_undominated_settings():
    from analysis.arena.report import pareto_plot

    rows = [
        {
            "policy": "fora",
            "setting": f"N={i}",
            "computed_calls": c,
            "computed_fraction": c / 100,
            "speedup": s,
            "psnr": q,
            "order": None,
        }
        for i, (c, s, q) in enumerate([(50, 2.0, 20), (50, 1.9, 25), (30, 3.0, 18), (40, 2.5, 17), (80, 1.2, 40)])
    ]
    by_cost = next(t for t in pareto_plot(rows, x="computed_fraction").data if t.name == "Pareto front")
    assert list(zip(by_cost.x, by_cost.y)) == [(0.3, 18), (0.5, 25), (0.8, 40)]  # (0.4, 17) and (0.5, 20) dominated
    by_speed = next(t for t in pareto_plot(rows).data if t.name == "Pareto front")
    assert list(zip(by_speed.x, by_speed.y)) == [(3.0, 18), (2.0, 20), (1.9, 25), (1.2, 40)]
