"""How big is the FORA cache, and is reading it from GPU memory (HBM) fast enough?

The cache does not fit on-chip (an H100 has 50 MB of L2; DiT-XL/2 at 512 caches 264 MB), so it lives in HBM and a
reuse step reads it back. This module answers with numbers: the bytes of the cache per configuration, the time to
read them at a stated memory bandwidth, and the time of the attention and MLP compute they replace at a stated
throughput, per step and per run. `measure_bandwidth` measures the read on the machine at hand instead (GB/s of a
streaming read of the cache's size, next to a plain large copy on the same device). A small read is bound by the
call's fixed cost (dispatch, a kernel launch), not by memory: it is timed against the same reduction over one element
and, when under twice that, shown as a time per read with no GB/s.
"""

import itertools
import statistics
from dataclasses import asdict, dataclass

import torch

from fora.schedule import full_steps
from fora.timing import time_call

H100_SXM_BANDWIDTH = 3.35e12  # bytes/s, HBM3 (NVIDIA H100 SXM datasheet)
H100_SXM_BF16_FLOPS = 989e12  # dense BF16 tensor-core FLOP/s (datasheet, without sparsity)
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


# What one block of each layout caches and computes, per guidance row: (module outputs as (tokens, width) terms,
# work as attention sequences and MLP token counts). L: image tokens, T: text tokens.
# - "dit": self-attention and MLP over the image (DiT); with T > 0 also cross-attention to the text (PixArt, Sana,
#   HunyuanDiT, Wan), whose output is L x D
# - "joint": SD3 / FLUX double-stream / Qwen-Image: one attention over L + T tokens returning both streams, an image
#   MLP (L) and a text MLP (T)
# - "single": FLUX single-stream: attention and MLP over L + T fused and projected, one output of L + T
# - "unified": Lumina 2's main blocks: attention and MLP over the concatenated L + T sequence, outputs L + T each
# - "image": an image-only attention and MLP (Lumina 2's noise refiners); "text": the same over T (its context
#   refiners); "attn2": SD3.5's second self-attention over the image (dual-attention layers)
LAYOUTS = ("dit", "joint", "single", "unified", "image", "text", "attn2")


