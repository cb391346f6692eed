"""Fail loudly (never skip) when the PostgreSQL server for the test suite is unreachable."""

from __future__ import annotations

import os
import sys


def main() -> int:
    import psycopg

    host = os.environ.get("CIO_PG_HOST", "127.0.0.1")
    port = os.environ.get("CIO_PG_PORT", "5432")
    user = os.environ.get("CIO_PG_USER", "postgres")
    try:
        with psycopg.connect(
            host=host, port=port, user=user, dbname="postgres", connect_timeout=5
        ) as conn:
            version = conn.execute("select version()").fetchone()
    except psycopg.Error as exc:
        print(f"PostgreSQL at {host}:{port} is not reachable: {exc}", file=sys.stderr)
        return 1
    print(f"PostgreSQL reachable: {version[0] if version else '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
