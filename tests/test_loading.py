"""Loading goes through the same code for hub models and local folders; tested with tiny pipelines saved locally."""

import json

import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline, run_dit, run_pixart
from pipelines import PIPELINES
from pipelines import build as build_pipeline

from fora import ForaConfig, apply_fora, full_steps
from fora.cli import main as cli_main
from fora.loading import MODELS, ModelLoadError, load_pipeline, resolve_model
from fora.loading import PIPELINES as PIPELINE_CLASSES


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


@pytest.mark.parametrize("family", sorted(PIPELINES))
def test_family_pipelines_load_from_their_folders_and_generate_with_fora(family, tmp_path, capsys):
    """A tiny random pipeline of each family (text encoders, VAE and offline tokenizers included), saved and loaded
    again through load_pipeline, as a hub checkpoint would be; then FORA on it through the command line."""
    pipe = build_pipeline(family)
    pipe.save_pretrained(tmp_path / family)
    loaded = load_pipeline(str(tmp_path / family), device="cpu")
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe) and loaded.transformer.dtype == torch.float32
    kwargs = {**PIPELINES[family][1], "prompt": "a red fox", "num_inference_steps": 7, "output_type": "np"}

    def run(p):
        out = p(**kwargs, generator=torch.Generator().manual_seed(0))
        return torch.from_numpy(out.frames if family == "wan" else out.images)

    uncached = run(loaded)
    assert torch.allclose(uncached, run(pipe), atol=1e-5)  # FLUX differs in the last bit: another weight layout
    handle = apply_fora(loaded, ForaConfig(interval=3))
    cached = run(loaded)
    assert handle.last_run.full_steps == full_steps(7, 3) and handle.last_run.reused_calls > 0
    assert not torch.equal(cached, uncached)

    out = tmp_path / ("x.gif" if family == "wan" else "x.png")
    size = (
        ["--height", "16", "--width", "16", "--frames", "5"]
        if family == "wan"
        else ["--height", "32", "--width", "32"]
    )
    argv = ["generate", "--model", str(tmp_path / family), "--prompt", "a red fox", "--steps", "7", "-N", "3"]
    assert cli_main([*argv, *size, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "7 steps, 3 full / 4 reuse" in text and out.exists()
    if family == "wan":  # a video: every frame written
        from PIL import Image

        assert Image.open(out).n_frames == 5


def test_every_family_has_a_key_with_its_recommended_settings(capsys):
    keys = {"pixart-sigma-1024", "sd3.5-medium", "flux.1-schnell", "flux.1-dev", "sana-1600m-1024"}
    keys |= {"hunyuan-dit-1.2", "lumina-image-2", "wan2.1-t2v-1.3b", "qwen-image"}
    assert keys <= set(MODELS)
    for key in keys:
        assert MODELS[key].pipeline in PIPELINE_CLASSES
    assert MODELS["flux.1-schnell"].default_steps == 4 and MODELS["flux.1-schnell"].default_guidance == 0.0
    assert MODELS["wan2.1-t2v-1.3b"].output == "video" and MODELS["qwen-image"].cuda_dtype == "bfloat16"
    assert cli_main(["models"]) == 0
    text = capsys.readouterr().out
    assert all(key in text for key in keys) and text.count("runs on") == len(MODELS)


def test_a_family_key_offline_says_so(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"could not load 'black-forest-labs/FLUX.1-schnell'.*emoji-dit"):
        load_pipeline("flux.1-schnell", device="cpu")


def test_an_unsupported_pipeline_folder_is_refused_by_class(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    with pytest.raises(ModelLoadError, match=r"'StableDiffusionPipeline' is not supported; supported: .*FluxPipeline"):
        load_pipeline(str(tmp_path), device="cpu")


def test_an_img2img_run_is_the_steps_it_takes():
    """An img2img pipeline at strength 0.6 takes the last 6 of 10 scheduler steps (set_begin_index): FORA's run is
    those 6 steps, with FORA's schedule for T = 6 (its last step recomputes) and a complete record."""
    from diffusers import StableDiffusion3Img2ImgPipeline

    components = {k: v for k, v in build_pipeline("sd3").components.items() if v is not None}
    pipe = StableDiffusion3Img2ImgPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    handle = apply_fora(pipe, ForaConfig(interval=3))
    image = torch.rand(1, 3, 32, 32)
    generator = torch.Generator().manual_seed(0)
    pipe(prompt="a red fox", image=image, strength=0.6, num_inference_steps=10, output_type="np", generator=generator)
    run = handle.last_run
    assert run.num_steps == 6 and run.complete and run.full_steps == full_steps(6, 3)


def test_the_dtype_follows_the_pipeline_class_for_keys_hub_ids_and_folders():
    from diffusers import FluxPipeline, PixArtSigmaPipeline, WanPipeline

    from embedded.emoji.pipeline import EmojiDiTPipeline
    from fora.loading import _dtypes

    assert _dtypes(FluxPipeline, None, "cuda") == torch.bfloat16
    assert _dtypes(PixArtSigmaPipeline, None, "cuda:1") == torch.float16
    assert _dtypes(EmojiDiTPipeline, None, "cuda") == torch.float32
    assert _dtypes(WanPipeline, None, "cuda") == {"vae": torch.float32, "default": torch.bfloat16}
    assert _dtypes(FluxPipeline, None, "cpu") == _dtypes(WanPipeline, None, "cpu") == torch.float32
    assert _dtypes(FluxPipeline, torch.float16, "cuda") == torch.float16  # as given
    assert {MODELS[k].cuda_dtype for k in ("flux.1-dev", "qwen-image", "hunyuan-dit-1.2")} == {"bfloat16", "float16"}
