import pytest

from fora.schedule import full_steps, ideal_speedup, is_full_step


def test_official_counts():
    # FORA-NOTES: T=250, N=3 -> 84 full steps; T=50, N=3 -> 18 (i = 49, 48, 45, ..., 0)
    assert len(full_steps(250, 3)) == 84
    steps = full_steps(50, 3)
    assert len(steps) == 18
    assert [49 - s for s in steps] == [49, 48] + list(range(45, -1, -3))


def test_interval_one_is_every_step():
    assert full_steps(7, 1) == list(range(7))
    assert ideal_speedup(7, 1) == 1.0


def test_last_step_and_first_step():
    # i == T-1 is always full; i == 0 (the last step) is full because 0 % N == 0
    for t, n in [(10, 3), (10, 4), (17, 5), (2, 1)]:
        steps = full_steps(t, n)
        assert steps[0] == 0 and steps[-1] == t - 1


def test_window_forces_full_steps_outside():
    steps = full_steps(20, 4, window=(5, 15))
    assert set(range(5)) <= set(steps) and set(range(15, 20)) <= set(steps)
    assert [s for s in steps if 5 <= s < 15] == [s for s in full_steps(20, 4) if 5 <= s < 15]


def test_ideal_speedup():
    assert ideal_speedup(50, 3) == pytest.approx(50 / 18)


def test_step_out_of_range():
    with pytest.raises(ValueError, match="step=10 out of range: allowed 0..9"):
        is_full_step(10, 10, 2)
