"""Data and SVG rendering for the admin dashboard. Only the ``collect_*`` functions read the
database; the others are pure.

Nothing here returns personal data: error texts are grouped into patterns with customer ids,
e-mail addresses, quoted values, long tokens and numbers masked, and the chart carries counts
only. The SVG is built with :func:`django.utils.html.format_html`, so every text in it is
escaped.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

from django.db.models.functions import Substr
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from django_cio_reliable import clock, metrics
from django_cio_reliable.models import Operation

#: Windows the dashboard offers, in hours.
WINDOW_HOURS: tuple[int, ...] = (1, 3, 6, 12, 24)
#: The window shown when none (or an unknown one) is asked for.
DEFAULT_HOURS = 3
#: The chart never has more buckets than this; longer windows use wider buckets.
MAX_BUCKETS = 180
#: Bucket widths (minutes) the chart may use, smallest first.
BUCKET_STEPS: tuple[int, ...] = (1, 2, 5, 10, 15, 30, 60)
#: How many of the most recent failed/dead operations the error grouping looks at.
ERROR_SAMPLE = 5000
#: Characters of ``last_error`` read for grouping.
ERROR_READ_CHARS = 300
#: Characters of a grouped error pattern that are shown.
ERROR_PATTERN_CHARS = 120

_EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


@dataclass(frozen=True)
class Bucket:
    """One time slot of the chart.

    Attributes:
        start: When the slot begins (inclusive, timezone-aware).
        delivered: Operations delivered in the slot.
        failed: Operations whose latest attempt failed (retrying or dead) in the slot.
    """

    start: datetime
    delivered: int = 0
    failed: int = 0


def bucket_minutes_for(hours: int) -> int:
    """The narrowest bucket width (minutes) that keeps ``hours`` within :data:`MAX_BUCKETS`."""
    total = max(1, hours) * 60
    for step in BUCKET_STEPS:
        if total / step <= MAX_BUCKETS:
            return step
    return BUCKET_STEPS[-1]


def window_start(now: datetime, *, hours: int, bucket_minutes: int) -> datetime:
    """The start of the first bucket: buckets are aligned to multiples of their width.

    The last bucket is the one that contains ``now``.
    """
    width = bucket_minutes * 60
    elapsed = int((now - _EPOCH).total_seconds())
    current = _EPOCH + timedelta(seconds=elapsed - elapsed % width)
    count = math.ceil(hours * 60 / bucket_minutes)
    return current - timedelta(seconds=width * (count - 1))


def build_buckets(
    delivered: Iterable[tuple[datetime, int]],
    failed: Iterable[tuple[datetime, int]],
    *,
    now: datetime,
    hours: int,
    bucket_minutes: int = 1,
) -> list[Bucket]:
    """Fold ``(moment, count)`` rows into aligned buckets covering the last ``hours``.

    Rows outside the window are ignored. Each bucket is ``bucket_minutes`` wide; the last one
    contains ``now``.

    Args:
        delivered: Delivery counts, e.g. per minute, as ``(moment, count)``.
        failed: Failure counts, as ``(moment, count)``.
        now: The current time (timezone-aware).
        hours: How far back the chart reaches.
        bucket_minutes: Width of one bucket.

    Returns:
        The buckets, oldest first.
    """
    if bucket_minutes < 1:
        raise ValueError("bucket_minutes must be >= 1")
    start = window_start(now, hours=hours, bucket_minutes=bucket_minutes)
    width = bucket_minutes * 60
    count = math.ceil(hours * 60 / bucket_minutes)
    counts = [[0, 0] for _ in range(count)]  # delivered, failed
    for column, rows in enumerate((delivered, failed)):
        for moment, number in rows:
            if moment is None:
                continue
            index = int((moment - start).total_seconds() // width)
            if 0 <= index < count:
                counts[index][column] += int(number)
    return [Bucket(start + timedelta(seconds=width * i), *pair) for i, pair in enumerate(counts)]


def collect_throughput(
    *, hours: int = DEFAULT_HOURS, now: datetime | None = None
) -> tuple[list[Bucket], int]:
    """Delivered operations and failed attempts per bucket over the last ``hours``.

    Read from the per-minute counts of :mod:`django_cio_reliable.metrics`, which are taken when
    each outcome happens: a failure stays on the chart after the operation was retried and
    delivered. "Failed" counts failed attempts rescheduled for a retry and operations
    dead-lettered.

    Returns:
        The buckets and their width in minutes.
    """
    current = now or clock.now()
    minutes = bucket_minutes_for(hours)
    since = window_start(current, hours=hours, bucket_minutes=minutes)
    rows = metrics.per_minute(since)
    delivered = [(minute, n) for minute, n, _ in rows]
    failed = [(minute, n) for minute, _, n in rows]
    buckets = build_buckets(delivered, failed, now=current, hours=hours, bucket_minutes=minutes)
    return buckets, minutes


def nice_ceiling(value: float) -> float:
    """The smallest of 1, 2, 2.5, 5 × 10ⁿ that is at least ``value`` (1 for nothing)."""
    if not value or value <= 0 or not math.isfinite(value):
        return 1.0
    exponent = math.floor(math.log10(value))
    for mantissa in (1.0, 2.0, 2.5, 5.0, 10.0):
        candidate = mantissa * 10.0**exponent
        if candidate >= value * (1 - 1e-9):
            return candidate
    return 10.0 ** (exponent + 1)  # pragma: no cover - 10 always qualifies


def _fmt(value: float) -> str:
    """A number for the SVG: no trailing zeros, at most two decimals."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


