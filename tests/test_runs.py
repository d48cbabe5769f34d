"""The run bookkeeping on its own (`fora.runs.RunTracker`): where a sampling loop ends and the next begins, with a
real diffusers scheduler delimiting pipeline runs and hand-written loops delimited by their timesteps."""

import pytest
from diffusers import DDIMScheduler

from fora.runs import RunTracker


class Pipe:
    """What the tracker reads of a pipeline: its scheduler (a real one)."""

    def __init__(self):
        self.scheduler = DDIMScheduler(num_train_timesteps=1000)


def run_calls(tracker, timesteps) -> list:
    """One begin/end per timestep; returns what begin_call said (a new run's length or None) for each call."""
    said = []
    for t in timesteps:
        said.append(tracker.begin_call(t))
        tracker.end_call()
    return said


def test_a_pipeline_call_is_a_run_read_from_its_scheduler():
    pipe = Pipe()
    tracker = RunTracker(pipe)
    pipe.scheduler.set_timesteps(4)
    assert run_calls(tracker, pipe.scheduler.timesteps) == [4, None, None, None]
    assert tracker.steps_done == tracker.run_steps == 4 and not tracker.ongoing
    pipe.scheduler.set_timesteps(3)  # the next pipeline call: another length
    assert run_calls(tracker, pipe.scheduler.timesteps) == [3, None, None]
    pipe.scheduler.set_timesteps(3)  # same length, new tensor: a new run
    assert tracker.begin_call(None) == 3 and tracker.step == 0


def test_a_pipeline_call_interrupted_midway_does_not_leak_into_the_next():
    pipe = Pipe()
    tracker = RunTracker(pipe)
    pipe.scheduler.set_timesteps(5)
    assert run_calls(tracker, pipe.scheduler.timesteps[:2]) == [5, None]  # e.g. cancelled after two steps
    pipe.scheduler.set_timesteps(5)
    assert run_calls(tracker, pipe.scheduler.timesteps) == [5, None, None, None, None]
    assert tracker.steps_done == 5


def test_more_calls_than_steps_are_refused_where_the_calls_of_a_step_cannot_be_told_apart():
    """DDIM keeps no step_index and the calls name no context: a call after the run's steps, with the same
    timesteps, is a second call in some step, and is refused rather than read as a new run."""
    pipe = Pipe()
    tracker = RunTracker(pipe)
    pipe.scheduler.set_timesteps(2)
    assert run_calls(tracker, pipe.scheduler.timesteps) == [2, None]
    with pytest.raises(RuntimeError, match=r"more often than the run has steps \(3 calls for 2 steps\)"):
        tracker.begin_call(None)
    pipe.scheduler.set_timesteps(2)  # the next pipeline call is fine again
    assert run_calls(tracker, pipe.scheduler.timesteps) == [2, None]


def calls(tracker, *contexts) -> list[tuple]:
    """One begin/end per context given; what the tracker said of each call: (context, step, primary, fresh)."""
    said = []
    for context in contexts:
        tracker.begin_call(None, context)
        said.append((tracker.context, tracker.step, tracker.primary, tracker.fresh))
        tracker.end_call()
    return said


def test_calls_in_named_cache_contexts_share_the_step_of_the_primary_context():
    """FLUX, Qwen-Image and Wan name their guidance calls with transformer.cache_context("cond" / "uncond")."""
    pipe = Pipe()
    tracker = RunTracker(pipe)
    pipe.scheduler.set_timesteps(3)
    assert calls(tracker, "cond", "uncond", "cond", "uncond") == [
        ("cond", 0, True, True),
        ("uncond", 0, False, True),
        ("cond", 1, True, False),
        ("uncond", 1, False, False),
    ]
    with pytest.raises(RuntimeError, match=r"twice in context 'uncond' at step 1"):
        tracker.begin_call(None, "uncond")
    assert calls(tracker, "cond", "uncond") == [("cond", 2, True, False), ("uncond", 2, False, False)]
    assert tracker.steps_done == 3 and tracker.contexts == ["cond", "uncond"]
    pipe.scheduler.set_timesteps(3)
    assert tracker.begin_call(None, "cond") == 3 and tracker.contexts == ["cond"]  # a new pipeline call: afresh


def test_unnamed_calls_before_the_scheduler_steps_are_contexts_by_position():
    """Lumina 2 and SD3's skip-layer guidance name no context: a call made before the scheduler has stepped since
    the last one (the same `step_index`) is the next context of that step. A context may start late: fresh."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    pipe = Pipe()
    pipe.scheduler = FlowMatchEulerDiscreteScheduler()
    tracker = RunTracker(pipe)
    pipe.scheduler.set_timesteps(3)
    said = []
    for step, n_calls in enumerate((1, 2, 2)):  # the second context begins at step 1
        said += calls(tracker, *[None] * n_calls)
        pipe.scheduler._step_index = step + 1  # what scheduler.step() does
    assert said == [
        (0, 0, True, True),
        (0, 1, True, False),
        (1, 1, False, True),
        (0, 2, True, False),
        (1, 2, False, False),
    ]
    assert tracker.steps_done == 3 and not tracker.ongoing

    # a loop that takes the scheduler's timesteps but never steps it: step_index stays None, the timestep moves
    pipe.scheduler.set_timesteps(3)
    said = []
    for t in pipe.scheduler.timesteps:
        tracker.begin_call(t)
        said.append((tracker.context, tracker.step, tracker.primary))
        tracker.end_call()
    assert said == [(0, 0, True), (0, 1, True), (0, 2, True)] and pipe.scheduler.step_index is None


def test_rising_timesteps_of_a_bare_loop_are_one_run():
    """Lumina 2 passes 1 - t/1000, which rises through a loop: the direction comes from the run's first calls."""
    tracker = RunTracker(num_steps=4)
    assert run_calls(tracker, [0.05, 0.3, 0.6, 0.9]) == [4, None, None, None]
    assert run_calls(tracker, [0.05, 0.3]) == [4, None]
    assert run_calls(tracker, [0.05]) == [4]  # moved against the run's direction: a new loop


