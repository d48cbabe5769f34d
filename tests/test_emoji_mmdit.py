"""The embedded text-to-image MMDiT (issue 20): its caption grammar and held-out split, renders, tokenizer, pipeline
round trip, and FORA on its joint-attention blocks (bit-exact at N = 1, the official schedule counted), through the
same pipeline, loader, CLI and app paths a user takes. A tiny random build stands in where the trained weights would
only make the test slow."""

import os

import numpy as np
import pytest
import torch

from analysis.prompts import EMOJI_CALIBRATION_PROMPTS, EMOJI_EVAL_PROMPTS, example_prompts, load_prompts, prompt_set
from embedded.emoji_mmdit.captions import (
    HELD_OUT_COLOUR,
    HELD_OUT_POSITION,
    Scene,
    held_out_captions,
    random_scene,
    vocabulary,
)
from embedded.emoji_mmdit.pipeline import EmojiMMDiTPipeline
from embedded.emoji_mmdit.scenes import render_dataset, render_scene
from embedded.emoji_mmdit.text import build_text_encoder, build_tokenizer, check_prompt
from embedded.emoji_mmdit.train import build_pipeline, build_transformer
from fora import ForaConfig, apply_fora, full_steps, remove_fora
from fora.loading import load_pipeline

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def tiny_pipeline(seed: int = 0) -> EmojiMMDiTPipeline:
    torch.manual_seed(seed)
    tokenizer = build_tokenizer()
    transformer = build_transformer(layers=2, width=32, heads=2, text_width=32)
    encoder = build_text_encoder(len(tokenizer), width=32, layers=1, heads=2)
    pipe = build_pipeline(transformer.eval(), encoder.eval(), tokenizer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny-emoji-mmdit"))
    tiny_pipeline().save_pretrained(path)
    return path


def images(pipe, prompt="a small cat on the left on a red background", steps=6, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=g, output_type="np", **kw).images


def test_the_held_out_split_never_reaches_training():
    rng = np.random.default_rng(0)
    train = [random_scene(rng) for _ in range(3000)]
    assert not any(s.held_out() for s in train)
    for s in train:  # no training caption pairs an emoji with its held-out colour or position
        for e in s.emoji:
            assert s.colour != HELD_OUT_COLOUR[e] and s.position != HELD_OUT_POSITION[e]
    assert {s.kind for s in train} == {"single", "count", "pair"}
    held = held_out_captions(64)
    assert len({s.caption for s in held}) == 64 and all(s.held_out() for s in held)
    # the shipped prompt sets are these captions
    evaluated = load_prompts(EMOJI_EVAL_PROMPTS)
    assert evaluated == [s.caption for s in held_out_captions(32)]
    assert not set(load_prompts(EMOJI_CALIBRATION_PROMPTS)) & set(evaluated)
    assert Scene(("avocado",), colour="orange").caption == "an avocado on an orange background"
    assert Scene(("cat", "cat"), colour="red").caption == "two cat on a red background"
    assert Scene(("soccer ball",), "small", "on the left").caption == "a small soccer ball on the left"


def test_renders_are_deterministic_per_seed_and_follow_the_caption():
    a, scenes = render_dataset(40, seed=3)
    b, _ = render_dataset(40, seed=3)
    c, _ = render_dataset(40, seed=4)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    red = render_scene(Scene(("cat",), "small", "on the left", "red"), np.random.default_rng(0))
    corners = red[[0, 0, -1, -1], [0, -1, 0, -1]].astype(int)
    assert (np.abs(corners - (220, 30, 30)) <= 12).all()  # the named colour, jittered at most JITTER
    mask = np.abs(red.astype(int) - corners[0]).sum(-1) > 60
    ys, xs = np.nonzero(mask)
    assert xs.mean() < 14 and 6 < ys.mean() < 26  # "on the left": the object's centroid in the left part
    assert 0.05 < mask.mean() < 0.3  # "small"


def test_the_tokenizer_refuses_words_outside_its_vocabulary_by_name():
    tok = build_tokenizer()
    check_prompt("A small cat, on the left.", tok)  # case and punctuation are not words
    with pytest.raises(ValueError, match=r"unknown word\(s\) 'astronaut', 'horse'.*knows 60 words: a an and"):
        check_prompt("an astronaut riding a horse", tok)
    with pytest.raises(ValueError, match="at most 14 fit"):
        check_prompt(" ".join(["cat"] * 15), tok)
    with pytest.raises(ValueError, match="must be text"):
        check_prompt(3, tok)
    with pytest.raises(ValueError, match="'<pad>'"):  # special tokens are no words
        check_prompt("a <pad>", tok)
    ids = tok("two cat", padding="max_length", max_length=16).input_ids
    assert ids[:4] == [2, tok.get_vocab()["two"], tok.get_vocab()["cat"], 3] and set(ids[4:]) == {0}
    assert len(vocabulary()) == 60


def test_the_pipeline_round_trips_through_save_pretrained_and_checks_its_arguments(tiny_dir):
    pipe = tiny_pipeline()
    loaded = load_pipeline(tiny_dir)  # the loader's path: model_index.json names EmojiMMDiTPipeline
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded).__name__ == "EmojiMMDiTPipeline"
    assert np.array_equal(images(pipe), images(loaded))
    assert not np.array_equal(images(pipe), images(pipe, seed=1))
    assert images(pipe, guidance_scale=1.0).shape == (1, 32, 32, 3)
    assert images(pipe, num_images_per_prompt=2).shape == (2, 32, 32, 3)
    with pytest.raises(ValueError, match="'zebra'"):
        images(pipe, prompt="a zebra")
    with pytest.raises(ValueError, match="prompt is empty"):
        images(pipe, prompt="  ")
    with pytest.raises(ValueError, match="height=64: this model makes 32x32 images only"):
        images(pipe, height=64)
    with pytest.raises(ValueError, match="num_inference_steps=0"):
        images(pipe, steps=0)


