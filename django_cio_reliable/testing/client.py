"""FakeCustomerIOClient: drive a FakeCustomerIO running in another process."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from typing import Any

from django_cio_reliable.testing.records import Receipt, ReceivedRequest


class FakeCustomerIOClient:
    """Script faults and read records of a FakeCustomerIO over its control endpoint.

    The methods mirror :class:`~django_cio_reliable.testing.FakeCustomerIO`'s; only
    :meth:`reject_batch_items` differs (indexes or customer ids, no predicate). Standard
    library only.

    Example::

        fake = FakeCustomerIOClient("http://127.0.0.1:8765")
        fake.outage(30, status=503, retry_after=10)
        ...
        assert fake.stats()["applied"] == 100

    Args:
        url: The fake server's base URL (what it printed on start).
        timeout: Seconds to wait for each control request.
    """

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"<FakeCustomerIOClient {self.url}>"

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        request = urllib.request.Request(  # noqa: S310 (a URL the caller chose)
            f"{self.url}/__fake__/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            with exc:
                detail = exc.read().decode("utf-8", "replace")
            raise ValueError(f"FakeCustomerIO control {path}: HTTP {exc.code} {detail}") from None

    def _fault(self, fault: str, **arguments: Any) -> None:
        self._call("POST", "faults", {"fault": fault, **arguments})

    # ------------------------------------------------------------------ records

    def stats(self) -> dict[str, Any]:
        """Counts: requests, receipts, applied, duplicates, held, by status/outcome/kind."""
        result: dict[str, Any] = self._call("GET", "stats")
        return result

    def receipts(self) -> list[Receipt]:
        """Every accepted operation since the last reset."""
        return [Receipt.from_dict(item) for item in self._call("GET", "receipts")["receipts"]]

    def applied(self) -> list[Receipt]:
        """The operations actually applied (duplicates of an event id left out)."""
        return [receipt for receipt in self.receipts() if receipt.applied]

    def requests(self) -> list[ReceivedRequest]:
        """Every API request since the last reset."""
        return [
            ReceivedRequest.from_dict(item) for item in self._call("GET", "requests")["requests"]
        ]

    def people(self) -> dict[str, dict[str, Any]]:
        """The people as Customer.io would hold them."""
        result: dict[str, dict[str, Any]] = self._call("GET", "people")["people"]
        return result

    def faults(self) -> dict[str, Any]:
        """The faults in force (:class:`FaultsSnapshot` as a dict)."""
        result: dict[str, Any] = self._call("GET", "faults")
        return result

    def wait_for_receipts(
        self, count: int, timeout: float = 10.0, interval: float = 0.05
    ) -> list[Receipt]:
        """Poll until at least ``count`` receipts exist; return them.

        Raises:
            TimeoutError: If they do not arrive within ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while self.stats()["receipts"] < count:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"FakeCustomerIO: timed out waiting for {count} receipts")
            time.sleep(interval)
        return self.receipts()

    # ------------------------------------------------------------------ faults

    def fail_next(
        self,
        n: int = 1,
        status: int = 503,
        retry_after: int | str | None = None,
        body: dict[str, Any] | str | None = None,
        *,
        apply: bool = False,
    ) -> None:
        """See :meth:`FakeCustomerIO.fail_next`."""
        self._fault(
            "fail_next", n=n, status=status, retry_after=retry_after, body=body, apply=apply
        )

    def outage_requests(
        self, n: int, status: int = 503, retry_after: int | str | None = None
    ) -> None:
        """See :meth:`FakeCustomerIO.outage_requests`."""
        self._fault("outage_requests", n=n, status=status, retry_after=retry_after)

    def hang_next(self, n: int = 1, seconds: float = 30.0, *, apply: bool = False) -> None:
        """See :meth:`FakeCustomerIO.hang_next`."""
        self._fault("hang_next", n=n, seconds=seconds, apply=apply)

    def reset_next(self, n: int = 1, *, apply: bool = False) -> None:
        """See :meth:`FakeCustomerIO.reset_next`."""
        self._fault("reset_next", n=n, apply=apply)

    def trickle_next(self, n: int = 1, interval: float = 0.5, *, headers: bool = True) -> None:
        """See :meth:`FakeCustomerIO.trickle_next`."""
        self._fault("trickle_next", n=n, interval=interval, headers=headers)

    def set_latency(self, seconds: float) -> None:
        """See :meth:`FakeCustomerIO.set_latency`."""
        self._fault("set_latency", seconds=seconds)

    def outage(
        self, seconds: float, status: int = 503, retry_after: int | str | None = None
    ) -> None:
        """See :meth:`FakeCustomerIO.outage`."""
        self._fault("outage", seconds=seconds, status=status, retry_after=retry_after)

    def random_faults(
        self,
        seed: int,
        error_rate: float = 0.0,
        rate_limit_rate: float = 0.0,
        hang_rate: float = 0.0,
        reset_rate: float = 0.0,
        hang_seconds: float = 5.0,
        retry_after: int | str | None = 1,
        error_status: int = 503,
    ) -> None:
        """See :meth:`FakeCustomerIO.random_faults`."""
        self._fault(
            "random_faults",
            seed=seed,
            error_rate=error_rate,
            rate_limit_rate=rate_limit_rate,
            hang_rate=hang_rate,
            reset_rate=reset_rate,
            hang_seconds=hang_seconds,
            retry_after=retry_after,
            error_status=error_status,
        )

    def reject_batch_items(
        self,
        indexes: list[int] | None = None,
        *,
        customer_ids: list[str] | None = None,
        reason: str = "invalid",
        field: str = "",
        message: str = "rejected by FakeCustomerIO",
        count: int | None = None,
    ) -> None:
        """Reject batch items by position or by person (exactly one of the two).

        See :meth:`FakeCustomerIO.reject_batch_items`.
        """
        selector: dict[str, Any] = (
            {"indexes": list(indexes)} if indexes is not None else {"customer_ids": customer_ids}
        )
        self._fault(
            "reject_batch_items",
            **selector,
            reason=reason,
            field=field,
            message=message,
            count=count,
        )

    def hold(self) -> None:
        """See :meth:`FakeCustomerIO.hold`."""
        self._call("POST", "hold")

    def release(self) -> None:
        """See :meth:`FakeCustomerIO.release`."""
        self._call("POST", "release")

    def clear_faults(self) -> None:
        """See :meth:`FakeCustomerIO.clear_faults`."""
        self._call("POST", "clear_faults")

    def reset(self) -> None:
        """See :meth:`FakeCustomerIO.reset`."""
        self._call("POST", "reset")
