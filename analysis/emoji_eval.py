"""Does the embedded model draw the class it is asked for? `python -m analysis.emoji_eval`.

An honest, automatic measure: a small CNN classifier trained on *held-out renders* of the emoji (a data seed the
diffusion model never saw; never on generated images) classifies generated samples. Reported: the classifier's own
accuracy on fresh renders, the class accuracy of generated samples at the default settings, and the same with FORA
at several intervals together with PSNR/SSIM against the uncached image of the same seed.
"""

import argparse
import json
import os
import time

import numpy as np
import torch

from analysis.metrics.quality import psnr, ssim
from embedded.emoji.classes import LABELS, NUM_CLASSES
from embedded.emoji.classifier import CLASSIFIER_TEST_SEED, _to_tensor, accuracy, classify, load_or_train_classifier
from embedded.emoji.render import render_dataset
from fora import ForaConfig, apply_fora, remove_fora
from fora.loading import ASSETS, load_pipeline

# the shipped classifier, found from the repository (not the working directory: run elsewhere, a relative path
# would train a new classifier, and its accuracy would not be comparable with the published ones)
CLASSIFIER_WEIGHTS = os.path.join(ASSETS, "emoji-classifier.safetensors")


def evaluate(
    pipe,
    classifier,
    per_class: int = 8,
    steps: int = 30,
    guidance: float = 3.0,
    intervals=(2, 3, 5, 7, 10),
    seed: int = 0,
    log=print,
    baseline=None,
) -> tuple[dict, tuple]:
    """Class accuracy of generated samples uncached and with FORA; PSNR/SSIM of FORA against uncached.

    Returns the result and `(images, seconds)` of the uncached samples; pass that back as `baseline` to add FORA
    intervals to the same setting without sampling the uncached batch again.
    """
    labels = [c for c in range(NUM_CLASSES) for _ in range(per_class)]

    def sample():
        g = torch.Generator().manual_seed(seed)
        t0 = time.perf_counter()
        out = pipe(labels, num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np").images
        return out, time.perf_counter() - t0

    base, seconds = baseline if baseline is not None else sample()
    pred = classify(classifier, base)
    per_class_acc = {LABELS[c]: float(np.mean(pred[np.array(labels) == c] == c)) for c in range(NUM_CLASSES)}
    result = {
        "steps": steps,
        "guidance": guidance,
        "per_class": per_class,
        "seed": seed,
        "accuracy": float(np.mean(pred == np.array(labels))),
        "per_class_accuracy": per_class_acc,
        "batch_seconds": seconds,
        "fora": [],
    }
    log(f"uncached: accuracy {result['accuracy']:.3f} ({len(labels)} samples, {seconds:.1f}s)")
    for n in intervals:
        apply_fora(pipe, ForaConfig(interval=n))
        try:
            images, secs = sample()
        finally:
            remove_fora(pipe)
        acc = float(np.mean(classify(classifier, images) == np.array(labels)))
        p = [psnr(a, b) for a, b in zip(images, base)]
        s = [ssim(a, b) for a, b in zip(images, base)]
        row = {
            "interval": n,
            "accuracy": acc,
            "psnr": float(np.mean(p)),
            "ssim": float(np.mean(s)),
            "batch_seconds": secs,
        }
        result["fora"].append(row)
        log(f"N={n}: accuracy {acc:.3f}, PSNR {row['psnr']:.2f} dB, SSIM {row['ssim']:.4f} ({secs:.1f}s)")
    return result, (base, seconds)


def single_image_seconds(pipe, steps: int, guidance: float, repeats: int = 5) -> float:
    """Median wall time of one image (batch 1, guidance on) at the given settings."""
    times = []
    for i in range(repeats + 1):
        g = torch.Generator().manual_seed(i)
        t0 = time.perf_counter()
        pipe([i % NUM_CLASSES], num_inference_steps=steps, guidance_scale=guidance, generator=g, output_type="np")
        times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def main(args):
    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    pipe = load_pipeline(args.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    classifier, render_acc = load_or_train_classifier(args.classifier)
    if render_acc is None:
        xt, yt = render_dataset(50, seed=CLASSIFIER_TEST_SEED)
        render_acc = accuracy(classifier, _to_tensor(xt), torch.from_numpy(yt))
    print(f"classifier accuracy on held-out renders: {render_acc:.3f}")
    result = {"classifier_render_accuracy": render_acc, "torch_threads": torch.get_num_threads()}
    settings, uncached = [], {}
    for steps, guidance in args.grid:
        r, uncached[(steps, guidance)] = evaluate(pipe, classifier, args.per_class, steps, guidance, intervals=())
        r["single_image_seconds"] = single_image_seconds(pipe, steps, guidance)
        seconds = r["single_image_seconds"]
        print(f"steps {steps}, guidance {guidance}: accuracy {r['accuracy']:.3f}, one image {seconds:.3f}s")
        settings.append(r)
    # the default: the most accurate setting that makes one image within the time budget; ties go to fewer steps
    fast = [r for r in settings if r["single_image_seconds"] <= args.budget] or settings
    best = max(fast, key=lambda r: (round(r["accuracy"], 3), -r["steps"]))
    print(f"default: steps {best['steps']}, guidance {best['guidance']}; now FORA at N = {args.intervals}")
    chosen, _ = evaluate(
        pipe,
        classifier,
        args.per_class,
        best["steps"],
        best["guidance"],
        intervals=args.intervals,
        baseline=uncached[(best["steps"], best["guidance"])],
    )
    chosen["single_image_seconds"] = best["single_image_seconds"]
    result["settings"] = [chosen] + [r for r in settings if r is not best]
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


def _pair(text: str) -> tuple[int, float]:
    steps, guidance = text.split(":")
    return int(steps), float(guidance)


if __name__ == "__main__":
    p = argparse.ArgumentParser(
        prog="python -m analysis.emoji_eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="emoji-dit")
    p.add_argument(
        "--classifier",
        default=CLASSIFIER_WEIGHTS,
        help="classifier weights; trained on held-out renders and saved there when missing",
    )
    p.add_argument("--per-class", type=int, default=8)
    p.add_argument(
        "--grid",
        type=_pair,
        nargs="+",
        default=[(30, 3.0)],
        help="steps:guidance settings to evaluate; the best within --budget becomes the default",
    )
    p.add_argument("--budget", type=float, default=1.0, help="seconds allowed for one image at the default")
    p.add_argument("--intervals", type=int, nargs="+", default=[2, 3, 5, 7, 10])
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--out", default=os.path.join(ASSETS, "emoji-dit", "eval.json"))
    main(p.parse_args())
