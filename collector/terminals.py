"""The terminals table: each terminal's latest retained ``state`` and ``inventory``.

State carries no seq (the last will cannot have one), so its order comes from the contract's
session counter: a message applies when its connection is newer (higher ``session``), or it is
the same connection going offline. A late will of an old connection (lower session) is ignored,
except that an ``online`` with a lower session but a later ``started_at`` is a terminal whose
state directory was reset (reinstall) and wins. Every state message is also kept once in
``terminal_states`` for the online history.

Inventory is ordered by seq: an older inventory (a backlog) never overwrites a newer one. An
empty retained inventory means "no inventory" (the class is turned off): the row's inventory
becomes NULL and no older record can bring it back.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

import psycopg
from psycopg.types.json import Jsonb

from collector.validation import Accepted, Cleared


def lock(conn: psycopg.Connection, keys: Iterable[tuple[str, str]]) -> None:
    """Create missing terminal rows and lock the given ones, always in (school, device) order,
    so that concurrent batches and the gap tracker never deadlock on them."""
    ordered = sorted(set(keys))
    if not ordered:
        return
    schools = [k[0] for k in ordered]
    devices = [k[1] for k in ordered]
    conn.execute("""INSERT INTO terminals (school, device)
                    SELECT * FROM unnest(%s::text[], %s::text[]) ORDER BY 1, 2
                    ON CONFLICT DO NOTHING""", (schools, devices))
    conn.execute("""SELECT 1 FROM terminals t
                    JOIN unnest(%s::text[], %s::text[]) AS k(school, device)
                      ON t.school = k.school AND t.device = k.device
                    ORDER BY t.school, t.device FOR UPDATE OF t""", (schools, devices))


_STATE_HISTORY = """
INSERT INTO terminal_states (school, device, session, status, reason, ts, started_at,
                             agent_version, received_at)
VALUES (%(school)s, %(device)s, %(session)s, %(status)s, %(reason)s, %(ts)s, %(started_at)s,
        %(agent_version)s, %(received_at)s)
ON CONFLICT DO NOTHING"""

_STATE_APPLY = """
UPDATE terminals SET
    status = %(status)s,
    status_reason = %(reason)s,
    status_since = CASE WHEN %(reason)s = 'connection_lost'
                        THEN GREATEST(%(ts)s, last_seen) ELSE %(ts)s END,
    state_session = %(session)s,
    state_started_at = %(started_at)s,
    agent_version = %(agent_version)s
WHERE school = %(school)s AND device = %(device)s AND (
    state_session IS NULL
    OR %(session)s > state_session
    OR (%(session)s = state_session AND status = 'online' AND %(status)s = 'offline')
    OR (%(session)s < state_session AND %(status)s = 'online'
        AND %(started_at)s > state_started_at))"""


def apply_states(conn: psycopg.Connection, states: Sequence[Accepted]) -> None:
    rows = []
    for rec in states:
        d = rec.data
        rows.append({
            "school": rec.school, "device": rec.device, "session": d["session"],
            "status": d["status"], "reason": d["reason"], "ts": rec.ts,
            "started_at": _time(d.get("started_at")), "agent_version": d.get("agent_version"),
            "received_at": datetime.fromtimestamp(rec.received_at, UTC),
        })
    with conn.cursor() as cur:
        cur.executemany(_STATE_HISTORY, rows)
        cur.executemany(_STATE_APPLY, rows)


_INVENTORY_APPLY = """
UPDATE terminals SET inventory = %(data)s, inventory_seq = %(seq)s,
                     inventory_ts = %(ts)s
WHERE school = %(school)s AND device = %(device)s
  AND (inventory_seq IS NULL OR inventory_seq < %(seq)s)"""

_INVENTORY_CLEAR = """
UPDATE terminals SET inventory = NULL, inventory_cleared_at = %(received_at)s
WHERE school = %(school)s AND device = %(device)s"""


def apply_inventories(conn: psycopg.Connection, items: Sequence[Accepted | Cleared]) -> None:
    """In arrival order per terminal: a clear after an inventory wins, a newer one after a
    clear brings it back."""
    with conn.cursor() as cur:
        for item in items:
            if isinstance(item, Cleared):
                cur.execute(_INVENTORY_CLEAR, {
                    "school": item.school, "device": item.device,
                    "received_at": datetime.fromtimestamp(item.received_at, UTC)})
            else:
                cur.execute(_INVENTORY_APPLY, {"school": item.school, "device": item.device,
                                               "seq": item.seq, "ts": item.ts,
                                               "data": Jsonb(item.data)})


def _time(value: object) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None
