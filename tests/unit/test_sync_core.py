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
