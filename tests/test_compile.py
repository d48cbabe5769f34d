"""FORA on compiled transformers (torch.compile, inductor on CPU): same images as eager, bounded graphs, no recompiles.

The regional test (blocks compiled one by one, like diffusers' `compile_repeated_blocks`) runs in CI (~20-40 s on two
cores); the whole-transformer and PixArt variants take about a minute each and run with FORA_SLOW_TESTS=1.
"""

import os

import pytest
import torch
from conftest import make_dit_pipeline, make_pixart_pipeline, run_dit, run_pixart
from torch._dynamo.utils import counters

from fora import ForaConfig, apply_fora, get_fora_handle, remove_fora

slow = pytest.mark.skipif(not os.environ.get("FORA_SLOW_TESTS"), reason="about a minute each: FORA_SLOW_TESTS=1")


def compile_blocks(transformer) -> None:
    """Regional compilation: what `compile_repeated_blocks` does for models that declare `_repeated_blocks`."""
    for block in transformer.transformer_blocks:
        block.compile(fullgraph=True)


def check_compiled(make, run, compile_fn, max_graphs: int):
    torch._dynamo.reset()
    counters.clear()
    pipe = make()
    config = ForaConfig(interval=3)
    apply_fora(pipe, config)
    eager = torch.from_numpy(run(pipe))
    remove_fora(pipe)
    compile_fn(pipe.transformer)
    handle = apply_fora(pipe, config)
    first = torch.from_numpy(run(pipe))
    torch.testing.assert_close(first, eager, rtol=1e-4, atol=1e-4)
    assert handle.last_run.reused_calls > 0
    graphs = counters["stats"]["unique_graphs"]
    assert 2 <= graphs <= max_graphs
    with torch._dynamo.config.patch(error_on_recompile=True):  # any recompilation raises
        again = torch.from_numpy(run(pipe))
    assert torch.equal(again, first)
    assert counters["stats"]["unique_graphs"] == graphs
    return pipe


def test_regional_compile_dit():
    # 3 blocks, 2 layouts of a block's input (the first block gets the patch embedding's transposed view) x
    # {full step, reuse step}: 4 graphs. A graph per block would make 6 or more.
    pipe = check_compiled(lambda: make_dit_pipeline(num_layers=3), lambda p: run_dit(p, steps=9), compile_blocks, 4)
    remove_fora(pipe)
    assert get_fora_handle(pipe) is None


@slow
def test_regional_compile_pixart():
    check_compiled(make_pixart_pipeline, lambda p: run_pixart(p, steps=8), compile_blocks, 4)


@slow
def test_whole_transformer_compile_dit():
    # the step bookkeeping runs outside the graph (two graph breaks per call): one graph per kind of step
    check_compiled(lambda: make_dit_pipeline(num_layers=3), lambda p: run_dit(p, steps=9), lambda t: t.compile(), 2)
