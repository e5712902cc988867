"""What a monthly report costs as the region grows: ``classroom-collector report`` over a month
of ``--terminals`` terminals in a PostgreSQL this bench starts.

The month (September 2026, 22 school days) is written by PostgreSQL itself (generate_series),
shaped as the agents send it: per terminal and school day a connect and a clean stop, a metrics
record a minute from 07:50 to 17:30 (the agents' default interval) with ``agent.mqtt.connected``,
a usage record every 15 minutes with its power-on interval and two applications, and two
lessons (started and ended). Then the report is built as the CLI builds it (one snapshot), and
the time of each phase and the rows read are printed, with the machine's load.

    python bench/report_scale.py [--terminals 100 400] [--per-school 4]
"""

from __future__ import annotations

import argparse
import os
import time

from _benchlib import log, sigterm_as_interrupt

from tests.platform_support import PostgresServer

MONTH_DAYS = ("SELECT d::date FROM generate_series('2026-09-01'::date, '2026-09-30', '1 day') d"
              " WHERE extract(isodow FROM d) < 6 AND d <> '2026-09-25' OR d = '2026-09-26'")

FILL = f"""
CREATE TEMP TABLE t AS SELECT 'school-' || (i / %(per)s) AS school,
    'room-' || (101 + i %% %(per)s) AS device FROM generate_series(0, %(n)s - 1) i;
CREATE TEMP TABLE days AS SELECT d AS day,
    (d + time '07:50') AT TIME ZONE 'Asia/Shanghai' AS boot FROM ({MONTH_DAYS}) x(d);
INSERT INTO terminal_states (school, device, session, status, reason, ts, started_at,
                             agent_version, received_at)
SELECT school, device, row_number() OVER (PARTITION BY school, device ORDER BY day), s.status,
       s.reason, CASE WHEN s.status = 'online' THEN boot + interval '30 s'
                      ELSE boot + interval '9 h 40 min' END, boot, '0.1.0', now()
FROM t, days, (VALUES ('online', 'connected'), ('offline', 'shutdown')) s(status, reason);
INSERT INTO metrics (school, device, seq, ts, received_at, historical, connected, data)
SELECT school, device, row_number() OVER (PARTITION BY school, device ORDER BY ts), ts, now(),
       false, true, json_build_object('agent', json_build_object('mqtt', json_build_object(
           'connected', true, 'session', 1)), 'cpu', json_build_object('percent', 12.5))
FROM t, days, generate_series(boot + interval '1 min', boot + interval '9 h 39 min',
                              interval '1 min') ts;
INSERT INTO usage (school, device, seq, ts, received_at, historical, period_start, period_end,
                   data)
SELECT school, device, 10000000 + row_number() OVER (PARTITION BY school, device ORDER BY ts), ts,
       now(), false, ts - interval '15 min', ts, jsonb_build_object(
         'period', jsonb_build_object('start', ts - interval '15 min', 'end', ts),
         'power_on', jsonb_build_array(jsonb_build_object('start', boot, 'end', ts,
                                                          'ongoing', true)),
         'sessions', jsonb_build_object('count', 1, 'local', 1, 'remote', 0),
         'apps', jsonb_build_object('whiteboard', jsonb_build_object('running_s', 900,
                                                                     'active_s', 400),
                                    'browser', jsonb_build_object('running_s', 300,
                                                                  'active_s', 60)))
FROM t, days, generate_series(boot + interval '15 min', boot + interval '9 h 40 min',
                              interval '15 min') ts;
INSERT INTO lessons (school, device, lesson_id, course, teacher, role, trigger, scheduled_start,
                     scheduled_end, planned, actual_start, actual_end, duration_s, ended_by,
                     live_seconds, recorded_s, interruption_count, root_lesson_id, started_seq,
                     ended_seq)
SELECT school, device, day || '-' || p, '数学', 'teacher-' || school || '-' || p, 'lecturing',
       'timetable', boot + o, boot + o + interval '40 min', true, boot + o,
       boot + o + interval '40 min', 2400, 'schedule', 2390, 2400, 0, day || '-' || p, 1, 2
FROM t, days, (VALUES ('p1', interval '10 min'), ('p3', interval '2 h 10 min')) l(p, o);
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--terminals", type=int, nargs="+", default=[100, 400])
    ap.add_argument("--per-school", type=int, default=4)
    args = ap.parse_args()
    sigterm_as_interrupt()
    import psycopg

    from collector import config, migrate, partitions
    from collector.reports import build

    server = PostgresServer({"fsync": "off", "shared_buffers": "256MB"}).start()
    try:
        for n in args.terminals:
            url = server.create_database(f"report{n}")
            with psycopg.connect(url, autocommit=True) as conn:
                migrate.migrate(conn)
                partitions.ensure(conn, partitions.month_index(partitions.month_start(2026, 8)),
                                  partitions.month_index(partitions.month_start(2026, 10)))
                t0 = time.monotonic()
                for statement in filter(str.strip, FILL.split(";")):
                    conn.execute(statement, {"n": n, "per": args.per_school})
                conn.execute("ANALYZE")
                rows = conn.execute("SELECT (SELECT count(*) FROM metrics), "
                                    "(SELECT count(*) FROM usage)").fetchone()
                log(f"{n} terminals: {rows[0]:,} metrics and {rows[1]:,} usage rows written "
                    f"in {time.monotonic() - t0:.1f} s")
                cfg = config.loads(f"database: {{url: '{url}'}}\nreports: {{calendar: "
                                   "{holidays: [2026-09-25], make_up_days: [2026-09-26]}}\n")
                marks: list[tuple[str, float]] = [("start", time.monotonic())]
                report = build.build(conn, cfg.reports, "2026-09",
                                     progress=lambda m, marks=marks: marks.append(
                                         (m, time.monotonic())))
                marks.append(("done", time.monotonic()))
                phases = ", ".join(
                    f"{marks[i][0].split(':')[0]} {marks[i + 1][1] - marks[i][1]:.2f} s"
                    for i in range(len(marks) - 1))
                total = marks[-1][1] - marks[0][1]
                t = report["terminals"][0]
                assert t["online_share"] == 1.0, t  # every school hour online, by construction
                load = os.getloadavg()
                procs = len([p for p in os.listdir("/proc") if p.isdigit()])
                log(f"{n} terminals: report in {total:.2f} s ({total / n * 1000:.1f} ms per "
                    f"terminal-month; {phases}); load {load[0]:.1f} {load[1]:.1f}, {procs} "
                    "processes")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
