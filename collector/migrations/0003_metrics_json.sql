-- metrics.data as json (validated text) rather than jsonb: PostgreSQL's jsonb input cost
-- 4-5x the json input per row on the agent's metrics (docs/collector.md, "Throughput"), and
-- metrics are nine records in ten. Reports read them with the json operators (->, ->>) or
-- cast a month's rows to jsonb.
ALTER TABLE metrics ALTER COLUMN data TYPE json USING data::json;
