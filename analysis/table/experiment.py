"""The paper's Table 3 on the machine at hand: distribution quality over steps T x cache interval N.

    python -m analysis.table --model emoji-dit --steps 20 50 --intervals 1 2 3 5 7 10 --samples 1000 --out DIR
    torchrun --nproc_per_node K -m analysis.table ...   # the same samples and table, K processes

For every cell (T, N) it generates `--samples` class-balanced samples (sample i: class i % classes, its own seed;
`analysis/samples.py`) as resumable shards under `DIR/samples/T{T}_N{N}/`, then rank 0 computes the Frechet
distance, Inception-style score, precision and recall (k = 3) against a reference set, class accuracy, and the
speedup measured the project's one way (`analysis/speed.py`: timed calls without observers, warm, ABBA pairs).
It writes `DIR/table.csv`, `DIR/table.json` and `DIR/report.html`.

Processes split the shards (not the samples), so every process count computes the same batches. Under torchrun the
processes are joined with accelerate's `PartialState` (gloo on CPU, NCCL on GPUs); `accelerate launch --cpu
--num_processes 2` starts only one process on a CPU-only machine, so use torchrun there.
"""

import contextlib
import datetime
import json
import os
import time
from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from analysis.metrics.distribution import PR_NEIGHBOURS
from analysis.report_files import json_safe, machine, write_text_atomic
from analysis.samples import (
    Cell,
    conditions,
    fill_shard,
    read_shard,
    remove_partial_writes,
    shard_path,
    shard_ranges,
)
from fora.generate import generate_batch
from fora.loading import MODELS, resolve_model


@dataclass(frozen=True)
class Settings:
    """What makes a sample set: a rerun into the same folder must match, or its shards would be mixed."""

    model: str
    sampler: str
    guidance: float
    seed: int
    extractor: str
    prompts: str = ""  # a text model's prompt set: its file name and a hash of its prompts ("" for class models)
    options: str = ""  # the pipeline arguments every call gets (a model card's), as sorted JSON
    scheduler: str = ""  # the scheduler class the samples ran with (the sampler's, or the pipeline's own)


# fields a folder's run.json may lack, having been written before they were recorded: it is taken to hold what
# these settings say (every folder made before was of the embedded models, with no card arguments and the
# sampler's scheduler), and run.json is rewritten with them
_LATER_FIELDS = ("prompts", "options", "scheduler")


def check_args(args) -> None:
    """Every bad value raises `ValueError` naming it and the allowed range, before anything is written."""
    if resolve_model(args.model) is None and not os.path.isdir(args.model) and "/" not in args.model:
        raise ValueError(f"--model {args.model!r}: unknown; known: {', '.join(MODELS)}, a hub id or a pipeline folder")
    if len(args.samples) not in (1, len(args.steps)):
        raise ValueError(
            f"--samples {' '.join(map(str, args.samples))}: give one value, or one per --steps value "
            f"({len(args.steps)})"
        )
    least = PR_NEIGHBOURS + 1  # precision/recall need more samples than neighbours
    for n in args.samples:
        if n < least:
            raise ValueError(f"--samples {n}: allowed >= {least} (precision/recall use {PR_NEIGHBOURS} neighbours)")
    args.samples_by_steps = dict(
        zip(args.steps, args.samples * len(args.steps) if len(args.samples) == 1 else args.samples)
    )
    if args.batch_size < 1 or args.timing_batch < 1:
        raise ValueError(f"--batch-size {args.batch_size} / --timing-batch {args.timing_batch}: allowed >= 1")
    if args.timing_pairs < 0:
        raise ValueError(f"--timing-pairs {args.timing_pairs}: allowed >= 0")
    for t in args.steps:
        if t < 2:
            raise ValueError(f"--steps {t}: allowed >= 2")
        for n in args.intervals:
            if not 1 <= n <= t - 1:
                raise ValueError(f"--intervals {n} out of range for --steps {t}: allowed 1..{t - 1}")
    if args.guidance is not None and args.guidance < 1.0:
        raise ValueError(f"--guidance {args.guidance}: allowed >= 1.0 (1.0 turns guidance off)")
    if args.extractor == "inception":
        # text models compare with their own uncached samples: no reference set (known once the model is loaded)
        needed = [("--inception-weights", args.inception_weights)]
        if getattr(args, "text", None) is False:
            needed.append(("--reference-npz", args.reference_npz))
        for name, path in needed:
            if not path or not os.path.isfile(path):
                raise ValueError(
                    f"{name} {path!r}: no such file; --extractor inception needs local files and never downloads them"
                )
    elif args.reference_samples < PR_NEIGHBOURS + 1:
        raise ValueError(f"--reference-samples {args.reference_samples}: allowed >= {PR_NEIGHBOURS + 1}")
    out = os.path.abspath(args.out)
    parent = out
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent) or not os.access(parent, os.W_OK):
        raise ValueError(f"--out {args.out!r}: not writable ({parent} is not a writable folder)")


def _write_json(path: str, data) -> None:
    write_text_atomic(path, json.dumps(json_safe(data), indent=1, allow_nan=False))


