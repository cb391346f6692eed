"""Signals sent by django-cio-reliable, always after the state change is committed.

Every signal is sent with ``sender=Operation`` (or ``BreakerState`` for breaker signals).

- ``operation_enqueued(operation)``: an operation was stored and its transaction committed.
- ``operation_delivered(operation)``: Customer.io accepted it.
- ``operation_failed(operation, error, next_attempt_at)``: a transient failure; it will be
  tried again at ``next_attempt_at``.
- ``operation_dead(operation, reason)``: it will not be tried again (a permanent error, or
  attempts/age exhausted); replay it with ``manage.py cio_replay``.
"""

from __future__ import annotations

from django.dispatch import Signal

operation_enqueued = Signal()
operation_delivered = Signal()
operation_failed = Signal()
operation_dead = Signal()
breaker_state_changed = Signal()
