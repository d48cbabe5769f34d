"""Table 3: known answers of the distribution metrics, and the table CLI end to end on a tiny model, in one process,
across two real torchrun processes, and after an interruption."""

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import linalg

from analysis.metrics.distribution import frechet_distance, inception_score, precision_recall
from analysis.samples import SHARD_SIZE, sample_labels, sample_seed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- known answers


def test_frechet_distance_of_a_set_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(500, 8))
    assert abs(frechet_distance(x, x)) < 1e-6


def test_frechet_distance_matches_the_closed_form_for_two_gaussians():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(4000, 3)) @ np.diag([1.0, 2.0, 0.5]) + [0.0, 1.0, 0.0]
    b = rng.normal(size=(4000, 3)) @ np.array([[1.0, 0.3, 0], [0, 1.0, 0], [0, 0, 1.5]]) + [2.0, 0.0, 1.0]
    # the formula on the same empirical statistics: ||mu_a - mu_b||^2 + tr(Sa + Sb - 2 (Sa Sb)^(1/2))
    ma, mb, sa, sb = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = float(np.sum((ma - mb) ** 2) + np.trace(sa + sb - 2 * linalg.sqrtm(sa @ sb).real))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    # and the population answer for diagonal covariances: |dmu|^2 + sum (sigma_a - sigma_b)^2, within sampling error
    x = rng.normal(size=(20000, 2)) * [1.0, 3.0]
    y = rng.normal(size=(20000, 2)) * [2.0, 3.0] + [3.0, 4.0]
    assert frechet_distance(x, y) == pytest.approx(25.0 + 1.0, rel=0.02)


def test_the_paired_bootstrap_resolves_a_shift_and_not_a_copy():
    """Issue 21: two identical sets give a difference interval holding 0; a shifted set one that excludes it; sFID
    (the Frechet distance of spatial features) of a set with itself is 0."""
    from analysis.metrics.bootstrap import paired_interval

    rng = np.random.default_rng(0)
    ref, a = rng.normal(size=(1000, 8)), rng.normal(size=(200, 8))
    same = paired_interval(lambda i: frechet_distance(ref, a[i]) - frechet_distance(ref, a.copy()[i]), 200, 40)
    assert same.value == 0 and same.low <= 0 <= same.high and not same.excludes(0)
    shifted = a + 0.4
    moved = paired_interval(lambda i: frechet_distance(ref, shifted[i]) - frechet_distance(ref, a[i]), 200, 40)
    assert moved.excludes(0) and moved.low > 0
    noisy = a + rng.normal(scale=1.0, size=a.shape) * 0.01  # a tiny change: its interval is narrow around it
    tiny = paired_interval(lambda i: frechet_distance(ref, noisy[i]) - frechet_distance(ref, a[i]), 200, 40)
    assert tiny.high - tiny.low < moved.high - moved.low
    # FD of samples from the reference's own distribution: small, and inside its interval (resampling repeats
    # samples, which raises FD: the interval is re-centred on the estimate)
    near = rng.normal(size=(256, 8))
    fd = paired_interval(lambda i: frechet_distance(ref, near[i]), 256, 40)
    assert fd.low <= fd.value <= fd.high and fd.low >= -0.05
    spatial = rng.normal(size=(300, 448))
    assert frechet_distance(spatial, spatial) == pytest.approx(0, abs=1e-4)  # n < d: sqrtm rounding
    with pytest.raises(ValueError, match="at least 2 samples"):
        paired_interval(lambda i: 0.0, 1)


def test_precision_and_recall_of_constructed_point_sets():
    line = np.arange(100, dtype=np.float64)[:, None]  # k = 3: an inner point's ball has radius 3
    assert precision_recall(line, line + 0.5) == (1.0, 1.0)
    assert precision_recall(line, line + 1000.0) == (0.0, 0.0)
    # generated points cover only the first half, each twice: all inside the reference (precision 1); their
    # 3-NN radius is 1, so reference points 0..49 are covered and 50 (at distance exactly 1) is not: recall 0.5
    half = np.repeat(np.arange(50, dtype=np.float64), 2)[:, None]
    assert precision_recall(line, half) == (1.0, 0.5)


