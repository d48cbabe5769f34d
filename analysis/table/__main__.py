"""Table 3 from the command line: `python -m analysis.table` or `torchrun --nproc_per_node K -m analysis.table`
(see `experiment.py`)."""

import argparse
import json
import os
import shlex
import sys
import time

import torch

from analysis.samples import SAMPLERS, Cell, set_sampler
from analysis.table.experiment import (
    Settings,
    check_args,
    default_extractor,
    generate_all,
    measure_speed,
    prepare_folder,
)
from analysis.table.experiment import __doc__ as TABLE_DOC
from fora.generate import is_text_conditional, is_video
from fora.loading import ModelLoadError, load_pipeline, resolve_model
from fora.timing import CPU_CLOCK_HELP


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m analysis.table", description=TABLE_DOC, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="emoji-dit", help="model key, hub id or pipeline folder")
    p.add_argument(
        "--prompts",
        default=None,
        help="text models: the prompt set (sample i: prompt i mod P; default: the model's evaluation set, "
        "analysis.prompts.prompt_set)",
    )
    p.add_argument("--steps", type=int, nargs="+", default=[20, 50], help="denoising steps T")
    p.add_argument("--intervals", type=int, nargs="+", default=[1, 2, 3, 5, 7, 10], help="cache intervals N")
    p.add_argument(
        "--samples",
        type=int,
        nargs="+",
        default=[1000],
        help="samples per cell (>= 4): one value for every T, or one per --steps value",
    )
    p.add_argument("--out", required=True, help="output folder (samples, table, report)")
    p.add_argument(
        "--sampler",
        default=None,
        choices=SAMPLERS,
        help="class models: ddim (deterministic, the default), ddpm, or model (the pipeline's scheduler as loaded); "
        "text models: model only (their model card's scheduler, e.g. flow matching)",
    )
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="base seed; sample i's noise seed derives from (seed, i)")
    p.add_argument("--batch-size", type=int, default=50, help="samples per pipeline call")
    p.add_argument(
        "--extractor",
        default=None,
        choices=("emoji", "inception"),
        help="feature space of the metrics (default: emoji for emoji-dit, inception otherwise)",
    )
    p.add_argument(
        "--inception-weights",
        default=None,
        help="Inception-v3 weights file (torch-fidelity's "
        "pt_inception-2015-12-05 .pth); required by --extractor inception, never downloaded",
    )
    p.add_argument(
        "--reference-npz",
        default=None,
        help="reference images for --extractor inception: an .npz "
        "with uint8 N x H x W x 3 under 'arr_0' or 'images' (e.g. the ADM evaluation batch)",
    )
    p.add_argument("--reference-samples", type=int, default=10000, help="emoji reference renders (>= 2)")
    p.add_argument("--timing-pairs", type=int, default=3, help="ABBA pairs per cell for the speedup (0: skip)")
    p.add_argument("--timing-batch", type=int, default=8, help="samples per timed call")
    p.add_argument(
        "--clock",
        default="wall",
        choices=("wall", "cpu"),
        help=f"wall time (a quiet machine), or cpu: {CPU_CLOCK_HELP} (CPU only: robust when other jobs share the "
        "machine)",
    )
    p.add_argument(
        "--bootstrap",
        type=int,
        default=200,
        help="paired-bootstrap resamples of the seeds behind each cell's 95%% intervals (0: no intervals)",
    )
    p.add_argument("--skip-metrics", action="store_true", help="only generate the samples")
    p.add_argument("--threads", type=int, default=0, help="torch threads per process (default: cores / processes)")
    p.add_argument("--device", default=None, help="default: this process's accelerator, else CPU")
    p.add_argument(
        "--pause-file",
        default=None,
        help="while this file exists, generation pauses between batches "
        "(and writes PAUSE_FILE + 'd'), so timings can be taken on a quiet machine",
    )
    return p.parse_args(argv)


