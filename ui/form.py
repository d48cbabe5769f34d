"""The app's form, parsed in one place: raw widget values in, a checked `GenerateJob` or `SweepJob` out.

Every check raises `ValueError` naming the bad value (at most `ECHO_MAX` characters of it: `echo`) and the allowed
range, before any model runs. The limits here are the ones the widgets show (the tabs build their sliders from them),
and every request is bounded by one budget of denoising steps, the sweep included, so that no single click can hold
the model for minutes.
"""

import os
from dataclasses import dataclass, field, replace

from analysis.comparison import num_blocks, recorded_kinds
from analysis.metrics.similarity import default_blocks
from fora import ForaConfig
from fora.generate import Request, class_id, is_text_conditional, is_video
from fora.loading import MODELS
from fora.timing import paired_calls

STEPS_RANGE = (2, 100)  # the steps slider's range
SEED_MAX = 2**31 - 1
GUIDANCE_RANGE = (1.0, 20.0)
PROMPT_MAX = 500
LABEL_MAX = 100  # characters of a class name or id: the longest label of any model is far shorter
ECHO_MAX = 40  # characters of a bad value a message repeats
HEAT_SOURCES = ("FORA run", "uncached baseline")  # the Compare tab's "layer x step maps from"
SWEEP_SEEDS_MAX = 8
FRAMES_RANGE = (1, 81)  # a video's frames: Wan takes 4k + 1 of them, 81 (5 s at 16 fps) on its model card
APP_FRAMES = 13  # the frames slider's value for a video model: 0.8 s at 16 fps, which fits ZeroGPU's reservation
SWEEP_INTERVALS = (1, 2, 3, 4, 5, 7, 10)  # the Sweep tab's choices
# Denoising steps one request may run, counting the baseline, the FORA run and the timed calls. The emoji model runs
# ~60 steps/s on 2 CPU cores, so the default bounds a request to about a minute there.
STEP_BUDGET = int(os.environ.get("FORA_STEP_BUDGET", "4000"))
# timed baseline/FORA pairs behind the speedups (after one warm-up pair): the Compare tab's, and per swept interval.
# FORA_COMPARE_PAIRS=0 leaves the Compare tab's speedup unmeasured (hardware where one call takes minutes)
COMPARE_PAIRS = int(os.environ.get("FORA_COMPARE_PAIRS", "3"))
SWEEP_PAIRS = int(os.environ.get("FORA_SWEEP_PAIRS", "3"))
if SWEEP_PAIRS < 1:  # the Sweep tab's speed column is its point: refused at start, not after a sweep's runs
    raise ValueError(f"FORA_SWEEP_PAIRS={SWEEP_PAIRS}: the Sweep tab times at least 1 pair per interval (default 3)")
if COMPARE_PAIRS < 0:  # refused at start, like the Sweep tab's
    raise ValueError(f"FORA_COMPARE_PAIRS={COMPARE_PAIRS}: allowed 0 (speed not measured) or more (default 3)")


@dataclass(frozen=True)
class GenerateJob:
    """One Compare-tab click: the uncached baseline and FORA with the same request, then the timed pairs."""

    model_key: str
    request: Request
    config: ForaConfig
    pairs: int = COMPARE_PAIRS
    warmup: int = 1

    def pipeline_calls(self, baseline_cached: bool = False) -> tuple[int, int]:
        """(observed, timed) pipeline calls: baseline (unless cached) and FORA run; warm-up and pairs, two each."""
        return (0 if baseline_cached else 1) + 1, paired_calls(1, self.pairs, self.warmup) if self.pairs else 0

    def denoising_steps(self, baseline_cached: bool = False) -> int:
        """Steps this job runs: all its pipeline calls' (`pipeline_calls`)."""
        return self.request.steps * sum(self.pipeline_calls(baseline_cached))


@dataclass(frozen=True)
class SweepJob:
    """One Sweep-tab click: per seed the baseline and each interval; then the timed pairs of every interval (first
    seed), interleaved round by round."""

    model_key: str
    request: Request  # the first seed's request
    config: ForaConfig  # Advanced settings; the interval is swept
    intervals: tuple[int, ...]
    seeds: tuple[int, ...] = field(default=(0,))
    pairs: int = SWEEP_PAIRS
    warmup: int = 1

    def pipeline_calls(self) -> tuple[int, int]:
        """(observed, timed) pipeline calls: per seed the baseline and each cached interval, and one more uncached
        run that measures the cached modules' share; the timed calls of every interval, interleaved."""
        observed = len(self.seeds) * (1 + sum(1 for n in self.intervals if n != 1)) + 1
        return observed, paired_calls(len(self.intervals), self.pairs, self.warmup)

    def denoising_steps(self) -> int:
        return self.request.steps * sum(self.pipeline_calls())