def test_score_of_a_confident_uniform_classifier_is_the_number_of_classes():
    classes = 8
    logits = 50.0 * np.eye(classes)[np.arange(classes * 40) % classes]  # confident, every class equally often
    mean, _ = inception_score(logits, splits=1)
    assert mean == pytest.approx(classes, rel=1e-6)
    # ten random splits of 32 samples rarely hold every class equally often: the mean is below, never above, K
    mean, std = inception_score(logits)
    assert 0.8 * classes < mean < classes and std > 0
    mean, _ = inception_score(np.zeros((80, classes)))  # no confidence at all: 1
    assert mean == pytest.approx(1.0)


def test_sample_seeds_and_labels_depend_only_on_the_index():
    assert sample_seed(0, 5) == sample_seed(0, 5) != sample_seed(0, 6) != sample_seed(1, 5)
    assert sample_labels(range(4, 9), 4).tolist() == [0, 1, 2, 3, 0]


# ---------------------------------------------------------------- the CLI end to end


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny random emoji-style DiT pipeline, saved and loaded like any pipeline folder."""
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    from embedded.emoji.pipeline import EmojiDiTPipeline

    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=2,
        in_channels=3,
        out_channels=3,
        num_embeds_ada_norm=4,
        norm_type="ada_norm_zero",
        norm_elementwise_affine=False,
    )
    scheduler = DDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing")
    path = str(tmp_path_factory.mktemp("tiny-emoji"))
    EmojiDiTPipeline(transformer.eval(), scheduler, id2label={i: f"c{i}" for i in range(4)}).save_pretrained(path)
    return path


def _table(model, out, *extra, samples=130, torchrun=False):
    args = [
        "--model",
        model,
        "--steps",
        "4",
        "--intervals",
        "1",
        "3",
        "--samples",
        str(samples),
        "--out",
        str(out),
        "--batch-size",
        "16",
        "--reference-samples",
        "64",
        "--timing-pairs",
        "0",
        "--threads",
        "1",
        "--bootstrap",
        "20",
        *extra,
    ]
    if torchrun:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29531",
            "-m",
            "analysis.table",
            *args,
        ]
    else:
        cmd = [sys.executable, "-m", "analysis.table", *args]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _shards(out) -> dict[str, bytes]:
    found = {}
    for cell in sorted(os.listdir(os.path.join(out, "samples"))):
        for name in sorted(os.listdir(os.path.join(out, "samples", cell))):
            with np.load(os.path.join(out, "samples", cell, name)) as z:
                found[f"{cell}/{name}"] = b"".join(z[k].tobytes() for k in ("images", "labels", "seeds"))
    return found


def _rows(out) -> list[dict]:
    with open(os.path.join(out, "table.csv")) as f:  # generation time is the only column allowed to differ
        return [{k: v for k, v in r.items() if k != "generation_process_s"} for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def one_process(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("table") / "one"
    done = _table(tiny_model, out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_table_writes_samples_and_metrics(one_process):
    out = one_process
    rows = _rows(out)
    assert [(r["steps"], r["interval"], r["full_steps"]) for r in rows] == [("4", "1", "4"), ("4", "3", "2")]
    for r in rows:
        assert float(r["fid"]) > 0 and 0 <= float(r["precision"]) <= 1 and 0 <= float(r["recall"]) <= 1
        assert r["samples"] == "130" and r["class_accuracy"] == "nan"  # 4 classes are not the classifier's 32
    assert rows[0]["fid"] != rows[1]["fid"]  # caching at N = 3 changes the samples, and the metric sees it
    assert rows[0]["psnr_vs_uncached"] == "inf" and np.isfinite(float(rows[1]["psnr_vs_uncached"]))
    # issue 21: intervals, sFID, and the metrics against the uncached model's own samples of the same seeds
    for r in rows:
        assert float(r["fid_low"]) <= float(r["fid"]) <= float(r["fid_high"])
        assert r["sfid"] == "nan"  # the tiny model's 8 px samples against 32 px renders: maps of other sizes
    n1, n3 = rows
    assert float(n1["fd_to_uncached"]) == 0 and float(n1["precision_to_uncached"]) == 1 == float(
        n1["recall_to_uncached"]
    )
    assert float(n1["fid_diff"]) == 0 and float(n1["sfid_to_uncached"]) == 0
    assert float(n3["fd_to_uncached"]) > 0 and float(n3["fd_to_uncached_low"]) <= float(n3["fd_to_uncached_high"])
    assert float(n3["sfid_to_uncached"]) > 0
    assert float(n3["fid_diff"]) == pytest.approx(float(n3["fid"]) - float(n1["fid"]), abs=1e-9)
    assert float(n3["fid_diff_low"]) <= float(n3["fid_diff"]) <= float(n3["fid_diff_high"])
    names = sorted(os.listdir(out / "samples" / "T4_N3"))
    assert names == [f"shard_0000000-{SHARD_SIZE:07d}.npz", f"shard_{SHARD_SIZE:07d}-0000130.npz"]
    with np.load(out / "samples" / "T4_N3" / names[1]) as z:
        assert z["images"].dtype == np.uint8 and z["images"].shape == (30, 8, 8, 3)
        assert z["labels"].tolist() == [i % 4 for i in range(100, 130)]
        assert z["seeds"].tolist() == [sample_seed(0, i) for i in range(100, 130)]
    meta = json.loads((out / "table.json").read_text())
    assert meta["settings"]["extractor"] == "emoji" and len(meta["rows"]) == 2
    assert meta["floor"]["samples"] == 130 and meta["floor"]["fid"] >= 0  # real renders scored like a generator
    assert meta["runs"][-1]["command"].startswith("python -m analysis.table --model")
    assert "<table>" in (out / "report.html").read_text() and (out / "grid.png").is_file()


def test_two_torchrun_processes_give_the_same_samples_and_table(tiny_model, one_process, tmp_path):
    out = tmp_path / "two"
    done = _table(tiny_model, out, torchrun=True)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "process 1" in done.stderr  # really two processes, each with its own progress bar
    assert _shards(out) == _shards(one_process)
    assert _rows(out) == _rows(one_process)


def test_an_interrupted_run_resumes_to_the_same_result(tiny_model, one_process, tmp_path):
    out = tmp_path / "resumed"
    assert _table(tiny_model, out, samples=60).returncode == 0  # a smaller run: partial first shards
    os.remove(out / "samples" / "T4_N3" / "shard_0000000-0000060.npz")  # killed before this shard was written
    (out / "samples" / "T4_N1" / "shard_0000000-0000100.tmp999.npz").write_bytes(b"half a file")  # a killed write
    done = _table(tiny_model, out)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _shards(out).keys() == _shards(one_process).keys()
    assert _shards(out) == _shards(one_process)
    assert _rows(out) == _rows(one_process)


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--model", "no-such-model"], "no-such-model"),
        (["--intervals", "4"], "--intervals 4 out of range for --steps 4: allowed 1..3"),
        (["--samples", "3"], "--samples 3: allowed >= 4"),
        (["--samples", "20", "20", "20"], "give one value, or one per --steps value (1)"),
        (["--extractor", "inception", "--inception-weights", "/nonexistent/pt_inception.pth"], "--inception-weights"),
    ],
)
def test_bad_input_is_named_and_writes_nothing(tiny_model, tmp_path, extra, message):
    out = tmp_path / "bad"
    args = ["--model", tiny_model, "--steps", "4", "--intervals", "1", "2", "--samples", "20", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "analysis.table", *args, *extra],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 2
    assert message in done.stderr
    assert not out.exists()


def test_unwritable_out_and_a_folder_of_other_settings_are_refused(tiny_model, one_process, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    done = _table(tiny_model, blocker / "out")
    assert done.returncode == 2 and "not writable" in done.stderr
    copy = tmp_path / "copy"
    shutil.copytree(one_process, copy)
    done = _table(tiny_model, copy, "--guidance", "2.0")
    assert done.returncode == 2 and "holds samples made with" in done.stderr
    # the settings record the card's arguments and the scheduler class; a folder from before they were recorded is
    # taken as they are now and gets them, one that records another scheduler is refused
    stored = json.loads((copy / "run.json").read_text())
    assert stored["options"] == "{}" and stored["scheduler"] == "DDIMScheduler"
    old = {k: v for k, v in stored.items() if k not in ("options", "scheduler")}
    (copy / "run.json").write_text(json.dumps(old))
    done = _table(tiny_model, copy)  # resumes: nothing to generate, the metrics again
    assert done.returncode == 0, done.stderr[-2000:]
    assert "records no options, scheduler; taken as this run's" in done.stdout
    assert json.loads((copy / "run.json").read_text()) == stored
    (copy / "run.json").write_text(json.dumps({**stored, "scheduler": "EulerDiscreteScheduler"}))
    done = _table(tiny_model, copy)
    assert (
        done.returncode == 2 and "holds samples made with" in done.stderr and "EulerDiscreteScheduler" in done.stderr
    )


def test_the_app_shows_a_table_folder(one_process, monkeypatch):
    import gradio as gr

    from analysis.table.report import DISPLAY_HEADERS, display_rows, load_table
    from ui.layout import build_demo
    from ui.tabs import table3

    monkeypatch.setattr(table3, "TABLE3_DIR", str(one_process))
    rows = display_rows(load_table(str(one_process)))
    assert [r[:4] for r in rows] == [[4, 1, 4, 130], [4, 3, 2, 130]]
    assert rows[0][DISPLAY_HEADERS.index("PSNR vs N=1")] == "inf"
    build_demo()  # the tab itself, built from this folder
    image = table3.table3_grid("cat")  # class 0: two samples at each of N = 1, 3
    assert image.shape == (3 * 2 * 10, 3 * 2 * 10, 3) and image.dtype == np.uint8
    with pytest.raises(gr.Error, match="unknown class 'nope'; allowed: cat, dog"):
        table3.table3_grid("nope")
    with pytest.raises(gr.Error, match="no samples of class 'pizza'"):  # the tiny model has 4 classes
        table3.table3_grid("pizza")


def test_a_dit_pipeline_folder_with_ddpm(tmp_path):
    """The hub model's pipeline class (DiTPipeline, VAE, 1000 classes) through the same CLI, stochastic sampler."""
    from conftest import make_dit_pipeline

    make_dit_pipeline().save_pretrained(tmp_path / "dit")
    runs = []
    for name in ("a", "b"):
        done = _table(str(tmp_path / "dit"), tmp_path / name, "--sampler", "ddpm", "--extractor", "emoji", samples=20)
        assert done.returncode == 0, done.stderr[-3000:]
        runs.append(_shards(tmp_path / name))
    assert runs[0] == runs[1]  # DDPM's noise is seeded: the same samples again
    with np.load(tmp_path / "a" / "samples" / "T4_N3" / "shard_0000000-0000020.npz") as z:
        assert z["labels"].tolist() == list(range(20)) and z["images"].shape[0] == 20
    assert json.loads((tmp_path / "a" / "run.json").read_text())["sampler"] == "ddpm"


