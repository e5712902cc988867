"""Per-terminal sequence gaps: which seqs never arrived, which arrived late, which are lost.

The ingest transaction queues every newly stored sequenced record in ``arrivals``; one sweep at a
time (a transaction-scoped advisory lock: with several collectors, whichever takes it) consumes
that queue and keeps, per terminal, ``terminals.max_seq`` and the open ranges in ``seq_gaps``:
- a seq above ``max_seq + 1`` opens a gap for the seqs skipped (a terminal's first record opens
  ``[1, seq-1]``: an agent numbers from 1);
- a seq at or below ``max_seq`` is a late record (a backlog, another collector's batch): it
  shrinks or splits the open gap holding it, and closes a gap it empties;
- a gap still open ``gaps.lost_after_s`` after it opened is marked lost (``lost_at``) and
  logged as a loss; a record arriving even later still fills it;
- an ``outbox_corrupted`` / ``outbox_unavailable`` event is the first record of a new outbox
  file whose numbering continues above a floor (agent/outbox.py): the gap just below it holds
  numbers that were never issued or died with the quarantined file, so it is marked
  ``explained = 'outbox_quarantined'``, not left to look like a silent loss.
Because the queue is written in the same transaction as the records, a collector killed at any
moment leaves the gap state consistent with what is stored.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field

import psycopg

log = logging.getLogger(__name__)

SWEEP_LOCK = 0x636C6770
#: Arrivals consumed per transaction (a backlog is swept in several).
SWEEP_BATCH = 50_000
_LOG_LOSSES = 20


@dataclass
class Gap:
    id: int | None
    first: int
    last: int
    opened_first: int
    opened_last: int
    changed: bool = False
    closed: bool = False


@dataclass
class SweepResult:
    arrivals: int = 0
    opened: int = 0
    filled: int = 0  # seqs that arrived late into an open gap
    closed: int = 0
    lost: list[tuple[str, str, int, int]] = field(default_factory=list)
    explained: int = 0
    leader: bool = True


def sweep(conn: psycopg.Connection, lost_after_s: float) -> SweepResult:
    """One pass: consume queued arrivals, update gaps, mark the overdue ones lost."""
    res = SweepResult()
    with conn.transaction():
        got = conn.execute("SELECT pg_try_advisory_xact_lock(%s)", (SWEEP_LOCK,)).fetchone()
        if not got or not got[0]:
            res.leader = False
            return res
        conn.execute(_SWEPT)
        res.arrivals = max(conn.execute(_TAKE, (SWEEP_BATCH,)).rowcount, 0)
        if res.arrivals:
            _apply(conn, res)
        lost = conn.execute(
            """UPDATE seq_gaps SET lost_at = now()
               WHERE closed_at IS NULL AND lost_at IS NULL AND explained IS NULL
                 AND opened_at < now() - make_interval(secs => %s)
               RETURNING school, device, first_seq, last_seq""", (lost_after_s,)).fetchall()
        res.lost = [(r[0], r[1], int(r[2]), int(r[3])) for r in lost]
    for school, device, first, last in res.lost[:_LOG_LOSSES]:
        log.warning("gaps: %s/%s seq %d..%d (%d records) still missing after %.0f s: reported "
                    "as lost. Next step: check the terminal's outbox (classroom-agent status: "
                    "dropped) and the broker's max_queued_messages.", school, device, first,
                    last, last - first + 1, lost_after_s)
    if len(res.lost) > _LOG_LOSSES:
        log.warning("gaps: %d more gaps reported as lost", len(res.lost) - _LOG_LOSSES)
    return res


_SWEPT = """CREATE TEMPORARY TABLE IF NOT EXISTS swept (
                school text, device text, seq bigint, ts timestamptz, resets_seq boolean
            ) ON COMMIT DELETE ROWS"""
_TAKE = """WITH gone AS (
               DELETE FROM arrivals WHERE ctid = ANY(ARRAY(SELECT ctid FROM arrivals LIMIT %s))
               RETURNING school, device, seq, ts, resets_seq)
           INSERT INTO swept SELECT * FROM gone"""


def _apply(conn: psycopg.Connection, res: SweepResult) -> None:
    """The arrivals taken into ``swept``: per terminal first in SQL (lowest, highest, count);
    only a terminal whose new seqs are not one run right above its ``max_seq`` (a hole, a late
    record, an outbox reset) has its seqs read one by one."""
    summary = conn.execute(
        """SELECT school, device, min(seq), max(seq), count(DISTINCT seq), max(ts),
                  bool_or(resets_seq)
           FROM swept GROUP BY school, device ORDER BY school, device""").fetchall()
    keys = [(r[0], r[1]) for r in summary]
    schools, devices = [k[0] for k in keys], [k[1] for k in keys]
    conn.execute("""INSERT INTO terminals (school, device)
                    SELECT * FROM unnest(%s::text[], %s::text[]) ORDER BY 1, 2
                    ON CONFLICT DO NOTHING""", (schools, devices))
    top = {(r[0], r[1]): int(r[2]) for r in conn.execute(
        """SELECT t.school, t.device, t.max_seq FROM terminals t
           JOIN unnest(%s::text[], %s::text[]) AS k(school, device)
             ON t.school = k.school AND t.device = k.device
           ORDER BY t.school, t.device FOR UPDATE OF t""", (schools, devices))}
    high: dict[tuple[str, str], int] = {}
    detail: list[tuple[str, str]] = []
    for school, device, lo, hi, n, _newest, reset in summary:
        key = (school, device)
        if lo == top[key] + 1 and n == hi - lo + 1 and not reset:
            high[key] = int(hi)  # the common case: the next records, in one run
        else:
            detail.append(key)
    if detail:
        _apply_detail(conn, detail, top, high, res)
    conn.execute(
        """UPDATE terminals t SET max_seq = GREATEST(t.max_seq, u.high),
                  last_seen = GREATEST(t.last_seen, u.newest), last_received = now(),
                  records_total = t.records_total + u.n
           FROM unnest(%s::text[], %s::text[], %s::bigint[], %s::timestamptz[], %s::bigint[])
                AS u(school, device, high, newest, n)
           WHERE t.school = u.school AND t.device = u.device""",
        (schools, devices, [high[k] for k in keys], [r[5] for r in summary],
         [int(r[4]) for r in summary]))


def _apply_detail(conn: psycopg.Connection, keys: list[tuple[str, str]],
                  top: dict[tuple[str, str], int], high: dict[tuple[str, str], int],
                  res: SweepResult) -> None:
    schools, devices = [k[0] for k in keys], [k[1] for k in keys]
    per: dict[tuple[str, str], list[int]] = {}
    resets: dict[tuple[str, str], list[int]] = {}
    for r in conn.execute(
            """SELECT s.school, s.device, array_agg(DISTINCT s.seq ORDER BY s.seq),
                      array_remove(array_agg(DISTINCT CASE WHEN s.resets_seq THEN s.seq END),
                                   NULL)
               FROM swept s JOIN unnest(%s::text[], %s::text[]) AS k(school, device)
                 ON s.school = k.school AND s.device = k.device
               GROUP BY s.school, s.device""", (schools, devices)):
        per[(r[0], r[1])] = [int(x) for x in r[2]]
        resets[(r[0], r[1])] = [int(x) for x in r[3]]
    open_gaps: dict[tuple[str, str], list[Gap]] = defaultdict(list)
    for r in conn.execute(
            """SELECT g.school, g.device, g.id, g.first_seq, g.last_seq,
                      g.opened_first_seq, g.opened_last_seq
               FROM seq_gaps g JOIN unnest(%s::text[], %s::text[]) AS k(school, device)
                 ON g.school = k.school AND g.device = k.device
               WHERE g.closed_at IS NULL ORDER BY g.school, g.device, g.first_seq
               FOR UPDATE OF g""", (schools, devices)):
        open_gaps[(r[0], r[1])].append(Gap(r[2], int(r[3]), int(r[4]), int(r[5]), int(r[6])))
    for key in keys:
        gaps = open_gaps.get(key, [])
        mark = top[key]
        for seq in per[key]:
            if seq > mark:
                if seq > mark + 1:
                    gaps.append(Gap(None, mark + 1, seq - 1, mark + 1, seq - 1, changed=True))
                    res.opened += 1
                mark = seq
            else:
                res.filled += _fill(gaps, seq)
        high[key] = mark
        explained = [g for s in resets.get(key, []) for g in gaps
                     if not g.closed and g.first <= s - 1 <= g.last]
        res.closed += sum(1 for g in gaps if g.closed and g.changed)
        _write_gaps(conn, key, gaps, explained)
        res.explained += len(explained)


def _fill(gaps: list[Gap], seq: int) -> int:
    """Take ``seq`` out of the open gap holding it (shrink, split or close); 1 if it was in one."""
    for i, g in enumerate(gaps):
        if g.closed or not g.first <= seq <= g.last:
            continue
        g.changed = True
        if g.first == g.last:
            g.closed = True
        elif seq == g.first:
            g.first += 1
        elif seq == g.last:
            g.last -= 1
        else:
            gaps.insert(i + 1, Gap(None, seq + 1, g.last, g.opened_first, g.opened_last,
                                   changed=True))
            g.last = seq - 1
        return 1
    return 0


def _write_gaps(conn: psycopg.Connection, key: tuple[str, str], gaps: list[Gap],
                explained: list[Gap]) -> None:
    school, device = key
    with conn.cursor() as cur:
        for g in gaps:
            if not g.changed and g not in explained:
                continue
            why = "outbox_quarantined" if g in explained else None
            if g.id is None:
                if g.closed:
                    continue  # opened and filled within one sweep
                cur.execute(
                    """INSERT INTO seq_gaps (school, device, first_seq, last_seq,
                                             opened_first_seq, opened_last_seq, explained,
                                             opened_at)
                       VALUES (%s, %s, %s, %s, %s, %s, %s,
                               COALESCE((SELECT min(opened_at) FROM seq_gaps
                                         WHERE school = %s AND device = %s
                                           AND opened_first_seq = %s AND opened_last_seq = %s),
                                        now()))""",
                    (school, device, g.first, g.last, g.opened_first, g.opened_last, why,
                     school, device, g.opened_first, g.opened_last))
            elif g.closed:
                cur.execute("UPDATE seq_gaps SET closed_at = now() WHERE id = %s", (g.id,))
            else:
                cur.execute("""UPDATE seq_gaps SET first_seq = %s, last_seq = %s,
                                      explained = COALESCE(%s, explained) WHERE id = %s""",
                            (g.first, g.last, why, g.id))


def open_summary(conn: psycopg.Connection) -> tuple[int, int, int]:
    """(open gaps, seqs missing in them, of those gaps how many are reported lost)."""
    row = conn.execute("""SELECT count(*), COALESCE(sum(last_seq - first_seq + 1), 0),
                                 count(*) FILTER (WHERE lost_at IS NOT NULL)
                          FROM seq_gaps WHERE closed_at IS NULL""").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), int(row[2])
