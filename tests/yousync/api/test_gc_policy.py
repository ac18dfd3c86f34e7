"""The API's garbage-collection policy on the real collector of this test process: a tick
freezes what the collector tracks, a cycle that dies while frozen survives collections until
a rebase, and rebases come with client turnover (or an idle process, or age), not with time
while clients stay."""

from __future__ import annotations

import gc
import time
import weakref
from collections.abc import Iterator

import pytest

from yousync.api.gc_policy import GcPolicy


class Counts:
    """Stand-in for the event hub's stream counters."""

    def __init__(self) -> None:
        self.open = 0
        self.ended = 0

    def policy(
        self, *, min_ended: int = 10_000, max_age: float = 3600.0, idle_seconds: float = 1.0
    ) -> GcPolicy:
        return GcPolicy(
            min_ended=min_ended,
            max_age=max_age,
            idle_seconds=idle_seconds,
            open_streams=lambda: self.open,
            ended_streams=lambda: self.ended,
        )


class Node:
    def __init__(self) -> None:
        self.other: Node | None = None


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.collect()


def dead_cycle() -> weakref.ref[Node]:
    """A two-object cycle nothing else refers to, observed through a weak reference."""
    first, second = Node(), Node()
    first.other, second.other = second, first
    return weakref.ref(first)


def test_tick_when_objects_are_tracked_then_they_are_frozen_out_of_collections() -> None:
    policy = Counts().policy()
    policy.start()
    keep = [Node() for _ in range(1000)]
    before = gc.get_freeze_count()
    policy.tick()
    assert gc.get_freeze_count() >= before + len(keep)
    assert gc.get_count()[0] == 0


def test_cycle_dying_while_frozen_when_collections_run_then_only_a_rebase_frees_it() -> None:
    policy = Counts().policy()
    policy.start()
    first, second = Node(), Node()
    first.other, second.other = second, first
    probe = weakref.ref(first)
    policy.tick()  # frozen while alive, like a stream's objects
    del first, second
    gc.collect()
    assert probe() is not None, "a frozen cycle is out of the collector's reach"
    policy.rebase()
    assert probe() is None


def test_cycle_dying_before_a_tick_when_collected_then_freed_without_a_rebase() -> None:
    Counts().policy().start()
    probe = dead_cycle()
    gc.collect()
    assert probe() is None


def test_rebase_when_streams_turn_over_many_times_then_due_not_before(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counts = Counts()
    counts.open = 5000
    policy = counts.policy(min_ended=10_000)
    policy.start()
    counts.ended = 49_999  # 10 × the 5,000 open at the last rebase, less one
    assert not policy.rebase_due()
    counts.ended = 50_000
    assert policy.rebase_due()
    policy.tick()
    assert policy.rebases == 2
    assert not policy.rebase_due()


def test_rebase_when_few_streams_are_open_then_at_least_min_ended() -> None:
    counts = Counts()
    counts.open = 10
    policy = counts.policy(min_ended=10_000)
    policy.start()
    counts.ended = 9_999
    assert not policy.rebase_due()
    counts.ended = 10_000
    assert policy.rebase_due()


def test_rebase_when_every_stream_ended_then_due_once_idle_for_a_while() -> None:
    counts = Counts()
    counts.open = 300
    policy = counts.policy(idle_seconds=0.2)
    policy.start()
    counts.ended = 250  # 50 still open: not idle
    assert not policy.idle_rebase_due()
    counts.open, counts.ended = 0, 300
    assert not policy.idle_rebase_due(), "their teardown gets idle_seconds first"
    time.sleep(0.25)
    assert policy.idle_rebase_due()
    policy.tick()
    assert policy.rebases == 2
    assert not policy.idle_rebase_due(), "one rebase per idle spell"


def test_idle_rebase_when_a_turnover_rebase_ran_during_teardown_then_still_due() -> None:
    # The turnover rebase fired as the last streams ended, while their objects were alive:
    # the memory they free afterwards still needs the idle rebase (and its malloc_trim).
    counts = Counts()
    counts.open = 10
    policy = counts.policy(min_ended=100, idle_seconds=0.2)
    policy.start()
    counts.open, counts.ended = 0, 100
    policy.tick()  # turnover: 100 ended
    assert policy.rebases == 2
    time.sleep(0.25)
    assert policy.idle_rebase_due()


def test_idle_rebase_when_the_turnover_rebase_collected_slowly_then_still_due(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # On a busy host the turnover rebase's collection outlasts `idle_seconds`: it still began
    # before the teardown settled, so it did not see what died after.
    collect = gc.collect

    def slow_collect(*args: int) -> int:
        time.sleep(0.3)
        return collect(*args)

    counts = Counts()
    counts.open = 10
    policy = counts.policy(min_ended=100, idle_seconds=0.2)
    policy.start()
    counts.open, counts.ended = 0, 100
    monkeypatch.setattr(gc, "collect", slow_collect)
    policy.tick()  # turnover: 100 ended, ends 0.3 s later
    assert policy.rebases == 2
    assert policy.idle_rebase_due()


def test_rebase_when_clients_stay_then_only_after_max_age() -> None:
    counts = Counts()
    counts.open = 100
    policy = counts.policy(max_age=0.2)
    policy.start()
    policy.tick()
    assert policy.rebases == 1
    policy._rebased_at -= 0.3
    policy.tick()
    assert policy.rebases == 2
