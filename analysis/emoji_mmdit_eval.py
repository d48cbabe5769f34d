"""Does the embedded text-to-image model draw what the caption says, and what does FORA change?
`python -m analysis.emoji_mmdit_eval --out assets/emoji-mmdit/eval.json`

Held-out captions (combinations never seen in training, `embedded.emoji_mmdit.captions.held_out_captions`), one seed
each, judged by checks that do not use the model (`analysis.metrics.prompt_following`): the object, the background
colour, the position, the size and the count. Reported: the checks on renders of the same captions (their ceiling),
uncached, FORA at each interval and the calibrated plans at N=3's cost, with PSNR/SSIM against the uncached image of
the same seed, and FORA N=3 with the text stream's MLP computed every step (what caching the context stream costs);
one image's time on `--threads` CPU threads (median of timed calls after a warm-up).
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from analysis.calibrate.fit import calibrate
from analysis.metrics.prompt_following import CHECKS, accuracies, check_scene
from analysis.metrics.quality import psnr, ssim
from embedded.emoji.render import render_glyphs
from embedded.emoji_mmdit.captions import held_out_captions
from embedded.emoji_mmdit.classifier import load_object_classifier
from embedded.emoji_mmdit.scenes import render_scene
from fora import CachePlan, ForaConfig, apply_fora, full_steps, remove_fora
from fora.apply import find_blocks
from fora.loading import load_pipeline

CHUNK = 64  # captions per pipeline call (every caption is padded to the same length: batching changes nothing)


def sample(pipe, scenes, steps: int, guidance: float, seed: int) -> np.ndarray:
    """One image per scene, caption i with seed `seed + i` whatever the batch."""
    out = []
    for lo in range(0, len(scenes), CHUNK):
        part = scenes[lo : lo + CHUNK]
        gens = [torch.Generator().manual_seed(seed + lo + i) for i in range(len(part))]
        out.append(
            pipe(
                [s.caption for s in part],
                num_inference_steps=steps,
                guidance_scale=guidance,
                generator=gens,
                output_type="np",
            ).images
        )
    return np.concatenate(out)


def score(images, scenes, classifier, reference=None) -> dict:
    checks = [check_scene(im, s, classifier) for im, s in zip(images, scenes)]
    row = {name: acc["right"] for name, acc in accuracies(checks).items()}
    if reference is not None:
        row["psnr"] = float(np.mean([min(psnr(a, b), 100.0) for a, b in zip(images, reference)]))
        row["ssim"] = float(np.mean([ssim(a, b) for a, b in zip(images, reference)]))
    return row


def time_one_image(pipe, steps: int, guidance: float, repeats: int = 5) -> dict:
    prompt = "a small cat on the left on a red background"
    run = lambda: pipe(prompt, num_inference_steps=steps, guidance_scale=guidance, output_type="np")  # noqa: E731
    run()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(times)), "min_s": float(min(times)), "max_s": float(max(times)), "n": repeats}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="emoji-mmdit")
    p.add_argument("--captions", type=int, default=256, help="held-out captions, one seed each")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--guidance", type=float, default=None)
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5, 7])
    p.add_argument("--plan-interval", type=int, default=3, help="the calibrated plans' cost: FORA N's")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="JSON to write")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")  # the card's time is a CPU time
    pipe.set_progress_bar_config(disable=True)
    from fora.loading import MODELS

    spec = MODELS.get(args.model)
    steps = args.steps or (spec.default_steps if spec else 28)
    guidance = args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0)
    classifier = load_object_classifier()
    scenes = held_out_captions(args.captions)
    result = {
        "model": args.model,
        "steps": steps,
        "guidance": guidance,
        "captions": len(scenes),
        "rows": [],
        "threads": args.threads,
    }

    def save():
        if args.out:  # after every row: a long run stopped part-way keeps what it measured
            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            with open(args.out + ".tmp", "w") as f:
                json.dump(result, f, indent=1)
            os.replace(args.out + ".tmp", args.out)

    def log(name, row):
        result["rows"].append({"setting": name, **row})
        save()
        cells = " ".join(f"{k} {row[k]:.3f}" for k in (*CHECKS, "psnr", "ssim") if row.get(k) is not None)
        print(f"{name:>28}: {cells}", flush=True)

    rng, glyphs = np.random.default_rng(args.seed + 7), render_glyphs()
    renders = np.stack([render_scene(s, rng, 32, glyphs) for s in scenes]) / 255.0
    log("renders (checks' ceiling)", score(renders, scenes, classifier))
    t0 = time.perf_counter()
    base = sample(pipe, scenes, steps, guidance, args.seed)
    result["uncached_batch_s"] = round(time.perf_counter() - t0, 1)
    log("uncached", score(base, scenes, classifier))
    num_blocks = len(find_blocks(pipe.transformer))

    def cached(name, config):
        apply_fora(pipe, config)
        try:
            images = sample(pipe, scenes, steps, guidance, args.seed)
        finally:
            remove_fora(pipe)
        log(name, score(images, scenes, classifier, base))

    for n in args.intervals:
        cached(f"FORA N={n}", ForaConfig(interval=n))
    n = args.plan_interval
    fora_plan = CachePlan.fora(steps, n, num_blocks, kinds=("attn", "mlp"))
    every_step = [list(range(steps)) for _ in range(num_blocks)]  # a plan names every kind: this one always computes
    plan = CachePlan(steps, {**fora_plan.steps, "context_mlp": every_step}, name=f"fora N={n}, text MLP computed")
    cached(f"FORA N={n}, text MLP computed", ForaConfig(plan=plan))
    for order in (0, 1):
        plan = calibrate(pipe, steps, n, order, guidance)
        result.setdefault("plans", {})[f"o{order}"] = {"steps": plan.shared_steps}
        cached(f"calibrated-o{order} at N={n}'s cost", ForaConfig(plan=plan))
    result["full_steps_fora"] = full_steps(steps, n)
    result["one_image"] = time_one_image(pipe, steps, guidance)
    print(f"one {steps}-step image on {args.threads} threads: {result['one_image']['median_s']:.3f} s (median)")
    if args.out:
        save()
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
