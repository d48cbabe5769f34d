"""The one timing method (`fora.timing.paired_speedup`) and the CLI's use of it. No timing is asserted."""

import pytest
import torch
from conftest import make_dit_pipeline, run_dit
from test_loading import save_like_hub

from fora import ForaConfig, apply_fora, get_fora_handle
from fora.cli import main as cli_main
from fora.timing import paired_speedup, paired_speedups


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


def test_paired_speedups_interleave_configs_and_pair_each_with_a_baseline(dit_pipe):
    """A sweep's intervals are timed round by round; each config's pairs are ABBA and its ratio uses its own pairs.
    The call sleeps 40 ms uncached and 40/N ms under FORA N, so the bookkeeping shows in the ratios (sleeps, not
    the model, so no speed of this machine is asserted)."""
    import time

    seen = []

    def call():
        handle = get_fora_handle(dit_pipe)
        n = handle.config.interval if handle is not None else 1
        seen.append(n)
        time.sleep(0.04 / n)

    rounds = []
    ratios = paired_speedups(dit_pipe, call, [ForaConfig(interval=n) for n in (2, 4, 8)], pairs=4, clock="wall",
                             on_round=lambda r, total: rounds.append((r, total)))  # fmt: skip
    assert rounds == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert seen[:4] == [1, 2, 4, 8]  # warm-up: the baseline once, then each config
    timed = [tuple(seen[4 + 2 * i : 6 + 2 * i]) for i in range((len(seen) - 4) // 2)]
    assert len(timed) == 3 * 4 and all(sorted(p)[0] == 1 and sorted(p)[1] > 1 for p in timed)  # pairs: one of each
    per_round = [[max(p) for p in timed[3 * r : 3 * r + 3]] for r in range(4)]
    assert per_round == [[2, 4, 8], [8, 4, 2], [2, 4, 8], [8, 4, 2]]  # every round times every config
    for n in (2, 4, 8):  # each config's own pairs alternate baseline-first and FORA-first
        firsts = [p[0] == 1 for p in timed if max(p) == n]
        assert firsts in ([True, False, True, False], [False, True, False, True])
    assert [r.pairs for r in ratios] == [4, 4, 4]
    assert 1.5 < ratios[0].ratio < ratios[1].ratio < ratios[2].ratio  # each ratio from its own config's calls
    assert get_fora_handle(dit_pipe) is None
    with pytest.raises(ValueError, match="configs is empty"):
        paired_speedups(dit_pipe, call, [])


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
