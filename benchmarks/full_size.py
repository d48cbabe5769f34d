"""The hub models' architectures at full size, on the machine at hand: `python -m benchmarks.full_size all`.

Builds DiT-XL/2-256 (28 blocks x 1152, 16 heads, patch 2, 32x32 latent; the Stable Diffusion VAE's config) and the
PixArt-alpha-512 transformer (28 blocks, cross-attention, adaLN-single; SD VAE; a small T5 text encoder instead of
T5-XXL) with random weights (timing and memory do not depend on the weights), saves them with `save_pretrained`,
then runs each for a few steps through `python -m fora generate` and through the app's Compare handler (the folder
added with `FORA_EXTRA_MODELS`), every run in its own process: wall time and peak resident memory. Also reports the
similarity recorder's memory at 28 layers (measured on the run, and its bound for 250 steps).

Subcommands: `build`, `cli`, `app`, `recorder`, `all`; `--out` is the folder for the saved models.
Takes minutes on a 2-core CPU; not part of the test suite.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _vae(sample_size: int):
    from diffusers import AutoencoderKL

    # the config of stabilityai/sd-vae-ft-ema (what DiT-XL/2 and PixArt-alpha decode with)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=sample_size,
        scaling_factor=0.18215,
    ).eval()


def build_dit(path: str) -> None:
    import torch
    from diffusers import DDIMScheduler, DiTPipeline, DiTTransformer2DModel

    torch.manual_seed(0)
    # facebook/DiT-XL-2-256 transformer config
    transformer = DiTTransformer2DModel(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        sample_size=32,
        patch_size=2,
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_zero",
        activation_fn="gelu-approximate",
    ).eval()
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    id2label = {i: f"class {i}" for i in range(1000)}
    DiTPipeline(transformer, _vae(256), scheduler, id2label=id2label).save_pretrained(path)


def build_pixart(path: str) -> None:
    import torch
    from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from conftest import make_tokenizer

    torch.manual_seed(0)
    text_dim = 64  # a small T5 stands in for T5-XXL (4096 wide): the caption projection is its only consumer
    # PixArt-alpha/PixArt-XL-2-512x512 transformer config, except caption_channels
    transformer = PixArtTransformer2DModel(
        num_attention_heads=16,
        attention_head_dim=72,
        in_channels=4,
        out_channels=8,
        num_layers=28,
        sample_size=64,
        patch_size=2,
        caption_channels=text_dim,
        cross_attention_dim=1152,
        norm_type="ada_norm_single",
        num_embeds_ada_norm=1000,
        activation_fn="gelu-approximate",
        attention_bias=True,
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    ).eval()
    text = T5EncoderModel(
        T5Config(
            vocab_size=32,
            d_model=text_dim,
            d_ff=128,
            d_kv=16,
            num_layers=2,
            num_heads=4,
            pad_token_id=0,
            eos_token_id=1,
        )
    ).eval()
    PixArtAlphaPipeline(
        tokenizer=make_tokenizer(),
        text_encoder=text,
        vae=_vae(512),
        transformer=transformer,
        scheduler=DPMSolverMultistepScheduler(),
    ).save_pretrained(path)


MODELS = {
    "dit-xl-2-256": (build_dit, ["--class", "207"]),
    "pixart-alpha-512": (build_pixart, ["--prompt", "an astronaut riding a horse on the moon"]),
}


def measured(cmd: list[str], env: dict | None = None) -> dict:
    """Run `cmd` in a fresh process: wall seconds, peak resident memory (GiB), exit code, the last output lines."""
    wrapper = [
        sys.executable,
        "-c",
        "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
        "print('PEAK_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)",
    ]
    t0 = time.perf_counter()
    out = subprocess.run(wrapper + cmd, capture_output=True, text=True, env={**os.environ, **(env or {})}, cwd=ROOT)
    wall = time.perf_counter() - t0
    peak = next((int(line.split()[1]) for line in out.stdout.splitlines() if line.startswith("PEAK_KB")), 0)
    lines = [ln for ln in out.stdout.splitlines() if ln.strip() and not ln.startswith("PEAK_KB")]
    if out.returncode:
        lines += out.stderr.splitlines()[-5:]
    return {"wall_s": round(wall, 1), "peak_gib": round(peak / 2**20, 2), "rc": out.returncode, "out": lines[-6:]}


APP_RUN = """
import json, sys, time
import app  # the app's launch settings (FORA_TORCH_THREADS) and its page
from ui import registry, store
from ui.layout import build_layout
key, steps, interval, extra = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
label, prompt = (extra[1], "") if extra[0] == "--class" else ("", extra[1])
compare = build_layout().compare
t0 = time.perf_counter()
pipe, _ = registry.get_model(key)
load_s = time.perf_counter() - t0
times, status, token = {}, None, None
for out in compare.generate(key, label, prompt, steps, interval, 0, 4.0, True, True, True, 0, 0, "", ""):
    if compare.status in out:
        status = out[compare.status]
        times.setdefault(status.split(":")[0], time.perf_counter() - t0 - load_s)
    token = out.get(compare.last, token)