@dataclass(frozen=True)
class ChartGeometry:
    """Where the chart puts things; :func:`chart_geometry` computes it.

    Attributes:
        width: Total width of the SVG.
        height: Total height of the SVG.
        left: Left edge of the plot area.
        top: Top edge of the plot area.
        plot_width: Width of the plot area.
        plot_height: Height of the plot area.
        y_max: The value at the top of the plot (a "nice" number).
        y_ticks: Values with a horizontal grid line and a label.
        delivered_points: ``(x, y)`` of each bucket's delivered rate.
        failed_points: ``(x, y)`` of each bucket's failed rate.
    """

    width: int
    height: int
    left: int
    top: int
    plot_width: int
    plot_height: int
    y_max: float
    y_ticks: list[float] = field(default_factory=list)
    delivered_points: list[tuple[float, float]] = field(default_factory=list)
    failed_points: list[tuple[float, float]] = field(default_factory=list)

    @property
    def bottom(self) -> int:
        """The y coordinate of the x axis."""
        return self.top + self.plot_height

    def y(self, value: float) -> float:
        """The y coordinate of ``value``."""
        return self.top + self.plot_height - (value / self.y_max) * self.plot_height


def chart_geometry(
    buckets: Sequence[Bucket],
    *,
    bucket_minutes: int = 1,
    width: int = 900,
    height: int = 260,
) -> ChartGeometry:
    """Compute the coordinates of the chart of ``buckets`` (rates per minute)."""
    left, right, top, bottom = 56, 16, 16, 40
    plot_width = width - left - right
    plot_height = height - top - bottom
    delivered = [b.delivered / bucket_minutes for b in buckets]
    failed = [b.failed / bucket_minutes for b in buckets]
    y_max = nice_ceiling(max([*delivered, *failed, 0.0]))
    step = y_max / 4
    geometry = ChartGeometry(
        width=width,
        height=height,
        left=left,
        top=top,
        plot_width=plot_width,
        plot_height=plot_height,
        y_max=y_max,
        y_ticks=[step * i for i in range(5)],
    )
    slot = plot_width / max(1, len(buckets))
    for index, (d, f) in enumerate(zip(delivered, failed, strict=True)):
        x = left + slot * (index + 0.5)
        geometry.delivered_points.append((round(x, 2), round(geometry.y(d), 2)))
        geometry.failed_points.append((round(x, 2), round(geometry.y(f), 2)))
    return geometry


def _points(points: Sequence[tuple[float, float]]) -> str:
    return " ".join(f"{_fmt(x)},{_fmt(y)}" for x, y in points)


def _label_time(moment: datetime) -> str:
    return timezone.localtime(moment).strftime("%H:%M")


