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
    assert call.duration == gpu.compare_seconds(job)  # the duration of the work asked for
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
    assert zerogpu.calls[-1].duration == gpu.compare_seconds(job, baseline=True) < call.duration


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
    cleared = next(stream)  # the lock is held: the last result's redraws end before the run starts
    assert cleared[zapp.compare.last] is None
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
    assert call.duration == gpu._policies_seconds(job, {})  # asked with the plan missing: its calibration counted
    list(zapp.policies.policies("emoji-dit", "cat", "", 7, 11, 3.0, ["calibrated", "FORA"], 2))
    assert zerogpu.calls[-1].duration == gpu._policies_seconds(job, store.known_plans()) < call.duration  # none left


def test_the_reservation_counts_each_models_calls():
    """Issue 17, item 4: the `duration` counts every pipeline call at its model's cost. A PixArt-alpha-1024
    comparison at T=20 (ten calls at 1024 px) was asked 16 s at one rate for all models: it now reserves at least
    what its ten VAE decodes at 1024 px (~0.5 s each on any current GPU) and 200 transformer steps at 4096 tokens
    (~25 ms each) take with the 10 s start, and more than a DiT-XL/2-256 comparison of the same steps."""
    from dataclasses import replace

    from fora import ForaConfig
    from fora.generate import Request
    from ui import form

    def compare(key, steps=20, **kw):
        return gpu.compare_seconds(form.GenerateJob(key, Request(prompt="a cat", steps=steps), ForaConfig(), **kw))

    assert compare("pixart-alpha-1024") >= 10 + 10 * 0.5 + 200 * 0.025
    assert compare("emoji-dit") < compare("dit-xl-2-256") < compare("pixart-alpha-512") < compare("pixart-alpha-1024")
    assert compare("pixart-alpha-1024", pairs=0) < compare("pixart-alpha-1024")  # the timed calls are counted
    assert compare("an-operators-model") == compare("pixart-alpha-1024")  # unknown: the largest listed
    # an observed call (maps, predictions) reserves more than a plain one
    assert gpu.gpu_seconds("pixart-alpha-1024", 20, 4, 0) > gpu.gpu_seconds("pixart-alpha-1024", 20, 0, 4)
    # the default sweep (2 seeds, six intervals) on PixArt-alpha-1024 needs more than ZeroGPU's longest reservation
    sweep = form.SweepJob(
        "pixart-alpha-1024", Request(prompt="a", steps=20), ForaConfig(), (1, 2, 3, 5, 7, 10), (0, 1)
    )
    with pytest.raises(ValueError, match=r"about \d+ s \(56 pipeline calls of 20 steps on pixart-alpha-1024\); one "):
        gpu._sweep_seconds(sweep)
    assert gpu._sweep_seconds(replace(sweep, model_key="dit-xl-2-512")) < gpu.GPU_MAX_SECONDS

    # issue 19 item 2: every family has its own rate; a duration grows with the steps and the resolution
    assert compare("sd3.5-medium") < compare("flux.1-dev") <= gpu.GPU_MAX_SECONDS  # a 1024-px FLUX comparison fits
    assert compare("sana-1600m-1024") < compare("sd3.5-medium")  # 1024 tokens of Sana's 32x autoencoder
    assert compare("emoji-mmdit") < compare("dit-xl-2-256")
    for key in ("pixart-alpha-1024", "flux.1-dev", "sd3.5-medium"):
        assert compare(key, steps=10) < compare(key, steps=20) < compare(key, steps=30)

    def sized(key, side):
        job = form.GenerateJob(key, Request(prompt="a cat", steps=20, height=side, width=side), ForaConfig())
        return gpu.compare_seconds(job)

    assert sized("flux.1-dev", 512) < compare("flux.1-dev") == sized("flux.1-dev", 1024) < sized("flux.1-dev", 1152)
    # attention is quadratic in the tokens: twice the pixels cost more than twice the steps' share
    one, two = gpu.GPU_COSTS["sd3.5-medium"].step_s(1024**2), gpu.GPU_COSTS["sd3.5-medium"].step_s(2 * 1024**2)
    assert 2 * one < two < 4 * one
    assert gpu.GPU_COSTS["flux.1-dev"].guidance_batch == 1 and gpu.GPU_COSTS["sd3.5-medium"].guidance_batch == 2

    # a video's reservation grows with its latent frames (Wan's VAE keeps 1 + (F - 1) / 4), through the form as the
    # frames slider sends them, at the model card's 480x832 and 50 steps: the app's default fits, 17 frames do not;
    # the message names frames only where fewer would fit (a default sweep does not at any)
    import pipelines

    wan = pipelines.build("wan")

    def video(frames):
        job = form.parse_generate(wan, "wan2.1-t2v-1.3b", None, "a fox", 50, 2, 0, 5.0, frames=frames)
        assert dict(job.request.options)["num_frames"] == frames and job.request.options[:2] == (
            ("height", 480),
            ("width", 832),
        )
        return gpu.compare_seconds(job)

    assert [video(f) for f in (1, 5, form.APP_FRAMES)] == [159, 191, 271]  # docs/app.md quotes these
    assert form.APP_FRAMES == 13 and gpu.latent_frames(13) == 4 and gpu.latent_frames(81) == 21
    with pytest.raises(
        ValueError,
        match=r"about 319 s .* fewer steps, seeds, intervals, policies or frames \(at most 13 frames fit as asked\)$",
    ):
        video(17)
    sweep = form.parse_sweep(wan, "wan2.1-t2v-1.3b", None, "a fox", 50, 0, 5.0, [1, 2, 3, 5, 7, 10], 2, frames=1)
    with pytest.raises(ValueError, match=r"fewer steps, seeds, intervals or policies$"):
        gpu._sweep_seconds(sweep)


