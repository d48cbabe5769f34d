"""Loading goes through the same code for hub models and local folders; tested with tiny pipelines saved locally."""

import json

import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline, run_dit, run_pixart

from fora import ForaConfig, apply_fora
from fora.cli import main as cli_main
from fora.loading import MODELS, ModelLoadError, load_pipeline, resolve_model


def save_like_hub(pipe, path):
    """save_pretrained, plus the id2label table that the DiT hub repos keep in model_index.json."""
    pipe.save_pretrained(path)
    index = json.loads((path / "model_index.json").read_text())
    index["id2label"] = {"1": "goldfish", "2": "shark, great white"}
    (path / "model_index.json").write_text(json.dumps(index))


def test_known_models():
    assert resolve_model("facebook/DiT-XL-2-256").key == "dit-xl-2-256"
    assert resolve_model("dit-xl-2-512").source == "facebook/DiT-XL-2-512"
    assert {s.conditioning for s in MODELS.values()} == {"class", "text"}


def test_dit_roundtrip_through_save_pretrained(tmp_path):
    pipe = make_dit_pipeline()
    save_like_hub(pipe, tmp_path)
    loaded = load_pipeline(str(tmp_path), device="cpu")
    assert loaded.get_label_ids(["great white"]) == [2]
    assert type(loaded).__name__ == "DiTPipeline" and loaded.transformer.dtype == torch.float32
    loaded.set_progress_bar_config(disable=True)
    assert torch.equal(torch.from_numpy(run_dit(loaded)), torch.from_numpy(run_dit(pipe)))
    handle = apply_fora(loaded, ForaConfig(interval=2))
    run_dit(loaded, steps=6)
    assert handle.last_run.full_steps == [0, 1, 3, 5]


def test_pixart_roundtrip_through_save_pretrained(tmp_path):
    pipe = make_pixart_pipeline()
    pipe.save_pretrained(tmp_path)
    loaded = load_pipeline(str(tmp_path), device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "PixArtAlphaPipeline"
    assert torch.equal(torch.from_numpy(run_pixart(loaded)), torch.from_numpy(run_pixart(pipe)))


def test_hub_failure_says_so_and_names_alternatives(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError) as err:
        load_pipeline("dit-xl-2-256", device="cpu")
    message = str(err.value)
    assert "facebook/DiT-XL-2-256" in message and "internet" in message and "emoji-dit" in message


def test_bad_model_names(tmp_path):
    with pytest.raises(ModelLoadError, match="unknown model 'nonsense'"):
        load_pipeline("nonsense", device="cpu")
    with pytest.raises(ModelLoadError, match="without model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")


def test_cli_generate_on_saved_pipeline(tmp_path, capsys):
    save_like_hub(make_dit_pipeline(), tmp_path / "dit")
    out = tmp_path / "x.png"
    rc = cli_main(
        [
            "generate",
            "--model",
            str(tmp_path / "dit"),
            "--class",
            "goldfish",
            "--steps",
            "8",
            "--interval",
            "3",
            "--out",
            str(out),
        ]
    )
    text = capsys.readouterr().out
    assert rc == 0 and out.exists()
    assert "8 steps, 4 full / 4 reuse" in text and "full steps: [0, 1, 4, 7]" in text


def test_cli_bad_input(tmp_path, capsys):
    make_dit_pipeline().save_pretrained(tmp_path / "dit")
    rc = cli_main(["generate", "--model", str(tmp_path / "dit"), "--steps", "8", "--interval", "9"])
    assert rc == 2 and "interval=9 out of range for 8 steps: allowed 1..7" in capsys.readouterr().err
    rc = cli_main(["generate", "--model", str(tmp_path / "dit"), "--steps", "8", "--class", "unicorn"])
    assert rc == 2 and "unknown class 'unicorn'" in capsys.readouterr().err