@dataclass(frozen=True)
class ModelShape:
    r"""
    A checkpoint's shape at its native size, as the cache and the compute it replaces see it.

    Args:
        name (`str`): the model key.
        blocks (`int`): blocks of the first (or only) layout.
        hidden (`int`): the blocks' width D.
        tokens (`int`): image tokens per sample L ((resolution / 8 / patch)^2 for latent models; Wan: frames too).
        text_tokens (`int`, defaults to 0): text tokens T (cross-attention keys, or the text stream of joint blocks).
        layout (`str`, defaults to `"dit"`): the first blocks' layout (`LAYOUTS`).
        more (`tuple`, defaults to `()`): further (layout, blocks) groups (FLUX's single-stream blocks, ...).
        mlp_ratio (`float`, defaults to 4): MLP hidden width over D.
        linear_attention (`bool`, defaults to `False`): self-attention linear in the tokens (Sana).
        context_pre_only_last (`bool`, defaults to `False`): the last joint block has no text MLP (SD3, the
            embedded MMDiT).
        guidance_rows (`int`, defaults to 2): forwards per image and step: 2 with classifier-free guidance (batched
            or, in Wan, Qwen-Image and Lumina 2, separate calls with a cache each), 1 for FLUX.1's distilled guidance.
    """

    name: str
    blocks: int
    hidden: int
    tokens: int
    text_tokens: int = 0
    layout: str = "dit"
    more: tuple = ()
    mlp_ratio: float = 4.0
    linear_attention: bool = False  # Sana: keys and values summarised per head (head width 32): no L x L term
    context_pre_only_last: bool = False  # SD3: the last joint block has no text MLP
    guidance_rows: int = 2  # rows per image in a step: 2 with classifier-free guidance, 1 for FLUX.1's distilled

    def __post_init__(self):
        for layout, _ in self.groups:
            if layout not in LAYOUTS:
                raise ValueError(f"{self.name}: layout {layout!r}; allowed: {', '.join(LAYOUTS)}")

    @property
    def groups(self) -> tuple:
        return ((self.layout, self.blocks), *self.more)

    @property
    def total_blocks(self) -> int:
        """Transformer blocks (SD3.5's second attentions sit inside its blocks: not counted)."""
        return sum(n for layout, n in self.groups if layout != "attn2")

    @property
    def cached_modules(self) -> int:
        """Cached modules per block of the first layout (attn + MLP, + cross-attention with text in "dit")."""
        return {"dit": 3 if self.text_tokens else 2, "joint": 3, "single": 1, "unified": 2}.get(self.layout, 2)

    def cached_elements(self) -> int:
        """Elements the cache holds per guidance row: every cached module's output, tokens x width, summed."""
        L, T, D = self.tokens, self.text_tokens, self.hidden
        per_block = {
            "dit": (2 + (1 if T else 0)) * L * D,
            "joint": (L + T) * D + L * D + T * D,  # attention's two streams, image MLP, text MLP
            "single": (L + T) * D,
            "unified": 2 * (L + T) * D,
            "image": 2 * L * D,
            "text": 2 * T * D,
            "attn2": L * D,
        }
        last = T * D if self.context_pre_only_last else 0  # its attention still returns the text part
        return sum(per_block[layout] * n for layout, n in self.groups) - last

    def replaced_flops(self) -> float:
        """FLOPs of the attention and MLP work one reuse step skips per guidance row (2 per multiply-add)."""
        L, T, D, r = self.tokens, self.text_tokens, self.hidden, self.mlp_ratio

        def attention(q: int, kv: int | None = None) -> float:  # projections, then QK^T and AV
            kv = q if kv is None else kv
            scores = 2 * 2 * q * kv * D if not self.linear_attention or kv != q else 2 * 2 * q * D * 32
            return 2 * (2 * q + 2 * kv) * D * D + scores

        def mlp(n: int) -> float:
            return 2 * n * 2 * r * D * D

        per_block = {
            "dit": attention(L) + mlp(L) + (attention(L, T) if T else 0),
            "joint": attention(L + T) + mlp(L) + mlp(T),
            "single": attention(L + T) + mlp(L + T),
            "unified": attention(L + T) + mlp(L + T),
            "image": attention(L) + mlp(L),
            "text": attention(T) + mlp(T),
            "attn2": attention(L),
        }
        last = mlp(T) if self.context_pre_only_last else 0
        return sum(per_block[layout] * n for layout, n in self.groups) - last


# each checkpoint at its native size (the model configs on the hub; text tokens at the pipelines' default lengths)
MODEL_SHAPES = {
    s.name: s
    for s in [
        ModelShape("emoji-dit", 6, 128, 256),
        ModelShape("emoji-mmdit", 6, 128, 256, 16, "joint", context_pre_only_last=True),
        ModelShape("dit-xl-2-256", 28, 1152, 256),
        ModelShape("dit-xl-2-512", 28, 1152, 1024),
        ModelShape("pixart-alpha-512", 28, 1152, 1024, 120),
        ModelShape("pixart-alpha-1024", 28, 1152, 4096, 120),
        ModelShape("pixart-sigma-1024", 28, 1152, 4096, 300),
        ModelShape("sd3.5-medium", 24, 1536, 4096, 333, "joint", (("attn2", 13),), context_pre_only_last=True),
        ModelShape("flux.1-dev", 19, 3072, 4096, 512, "joint", (("single", 38),), guidance_rows=1),
        ModelShape("flux.1-schnell", 19, 3072, 4096, 256, "joint", (("single", 38),), guidance_rows=1),
        # Sana's GLUMBConv: D -> 2 x 2.5D (gated) and 2.5D -> D, 7.5 D^2 multiply-adds a token: mlp_ratio 3.75
        ModelShape("sana-1600m-1024", 20, 2240, 1024, 300, mlp_ratio=3.75, linear_attention=True),
        ModelShape("hunyuan-dit-1.2", 40, 1408, 4096, 333, mlp_ratio=4.3637),
        ModelShape("lumina-image-2", 26, 2304, 4096, 256, "unified", (("image", 2), ("text", 2))),
        ModelShape("wan2.1-t2v-1.3b", 30, 1536, 21 * 30 * 52, 512, mlp_ratio=8960 / 1536),
        ModelShape("qwen-image", 60, 3072, 83 * 83, 128, "joint"),
    ]
}


