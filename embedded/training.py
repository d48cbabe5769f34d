"""The optimizer loop both embedded models train with (`embedded/emoji/train.py`, `embedded/emoji_mmdit/train.py`):
linear warm-up of the learning rate, gradient clipping at 1.0, an EMA of the weights (decay min(ema, (1 + step) /
(10 + step))), the mean loss of every 50 steps logged, and a checkpoint every `save_every` seconds."""

import time

import numpy as np
import torch
from tqdm.auto import tqdm


def run_steps(
    model,
    ema,
    opt,
    batch_loss,
    args,
    step: int,
    warmup_from: int,
    log: dict,
    save,
    deadline: float,
    mininterval: float = 0.1,
) -> int:
    """Optimizer steps from `step` until `args.steps` or `deadline`; `batch_loss()` draws a batch and returns its
    loss, `save(step)` writes a checkpoint. Returns the step reached (the caller saves once more)."""
    running, last_save = [], time.time()
    bar = tqdm(total=args.steps, initial=step, desc="train", dynamic_ncols=True, mininterval=mininterval)
    while step < args.steps and time.time() < deadline:
        lr = args.lr * min(1.0, (step - warmup_from + 1) / args.warmup)
        for group in opt.param_groups:
            group["lr"] = lr
        loss = batch_loss()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - decay)
        step += 1
        running.append(loss.item())
        bar.update(1)
        if step % 50 == 0:
            log["losses"].append([step, round(float(np.mean(running)), 5)])
            bar.set_postfix(loss=f"{np.mean(running):.4f}", lr=f"{lr:.1e}")
            running = []
        if time.time() - last_save > args.save_every:
            save(step)
            last_save = time.time()
    bar.close()
    return step
