-- classroom-collector storage, version 1. docs/collector.md describes every table.
-- Every sequenced record is unique on (school, device, seq): QoS 1 duplicates and replays are
-- harmless. Times are timestamptz (UTC in, UTC out); `ts` is when the terminal observed the
-- thing, `received_at` when the collector stored it, `historical` that it came from a backlog.

-- One row per terminal: its latest retained state and inventory, and the sequence high-water
-- mark the gap tracker works from.
CREATE TABLE terminals (
    school              text        NOT NULL,
    device              text        NOT NULL,
    first_seen          timestamptz NOT NULL DEFAULT now(),
    last_seen           timestamptz,            -- newest observation time of a sequenced record
    last_received       timestamptz,            -- when the collector last stored one
    max_seq             bigint      NOT NULL DEFAULT 0,   -- highest seq stored
    records_total       bigint      NOT NULL DEFAULT 0,   -- distinct sequenced records stored
    status              text CHECK (status IN ('online', 'offline')),
    status_reason       text,                   -- connected, shutdown, connection_lost
    status_since        timestamptz,
    state_session       bigint,
    state_started_at    timestamptz,
    agent_version       text,
    inventory           jsonb,                  -- NULL: none, or cleared (empty retained message)
    inventory_seq       bigint,
    inventory_ts        timestamptz,
    inventory_cleared_at timestamptz,
    PRIMARY KEY (school, device)
);

-- Every state message (retained birth, graceful offline, last will), once per
-- (session, status, reason): the history behind "share of school hours online".
CREATE TABLE terminal_states (
    school          text        NOT NULL,
    device          text        NOT NULL,
    session         bigint      NOT NULL,
    status          text        NOT NULL,
    reason          text        NOT NULL,
    ts              timestamptz NOT NULL,   -- for a will: when that connection was made
    started_at      timestamptz,
    agent_version   text,
    received_at     timestamptz NOT NULL,
    PRIMARY KEY (school, device, session, status, reason)
);

-- Periodic metrics, partitioned by month of `ts` (collector/partitions.py creates them ahead
-- and drops them after metrics.retention_months). The unique key must hold the partition key;
-- a record's ts never changes, so (school, device, seq, ts) is unique on (school, device, seq).
CREATE TABLE metrics (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    data            jsonb       NOT NULL,
    UNIQUE (school, device, seq, ts)
) PARTITION BY RANGE (ts);

CREATE TABLE usage (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    period_start    timestamptz,
    period_end      timestamptz,
    data            jsonb       NOT NULL,
    PRIMARY KEY (school, device, seq)
);
CREATE INDEX usage_ts ON usage (ts);

CREATE TABLE events (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    type            text        NOT NULL,
    severity        text        NOT NULL,
    message         text        NOT NULL,
    details         jsonb,
    PRIMARY KEY (school, device, seq)
);
CREATE INDEX events_type_ts ON events (type, ts);

CREATE TABLE inventories (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    data            jsonb       NOT NULL,
    PRIMARY KEY (school, device, seq)
);

-- Any sequenced kind this version has no table of its own for (a kind added to the contract
-- later): kept whole, so that nothing valid is dropped and its seq still counts.
CREATE TABLE other_records (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    kind            text        NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    data            jsonb       NOT NULL,
    PRIMARY KEY (school, device, seq)
);

