"""Write the model card `assets/emoji-dit/README.md` from the measured files next to the weights:
`training_log.json` (written by training) and `eval.json` (written by `python -m analysis.emoji_eval`).
`python -m embedded.emoji.card`; every number in the card comes from those files."""

import argparse
import json
import os

from .classes import EMOJI_CLASSES


def training_summary(log: dict) -> tuple[float, str]:
    """(the mean loss of the last logged steps, one phrase per training session) from a `training_log.json`."""
    final_loss = log["losses"][-1][1] if log["losses"] else float("nan")
    sessions = "; ".join(
        f"steps {s['start_step']}-{s.get('end_step', '?')} on {s['device']} ({s['threads']} threads, "
        f"batch {s['batch_size']}, {s.get('seconds', 0) / 60:.0f} min)"
        for s in log["sessions"]
    )
    return final_loss, sessions


def render_card(folder: str) -> str:
    log = json.load(open(os.path.join(folder, "training_log.json")))
    ev = json.load(open(os.path.join(folder, "eval.json")))
    cfg = json.load(open(os.path.join(folder, "transformer", "config.json")))
    sched = json.load(open(os.path.join(folder, "scheduler", "scheduler_config.json")))
    weights = os.path.getsize(os.path.join(folder, "transformer", "diffusion_pytorch_model.safetensors"))
    default = ev["settings"][0]
    width = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    final_loss, sessions = training_summary(log)
    grid_rows = "\n".join(
        f"| {s['steps']} | {s['guidance']} | {s['accuracy']:.3f} | {s['single_image_seconds']:.3f} s |"
        for s in ev["settings"]
    )
    fora_rows = "\n".join(
        f"| {r['interval']} | {r['accuracy']:.3f} | {r['psnr']:.2f} dB | {r['ssim']:.4f} | {r['batch_seconds']:.1f} s |"
        for r in default["fora"]
    )
    worst = sorted(default["per_class_accuracy"].items(), key=lambda kv: kv[1])[:6]
    table3 = _table3_section(os.path.join(folder, "table3", "table.json"))
    classes = ", ".join(f"{i} {name} {char}" for i, (name, char) in enumerate(EMOJI_CLASSES))
    return f"""# emoji-dit: the embedded model of the FORA explorer

A small class-conditional diffusion transformer trained by this project so that the FORA engine, the analysis
and the app run offline on a laptop CPU in seconds. It has the block type of DiT-XL/2 (diffusers
`DiTTransformer2DModel`, adaLN-Zero), so FORA caches it through exactly the code path of the real model.

![samples: 4 per class, classes in id order, 4 classes per row](samples.png)

## Data and licence
32x32 RGB renders of 32 emoji from the Noto Color Emoji font (Debian `fonts-noto-color-emoji`, SIL Open Font
License 1.1), drawn by `embedded/emoji/render.py` with augmentation: scale 0.55-0.95 of the image, rotation +-20
degrees, horizontal flip, random position, solid or two-colour gradient background of random colour. Training set:
800 renders per class (data seed 1), rendered once per training session.

Classes (id, name): {classes}; id 32 is the null class used for classifier-free guidance.

## Architecture and why
Pixel space (no VAE), 32x32x3 in [-1, 1]; patch 2 (256 tokens); {cfg["num_layers"]} blocks, width {width},
{cfg["num_attention_heads"]} heads; {weights / 2**20:.1f} MiB of float32 safetensors. Trials on the 2-core CPU
showed patch 2 learning shapes faster per CPU second than patch 4 at twice the width (patch 4 / width 256 learned
class colours but no shapes in 20 minutes); width 128 keeps one sampling step at a few milliseconds. Six blocks
is the fewest that still gives the layer x step heatmaps layers to show.

## Training
v-prediction on a cosine noise schedule ({sched["beta_schedule"]}, 1000 steps), min-SNR-5 loss weighting, AdamW
(lr 1e-3, 200-step linear warm-up, betas 0.9/0.99), gradient clipping 1.0, EMA 0.999 (the shipped weights), 10%
label dropout for guidance. `python -m embedded.emoji.train --out assets/emoji-dit` (resumable; uses CUDA when present).

- optimizer steps: {log["total_steps"]}; wall time {log["total_seconds"] / 3600:.2f} h; sessions: {sessions}
- final training loss (mean of the last 50 steps, min-SNR weighted v-MSE): {final_loss:.4f}

## Sampling defaults
DDIM, trailing timestep spacing, {default["steps"]} steps, guidance {default["guidance"]}: {"chosen from the grid below (accuracy against CPU time)" if len(ev["settings"]) > 1 else "the only setting measured so far; `python -m analysis.emoji_eval --grid 20:3 30:2 30:3 30:4.5` compares others"}.

## Quality (measured by `python -m analysis.emoji_eval`; seed {default["seed"]})
A CNN classifier trained on held-out renders (data seed 1001, never on generated images; accuracy on fresh
renders of seed 2002: {ev["classifier_render_accuracy"]:.3f}) classifies {default["per_class"]} generated samples
per class.

| steps | guidance | class accuracy | one image, uncached ({ev["torch_threads"]} CPU threads) |
|---|---|---|---|
{grid_rows}

Least recognised classes at the defaults: {", ".join(f"{k} {v:.2f}" for k, v in worst)}.

With FORA at the default settings (PSNR/SSIM against the uncached image of the same seed, mean over samples):

| N | class accuracy | PSNR | SSIM | batch of {32 * default["per_class"]} |
|---|---|---|---|---|
| 1 | {default["accuracy"]:.3f} | inf | 1 | {default["batch_seconds"]:.1f} s |
{fora_rows}
{table3}"""


def _fd(row: dict | None) -> str:
    return f"{row['fid']:.2f}" if row and row.get("fid") is not None else "-"


def _table3_section(path: str) -> str:
    """Frechet distance per (T, N) from the committed Table 3 (`python -m analysis.table`), if there is one."""
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        meta = json.load(f)
    rows = meta["rows"]
    steps = sorted({r["steps"] for r in rows})
    intervals = sorted({r["interval"] for r in rows})
    cell = {(r["steps"], r["interval"]): r for r in rows}
    head = "| T | " + " | ".join(f"N={n}" for n in intervals) + " |\n|---|" + "---|" * len(intervals)
    body = "\n".join(f"| {t} | " + " | ".join(_fd(cell.get((t, n))) for n in intervals) + " |" for t in steps)
    f = meta.get("floor")
    floor = (
        f"\nReal renders of another seed, scored the same way ({f['samples']} samples): FD {f['fid']:.2f}; FD is "
        "biased upwards at a finite sample count, so this, not 0, is what 'as good as real' reads.\n"
        if f
        else ""
    )
    n = meta["samples_per_cell"]
    samples = f"{n}" if isinstance(n, int) else ", ".join(f"{v} at T={k}" for k, v in n.items())
    return f"""
## Distribution quality (Table 3: `table3/`, {samples} samples per cell)
Frechet distance of generated samples to {meta.get("reference", "the reference set")}, in the
{"emoji classifier's feature space (lower is better; not comparable with Inception FID)" if meta["settings"]["extractor"] == "emoji" else "Inception-v3 feature space (lower is better)"}. Precision, recall, the score, class accuracy and the measured speedup of
every cell are in `table3/table.csv` and `table3/report.html`.

{head}
{body}
{floor}"""


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--folder", default="assets/emoji-dit")
    args = p.parse_args()
    text = render_card(args.folder)
    with open(os.path.join(args.folder, "README.md"), "w") as f:
        f.write(text)
    print(text)
