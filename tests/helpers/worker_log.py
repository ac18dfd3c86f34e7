"""What a worker's log file says it did: lets a test wait until the worker is really done with a
task, instead of sleeping long enough for it to probably be."""

from __future__ import annotations

from devtools import stack


def task_ended(worker: stack.Proc, task_id: str) -> bool:
    """The worker is done with the task: a delivery of it ran to its end without scheduling a
    retry (`task finished`, logged once the task returned, its clean-up included), or the
    worker discarded it as revoked instead of running it."""
    for line in worker.log_path.read_text(errors="replace").splitlines():
        if task_id not in line:
            continue
        finished = 'msg="task finished"' in line and f"task_id={task_id}" in line
        if finished and "state=RETRY" not in line:
            return True
        if "Discarding revoked task" in line and f"[{task_id}]" in line:
            return True
    return False