def test_a_request_past_the_reservation_cap_is_refused_before_the_gpu(zapp, monkeypatch):
    monkeypatch.setitem(gpu.compare_on_gpu.__wrapped__.__globals__, "GPU_MAX_SECONDS", 11)
    before = len(zerogpu.calls)
    with pytest.raises(gr.Error, match="one request may reserve at most 11 s here: fewer steps"):
        list(_generate(zapp, steps=60))
    assert len(zerogpu.calls) == before  # no worker started


def test_a_reused_worker_has_the_models_loaded_before_it_forked(zapp, tmp_path, monkeypatch):
    """ZeroGPU may serve several calls with one worker, forked once: a model the main process loads after that
    fork is not in it. On ZeroGPU every model is therefore loaded at start-up (`registry.preload`), and no later
    load is made; without that, the reused worker says the model is missing instead of running another one."""
    from conftest import make_dit_pipeline

    from ui import registry

    extra = str(tmp_path / "late-dit")
    make_dit_pipeline(num_layers=1).save_pretrained(extra)
    monkeypatch.setenv("FORA_EXTRA_MODELS", extra)
    monkeypatch.delenv("FORA_HUB_MODELS", raising=False)  # preload() below loads what is available: these two
    for name in ("_failed", "_locks", "_loaders", "_models"):  # put back afterwards, so nothing of this test stays
        monkeypatch.setattr(registry, name, dict(getattr(registry, name)))
    with zerogpu.reuse_workers():
        list(_generate(zapp, steps=4, interval=2, seed=1))
        worker = zerogpu.calls[-1].pid
        registry.get_model(extra)  # loaded after the worker forked
        with pytest.raises(gr.Error, match="is not loaded in the main process"):
            list(_generate(zapp, model_key=extra, label="1", steps=4, interval=2))
        assert zerogpu.calls[-1].pid == worker  # the same worker served both
    registry._models.pop(extra)
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    monkeypatch.setattr(registry, "_pinned", set(registry._pinned))
    assert extra in registry.preload()  # start-up: before any worker forks
    with zerogpu.reuse_workers():
        for seed in (1, 2):
            outs = shown(list(_generate(zapp, model_key=extra, label="1", steps=4, interval=2, seed=seed)))
            assert outs[zapp.compare.status].startswith("done")
        assert zerogpu.calls[-1].pid == zerogpu.calls[-2].pid != os.getpid()
    registry._models.pop(extra)
