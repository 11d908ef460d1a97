"""Calendar periods of plans and KPIs: a month (2026-11), quarter (2026-Q4), half-year (2026-H2) or year (2026)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from typing import Literal

Kind = Literal["month", "quarter", "half", "year"]
_MONTHS_IN = {"month": 1, "quarter": 3, "half": 6, "year": 12}
_PATTERN = re.compile(r"^(\d{4})(?:-(?:(\d{1,2})|[Qq]([1-4])|[Hh]([12])))?$")
PERIOD_HELP = "write a month 2026-11, a quarter 2026-Q4, a half-year 2026-H2 or a year 2026"


class PeriodError(ValueError):
    """Text that is not a period; the message says how to write one."""


@dataclass(frozen=True, order=True)
class Period:
    """A calendar period; `index` counts from 1 within the year (month 1..12, quarter 1..4, half 1..2)."""

    year: int
    first_month: int  # 1..12: orders periods by start
    kind: Kind

    @staticmethod
    def month(year: int, month: int) -> Period:
        return Period(year, month, "month")

    @staticmethod
    def quarter(year: int, quarter: int) -> Period:
        return Period(year, 3 * quarter - 2, "quarter")

    @staticmethod
    def half(year: int, half: int) -> Period:
        return Period(year, 6 * half - 5, "half")

    @staticmethod
    def whole_year(year: int) -> Period:
        return Period(year, 1, "year")

    @staticmethod
    def parse(text: object) -> Period:
        """`2026-11`, `2026-Q4`, `2026-H2`, `2026` (an int from YAML too) -> Period, else PeriodError."""
        raw = str(text).strip() if not isinstance(text, bool) else ""
        match = _PATTERN.match(raw)
        if match is None:
            raise PeriodError(f'"{text}" is not a period — {PERIOD_HELP}')
        year = int(match[1])
        if not 1900 <= year <= 2999:
            raise PeriodError(f'"{text}": the year {year} is out of range — {PERIOD_HELP}')
        if match[2] is not None:
            month = int(match[2])
            if not 1 <= month <= 12:
                raise PeriodError(f'"{text}": there is no month {month} — {PERIOD_HELP}')
            return Period.month(year, month)
        if match[3] is not None:
            return Period.quarter(year, int(match[3]))
        if match[4] is not None:
            return Period.half(year, int(match[4]))
        return Period.whole_year(year)

    @staticmethod
    def containing(day: date, kind: Kind = "month") -> Period:
        month = Period.month(day.year, day.month)
        return month if kind == "month" else month.parent(kind)

    # ------------------------------------------------------------------ shape

    @property
    def months_count(self) -> int:
        return _MONTHS_IN[self.kind]

    @property
    def index(self) -> int:
        return (self.first_month - 1) // self.months_count + 1

    @property
    def start(self) -> date:
        return date(self.year, self.first_month, 1)

    @property
    def end(self) -> date:
        """The first day after the period (exclusive bound)."""
        month0 = self.first_month - 1 + self.months_count
        return date(self.year + month0 // 12, month0 % 12 + 1, 1)

    @property
    def month_number(self) -> int:
        """Months since year 0: consecutive months differ by 1 (cheap bucketing of dates)."""
        return self.year * 12 + self.first_month - 1

    def months(self) -> list[Period]:
        return [Period.month(self.year, self.first_month + offset) for offset in range(self.months_count)]

    def children(self) -> list[Period]:
        """The next level down: a year's halves, a half's quarters, a quarter's months."""
        if self.kind == "year":
            return [Period.half(self.year, 1), Period.half(self.year, 2)]
        if self.kind == "half":
            return [Period.quarter(self.year, 2 * self.index - 1), Period.quarter(self.year, 2 * self.index)]
        if self.kind == "quarter":
            return self.months()
        return []

    def parent(self, kind: Kind) -> Period:
        """The period of `kind` that contains this one (a month's quarter, half or year)."""
        size = _MONTHS_IN[kind]
        if size < self.months_count:
            raise ValueError(f"a {self.kind} has no enclosing {kind}")
        first = (self.first_month - 1) // size * size + 1
        return Period(self.year, first, kind)

    def contains(self, other: Period) -> bool:
        return self.start <= other.start and other.end <= self.end

    def shifted(self, steps: int) -> Period:
        """The period `steps` periods of the same kind later (negative: earlier), across year boundaries."""
        month0 = self.month_number + steps * self.months_count
        return Period(month0 // 12, month0 % 12 + 1, self.kind)

    def previous(self) -> Period:
        return self.shifted(-1)

    def year_ago(self) -> Period:
        return Period(self.year - 1, self.first_month, self.kind)

    def __str__(self) -> str:
        if self.kind == "month":
            return f"{self.year}-{self.first_month:02d}"
        if self.kind == "quarter":
            return f"{self.year}-Q{self.index}"
        if self.kind == "half":
            return f"{self.year}-H{self.index}"
        return str(self.year)

    def label(self, language: str = "en") -> str:
        """For people: `ноябрь 2026`, `IV кв. 2026`, `2-е полугодие 2026` / `Nov 2026`, `Q4 2026`, `H2 2026`."""
        if language == "ru":
            if self.kind == "month":
                return f"{RU_MONTHS[self.first_month - 1]} {self.year}"
            if self.kind == "quarter":
                return f"{('I', 'II', 'III', 'IV')[self.index - 1]} кв. {self.year}"
            if self.kind == "half":
                return f"{self.index}-е полугодие {self.year}"
            return f"{self.year} год"
        if self.kind == "month":
            return f"{EN_MONTHS[self.first_month - 1]} {self.year}"
        if self.kind == "quarter":
            return f"Q{self.index} {self.year}"
        if self.kind == "half":
            return f"H{self.index} {self.year}"
        return str(self.year)


RU_MONTHS = ("январь", "февраль", "март", "апрель", "май", "июнь", "июль", "август", "сентябрь", "октябрь",
             "ноябрь", "декабрь")
EN_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def last_full_month(today: date) -> Period:
    """The month a monthly KPI run at the start of a month is about: the one before `today`'s."""
    return Period.containing(today).previous()


def months_back(last: Period, count: int) -> list[Period]:
    """`count` months ending with `last` (a month), oldest first: the report's 12-month trend."""
    return [last.shifted(offset) for offset in range(-count + 1, 1)]


def month_of_number(number: int) -> Period:
    return Period.month(number // 12, number % 12 + 1)


@dataclass(frozen=True, order=True)
class Span:
    """Any run of whole months, e.g. the report's last 12 months: counted like a Period."""

    first: Period
    last: Period

    @property
    def start(self) -> date:
        return self.first.start

    @property
    def end(self) -> date:
        return self.last.end

    def months(self) -> list[Period]:
        return months_back(self.last, self.last.month_number - self.first.month_number + 1)

    def previous(self) -> Span:
        size = self.last.month_number - self.first.month_number + 1
        return Span(self.first.shifted(-size), self.last.shifted(-size))

    def year_ago(self) -> Span:
        return Span(self.first.year_ago(), self.last.year_ago())

    def contains(self, other: Period) -> bool:
        return self.start <= other.start and other.end <= self.end

    def __str__(self) -> str:
        return f"{self.first}..{self.last}"
