"""The one timing method (`fora.timing.paired_speedup`) and the CLI's use of it. No timing is asserted."""

import pytest
import torch
from conftest import make_dit_pipeline, run_dit
from test_loading import save_like_hub

from fora import ForaConfig, apply_fora, get_fora_handle
from fora.cli import main as cli_main
from fora.timing import paired_calls, paired_speedup, paired_speedups


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


def test_paired_speedups_interleave_configs_and_pair_each_with_a_baseline(dit_pipe, monkeypatch):
    """A sweep's intervals are timed round by round, the configs in a fixed order; each config's pairs are ABBA, one
    round apart, and its ratio, range and medians come from its own pairs. The clock is scripted (the real calls run,
    their durations are made up): a call under FORA N takes 1/N of the baseline's time times a per-pair error, and
    every pair runs at its own machine speed, so a baseline paired with another pair's call gives a wrong ratio."""
    import fora.timing

    calls = []  # interval of each call, 1 = uncached

    def call():
        handle = get_fora_handle(dit_pipe)
        calls.append(handle.config.interval if handle is not None else 1)

    speed = [1.0, 3.0, 0.5, 2.0, 1.5]  # machine speed of pair p (slow spells), per pair index
    error = {2: [1.0, 1.1, 0.9, 1.0], 4: [0.8, 1.0, 1.2, 1.0], 8: [1.0, 1.0, 1.0, 1.3]}  # per config, per its pair

    def scripted(fn, device, clock="wall"):
        fn()
        n, timed = calls[-1], len(calls) - 4  # 4 warm-up calls
        if timed <= 0:
            return 1.0
        p = (timed - 1) // 2  # pair index: two consecutive calls per pair
        seconds = speed[p % len(speed)] * (1.0 if n == 1 else 1.0 / n)
        if n != 1:  # the error of this config's own pair (how many of its calls came before)
            seconds *= error[n][sum(1 for m in calls[4:] if m == n) - 1]
        return seconds

    monkeypatch.setattr(fora.timing, "time_call", scripted)
    rounds = []
    ratios = paired_speedups(
        dit_pipe,
        call,
        [ForaConfig(interval=n) for n in (2, 4, 8)],
        pairs=4,
        clock="wall",
        on_round=lambda r, total: rounds.append((r, total)),
    )
    assert rounds == [(0, 4), (1, 4), (2, 4), (3, 4), (4, 4)]  # after the warm-up, then after each round
    assert calls[:4] == [1, 2, 4, 8]  # warm-up: the baseline once, then each config
    assert len(calls) == paired_calls(3, 4)  # the count the step budget and progress bars use
    assert calls[4:] == [1, 2, 1, 4, 1, 8, 2, 1, 4, 1, 8, 1, 1, 2, 1, 4, 1, 8, 2, 1, 4, 1, 8, 1]
    for n, r in zip((2, 4, 8), ratios):
        expected = sorted(n / e for e in error[n])
        assert r.ratios == pytest.approx([n / e for e in error[n]])  # each pair's ratio, in the order timed
        assert r.pairs == 4 and r.ratio == pytest.approx((expected[1] + expected[2]) / 2)
        assert (r.low, r.high) == (pytest.approx(expected[0]), pytest.approx(expected[-1]))
        assert r.baseline_s > r.fora_s  # medians of the baseline's and FORA's own times, not swapped
    assert get_fora_handle(dit_pipe) is None
    with pytest.raises(ValueError, match="configs is empty"):
        paired_speedups(dit_pipe, call, [])


def test_paired_speedups_remove_fora_when_a_call_fails(dit_pipe):
    """A call that raises under FORA in the middle of a round leaves the pipeline without FORA."""
    count = []

    def call():
        count.append(1)
        handle = get_fora_handle(dit_pipe)
        if len(count) > 4 and handle is not None and handle.config.interval == 3:  # round 0, second config
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        paired_speedups(dit_pipe, call, [ForaConfig(interval=n) for n in (2, 3, 5)], pairs=3)
    assert len(count) == 8 and get_fora_handle(dit_pipe) is None


def test_cli_time_pairs(tmp_path, capsys):
    save_like_hub(make_dit_pipeline(), tmp_path / "dit")
    args = [
        "generate",
        "--model",
        str(tmp_path / "dit"),
        "--class",
        "goldfish",
        "--steps",
        "6",
        "--interval",
        "2",
        "--out",
        str(tmp_path / "x.png"),
    ]
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


def test_cpu_clock_with_one_thread_counts_the_calling_thread_and_says_so():
    """Issue item 7a: with one torch thread `time_call(clock="cpu")` counts the calling thread's CPU time (a server's
    other requests stay out), with more the process's; labels said "process CPU time" for both. Here the timed call
    sleeps while another thread of the process spins: the thread clock counts ~0 s, the process clock the spin."""
    import threading
    import time

    from fora.timing import clock_label, time_call

    def timed_while_another_thread_spins() -> tuple[float, float]:
        stop, spun = threading.Event(), threading.Event()

        def spin():
            spun.set()
            while not stop.is_set():
                pass

        other = threading.Thread(target=spin)
        other.start()
        spun.wait()
        p0 = time.process_time()

        def wait_for_the_spin():  # sleeps until the other thread has used 0.2 s of CPU (a busy machine gives less)
            deadline = time.monotonic() + 60
            while time.process_time() - p0 < 0.2 and time.monotonic() < deadline:
                time.sleep(0.01)

        seconds = time_call(wait_for_the_spin, "cpu", clock="cpu")
        process = time.process_time() - p0
        stop.set()
        other.join()
        return seconds, process

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        seconds, process = timed_while_another_thread_spins()
        assert process >= 0.2  # the other thread did run during the call: a process clock would have counted it
        assert seconds < 0.25 * process  # the sleeping thread itself used next to none of the process's CPU
        assert clock_label("cpu") == "thread CPU time"
        torch.set_num_threads(2)
        seconds, process = timed_while_another_thread_spins()
        assert seconds >= 0.2  # the spin, counted
        assert clock_label("cpu") == "process CPU time"
    finally:
        torch.set_num_threads(threads)
    assert clock_label("wall") == "wall time"
    with pytest.raises(ValueError, match="clock='gpu'"):
        clock_label("gpu")


