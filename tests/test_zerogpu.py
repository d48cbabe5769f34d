"""The app as ZeroGPU runs it: every `@spaces.GPU` function in a forked child (tests/zerogpu.py), state written
there lost. Generate, the redraws, the baseline cache, the sweep, the Memory tab and cancellation must all work."""

import importlib.util
import json
import os
import sys

import gradio as gr
import pytest
import zerogpu

from ui import gpu
from ui.tabs import compare as compare_tab
from ui.tabs import memory as memory_tab

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU_FUNCTIONS = ("compare_on_gpu", "sweep_on_gpu", "policies_on_gpu", "measure_read_on_gpu")


def shown(outs: list[dict]) -> dict:
    """What the page shows after all updates: per component, the last value sent (a heartbeat sends none)."""
    final = {}
    for out in outs:
        if out != gr.skip():
            final.update(out)
    return final


@pytest.fixture(scope="module")
def zapp():
    """The app's page with its GPU functions as on a Space: ui/gpu.py imported afresh with `spaces` = the fork
    harness, its functions in place of the plain ones (the handlers call them through `ui.gpu`) for this module."""
    with pytest.MonkeyPatch.context() as mp:
        with pytest.MonkeyPatch.context() as on_space:
            on_space.setitem(sys.modules, "spaces", zerogpu)
            spec = importlib.util.spec_from_file_location("ui_gpu_on_zerogpu", os.path.join(ROOT, "ui", "gpu.py"))
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        # every GPU entry point runs through the harness: a new one must be listed (and tested) here
        assert sorted(name for name in vars(module) if name.endswith("_on_gpu")) == sorted(GPU_FUNCTIONS)
        for name in GPU_FUNCTIONS:
            mp.setattr(gpu, name, getattr(module, name))
        from ui.layout import build_layout

        yield build_layout()


def _generate(zapp, steps=8, interval=3, seed=4242, **kw):
    args = dict(
        model_key="emoji-dit",
        label="cat",
        prompt="",
        steps=steps,
        interval=interval,
        seed=seed,
        guidance=3.0,
        cache_attn=True,
        cache_cross_attn=True,
        cache_mlp=True,
        cache_start=0,
        cache_end=0,
        blocks="",
        block_choice="",
    )
    args.update(kw)
    return zapp.compare.generate(**args)


def test_generate_redraw_and_baseline_cache_survive_the_fork(zapp):
    from ui import form, registry, store

    c = zapp.compare
    before = len(zerogpu.calls)
    outs = list(_generate(zapp))
    call = zerogpu.calls[before]
    assert call.name == "compare_on_gpu" and call.pid != os.getpid() and call.exitcode == 0 and call.items > 0
    request = form.parse_request(registry.loaded("emoji-dit"), "cat", "", 8, 4242, 3.0)
    job = form.GenerateJob("emoji-dit", request, form.parse_config(3, 8, 6))
    assert call.duration == gpu.gpu_seconds(job.denoising_steps())  # duration from the work asked for
    assert "emoji-dit" in registry._models  # loaded once, in the main process
    token = shown(outs)[c.last]
    assert store.RESULTS.get(token) is not None  # kept in the main process, not in the child
    assert (
        "speedup" in outs[-1][c.status]
        and "x, " in dict(outs[-1][c.metrics])["speedup, measured (baseline / FORA, median of pairs)"]
    )
    # the redraws read the main process' copy
    assert compare_tab.redraw_pairwise(token, "0", "mlp").to_dict()["data"]
    assert c.redraw_heatmaps(token, "uncached baseline")[c.heat_attn].to_dict()["data"]
    # only N changes: the baseline kept in the main process is handed to the worker, which runs less
    hits = store.BASELINES.hits
    outs2 = list(_generate(zapp, interval=2))
    assert store.BASELINES.hits == hits + 1
    assert dict(outs2[-1][c.metrics])["baseline run"] == "cached from an earlier request"
    assert zerogpu.calls[-1].duration == gpu.gpu_seconds(job.denoising_steps(baseline_cached=True))


