"""Analysis metrics against known answers, the similarity observer against exact values, and the sweep end to end."""

import json
import math
import re
from dataclasses import replace

import numpy as np
import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline

from analysis.comparison import RunResult, compare, compare_runs, observe_run
from analysis.memory import MODEL_SHAPES, cache_bytes, hbm_answer, measure_read_seconds
from analysis.metrics.quality import compare_images, diff_image, mean_abs_diff, prediction_error, psnr, ssim
from analysis.metrics.similarity import SimilarityRecorder, cosine, default_blocks
from analysis.plots import neighbour_heatmap, pairwise_heatmap, schedule_strip, step_error_plot, tradeoff_plot
from analysis.sweep.__main__ import main as sweep_main
from analysis.sweep.experiment import COLUMNS, run_sweep
from analysis.sweep.report import report_html, write_outputs
from fora import ForaConfig, ForaRun, apply_fora, full_steps, remove_fora
from fora.generate import Request


def test_identical_images():
    img = np.random.default_rng(0).random((16, 16, 3))
    assert psnr(img, img) == math.inf and ssim(img, img) == pytest.approx(1.0) and mean_abs_diff(img, img) == 0
    assert diff_image(img, img).max() == 0


def test_known_psnr_and_mad():
    a = np.zeros((8, 8, 3))
    b = np.full((8, 8, 3), 0.1)  # mse 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0)
    assert mean_abs_diff(a, b) == pytest.approx(0.1)
    assert ssim(a, a + np.linspace(0, 1, 8)[None, :, None]) < 0.9
    with pytest.raises(ValueError, match="differ in shape"):
        psnr(a, np.zeros((4, 4, 3)))


def test_cosine_known_values():
    a = torch.tensor([1.0, 0.0, 0.0])
    assert cosine(a, torch.tensor([0.0, 1.0, 0.0])) == pytest.approx(0.0)
    assert cosine(a, torch.tensor([2.0, 0.0, 0.0])) == pytest.approx(1.0)
    assert cosine(a, torch.tensor([1.0, 1.0, 0.0])) == pytest.approx(1 / math.sqrt(2))
    assert cosine(a.reshape(1, 3), -a) == pytest.approx(-1.0)


def test_prediction_error():
    base = [torch.ones(4), torch.ones(4)]
    assert prediction_error([torch.ones(4), 1.5 * torch.ones(4)], base).tolist() == pytest.approx([0.0, 0.5])


def test_default_blocks_like_the_paper():
    assert default_blocks(28) == [0, 9, 18, 27]
    assert default_blocks(6) == [0, 2, 3, 5]


class ExactRecorder:
    """Keeps every computed output whole: the exact answer the streaming recorder is checked against."""

    def __init__(self):
        self.outputs = {}

    def __call__(self, obs):
        self.outputs[(obs.block, obs.kind, obs.step)] = obs.output.detach().clone()


@pytest.mark.parametrize("interval", [1, 3])
def test_similarity_recorder_matches_exact(interval):
    pipe = make_dit_pipeline(num_layers=4, sample_size=16)  # 64 tokens
    T = 12
    exact = ExactRecorder()
    full = SimilarityRecorder(4, blocks=[0, 3])
    budget = 64 * 1 * 4 * 16 * 2 * T * 2 * 2 // 4  # room for a quarter of the tokens
    sub = SimilarityRecorder(4, blocks=[0, 3], budget_bytes=budget)
    handle = apply_fora(pipe, ForaConfig(interval=interval))
    for obs in (exact, full, sub):
        handle.add_observer(obs)
    g = torch.Generator().manual_seed(0)
    pipe(class_labels=[3, 4], num_inference_steps=T, generator=g)  # batch 4 with guidance
    # every recorder is a callable observer; the run-start event reached the two recorders
    steps = full_steps(T, interval)
    assert full.tokens_kept == (64, 64) and sub.tokens_kept[0] < 32
    for kind in ("attn", "mlp"):
        for block in range(4):
            for prev, cur in zip(steps, steps[1:]):
                want = cosine(exact.outputs[(block, kind, cur)], exact.outputs[(block, kind, prev)])
                assert full.neighbour[kind][block, cur] == pytest.approx(want, abs=2e-3)
            reuse = [s for s in range(T) if s not in steps]
            assert np.isnan(full.neighbour[kind][block, reuse]).all()
            assert np.isnan(full.neighbour[kind][block, 0])
        for block in (0, 3):
            want = np.array(
                [
                    [cosine(exact.outputs[(block, kind, s)], exact.outputs[(block, kind, t)]) for t in steps]
                    for s in steps
                ]
            )
            got_full = full.pairwise(block, kind)[np.ix_(steps, steps)]
            got_sub = sub.pairwise(block, kind)[np.ix_(steps, steps)]
            np.testing.assert_allclose(got_full, want, atol=2e-3)
            assert np.abs(got_sub - want).max() < 0.1  # a token subset estimates the full cosine
    # the recorder stores the scheduler's timestep of every computed step, and nothing for reuse steps
    np.testing.assert_array_equal(full.timesteps[steps], pipe.scheduler.timesteps.numpy()[steps].astype(float))
    assert np.isnan(np.delete(full.timesteps, steps)).all()


