"""Sample sets for distribution metrics: balanced labels, one seed per sample, resumable `.npz` shards.

A sample set is one cell of the table (model, sampler, guidance, steps T, interval N). Sample `i` has class
`i % num_classes` (a text model: prompt `i % P` of its prompt set, P taking the classes' place) and its own noise
seed derived from `(base_seed, i)`, and every cell uses the same seeds, so the
N = 1 set holds the uncached twin of every FORA sample. Samples are generated in shards of `SHARD_SIZE` consecutive
indices; a shard file is written atomically (temporary name, then rename), so a killed run loses at most the shard
in progress and a rerun generates only the shards that are missing. Shards are the unit of work split between
processes, so one process and K processes compute exactly the same batches and write the same files.
"""

import os
import re
import time
from dataclasses import dataclass

import numpy as np

from fora import ForaConfig, apply_fora, remove_fora
from fora.generate import generate_batch, to_uint8

SHARD_SIZE = 100  # samples per shard file: what a killed run can lose, and the unit split between processes
SAMPLERS = ("ddim", "ddpm", "model")  # model: the pipeline's own scheduler, as loaded (text models' flow matching)
_SHARD_RE = re.compile(r"shard_(\d{7})-(\d{7})\.npz")
_TMP_RE = re.compile(r"shard_\d{7}-\d{7}\.tmp\d+\.npz")


@dataclass(frozen=True)
class Cell:
    steps: int
    interval: int

    @property
    def name(self) -> str:
        return f"T{self.steps}_N{self.interval}"


def sample_seed(base_seed: int, index: int) -> int:
    """The noise seed of sample `index`: a hash of (base seed, index), independent of batches and processes."""
    return int(np.random.SeedSequence([base_seed, index]).generate_state(1, dtype=np.uint32)[0])


def sample_labels(indices, num_classes: int) -> np.ndarray:
    """Balanced class labels: sample i has class i % num_classes."""
    return np.asarray(indices, dtype=np.int64) % num_classes


def shard_ranges(num_samples: int) -> list[tuple[int, int]]:
    return [(s, min(s + SHARD_SIZE, num_samples)) for s in range(0, num_samples, SHARD_SIZE)]


def shard_path(out_dir: str, cell: Cell, start: int, end: int) -> str:
    return os.path.join(out_dir, "samples", cell.name, f"shard_{start:07d}-{end:07d}.npz")


def read_shard(path: str, start: int, end: int, base_seed: int) -> dict | None:
    """A finished shard's arrays, or `None` when the file is missing or does not hold exactly samples start..end."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path) as z:
            data = {k: z[k] for k in ("images", "labels", "seeds", "seconds")}
    except Exception:
        return None
    expected = [sample_seed(base_seed, i) for i in range(start, end)]
    if len(data["images"]) != end - start or data["seeds"].tolist() != expected:
        return None
    return data


def set_sampler(pipe, sampler: str) -> None:
    """Swap the pipeline's scheduler for `sampler`, keeping the trained noise schedule and prediction type."""
    from diffusers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}; allowed: {', '.join(SAMPLERS)}")
    if sampler == "model":
        return
    cls = DDIMScheduler if sampler == "ddim" else DDPMScheduler
    pipe.scheduler = cls.from_config(pipe.scheduler.config)


def conditions(labels, prompts=None) -> list:
    """What the pipeline is given for sample labels: the class ids, or for a text model (`prompts`) the prompts
    they index."""
    return [prompts[i] for i in labels] if prompts else list(labels)