def test_sweep_through_the_fork_uses_seed_and_advanced(zapp):
    sw = zapp.sweep
    outs = list(sw.sweep("emoji-dit", "rocket", "", 6, 17, 3.0, ["1", "3"], 1, cache_mlp=False))
    assert zerogpu.calls[-1].name == "sweep_on_gpu" and zerogpu.calls[-1].exitcode == 0
    table, gallery, files, status = (outs[-1][w] for w in (sw.table, sw.gallery, sw.files, sw.status))
    assert [row[0] for row in table] == [1, 3] and len(gallery) == 2 and "done" in status
    meta = json.load(open(next(f for f in files if f.endswith(".json"))))
    assert meta["seeds"] == [17] and meta["config"]["cache_mlp"] is False
    assert meta["per_seed"]["3"][0]["cache_bytes"] > 0


def test_memory_tab_touches_cuda_only_in_a_gpu_function(zapp):
    with zerogpu.watch_cuda() as touches:
        text = memory_tab.memory("dit-xl-2-256", 1, "float16", 50, 3, 3.35, 989, 0.5)
    assert touches == [] and zerogpu.calls[-1].name == "measure_read_on_gpu"
    assert "Measured on this machine (cpu)" in text and "GB/s; a plain copy of 256 MiB" in text


def test_closing_the_generator_stops_the_worker_and_frees_the_lock(zapp):
    from ui import registry

    stream = _generate(zapp, steps=100, interval=2, seed=9191)
    first = next(stream)  # the worker runs (the first partial maps came back)
    assert first is not None
    _, lock = registry.get_model("emoji-dit")
    assert lock.locked()
    stream.close()  # what Gradio does on cancel or when the user leaves
    call = zerogpu.calls[-1]
    assert not lock.locked() and call.exitcode == 0  # the child saw the stop event and ended
    assert call.items < 10  # it stopped early: a full run streams far more updates


def test_bad_input_is_answered_in_the_main_process(zapp):
    before = len(zerogpu.calls)
    with pytest.raises(gr.Error, match="steps=250 out of range: allowed integers 2..100"):
        list(_generate(zapp, steps=250))
    assert len(zerogpu.calls) == before  # no GPU time asked for a request that cannot run


def test_policies_through_the_fork_hand_their_plans_to_the_main_process(zapp):
    """A plan calibrated in the GPU worker is returned and kept by the main process, so the next request (and the
    Compare tab) finds it; the duration counts the calibration only when a plan is missing."""
    from analysis.arena.policies import plan_key
    from ui import form, registry, store

    key = plan_key("emoji-dit", 7, 3.0, 2, 0)
    assert key not in store.known_plans()
    outs = list(zapp.policies.policies("emoji-dit", "cat", "", 7, 11, 3.0, ["calibrated", "FORA"], 2))
    call = zerogpu.calls[-1]
    assert call.name == "policies_on_gpu" and call.pid != os.getpid() and call.exitcode == 0
    assert key in store.known_plans()  # learned in the main process from what the child returned
    assert outs[-1][zapp.policies.status].startswith("done")
    job = form.parse_policies(
        registry.loaded("emoji-dit"),
        "emoji-dit",
        "cat",
        "",
        7,
        11,
        3.0,
        ["calibrated", "FORA"],
        2,
        store.known_plans(),
    )
    assert job.needed_plans() == [(2, 0)]  # the chosen cost's (the sweep shows the known plans only)
    assert job.missing_plans(store.known_plans()) == []  # all calibrated in the child, all kept here
    assert call.duration == gpu.gpu_seconds(job.denoising_steps(len(job.needed_plans())))
    list(zapp.policies.policies("emoji-dit", "cat", "", 7, 11, 3.0, ["calibrated", "FORA"], 2))
    assert zerogpu.calls[-1].duration == gpu.gpu_seconds(job.denoising_steps(0))  # nothing left to calibrate