def cache_bytes(shape: ModelShape, batch: int = 1, dtype: str = "float16", guidance: bool = True) -> int:
    """Bytes the cache holds: every cached module's output (`ModelShape.cached_elements`) per guidance row."""
    if dtype not in DTYPE_BYTES:
        raise ValueError(f"dtype={dtype!r}; allowed: {', '.join(DTYPE_BYTES)}")
    if batch < 1:
        raise ValueError(f"batch={batch}: must be >= 1")
    rows = batch * (shape.guidance_rows if guidance else 1)
    return rows * shape.cached_elements() * DTYPE_BYTES[dtype]


def replaced_flops(shape: ModelShape, batch: int = 1, guidance: bool = True) -> float:
    """FLOPs of the attention and MLP work one reuse step skips (2 FLOPs per multiply-add)."""
    return batch * (shape.guidance_rows if guidance else 1) * shape.replaced_flops()


def hbm_answer(
    shape: ModelShape,
    batch: int = 1,
    dtype: str = "float16",
    steps: int = 50,
    interval: int = 3,
    bandwidth: float = H100_SXM_BANDWIDTH,
    flops: float = H100_SXM_BF16_FLOPS,
    utilization: float = 0.5,
) -> dict:
    """Read time of the cache against the compute it replaces, per reuse step and per run.

    `utilization` is the assumed fraction of peak `flops` that attention/MLP reach (0.5 is typical of large GEMMs);
    the read is taken at full `bandwidth`, which favours neither side much: a streaming read reaches ~90% of it.
    """
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization={utilization}: allowed (0, 1]")
    nbytes = cache_bytes(shape, batch, dtype)
    read_s = nbytes / bandwidth
    compute_s = replaced_flops(shape, batch) / (flops * utilization)
    reuse_steps = steps - len(full_steps(steps, interval))
    return {
        **asdict(shape),
        "batch": batch,
        "dtype": dtype,
        "steps": steps,
        "interval": interval,
        "cache_bytes": nbytes,
        "read_ms_per_step": read_s * 1e3,
        "compute_ms_per_step": compute_s * 1e3,
        "compute_over_read": compute_s / read_s,
        "reuse_steps": reuse_steps,
        "read_ms_per_run": read_s * reuse_steps * 1e3,
        "saved_ms_per_run": (compute_s - read_s) * reuse_steps * 1e3,
        "bandwidth_TBps": bandwidth / 1e12,
        "flops_TFLOPs": flops / 1e12,
        "utilization": utilization,
    }


def size_text(nbytes: float) -> str:
    """Bytes as MiB, or KiB under one MiB (a small read would read "0.0 MiB")."""
    return f"{nbytes / 2**20:.1f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def is_overhead_bound(read_s: float, call_s: float) -> bool:
    """A read under twice the same call over one element spends most of its time in the call's fixed cost: its
    bytes / seconds would be no bandwidth."""
    return read_s < 2 * call_s


