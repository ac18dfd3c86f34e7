"""The stage table: the one definition of a job's stages.

Each row names a stage, the share of the progress bar it covers, and the labels the progress
page shows for it. Everything else is derived from it: the pipeline reports each stage's start
and end from its row, the ETA weighs remaining stages by their spans, metrics order the stage
histogram by it, the snapshot validates `stage` against it, and the page reads the labels from
`GET /contract.js` (yousync.api.router.pages). Adding a stage is a new row here plus the code
that does its work.

Rows are in the order a job goes through them. `start`/`end` are percentages: the pipeline
reports `start` when the stage begins and moves towards `end` as it works; 100 is reserved for
`completed`. `timed` stages are measured (cluster histogram, ETA history).
"""

from __future__ import annotations

from enum import StrEnum


class Stage(StrEnum):
    """A stage of a job. Its value is the wire name (snapshot `stage`, SSE, metrics label)."""

    start: int
    end: int
    timed: bool
    labels: dict[str, str]

    def __new__(cls, value: str, start: int, end: int, timed: bool, en: str, ko: str) -> Stage:
        member = str.__new__(cls, value)
        member._value_ = value
        member.start = start
        member.end = end
        member.timed = timed
        member.labels = {"en": en, "ko": ko}
        return member

    #          name         start end  timed  English label           Korean label
    QUEUED = ("queued", 0, 0, True, "Waiting for a worker", "작업자를 기다리는 중")
    PREPARING = ("preparing", 5, 10, True, "Preparing the audio", "오디오 준비 중")
    UPLOADING = ("uploading", 10, 40, True, "Storing the audio", "오디오 저장 중")
    ANALYZING = ("analyzing", 40, 95, True, "Analyzing", "분석 중")
    STORING = ("storing", 95, 100, True, "Saving the result", "결과 저장 중")
    DONE = ("done", 100, 100, False, "Done", "완료")

    @property
    def span(self) -> tuple[int, int]:
        return self.start, self.end


# The stages the worker runs, in order: the ones with a share of the bar.
WORKED_STAGES: tuple[Stage, ...] = tuple(stage for stage in Stage if stage.end > stage.start)
# Stages whose durations are measured, in order (metrics histogram, ETA history).
TIMED_STAGES: tuple[Stage, ...] = tuple(stage for stage in Stage if stage.timed)