def test_similarity_memory_bound_for_dit_xl():
    """The recorder's budget for DiT-XL/2 at 256, 250 steps, batch 2: well under 1 GB."""
    from fora.observers import Observation, RunEvent

    rec = SimilarityRecorder(28)
    rec.on_run_start(RunEvent(250, tuple(range(250))))
    x = torch.zeros(2, 256, 1152)
    for step in range(3):
        for block in range(28):
            for kind in ("attn", "mlp"):
                rec(Observation(block, kind, step, 250, 999.0 - step, x))
    full_run_features = 250 * 4 * 2 * 2 * rec.tokens_kept[0] * 1152 * 2
    previous = 28 * 2 * 2 * 256 * 1152 * 2
    assert full_run_features <= 384 * 2**20 and full_run_features + previous < 0.5 * 2**30
    neighbour = 2 * 28 * 250 * 8
    assert rec.memory_bytes == full_run_features + previous + neighbour
    rec.on_run_end(RunEvent(250, tuple(range(250))))  # a finished run keeps its maps only: 8 of 250 x 250 float32
    assert rec.memory_bytes == 4 * 2 * 250 * 250 * 4 + neighbour


def test_cache_bytes_measured_equals_calculator_and_tensors():
    pipe = make_dit_pipeline(num_layers=3, sample_size=8)
    handle = apply_fora(pipe, ForaConfig(interval=2))
    pipe(class_labels=[1], num_inference_steps=6, generator=torch.Generator().manual_seed(0))
    # 3 blocks x (attn, mlp) x batch 2 (guidance) x 16 tokens x 16 wide x 4 bytes, summed from the cached tensors
    assert handle.last_run.cache_bytes == 3 * 2 * 2 * 16 * 16 * 4
    from analysis.memory import ModelShape

    shape = ModelShape("tiny", 3, 16, 16)
    assert cache_bytes(shape, batch=1, dtype="float32") == handle.last_run.cache_bytes
    remove_fora(pipe)


def test_memory_calculator():
    dit = MODEL_SHAPES["dit-xl-2-256"]
    assert cache_bytes(dit, batch=1, dtype="float16") == 28 * 2 * 2 * 256 * 1152 * 2
    pix = MODEL_SHAPES["pixart-alpha-1024"]
    assert cache_bytes(pix, batch=1) == 28 * 3 * 2 * 4096 * 1152 * 2
    answer = hbm_answer(dit, batch=1, steps=50, interval=3)
    assert answer["reuse_steps"] == 32
    assert answer["read_ms_per_step"] == pytest.approx(cache_bytes(dit) / 3.35e12 * 1e3)
    assert answer["compute_over_read"] > 10  # compute replaced dwarfs the read on an H100
    with pytest.raises(ValueError, match="dtype='int3'"):
        cache_bytes(dit, dtype="int3")
    assert measure_read_seconds(2**20) > 0


def test_observe_and_compare_on_dit():
    pipe = make_dit_pipeline()
    request = Request(label=1, steps=10, seed=0, guidance=4.0)
    comp = compare(pipe, request, ForaConfig(interval=3))
    m = comp.metrics
    assert m["full_steps"] == 4 and m["reuse_steps"] == 6 and m["ideal_speedup"] == pytest.approx(2.5)
    assert 0 < m["psnr"] < math.inf and m["ssim"] <= 1
    assert m["cache_bytes"] == comp.fora.run.cache_bytes > 0
    errors = comp.step_error
    assert errors[0] == 0 and errors[-1] > 0  # step 0 is computed by both; error builds up later
    same = compare(pipe, request, ForaConfig(interval=1), baseline=comp.baseline)
    assert same.metrics["psnr"] == math.inf
    # identical request, identical results: nothing leaks between runs
    again = observe_run(pipe, request, ForaConfig(interval=3))
    assert np.array_equal(again.images, comp.fora.images)
    for fig in (
        neighbour_heatmap(comp.baseline.similarity, "attn"),
        pairwise_heatmap(comp.baseline.similarity, 0, "mlp"),
        schedule_strip(10, comp.fora.run.full_steps),
        step_error_plot(errors, comp.fora.run.full_steps),
    ):
        assert fig.to_dict()["data"]


