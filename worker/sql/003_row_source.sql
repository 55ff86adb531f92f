-- Migration 3, row_source: telemetry.src bigint, the stream entry that
-- wrote the row (entry id MS * 1000000 + SEQ, fl_ingest.c). Two messages
-- with the same device, metric and ts: the one later in the stream wins
-- (fl_pg.c's staging path updates a row only for a greater src), and an
-- entry written twice is recognised as itself (equal src). Nullable with
-- no default, so adding it rewrites nothing; rows from before it read as
-- src 0, older than any message.

ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS src bigint;