def generate_samples(
    pipe,
    indices: list[int],
    cell: Cell,
    base_seed: int,
    guidance: float,
    num_classes: int,
    batch_size: int,
    before_batch=None,
    prompts: tuple[str, ...] | None = None,
    options: tuple = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Images (uint8, n x H x W x 3), labels, seeds and seconds spent generating (pauses left out) of the given
    sample indices for one cell. `before_batch()` runs before each batch and returns the seconds it waited.

    N = 1 runs the model without FORA at all (the true uncached reference); N > 1 applies FORA for the call.
    DiT-style pipelines draw the noise of each sample from its own generator; `EmojiDiTPipeline` also passes them
    to stochastic samplers, so DDPM samples are fixed per sample too. Other pipelines' DDPM noise comes from the
    global generator, seeded per batch from its first sample's seed (reproducible for the same shards). With
    `prompts` (a text model) the label is the prompt's index and each sample runs in its own call
    (`fora.generate.generate_batch`), with the model card's `options`.
    """
    seeds = np.array([sample_seed(base_seed, i) for i in indices], dtype=np.int64)
    labels = sample_labels(indices, num_classes)
    images, paused = [], 0.0
    t0 = time.perf_counter()
    config = ForaConfig(interval=cell.interval) if cell.interval > 1 else None
    if config is not None:
        config.check_num_steps(cell.steps)
        apply_fora(pipe, config)
    try:
        for b in range(0, len(indices), batch_size):
            if before_batch is not None:
                paused += before_batch() or 0.0
            batch_labels = labels[b : b + batch_size].tolist()
            out = generate_batch(
                pipe, conditions(batch_labels, prompts), seeds[b : b + batch_size], cell.steps, guidance, options
            )
            images.append(to_uint8(out))
    finally:
        if config is not None:
            remove_fora(pipe)
    return np.concatenate(images), labels, seeds, time.perf_counter() - t0 - paused


def _shards_starting_at(folder: str, start: int) -> list[tuple[int, str]]:
    found = []
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        match = _SHARD_RE.fullmatch(name)
        if match and int(match.group(1)) == start:
            found.append((int(match.group(2)), os.path.join(folder, name)))
    return sorted(found, reverse=True)


def remove_partial_writes(out_dir: str) -> int:
    """Delete the temporary files of writes that a killed run left behind; returns how many."""
    removed = 0
    root = os.path.join(out_dir, "samples")
    for folder in os.listdir(root) if os.path.isdir(root) else []:
        for name in os.listdir(os.path.join(root, folder)):
            if _TMP_RE.fullmatch(name):
                os.remove(os.path.join(root, folder, name))
                removed += 1
    return removed


def write_shard(path: str, images: np.ndarray, labels: np.ndarray, seeds: np.ndarray, seconds: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path[:-4]}.tmp{os.getpid()}.npz"  # not a shard name: a killed write is never read
    np.savez_compressed(tmp, images=images, labels=labels, seeds=seeds, seconds=np.float64(seconds))
    os.replace(tmp, path)


def fill_shard(
    pipe,
    out_dir: str,
    cell: Cell,
    start: int,
    end: int,
    base_seed: int,
    guidance: float,
    num_classes: int,
    batch_size: int,
    before_batch=None,
    prompts: tuple[str, ...] | None = None,
    options: tuple = (),
) -> int:
    """Make shard start..end exist; returns how many samples were generated (0 when it was already there).

    A shard of an earlier, smaller run (same start, fewer samples) is completed rather than regenerated.
    """
    path = shard_path(out_dir, cell, start, end)
    if read_shard(path, start, end, base_seed) is not None:
        return 0
    have = old = None
    for old_end, candidate in _shards_starting_at(os.path.dirname(path), start):
        if old_end < end:
            have = read_shard(candidate, start, old_end, base_seed)
            if have is not None:
                old = candidate
                break
    first = start + (len(have["images"]) if have else 0)
    images, labels, seeds, seconds = generate_samples(
        pipe,
        list(range(first, end)),
        cell,
        base_seed,
        guidance,
        num_classes,
        batch_size,
        before_batch,
        prompts,
        options,
    )
    if have:
        images = np.concatenate([have["images"], images])
        labels = np.concatenate([have["labels"], labels])
        seeds = np.concatenate([have["seeds"], seeds])
        seconds += float(have["seconds"])
    write_shard(path, images, labels, seeds, seconds)
    if have:
        os.remove(old)
    return end - first


def iter_cell(out_dir: str, cell: Cell, num_samples: int, base_seed: int):
    """The shards holding a cell's first `num_samples` samples, in order (one shard in memory at a time); raises
    `FileNotFoundError` naming the first missing one."""
    for start, end in shard_ranges(num_samples):
        data = read_shard(shard_path(out_dir, cell, start, end), start, end, base_seed)
        if data is None:
            raise FileNotFoundError(f"shard {start}..{end} of {cell.name} is missing under {out_dir}/samples")
        yield data