def echo(value) -> str:
    """`value` as a message repeats it: its repr, cut to `ECHO_MAX` characters of its text."""
    text = str(value)
    return repr(value) if len(text) <= ECHO_MAX else repr(text[:ECHO_MAX] + "...")


def integer(name: str, value, lo: int, hi: int) -> int:
    """`value` as an int in lo..hi, or `ValueError` naming it and the range (a checkbox's True is not a number)."""
    if isinstance(value, bool):
        raise ValueError(f"{name}={value!r} is not a number; allowed {lo}..{hi}")
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"{name}={echo(value)} is not a number; allowed {lo}..{hi}") from None
    if not v.is_integer() or not lo <= v <= hi:
        raise ValueError(f"{name}={echo(value)} out of range: allowed integers {lo}..{hi}")
    return int(v)


def boolean(name: str, value) -> bool:
    """A checkbox's value: True or False only (the string "false" is no False: `bool("false")` is True)."""
    if isinstance(value, bool):
        return value
    raise ValueError(f"{name}={echo(value)}: a checkbox is true or false")


def one_of(name: str, value, allowed) -> str:
    """`value` if it is one of `allowed` (strings), else `ValueError` naming it and them."""
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name}={echo(value)}; allowed: {', '.join(allowed)}")
    return value


def check_budget(steps: int, what: str) -> None:
    if steps > STEP_BUDGET:
        raise ValueError(
            f"{what} asks for {steps} denoising steps; one request may run at most {STEP_BUDGET} "
            "(fewer steps, seeds or intervals)"
        )


def parse_frames(frames) -> int:
    """A video's frame count: 4k + 1 in `FRAMES_RANGE` (Wan's pipeline rounds any other to that, silently)."""
    lo, hi = FRAMES_RANGE
    n = integer("frames", frames, lo, hi)
    if (n - 1) % 4:
        closest = min(hi, 4 * int((n - 1) / 4 + 0.5) + 1)  # halves up: 3 -> 5, 8 -> 9, 6 -> 5
        raise ValueError(f"frames={n}: a video here has 4k + 1 frames (1, 5, 9, ..., {hi}); {closest} is closest")
    return n


def parse_request(pipe, label, prompt, steps, seed, guidance, model_key: str | None = None, frames=None) -> Request:
    """Class or prompt, steps, seed and guidance as a `Request` for `pipe`; a known model's card arguments
    (`ModelSpec.call_kwargs`: e.g. Lumina 2's CFG truncation) go with a text model's request. For a video model
    (Wan), `frames` (checked: `parse_frames`) replaces the card's frame count; None keeps it. Other models ignore
    `frames` (the slider is hidden, but the page still sends its value)."""
    steps = integer("steps", steps, *STEPS_RANGE)
    seed = integer("seed", seed, 0, SEED_MAX)
    lo, hi = GUIDANCE_RANGE
    try:
        guidance = float(guidance)
    except (TypeError, ValueError):
        raise ValueError(f"guidance={echo(guidance)} is not a number; allowed {lo}..{hi}") from None
    if not lo <= guidance <= hi:
        raise ValueError(f"guidance={guidance} out of range: allowed {lo}..{hi}")
    if is_text_conditional(pipe):
        prompt = (prompt or "").strip()
        if not prompt:
            raise ValueError("prompt is empty: this model is text-conditional and needs a prompt")
        if len(prompt) > PROMPT_MAX:
            raise ValueError(f"prompt has {len(prompt)} characters: allowed 1..{PROMPT_MAX}")
        if hasattr(pipe, "check_prompt"):  # a model with its own vocabulary (the embedded MMDiT) names unknown words
            pipe.check_prompt(prompt)
        spec = MODELS.get(model_key) if model_key else None
        options = dict(spec.call_kwargs) if spec else {}
        if is_video(pipe) and frames is not None:
            options["num_frames"] = parse_frames(frames)
        options = tuple(options.items())
        return Request(prompt=prompt, steps=steps, seed=seed, guidance=guidance, options=options)
    if label is None or str(label).strip() == "":
        raise ValueError("no class chosen: pick one of the model's classes")
    if isinstance(label, bool) or not isinstance(label, (str, int)):
        raise ValueError(f"class={echo(label)}: give a class name or id")
    if len(str(label)) > LABEL_MAX:  # refused before any message repeats it
        raise ValueError(f"class name has {len(str(label))} characters: allowed at most {LABEL_MAX}")
    # a name goes through the pipeline's own name -> id table: ids need not be 0..K-1
    return Request(label=class_id(pipe, label), steps=steps, seed=seed, guidance=guidance)