def _conditions(args, pipe, spec) -> int:
    """Set the sampler's default, a text model's prompt set (`args.prompt_list`, `args.prompt_tag`) and model-card
    arguments (`args.options`); returns the number of conditions samples cycle through (classes, or prompts).
    Raises `ValueError` naming a bad value."""
    import hashlib

    from analysis.prompts import load_prompts, prompt_set

    args.prompt_list, args.prompt_tag, args.options = None, "", ()
    if not args.text:
        if args.prompts:
            raise ValueError(f"--prompts {args.prompts!r}: --model {args.model!r} is class-conditional (no prompts)")
        args.sampler = args.sampler or "ddim"
        return pipe.transformer.config.num_embeds_ada_norm
    if is_video(pipe):
        raise ValueError(f"--model {args.model!r} makes videos; Table 3 takes image models")
    if args.sampler not in (None, "model"):
        raise ValueError(
            f"--sampler {args.sampler}: --model {args.model!r} is text-conditional and samples with its own "
            f"{type(pipe.scheduler).__name__} (its model card's); allowed: model"
        )
    args.sampler = "model"
    path = args.prompts or prompt_set(pipe, "eval")
    args.prompt_list = tuple(load_prompts(path))
    digest = hashlib.sha256("\n".join(args.prompt_list).encode()).hexdigest()[:12]
    args.prompt_tag = f"{os.path.basename(path)}:{len(args.prompt_list)}:{digest}"
    args.options = tuple(spec.call_kwargs.items()) if spec else ()
    return len(args.prompt_list)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        check_args(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from analysis.table.metrics import make_extractor

    # on a machine without CUDA, PartialState() ignores torchrun's processes; cpu=True joins them with gloo
    state = PartialState(cpu=not torch.cuda.is_available() or (args.device or "").startswith("cpu"))
    rank, world = state.process_index, state.num_processes
    torch.set_num_threads(args.threads or max(1, (os.cpu_count() or 1) // world))
    spec = resolve_model(args.model)
    args.extractor = args.extractor or default_extractor(args.model)
    try:
        args.device = args.device or str(state.device)  # this process's GPU under torchrun, else CPU
        pipe = load_pipeline(args.model, device=args.device)
    except ModelLoadError as e:
        print(f"error: --model {args.model!r}: {e}", file=sys.stderr)
        return 2
    args.text = is_text_conditional(pipe)
    try:
        check_args(args)  # the default extractor needs its files too (a class model's reference set as well)
        num_classes = _conditions(args, pipe, spec)
        # the model card's guidance when none is given (FLUX.1-schnell's 0: a distilled embedding, not CFG)
        args.guidance = args.guidance if args.guidance is not None else (spec.default_guidance if spec else 4.0)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    pipe.set_progress_bar_config(disable=True)
    set_sampler(pipe, args.sampler)
    cells = [Cell(t, n) for t in sorted(set(args.steps)) for n in sorted(set(args.intervals))]
    settings = Settings(
        args.model,
        args.sampler,
        float(args.guidance),
        args.seed,
        args.extractor,
        args.prompt_tag,
        json.dumps(dict(getattr(args, "options", ()) or ()), sort_keys=True),
        type(pipe.scheduler).__name__,
    )
    args.command = shlex.join(
        (["torchrun", "--nproc_per_node", str(world)] if world > 1 else ["python"])
        + ["-m", "analysis.table", *(sys.argv[1:] if argv is None else argv)]
    )
    args.processes, args.num_classes = world, num_classes
    error, todo = None, []
    if state.is_main_process:
        try:
            extractor = None if args.skip_metrics else make_extractor(args)  # a missing package fails here, not later
            todo = prepare_folder(args, settings, cells)
        except ValueError as e:
            error = str(e)
    error, todo = broadcast_object_list([error, todo], from_process=0)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    generate_all(pipe, args, todo, num_classes, rank, world)
    state.wait_for_everyone()
    if not state.is_main_process or args.skip_metrics:
        return 0
    print(f"samples ready ({time.perf_counter() - t0:.0f}s); computing metrics", flush=True)
    from analysis.table.metrics import table_rows
    from analysis.table.report import COLUMNS, write_outputs

    speed = measure_speed(pipe, args, cells, num_classes) if args.timing_pairs else {}
    rows, notes = table_rows(args, cells, speed, extractor)
    write_outputs(args, settings, rows, notes)
    for r in rows:
        print(
            " ".join(f"{c}={r[c]:.4g}" if isinstance(r[c], float) else f"{c}={r[c]}" for c in COLUMNS if c in r),
            flush=True,
        )
    print(f"wrote {args.out}/table.csv, table.json, report.html")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
