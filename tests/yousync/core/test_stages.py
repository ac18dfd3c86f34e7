"""The stage table: one row per stage, and everything stage-shaped derived from it."""

from __future__ import annotations

import itertools

from yousync.core.models import SNAPSHOT_FIELDS, JobSnapshot
from yousync.core.stages import TIMED_STAGES, WORKED_STAGES, Stage
from yousync.observability import metrics
from yousync.worker import eta


def test_worked_stages_when_in_table_order_then_tile_the_bar_below_completion() -> None:
    spans = [stage.span for stage in WORKED_STAGES]

    assert all(start < end for start, end in spans)
    assert all(prev_end == start for (_, prev_end), (start, _) in itertools.pairwise(spans))
    assert spans[0][0] > 0, "0 % is the queued job's"
    assert spans[-1][1] == 100


def test_every_stage_when_labelled_then_has_english_and_korean() -> None:
    for stage in Stage:
        assert set(stage.labels) == {"en", "ko"} and all(stage.labels.values()), stage


def test_eta_and_metrics_when_built_then_follow_the_table() -> None:
    assert {stage: stage.span for stage in WORKED_STAGES} == eta.STAGE_SPANS
    assert tuple(stage.value for stage in TIMED_STAGES) == metrics.STAGES
    assert metrics.STAGES[0] == "queued" and "done" not in metrics.STAGES


def test_snapshot_fields_when_derived_then_are_the_model_fields_in_order() -> None:
    assert list(SNAPSHOT_FIELDS) == list(JobSnapshot.model_fields)
    assert SNAPSHOT_FIELDS[:3] == ("job_id", "token_id", "status")