def parse_blocks(text: str, num_blocks: int) -> tuple[int, ...] | None:
    """'0, 2, 5' -> (0, 2, 5); empty -> None (all blocks)."""
    text = (text or "").strip()
    if not text:
        return None
    if len(text) > 8 * num_blocks + 16:  # longer than every block listed once, with spaces
        raise ValueError(f"blocks={echo(text)}: too long; list at most the {num_blocks} blocks, each once")
    try:
        blocks = tuple(int(t) for t in text.replace(" ", "").split(",") if t)
    except ValueError:
        raise ValueError(f"blocks={echo(text)}: give block indices separated by commas, e.g. 0,2,5") from None
    bad = [b for b in blocks if not 0 <= b < num_blocks]
    if bad:
        raise ValueError(f"blocks={list(bad)[:8]} out of range: allowed 0..{num_blocks - 1}")
    repeated = sorted({b for b in blocks if blocks.count(b) > 1})
    if repeated:
        raise ValueError(f"blocks: {repeated} listed more than once; list each block once")
    return blocks


def parse_config(
    interval,
    steps: int,
    num_blocks: int,
    cache_attn=True,
    cache_cross_attn=True,
    cache_mlp=True,
    cache_start=0,
    cache_end=0,
    blocks="",
) -> ForaConfig:
    """The Advanced settings and the interval as a `ForaConfig` checked against `steps`."""
    interval = integer("interval", interval, 1, max(1, steps - 1))
    start = integer("cache_start", cache_start or 0, 0, steps - 1)
    end = integer("cache_end", cache_end, 0, steps) if cache_end not in (None, "") else 0
    config = ForaConfig(
        interval=interval,
        cache_attn=boolean("cache_attn", cache_attn),
        cache_cross_attn=boolean("cache_cross_attn", cache_cross_attn),
        cache_mlp=boolean("cache_mlp", cache_mlp),
        cache_start=start,
        cache_end=end or None,
        blocks=parse_blocks(blocks, num_blocks),
    )
    config.check_num_steps(steps)
    return config


@dataclass(frozen=True)
class PlotView:
    """Which of a comparison's maps the Compare tab draws: the step x step map's block and module, and the run the
    layer x step maps come from."""

    block: int
    kind: str
    source: str = HEAT_SOURCES[0]


def parse_block_choice(value, blocks: list[int], stale_ok: bool = False) -> int:
    """The block for the step x step map, one of the recorded `blocks` (empty: the last). `stale_ok`: a block
    number this model does not record (the choice left from another model, whose list had not been refilled when
    Generate was pressed) gives the last block instead of an error."""
    if value is None or str(value).strip() == "":
        return blocks[-1]
    try:
        block = int(str(value).strip())
    except ValueError:
        raise ValueError(f"block {echo(value)}: give a block number, one of {blocks}") from None
    if block not in blocks:
        if stale_ok and 0 <= block < 1000:  # a block number some model has
            return blocks[-1]
        raise ValueError(f"block {echo(block)} has no step x step map; recorded blocks: {blocks}")
    return block


def parse_view(
    blocks: list[int], kinds, block_choice, pair_kind="attn", heat_source=HEAT_SOURCES[0], stale_ok: bool = False
) -> PlotView:
    """The Compare tab's plot choices as a `PlotView`, checked against the recorded `blocks` and `kinds` (a kept
    result's, or `recorded_view`'s before a run). `stale_ok` (Generate): a block or module of another model's
    falls back to this one's last block and first module; what is no block or module at all is still refused."""
    if stale_ok and pair_kind in ("attn", "cross_attn", "mlp") and pair_kind not in kinds:  # any model's
        pair_kind = kinds[0]
    return PlotView(
        parse_block_choice(block_choice, blocks, stale_ok),
        one_of("module", pair_kind, tuple(kinds)),
        one_of("layer x step maps from", heat_source, HEAT_SOURCES),
    )


