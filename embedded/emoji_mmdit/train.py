"""Train the embedded text-to-image MMDiT: `python -m embedded.emoji_mmdit.train --out assets/emoji-mmdit`.

Recipe: pixel-space 32x32, SD3's MMDiT (`SD3Transformer2DModel`, patch 2, RMS query/key norm) with a 2-layer CLIP
text encoder trained jointly from scratch; rectified flow (x_t = (1 - s) x0 + s noise, target noise - x0) with
SD3's logit-normal sampling of s; AdamW with linear warm-up, gradient clipping, EMA of both networks (the shipped
weights), 10% of captions dropped to the empty prompt for classifier-free guidance. The training scenes are
rendered once per session (`scenes.render_dataset`, data seed `--data-seed`; never a held-out combination).

Resumable: the full state (weights, EMA, optimizer, step) goes to --state every --save-every seconds; a new
session with the same --state resumes at the same step with the same weights, EMA and optimizer (the batches drawn
from then on differ from an uninterrupted run's: the sampler is re-seeded with the step). Without a state file (a
fresh clone: the state is not committed), training resumes from the EMA weights in --out with a fresh optimizer and
warm-up.
"""

import argparse
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel

from embedded.training import run_steps

from .pipeline import DEFAULT_GUIDANCE, DEFAULT_STEPS, EmojiMMDiTPipeline
from .scenes import render_dataset
from .text import MAX_LENGTH, build_text_encoder, build_tokenizer

PREVIEW = [
    "a cat",
    "a small dog on the left on a blue background",
    "a large pizza on a yellow background",
    "two star on a black background",
    "a rocket and a ghost",
    "a small fox at the top on a white background",
    "a heart on a green background",
    "an avocado at the bottom",
]


def build_transformer(layers: int = 6, width: int = 128, heads: int = 4, text_width: int = 128):
    return SD3Transformer2DModel(
        sample_size=32,
        patch_size=2,
        in_channels=3,
        out_channels=3,
        num_layers=layers,
        attention_head_dim=width // heads,
        num_attention_heads=heads,
        joint_attention_dim=text_width,
        caption_projection_dim=width,
        pooled_projection_dim=text_width,
        pos_embed_max_size=16,
        qk_norm="rms_norm",
    )


def build_pipeline(transformer, text_encoder, tokenizer) -> EmojiMMDiTPipeline:
    return EmojiMMDiTPipeline(transformer, FlowMatchEulerDiscreteScheduler(shift=1.0), text_encoder, tokenizer)


def flow_loss(nets, x0, ids, generator) -> torch.Tensor:
    """Rectified-flow MSE at logit-normal(0, 1) noise levels."""
    s = torch.sigmoid(torch.randn(x0.shape[0], device=x0.device, generator=generator))
    noise = torch.randn(x0.shape, device=x0.device, generator=generator)
    xt = (1 - s.view(-1, 1, 1, 1)) * x0 + s.view(-1, 1, 1, 1) * noise
    text = nets["text_encoder"](ids)
    pred = nets["transformer"](
        hidden_states=xt,
        encoder_hidden_states=text.last_hidden_state,
        pooled_projections=text.text_embeds,
        timestep=s * 1000,
        return_dict=False,
    )[0]
    return F.mse_loss(pred, noise - x0)


@torch.no_grad()
def sample_grid(pipe, path: str, per_prompt: int = 8, steps: int = DEFAULT_STEPS, guidance: float = DEFAULT_GUIDANCE):
    """One row of `per_prompt` samples for each PREVIEW caption."""
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    images = pipe(
        PREVIEW,
        num_images_per_prompt=per_prompt,
        num_inference_steps=steps,
        guidance_scale=guidance,
        generator=g,
        output_type="np",
    ).images
    images = (images * 255).round().astype(np.uint8).reshape(len(PREVIEW), per_prompt, 32, 32, 3)
    grid = images.transpose(0, 2, 1, 3, 4).reshape(len(PREVIEW) * 32, per_prompt * 32, 3)
    Image.fromarray(grid).resize((grid.shape[1] * 2, grid.shape[0] * 2), Image.Resampling.NEAREST).save(path)


