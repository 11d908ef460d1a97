"""Pure: small inline SVG charts (bars with plan marks, lines, horizontal plan-vs-fact bars, a funnel).

Hand-drawn on purpose: a report must open offline and stay small, and every text that came from the CRM
(a manager's name, a stage) is escaped here as data.
"""

from __future__ import annotations

from dataclasses import dataclass
from html import escape
from typing import Callable, Sequence

PALETTE = ("#2f6fdf", "#e8843c", "#3aa55d", "#b04ad6", "#d84a4a", "#6b7a8f")
FONT = 'font-family="system-ui,Segoe UI,Arial,sans-serif" font-size="11"'


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]
    colour: str = PALETTE[0]


def _fmt(value: float) -> str:
    return f"{value:.1f}".rstrip("0").rstrip(".")


def _nice_max(value: float) -> float:
    if value <= 0:
        return 1.0
    magnitude = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return step * magnitude
    return 10 * magnitude


def _axis(width: int, height: int, left: int, bottom: int, top: int, maximum: float,
          label: Callable[[float], str]) -> list[str]:
    parts = []
    for i in range(5):
        value = maximum * i / 4
        y = height - bottom - (height - bottom - top) * i / 4
        parts.append(f'<line x1="{left}" y1="{_fmt(y)}" x2="{width - 8}" y2="{_fmt(y)}" stroke="#e3e6ea"/>')
        parts.append(f'<text x="{left - 6}" y="{_fmt(y + 4)}" text-anchor="end" fill="#555">{escape(label(value))}</text>')
    return parts


def _legend(series: Sequence[Series], x: int, y: int, extra: Sequence[tuple[str, str, str]] = ()) -> list[str]:
    parts, offset = [], x
    items = [(s.name, s.colour, "rect") for s in series] + list(extra)
    for name, colour, shape in items:
        if shape == "rect":
            parts.append(f'<rect x="{offset}" y="{y - 9}" width="10" height="10" fill="{colour}"/>')
        else:
            parts.append(f'<line x1="{offset}" y1="{y - 4}" x2="{offset + 12}" y2="{y - 4}" stroke="{colour}" '
                         'stroke-width="2" stroke-dasharray="4 2"/>')
        parts.append(f'<text x="{offset + 15}" y="{y}" fill="#333">{escape(name)}</text>')
        offset += 30 + 7 * len(name)
    return parts


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
            f'role="img" aria-label="{escape(title)}" {FONT}><title>{escape(title)}</title>' + "".join(body) + "</svg>")


def bar_chart(title: str, categories: Sequence[str], bars: Sequence[Series], *, plan: Sequence[float | None] = (),
              plan_name: str = "", label: Callable[[float], str] = _fmt, width: int = 720, height: int = 260) -> str:
    """Grouped vertical bars per category, with the plan as a dashed mark over each group."""
    left, bottom, top = 64, 34, 26
    values = [v for s in bars for v in s.values if v is not None] + [v for v in plan if v is not None]
    maximum = _nice_max(max(values, default=0.0))
    plot_w, plot_h = width - left - 10, height - bottom - top
    group = plot_w / max(1, len(categories))
    bar_w = max(2.0, group * 0.7 / max(1, len(bars)))
    body = _axis(width, height, left, bottom, top, maximum, label)
    for index, category in enumerate(categories):
        x0 = left + group * index + group * 0.15
        for number, series in enumerate(bars):
            value = series.values[index] if index < len(series.values) else None
            if value is None:
                continue
            h = plot_h * max(0.0, value) / maximum
            body.append(f'<rect x="{_fmt(x0 + number * bar_w)}" y="{_fmt(height - bottom - h)}" width="{_fmt(bar_w)}" '
                        f'height="{_fmt(h)}" fill="{series.colour}"><title>{escape(category)}: {escape(series.name)} '
                        f'{escape(label(value))}</title></rect>')
        target = plan[index] if index < len(plan) else None
        if target is not None:
            y = height - bottom - plot_h * max(0.0, target) / maximum
            body.append(f'<line x1="{_fmt(x0 - 2)}" y1="{_fmt(y)}" x2="{_fmt(x0 + bar_w * len(bars) + 2)}" '
                        f'y2="{_fmt(y)}" stroke="#222" stroke-width="2" stroke-dasharray="4 2"><title>'
                        f'{escape(category)}: {escape(plan_name)} {escape(label(target))}</title></line>')
        body.append(f'<text x="{_fmt(left + group * (index + 0.5))}" y="{height - bottom + 14}" text-anchor="middle" '
                    f'fill="#444">{escape(category)}</text>')
    extra = [(plan_name, "#222", "line")] if plan_name and any(v is not None for v in plan) else []
    body.extend(_legend(bars, left, 14, extra))
    return _svg(width, height, title, body)