def recorded_view(pipe) -> tuple[list[int], tuple[str, ...]]:
    """The blocks with a step x step map and the module kinds a comparison on `pipe` records."""
    return default_blocks(num_blocks(pipe)), recorded_kinds(pipe)


def parse_generate(
    pipe,
    model_key: str,
    label,
    prompt,
    steps,
    interval,
    seed,
    guidance,
    cache_attn=True,
    cache_cross_attn=True,
    cache_mlp=True,
    cache_start=0,
    cache_end=0,
    blocks="",
    policy="FORA",
    plans: dict | None = None,
    frames=None,
) -> GenerateJob:
    """The Compare tab's values as a checked `GenerateJob` (budget included). `policy` "calibrated" or
    "calibrated-o1" runs the known plan (`plans`) at FORA N = `interval`'s cost instead of FORA."""
    request = parse_request(pipe, label, prompt, steps, seed, guidance, model_key, frames)
    config = parse_config(
        interval,
        request.steps,
        num_blocks(pipe),
        cache_attn,
        cache_cross_attn,
        cache_mlp,
        cache_start,
        cache_end,
        blocks,
    )
    plan = compare_plan(model_key, request, config.interval, policy or "FORA", plans or {})
    if plan is not None:
        try:
            config = replace(config, plan=plan)
        except ValueError as e:
            raise ValueError(
                f"{e} (the Advanced cache settings apply to FORA only: reset them for {policy})"
            ) from None
    job = GenerateJob(model_key, request, config, pairs=COMPARE_PAIRS)
    check_budget(job.denoising_steps(), f"this comparison ({request.steps} steps)")
    return job


def parse_sweep(
    pipe,
    model_key: str,
    label,
    prompt,
    steps,
    seed,
    guidance,
    intervals,
    num_seeds,
    cache_attn=True,
    cache_cross_attn=True,
    cache_mlp=True,
    cache_start=0,
    cache_end=0,
    blocks="",
    frames=None,
) -> SweepJob:
    """The Sweep tab's values (with the seed and the Advanced settings) as a checked `SweepJob`."""
    request = parse_request(pipe, label, prompt, steps, seed, guidance, model_key, frames)
    try:
        chosen = sorted({int(n) for n in (intervals or [])})
    except (TypeError, ValueError):
        raise ValueError(f"intervals={echo(intervals)}: give whole numbers") from None
    if not chosen:
        raise ValueError("no interval chosen: tick at least one")
    bad = [n for n in chosen if n < 1 or (n != 1 and n > request.steps - 1)]
    if bad:
        raise ValueError(f"intervals {bad} out of range for {request.steps} steps: allowed 1..{request.steps - 1}")
    num_seeds = integer("seeds", num_seeds, 1, SWEEP_SEEDS_MAX)
    if request.seed + num_seeds - 1 > SEED_MAX:
        raise ValueError(f"seed={request.seed} with {num_seeds} seeds passes the largest seed {SEED_MAX}")
    config = parse_config(
        1, request.steps, num_blocks(pipe), cache_attn, cache_cross_attn, cache_mlp, cache_start, cache_end, blocks
    )
    for n in chosen:  # each swept interval against the same window
        replace(config, interval=n).check_num_steps(request.steps)
    seeds = tuple(range(request.seed, request.seed + num_seeds))
    job = SweepJob(model_key, request, config, tuple(chosen), seeds)
    what = f"this sweep ({num_seeds} seeds x {len(chosen)} intervals x {request.steps} steps)"
    check_budget(job.denoising_steps(), what)
    return job


COMPARE_POLICIES = ("FORA", "calibrated", "calibrated-o1")  # the Compare tab's choice (Advanced)


def compare_plan(model_key: str, request: Request, interval: int, policy: str, plans: dict):
    """The calibrated plan the Compare tab runs at FORA N = `interval`'s cost, from the known `plans`."""
    from analysis.arena.policies import plan_key

    one_of("policy", policy, COMPARE_POLICIES)
    if policy == "FORA":
        return None
    if interval < 2:
        raise ValueError(f"policy {policy!r} runs at FORA N's cost: choose N >= 2 (got N={interval})")
    plan = plans.get(plan_key(model_key, request.steps, request.guidance, interval, policy != "calibrated"))
    if plan is None:
        raise ValueError(
            f"no {policy} plan yet for {model_key} at T={request.steps}, guidance {request.guidance}, "
            f"N={interval}'s cost: run these settings once in the Policies tab (it calibrates the plan "
            "and keeps it)"
        )
    return plan