comp = store.RESULTS.get(token)
print(json.dumps({"load_s": round(load_s, 1), "images_s": round(times["images ready"], 1),
                  "done_s": round(times["done"], 1), "status": status,
                  "kept_mib": round(store.result_bytes(comp) / 2**20, 2),
                  "tokens_kept": comp.baseline.tokens_kept}))
"""


def run_cli(out: str, steps: int) -> dict:
    res = {}
    for key, (_, cond) in MODELS.items():
        cmd = [
            sys.executable,
            "-m",
            "fora",
            "generate",
            "--model",
            os.path.join(out, key),
            "--steps",
            str(steps),
            "--interval",
            "2",
            *cond,
            "--out",
            os.path.join(out, f"{key}.png"),
        ]
        res[key] = measured(cmd, {"OMP_NUM_THREADS": "2"})
        print(key, "fora generate:", json.dumps(res[key]), flush=True)
    return res


def run_app(out: str, steps: int) -> dict:
    res = {}
    for key, (_, cond) in MODELS.items():
        path = os.path.join(out, key)
        cmd = [sys.executable, "-c", APP_RUN, path, str(steps), "2", *cond]
        # DiT: one timed pair after one warm-up pair (three take tens of minutes at this size on a CPU); PixArt: its
        # steps take about a minute each on 2 cores, so its speedup is left unmeasured (FORA_COMPARE_PAIRS=0)
        pairs = "1" if key.startswith("dit") else "0"
        res[key] = measured(cmd, {"FORA_EXTRA_MODELS": path, "FORA_TORCH_THREADS": "2", "FORA_COMPARE_PAIRS": pairs})
        print(key, "app generate:", json.dumps(res[key]), flush=True)
    return res


def recorder_bound() -> dict:
    """The similarity recorder for DiT-XL/2 at 256 and PixArt-alpha at 512, 28 layers, 250 steps, batch 2."""
    import torch

    from analysis.metrics.similarity import SimilarityRecorder
    from fora.observers import Observation, RunEvent

    res = {}
    for key, tokens, kinds in (
        ("dit-xl-2-256", 256, ("attn", "mlp")),
        ("pixart-alpha-512", 1024, ("attn", "cross_attn", "mlp")),
    ):
        rec = SimilarityRecorder(28, kinds=kinds)
        rec.on_run_start(RunEvent(250, tuple(range(250))))
        x = torch.zeros(2, tokens, 1152)
        # the pairwise features are allocated for all 250 steps at a block's first observation, and the previous
        # outputs kept for the neighbour maps are one per block and kind: two steps reach the full run's footprint
        for step in range(2):
            for block in range(28):
                for kind in kinds:
                    rec(Observation(block, kind, step, 250, 999.0 - 4 * step, x))
        res[key] = {"mib": round(rec.memory_bytes / 2**20, 1), "tokens_kept": rec.tokens_kept}
        print(key, "recorder at 28 layers x 250 steps, batch 2:", res[key], flush=True)
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["build", "cli", "app", "recorder", "all"])
    p.add_argument("--out", default="/tmp/fora-full-size")
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args(argv)
    results = {}
    if args.what in ("build", "all"):
        for key, (build, _) in MODELS.items():
            path = os.path.join(args.out, key)
            if not os.path.isfile(os.path.join(path, "model_index.json")):
                t0 = time.perf_counter()
                build(path)
                print(f"built {key} in {time.perf_counter() - t0:.0f}s: {path}", flush=True)
    if args.what in ("cli", "all"):
        results["cli"] = run_cli(args.out, args.steps)
    if args.what in ("app", "all"):
        results["app"] = run_app(args.out, args.steps)
    if args.what in ("recorder", "all"):
        results["recorder"] = recorder_bound()
    if results:
        with open(os.path.join(args.out, f"results-{args.what}.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