def render_chart_svg(
    buckets: Sequence[Bucket],
    *,
    bucket_minutes: int = 1,
    width: int = 900,
    height: int = 260,
    title: str = "Delivered and failed operations per minute",
) -> SafeString:
    """Render ``buckets`` as an inline SVG line chart (no JavaScript, no external assets).

    Delivered operations are a green line over a light area, failed ones a red line. Each
    bucket has a transparent hover target whose ``<title>`` gives its time and counts.

    Args:
        buckets: The data, oldest first (see :func:`build_buckets`).
        bucket_minutes: Width of one bucket; values are drawn as rates per minute.
        width: Width of the SVG in pixels.
        height: Height of the SVG in pixels.
        title: Accessible title of the chart.

    Returns:
        The ``<svg>`` element, with every text escaped.
    """
    geo = chart_geometry(buckets, bucket_minutes=bucket_minutes, width=width, height=height)
    left, right, bottom = geo.left, geo.left + geo.plot_width, geo.bottom
    middle = geo.top + geo.plot_height / 2
    slot = geo.plot_width / max(1, len(buckets))
    parts: list[str] = [
        format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" class="cio-chart" id="cio-throughput-chart"'
            ' role="img" aria-labelledby="cio-chart-title" viewBox="0 0 {w} {h}" width="{w}"'
            ' height="{h}" data-buckets="{n}" data-bucket-minutes="{m}" data-y-max="{y_max}">'
            '<title id="cio-chart-title">{title}</title>',
            w=width,
            h=height,
            n=len(buckets),
            m=bucket_minutes,
            y_max=_fmt(geo.y_max),
            title=title,
        )
    ]
    for tick in geo.y_ticks:
        parts.append(
            format_html(
                '<line class="grid" x1="{left}" y1="{y}" x2="{right}" y2="{y}" stroke="#999"'
                ' stroke-opacity="0.3" stroke-width="1"/>'
                '<text class="y-label" x="{label_x}" y="{y}" text-anchor="end" font-size="11"'
                ' fill="currentColor" dominant-baseline="middle">{tick}</text>',
                left=left,
                right=right,
                label_x=left - 6,
                y=_fmt(geo.y(tick)),
                tick=_fmt(tick),
            )
        )
    # X labels: about six, on bucket boundaries.
    for index in range(0, len(buckets), max(1, math.ceil(len(buckets) / 6))):
        parts.append(
            format_html(
                '<line x1="{x}" y1="{bottom}" x2="{x}" y2="{tick_end}" stroke="#999"'
                ' stroke-width="1"/><text class="x-label" x="{x}" y="{label_y}"'
                ' text-anchor="middle" font-size="11" fill="currentColor">{time}</text>',
                x=_fmt(left + slot * index),
                bottom=bottom,
                tick_end=bottom + 4,
                label_y=bottom + 18,
                time=_label_time(buckets[index].start),
            )
        )
    parts.append(
        format_html(
            '<line class="axis" x1="{left}" y1="{bottom}" x2="{right}" y2="{bottom}"'
            ' stroke="#999" stroke-width="1"/><text x="14" y="{middle}" font-size="11"'
            ' fill="currentColor" transform="rotate(-90 14 {middle})" text-anchor="middle">'
            "per minute</text>",
            left=left,
            right=right,
            bottom=bottom,
            middle=middle,
        )
    )
    if geo.delivered_points:
        first_x = geo.delivered_points[0][0]
        last_x = geo.delivered_points[-1][0]
        area = [(first_x, float(bottom)), *geo.delivered_points, (last_x, float(bottom))]
        parts.append(
            format_html(
                '<polygon class="delivered-area" points="{}" fill="#2e7d32" fill-opacity="0.15"'
                ' stroke="none"/>'
                '<polyline class="series delivered" data-series="delivered" points="{}"'
                ' fill="none" stroke="#2e7d32" stroke-width="2" stroke-linejoin="round"/>'
                '<polyline class="series failed" data-series="failed" points="{}" fill="none"'
                ' stroke="#c62828" stroke-width="2" stroke-linejoin="round"/>',
                _points(area),
                _points(geo.delivered_points),
                _points(geo.failed_points),
            )
        )
        parts.append(
            format_html_join(
                "",
                '<rect class="hover" x="{}" y="{}" width="{}" height="{}" fill="transparent">'
                "<title>{} — delivered {}, failed {}</title></rect>",
                (
                    (
                        _fmt(left + slot * i),
                        geo.top,
                        _fmt(slot),
                        geo.plot_height,
                        _label_time(b.start),
                        b.delivered,
                        b.failed,
                    )
                    for i, b in enumerate(buckets)
                ),
            )
        )
    if not any(b.delivered or b.failed for b in buckets):
        parts.append(
            format_html(
                '<text class="empty" x="{}" y="{}" text-anchor="middle" font-size="13"'
                ' fill="currentColor" fill-opacity="0.6">{}</text>',
                geo.left + geo.plot_width / 2,
                middle,
                "No deliveries or failures in this window",
            )
        )
    parts.append("</svg>")
    # Every part above came from format_html (escaped); the closing tag is a literal.
    return mark_safe("".join(parts))  # noqa: S308


_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_QUOTED = re.compile(r"""(["'`])(?:(?!\1).){0,500}\1""")
_TOKEN = re.compile(r"\b(?=[A-Za-z0-9_-]*\d)[A-Za-z0-9_-]{16,}\b")
_NUMBER = re.compile(r"(?P<http>\bHTTP \d{3}\b)|\d+(?:[.,]\d+)*")
_SPACE = re.compile(r"\s+")


def normalize_error(text: str, customer_id: str = "") -> str:
    """Turn an error text into a pattern that carries no personal data.

    The customer id, e-mail addresses, quoted values and long tokens are replaced with
    placeholders and numbers with ``#`` (HTTP status codes are kept), so errors that differ
    only in such values group together.

    Args:
        text: The error text (e.g. ``Operation.last_error``).
        customer_id: The operation's customer id, masked wherever it appears.
    """
    result = text or ""
    if customer_id and len(customer_id) >= 2:
        result = result.replace(customer_id, "<customer>")
    result = _EMAIL.sub("<email>", result)
    result = _QUOTED.sub("…", result)
    result = _TOKEN.sub("<id>", result)
    result = _NUMBER.sub(lambda m: m.group("http") or "#", result)
    result = _SPACE.sub(" ", result).strip()
    if len(result) > ERROR_PATTERN_CHARS:
        result = result[: ERROR_PATTERN_CHARS - 1].rstrip() + "…"
    return result or "(no reason recorded)"


@dataclass(frozen=True)
class ErrorGroup:
    """Operations that failed for the same (normalized) reason.

    Attributes:
        pattern: The reason with personal data masked.
        count: How many operations.
        status_code: The most common HTTP status among them, if any.
    """

    pattern: str
    count: int
    status_code: int | None = None


def group_errors(
    rows: Iterable[tuple[str, str, int | None]], *, limit: int = 10
) -> list[ErrorGroup]:
    """Group ``(last_error, customer_id, status_code)`` rows by normalized reason.

    Returns:
        The ``limit`` largest groups, largest first (ties by pattern).
    """
    counts: Counter[str] = Counter()
    codes: dict[str, Counter[int]] = {}
    for text, customer_id, code in rows:
        if not text:
            continue
        pattern = normalize_error(text, customer_id)
        counts[pattern] += 1
        if code is not None:
            codes.setdefault(pattern, Counter())[code] += 1
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [
        ErrorGroup(
            pattern=pattern,
            count=count,
            status_code=codes[pattern].most_common(1)[0][0] if pattern in codes else None,
        )
        for pattern, count in ranked
    ]


def collect_top_errors(*, limit: int = 10) -> list[ErrorGroup]:
    """The most common reasons among the latest failed and dead operations (no personal data)."""
    rows = (
        Operation.objects.filter(status__in=[Operation.Status.FAILED, Operation.Status.DEAD])
        .exclude(last_error="")
        .order_by("-id")
        .annotate(reason=Substr("last_error", 1, ERROR_READ_CHARS))
        .values_list("reason", "customer_id", "last_status_code")[:ERROR_SAMPLE]
    )
    return group_errors(rows, limit=limit)


def human_duration(seconds: float | None) -> str:
    """``seconds`` as a short duration (``3d 4h``, ``2h 05m``, ``4m 02s``, ``42s``)."""
    return "—" if seconds is None else clock.human_duration(seconds)


def parse_hours(value: Any) -> int:
    """The chart window asked for in a query string, or :data:`DEFAULT_HOURS`."""
    try:
        hours = int(value)
    except (TypeError, ValueError):
        return DEFAULT_HOURS
    return hours if hours in WINDOW_HOURS else DEFAULT_HOURS
