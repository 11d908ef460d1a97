"""Pure helpers of the sync: the overlap keeps the portal's offset, chunks cover every record once."""

from __future__ import annotations

from datetime import timedelta

from crmbridge.sync import chunks, minus_overlap


def test_overlap_keeps_the_portal_offset() -> None:
    assert minus_overlap("2026-05-14T10:26:32+03:00", timedelta(minutes=5)) == "2026-05-14T10:21:32+03:00"
    assert minus_overlap("2026-05-14T00:02:00+00:00", timedelta(minutes=5)) == "2026-05-13T23:57:00+00:00"


def test_chunks_cover_every_record_once() -> None:
    records = [{"ID": str(i)} for i in range(6001)]
    sizes = [len(chunk) for chunk in chunks(records, 2500)]
    assert sizes == [2500, 2500, 1001]
    assert list(chunks([], 2500)) == []


def test_a_method_waiting_for_its_budget_lets_the_other_lists_go_first() -> None:
    from types import SimpleNamespace

    from crmbridge.sync import Syncer, _Stream

    waits = {"crm.stagehistory.list": 0.0, "tasks.task.list": 0.0}
    order: list[str] = []

    def stream(entity: str, method: str, pieces: int, budget_spent_after: int | None) -> _Stream:
        def write(chunk: list[dict[str, str]]) -> None:
            order.append(entity)
            if budget_spent_after is not None and order.count(entity) == budget_spent_after:
                waits[method] = 300.0  # the portal reported this method near its 10-minute budget

        return _Stream(entity, method, iter([[{"ID": str(i)}] for i in range(pieces)]), write,
                       lambda: order.append(f"{entity} done"))

    client = SimpleNamespace(operating_wait=lambda method: waits[method], requests_made=0)
    syncer = Syncer(SimpleNamespace(client=client), cache=lambda: None)  # type: ignore[arg-type]
    syncer._drain([
        stream("stage_history", "crm.stagehistory.list", 4, budget_spent_after=2),
        stream("tasks", "tasks.task.list", 3, budget_spent_after=None),
    ])
    # history runs until its budget is spent, tasks use theirs meanwhile, then history finishes
    assert order == ["stage_history", "stage_history", "tasks", "tasks", "tasks", "tasks done",
                     "stage_history", "stage_history", "stage_history done"]
