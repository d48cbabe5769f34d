"""The shipped prompt sets and the checks on a prompt."""

import pytest

from analysis.prompts import CALIBRATION_PROMPTS, MAX_PROMPT_CHARS, check_prompt, load_prompts, samples


def test_the_shipped_sets():
    evaluation, calibration = load_prompts(), load_prompts(CALIBRATION_PROMPTS)
    assert len(evaluation) == 32 and len(calibration) == 8 and not set(evaluation) & set(calibration)
    assert len(set(evaluation)) == 32  # no prompt twice
    assert sum('"' in p for p in evaluation) == 8  # the text-rendering category quotes the text to render
    assert load_prompts(limit=3) == evaluation[:3]


@pytest.mark.parametrize(
    "prompt, message",
    [
        ("", "is empty"),
        ("   ", "is empty"),
        (None, "is NoneType, not text"),
        (7, "is int, not text"),
        ("x" * (MAX_PROMPT_CHARS + 1), f"has {MAX_PROMPT_CHARS + 1} characters: allowed 1..{MAX_PROMPT_CHARS}"),
        ("a cat\x00", "control character"),
    ],
)
def test_a_bad_prompt_is_named(prompt, message):
    with pytest.raises(ValueError, match=message):
        check_prompt(prompt)
    with pytest.raises(ValueError, match=message):
        samples(["a dog", prompt], [0])


def test_a_bad_prompt_file_is_named(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(ValueError, match="'empty.txt' has no prompts"):
        load_prompts(str(empty))
    long = tmp_path / "long.txt"
    long.write_text("a cat\n# fine\n" + "y" * 500 + "\n")
    with pytest.raises(ValueError, match="long.txt line 3 has 500 characters"):
        load_prompts(str(long))
    with pytest.raises(ValueError, match="'missing.txt' unreadable: FileNotFoundError"):
        load_prompts(str(tmp_path / "missing.txt"))
    with pytest.raises(ValueError, match="limit=0"):
        load_prompts(limit=0)


def test_samples_are_every_prompt_with_every_seed():
    assert samples([" a cat ", "a dog"], [3, 4]) == [("a cat", 3), ("a cat", 4), ("a dog", 3), ("a dog", 4)]


def test_calibration_grams_add_up_over_calls():
    """A text model calibrates one call per prompt: the Gram matrices summed over the calls are those of all the
    samples in one batch (what a class model's single call gives)."""
    import torch

    from analysis.calibrate.fit import _FeatureRecorder
    from fora.observers import Observation, RunEvent

    torch.manual_seed(0)
    outs = torch.randn(2, 3, 4, 5, 8)  # sample, step, batch row, token, channel
    per_call = _FeatureRecorder(2**30)
    for sample in range(2):
        per_call.on_run_start(RunEvent(3, (0, 1, 2)))
        for step in range(3):
            per_call(Observation(0, "attn", step, 3, 0.0, outs[sample, step]))
        per_call.on_run_end(RunEvent(3, (0, 1, 2)))
    batched = _FeatureRecorder(2**30)
    batched.on_run_start(RunEvent(3, (0, 1, 2)))
    for step in range(3):
        batched(Observation(0, "attn", step, 3, 0.0, torch.cat([outs[0, step], outs[1, step]])))
    import numpy as np

    np.testing.assert_allclose(per_call.grams()[(0, "attn")], batched.grams()[(0, "attn")], rtol=1e-3)
    # a text stream whose length differs per prompt (Qwen-Image trims it): each call reads its own tokens
    ragged = _FeatureRecorder(2**30)
    for tokens in (20, 12):
        ragged.on_run_start(RunEvent(3, (0, 1, 2)))
        for step in range(3):
            ragged(Observation(0, "context_attn", step, 3, 0.0, torch.randn(2, tokens, 8)))
        ragged.on_run_end(RunEvent(3, (0, 1, 2)))
    assert ragged.grams()[(0, "context_attn")].shape == (3, 3)


def test_a_text_model_calibrates_on_the_calibration_prompts():
    from pipelines import PIPELINES
    from pipelines import build as build_pipeline

    from analysis.calibrate.fit import calibrate

    pipe = build_pipeline("sd3")
    options = tuple((k, v) for k, v in PIPELINES["sd3"][1].items() if k != "guidance_scale")
    plan = calibrate(pipe, 6, 2, 0, 3.0, num_samples=2, options=options)
    assert plan.meta["calibration_prompts"] == load_prompts(CALIBRATION_PROMPTS)[:2]
    assert not set(plan.meta["calibration_prompts"]) & set(load_prompts())  # never an evaluated prompt
    assert len(plan.shared_steps) == 4 and "context_mlp" in plan.kinds  # FORA N=2's budget at T=6; SD3's kinds
