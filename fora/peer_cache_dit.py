"""cache-dit's DBCache (Dual Block Cache; vipshop/cache-dit, pinned 1.5.3) as a peer of FORA on DiT, PixArt, SD3
(and the embedded MMDiT), Sana, FLUX.1, HunyuanDiT, Wan 2.1 and Qwen-Image pipelines, made correct.

DBCache: every step runs the first `Fn` blocks; when the relative mean absolute change of their residual since the
last step that computed everything is below a threshold (and the warm-up is over), the middle blocks are skipped and
the residual they added at that step is added again (with cache-dit's TaylorSeer calibrator, arXiv 2503.06923: its
Taylor extrapolation over the computed steps); the last `Bn` blocks always run. Fn = 1, Bn = 0 is First Block Cache.

Applied as cache-dit ships it, it is wrong or leaves traces on these pipelines (paths under
`site-packages/cache_dit/caching/`, version 1.5.3):
1. `enable_cache(pipe)` patches the pipeline *class* (`cache_adapters/cache_adapter.py:222`): every pipeline of that
   class enters the first one's cache contexts, and once two are cached and both disabled the class keeps a wrapper
   (`:574` restores the second one's saved call, which is the first one's wrapper);
2. on a transformer (a `BlockAdapter` without a pipeline: a persistent context, `cache_adapter.py:197`) nothing resets
   between calls: the step count runs on, so a second call skips the warm-up and may reuse the first call's residual
   at its step 0 (`cache_contexts/cache_context.py:172` resets only at the very first call); its own remedy,
   `num_inference_steps`, refreshes every that many steps (`cache_contexts/cache_manager.py:104`), which cuts a call
   with another number of steps at the wrong place;
3. `Fn + Bn` may exceed the blocks: each is checked against the count alone, at the first step
   (`cache_blocks/pattern_base.py:117-120`), and the overlap then runs twice per step, silently;
4. `disable_cache` leaves the transformer changed: DiT's patched forward as an instance attribute
   (`cache_adapter.py:553`, `patch_functors/functor_dit.py:24`), its `_norm1_emb` alias registered as a submodule
   (`functor_dit.py:23`: one more `named_modules()` and state-dict entry), and `transformer_blocks` moved to the end of
   the module order (every call swaps it with `unittest.mock.patch.object`, `cache_adapter.py:409`, which deletes and
   re-adds it);
5. the `BlockAdapter` constructor already patches the transformer (`block_adapters/block_adapters.py:126`), and an
   adapter that fails its checks is returned uncached without an error (`cache_adapter.py:99`).
6. on HunyuanDiT its patch functor (`patch_functors/functor_hunyuan_dit.py`) passes the long skip connections as a
   stack that the first half's blocks push and the second half's pop; on a step that skips the middle blocks only the
   first Fn push, so the last Bn pop the right partners only where Bn = 0 or Bn = min(Fn, L/2 - 1) for L blocks:
   otherwise they get other blocks' outputs, silently, or the stack runs out. It also leaves each block's patched
   `forward` and its `_num_layers`/`_layer_id` on the block instances after `disable_cache`.

`apply_cache_dit` uses cache-dit's own `BlockAdapter` on the transformer, with the forward pattern cache-dit's own
adapter registry gives the family (`block_adapters/adapters.py`): Pattern_3 for DiT, PixArt, Sana and HunyuanDiT (a
block takes and returns the hidden states; DiT also gets cache-dit's patch functor for its final layer's read of
block 0, HunyuanDiT its functor for the long skip connections, with the knobs item 6 allows), Pattern_2 for Wan 2.1
(both streams in, the image stream out), Pattern_1 for Qwen-Image; the last two run the guidance halves as separate
calls, cached apart in cache-dit's separate-CFG mode with every call checked against its parity,
Pattern_1 for SD3's joint blocks (they take both streams and return `(encoder_hidden_states, hidden_states)`; both
streams' residuals are cached, and with Bn >= 1 the TaylorSeer calibrator extrapolates the text stream's too), and
for FLUX.1 as cache-dit's FLUX adapter lays it out by default (`CACHE_DIT_FLUX_ENABLE_DUMMY_BLOCKS=1`): its
double-stream `transformer_blocks` and its `single_transformer_blocks` as one list of Pattern_1 blocks under the name
`transformer_blocks` (the single-stream list left empty during a call), with cache-dit's `FluxPatchFunctor` forward;
so Fn counts from the first double-stream block, Bn from the last single-stream one, and one decision skips all the
blocks between. No class is patched. A forward pre-hook on the transformer resets
every cache context (`reset_context`, as cache-dit's own per-call wrapper does) whenever the scheduler's timesteps are
set anew (`RunTracker`), with the run's length; the knobs are checked against the model before anything is applied;
`remove_cache_dit` calls `disable_cache` and undoes what it leaves. `cache_dit` is imported on first use: importing it
gives each of its loggers a stdout handler and replaces `logging.Logger.warning_once`/`info_once` (transformers') with
its own (`cache_dit/logger.py:87-101`), for the whole process: importing it is a side effect this module cannot undo.
"""

