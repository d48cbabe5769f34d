"""The prompt sets for text-to-image models, shipped as text in `assets/prompts/`.

- `eval.txt`: 32 prompts written for this project, 8 per category: objects, scenes, text rendering, counts. The
  categories are where caching errors show: fine texture (objects), large smooth regions (scenes), glyphs that a
  small error breaks (text rendering) and object counts that a changed layout gets wrong (counts).
- `calibration.txt`: 8 other prompts, two per category, for calibrating plans: never the ones evaluated.
- `emoji-mmdit-eval.txt`, `emoji-mmdit-calibration.txt`: the embedded text-to-image model's sets, in its caption
  grammar (it knows 60 words): 32 held-out captions (combinations it never saw in training) and 8 training-split
  ones. `prompt_set(pipe, split)` picks a model's set.

A prompt set is one prompt per line; blank lines and lines starting with `#` are skipped. `load_prompts` refuses an
empty set and an empty, over-long or non-text prompt, naming it. Every method of an experiment sees the same
(prompt, seed) samples: `samples`.
"""

import os

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "prompts")
EVAL_PROMPTS = os.path.join(ASSETS, "eval.txt")
CALIBRATION_PROMPTS = os.path.join(ASSETS, "calibration.txt")
EMOJI_EVAL_PROMPTS = os.path.join(ASSETS, "emoji-mmdit-eval.txt")
EMOJI_CALIBRATION_PROMPTS = os.path.join(ASSETS, "emoji-mmdit-calibration.txt")
# models with their own vocabulary, by pipeline class: (evaluation set, calibration set)
_OWN_SETS = {"EmojiMMDiTPipeline": (EMOJI_EVAL_PROMPTS, EMOJI_CALIBRATION_PROMPTS)}
MAX_PROMPT_CHARS = 400  # T5 encoders of these families read 120 to 512 tokens: a prompt past this is not one
CATEGORIES = ("objects", "scenes", "text rendering", "counts")


def check_prompt(prompt, where: str = "prompt") -> str:
    """`prompt` stripped, or `ValueError` naming what is wrong with it (`where` says which one it is)."""
    if not isinstance(prompt, str):
        raise ValueError(f"{where} is {type(prompt).__name__}, not text: give a prompt string")
    text = prompt.strip()
    if not text:
        raise ValueError(f"{where} is empty: a text-to-image model needs a prompt")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"{where} has {len(text)} characters: allowed 1..{MAX_PROMPT_CHARS}")
    if any(ord(c) < 32 for c in text):
        raise ValueError(f"{where} holds a control character: give plain text on one line")
    return text


def load_prompts(path: str = EVAL_PROMPTS, limit: int | None = None) -> list[str]:
    """The prompts of a prompt-set file, in order (the first `limit` with `limit`)."""
    if limit is not None and limit < 1:
        raise ValueError(f"limit={limit}: must be >= 1")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"prompt set {os.path.basename(path)!r} unreadable: {type(e).__name__}") from None
    prompts = [
        check_prompt(line, f"{os.path.basename(path)} line {i}")
        for i, line in enumerate(lines, 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not prompts:
        raise ValueError(f"prompt set {os.path.basename(path)!r} has no prompts")
    return prompts[:limit] if limit is not None else prompts


def samples(prompts: list[str], seeds: list[int]) -> list[tuple[str, int]]:
    """Every (prompt, seed): what each method of an experiment generates, the same for all."""
    if not prompts or not seeds:
        raise ValueError(f"{len(prompts)} prompts and {len(seeds)} seeds: give at least one of each")
    return [(check_prompt(p), int(s)) for p in prompts for s in seeds]


def prompt_set(pipe, split: str = "eval") -> str:
    """The prompt-set file a model is evaluated ("eval") or calibrated ("calibration") on: the embedded MMDiT's own
    (its vocabulary is the caption grammar's), the shipped general sets for every other text model."""
    if split not in ("eval", "calibration"):
        raise ValueError(f"split={split!r}; allowed: 'eval', 'calibration'")
    own = _OWN_SETS.get(type(pipe).__name__)
    if own:
        return own[split == "calibration"]
    return EVAL_PROMPTS if split == "eval" else CALIBRATION_PROMPTS


def example_prompts(pipe, count: int = 8) -> list[str]:
    """Prompts the app offers for a text model: its evaluation set's, spread over the set (every category)."""
    prompts = load_prompts(prompt_set(pipe, "eval"))
    step = max(1, len(prompts) // count)
    return prompts[::step][:count]
