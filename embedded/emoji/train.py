"""Train the embedded emoji DiT: `python -m embedded.emoji.train --out assets/emoji-dit`.

Recipe (chosen for convergence per CPU second, see the model card): pixel-space 32x32, patch 2, v-prediction on a
cosine noise schedule, min-SNR-5 loss weighting, AdamW with linear warm-up, EMA of the weights, 10% label dropout
(built into diffusers' label embedding) for classifier-free guidance, data pre-rendered once per run.

Resumable: the full state (weights, EMA, optimizer, step) goes to --state every --save-every seconds; without a
state file, training resumes from the EMA weights already in --out (fresh optimizer, short warm-up).
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, DDPMScheduler, DiTTransformer2DModel

from embedded.training import run_steps

from .classes import LABELS, NUM_CLASSES
from .pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, EmojiDiTPipeline
from .render import render_dataset

SCHEDULE = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")


def build_transformer(layers: int = 6, width: int = 128, heads: int = 4, patch: int = 2) -> DiTTransformer2DModel:
    return DiTTransformer2DModel(
        num_attention_heads=heads,
        attention_head_dim=width // heads,
        in_channels=3,
        out_channels=3,
        num_layers=layers,
        sample_size=32,
        patch_size=patch,
        num_embeds_ada_norm=NUM_CLASSES,
    )


def build_pipeline(transformer: DiTTransformer2DModel) -> EmojiDiTPipeline:
    scheduler = DDIMScheduler(**SCHEDULE, timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True)
    return EmojiDiTPipeline(transformer, scheduler, id2label=dict(enumerate(LABELS)))


def vpred_loss(model, x0, labels, alphas_cumprod, generator, snr_gamma: float = 5.0) -> torch.Tensor:
    """v-prediction MSE weighted by min(SNR, gamma) / (SNR + 1) (min-SNR weighting for v targets)."""
    t = torch.randint(0, len(alphas_cumprod), (x0.shape[0],), device=x0.device, generator=generator)
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    a = alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = a.sqrt() * x0 + (1 - a).sqrt() * noise
    v = a.sqrt() * noise - (1 - a).sqrt() * x0
    pred = model(xt, timestep=t, class_labels=labels).sample
    snr = a.flatten() / (1 - a.flatten())
    weight = snr.clamp(max=snr_gamma) / (snr + 1)
    return (weight * F.mse_loss(pred, v, reduction="none").mean(dim=(1, 2, 3))).mean()


@torch.no_grad()
def sample_grid(
    pipe: EmojiDiTPipeline,
    path: str,
    per_class: int = 4,
    steps: int = DEFAULT_STEPS,
    guidance: float = DEFAULT_GUIDANCE,
):
    """A grid with one row of `per_class` samples for each class, classes in id order, 4 classes per row."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]
    images = pipe(labels, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np").images
    images = (images * 255).round().astype(np.uint8).reshape(NUM_CLASSES // 4, 4 * per_class, 32, 32, 3)
    grid = images.transpose(0, 2, 1, 3, 4).reshape(NUM_CLASSES // 4 * 32, 4 * per_class * 32, 3)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def main(args):
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "training_log.json")
    log = json.load(open(log_path)) if os.path.exists(log_path) and not args.fresh else {"sessions": [], "losses": []}

    model = build_transformer(args.layers, args.width, args.heads, args.patch).to(device)
    ema = build_transformer(args.layers, args.width, args.heads, args.patch).to(device).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step, warmup_from = 0, 0
    if os.path.exists(args.state) and not args.fresh:
        state = torch.load(args.state, map_location=device)
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = warmup_from = state["step"]
        warmup_from -= args.warmup  # the optimizer state is intact: no new warm-up
        print(f"resumed full state from {args.state} at step {step}")
    elif os.path.exists(os.path.join(args.out, "transformer")) and not args.fresh:
        weights = DiTTransformer2DModel.from_pretrained(args.out, subfolder="transformer").state_dict()
        model.load_state_dict(weights)
        ema.load_state_dict(weights)
        step = warmup_from = log.get("total_steps", 0)
        print(f"resumed from EMA weights in {args.out} at step {step} (fresh optimizer, {args.warmup}-step warm-up)")
    else:
        ema.load_state_dict(model.state_dict())
    model.train()

    t0 = time.time()
    images, labels = render_dataset(args.per_class, seed=args.data_seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    targets = torch.from_numpy(labels).to(device)
    print(f"rendered {len(data)} training images in {time.time() - t0:.1f}s")

    alphas_cumprod = DDPMScheduler(**SCHEDULE).alphas_cumprod.to(device)
    gen = torch.Generator(device).manual_seed(args.seed + step)
    session = {"start_step": step, "device": device, "threads": torch.get_num_threads(), "batch_size": args.batch_size}
    start = time.time()

    def save(step):
        pipe = build_pipeline(ema)
        pipe.save_pretrained(args.out, safe_serialization=True)
        session.update(end_step=step, seconds=round(time.time() - start, 1))
        log["total_steps"] = step
        log["total_seconds"] = round(
            sum(s.get("seconds", 0) for s in log["sessions"] if s is not session) + session["seconds"], 1
        )
        json.dump(log, open(log_path, "w"), indent=1)
        os.makedirs(os.path.dirname(args.state) or ".", exist_ok=True)
        torch.save(
            {"model": model.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step},
            args.state + ".tmp",
        )
        os.replace(args.state + ".tmp", args.state)

    log["sessions"].append(session)
    deadline = start + args.minutes * 60 if args.minutes else math.inf

    def batch_loss():
        idx = torch.randint(0, len(data), (args.batch_size,), device=device, generator=gen)
        return vpred_loss(model, data[idx], targets[idx], alphas_cumprod, gen)

    step = run_steps(model, ema, opt, batch_loss, args, step, warmup_from, log, save, deadline)
    save(step)
    ema.eval()
    pipe = build_pipeline(ema).to(device)
    pipe.set_progress_bar_config(disable=True)
    sample_grid(pipe, os.path.join(args.out, "samples.png"))
    print(f"done: step {step}, {session['seconds']} s this session; weights and samples.png in {args.out}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/emoji-dit", help="pipeline folder to write (and resume from)")
    p.add_argument("--state", default="runs/emoji-dit/state.pt", help="full training state for exact resume")
    p.add_argument("--steps", type=int, default=40000, help="total optimizer steps over all sessions")
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0: no limit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200, help="linear warm-up steps (also after a resume from EMA)")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--per-class", type=int, default=800, help="pre-rendered training images per class")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--patch", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=1, help="seed of the rendered training set (held-out uses others)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--save-every", type=float, default=300, help="seconds between checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore existing weights and state; start from scratch")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