def test_the_ideal_speedup_counts_the_module_calls_really_saved():
    """Caching only some blocks, or only attention, saves fewer calls than T / full steps says (issue 17, item 6):
    the ideal is all module calls over the computed ones, T / full steps only when every module caches."""
    pipe = make_dit_pipeline()
    request = Request(label=1, steps=10, seed=0, guidance=4.0)
    assert compare(pipe, request, ForaConfig(interval=3)).metrics["ideal_speedup"] == pytest.approx(10 / 4)
    # DiT blocks have attention and MLP (no cross-attention): 3 blocks, 6 modules, 60 module calls in 10 steps
    m = compare(pipe, request, ForaConfig(interval=3, blocks=[0])).metrics  # 1 of 3 blocks caches its 2 modules
    assert m["ideal_speedup"] == pytest.approx(60 / (4 * 2 + 10 * 4))
    m = compare(pipe, request, ForaConfig(interval=3, cache_mlp=False)).metrics  # attention only
    assert m["ideal_speedup"] == pytest.approx(60 / (4 * 3 + 10 * 3))


def test_pixart_observes_cross_attention():
    pipe = make_pixart_pipeline()
    kw = dict(prompt="a red cat", steps=6, seed=0, guidance=4.5, height=16, width=16)
    result = observe_run(pipe, Request(**kw), ForaConfig(interval=1))
    assert set(result.similarity.kinds) == {"attn", "cross_attn", "mlp"}
    assert np.isfinite(result.similarity.neighbour["cross_attn"][:, 1:]).all()


def test_sweep_end_to_end(tmp_path):
    pipe = make_dit_pipeline()
    request = Request(label=1, steps=8, guidance=4.0)
    result = run_sweep(pipe, request, [1, 2, 4], seeds=[0, 1], pairs=1)
    rows = {r.interval: r for r in result.rows}
    assert rows[1].psnr == math.inf and rows[1].full_steps == 8
    assert rows[2].full_steps == 5 and rows[4].full_steps == 3
    assert rows[4].ideal_speedup == pytest.approx(8 / 3)
    # quality is the median over the seeds of each seed's own comparison
    per_seed = [m["psnr"] for m in result.per_seed[4]]
    assert len(per_seed) == 2 and rows[4].psnr == pytest.approx(float(np.median(per_seed)))
    # speed comes from the paired timing of every interval, N=1 included (its hook overhead is measured, not assumed)
    for r in result.rows:
        assert r.speed.pairs == 1 and r.speed.low <= r.speed.ratio <= r.speed.high and r.speed.baseline_s > 0
    assert "1 ABBA pairs per interval, interleaved, no observers" in result.timing
    # issue 17, item 2: the maps the report shows, N=1's and the first cached N's, are all that is kept of the runs;
    # and a finished recorder holds only its maps
    assert sorted(result.recorders) == [1, 2] and sorted(result.images) == [1, 2, 4]
    assert all(rec._maps is not None and not rec._features for rec in result.recorders.values())
    paths = write_outputs(result, str(tmp_path), "tiny-dit")
    assert "interval,full_steps,speedup,speedup_low" in open(paths["csv"]).read()
    data = json.load(open(paths["json"]))
    assert [r["interval"] for r in data["rows"]] == [1, 2, 4] and data["rows"][0]["psnr"] is None  # inf -> null
    html = open(paths["html"]).read()
    assert "plotly" in html and "N=4" in html and "<table>" in html
    # issue item 7c: one pair has no range to read a precision from: one decimal in the page (it showed 4 digits),
    # every digit in the CSV and JSON
    cells = re.findall(r"<tr>((?:<td>[^<]*</td>)+)</tr>", html)
    speed = [re.findall(r"<td>([^<]*)</td>", c)[COLUMNS.index("speedup")] for c in cells]
    # one decimal; more (up to 3) for a slowdown that fewer would round to 1.0 (`speedup_decimals`: a busy machine
    # gave 0.9966, shown as "0.997")
    from fora.timing import speedup_decimals

    want = [f"{r.speed.ratio:.{speedup_decimals(r.speed.low, r.speed.high, 1, r.speed.ratio)}f}" for r in result.rows]
    assert speed == want and all(1 <= len(s.split(".")[1]) <= 3 for s in speed)
    assert all(len(s.split(".")[1]) == 1 for s, r in zip(speed, result.rows) if not r.speed.ratio < 1)
    assert [r["speedup"] for r in data["rows"]] == [r.speed.ratio for r in result.rows]
    # the same seeds give the same quality numbers
    again = run_sweep(pipe, request, [1, 2, 4], seeds=[0, 1], pairs=1)
    assert [r.psnr for r in again.rows] == [r.psnr for r in result.rows]
    assert tradeoff_plot([r.as_dict() for r in result.rows]).to_dict()["data"]
    assert 0.2 < result.cached_module_fraction < 1.0


