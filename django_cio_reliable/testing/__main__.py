"""Run FakeCustomerIO from the command line.

    python -m django_cio_reliable.testing --port 8765 --site-id S --api-key K [--latency 0.03]

The first line on stdout is the base URL (``http://127.0.0.1:8765``), so scripts can read it;
the server runs until SIGINT or SIGTERM. ``--port 0`` picks a free port.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from django_cio_reliable.testing.server import FakeCustomerIO


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        prog="python -m django_cio_reliable.testing",
        description="Run a fake Customer.io Track API server (see docs/testing.md).",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 picks a free one)")
    parser.add_argument(
        "--site-id",
        default=os.environ.get("FAKE_CIO_SITE_ID", "site"),
        help="Basic auth site id accepted (default $FAKE_CIO_SITE_ID or 'site')",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("FAKE_CIO_API_KEY", "key"),
        help="Basic auth API key accepted (default $FAKE_CIO_API_KEY or 'key')",
    )
    parser.add_argument(
        "--latency", type=float, default=0.0, help="seconds added to every API request"
    )
    parser.add_argument(
        "--region", choices=("us", "eu"), default="us", help="region reported (default us)"
    )
    parser.add_argument(
        "--allow-any-event-id",
        action="store_true",
        help="accept event ids that are not ULIDs",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every request")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Start the server, print its URL, serve until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG, format="%(asctime)s %(message)s")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    fake = FakeCustomerIO(
        site_id=args.site_id,
        api_key=args.api_key,
        host=args.host,
        port=args.port,
        region=args.region,
        require_ulid_event_ids=not args.allow_any_event_id,
    )
    try:
        fake.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    if args.latency:
        fake.set_latency(args.latency)
    print(fake.url, flush=True)
    print(
        f"FakeCustomerIO: site id {args.site_id!r}; control endpoint {fake.url}/__fake__/stats; "
        "stop with Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.5):
        pass
    fake.stop()
    stats = fake.stats()
    print(
        f"FakeCustomerIO stopped: {stats['requests']} requests, {stats['applied']} applied, "
        f"{stats['duplicates']} duplicates",
        file=sys.stderr,
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
