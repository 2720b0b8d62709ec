"""Growth: how the switch latency grows with the fleet, as a small hand-written SVG.

Log–log axes (10 → 100 → 1000 agents), one polyline each for confbus's median and p99 and
the raw baseline's median, so a glance shows whether cost grows like the floor or faster.
No plotting library: a few lines of SVG text.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from html import escape
from pathlib import Path

from benchmarks.report import Figure, fmt

WIDTH, HEIGHT = 560, 360
LEFT, RIGHT, TOP, BOTTOM = 70, 170, 40, 50

_AGENTS = re.compile(r"switch request → all applied, (\d+) agents")


def series(figures: Sequence[Figure]) -> dict[str, list[tuple[int, float]]]:
    out: dict[str, list[tuple[int, float]]] = {
        "confbus median": [],
        "confbus p99": [],
        "baseline median": [],
    }
    for f in figures:
        m = _AGENTS.fullmatch(f.name)
        if f.benchmark != "switch" or m is None:
            continue
        n = int(m.group(1))
        out["confbus median"].append((n, f.value.median))
        out["confbus p99"].append((n, f.value.p99))
        if f.baseline is not None:
            out["baseline median"].append((n, f.baseline.median))
    return {k: sorted(v) for k, v in out.items() if v}


def _ticks(lo: float, hi: float) -> list[float]:
    return [10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]


def svg(
    figures: Sequence[Figure],
    title: str = "switch request → all applied, all at once, vs fleet size",
) -> str:
    data = series(figures)
    points = [p for s in data.values() for p in s]
    if not points:
        return ""
    xs = [float(n) for n, _ in points]
    ys = [max(v, 1e-3) for _, v in points]
    xticks = _ticks(min(xs), max(xs))
    yticks = _ticks(min(ys), max(ys))
    x0, x1 = math.log10(xticks[0]), math.log10(xticks[-1])
    y0, y1 = math.log10(yticks[0]), math.log10(yticks[-1])
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pw, ph = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def px(x: float) -> float:
        return LEFT + (math.log10(x) - x0) / (x1 - x0) * pw

    def py(y: float) -> float:
        return TOP + ph - (math.log10(max(y, 1e-3)) - y0) / (y1 - y0) * ph

    colors = {"confbus median": "#1f77b4", "confbus p99": "#9ecae1", "baseline median": "#d62728"}
    dashes = {"baseline median": ' stroke-dasharray="6 4"'}
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
        f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
        f'<text x="{LEFT}" y="22" font-size="14" font-weight="bold">{escape(title)}</text>',
        f'<rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>',
    ]
    for t in xticks:
        x = px(t)
        parts.append(
            f'<line x1="{x:.1f}" y1="{TOP}" x2="{x:.1f}" y2="{TOP + ph}" stroke="#eee"/>'
            f'<text x="{x:.1f}" y="{TOP + ph + 16}" text-anchor="middle">{fmt(t)}</text>'
        )
    for t in yticks:
        y = py(t)
        parts.append(
            f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="#eee"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{fmt(t)}</text>'
        )
    parts.append(
        f'<text x="{LEFT + pw / 2:.0f}" y="{HEIGHT - 12}" text-anchor="middle">'
        "agents (log scale)</text>"
        f'<text x="16" y="{TOP + ph / 2:.0f}" text-anchor="middle" '
        f'transform="rotate(-90 16 {TOP + ph / 2:.0f})">ms to all applied (log scale)</text>'
    )
    for i, (name, pts) in enumerate(data.items()):
        color = colors.get(name, "#333")
        coords = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in pts)
        parts.append(
            f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"'
            f"{dashes.get(name, '')}/>"
        )
        for n, v in pts:
            parts.append(
                f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{color}">'
                f"<title>{escape(name)}: {n} agents, {fmt(v)} ms</title></circle>"
            )
        ly = TOP + 10 + i * 20
        lx = LEFT + pw + 12
        parts.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 22}" y2="{ly}" stroke="{color}" '
            f'stroke-width="2"{dashes.get(name, "")}/>'
            f'<text x="{lx + 28}" y="{ly + 4}">{escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def write_svg(figures: Sequence[Figure], path: Path) -> Path | None:
    text = svg(figures)
    if not text:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
