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
