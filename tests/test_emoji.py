"""The embedded emoji DiT: offline loading, labels, determinism, the training loop, the data and the classifier."""

import json
import os

import numpy as np
import pytest
import torch

from embedded.emoji.classes import EMOJI_CLASSES, LABELS
from embedded.emoji.render import find_font
from fora.loading import load_pipeline

try:
    find_font()
    HAVE_FONT = True
except FileNotFoundError:
    HAVE_FONT = False
needs_font = pytest.mark.skipif(
    not HAVE_FONT and not os.environ.get("CI"), reason="apt-get install fonts-noto-color-emoji"
)


@pytest.fixture(scope="module")
def pipe():
    p = load_pipeline("emoji-dit", device="cpu")
    p.set_progress_bar_config(disable=True)
    return p


def test_loads_offline_from_assets(pipe, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert type(pipe).__name__ == "EmojiDiTPipeline"
    cfg = pipe.transformer.config
    assert cfg.num_layers >= 6 and cfg.sample_size == 32 and cfg.in_channels == 3 and cfg.num_embeds_ada_norm == 32
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk("assets") for f in fs if "safetensors" in f)
    assert size <= 30 * 2**20


def test_labels_map_both_ways(pipe):
    assert LABELS[:4] == ["cat", "dog", "fox", "frog"] and LABELS[-1] == "honeybee" and len(EMOJI_CLASSES) == 32
    assert [pipe.id2label[i] for i in range(32)] == LABELS
    assert pipe.get_label_ids(["cat", "honeybee", "soccer ball"]) == [0, 31, 18]
    with pytest.raises(ValueError, match="unknown class 'zebra'"):
        pipe.get_label_ids("zebra")
    with pytest.raises(ValueError, match=r"class id 32 out of range: allowed 0..31"):
        pipe(class_labels=[32], num_inference_steps=2)


def test_generation_is_deterministic(pipe):
    def run(**kw):
        g = torch.Generator().manual_seed(5)
        return pipe(class_labels=["pizza", 3], num_inference_steps=6, generator=g, **kw).images

    a, b = run(output_type="np"), run(output_type="np")
    assert a.shape == (2, 32, 32, 3) and a.min() >= 0 and a.max() <= 1
    assert np.array_equal(a, b)
    pt = run(output_type="pt")
    assert pt.shape == (2, 3, 32, 32) and np.allclose(pt.permute(0, 2, 3, 1).numpy(), a)
    pil = run(output_type="pil")
    assert pil[0].size == (32, 32)
    with pytest.raises(ValueError, match="output_type='jpg'"):
        run(output_type="jpg")


@needs_font
def test_rendered_data_is_seeded():
    from embedded.emoji.render import render_dataset

    x1, y1 = render_dataset(2, seed=3)
    x2, _ = render_dataset(2, seed=3)
    x3, _ = render_dataset(2, seed=4)
    assert x1.shape == (64, 32, 32, 3) and x1.dtype == np.uint8 and list(y1[:4]) == [0, 0, 1, 1]
    assert np.array_equal(x1, x2) and not np.array_equal(x1, x3)


@needs_font
def test_training_runs_and_resumes(tmp_path):
    from embedded.emoji.train import main, parse_args

    out, state = tmp_path / "model", tmp_path / "state.pt"
    common = [
        "--out",
        str(out),
        "--state",
        str(state),
        "--per-class",
        "2",
        "--layers",
        "1",
        "--width",
        "32",
        "--heads",
        "2",
        "--batch-size",
        "4",
        "--warmup",
        "2",
        "--threads",
        "1",
    ]
    main(parse_args(common + ["--steps", "3"]))
    log = json.loads((out / "training_log.json").read_text())
    assert log["total_steps"] == 3 and (out / "samples.png").exists() and (out / "transformer").is_dir()
    main(parse_args(common + ["--steps", "5"]))  # resumes from the full state at step 3
    log = json.loads((out / "training_log.json").read_text())
    assert log["total_steps"] == 5 and [s["start_step"] for s in log["sessions"]] == [0, 3]
    pipe = load_pipeline(str(out), device="cpu")
    assert pipe.transformer.config.num_layers == 1


@needs_font
def test_shipped_classifier_recognises_fresh_renders():
    from safetensors.torch import load_file

    from embedded.emoji.classifier import EmojiClassifier, classify
    from embedded.emoji.render import render_dataset

    model = EmojiClassifier()
    model.load_state_dict(load_file("assets/emoji-classifier.safetensors"))
    x, y = render_dataset(3, seed=777)
    assert np.mean(classify(model, x / 255.0) == y) >= 0.95
