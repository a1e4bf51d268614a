"""Small SVG charts drawn in Python for the HTML report (inline, so the report needs no script library).

Only histograms are needed (turns, tokens, seconds per work item); a dependency such as matplotlib
would add tens of megabytes and a font cache for twenty lines of SVG.
"""

from __future__ import annotations

import math
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 340, 170
PAD_LEFT, PAD_BOTTOM, PAD_TOP = 36, 34, 22


def _bins(values: list[float], bins: int, integer: bool) -> list[tuple[float, float, int]]:
    low, high = min(values), max(values)
    if integer:
        span = int(high - low) + 1
        bins = min(bins, span)
        step = math.ceil(span / bins)
        edges = [low + step * i for i in range(bins + 1)]
    else:
        if high == low:
            high = low + 1
        step = (high - low) / bins
        edges = [low + step * i for i in range(bins + 1)]
    counts = [0] * bins
    for v in values:
        i = int((v - low) // step) if step else 0
        counts[min(max(i, 0), bins - 1)] += 1
    return [(edges[i], edges[i + 1], counts[i]) for i in range(bins)]


def _fmt(value: float, integer: bool) -> str:
    if integer or value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}"


def histogram(values: list[float], title: str, integer: bool = False, bins: int = 12) -> Markup:
    """An inline SVG histogram of `values` with its title, axis ends and a tooltip per bar."""
    head = f'<text x="{WIDTH / 2}" y="14" text-anchor="middle" class="plot-title">{escape(title)}</text>'
    if not values:
        body = f'<text x="{WIDTH / 2}" y="{HEIGHT / 2}" text-anchor="middle" class="plot-axis">no data</text>'
        return Markup(_svg(head + body, title))
    table = _bins(values, bins, integer)
    top = max(c for _, _, c in table) or 1
    plot_w, plot_h = WIDTH - PAD_LEFT - 8, HEIGHT - PAD_BOTTOM - PAD_TOP
    bar_w = plot_w / len(table)
    parts = [head]
    for i, (lo, hi, count) in enumerate(table):
        h = plot_h * count / top
        x = PAD_LEFT + i * bar_w
        y = PAD_TOP + plot_h - h
        span = f"{_fmt(lo, integer)}" if integer and hi - lo == 1 else f"{_fmt(lo, integer)}–{_fmt(hi, integer)}"
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{y:.1f}" width="{max(bar_w - 2, 1):.1f}" height="{h:.1f}">'
            f"<title>{escape(span)}: {count}</title></rect>"
        )
    base = PAD_TOP + plot_h
    parts.append(f'<line class="plot-axis-line" x1="{PAD_LEFT}" y1="{base}" x2="{WIDTH - 8}" y2="{base}"/>')
    parts.append(f'<text class="plot-axis" x="{PAD_LEFT - 4}" y="{PAD_TOP + 8}" text-anchor="end">{top}</text>')
    parts.append(f'<text class="plot-axis" x="{PAD_LEFT - 4}" y="{base}" text-anchor="end">0</text>')
    parts.append(f'<text class="plot-axis" x="{PAD_LEFT}" y="{base + 14}">{_fmt(table[0][0], integer)}</text>')
    parts.append(
        f'<text class="plot-axis" x="{WIDTH - 8}" y="{base + 14}" text-anchor="end">'
        f"{_fmt(table[-1][1] - 1 if integer else table[-1][1], integer)}</text>"
    )
    parts.append(
        f'<text class="plot-axis" x="{WIDTH / 2}" y="{base + 28}" text-anchor="middle">{len(values)} work items</text>'
    )
    return Markup(_svg("".join(parts), title))


def _svg(body: str, title: str) -> str:
    return (
        f'<svg class="plot" role="img" aria-label="{escape(title)}" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )
