"""The dashboard's data shaping and SVG chart (pure functions), and its database readers."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Any

import pytest
from django.utils import timezone

from django_cio_reliable import dashboard, metrics
from django_cio_reliable.dashboard import (
    Bucket,
    ErrorGroup,
    bucket_minutes_for,
    build_buckets,
    chart_geometry,
    group_errors,
    nice_ceiling,
    normalize_error,
    render_chart_svg,
    window_start,
)
from django_cio_reliable.models import DeliveryMinute, Operation

UTC = dt_timezone.utc
NOW = datetime(2024, 5, 1, 12, 30, 20, tzinfo=UTC)


def at(hour: int, minute: int, second: int = 0) -> datetime:
    return datetime(2024, 5, 1, hour, minute, second, tzinfo=UTC)


# --------------------------------------------------------------------------- buckets


def test_window_start_aligns_buckets_and_keeps_now_in_the_last_one() -> None:
    assert window_start(NOW, hours=1, bucket_minutes=1) == at(11, 31)
    assert window_start(NOW, hours=3, bucket_minutes=1) == at(9, 31)
    assert window_start(NOW, hours=12, bucket_minutes=5) == at(0, 35)


@pytest.mark.parametrize(
    ("hours", "minutes"), [(1, 1), (3, 1), (6, 2), (12, 5), (24, 10), (48, 30), (500, 60)]
)
def test_bucket_width_keeps_the_chart_under_the_bucket_cap(hours: int, minutes: int) -> None:
    assert bucket_minutes_for(hours) == minutes
    assert hours * 60 / minutes <= dashboard.MAX_BUCKETS or minutes == 60


def test_build_buckets_counts_a_known_data_set() -> None:
    delivered = [
        (at(12, 30), 4),  # the current minute (the last bucket)
        (at(12, 29), 2),
        (at(12, 29, 59), 1),  # same minute, second row
        (at(11, 31), 7),  # the first bucket
        (at(11, 30, 59), 100),  # just before the window: ignored
        (at(12, 31), 100),  # in the future: ignored
    ]
    failed = [(at(12, 29), 3), (at(12, 0), 5)]
    buckets = build_buckets(delivered, failed, now=NOW, hours=1, bucket_minutes=1)
    assert len(buckets) == 60
    assert buckets[0] == Bucket(at(11, 31), delivered=7, failed=0)
    assert buckets[-1] == Bucket(at(12, 30), delivered=4, failed=0)
    assert buckets[-2] == Bucket(at(12, 29), delivered=3, failed=3)
    assert buckets[29] == Bucket(at(12, 0), delivered=0, failed=5)
    assert sum(b.delivered for b in buckets) == 14
    assert sum(b.failed for b in buckets) == 8
    assert [b.start for b in buckets] == [at(11, 31) + timedelta(minutes=i) for i in range(60)]


def test_build_buckets_with_wide_buckets() -> None:
    delivered = [(at(12, 26), 1), (at(12, 29), 2), (at(12, 24, 59), 5)]
    buckets = build_buckets(delivered, [], now=NOW, hours=1, bucket_minutes=5)
    assert len(buckets) == 12
    # The last bucket is the one holding ``now`` (12:30:20).
    assert buckets[-1] == Bucket(at(12, 30), delivered=0, failed=0)
    assert buckets[-2] == Bucket(at(12, 25), delivered=3, failed=0)
    assert buckets[-3] == Bucket(at(12, 20), delivered=5, failed=0)


def test_build_buckets_refuses_a_zero_width() -> None:
    with pytest.raises(ValueError, match="bucket_minutes"):
        build_buckets([], [], now=NOW, hours=1, bucket_minutes=0)


# --------------------------------------------------------------------------- chart


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 1),
        (-3, 1),
        (0.3, 0.5),
        (1, 1),
        (1.2, 2),
        (2.1, 2.5),
        (3, 5),
        (7, 10),
        (42, 50),
        (99, 100),
    ],
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == pytest.approx(expected)


def test_chart_geometry_places_each_bucket() -> None:
    buckets = [
        Bucket(at(12, 0), delivered=0, failed=0),
        Bucket(at(12, 1), delivered=10, failed=5),
        Bucket(at(12, 2), delivered=20, failed=0),
        Bucket(at(12, 3), delivered=4, failed=2),
    ]
    geo = chart_geometry(buckets, bucket_minutes=1, width=456, height=256)
    # Plot area: 456 - 56 - 16 = 384 wide, 256 - 16 - 40 = 200 high; four 96-px slots.
    assert (geo.plot_width, geo.plot_height) == (384, 200)
    assert geo.y_max == 20
    assert geo.y_ticks == [0, 5, 10, 15, 20]
    assert geo.delivered_points == [(104, 216), (200, 116), (296, 16), (392, 176)]
    assert geo.failed_points == [(104, 216), (200, 166), (296, 216), (392, 196)]


def test_chart_geometry_draws_rates_per_minute() -> None:
    buckets = [Bucket(at(12, 0), delivered=10, failed=0), Bucket(at(12, 5), delivered=5)]
    geo = chart_geometry(buckets, bucket_minutes=5, width=456, height=256)
    # 10 in 5 minutes is 2 a minute.
    assert geo.y_max == 2
    assert geo.delivered_points[0][1] == 16
    assert geo.delivered_points[1][1] == 116


def polyline(svg: str, series: str) -> list[tuple[float, float]]:
    match = re.search(rf'data-series="{series}" points="([^"]*)"', svg)
    assert match, f"no {series} polyline"
    pairs = [p.split(",") for p in match.group(1).split()]
    return [(float(x), float(y)) for x, y in pairs]


def test_svg_carries_the_data(settings: Any) -> None:
    settings.TIME_ZONE = "UTC"
    buckets = [
        Bucket(at(12, 0), delivered=0, failed=0),
        Bucket(at(12, 1), delivered=10, failed=5),
        Bucket(at(12, 2), delivered=20, failed=0),
        Bucket(at(12, 3), delivered=4, failed=2),
    ]
    svg = str(render_chart_svg(buckets, width=456, height=256))
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert 'data-buckets="4"' in svg and 'data-y-max="20"' in svg
    assert polyline(svg, "delivered") == [(104, 216), (200, 116), (296, 16), (392, 176)]
    assert polyline(svg, "failed") == [(104, 216), (200, 166), (296, 216), (392, 196)]
    # Hover titles give each bucket's time and counts.
    assert "<title>12:01 — delivered 10, failed 5</title>" in svg
    assert svg.count('class="hover"') == 4
    # Y labels at the ticks, x labels on bucket starts.
    for tick in ("0", "5", "10", "15", "20"):
        assert f'dominant-baseline="middle">{tick}</text>' in svg
    assert ">12:00</text>" in svg
    assert "No deliveries" not in svg
    assert "<script" not in svg and "http://www.w3.org/2000/svg" in svg


def test_svg_for_an_empty_window_says_so() -> None:
    buckets = build_buckets([], [], now=NOW, hours=1)
    svg = str(render_chart_svg(buckets))
    assert "No deliveries or failures in this window" in svg
    assert 'data-y-max="1"' in svg
    assert len(polyline(svg, "delivered")) == 60


def test_svg_escapes_its_title() -> None:
    svg = str(render_chart_svg([Bucket(at(12, 0), 1, 0)], title='<script>alert("x")</script>'))
    assert "<script>" not in svg
    assert "&lt;script&gt;" in svg


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("text", "customer", "expected"),
    [
        (
            "permanent (HTTP 400): attribute email invalid for jane@example.com",
            "",
            "permanent (HTTP 400): attribute email invalid for <email>",
        ),
        (
            "permanent (HTTP 400): customer cust-4711 not found",
            "cust-4711",
            "permanent (HTTP 400): customer <customer> not found",
        ),
        (
            "gave up after 25 attempts over 259200s: transient (HTTP 503): down",
            "",
            "gave up after # attempts over #s: transient (HTTP 503): down",
        ),
        (
            "permanent (HTTP 422): value 'Jane Doe' too long",
            "",
            "permanent (HTTP 422): value … too long",
        ),
        ("event 01HXYZ8Q2M3N4P5R6S7T8V9W0X rejected", "", "event <id> rejected"),
        ("", "", "(no reason recorded)"),
    ],
)
def test_normalize_error_masks_personal_data(text: str, customer: str, expected: str) -> None:
    assert normalize_error(text, customer) == expected


def test_normalize_error_truncates() -> None:
    assert len(normalize_error("x" * 1000)) == dashboard.ERROR_PATTERN_CHARS


def test_group_errors_groups_and_ranks() -> None:
    rows = [
        ("permanent (HTTP 400): customer 1001 is invalid", "1001", 400),
        ("permanent (HTTP 400): customer 1002 is invalid", "1002", 400),
        ("permanent (HTTP 400): customer 1003 is invalid", "1003", 400),
        ("transient (HTTP 503): upstream down", "7", 503),
        ("transient (HTTP 503): upstream down", "8", 503),
        ("network (no response): connection reset", "9", None),
        ("", "10", None),
    ]
    assert group_errors(rows, limit=2) == [
        ErrorGroup("permanent (HTTP 400): customer <customer> is invalid", 3, 400),
        ErrorGroup("transient (HTTP 503): upstream down", 2, 503),
    ]
    assert group_errors(rows)[-1] == ErrorGroup("network (no response): connection reset", 1, None)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "—"),
        (0, "0s"),
        (42, "42s"),
        (242, "4m 02s"),
        (7500, "2h 05m"),
        (3 * 86400 + 4 * 3600, "3d 4h"),
    ],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert dashboard.human_duration(seconds) == text


@pytest.mark.parametrize(("value", "hours"), [("6", 6), ("24", 24), ("5", 3), ("x", 3), (None, 3)])
def test_parse_hours(value: Any, hours: int) -> None:
    assert dashboard.parse_hours(value) == hours


# --------------------------------------------------------------------------- database


def store(status: str, **fields: Any) -> Operation:
    now = timezone.now()
    values: dict[str, Any] = {
        "kind": "track",
        "customer_id": "c-1",
        "person_key": "c:c-1",
        "name": "order_placed",
        "payload": {"name": "order_placed"},
        "status": status,
        "next_attempt_at": now,
        "created_at": now,
    }
    values.update(fields)
    op: Operation = Operation.objects.create(**values)
    return op


@pytest.mark.django_db
def test_collect_throughput_reads_the_per_minute_counts() -> None:
    now = datetime(2024, 5, 1, 12, 30, 20, tzinfo=UTC)
    metrics.record(delivered=1, at=at(12, 29, 5))
    metrics.record(delivered=1, failed=2, at=at(12, 29, 50))
    metrics.record(dead=1, at=at(12, 29, 30))
    metrics.record(delivered=1, failed=1, at=at(12, 10))
    metrics.record(delivered=9, failed=9, at=at(9, 0))  # outside a one-hour window
    buckets, minutes = dashboard.collect_throughput(hours=1, now=now)
    assert minutes == 1
    by_start = {b.start: b for b in buckets}
    assert by_start[at(12, 29)] == Bucket(at(12, 29), delivered=2, failed=3)
    assert by_start[at(12, 10)] == Bucket(at(12, 10), delivered=1, failed=1)
    assert sum(b.delivered for b in buckets) == 3
    assert sum(b.failed for b in buckets) == 4
    assert DeliveryMinute.objects.count() == 3  # one row per minute
    assert metrics.prune(now=now + timedelta(days=2, hours=-2)) == 1  # the 09:00 row


@pytest.mark.django_db
def test_collect_top_errors_masks_customers() -> None:
    for customer in ("alice@example.com", "bob@example.com"):
        store(
            "dead",
            customer_id=customer,
            last_status_code=400,
            last_error=f"permanent (HTTP 400): no such customer {customer}",
        )
    store("failed", last_status_code=503, last_error="transient (HTTP 503): down")
    store("delivered", last_error="")
    groups = dashboard.collect_top_errors()
    assert groups == [
        ErrorGroup("permanent (HTTP 400): no such customer <customer>", 2, 400),
        ErrorGroup("transient (HTTP 503): down", 1, 503),
    ]