-- One row per lesson and terminal, built idempotently from lesson_started / lesson_ended
-- (agent/schemas/lesson-evidence.json), the terminal's published schedule (planned) and
-- lesson_missed events. Planned, delivered and missed are columns, not separate tables:
--   planned    = planned (listed by the newest schedule covering its start)
--   delivered  = started_seq IS NOT NULL OR ended_seq IS NOT NULL
--   missed     = missed_seq IS NOT NULL (the agent said so), or planned and not delivered
--                once scheduled_end has passed (the terminal never came back to say so)
CREATE TABLE lessons (
    school              text        NOT NULL,
    device              text        NOT NULL,
    lesson_id           text        NOT NULL,
    course              text,
    teacher             text,
    role                text,       -- lecturing, receiving
    trigger             text,       -- timetable, manual, command
    scheduled_start     timestamptz,
    scheduled_end       timestamptz,
    planned             boolean     NOT NULL DEFAULT false,
    planned_seq         bigint,     -- the schedule record that last decided `planned`
    actual_start        timestamptz,
    actual_end          timestamptz,
    duration_s          double precision,
    ended_by            text,
    late_s              double precision,
    live_sinks          jsonb,      -- names of the live sinks at the start
    media_error         text,
    live_s              jsonb,      -- seconds live per sink
    live_seconds        double precision,   -- the longest of live_s
    recorded_s          double precision,
    interruptions       jsonb,
    interruption_count  integer,
    segments            integer,
    segment_bytes       bigint,
    continues           text,       -- the lesson this one continues after an interruption
    root_lesson_id      text,       -- the first lesson of such a chain (itself if none)
    started_seq         bigint,
    ended_seq           bigint,
    missed_seq          bigint,
    missed_reason       text,
    historical          boolean     NOT NULL DEFAULT false,
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (school, device, lesson_id)
);
CREATE INDEX lessons_scheduled ON lessons (scheduled_start);
CREATE INDEX lessons_actual ON lessons (actual_start);
CREATE INDEX lessons_teacher ON lessons (teacher, actual_start);

-- The terminal's published timetable for the coming days (retained `schedule` kind): the
-- newest record (highest seq) covering a moment decides what was planned then.
CREATE TABLE schedules (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    received_at     timestamptz NOT NULL,
    historical      boolean     NOT NULL,
    window_start    timestamptz,
    window_end      timestamptz,
    data            jsonb       NOT NULL,
    PRIMARY KEY (school, device, seq)
);

-- Sequence numbers not (yet) received. A row is one missing range [first_seq, last_seq]; late
-- records shrink or split it (a split keeps opened_* and opened_at); closed_at is set when it is
-- filled. lost_at: still open gaps.lost_after_s after it opened (reported as a loss); explained:
-- the terminal said why (outbox_quarantined).
CREATE TABLE seq_gaps (
    id                  bigserial   PRIMARY KEY,
    school              text        NOT NULL,
    device              text        NOT NULL,
    first_seq           bigint      NOT NULL,
    last_seq            bigint      NOT NULL,
    opened_first_seq    bigint      NOT NULL,
    opened_last_seq     bigint      NOT NULL,
    opened_at           timestamptz NOT NULL DEFAULT now(),
    lost_at             timestamptz,
    closed_at           timestamptz,
    explained           text,
    CHECK (first_seq <= last_seq)
);
CREATE INDEX seq_gaps_open ON seq_gaps (school, device, first_seq) WHERE closed_at IS NULL;
CREATE INDEX seq_gaps_opened ON seq_gaps (opened_at);

-- Work queue of the gap tracker: every newly stored sequenced record, written in the same
-- transaction as the record, consumed (deleted) by the one instance that holds the sweep lock.
CREATE TABLE arrivals (
    school          text        NOT NULL,
    device          text        NOT NULL,
    seq             bigint      NOT NULL,
    ts              timestamptz NOT NULL,
    resets_seq      boolean     NOT NULL DEFAULT false   -- outbox_corrupted/_unavailable event
);

-- Messages that failed: bad JSON, wrong schema, topic/payload mismatch, refused by the
-- database. The raw payload is kept up to quarantine.max_payload_bytes.
CREATE TABLE quarantine (
    id              bigserial   PRIMARY KEY,
    received_at     timestamptz NOT NULL,
    collector       text        NOT NULL,
    topic           text        NOT NULL,
    school          text,
    device          text,
    kind            text,
    reason          text        NOT NULL,
    payload         bytea       NOT NULL,
    payload_bytes   integer     NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at);

-- Each running collector's heartbeat and counters (classroom-collector status).
CREATE TABLE collector_instances (
    client_id       text        PRIMARY KEY,
    host            text        NOT NULL,
    pid             integer     NOT NULL,
    version         text        NOT NULL,
    started_at      timestamptz NOT NULL,
    heartbeat_at    timestamptz NOT NULL,
    stats           jsonb       NOT NULL
);