def test_samples_per_cell_can_differ_by_steps(tmp_path):
    from analysis.table.__main__ import parse_args
    from analysis.table.experiment import check_args

    args = parse_args(["--steps", "20", "50", "--samples", "1000", "500", "--out", str(tmp_path / "t")])
    check_args(args)
    assert args.samples_by_steps == {20: 1000, 50: 500}
    args = parse_args(["--steps", "20", "50", "--samples", "300", "--out", str(tmp_path / "t")])
    check_args(args)
    assert args.samples_by_steps == {20: 300, 50: 300}


def test_score_is_deterministic_and_leaves_the_global_generator_alone():
    logits = np.random.default_rng(0).normal(size=(200, 8)) * 3
    state = torch.random.get_rng_state()
    first = inception_score(logits)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert inception_score(logits) == first


def test_each_feature_space_ranks_controlled_damage_of_real_renders_above_the_floor():
    """Issue 21 item 4: FD and sFID in the emoji classifier's spaces rank controlled degradations of real renders
    (shrink, blur, pixel noise, each at two strengths) in order: real renders of another seed (the floor) below
    the mild damage, the mild below the strong."""
    from PIL import Image, ImageFilter

    from analysis.metrics.distribution import EmojiFeatures
    from embedded.emoji.render import render_dataset

    extract = EmojiFeatures()
    reference = extract(render_dataset(16, seed=3003)[0])
    images = render_dataset(16, seed=4004)[0]
    noise = np.random.default_rng(0).normal(size=images.shape)

    def shrink(a, f):  # to a fraction of the side, centred on the image's own corner colour
        out = []
        for im in a:
            small = Image.fromarray(im).resize((round(32 * f),) * 2, Image.Resampling.BILINEAR)
            canvas = Image.new("RGB", (32, 32), tuple(int(v) for v in im[0, 0]))
            canvas.paste(small, ((32 - small.width) // 2, (32 - small.height) // 2))
            out.append(np.asarray(canvas))
        return np.stack(out)

    def blur(a, r):
        return np.stack([np.asarray(Image.fromarray(im).filter(ImageFilter.GaussianBlur(r))) for im in a])

    def noisy(a, sigma):
        return np.clip(a + sigma * noise, 0, 255).astype(np.uint8)

    floor = extract(images)
    for damage, mild, strong in ((shrink, 0.85, 0.6), (blur, 0.6, 1.2), (noisy, 12, 36)):
        a, b = extract(damage(images, mild)), extract(damage(images, strong))
        for space in ("features", "spatial"):
            fd = [frechet_distance(getattr(reference, space), getattr(f, space)) for f in (floor, a, b)]
            assert fd[0] < fd[1] < fd[2], (damage.__name__, space, fd)


def test_ddpm_samples_do_not_depend_on_the_batch_size(tiny_model, tmp_path):
    shards = []
    for batch in ("16", "7"):
        out = tmp_path / f"b{batch}"
        done = _table(tiny_model, out, "--sampler", "ddpm", "--batch-size", batch, "--skip-metrics", samples=30)
        assert done.returncode == 0, done.stderr[-3000:]
        with np.load(out / "samples" / "T4_N3" / "shard_0000000-0000030.npz") as z:
            shards.append(z["images"].astype(int))
    # per-sample generators fix each trajectory; only the float rounding of a different batch may move a pixel by 1
    assert np.abs(shards[0] - shards[1]).max() <= 1 and np.mean(shards[0] == shards[1]) > 0.99


def test_a_corrupt_shard_is_made_again_and_a_busy_folder_is_refused(tiny_model, one_process, tmp_path):
    from analysis.table.experiment import lock_folder

    copy = tmp_path / "copy"
    shutil.copytree(one_process, copy)
    bad = copy / "samples" / "T4_N3" / f"shard_0000000-{SHARD_SIZE:07d}.npz"
    bad.write_bytes(b"not a shard")  # a final name with the wrong content (disk error, copy cut short)
    held = lock_folder(str(copy))  # another run is working in this folder
    done = _table(tiny_model, copy)
    assert done.returncode == 2 and "is in use by another run" in done.stderr
    held.close()
    done = _table(tiny_model, copy)
    assert done.returncode == 0, done.stderr[-3000:]
    assert _shards(copy) == _shards(one_process)


SHIPPED_TABLE3 = os.path.join(ROOT, "assets", "emoji-dit", "table3")


def test_the_table3_tab_rounds_speedups_to_their_range(monkeypatch):
    """Issue item 7c: the Table 3 tab showed "2.20x (2.17-2.38)", two decimals of a range 0.2 wide; now the shipped
    table's speedups come to what their range supports, as everywhere else (`fora.timing.format_speedup`)."""
    import gradio as gr

    from analysis.table.report import DISPLAY_HEADERS, load_table
    from ui.layout import build_layout
    from ui.tabs import table3

    monkeypatch.setattr(table3, "TABLE3_DIR", SHIPPED_TABLE3)
    layout = build_layout()
    [table] = [b for b in layout.demo.blocks.values() if isinstance(b, gr.Dataframe) and b.headers == DISPLAY_HEADERS]
    shown = {(r[0], r[1]): r[DISPLAY_HEADERS.index("speedup (range)")] for r in table.value["data"]}
    rows = {(r["steps"], r["interval"]): r for r in load_table(SHIPPED_TABLE3)["rows"]}
    t20n3 = rows[20, 3]  # 2.197 over 2.171-2.383: a range 0.21 wide
    assert (t20n3["speedup"], t20n3["speedup_low"], t20n3["speedup_high"]) == pytest.approx(
        (2.197, 2.171, 2.383), 1e-3
    )
    assert shown[20, 3] == "2.2x, 2.2-2.4"
    assert shown[50, 10] == "5.6x, 5.3-6.5"  # 5.648 over 5.320-6.537: one decimal at least, never "6x, 5-7"
    assert shown[20, 1] == "1.0x, 0.8-1.1" and shown[50, 5] == "2.8x, 2.7-2.9"


def _broken_table3(folder, name: str, breakage) -> str:
    """The two files the tab reads copied from the shipped Table 3, `name` rewritten by `breakage(bytes)`."""
    for f in ("table.json", "grid_samples.npz"):
        shutil.copy(os.path.join(SHIPPED_TABLE3, f), folder / f)
    (folder / name).write_bytes(breakage((folder / name).read_bytes()))
    return str(folder)


def _without_fid_in_row_3(text: bytes) -> bytes:
    meta = json.loads(text)
    del meta["rows"][3]["fid"]
    return json.dumps(meta).encode()


LFS_POINTER = b"version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 1985725\n"  # a clone without LFS


@pytest.mark.parametrize(
    "name, breakage, message",
    [
        ("table.json", lambda b: b[: len(b) // 2], "table.json is not JSON: "),  # a copy or a write cut short
        ("table.json", lambda b: b"{}", "table.json is not a table the app can show (KeyError: 'settings')"),
        ("table.json", _without_fid_in_row_3, "table.json is not a table the app can show (KeyError: 'fid')"),
        ("table.json", lambda b: b"\xff\xfe\x00", "table.json is not JSON: "),
        ("grid_samples.npz", lambda b: b[: len(b) // 2], "grid_samples.npz is unreadable (BadZipFile: "),
        ("grid_samples.npz", lambda b: LFS_POINTER, "grid_samples.npz is unreadable (ValueError: "),
    ],
    ids=["json-cut-short", "json-empty-object", "json-row-without-fid", "json-binary", "npz-cut-short", "npz-lfs"],
)
def test_the_app_builds_with_a_broken_table_and_says_which_file(tmp_path, monkeypatch, name, breakage, message):
    """A broken shipped Table 3 file: the page still builds, the Table 3 tab holds only the message naming the file
    and how to make the table again, and the other tabs and their endpoints are all there."""
    import gradio as gr

    from ui.layout import build_layout
    from ui.tabs import table3

    folder = _broken_table3(tmp_path, name, breakage)
    monkeypatch.setattr(table3, "TABLE3_DIR", folder)
    layout = build_layout()
    assert layout.table3.grid is None and layout.table3.class_choice is None
    tabs = {b.label: b for b in layout.demo.blocks.values() if isinstance(b, gr.Tab)}
    assert list(tabs) == ["Compare", "Sweep", "Policies", "Memory", "Table 3"]
    [shown] = tabs["Table 3"].children  # the message alone: no table, plots or grid built from a broken file
    assert isinstance(shown, gr.Markdown)
    assert shown.value.startswith(f"No readable Table 3 in `{folder}` (ValueError: {os.path.join(folder, message)}")
    assert table3.TABLE3_COMMAND in shown.value
    endpoints = {f.api_name for f in layout.demo.fns.values()}
    assert {"generate", "sweep", "memory"} <= endpoints and "table3_grid" not in endpoints


def test_the_app_serves_with_a_broken_table(tmp_path, monkeypatch):
    """The same through the real server: the page's config carries the message, the other tabs answer."""
    import socket
    import urllib.request

    from gradio_client import Client

    from ui.layout import build_demo
    from ui.tabs import table3

    folder = _broken_table3(tmp_path, "table.json", lambda b: b[: len(b) // 2])
    monkeypatch.setattr(table3, "TABLE3_DIR", folder)
    demo = build_demo()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.queue(max_size=4).launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        url = f"http://127.0.0.1:{port}/"
        with urllib.request.urlopen(url + "config", timeout=30) as r:
            config = json.loads(r.read())
        texts = [c["props"].get("value") for c in config["components"] if c.get("type") == "markdown"]
        assert sum(f"No readable Table 3 in `{folder}`" in str(t) for t in texts) == 1
        client = Client(url, verbose=False)
        assert "/table3_grid" not in client.view_api(print_info=False, return_format="dict")["named_endpoints"]
        answer = client.predict("dit-xl-2-256", 1, "float16", 50, 3, 3.35, 989, 0.5, api_name="/memory")
        assert "| 63.0 MiB |" in answer and "Is HBM fast enough? yes" in answer  # 28 x 2 x 2 x 256 x 1152 x 2 B
    finally:
        demo.close()


def test_a_text_model_table_compares_with_its_own_uncached_samples(tmp_path):
    """Issue 19 item 3: Table 3 on a text-to-image model (a tiny embedded MMDiT, saved as a folder): sample i is
    prompt i mod P with its own seed, the metrics are against the uncached samples of the same prompts and seeds (no
    reference set ships), and a bad prompt set or a class-model sampler is refused by name."""
    from test_emoji_mmdit import tiny_pipeline

    model = str(tmp_path / "mmdit")
    tiny_pipeline().save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# three captions\na cat\na red cat on the left\ntwo dog\n")
    out = tmp_path / "table"
    args = ("--prompts", str(prompts), "--samples", "12")
    done = _table(model, out, *args, samples=12)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {int(r["interval"]): r for r in _rows(out)}
    assert float(rows[1]["fd_to_uncached"]) == 0 and float(rows[1]["precision_to_uncached"]) == 1
    assert float(rows[3]["fd_to_uncached"]) > 0 and 0 < float(rows[3]["psnr_vs_uncached"]) < 100
    assert rows[3]["fid"] == "nan" and rows[3]["class_accuracy"] == "nan"  # no renders, no classes to score
    with np.load(out / "samples" / "T4_N1" / "shard_0000000-0000012.npz") as z:
        assert z["labels"].tolist() == [i % 3 for i in range(12)]
        shard_images, seeds = z["images"], z["seeds"]
    from fora.generate import generate_batch, to_uint8
    from fora.loading import load_pipeline

    pipe = load_pipeline(model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    again = to_uint8(generate_batch(pipe, ["two dog"], [int(seeds[5])], 4, 4.0))[0]  # sample 5: prompt 5 mod 3
    assert np.array_equal(again, shard_images[5])
    page = (out / "report.html").read_text()
    assert "FD to the uncached samples" in page and "prompt i mod prompts" in page
    with open(out / "run.json") as f:
        settings = json.load(f)
    assert settings["sampler"] == "model" and settings["prompts"].startswith("prompts.txt:3:")
    # the same folder with another prompt set is refused, never mixed
    prompts.write_text("a dog\n")
    done = _table(model, out, *args, samples=12)
    assert done.returncode == 2 and "holds samples made with" in done.stderr
    for extra, message in (
        (("--prompts", str(tmp_path / "absent.txt")), "prompt set 'absent.txt' unreadable"),
        (("--sampler", "ddim"), "--sampler ddim: --model"),
    ):
        done = _table(model, tmp_path / "bad", *extra, samples=12)
        assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