def check_folder(out_dir: str, settings: Settings) -> bool:
    """Whether `out_dir` already records these settings; raises when it holds samples made with other ones."""
    path = os.path.join(out_dir, "run.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        stored = json.load(f)
    missing = {k: v for k, v in asdict(settings).items() if k in _LATER_FIELDS and k not in stored}
    if "prompts" in missing:  # folders made before prompt sets: class models
        missing["prompts"] = ""
    have = {**stored, **missing}
    if have != asdict(settings):
        raise ValueError(
            f"--out {out_dir!r} holds samples made with {have}; these settings are "
            f"{asdict(settings)}: use another --out"
        )
    return True


def default_extractor(model: str) -> str:
    """`emoji` (the emoji classifier's features) for the embedded models and folders of their pipelines, `inception`
    otherwise."""
    spec = resolve_model(model)
    folder = spec.source if spec else model
    index = os.path.join(folder, "model_index.json")
    if os.path.isfile(index):
        with open(index) as f:
            if json.load(f).get("_class_name") in ("EmojiDiTPipeline", "EmojiMMDiTPipeline"):
                return "emoji"
    return "inception"


def _wait_while_paused(pause_file: str | None, rank: int) -> float:
    """Block while `pause_file` exists, with a marker `PAUSE_FILE.paused-RANK` meanwhile; returns seconds waited."""
    if not pause_file or not os.path.exists(pause_file):
        return 0.0
    t0 = time.perf_counter()
    marker = f"{pause_file}.paused-{rank}"
    open(marker, "w").close()
    while os.path.exists(pause_file):
        time.sleep(2)
    with contextlib.suppress(FileNotFoundError):
        os.remove(marker)
    return time.perf_counter() - t0


def missing_shards(args, cells: list[Cell]) -> list[tuple[Cell, int, int]]:
    """Every shard not yet written whole (a file that does not hold exactly its samples counts as missing)."""
    return [
        (c, s, e)
        for c in cells
        for s, e in shard_ranges(args.samples_by_steps[c.steps])
        if read_shard(shard_path(args.out, c, s, e), s, e, args.seed) is None
    ]


def lock_folder(out_dir: str):
    """Hold an exclusive lock on `out_dir` for the life of this process; `ValueError` when another run holds it."""
    import fcntl

    handle = open(os.path.join(out_dir, ".lock"), "w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise ValueError(
            f"--out {out_dir!r} is in use by another run of analysis.table; wait for it or use another --out"
        ) from None
    return handle


def generate_all(pipe, args, todo: list, num_classes: int, rank: int, world: int) -> None:
    """Fill the missing shards that rank 0 listed; shard j of the list goes to process j % world."""
    mine = todo[rank::world]
    total = sum(e - s for _, s, e in mine)
    bar = tqdm(
        total=total,
        desc=f"samples (process {rank})" if world > 1 else "samples",
        unit="img",
        position=rank,
        disable=total == 0,
    )
    for cell, start, end in mine:
        bar.set_postfix_str(cell.name)
        made = fill_shard(
            pipe,
            args.out,
            cell,
            start,
            end,
            args.seed,
            args.guidance,
            num_classes,
            args.batch_size,
            before_batch=lambda: _wait_while_paused(args.pause_file, rank),
            prompts=getattr(args, "prompt_list", None),
            options=getattr(args, "options", ()),
        )
        bar.update(made)
    bar.close()


def prepare_folder(args, settings: "Settings", cells: list[Cell]) -> list:
    """Rank 0, before any process writes: refuse a folder made with other settings or in use by another run, claim
    it, delete the temporary files of killed writes, and list the shards still to make. Raises `ValueError`."""
    known = check_folder(args.out, settings)
    if not known:
        os.makedirs(args.out, exist_ok=True)
    args.lock = lock_folder(args.out)  # before run.json is written: a folder in use is refused as it is
    recorded = {k: v for k, v in asdict(settings).items() if v != ""}
    path, missing = os.path.join(args.out, "run.json"), []
    if known:
        with open(path) as f:
            missing = sorted(set(recorded) - set(json.load(f)))
        if missing:  # a folder from before `_LATER_FIELDS` were recorded: they are assumed, and said so
            print(
                f"{path}: records no {', '.join(missing)}; taken as this run's ({recorded}), and written", flush=True
            )
    if not known or missing:
        _write_json(path, recorded)
    remove_partial_writes(args.out)
    with open(os.path.join(args.out, "runs.jsonl"), "a") as f:  # every invocation, for the report
        f.write(
            json.dumps(
                {
                    "command": args.command,
                    "processes": args.processes,
                    "threads": torch.get_num_threads(),
                    "device": args.device,
                    "date": _now(),
                }
            )
            + "\n"
        )
    return missing_shards(args, cells)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def measure_speed(pipe, args, cells: list[Cell], num_classes: int) -> dict[Cell, dict]:
    """Speedup of each cell against its uncached twin, measured in timed pairs (cached in DIR/timing.json)."""
    from analysis.speed import paired_speedup
    from fora import ForaConfig

    path = os.path.join(args.out, "timing.json")
    cache = {}
    if os.path.isfile(path):
        with open(path) as f:
            cache = json.load(f)
    where = machine(args.device, args.clock)  # timings are reused only on the same machine, device, threads, clock
    where = f"{where['processor']}_{where['device']}_t{where['threads']}_{where['clock']}"
    result = {}
    for cell in cells:
        key = f"{cell.name}_b{args.timing_batch}_p{args.timing_pairs}_{where}"
        if key not in cache:
            _wait_while_paused(args.pause_file, 0)
            labels = [x % num_classes for x in range(args.timing_batch)]
            given = conditions(labels, getattr(args, "prompt_list", None))
            call = lambda: generate_batch(  # noqa: E731 - what the samples run: one call per prompt for text models
                pipe, given, list(range(len(labels))), cell.steps, args.guidance, getattr(args, "options", ())
            )

            ratio = paired_speedup(
                pipe, call, ForaConfig(interval=cell.interval), pairs=args.timing_pairs, clock=args.clock
            )
            cache[key] = {**ratio.as_dict(), "text": str(ratio), "batch": args.timing_batch}
            _write_json(path, cache)
            print(f"{cell.name}: {ratio}", flush=True)
        result[cell] = cache[key]
    return result