def parse_policies(
    pipe, model_key: str, label, prompt, steps, seed, guidance, chosen, interval, plans: dict, frames=None
):
    """The Policies tab's values as a checked `PolicyJob` (budget included, counting plans still to calibrate)."""
    from analysis.arena.policies import MAX_POLICIES, POLICIES, PolicyJob

    request = parse_request(pipe, label, prompt, steps, seed, guidance, model_key, frames)
    chosen = list(dict.fromkeys([chosen] if isinstance(chosen, str) else (chosen or [])))
    if not chosen:
        raise ValueError("no policy chosen: tick one to three")
    if len(chosen) > MAX_POLICIES:
        raise ValueError(f"{len(chosen)} policies chosen: allowed 1..{MAX_POLICIES} side by side")
    unknown = [c for c in chosen if c not in POLICIES]
    if unknown:
        raise ValueError(f"unknown policies {echo(unknown)}; allowed: {', '.join(POLICIES)}")
    if request.steps < 4:
        raise ValueError(f"steps={request.steps}: the Policies tab needs T >= 4")
    from fora.peer_cache_dit import _SUPPORTED, supports_cache_dit

    peers = [c for c in chosen if c.startswith("DBCache")]
    if peers and not supports_cache_dit(pipe):
        raise ValueError(
            f"{', '.join(peers)}: cache-dit's DBCache runs here on {_SUPPORTED}; {type(pipe).__name__} is not one "
            "(untick it)"
        )
    if peers:
        from analysis.arena.policies import DBCACHE_KNOBS
        from fora.peer_cache_dit import cached_blocks

        edge, blocks = DBCACHE_KNOBS["fn"] + DBCACHE_KNOBS["bn"], cached_blocks(pipe)
        if blocks <= edge:
            raise ValueError(
                f"{', '.join(peers)}: this {type(pipe.transformer).__name__} has {blocks} block(s) and DBCache here "
                f"always computes the first {DBCACHE_KNOBS['fn']} and last {DBCACHE_KNOBS['bn']}: it needs at least "
                f"{edge + 1} (untick it)"
            )
    interval = integer("cost N", interval, 2, request.steps - 1)
    job = PolicyJob(model_key, request, tuple(chosen), interval)
    check_budget(job.denoising_steps(len(job.missing_plans(plans))), f"this comparison ({request.steps} steps)")
    return job


@dataclass(frozen=True)
class MemoryQuery:
    """The Memory tab's calculator inputs, checked."""

    shape_key: str
    batch: int
    dtype: str
    steps: int
    interval: int
    bandwidth_tbps: float
    tflops: float
    utilization: float


def parse_memory(shape_key, batch, dtype, steps, interval, bandwidth_tbps, tflops, utilization) -> MemoryQuery:
    """The Memory tab's values as a `MemoryQuery`, or `ValueError` naming the bad value and the allowed range."""
    from analysis.memory import DTYPE_BYTES, MODEL_SHAPES

    if shape_key not in MODEL_SHAPES:
        raise ValueError(f"unknown model {echo(shape_key)}; allowed: {', '.join(MODEL_SHAPES)}")
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={echo(dtype)}; allowed: {', '.join(DTYPE_BYTES)}")
    batch = integer("batch", batch, 1, 64)
    steps = integer("steps", steps, 2, 1000)
    interval = integer("interval", interval, 1, steps - 1)
    numbers = []
    for name, value, lo, hi in (
        ("bandwidth TB/s", bandwidth_tbps, 1e-3, 1e3),
        ("TFLOP/s", tflops, 1e-3, 1e5),
        ("utilization", utilization, 0.01, 1.0),
    ):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name}={echo(value)} is not a number; allowed {lo:g}..{hi:g}") from None
        if not lo <= v <= hi:
            raise ValueError(f"{name}={v:g} out of range: allowed {lo:g}..{hi:g}")
        numbers.append(v)
    return MemoryQuery(shape_key, batch, dtype, steps, interval, *numbers)
