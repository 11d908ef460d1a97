"""The durable inbox: group commit, dedupe, backoff, dead letters, retry."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from crmbridge.live.inbox import Inbox, InboxEvent


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 9, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def event(entity_id: int, *, key: str | None = None) -> InboxEvent:
    return InboxEvent("bitrix24.webhook", "ONCRMDEALUPDATE", "deal", str(entity_id), f"id={entity_id}",
                      dedupe_key=key)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def inbox(tmp_path: Path, clock: Clock) -> Inbox:
    opened = Inbox(tmp_path / "cache.db", clock=clock, max_attempts=3)
    yield opened
    opened.close()


def test_accepted_events_are_on_disk_when_accept_returns(inbox: Inbox, tmp_path: Path) -> None:
    ids = inbox.accept([event(1), event(2)])
    assert len(ids) == 2 and ids[0] < ids[1]
    # a second, independent reader sees them at once: committed, not buffered
    other = Inbox(tmp_path / "cache.db")
    try:
        assert [row.entity_id for row in other.claim()] == ["1", "2"]
    finally:
        other.close()


def test_concurrent_accepts_share_commits_and_lose_nothing(inbox: Inbox) -> None:
    results: list[list[int]] = []
    lock = threading.Lock()

    def send(start: int) -> None:
        for number in range(start, start + 200):
            ids = inbox.accept([event(number)])
            with lock:
                results.append(ids)

    threads = [threading.Thread(target=send, args=(k * 1000,)) for k in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len({ids[0] for ids in results}) == 1600
    assert inbox.stats().pending == 1600


def test_same_delivery_key_is_stored_once(inbox: Inbox) -> None:
    first = inbox.accept([event(5, key="m-1")])
    again = inbox.accept([event(5, key="m-1"), event(6, key="m-2")])
    assert again[0] == first[0]
    assert inbox.stats().pending == 2


def test_failures_back_off_then_go_to_dead_letters_and_retry_brings_them_back(inbox: Inbox, clock: Clock) -> None:
    (event_id,) = inbox.accept([event(7)])
    assert inbox.failed([event_id], "CrmRejected: boom") == 0
    assert inbox.claim() == []  # backing off
    clock.now += timedelta(seconds=3)
    assert [row.id for row in inbox.claim()] == [event_id]
    inbox.failed([event_id], "CrmRejected: boom")
    clock.now += timedelta(seconds=10)
    assert inbox.failed([event_id], "CrmRejected: still") == 1
    assert inbox.claim() == []
    (letter,) = inbox.dead_letters()
    assert letter.inbox_id == event_id and letter.reason == "CrmRejected: still" and letter.attempts == 3
    assert inbox.retry([letter.id]) == (1, [])
    assert [row.id for row in inbox.claim()] == [event_id]
    assert inbox.stats().dead == 0


def test_postponed_events_do_not_count_attempts(inbox: Inbox, clock: Clock) -> None:
    (event_id,) = inbox.accept([event(8)])
    for _ in range(10):
        inbox.postpone([event_id], "portal unreachable", 5)
        clock.now += timedelta(seconds=6)
    (row,) = inbox.claim()
    assert row.attempts == 0 and row.last_error == "portal unreachable"


def test_malformed_bodies_are_kept_truncated_and_cannot_be_requeued(inbox: Inbox) -> None:
    letter = inbox.reject("bitrix24.webhook", "malformed: no event", b"x" * 100_000)
    (stored,) = inbox.dead_letters()
    assert stored.id == letter and stored.truncated and len(stored.payload) == 16_384
    requeued, problems = inbox.retry([letter])
    assert requeued == 0 and "names no event" in problems[0]


def test_done_events_are_pruned_after_their_keep_time(inbox: Inbox, clock: Clock) -> None:
    ids = inbox.accept([event(1), event(2)])
    inbox.done(ids[:1])
    clock.now += timedelta(days=8)
    assert inbox.prune(timedelta(days=7)) == 1
    assert inbox.stats().pending == 1


def test_a_round_takes_every_event_of_the_records_waiting_longest(inbox: Inbox) -> None:
    inbox.accept([event(n % 3) for n in range(9)] + [event(7)])
    rows = inbox.claim_entities(2)
    assert sorted({row.entity_id for row in rows}) == ["0", "1"] and len(rows) == 6