def test_fora_on_its_joint_blocks_is_exact_at_n1_and_follows_the_official_schedule():
    pipe = tiny_pipeline()
    steps, n = 10, 3
    baseline = images(pipe, steps=steps)
    handle = apply_fora(pipe, ForaConfig(interval=1))
    assert np.array_equal(images(pipe, steps=steps), baseline)
    remove_fora(pipe)

    # the modules that really run, counted per step: each block's joint attention, its MLP and the text stream's
    # MLP (the last block is context_pre_only: no text MLP)
    blocks = pipe.transformer.transformer_blocks
    modules = [m for b in blocks for m in (b.attn, b.ff, b.ff_context) if m is not None]
    assert len(modules) == 5
    calls = []
    counters = [pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(0))]
    for m in modules:
        counters.append(m.register_forward_hook(lambda mod, a, o: calls.__setitem__(-1, calls[-1] + 1)))
    handle = apply_fora(pipe, ForaConfig(interval=n))
    cached = images(pipe, steps=steps)
    for c in counters:
        c.remove()
    full = full_steps(steps, n)
    assert full == [0, 3, 6, 9]
    assert calls == [len(modules) if s in full else 0 for s in range(steps)]
    assert handle.last_run.computed_calls == len(modules) * len(full)
    assert not np.array_equal(cached, baseline)
    remove_fora(pipe)
    assert np.array_equal(images(pipe, steps=steps), baseline)


def test_the_model_is_in_the_loader_the_prompt_sets_and_the_form():
    from fora.loading import MODELS
    from ui import form

    spec = MODELS["emoji-mmdit"]
    assert spec.conditioning == "text" and spec.pipeline == "EmojiMMDiTPipeline"
    assert spec.default_steps == 28
    pipe = tiny_pipeline()
    assert prompt_set(pipe) == EMOJI_EVAL_PROMPTS and prompt_set(pipe, "calibration") == EMOJI_CALIBRATION_PROMPTS
    shown = example_prompts(pipe)
    assert len(shown) == 8 and all(p in load_prompts(EMOJI_EVAL_PROMPTS) for p in shown)
    with pytest.raises(ValueError, match="unknown word.*'horse'.*this model knows 60 words"):
        form.parse_request(pipe, None, "a horse", 10, 0, 4.0)  # before anything runs, naming the word


@pytest.mark.skipif(
    not os.path.isfile(os.path.join(os.path.dirname(__file__), "..", "assets", "emoji-mmdit", "model_index.json")),
    reason="the trained weights are not in assets/emoji-mmdit",
)
def test_the_shipped_model_loads_offline_and_generates():
    pipe = load_pipeline("emoji-mmdit")
    pipe.set_progress_bar_config(disable=True)
    out = images(pipe, steps=4)
    assert out.shape == (1, 32, 32, 3) and np.isfinite(out).all()


def test_the_prompt_following_checks_score_renders_as_right_and_catch_wrong_ones():
    """The checks are validated where the truth is known: renders of held-out captions pass them (their ceiling),
    and renders of another caption fail the claims that differ."""
    from analysis.metrics.prompt_following import accuracies, check_scene
    from embedded.emoji.render import render_glyphs
    from embedded.emoji_mmdit.classifier import load_object_classifier

    classifier = load_object_classifier()
    scenes = held_out_captions(128)
    rng, glyphs = np.random.default_rng(7), render_glyphs()
    renders = [render_scene(s, rng, 32, glyphs) for s in scenes]
    right = accuracies([check_scene(im, s, classifier) for im, s in zip(renders, scenes)])
    assert right["object"]["right"] >= 0.98 and right["colour"]["right"] == 1.0
    assert right["position"]["right"] >= 0.95 and right["size"]["right"] >= 0.95
    assert right["count"]["count"] >= 4 and right["count"]["right"] >= 0.75
    # the same images judged against a caption that says something else
    wrong = []
    for im, s in zip(renders, scenes):
        if len(s.emoji) == 1 and s.colour is not None and s.position is not None:
            other = Scene(
                ("rocket" if s.emoji[0] != "rocket" else "cat",),
                None,
                "on the right" if s.position == "on the left" else "on the left",
                "white" if s.colour == "black" else "black",
            )
            wrong.append(check_scene(im, other, classifier))
    assert len(wrong) >= 10
    caught = accuracies(wrong)
    assert caught["object"]["right"] <= 0.05 and caught["colour"]["right"] == 0.0
    assert caught["position"]["right"] <= 0.4  # "in the middle" and the vertical ones are neither left nor right


