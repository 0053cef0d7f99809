"""The registry's audit log: every promotion, refusal, approval and rollback, never overwritten.

Each event is one tag on the registered model, ``audit.NNNNNN`` (a zero-padded sequence
number) holding a JSON record: when, what happened, to which version, who decided, why.
A new event always takes the next free number, so earlier events are never rewritten;
they sit where a registry user looks (the MLflow UI and REST API show model tags) and
``charloop audit MODEL`` prints them in order.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

PREFIX = "audit."
EVENTS = ("promoted", "promotion-refused", "approved", "approval-declined", "rolled-back",
          "rollback-refused")  # fmt: skip
_MAX_DETAIL = 2000  # MLflow tag values are bounded (5000 characters on sqlite)


@dataclass(frozen=True)
class AuditEvent:
    """One decision about a registered model."""

    seq: int
    at: str
    event: str
    version: str
    by: str
    reason: str = ""
    detail: str = ""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def events(client: Any, name: str) -> list[AuditEvent]:
    """The model's audit events, oldest first."""
    tags = dict(client.get_registered_model(name).tags)
    found = []
    for key, value in tags.items():
        number = key[len(PREFIX) :]
        if not key.startswith(PREFIX) or not number.isdigit():
            continue
        try:
            found.append(AuditEvent(**{**json.loads(value), "seq": int(number)}))
        except (ValueError, TypeError):
            logger.warning("audit tag %s of %s is not an audit record; shown raw", key, name)
            found.append(AuditEvent(int(number), "?", "unreadable", "", "", detail=value))
    return sorted(found, key=lambda e: e.seq)


def record(
    client: Any, name: str, event: str, version: str, by: str, reason: str = "", detail: str = ""
) -> AuditEvent:
    """Append one event to the model's audit log (never overwriting an earlier one).

    Raises:
        ValueError: ``event`` is not one of :data:`EVENTS`.
    """
    if event not in EVENTS:
        raise ValueError(f"unknown audit event {event!r}; one of {EVENTS}")
    taken = {e.seq for e in events(client, name)}
    seq = max(taken, default=0) + 1
    entry = AuditEvent(seq, _now(), event, str(version), by, reason, detail[:_MAX_DETAIL])
    key = f"{PREFIX}{seq:06d}"
    if key in dict(client.get_registered_model(name).tags):  # a concurrent writer took it
        return record(client, name, event, version, by, reason, detail)
    client.set_registered_model_tag(name, key, json.dumps(asdict(entry), sort_keys=True))
    logger.info("audit: %s %s v%s by %s", name, event, version, by)
    return entry