def line_chart(title: str, categories: Sequence[str], lines: Sequence[Series], *, label: Callable[[float], str] = _fmt,
               maximum: float | None = None, width: int = 720, height: int = 240) -> str:
    """Lines over months; a missing value breaks the line."""
    left, bottom, top = 52, 34, 26
    values = [v for s in lines for v in s.values if v is not None]
    top_value = maximum if maximum is not None else _nice_max(max(values, default=0.0))
    plot_w, plot_h = width - left - 10, height - bottom - top
    step = plot_w / max(1, len(categories))
    body = _axis(width, height, left, bottom, top, top_value, label)
    for index, category in enumerate(categories):
        body.append(f'<text x="{_fmt(left + step * (index + 0.5))}" y="{height - bottom + 14}" text-anchor="middle" '
                    f'fill="#444">{escape(category)}</text>')
    for series in lines:
        segment: list[str] = []
        segments: list[list[str]] = []
        for index, value in enumerate(series.values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x = left + step * (index + 0.5)
            y = height - bottom - plot_h * min(max(0.0, value), top_value) / top_value
            segment.append(f"{_fmt(x)},{_fmt(y)}")
            body.append(f'<circle cx="{_fmt(x)}" cy="{_fmt(y)}" r="3" fill="{series.colour}"><title>'
                        f'{escape(categories[index])}: {escape(series.name)} {escape(label(value))}</title></circle>')
        if segment:
            segments.append(segment)
        for points in segments:
            body.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{series.colour}" stroke-width="2"/>')
    body.extend(_legend(lines, left, 14))
    return _svg(width, height, title, body)


def plan_fact_bars(title: str, names: Sequence[str], facts: Sequence[float | None], plans: Sequence[float | None], *,
                   fact_name: str, plan_name: str, label: Callable[[float], str] = _fmt, width: int = 720) -> str:
    """One horizontal bar per manager (fact), a dark tick where the plan is, the share done at the end."""
    left, row, top = 170, 24, 26
    height = top + row * max(1, len(names)) + 12
    values = [v for v in [*facts, *plans] if v is not None]
    maximum = _nice_max(max(values, default=0.0)) * 1.05
    plot_w = width - left - 80
    body = _legend([Series(fact_name, [], PALETTE[0])], left, 14, [(plan_name, "#222", "line")])
    for index, name in enumerate(names):
        y = top + row * index
        fact, target = facts[index], plans[index]
        body.append(f'<text x="{left - 8}" y="{y + 15}" text-anchor="end" fill="#222">{escape(name)}</text>')
        if fact is not None:
            w = plot_w * max(0.0, fact) / maximum
            colour = PALETTE[0] if not target else ("#3aa55d" if fact >= target else "#e8843c" if fact >= 0.8 * target
                                                     else "#d84a4a")
            body.append(f'<rect x="{left}" y="{y + 4}" width="{_fmt(w)}" height="{row - 8}" fill="{colour}"><title>'
                        f'{escape(name)}: {escape(fact_name)} {escape(label(fact))}</title></rect>')
        if target:
            x = left + plot_w * target / maximum
            body.append(f'<line x1="{_fmt(x)}" y1="{y + 1}" x2="{_fmt(x)}" y2="{y + row - 1}" stroke="#222" '
                        f'stroke-width="2"><title>{escape(name)}: {escape(plan_name)} {escape(label(target))}</title></line>')
            share = f"{100 * (fact or 0) / target:.0f}%"
            body.append(f'<text x="{width - 8}" y="{y + 15}" text-anchor="end" fill="#222">{share}</text>')
    return _svg(width, height, title, body)


def funnel(title: str, steps: Sequence[tuple[str, int]], *, width: int = 720) -> str:
    """Deals entering each stage (a count), with the conversion to the next stage."""
    left, row, top = 190, 26, 8
    height = top + row * max(1, len(steps)) + 6
    maximum = max((count for _, count in steps), default=0) or 1
    plot_w = width - left - 90
    body = []
    for index, (name, count) in enumerate(steps):
        y = top + row * index
        w = max(1.0, plot_w * count / maximum)
        x = left + (plot_w - w) / 2
        body.append(f'<text x="{left - 8}" y="{y + 16}" text-anchor="end" fill="#222">{escape(name)}</text>')
        body.append(f'<rect x="{_fmt(x)}" y="{y + 3}" width="{_fmt(w)}" height="{row - 6}" rx="3" '
                    f'fill="{PALETTE[index % len(PALETTE)]}"><title>{escape(name)}: {count}</title></rect>')
        text = str(count)
        if index + 1 < len(steps) and count:
            text += f" → {100 * steps[index + 1][1] / count:.0f}%"
        body.append(f'<text x="{width - 8}" y="{y + 16}" text-anchor="end" fill="#222">{escape(text)}</text>')
    return _svg(width, height, title, body)
