"""ETA arithmetic with a controlled clock (a unit: no I/O)."""

from __future__ import annotations

from yousync.core.stages import Stage
from yousync.worker.eta import EtaEstimator, history_key, size_bucket


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_size_bucket_when_sizes_differ_by_less_than_double_then_same_bucket() -> None:
    assert size_bucket(600_000) == size_bucket(900_000)
    assert size_bucket(1 << 20) != size_bucket(40 << 20)


def test_estimate_when_no_history_and_stage_just_started_then_unknown() -> None:
    eta = EtaEstimator(size_bytes=1 << 20, history={}, clock=Clock())
    eta.enter(Stage.UPLOADING)
    assert eta.estimate(Stage.UPLOADING, 10) is None


def test_estimate_when_stage_half_done_then_extrapolates_and_adds_later_stages() -> None:
    clock = Clock()
    bucket = size_bucket(1 << 20)
    history = {
        history_key(Stage.ANALYZING, bucket): 3.0,
        history_key(Stage.STORING, bucket): 0.5,
    }
    eta = EtaEstimator(size_bytes=1 << 20, history=history, clock=clock)
    eta.enter(Stage.UPLOADING)
    clock.now += 2.0
    # Uploading spans 10→40 %: at 25 % it is half done after 2 s, so 2 s remain, + 3 + 0.5.
    assert eta.estimate(Stage.UPLOADING, 25) == 5.5


def test_estimate_when_stage_not_far_along_then_uses_history_minus_elapsed() -> None:
    clock = Clock()
    bucket = size_bucket(1 << 20)
    history = {history_key(Stage.ANALYZING, bucket): 3.0, history_key(Stage.STORING, bucket): 0.5}
    eta = EtaEstimator(size_bytes=1 << 20, history=history, clock=clock)
    eta.enter(Stage.ANALYZING)
    clock.now += 1.0
    assert eta.estimate(Stage.ANALYZING, 41) == 2.5


def test_enter_when_stage_changes_then_reports_the_finished_stage_duration() -> None:
    clock = Clock()
    eta = EtaEstimator(size_bytes=1, history={}, clock=clock)
    assert eta.enter(Stage.PREPARING) is None
    clock.now += 0.7
    finished = eta.enter(Stage.UPLOADING)
    assert finished is not None and finished[0] == Stage.PREPARING
    assert abs(finished[1] - 0.7) < 1e-9
