"""Working-hours arithmetic for timers (R7..R11): elapsed working time and deadlines, in the regulation's zone."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo

from crmbridge.mapping.schema import WEEKDAYS, CalendarSpec

_MIDNIGHT = time()


class WorkingCalendar:
    """Counts time inside working hours on working days; without a spec it counts plain time."""

    def __init__(self, spec: CalendarSpec | None) -> None:
        self.spec = spec
        self.zone = ZoneInfo(spec.timezone) if spec else timezone.utc
        if spec is None:
            return
        start, end = spec.working_hours.split("-")
        self.day_start = _minutes(start)
        self.day_end = _minutes(end)
        self.day_length = timedelta(minutes=self.day_end - self.day_start)
        self._opens_after = timedelta(minutes=self.day_start)  # after midnight; built once, timers ask per day
        self._closes_after = timedelta(minutes=self.day_end)
        self.working_weekdays = frozenset(WEEKDAYS.index(day) for day in spec.working_days)
        self.holidays = frozenset(spec.holidays)

    def is_working_day(self, day: date) -> bool:
        return day.weekday() in self.working_weekdays and day not in self.holidays

    def is_working_time(self, moment: datetime) -> bool:
        """Whether `moment` is inside working hours of a working day (always, without a calendar)."""
        if self.spec is None:
            return True
        local = moment.astimezone(self.zone)
        if not self.is_working_day(local.date()):
            return False
        opens, closes = self._window(local.date())
        return opens <= local < closes

    def _window(self, day: date) -> tuple[datetime, datetime]:
        midnight = datetime.combine(day, _MIDNIGHT, self.zone)
        return midnight + self._opens_after, midnight + self._closes_after

    def elapsed(self, start: datetime, end: datetime, *, working: bool = True) -> timedelta:
        """Working time between two moments (plain time when `working` is false or there is no calendar)."""
        if self.spec is None or not working:
            return end - start
        if end <= start:
            return timedelta(0)
        first, last = start.astimezone(self.zone).date(), end.astimezone(self.zone).date()
        total = timedelta(0)
        day = first
        while day <= last:
            if day != first and (last - day).days > 14 and day.weekday() == 0:
                # whole weeks at once; holidays inside them are subtracted below
                weeks = ((last - day).days - 7) // 7
                total += self.day_length * len(self.working_weekdays) * weeks
                skipped_until = day + timedelta(weeks=weeks)
                total -= self.day_length * sum(1 for holiday in self.holidays
                                                if day <= holiday < skipped_until and holiday.weekday() in self.working_weekdays)
                day = skipped_until
                continue
            if self.is_working_day(day):
                opens, closes = self._window(day)
                overlap = min(closes, end) - max(opens, start)
                if overlap > timedelta(0):
                    total += overlap
            day += timedelta(days=1)
        return total

    def add(self, start: datetime, span: timedelta, *, working: bool = True) -> datetime:
        """The moment when `span` of working time has passed since `start`."""
        if self.spec is None or not working:
            return start + span
        local = start.astimezone(self.zone)
        remaining = span
        day = local.date()
        for _ in range(3660):
            if self.is_working_day(day):
                opens, closes = self._window(day)
                begin = max(opens, local)
                if begin < closes:
                    if begin + remaining <= closes:
                        return begin + remaining
                    remaining -= closes - begin
            day += timedelta(days=1)
        return start + span


def _minutes(text: str) -> int:
    hours, minutes = text.split(":")
    return int(hours) * 60 + int(minutes)
