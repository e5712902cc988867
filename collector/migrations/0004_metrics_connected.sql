-- The one figure the reports read from a metrics record, agent.mqtt.connected (the broker
-- link as the terminal saw it), kept in a column at ingest: the monthly report parsed every
-- metrics document of the month for it (94% of its time, 0.5-0.7 s per terminal-month;
-- docs/reports.md, "Cost"). NULL: the record does not say (an older agent, a record without
-- the agent section). Rows stored before this migration get it from their data here, once.
ALTER TABLE metrics ADD COLUMN connected boolean;
UPDATE metrics SET connected = json_extract_path_text(data, 'agent', 'mqtt', 'connected')::boolean
WHERE json_extract_path_text(data, 'agent', 'mqtt', 'connected') IN ('true', 'false');
