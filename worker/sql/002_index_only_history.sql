-- Migration 2, index_only_history: PRIMARY KEY (device_id, metric, ts)
-- INCLUDE (value). The number goes into the key's index too, so a numeric
-- history is an index-only scan. Every batch holds all devices, so the
-- rows of one device are spread over the whole partition: without it a
-- 24 h history of 1,440 points reads ~1,440 heap pages, with it ~30 index
-- pages, for about 10 % more bytes and 2-10 % more write time
-- (bench/pg-layout, README). Index-only scans need the visibility map, so
-- partitions also get autovacuum_vacuum_insert_scale_factor 0.02: their
-- insert-driven autovacuum (PostgreSQL 13+) runs after 2 % new rows
-- instead of 20 %. On a table that already holds rows this rebuilds the
-- key's indexes once, under the migration lock (writes wait for it).

DO $fl$
BEGIN
    IF (SELECT c.relkind FROM pg_class c
        WHERE c.oid = 'telemetry'::regclass) = 'p' THEN
        ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
        ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey
            PRIMARY KEY (device_id, metric, ts) INCLUDE (value);
    ELSE
        -- a TimescaleDB hypertable: keep the plain key if it cannot
        BEGIN
            ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;
            ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey
                PRIMARY KEY (device_id, metric, ts) INCLUDE (value);
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'fleetd: INCLUDE (value) on the hypertable failed (%), keeping the plain primary key', SQLERRM;
        END;
    END IF;
END
$fl$;

CREATE OR REPLACE FUNCTION fleetd_partition_create(p_lo timestamptz,
                                                   p_hi timestamptz)
RETURNS text LANGUAGE plpgsql SET TimeZone = 'UTC' AS $fl$
DECLARE
    fmt text;
    n   text;
BEGIN
    IF date_trunc('day', p_lo) = p_lo AND
       date_trunc('day', p_hi) = p_hi THEN
        fmt := 'YYYYMMDD';
    ELSIF date_trunc('hour', p_lo) = p_lo THEN
        fmt := 'YYYYMMDDHH24';
    ELSE
        fmt := 'YYYYMMDDHH24MI';
    END IF;
    n := 'telemetry_p' || to_char(p_lo, fmt);
    IF to_regclass(quote_ident(n)) IS NOT NULL THEN
        n := n || '_' || extract(epoch FROM p_lo)::bigint;
    END IF;
    EXECUTE format('CREATE TABLE %I PARTITION OF telemetry '
                   'FOR VALUES FROM (%L) TO (%L) WITH '
                   '(autovacuum_vacuum_insert_scale_factor = 0.02)',
                   n, p_lo, p_hi);
    RETURN n;
END
$fl$;

DO $fl$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT p.name FROM fleetd_partitions() p LOOP
        EXECUTE format('ALTER TABLE %I SET '
                       '(autovacuum_vacuum_insert_scale_factor = 0.02)',
                       r.name);
    END LOOP;
END
$fl$;
