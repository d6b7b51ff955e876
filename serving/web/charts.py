"""Small charts as inline SVG, drawn on the server: no script, no library, readable without colour
(every bar carries its number, and a table under each chart gives the same figures)."""

from __future__ import annotations

from dataclasses import dataclass
from html import escape

# Colours with at least 3:1 contrast against white (WCAG non-text contrast), one per series.
PALETTE = ("#1f5fa8", "#b3541e", "#2f7d32", "#7b3fa0", "#8a6d00", "#a3213b")


@dataclass(frozen=True)
class Bar:
    label: str
    values: dict[str, int]  # series → count


def grouped_bars(bars: list[Bar], series: list[str], *, title: str, width: int = 640) -> str:
    """Horizontal grouped bars: one group per ``Bar``, one bar per series, the count beside each."""
    row, gap, left, top = 16, 10, 190, 34
    height = top + sum(len(series) * row + gap for _ in bars) + 10
    peak = max([1, *(v for b in bars for v in b.values.values())])
    scale = (width - left - 60) / peak
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" aria-label="{escape(title)}"><title>{escape(title)}</title>'
    ]
    for i, name in enumerate(series):  # the legend
        x = left + i * 110
        out.append(f'<rect x="{x}" y="6" width="12" height="12" fill="{PALETTE[i % len(PALETTE)]}"/>')
        out.append(f'<text x="{x + 16}" y="17" font-size="12" fill="#1a1a1a">{escape(name)}</text>')
    y = top
    for bar in bars:
        group_height = len(series) * row
        out.append(
            f'<text x="{left - 8}" y="{y + group_height / 2 + 4}" font-size="12" text-anchor="end" '
            f'fill="#1a1a1a">{escape(bar.label)}</text>'
        )
        for i, name in enumerate(series):
            count = bar.values.get(name, 0)
            length = max(count * scale, 1 if count else 0)
            colour = PALETTE[i % len(PALETTE)]
            out.append(
                f'<rect x="{left}" y="{y + i * row}" width="{length:.1f}" height="{row - 3}" fill="{colour}">'
                f"<title>{escape(bar.label)} · {escape(name)}: {count}</title></rect>"
            )
            out.append(
                f'<text x="{left + length + 4:.1f}" y="{y + i * row + row - 5}" font-size="11" '
                f'fill="#1a1a1a">{count}</text>'
            )
        y += group_height + gap
    out.append("</svg>")
    return "".join(out)


def columns(points: list[tuple[str, int]], *, title: str, width: int = 640, height: int = 180) -> str:
    """Counts over time as columns (one per day), the busiest day's count marked."""
    left, bottom, top = 30, 24, 16
    peak = max([1, *(n for _, n in points)])
    slot = (width - left - 10) / max(len(points), 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" viewBox="0 0 {width} {height}" '
        f'width="100%" aria-label="{escape(title)}"><title>{escape(title)}</title>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - 10}" y2="{height - bottom}" stroke="#555"/>',
        f'<text x="{left - 4}" y="{top + 4}" font-size="11" text-anchor="end" fill="#1a1a1a">{peak}</text>',
    ]
    for i, (day, count) in enumerate(points):
        bar = (height - bottom - top) * count / peak
        x = left + i * slot + 1
        out.append(
            f'<rect x="{x:.1f}" y="{height - bottom - bar:.1f}" width="{max(slot - 2, 1):.1f}" '
            f'height="{bar:.1f}" fill="{PALETTE[0]}"><title>{escape(day)}: {count}</title></rect>'
        )
        if i % max(1, len(points) // 6) == 0:
            out.append(
                f'<text x="{x:.1f}" y="{height - 6}" font-size="10" fill="#1a1a1a">{escape(day[5:])}</text>'
            )
    out.append("</svg>")
    return "".join(out)