def test_sweep_honours_the_shared_settings():
    pipe = make_dit_pipeline()
    request = Request(label=1, steps=8, guidance=4.0)
    no_mlp = run_sweep(pipe, request, [2], seeds=[0], config=ForaConfig(cache_mlp=False), pairs=1)
    both = run_sweep(pipe, request, [2], seeds=[0], pairs=1)
    # 3 blocks x batch 2 x 16 tokens x 16 wide x 4 bytes per cached module: attention only, then attention and MLP
    assert (
        no_mlp.rows[0].cache_bytes == 3 * 2 * 16 * 16 * 4
        and both.rows[0].cache_bytes == 2 * no_mlp.rows[0].cache_bytes
    )
    assert no_mlp.config.cache_mlp is False


def test_timed_call_gives_the_observed_images():
    """The speedup is timed on the same call the images come from: same images, with or without observers."""
    from analysis.comparison import timed_call

    pipe = make_dit_pipeline()
    request = Request(label=2, steps=8, seed=3, guidance=4.0)
    config = ForaConfig(interval=3)
    observed = observe_run(pipe, request, config)
    apply_fora(pipe, config)
    try:
        timed = timed_call(pipe, request)()
    finally:
        remove_fora(pipe)
    assert np.array_equal(np.asarray(timed), observed.images)


def test_arena_report_tables_round_speedups_to_their_range():
    """Issue item 7c: the arena's HTML tables gave speedup, low and high to 2 decimals whatever the pair range; now to
    what the range supports, like every speedup shown (the CSV and JSON keep every digit)."""
    from analysis.arena.report import _table

    cols = ["policy", "speedup", "speedup_low", "speedup_high", "psnr"]
    rows = [
        {"policy": "fora", "speedup": 2.137, "speedup_low": 1.9, "speedup_high": 2.4, "pairs": 3, "psnr": 31.234},
        {"policy": "fbc", "speedup": 2.137, "speedup_low": 2.1368, "speedup_high": 2.1372, "pairs": 3, "psnr": None},
        {"policy": "uncached", "speedup": 1.0, "speedup_low": 1.0, "speedup_high": 1.0, "pairs": 0, "psnr": 100.0},
    ]
    cells = [
        re.findall(r"<td>([^<]*)</td>", tr) for tr in re.findall(r"<tr>((?:<td>[^<]*</td>)+)</tr>", _table(rows, cols))
    ]
    assert cells == [
        ["fora", "2.1", "1.9", "2.4", "31.23"],
        ["fbc", "2.137", "2.137", "2.137", "-"],
        ["uncached", "1.0", "1.0", "1.0", "100.00"],
    ]


def test_report_escapes_user_input():
    pipe = make_pixart_pipeline()
    prompt = "<script>alert('x')</script> & <img src=x onerror=alert(1)>"
    request = Request(prompt=prompt, steps=4, guidance=4.5, height=16, width=16)
    result = run_sweep(pipe, request, [1, 2], seeds=[0], pairs=1)
    page = report_html(result, "<b>model</b>")
    assert "<script>alert" not in page and "<img src=x" not in page and "<b>model</b>" not in page
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; &lt;img src=x" in page
    assert "&lt;b&gt;model&lt;/b&gt;" in page