def test_format_speedup_rounds_to_what_the_range_supports():
    """Issue item 7c: every speedup shown gives its median and range to the range's first significant digit (at most
    3 decimals, one for a single pair); they showed two decimals whatever the spread."""
    from fora.timing import SpeedRatio, format_speedup

    assert format_speedup(2.137, 1.9, 2.4) == "2.1x, 1.9-2.4"
    assert format_speedup(2.137, 2.13, 2.15) == "2.14x, 2.13-2.15"
    assert format_speedup(2.137, 2.1368, 2.1372) == "2.137x, 2.137-2.137"  # at most 3 decimals
    assert format_speedup(2.137, 1.2, 3.5, pairs=5) == "2.1x, 1.2-3.5 over 5 pairs"  # never fewer than 1 decimal
    # the review's cases: never "0x", a range whose ends round alike, or a slowdown shown as 1.0x
    assert format_speedup(0.45, 0.3, 1.4, pairs=5) == "0.5x, 0.3-1.4 over 5 pairs"
    assert format_speedup(2.0, 1.95, 2.04) == "2.00x, 1.95-2.04"
    assert format_speedup(0.96, 0.9, 1.02) == "1.0x, 0.9-1.0"  # the range holds 1: no change is what was measured
    assert format_speedup(0.96, 0.93, 0.98) == "0.96x, 0.93-0.98"  # every pair slower: shown as a slowdown
    assert format_speedup(0.96, 0.96, 0.96, pairs=1) == "0.96x over 1 pair"
    assert format_speedup(2.137, 2.137, 2.137, pairs=1) == "2.1x over 1 pair"  # no range to read a precision from
    assert format_speedup(1.96, 1.86, 1.96) == "2.0x, 1.9-2.0"  # a spread of 0.1 (0.0999... in floats): one decimal
    assert str(SpeedRatio(2.137, 2.13, 2.15, 3, 1.0, 0.47)) == "2.14x, 2.13-2.15 over 3 pairs"


def _count_transformer_calls(pipe):
    calls = []
    handle = pipe.transformer.register_forward_pre_hook(lambda module, args: calls.append(1))
    return calls, handle


def test_job_step_counts_match_the_calls_a_sweep_and_a_policies_click_make(dit_pipe, monkeypatch):
    """`SweepJob.denoising_steps` and `PolicyJob.denoising_steps` size a request (the step budget, ZeroGPU's
    duration): counted against the transformer calls really made, and the sweep's progress reaches its total."""
    from analysis.arena import policies
    from analysis.arena.experiment import time_entries
    from analysis.arena.policies import PolicyJob, run_policies
    from analysis.sweep.experiment import run_sweep
    from fora.generate import Request
    from ui.form import SweepJob

    request = Request(label=1, steps=6, guidance=4.0)
    calls, handle = _count_transformer_calls(dit_pipe)
    progress = []
    try:
        run_sweep(dit_pipe, request, [1, 2, 3], [0, 1], pairs=2, progress=lambda d, t, m: progress.append((d, t)))
    finally:
        handle.remove()
    job = SweepJob("tiny-dit", request, ForaConfig(), (1, 2, 3), (0, 1), pairs=2)
    assert len(calls) == job.denoising_steps()  # one transformer call per denoising step (guidance is batched)
    # progress counts runs (each seed's N=1 row reuses its baseline: a tick without a run) and ends at its total
    done = [d for d, _ in progress]
    assert done == sorted(done) and done[-1] == progress[-1][1] == len(calls) // request.steps + 2

    policy_job = PolicyJob(
        "tiny-dit", Request(label=1, steps=8, guidance=4.0), ("FORA", "TaylorSeer order 1", "First Block Cache"), 3
    )
    calls, handle = _count_transformer_calls(dit_pipe)
    timed = []

    def counted_time_entries(*args, **kwargs):
        before = len(calls)
        time_entries(*args, **kwargs)
        timed.append(len(calls) - before)

    monkeypatch.setattr(policies, "time_entries", counted_time_entries)
    try:
        run_policies(dit_pipe, policy_job, {}, lambda event: None)
    finally:
        handle.remove()
    assert timed == [8 * (policy_job.warmup * (1 + 3) + 2 * 3 * policy_job.pairs)]  # interleaved timing, exactly
    assert len(calls) == policy_job.denoising_steps(0)  # no calibrated policy: the count is exact


def test_no_warm_up_round_report_without_a_warm_up_and_sweep_threads_checked(dit_pipe):
    rounds = []
    paired_speedups(
        dit_pipe, lambda: None, [ForaConfig(interval=2)], pairs=2, warmup=0, on_round=lambda r, total: rounds.append(r)
    )
    assert rounds == [1, 2]  # no "warm-up done" report when there was none
    from analysis.sweep.__main__ import main as sweep_main

    with pytest.raises(SystemExit) as e:
        sweep_main(["--threads", "0"])
    assert e.value.code == 2