@dataclass(frozen=True)
class Bandwidth:
    """Measured memory bandwidth on one device: reading a buffer of the cache's size, the same reduction over one
    element (the call's fixed cost) and a plain large copy."""

    device: str
    nbytes: int  # bytes of the buffer read (the cache's size)
    read_s: float  # median seconds to read it once
    copy_bytes: int  # bytes of the reference copy's source
    copy_s: float  # median seconds of the reference copy
    call_s: float  # median seconds of the same reduction over one element: dispatch, a kernel launch

    @property
    def overhead_bound(self) -> bool:
        """The read took under twice the one-element call: bound by the call's fixed cost, not by memory."""
        return is_overhead_bound(self.read_s, self.call_s)

    @property
    def read_GBps(self) -> float | None:
        """Bytes read per second, the call's fixed cost taken off the read's time (just past the bound, counting it
        would halve the figure); None for a read bound by that cost (no bandwidth to speak of)."""
        return None if self.overhead_bound else self.nbytes / (self.read_s - self.call_s) / 1e9

    @property
    def copy_GBps(self) -> float:
        """The copy reads and writes every byte: counted twice, as STREAM does."""
        return 2 * self.copy_bytes / self.copy_s / 1e9

    @property
    def overhead_bytes(self) -> float:
        """Reads below about this size are bound by the call's fixed cost: at the copy's speed they take less than
        one call's fixed cost to stream (an estimate; the copy stands in for the device's bandwidth)."""
        return self.call_s * self.copy_GBps * 1e9

    def read_text(self) -> str:
        """The read in words: its time and GB/s, or its time per read when the call's fixed cost bounds it."""
        took = f"reading {size_text(self.nbytes)} took {self.read_s * 1e3:.3g} ms"
        if self.overhead_bound:
            return (
                f"{took} per read, bound by the call's fixed cost ({self.call_s * 1e6:.3g} µs over one element), "
                "not by memory: no GB/s"
            )
        return f"{took}, {self.read_GBps:.1f} GB/s"

    def overhead_text(self) -> str:
        return (
            f"reads below about {size_text(self.overhead_bytes)} are bound by the call's fixed cost here "
            f"({self.call_s * 1e6:.3g} µs per call; the size estimated from the copy's speed)"
        )

    def __str__(self) -> str:
        return (
            f"{self.read_text()}; plain copy of {self.copy_bytes / 2**20:.0f} MiB: {self.copy_GBps:.1f} GB/s "
            f"({self.device}); {self.overhead_text()}"
        )


EVICT_BYTES = 256 * 2**20  # more than any CPU's last-level cache per socket slice or a GPU's L2 (H100: 50 MiB)


