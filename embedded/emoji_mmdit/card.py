"""Write the model card `assets/emoji-mmdit/README.md` from the measured files next to the weights:
`training_log.json` (written by training) and `eval.json` (written by `python -m analysis.emoji_mmdit_eval`).
`python -m embedded.emoji_mmdit.card`; every number in the card comes from those files."""

import argparse
import json
import os

from embedded.emoji.card import training_summary

from .captions import COLOUR_NAMES, HELD_OUT_COLOUR, HELD_OUT_POSITION, held_out_captions, vocabulary

CHECK_NAMES = ("object", "colour", "position", "size", "count")
TARGETS = {"object": 0.90, "colour": 0.95, "position": 0.85}  # issue 20's targets for the uncached model


def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def render_card(folder: str) -> str:
    log = json.load(open(os.path.join(folder, "training_log.json")))
    ev = json.load(open(os.path.join(folder, "eval.json")))
    cfg = json.load(open(os.path.join(folder, "transformer", "config.json")))
    text_cfg = json.load(open(os.path.join(folder, "text_encoder", "config.json")))
    size = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(folder)
        for f in files
        if f.endswith(".safetensors")
    )
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    final_loss, sessions = training_summary(log)
    rows = {r["setting"]: r for r in ev["rows"]}
    header = "| setting | " + " | ".join(CHECK_NAMES) + " | PSNR vs uncached | SSIM |"
    lines = [header, "|" + "---|" * (len(CHECK_NAMES) + 3)]
    claims = [0] * len(CHECK_NAMES)  # how many of the evaluated captions make each claim
    for scene in held_out_captions(ev["captions"]):
        made = (True, scene.colour is not None, scene.position is not None, scene.size is not None)
        for i, m in enumerate((*made, scene.kind == "count")):
            claims[i] += int(m)
    lines.append("| captions making the claim | " + " | ".join(str(c) for c in claims) + " | | |")
    for r in ev["rows"]:
        psnr = f"{r['psnr']:.2f} dB" if r.get("psnr") is not None else "-"
        ssim = f"{r['ssim']:.4f}" if r.get("ssim") is not None else "-"
        lines.append(
            f"| {r['setting']} | " + " | ".join(_pct(r.get(c)) for c in CHECK_NAMES) + f" | {psnr} | {ssim} |"
        )
    uncached = rows.get("uncached", {})
    verdicts = ", ".join(
        f"{name} {_pct(uncached.get(name))} ({'meets' if (uncached.get(name) or 0) >= goal else 'below'} the "
        f"{goal:.0%} target)"
        for name, goal in TARGETS.items()
    )
    fora3 = rows.get("FORA N=3", {})
    within = [
        name
        for name in ("object", "colour", "position")
        if fora3.get(name) is not None and uncached.get(name) is not None and uncached[name] - fora3[name] <= 0.05
    ]
    one = ev["one_image"]
    halves = []
    for name, n in zip(CHECK_NAMES, claims):
        p = uncached.get(name)
        if p is not None and n:
            halves.append(f"{name} +-{100 * 1.96 * (max(p * (1 - p), 1 / n) / n) ** 0.5:.1f}")
    spread = (
        "How far these shares are resolved: one caption is "
        f"{100 / ev['captions']:.1f} points of the object check, and the 95% binomial half-widths at the uncached "
        f"rates are {', '.join(halves)} points (n as in the first row; a floor of one caption where a share is 0 "
        "or 1): rows closer than that are not told apart by these captions, and PSNR, over every caption, ranks "
        "the cached settings."
    )
    ctx = next((r for r in ev["rows"] if r["setting"].endswith("text MLP computed")), None)
    same = ctx is not None and fora3 and ctx.get("psnr") == fora3.get("psnr") and ctx.get("ssim") == fora3.get("ssim")
    context_note = (
        "Here it costs nothing: the two rows are the same images. On a FORA reuse step every block's joint "
        "attention is reused, and the text stream reaches the image only through the next block's attention, so "
        "a text MLP output computed on a reuse step is read by nothing; under FORA's shared schedule caching the "
        "context stream changes no pixel."
        if same
        else ""
    )
    st = log.get("settings", {})
    held_colour = ", ".join(f"{e} {c}" for e, c in list(HELD_OUT_COLOUR.items())[:6])
    held_position = ", ".join(f"{e} {p}" for e, p in list(HELD_OUT_POSITION.items())[:4])
    return f"""# emoji-mmdit: the embedded text-to-image model of the FORA explorer

A small text-to-image diffusion transformer trained by this project, so that what FORA does to text conditioning
can be seen offline on a CPU: diffusers' `SD3Transformer2DModel` (MMDiT: joint attention over image and text
tokens, a text stream with its own MLP) in pixel space, with a small CLIP text encoder trained with it from scratch.
FORA caches it through the same code path as Stable Diffusion 3.

![samples: one row per caption, 8 seeds each](samples.png)

Rows (training's preview captions, `embedded/emoji_mmdit/train.py`): a cat; a small dog on the left on a blue
background; a large pizza on a yellow background; two star on a black background; a rocket and a ghost; a small fox
at the top on a white background; a heart on a green background; an avocado at the bottom.

## Data and licence
32x32 RGB scenes of the 32 emoji of `emoji-dit` (Noto Color Emoji, SIL Open Font License 1.1), each with its caption
from a small grammar (`embedded/emoji_mmdit/captions.py`; render rules in `scenes.py`): one emoji with an optional
size (small, large), position (on the left, on the right, at the top, at the bottom, in the middle) and background
colour ({", ".join(COLOUR_NAMES)}); "two {{emoji}}"; "a {{emoji}} and a {{emoji}}" (the first on the left). The
vocabulary has {len(vocabulary())} words. {st.get("scenes", 0):,} training scenes per session (data seed
{st.get("data_seed")}). Held out: one colour
and one position per emoji (e.g. {held_colour}; {held_position}; all in `HELD_OUT_COLOUR`/`HELD_OUT_POSITION`):
no training caption pairs an emoji with them. Evaluated on {ev["captions"]} held-out captions (seed 5005).

## Architecture
Pixel space (no VAE), 32x32x3 in [-1, 1]; patch 2 (256 image tokens); {cfg["num_layers"]} `JointTransformerBlock`s
of width {width}, {cfg["num_attention_heads"]} heads, RMS query/key norm; text: a {text_cfg["num_hidden_layers"]}-layer
CLIP text encoder of width {text_cfg["hidden_size"]} over a word-level tokenizer (16 tokens with <bos>/<eos>), its
hidden states the context stream and its pooled embedding the timestep conditioning, as in SD3.
{size / 2**20:.1f} MiB of float32 safetensors in all.

## Training
Rectified flow (x_t = (1 - s) x0 + s noise, target noise - x0, s logit-normal as in SD3), AdamW (lr {st.get("lr")},
{st.get("warmup")}-step warm-up, betas 0.9/0.99), gradient clipping 1.0, EMA {st.get("ema")} of both networks (the
shipped weights), {st.get("caption_dropout", 0):.0%} of captions dropped to the empty prompt for guidance.
`python -m embedded.emoji_mmdit.train --out assets/emoji-mmdit` (resumable; CUDA when present).

- optimizer steps: {log["total_steps"]}; wall time {log["total_seconds"] / 3600:.2f} h; sessions: {sessions}
- final training loss (mean of the last 50 steps): {final_loss:.4f}

## Sampling defaults
`FlowMatchEulerDiscreteScheduler` (shift 1), {ev["steps"]} steps, guidance {ev["guidance"]}.

## Prompt following and FORA (`python -m analysis.emoji_mmdit_eval`)
Checks that do not use the model (`analysis/metrics/prompt_following.py`): the object by a classifier trained on
object crops of renders of another data seed (`embedded/emoji_mmdit/classifier.py`); the background colour by the
corners' nearest named colour; the position by the object mask's centroid; the size by its area; the count by its
blobs. Each share is over the held-out captions that make that claim, one seed each; the first row is the same
checks on renders of the same captions, the most a model can score. PSNR/SSIM against the uncached image of the
same caption and seed.

{chr(10).join(lines)}

Uncached: {verdicts}. FORA N=3 within 5 points of uncached on: {", ".join(within) or "none"}. {spread}
"FORA N=3, text MLP computed" recomputes the text stream's MLP every step (the joint attention, which returns both
streams, is cached as one module): the difference to "FORA N=3" is what caching the context stream's MLP costs.
{context_note}

One {ev["steps"]}-step image, uncached, on {ev.get("threads", 2)} CPU threads: {one["median_s"]:.2f} s (median of
{one["n"]} timed calls after a warm-up; range {one["min_s"]:.2f}-{one["max_s"]:.2f} s). The {ev["captions"]}
uncached images took {ev["uncached_batch_s"]:.0f} s in batches of 64.
"""


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", default=os.path.join("assets", "emoji-mmdit"))
    args = p.parse_args()
    card = render_card(args.folder)
    with open(os.path.join(args.folder, "README.md"), "w") as f:
        f.write(card)
    print(f"wrote {os.path.join(args.folder, 'README.md')}")