import contextlib
import copy
import logging
import math
import sys
import threading
from dataclasses import dataclass, field

import torch

from .apply import check_no_diffusers_cache, timestep_index
from .runs import RunTracker

_MAX_TAYLOR_ORDER = 2
_SUPPORTED = (
    "DiTPipeline, EmojiDiTPipeline and EmojiMMDiTPipeline (the embedded models), PixArtAlphaPipeline, "
    "PixArtSigmaPipeline, StableDiffusion3Pipeline, SanaPipeline, FluxPipeline, WanPipeline (Wan 2.1: one "
    "transformer), QwenImagePipeline, HunyuanDiTPipeline"
)
_LEFT_BY_DISABLE = ("forward", "_is_patched", "_norm1_emb")  # what disable_cache leaves on the transformer


@dataclass(frozen=True)
class CacheDiTConfig:
    r"""
    cache-dit's DBCache on a DiT, PixArt, SD3, Sana or FLUX.1 pipeline (`apply_cache_dit`).

    Args:
        threshold (`float`, defaults to 0.08):
            cache-dit's `residual_diff_threshold`: the middle blocks are skipped while the first Fn blocks' residual
            changed by less than this (relative mean absolute difference) since the last step that computed them;
            >= 0. 0 never skips; cache-dit takes 1 and above as "always similar": every step after the warm-up skips.
        fn_blocks (`int`, defaults to 1):
            Fn, the first blocks computed every step (>= 1; cache-dit's default 8 is for models of 28 blocks and more).
        bn_blocks (`int`, defaults to 0):
            Bn, the last blocks computed every step (>= 0). Fn + Bn must leave at least one block to skip.
        warmup (`int`, defaults to 1):
            First steps always computed (cache-dit's `max_warmup_steps`, >= 1: step 0 has nothing to compare with, and
            cache-dit runs warm-up 0 as 1; its default 8 is for 28-50 steps).
        taylorseer_order (`int`, *optional*):
            With cache-dit's TaylorSeer calibrator: the order 0..2 of the Taylor extrapolation of the skipped blocks'
            residual (0 reuses it). `None`: no calibrator, the residual is reused as it is.
    """

    threshold: float = 0.08
    fn_blocks: int = 1
    bn_blocks: int = 0
    warmup: int = 1
    taylorseer_order: int | None = None

    def __post_init__(self):
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value >= 0):
            raise ValueError(f"DBCache threshold={value!r}: must be a finite number >= 0")
        for name, low in (("fn_blocks", 1), ("bn_blocks", 0), ("warmup", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"DBCache {name}={value!r}: must be an integer >= {low}")
        order = self.taylorseer_order
        if order is not None and (isinstance(order, bool) or not isinstance(order, int) or not 0 <= order <= 2):
            raise ValueError(f"DBCache taylorseer_order={order!r}: allowed None (no calibrator) or 0..2")

    @property
    def name(self) -> str:
        return "dbcache" if self.taylorseer_order is None else "dbcache-taylorseer"

    def cache_dit_configs(
        self, num_steps: int | None = None, encoder_stream: bool = False, separate_cfg: bool = False
    ) -> tuple:
        """cache-dit's `DBCacheConfig` and `TaylorSeerCalibratorConfig` (or `None`) for a run of `num_steps`;
        `encoder_stream`: the blocks return a text stream too (SD3), which the calibrator then extrapolates;
        `separate_cfg`: the pipeline calls the transformer twice a step, conditional first (Wan, Qwen-Image with
        guidance), and cache-dit keeps each half's residuals and decisions apart, telling them by call parity."""
        from cache_dit import DBCacheConfig, TaylorSeerCalibratorConfig

        cache = DBCacheConfig(
            Fn_compute_blocks=self.fn_blocks,
            Bn_compute_blocks=self.bn_blocks,
            residual_diff_threshold=float(self.threshold),
            max_warmup_steps=self.warmup,
            enable_separate_cfg=separate_cfg,
            cfg_compute_first=False,  # the conditional call comes first in both pipelines
            num_inference_steps=num_steps,
        )
        if self.taylorseer_order is None:
            return cache, None
        # Pattern_3 blocks have no encoder stream: its calibrator would stay unused. With Bn = 0, cache-dit 1.5.3's
        # encoder calibrator fails at the first skipped step (`calibrators/taylorseer.py:229`, "State
        # 'transformer_blocks_Bn_residual' not found"): there the text stream's residual is reused as it is
        calibrator = TaylorSeerCalibratorConfig(
            taylorseer_order=self.taylorseer_order, enable_encoder_calibrator=encoder_stream and self.bn_blocks > 0
        )
        return cache, calibrator


@dataclass
class CacheDiTRun:
    """One run of DBCache: its length, the steps done and, from cache-dit's own record, the steps at which the middle
    blocks were skipped (module counts come from `analysis.metrics.compute_map`, which sees what really ran)."""

    num_steps: int
    steps_done: int = 0
    cached_steps: list[int] = field(default_factory=list)
    calls_per_step: int = 1  # 2 where the guidance halves are separate calls
    cfg_cached_steps: list[int] = field(default_factory=list)  # the unconditional call's skipping steps


class CacheDiTHandle:
    """Returned by `apply_cache_dit`: the config, the record of the most recent run, and what removal undoes."""

    def __init__(self, pipeline, config: CacheDiTConfig, num_blocks: int, encoder_stream: bool = False):
        self.config = config
        self.num_blocks = num_blocks
        self.encoder_stream = encoder_stream
        self._timestep_index = timestep_index(pipeline.transformer)
        self._calls_per_step = _GUIDANCE_CALLS.get(type(pipeline).__name__)  # None: one call a step
        self._calls = 0  # transformer calls of the current run
        self.last_run: CacheDiTRun | None = None
        self.runs = RunTracker(pipeline, transformer=pipeline.transformer)  # a run is one pipeline call
        self._adapter = None
        self._manager = None  # cache-dit's context manager, and its context's name
        self._contexts: list[str] = []
        self._hooks: list = []
        self._module_order: list[str] = []
        self._block_attrs: list[tuple[torch.nn.Module, set]] = []  # each block and its instance attributes before

    @property
    def name(self) -> str:
        return self.config.name

    def block_calls(self) -> int | None:
        """Block forwards of the last run by cache-dit's record: all blocks at each computed step, Fn + Bn at each
        skipping step."""
        run = self.last_run
        if run is None:
            return None
        skipped = self.num_blocks - self.config.fn_blocks - self.config.bn_blocks
        cached = len(run.cached_steps) + len(run.cfg_cached_steps)
        return run.steps_done * run.calls_per_step * self.num_blocks - cached * skipped

    def _pre_forward(self, module, args, kwargs):
        index = self._timestep_index
        timestep = kwargs.get("timestep", args[index] if index is not None and len(args) > index else None)
        new_run = self.runs.begin_call(timestep)
        if new_run is not None:
            calls = self._calls_per_step(self.runs._calling_pipeline()) if self._calls_per_step else 1
            cache, calibrator = self.config.cache_dit_configs(new_run, self.encoder_stream, calls == 2)
            kwargs = {"cache_config": cache} | ({"calibrator_config": calibrator} if calibrator is not None else {})
            for name in self._contexts:  # a fresh context: step count, buffers, calibrator states
                self._manager.reset_context(name, **copy.deepcopy(kwargs))
            self.last_run, self._calls = CacheDiTRun(new_run, calls_per_step=calls), 0
        # cache-dit tells the guidance halves apart by call parity alone (even: conditional, odd: unconditional):
        # every call is checked against it, so a step with one call where two were due (or a third) stops the run
        # instead of mixing the halves' residuals
        calls = self.last_run.calls_per_step
        if calls == 1 and not self.runs.primary:
            raise RuntimeError(
                f"{type(module).__name__} was called a second time in step {self.runs.step}: DBCache runs here with "
                "one call a step, or with the two guidance halves as separate calls on Wan 2.1 and Qwen-Image only"
            )
        if calls == 2 and self.runs.primary != (self._calls % 2 == 0):
            raise RuntimeError(
                f"DBCache with the guidance halves as separate calls: call {self._calls} of the run (step "
                f"{self.runs.step}) is not the {'conditional' if self._calls % 2 == 0 else 'unconditional'} one that "
                "cache-dit expects by call parity; every step must call the conditional, then the unconditional half"
            )
        self._calls += 1

    def _post_forward(self, module, args, output):
        self.runs.end_call()
        self.last_run.steps_done = self.runs.steps_done
        context = self._manager.get_context(self._contexts[0])
        self.last_run.cached_steps = context.get_cached_steps()
        if self.last_run.calls_per_step == 2:
            self.last_run.cfg_cached_steps = context.get_cfg_cached_steps()

    def __repr__(self):
        return f"CacheDiTHandle({self.config!r}, last_run={self.last_run!r})"


def apply_cache_dit(pipe, config: CacheDiTConfig) -> CacheDiTHandle:
    """Apply cache-dit's DBCache to a DiT, PixArt, SD3, Sana or FLUX.1 pipeline, correctly (see the module doc): a
    fresh cache context for every pipeline call, nothing patched on a class. `remove_cache_dit` (or
    `fora.peers.remove_peer`) restores the transformer exactly. Other pipelines, and knobs the model cannot take,
    are refused with a `ValueError`.

    Example:

    >>> handle = apply_cache_dit(pipe, CacheDiTConfig(threshold=0.2, fn_blocks=1, warmup=2, taylorseer_order=1))
    >>> images = pipe(class_labels=[3], num_inference_steps=30).images
    >>> handle.last_run.cached_steps  # the steps that skipped the middle blocks
    >>> remove_cache_dit(pipe)
    """
    transformer = getattr(pipe, "transformer", None)
    if not isinstance(transformer, torch.nn.Module) or not hasattr(pipe, "scheduler"):
        raise TypeError(
            f"apply_cache_dit needs a diffusers pipeline with .transformer and .scheduler, got {type(pipe)!r}"
        )
    if not isinstance(config, CacheDiTConfig):
        raise TypeError(f"apply_cache_dit takes a CacheDiTConfig, got {type(config)}")
    if not isinstance(pipe, _supported_pipelines()):
        raise ValueError(
            f"{type(pipe).__name__}: cache-dit's DBCache runs here on {_SUPPORTED} (one transformer call per step, "
            "one block list as cache-dit's adapter for the family lays it out)"
        )
    found = _block_list(transformer)
    if found is None:
        raise ValueError(
            f"{type(pipe).__name__} with a {type(transformer).__name__}: cache-dit's DBCache runs here on "
            "DiTTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel, SanaTransformer2DModel, "
            "FluxTransformer2DModel, WanTransformer3DModel, QwenImageTransformer2DModel and HunyuanDiT2DModel"
        )
    if getattr(pipe, "transformer_2", None) is not None:
        raise ValueError(
            f"{type(pipe).__name__} with a second expert (transformer_2, Wan 2.2): DBCache runs here on one "
            "transformer (Wan 2.1)"
        )
    check_no_diffusers_cache(transformer)  # first: it names the cache, the checks below do not
    registry = getattr(transformer, "_diffusers_hook", None)  # FLUX's pipeline leaves an empty one (cache_context)
    if any(getattr(transformer, a, None) is not None for a in ("_fora_handle", "_peer_handle")) or (
        registry is not None and registry.hooks
    ):
        raise ValueError("a cache is already applied to this model; remove it first (remove_fora / remove_peer)")
    if "forward" in transformer.__dict__:  # accelerate's offload hooks, torch.compile's wrapper, another cache
        raise ValueError(
            f"{type(transformer).__name__}.forward is wrapped on this instance already: DBCache wraps the class's own "
            "forward only (remove the other wrapper first)"
        )
    if getattr(transformer, "_is_cached", False):
        raise ValueError("cache-dit is already applied to this model; remove it first (cache_dit.disable_cache)")
    blocks, pattern_name = found
    num_blocks = len(blocks)
    check_knobs(transformer, config.fn_blocks, config.bn_blocks)
    import cache_dit
    from cache_dit import BlockAdapter, ForwardPattern

    encoder_stream = pattern_name == "Pattern_1"
    handle = CacheDiTHandle(pipe, config, num_blocks, encoder_stream)
    handle._module_order = list(transformer._modules)
    handle._block_attrs = [(block, set(block.__dict__)) for block in blocks]
    cache, calibrator = config.cache_dit_configs(encoder_stream=encoder_stream)
    try:
        with _quiet():
            handle._adapter = BlockAdapter(
                transformer=transformer,
                blocks=blocks,
                forward_pattern=getattr(ForwardPattern, pattern_name),
                check_forward_pattern=True,
                **_adapter_options(transformer),
            )
            cache_dit.enable_cache(handle._adapter, cache_config=cache, calibrator_config=calibrator)
        handle._manager = getattr(transformer, "_context_manager", None)
        handle._contexts = list(getattr(transformer, "_context_names", None) or [])
        if not getattr(transformer, "_is_cached", False) or handle._manager is None or len(handle._contexts) != 1:
            raise RuntimeError(f"cache-dit did not cache {type(transformer).__name__}'s blocks")
    except BaseException:
        _undo(transformer, handle)
        raise
    handle._hooks = [
        transformer.register_forward_pre_hook(handle._pre_forward, with_kwargs=True),
        transformer.register_forward_hook(handle._post_forward),
    ]
    transformer._peer_handle = handle
    return handle


def check_knobs(transformer: torch.nn.Module, fn_blocks: int, bn_blocks: int) -> None:
    """`ValueError` for Fn and Bn that DBCache cannot run faithfully on this transformer: Fn + Bn leaving no block to
    skip; on HunyuanDiT, Bn other than 0 or min(Fn, L/2 - 1) for its L blocks (module doc, item 6)."""
    from diffusers import HunyuanDiT2DModel

    found = _block_list(transformer)
    num_blocks = len(found[0]) if found is not None else 0
    if fn_blocks + bn_blocks >= num_blocks:
        raise ValueError(
            f"DBCache fn_blocks={fn_blocks} + bn_blocks={bn_blocks} with {num_blocks} blocks: "
            f"Fn + Bn must be at most {num_blocks - 1}, leaving a block to skip"
        )
    if isinstance(transformer, HunyuanDiT2DModel):
        # blocks 0 .. half - 1 push a long skip connection onto a stack and the last half - 1 pop theirs; on a
        # skipping step only the first Fn push (min(Fn, half) entries), and the last Bn pop from the top
        half = num_blocks // 2 - 1
        if bn_blocks and bn_blocks != min(fn_blocks, half):
            raise ValueError(
                f"DBCache fn_blocks={fn_blocks}, bn_blocks={bn_blocks} on HunyuanDiT ({num_blocks} blocks): its long "
                f"skip connections pair the last Bn blocks with the first Bn, which on a skipping step is right only "
                f"with Bn = 0 or Bn = min(Fn, {half})"
            )


def supports_cache_dit(pipe) -> bool:
    """Whether `apply_cache_dit` runs on `pipe`'s pipeline class and transformer (checked before any run)."""
    transformer = getattr(pipe, "transformer", None)
    return (
        isinstance(pipe, _supported_pipelines()) and transformer is not None and _block_list(transformer) is not None
    )


def cached_blocks(pipe) -> int:
    """The blocks in the list DBCache wraps (FLUX.1: both of its lists as one); 0 when DBCache does not run on it."""
    found = _block_list(getattr(pipe, "transformer", pipe))
    return len(found[0]) if found is not None else 0


def remove_cache_dit(pipe) -> None:
    """Remove DBCache applied by `apply_cache_dit`: the transformer is exactly what it was (forward, submodules and
    their order, attributes)."""
    transformer = getattr(pipe, "transformer", pipe)
    handle = getattr(transformer, "_peer_handle", None)
    if not isinstance(handle, CacheDiTHandle):
        return
    for hook in handle._hooks:
        hook.remove()
    _undo(transformer, handle)
    del transformer._peer_handle


def _undo(transformer: torch.nn.Module, handle: CacheDiTHandle) -> None:
    """cache-dit's `disable_cache`, then what it leaves (module doc, item 4)."""
    adapter = handle._adapter
    if adapter is not None and getattr(adapter, "_is_normalized", False):
        import cache_dit

        with _quiet():
            cache_dit.disable_cache(adapter)
    for name in _LEFT_BY_DISABLE:
        if name not in handle._module_order and (name in transformer.__dict__ or name in transformer._modules):
            delattr(transformer, name)
    for block, attrs in handle._block_attrs:  # HunyuanDiT's functor patches every block (module doc, item 6)
        for name in set(block.__dict__) - attrs:
            delattr(block, name)
    modules = transformer._modules
    original = {name: modules[name] for name in handle._module_order}
    modules.clear()
    modules.update(original)


def _supported_pipelines() -> tuple:
    from diffusers import (
        DiTPipeline,
        FluxPipeline,
        HunyuanDiTPipeline,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        QwenImagePipeline,
        SanaPipeline,
        StableDiffusion3Pipeline,
        WanPipeline,
    )

    from embedded.emoji.pipeline import EmojiDiTPipeline
    from embedded.emoji_mmdit.pipeline import EmojiMMDiTPipeline

    return (
        DiTPipeline,
        EmojiDiTPipeline,
        EmojiMMDiTPipeline,
        PixArtAlphaPipeline,
        PixArtSigmaPipeline,
        StableDiffusion3Pipeline,
        SanaPipeline,
        FluxPipeline,
        WanPipeline,
        QwenImagePipeline,
        HunyuanDiTPipeline,
    )


def _block_list(transformer: torch.nn.Module) -> tuple[torch.nn.ModuleList, str] | None:
    """The block list DBCache wraps and cache-dit's forward pattern for its blocks (what cache-dit's adapter
    registry uses for the family): Pattern_3 (hidden states in and out) for DiT, PixArt and
    Sana, Pattern_1 (both streams in, `(encoder, hidden)` out) for SD3's, Qwen-Image's and FLUX.1's blocks (its two
    lists as one), Pattern_2 (both streams in, hidden states out) for Wan's; None for other transformers."""
    from diffusers import (
        DiTTransformer2DModel,
        FluxTransformer2DModel,
        HunyuanDiT2DModel,
        PixArtTransformer2DModel,
        QwenImageTransformer2DModel,
        SanaTransformer2DModel,
        SD3Transformer2DModel,
        WanTransformer3DModel,
    )

    if isinstance(transformer, (DiTTransformer2DModel, PixArtTransformer2DModel, SanaTransformer2DModel)):
        return transformer.transformer_blocks, "Pattern_3"
    if type(transformer) is HunyuanDiT2DModel:  # its patch functor (`_adapter_options`) passes the skip connections
        return transformer.blocks, "Pattern_3"
    if isinstance(transformer, (SD3Transformer2DModel, QwenImageTransformer2DModel)):
        return transformer.transformer_blocks, "Pattern_1"
    if type(transformer) is WanTransformer3DModel:  # not WanVACE's (its blocks take hints: a patch functor)
        return transformer.blocks, "Pattern_2"
    if isinstance(transformer, FluxTransformer2DModel):  # cache-dit's default FLUX layout: one list (module doc)
        return transformer.transformer_blocks + transformer.single_transformer_blocks, "Pattern_1"
    return None


def _adapter_options(transformer: torch.nn.Module) -> dict:
    """The rest of cache-dit's adapter for the family: DiT's patch functor (its final layer reads block 0's
    embedding, which the cached block list hides); FLUX.1's unified list, the emptied single-stream list and its
    patch functor, as cache-dit's FLUX adapter sets them by default."""
    from cache_dit.caching.patch_functors import DiTPatchFunctor, FluxPatchFunctor, HunyuanDiTPatchFunctor
    from diffusers import DiTTransformer2DModel, FluxTransformer2DModel, HunyuanDiT2DModel

    if isinstance(transformer, DiTTransformer2DModel):
        return {"patch_functor": DiTPatchFunctor()}
    if isinstance(transformer, HunyuanDiT2DModel):  # the long skip connections, as cache-dit's HunyuanDiT adapter
        return {"patch_functor": HunyuanDiTPatchFunctor()}
    if isinstance(transformer, FluxTransformer2DModel):
        return {
            "blocks_name": "transformer_blocks",
            "dummy_blocks_names": ["single_transformer_blocks"],
            "patch_functor": FluxPatchFunctor(),
        }
    return {}


def _wan_calls(pipe) -> int:
    """Wan's transformer calls a step: 2 with classifier-free guidance (its `do_classifier_free_guidance`, set
    before the first call), else 1."""
    return 2 if pipe.do_classifier_free_guidance else 1


def _qwen_calls(pipe) -> int:
    """Qwen-Image's transformer calls a step: 2 with true CFG, which its `__call__` decides in a local
    (`do_true_cfg = true_cfg_scale > 1 and has_neg_prompt`) and keeps nowhere else; read from that call's frame."""
    code = getattr(type(pipe).__call__, "__wrapped__", type(pipe).__call__).__code__
    frame = sys._getframe(1)
    while frame is not None and frame.f_code is not code:
        frame = frame.f_back
    if frame is None or "do_true_cfg" not in frame.f_locals:
        raise RuntimeError(
            f"{type(pipe).__name__}: cannot tell whether this call runs true CFG (its __call__ has no do_true_cfg: "
            "another diffusers version); DBCache is refused rather than guessing the calls a step"
        )
    return 2 if frame.f_locals["do_true_cfg"] else 1


# the pipelines that run the guidance halves as separate transformer calls, and how many each run makes a step
_GUIDANCE_CALLS = {"WanPipeline": _wan_calls, "QwenImagePipeline": _qwen_calls}

_QUIET_LOCK = threading.Lock()


@contextlib.contextmanager
def _quiet():
    """cache-dit logs every step of applying and removing it at INFO on stdout (its loggers do not propagate), about
    ten lines each time the arena applies and removes it; only its errors are let through here."""
    loggers = [
        logger
        for name, logger in list(logging.Logger.manager.loggerDict.items())
        if name.startswith("cache_dit") and isinstance(logger, logging.Logger)
    ]
    with _QUIET_LOCK:  # two threads' save and restore, interleaved, would leave the loggers at ERROR for good
        levels = [logger.level for logger in loggers]
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        try:
            yield
        finally:
            for logger, level in zip(loggers, levels):
                logger.setLevel(level)