def test_sweep_cli(tmp_path, capsys):
    pipe = make_dit_pipeline()
    pipe.save_pretrained(tmp_path / "dit")
    rc = sweep_main(
        [
            "--model",
            str(tmp_path / "dit"),
            "--intervals",
            "1",
            "3",
            "--steps",
            "6",
            "--seeds",
            "0",
            "--class",
            "1",
            "--pairs",
            "1",
            "--out",
            str(tmp_path / "out"),
        ]
    )
    assert rc == 0 and (tmp_path / "out" / "report.html").exists()
    out = capsys.readouterr().out
    assert "x over 1 pair\n" in out and "paired: 1 warm-up and 1 ABBA pairs" in out  # one pair: no range
    assert sweep_main(["--model", str(tmp_path / "dit"), "--intervals", "9", "--steps", "6", "--class", "1"]) == 2
    assert "interval=9 out of range for 6 steps" in capsys.readouterr().out


def test_compare_images_values(monkeypatch):
    monkeypatch.delenv("FORA_LPIPS_ALEXNET", raising=False)  # LPIPS only with local weights (tests/test_lpips.py)
    a, b = np.zeros((8, 8, 3)), np.full((8, 8, 3), 0.1)
    # a constant offset: mse 0.01 -> 20 dB; SSIM keeps only its luminance term (no variance), with C1 = (0.01 * 1)^2:
    # (2 * 0 * 0.1 + C1) / (0 + 0.1^2 + C1) = 1 / 101
    assert compare_images(b, a) == {
        "psnr": pytest.approx(20.0),
        "ssim": pytest.approx(1 / 101),
        "mad": pytest.approx(0.1),
        "lpips": None,
    }
    rng = np.random.default_rng(0)
    x, y = rng.random((12, 10, 3)), rng.random((12, 10, 3))
    assert compare_images(x, y) == {"psnr": psnr(x, y), "ssim": ssim(x, y), "mad": mean_abs_diff(x, y), "lpips": None}


def test_a_comparison_scores_and_shows_the_first_images_of_its_two_runs():
    rng = np.random.default_rng(0)
    baseline = rng.uniform(0.2, 0.8, size=(2, 6, 9, 3))
    fora = rng.uniform(0.2, 0.8, size=(2, 6, 9, 3))  # the second images differ at random: never compared
    fora[0] = baseline[0]
    fora[0][:, :3] += 0.05  # columns 0-2 brighter, 3-5 darker by twice as much, 6-8 the same
    fora[0][:, 3:6] -= 0.1
    request = Request(label=1, steps=4, seed=0)

    def result(images, interval, full_steps, computed, reused):  # what observe_run returns, timings aside
        run = ForaRun(4, full_steps, steps_done=4, computed_calls=computed, reused_calls=reused)
        return RunResult(request, ForaConfig(interval=interval), images, 0.0, 0.0, 0.0, run, None)

    comp = compare_runs(result(baseline, 1, [0, 1, 2, 3], 24, 0), result(fora, 3, [0, 3], 12, 12))
    mse = (3 * 0.05**2 + 3 * 0.1**2) / 9
    assert comp.metrics["psnr"] == pytest.approx(10 * math.log10(1 / mse))
    assert comp.metrics["mad"] == pytest.approx((3 * 0.05 + 3 * 0.1) / 9)
    assert comp.metrics["ssim"] == ssim(fora[0], baseline[0]) < 1
    assert comp.metrics["ideal_speedup"] == 2.0 and comp.metrics["full_steps"] == 2
    # the heat map of |fora - baseline| (channel mean, x4 gain): 0.2 -> (0.6, 0, 0); 0.4 -> (1, 0.2, 0), darker
    # pixels as hot as brighter ones; unchanged pixels black
    shown = comp.diff_image()
    assert shown.shape == (6, 9, 3) and shown.dtype == np.float64 and 0 <= shown.min() and shown.max() <= 1
    assert np.allclose(shown[:, :3], [0.6, 0.0, 0.0])
    assert np.allclose(shown[:, 3:6], [1.0, 0.2, 0.0])
    assert np.array_equal(shown[:, 6:], np.zeros((6, 3, 3)))


def test_memory_cli(capsys):
    from analysis.memory import main

    assert main(["--steps", "50", "--interval", "3"]) == 0
    out = capsys.readouterr().out
    assert "dit-xl-2-256" in out and "63.0" in out  # 28 x 2 x 2 x 256 x 1152 x 2 bytes = 63.0 MiB


