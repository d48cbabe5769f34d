"""The one timing method (`fora.timing.paired_speedup`) and the CLI's use of it. No timing is asserted."""

import pytest
import torch
from conftest import make_dit_pipeline, run_dit
from test_loading import save_like_hub

from fora import ForaConfig, apply_fora, get_fora_handle
from fora.cli import main as cli_main
from fora.timing import paired_speedup


def test_paired_speedup_leaves_the_pipeline_as_it_was(dit_pipe):
    before = run_dit(dit_pipe, steps=6)
    calls = []
    ratio = paired_speedup(dit_pipe, lambda: calls.append(run_dit(dit_pipe, steps=6)), ForaConfig(interval=2), pairs=3)
    assert len(calls) == 2 * (3 + 1)  # 3 pairs and one warm-up of each variant
    assert ratio.pairs == 3 and ratio.low <= ratio.ratio <= ratio.high
    assert str(ratio).endswith("over 3 pairs")
    assert get_fora_handle(dit_pipe) is None  # FORA applied and removed around each FORA call
    assert torch.equal(torch.from_numpy(run_dit(dit_pipe, steps=6)), torch.from_numpy(before))
    with pytest.raises(ValueError, match="pairs=0"):
        paired_speedup(dit_pipe, lambda: None, ForaConfig(), pairs=0)
    apply_fora(dit_pipe, ForaConfig())
    with pytest.raises(ValueError, match="already applied"):  # timing a pipeline that already has FORA is refused
        paired_speedup(dit_pipe, lambda: None, ForaConfig(), pairs=1, warmup=0)


def test_cli_time_pairs(tmp_path, capsys):
    save_like_hub(make_dit_pipeline(), tmp_path / "dit")
    args = ["generate", "--model", str(tmp_path / "dit"), "--class", "goldfish", "--steps", "6", "--interval", "2",
            "--out", str(tmp_path / "x.png")]  # fmt: skip
    assert cli_main(args) == 0
    text = capsys.readouterr().out
    assert "one call, cold: not a speed figure" in text and "over 2 pairs" not in text
    assert cli_main([*args, "--time-pairs", "2"]) == 0
    assert "over 2 pairs" in capsys.readouterr().out
    assert cli_main([*args, "--time-pairs", "-1"]) == 2
    assert "--time-pairs=-1" in capsys.readouterr().err


def test_clocks():
    from fora.timing import time_call

    assert time_call(lambda: sum(range(10**5)), "cpu", clock="cpu") > 0
    with pytest.raises(ValueError, match="clock='gpu'"):
        time_call(lambda: None, "cpu", clock="gpu")
    with pytest.raises(ValueError, match="only CPU work"):
        time_call(lambda: None, "cuda", clock="cpu")