def test_the_pipeline_guides_against_the_empty_prompt_at_the_trained_timestep_units():
    """Guidance order and timestep units, read from what the transformer receives: the first half of the batch is
    the empty prompt's embedding, the second the caption's; the first step is at t = 1000 (noise) and every step's
    timestep is the scheduler's sigma x 1000, the units the model was trained in (`train.flow_loss`: s * 1000)."""
    pipe = tiny_pipeline()
    seen = []
    hook = pipe.transformer.register_forward_pre_hook(lambda m, a, kw: seen.append(kw), with_kwargs=True)
    try:
        images(pipe, prompt="two cat", steps=5)
    finally:
        hook.remove()
    empty, _ = pipe.encode_prompt([""])
    caption, _ = pipe.encode_prompt(["two cat"])
    first = seen[0]
    assert torch.equal(first["encoder_hidden_states"][0], empty[0])
    assert torch.equal(first["encoder_hidden_states"][1], caption[0])
    assert float(first["timestep"][0]) == 1000.0
    sigmas = pipe.scheduler.sigmas[:-1]
    assert torch.allclose(torch.stack([kw["timestep"][0] for kw in seen]), sigmas * 1000)


def test_the_evaluation_runs_every_row_and_writes_them(tiny_dir, tmp_path):
    """`python -m analysis.emoji_mmdit_eval` end to end on a tiny model: renders, uncached, FORA, FORA with the
    text MLP computed every step (a plan naming every kind), both calibrated plans, the timing, the JSON."""
    import json

    from analysis.emoji_mmdit_eval import main

    out = tmp_path / "eval.json"
    args = ["--model", tiny_dir, "--captions", "6", "--steps", "6", "--intervals", "2", "--plan-interval", "2"]
    assert main([*args, "--threads", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["setting"] for r in result["rows"]]
    assert names == [
        "renders (checks' ceiling)",
        "uncached",
        "FORA N=2",
        "FORA N=2, text MLP computed",
        "calibrated-o0 at N=2's cost",
        "calibrated-o1 at N=2's cost",
    ]
    assert result["rows"][0]["object"] == 1.0 and "psnr" not in result["rows"][1]
    assert all(0 <= r["ssim"] <= 1 for r in result["rows"][2:]) and result["one_image"]["n"] == 5


def test_the_arena_runs_a_text_model_on_its_prompts_and_resumes(tiny_dir, tmp_path, monkeypatch):
    """Issue 19 item 3: the arena on a text model: sample s is prompt s mod P of the model's evaluation set, the
    plans calibrated on its calibration prompts, DBCache bisected to FORA's measured cost (SD3's last block has no
    text MLP: the budget counts the calls that run); diffusers' peers are left out with a line saying so. A rerun
    into the same folder loads every observation."""
    import json

    from analysis.arena.__main__ import main

    args = ["--model", tiny_dir, "--steps", "6", "--match-interval", "2", "--intervals", "2", "--seeds", "0", "1"]
    args += ["--calibration-samples", "2", "--timing-pairs", "0", "--dbcache-fn", "1", "--dbcache-bn", "0"]
    args += ["--dbcache-warmups", "1", "--dbcache-orders", "--guidance", "4", "--out", str(tmp_path)]
    assert main(args) == 0
    result = json.loads((tmp_path / "arena.json").read_text())
    rows = {(r["policy"], r["setting"].split(" (")[0]): r for r in result["rows"]}
    assert rows[("uncached", "T steps computed")]["computed_fraction"] == 1.0
    fora = rows[("fora", "N=2")]
    assert fora["computed_calls"] == result["budget_calls"] == len(full_steps(6, 2)) * (2 * 3 - 1)
    assert {p for p, _ in rows} == {"uncached", "fora", "calibrated", "calibrated-o1", "dbcache"}
    assert result["settings"]["prompts"] == sorted(set(load_prompts(EMOJI_EVAL_PROMPTS)[:2]))
    kept = sorted(p.name for p in (tmp_path / "observed").glob("*.npz"))
    assert len(kept) >= 5
    import analysis.arena.measure as measure

    observed = []
    real = measure.generate_batch
    monkeypatch.setattr(measure, "generate_batch", lambda *a, **k: observed.append(1) or real(*a, **k))
    assert main(args) == 0  # resumed: the same rows from the kept observations, none generated again
    assert observed == []
    again = json.loads((tmp_path / "arena.json").read_text())
    assert [r["psnr"] for r in again["rows"]] == [r["psnr"] for r in result["rows"]]
    assert sorted(p.name for p in (tmp_path / "observed").glob("*.npz")) == kept