def _median_seconds(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: first touch of the pages, kernel selection
    return statistics.median(time_call(fn, device) for _ in range(repeats))


def _read_seconds(nbytes: int, device: torch.device, repeats: int, span_bytes: int = EVICT_BYTES) -> tuple[float, int]:
    """Median seconds of one reduction over a buffer of `nbytes`, and the bytes it really holds.

    The reads rotate over enough copies of the buffer that at least `span_bytes` are read between two reads of the
    same copy, so no read finds its buffer in the device's caches (a cache of a few MiB would otherwise be timed at
    cache speed, not memory speed). At most about `span_bytes + 2 * nbytes` are allocated."""
    dtype = torch.float16 if device.type == "cuda" else torch.float32  # no CPU reduces float16 at memory speed
    size = torch.finfo(dtype).bits // 8
    numel = max(1, nbytes // size)
    buffer_bytes = numel * size
    # a buffer of span_bytes or more streams itself out of cache; a smaller one rotates with copies holding span_bytes
    # (at most 1024 copies: a buffer under span_bytes / 1024 = 256 KiB is a cache's size, not a memory read)
    copies = 1 if buffer_bytes >= span_bytes else min(1024, 1 + -(-span_bytes // buffer_bytes))
    buffers = [torch.ones(numel, dtype=dtype, device=device) for _ in range(copies)]
    acc = torch.empty((), dtype=torch.float32, device=device)  # preallocated: the loop allocates nothing
    turn = itertools.cycle(buffers)
    read = lambda: torch.sum(next(turn), 0, dtype=torch.float32, out=acc)
    return _median_seconds(read, device, repeats), buffer_bytes


def call_seconds(device: str | torch.device = "cpu", repeats: int = 10) -> float:
    """Median seconds of the read's reduction over a single element on `device`: the fixed cost of the call
    (Python, dispatch, on a GPU a kernel launch) that every read pays whatever its size."""
    return _read_seconds(1, torch.device(device), repeats, span_bytes=0)[0]


def measure_bandwidth(
    nbytes: int, device: str | torch.device = "cpu", repeats: int = 10, copy_bytes: int = 256 * 2**20
) -> Bandwidth:
    """Measure how fast `device` reads `nbytes` (a reduction over a buffer of that size: the cache's one streaming
    read on a reuse step), next to a plain copy of `copy_bytes` into a preallocated buffer on the same device.

    A reduction is memory-bound, so it runs at the device's read bandwidth; the reads rotate over copies of the
    buffer so that none is served from the device's caches (`_read_seconds`). Elements are float16 on a GPU and
    float32 on a CPU; bytes are bytes. CUDA events on a GPU, the wall clock on a CPU; median of `repeats` after a
    warm-up. The same reduction over one element gives the call's fixed cost (`call_seconds`): a read under twice
    that is `overhead_bound`, and gets no GB/s.
    """
    device = torch.device(device)
    read_s, nbytes = _read_seconds(nbytes, device, repeats)
    call_s = call_seconds(device, repeats)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    src = torch.ones(max(1, copy_bytes // (torch.finfo(dtype).bits // 8)), dtype=dtype, device=device)
    dst = torch.empty_like(src)
    copy_s = _median_seconds(lambda: dst.copy_(src), device, repeats)
    return Bandwidth(str(device), nbytes, read_s, src.numel() * src.element_size(), copy_s, call_s)


def measure_read_seconds(nbytes: int, device: str | torch.device = "cpu", repeats: int = 10) -> float:
    """Measured seconds to read `nbytes` once on `device` (what a reuse step's `x + gate * cache` reads)."""
    return _read_seconds(nbytes, torch.device(device), repeats)[0]


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(
        prog="python -m analysis.memory", description="FORA cache size and HBM read time vs the compute it replaces."
    )
    p.add_argument("--batch", type=int, default=1, help="images per call (guidance doubles the rows)")
    p.add_argument("--dtype", default="float16", choices=list(DTYPE_BYTES))
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--interval", type=int, default=3)
    p.add_argument("--bandwidth", type=float, default=H100_SXM_BANDWIDTH / 1e12, help="memory bandwidth, TB/s")
    p.add_argument("--tflops", type=float, default=H100_SXM_BF16_FLOPS / 1e12, help="peak throughput, TFLOP/s")
    p.add_argument("--utilization", type=float, default=0.5, help="fraction of peak the replaced compute reaches")
    p.add_argument("--measure", action="store_true", help="also measure the read on --device")
    p.add_argument("--device", default="cpu", help="where --measure reads: cpu (default) or cuda")
    p.add_argument("--models", nargs="+", default=list(MODEL_SHAPES), choices=list(MODEL_SHAPES))
    p.add_argument("--threads", type=int, default=None, help="torch threads for a CPU read (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(
        f"batch {args.batch} (x2 for guidance, x1 for FLUX.1's distilled guidance), {args.dtype}, T={args.steps}, "
        f"N={args.interval}; "
        f"{args.bandwidth:g} TB/s, {args.tflops:g} TFLOP/s x {args.utilization:g}"
    )
    measured = f" {'measured read ms':>16s} {'GB/s':>10s}" if args.measure else ""
    ref = measure_bandwidth(2**20, device) if args.measure else None  # the call's fixed cost, the copy's speed
    print(
        f"{'model':18s} {'cache MiB':>9s} {'read ms/step':>12s} {'compute ms/step':>15s} {'ratio':>6s} "
        f"{'saved ms/run':>12s}{measured}"
    )
    for name in args.models:
        shape = MODEL_SHAPES[name]
        a = hbm_answer(
            shape,
            args.batch,
            args.dtype,
            args.steps,
            args.interval,
            args.bandwidth * 1e12,
            args.tflops * 1e12,
            args.utilization,
        )
        line = (
            f"{shape.name:18s} {a['cache_bytes'] / 2**20:9.1f} {a['read_ms_per_step']:12.3f} "
            f"{a['compute_ms_per_step']:15.3f} {a['compute_over_read']:6.0f} {a['saved_ms_per_run']:12.1f}"
        )
        if args.measure:
            read_s, nbytes = _read_seconds(a["cache_bytes"], device, 10)
            speed = "call-bound" if is_overhead_bound(read_s, ref.call_s) else f"{nbytes / read_s / 1e9:10.1f}"
            line += f" {read_s * 1e3:16.3f} {speed:>10s}"
        print(line)
    if args.measure:
        print(
            f"measured on {device} with {torch.get_num_threads()} thread(s): one reduction over a buffer of the "
            f"cache's size, median of 10; for comparison a plain copy of {ref.copy_bytes / 2**20:.0f} MiB on the "
            f"same device: {ref.copy_GBps:.1f} GB/s (read + write). call-bound: the read took under twice the same "
            f"reduction over one element, no GB/s; {ref.overhead_text()}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