def main(args):
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    os.makedirs(args.out, exist_ok=True)
    log_path = os.path.join(args.out, "training_log.json")
    log = json.load(open(log_path)) if os.path.exists(log_path) and not args.fresh else {"sessions": [], "losses": []}
    log["settings"] = {k: v for k, v in vars(args).items() if k not in ("out", "state", "fresh", "device")}

    tokenizer = build_tokenizer()

    def networks():
        return torch.nn.ModuleDict(
            {
                "transformer": build_transformer(args.layers, args.width, args.heads, args.text_width),
                "text_encoder": build_text_encoder(len(tokenizer), args.text_width, args.text_layers, args.heads),
            }
        ).to(device)

    nets, ema = networks(), networks().requires_grad_(False)
    opt = torch.optim.AdamW(nets.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.99))
    step = warmup_from = 0
    if os.path.exists(args.state) and not args.fresh:
        state = torch.load(args.state, map_location=device)
        nets.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["opt"])
        step = state["step"]
        warmup_from = step - args.warmup  # the optimizer state is intact: no new warm-up
        print(f"resumed full state from {args.state} at step {step}")
    elif os.path.exists(os.path.join(args.out, "transformer")) and not args.fresh:
        shipped = EmojiMMDiTPipeline.from_pretrained(args.out)
        weights = {"transformer": shipped.transformer, "text_encoder": shipped.text_encoder}
        for name, module in weights.items():
            nets[name].load_state_dict(module.state_dict())
            ema[name].load_state_dict(module.state_dict())
        step = warmup_from = log.get("total_steps", 0)
        print(
            f"resumed from the EMA weights in {args.out} at step {step} (fresh optimizer, {args.warmup}-step warm-up)"
        )
    else:
        ema.load_state_dict(nets.state_dict())
    nets.train()

    t0 = time.time()
    images, scenes = render_dataset(args.scenes, seed=args.data_seed)
    data = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0).to(device)
    ids = tokenizer(
        [s.caption for s in scenes], padding="max_length", max_length=MAX_LENGTH, return_tensors="pt"
    ).input_ids.to(device)
    empty = tokenizer("", padding="max_length", max_length=MAX_LENGTH, return_tensors="pt").input_ids.to(device)
    print(f"rendered {len(data)} training scenes in {time.time() - t0:.1f}s")

    gen = torch.Generator(device).manual_seed(args.seed + step)
    session = {
        "start_step": step,
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "settings": log["settings"],  # this session's recipe (the card reads it)
    }
    start = time.time()

    def save(step):
        pipe = build_pipeline(ema["transformer"], ema["text_encoder"], tokenizer)
        pipe.save_pretrained(args.out, safe_serialization=True)
        session.update(end_step=step, seconds=round(time.time() - start, 1))
        log["total_steps"] = step
        log["total_seconds"] = round(
            sum(s.get("seconds", 0) for s in log["sessions"] if s is not session) + session["seconds"], 1
        )
        json.dump(log, open(log_path, "w"), indent=1)
        os.makedirs(os.path.dirname(args.state) or ".", exist_ok=True)
        torch.save(
            {"model": nets.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step},
            args.state + ".tmp",
        )
        os.replace(args.state + ".tmp", args.state)

    log["sessions"].append(session)
    deadline = start + args.minutes * 60 if args.minutes else math.inf

    def batch_loss():
        idx = torch.randint(0, len(data), (args.batch_size,), device=device, generator=gen)
        drop = torch.rand(args.batch_size, device=device, generator=gen) < args.caption_dropout
        return flow_loss(nets, data[idx], torch.where(drop[:, None], empty, ids[idx]), gen)

    step = run_steps(nets, ema, opt, batch_loss, args, step, warmup_from, log, save, deadline, mininterval=30)
    save(step)
    ema.eval()
    pipe = build_pipeline(ema["transformer"], ema["text_encoder"], tokenizer).to(device)
    pipe.set_progress_bar_config(disable=True)
    sample_grid(pipe, os.path.join(args.out, "samples.png"))
    print(f"done: step {step}, {session['seconds']} s this session; weights and samples.png in {args.out}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="assets/emoji-mmdit", help="pipeline folder to write")
    p.add_argument("--state", default="runs/emoji-mmdit/state.pt", help="full training state for exact resume")
    p.add_argument("--steps", type=int, default=40000, help="total optimizer steps over all sessions")
    p.add_argument("--minutes", type=float, default=0, help="stop after this many minutes (0: no limit)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=300, help="linear warm-up steps")
    p.add_argument("--ema", type=float, default=0.999, help="EMA decay of the shipped weights")
    p.add_argument("--scenes", type=int, default=60000, help="training scenes rendered per session")
    p.add_argument("--caption-dropout", type=float, default=0.1, help="share of captions replaced by ''")
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--text-width", type=int, default=128)
    p.add_argument("--text-layers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-seed", type=int, default=1, help="seed of the rendered training scenes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("--save-every", type=float, default=300, help="seconds between checkpoints")
    p.add_argument("--fresh", action="store_true", help="ignore an existing state; start from scratch")
    return p.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