def test_heatmaps_cli(tmp_path, capsys):
    from analysis.heatmaps import main

    make_dit_pipeline().save_pretrained(tmp_path / "dit")
    out = tmp_path / "fig2.html"
    assert main(["--model", str(tmp_path / "dit"), "--steps", "6", "--class", "1", "--out", str(out)]) == 0
    html = out.read_text()
    assert "step x step similarity" in html and "cos to previous computed step" in html
    assert "6 steps, 6 full / 0 reuse" in capsys.readouterr().out


def test_heatmaps_page_escapes_the_model_name(tmp_path):
    """Issue item 10: the page wrote --model into its title and heading as HTML; a folder's name may hold a tag."""
    from analysis.heatmaps import main

    folder = tmp_path / "<b>dit"
    make_dit_pipeline().save_pretrained(folder)
    out = tmp_path / "fig2.html"
    assert main(["--model", str(folder), "--steps", "4", "--class", "1", "--out", str(out)]) == 0
    page = out.read_text()
    assert "<b>dit" not in page and f"<h1>{str(tmp_path)}/&lt;b&gt;dit: feature similarity" in page


def test_heatmap_colour_scale_readable_at_28_layers_by_250_steps():
    """At the paper's size a few dissimilar early steps must not squeeze every other cell into one colour."""
    from types import SimpleNamespace

    steps = np.arange(250)
    z = np.tile(1 - 0.2 * np.exp(-steps / 5.0), (28, 1))  # 0.8 at the first step, within 1e-4 of 1 from step ~40
    z[:, 0] = np.nan
    rec = SimpleNamespace(neighbour={"attn": z}, timesteps=999.0 - 4 * steps)
    fig = neighbour_heatmap(rec, "attn")
    zmin = fig.data[0].zmin
    assert np.nanmin(z) < zmin == pytest.approx(np.nanpercentile(z, 2)) and fig.layout.height >= 400
    strip = schedule_strip(250, full_steps(250, 3))
    assert strip.data[0].xgap == 0 and schedule_strip(30, full_steps(30, 3)).data[0].xgap == 1


@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_sweep_on_a_text_family_with_a_prompt_set(family, tmp_path):
    """Issue 19, item 3: the sweep runs a text family over prompts x seeds (each interval the same samples), and
    the share of time in the cached modules is measured on the family's own modules (it named DiT's before)."""
    from pipelines import PIPELINES
    from pipelines import build as build_pipeline

    from analysis.sweep.experiment import cached_module_names

    pipe = build_pipeline(family)
    options = tuple((k, v) for k, v in PIPELINES[family][1].items() if k not in ("guidance_scale",))
    request = Request(prompt="unused", steps=5, guidance=PIPELINES[family][1]["guidance_scale"], options=options)
    result = run_sweep(pipe, request, [1, 2], seeds=[0, 1], pairs=1, prompts=["a red cat", "a blue dog"])
    assert [len(result.per_seed[n]) for n in (1, 2)] == [4, 4] and result.prompts == ["a red cat", "a blue dog"]
    assert result.request.prompt == "a red cat" and result.request.seed == 0
    names = cached_module_names(pipe, ForaConfig())
    modules = dict(pipe.transformer.named_modules())
    assert names and all(n in modules for n in names)
    if family == "flux":  # the fused single-stream module: its whole block is what a reuse step skips
        assert any(n.startswith("single_transformer_blocks.") and n.count(".") == 1 for n in names)
    assert 0.2 < result.cached_module_fraction < 1.0
    # the prompts are used: at one seed, the two prompts' uncached images differ
    one_seed = run_sweep(pipe, request, [1], seeds=[0], pairs=1, prompts=["a red cat", "a blue dog"])
    assert [len(one_seed.per_seed[1])] == [2] and one_seed.images[1].shape == result.images[1].shape
    from analysis.comparison import baseline_config

    dog = observe_run(pipe, replace(request, prompt="a blue dog", seed=0), baseline_config(ForaConfig()))
    assert not np.array_equal(dog.images[0], result.images[1])  # result.images: the first sample's, "a red cat"
    with pytest.raises(ValueError, match="prompts given for a class-conditional model"):
        run_sweep(make_dit_pipeline(), Request(label=1, steps=4), [1], seeds=[0], pairs=1, prompts=["a cat"])
    paths = write_outputs(result, str(tmp_path), family)
    assert json.load(open(paths["json"]))["prompts"] == ["a red cat", "a blue dog"]