def test_bare_loop_runs_of_num_steps_and_restarts_seen_in_the_timestep():
    tracker = RunTracker(num_steps=4)
    assert run_calls(tracker, [900, 700, 500, 300]) == [4, None, None, None]
    assert run_calls(tracker, [900, 700]) == [4, None]  # after a complete run: a new one
    assert run_calls(tracker, [900]) == [4]  # the timestep went up before the run finished: a new loop
    assert run_calls(tracker, [900]) == [4]  # the first timestep again right after a first step: a new loop
    assert run_calls(tracker, [700, 700]) == [None, None]  # repeated later (second-order samplers): same run
    assert tracker.steps_done == 3


def test_a_new_loop_that_starts_lower_is_read_as_a_continuation():
    """The documented limit: a loop that begins at or below where the last stopped cannot be told apart."""
    tracker = RunTracker(num_steps=4)
    assert run_calls(tracker, [900, 700, 500]) == [4, None, None]
    assert run_calls(tracker, [400]) == [None]  # an img2img loop of lower strength: continues the run
    assert not tracker.ongoing


def test_start_delimits_a_run_by_count_and_reads_no_timestep():
    tracker = RunTracker(num_steps=10)
    assert tracker.start(3) == 3
    assert run_calls(tracker, [100, 900, 950]) == [None, None, None]  # rising timesteps: no restart
    assert not tracker.ongoing
    tracker.start(2)
    run_calls(tracker, [1, 2])
    assert tracker.begin_call(3) == 10  # after the explicit run, the default length again


def test_a_run_called_too_often_is_refused_with_its_length():
    tracker = RunTracker()
    tracker.start(2)
    tracker.begin_call(None)
    tracker.begin_call(None)  # no end_call: a caller that never finishes its calls
    with pytest.raises(RuntimeError, match="called 3 times in a run of 2 steps"):
        tracker.begin_call(None)


def test_unknown_length_and_refused_lengths_leave_the_tracker_as_it_was():
    with pytest.raises(ValueError, match="num_steps is unknown"):
        RunTracker().begin_call(500)

    def at_most_3(n):
        if n > 3:
            raise ValueError(f"{n} steps: at most 3")

    pipe = Pipe()
    tracker = RunTracker(pipe, check_num_steps=at_most_3)
    pipe.scheduler.set_timesteps(5)
    with pytest.raises(ValueError, match="5 steps: at most 3"):
        tracker.begin_call(None)
    assert tracker.run_steps == 0 and tracker.step == -1
    with pytest.raises(ValueError):  # still refused: nothing half-started
        tracker.begin_call(None)
    pipe.scheduler.set_timesteps(3)
    assert run_calls(tracker, pipe.scheduler.timesteps) == [3, None, None]


def test_reset_forgets_the_run():
    tracker = RunTracker(num_steps=3)
    run_calls(tracker, [900, 600])
    tracker.reset()
    assert (tracker.run_steps, tracker.step, tracker.steps_done) == (0, -1, 0)
    assert run_calls(tracker, [300]) == [3]  # a lower timestep would have continued the old run; reset starts anew


def test_a_refused_length_leaves_a_run_in_progress_as_it_was():
    def at_most_3(n):
        if n > 3:
            raise ValueError(f"{n} steps: at most 3")

    pipe = Pipe()
    tracker = RunTracker(pipe, check_num_steps=at_most_3)
    pipe.scheduler.set_timesteps(3)
    run_calls(tracker, pipe.scheduler.timesteps[:1])
    pipe.scheduler.set_timesteps(5)  # a new call with a length the config refuses
    with pytest.raises(ValueError, match="5 steps"):
        tracker.begin_call(None)
    assert (tracker.run_steps, tracker.step, tracker.steps_done) == (3, 0, 1)


def test_the_calling_pipelines_scheduler_delimits_the_run():
    """Two pipeline objects on one transformer, each with its own scheduler: each call runs on its caller's."""
    import torch
    from diffusers import DiffusionPipeline

    transformer = torch.nn.Linear(1, 1)

    class Caller(DiffusionPipeline):
        def __init__(self, steps):
            super().__init__()
            self.register_modules(transformer=transformer, scheduler=DDIMScheduler(num_train_timesteps=1000))
            self.steps = steps

        def __call__(self, tracker):
            self.scheduler.set_timesteps(self.steps)
            return run_calls(tracker, self.scheduler.timesteps)

    first, second = Caller(4), Caller(6)
    tracker = RunTracker(first, transformer=transformer)
    assert first(tracker) == [4, None, None, None]
    assert second(tracker) == [6] + [None] * 5  # not the 4 steps of the pipeline FORA was applied to
    assert first(tracker)[0] == 4
