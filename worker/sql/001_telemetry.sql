-- Migration 1, telemetry: one row per metric value.
--
--   ts, value, value_bool, device_id, metric, value_text, unit
--
-- Exactly one of value (numbers), value_bool and value_text (strings) is
-- set (CHECK telemetry_one_value); the column that is set is the type, so
-- no value_type column is needed. unit is the SenML unit (u / bu), NULL
-- for every other form: a NULL costs a bit in the null bitmap the row has
-- anyway. The fixed-width columns come first so that no alignment padding
-- sits between the text columns and ts (64 bytes per typical row instead
-- of 72). PRIMARY KEY (device_id, metric, ts) is both the history index
-- (one device, one metric, a time range: GET /api/v1/devices/{id}/
-- telemetry) and the dedup key: a batch written again after a redelivery
-- adds nothing.
--
-- Storage, decided here, once:
--   - TimescaleDB, when pg_available_extensions lists it and CREATE
--     EXTENSION works (it needs shared_preload_libraries and usually a
--     superuser): telemetry becomes a hypertable on ts; chunks are made by
--     TimescaleDB, fleetd_partition_upkeep() sets chunk_time_interval to
--     postgres.partition_interval and calls drop_chunks() for retention.
--   - otherwise native declarative partitioning: PARTITION BY RANGE (ts),
--     partitions telemetry_pYYYYMMDD (intervals of whole days) or
--     telemetry_pYYYYMMDDHH, aligned on multiples of the interval since
--     the Unix epoch, made by the functions below. No DEFAULT partition
--     (see fl_pg.c for why); a row whose partition is missing makes the
--     write create it (fleetd_partition_ensure) and retry once.
--
-- Functions (all plpgsql, TimeZone UTC inside, so names and bounds are
-- UTC whatever the session says):
--   fleetd_partitions()          name, lo, hi of every partition, read
--                                from the catalog (so partitions made by
--                                hand or with another interval count)
--   fleetd_partition_create(lo, hi)    one partition, returns its name
--   fleetd_partition_ensure(iv_ms, retention_days, buckets bigint[])
--                                makes sure partitions cover the buckets
--                                (bucket = ts_ms / iv_ms) that are not
--                                wholly older than the retention; only
--                                the gaps are created, so a changed
--                                interval never makes overlapping ones.
--                                Returns the names it created.
--   fleetd_partition_upkeep(iv_ms, ahead, retention_days)
--                                partitions for the buckets now-1 ..
--                                now+ahead, drops those wholly older than
--                                the retention; rows (action, item) say
--                                what it did: ('mode', 'native' |
--                                'timescaledb'), ('created' | 'dropped',
--                                name).
-- Creating and dropping partitions serialise on pg_advisory_xact_lock(
-- FL_PG_LOCK_PARTITIONS, fl_schema.h) and take the parent's ACCESS
-- EXCLUSIVE lock with lock_timeout 5s, so a long query on telemetry makes
-- upkeep fail (and be retried) instead of queueing every write behind it.

DO $fl$
DECLARE
    tsdb boolean := false;
    cols text := '
        ts         timestamptz      NOT NULL,
        value      double precision,
        value_bool boolean,
        device_id  text             NOT NULL,
        metric     text             NOT NULL,
        value_text text,
        unit       text,
        CONSTRAINT telemetry_one_value
            CHECK (num_nonnulls(value, value_bool, value_text) = 1),
        PRIMARY KEY (device_id, metric, ts)';
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions
               WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            tsdb := true;
        EXCEPTION WHEN OTHERS THEN
            RAISE WARNING 'fleetd: TimescaleDB is available but CREATE EXTENSION failed (%), using native partitioning', SQLERRM;
        END;
    END IF;
    IF tsdb THEN
        EXECUTE 'CREATE TABLE telemetry (' || cols || ')';
        PERFORM create_hypertable('telemetry', 'ts',
            chunk_time_interval => interval '1 day');
    ELSE
        EXECUTE 'CREATE TABLE telemetry (' || cols ||
                ') PARTITION BY RANGE (ts)';
    END IF;
END
$fl$;

CREATE FUNCTION fleetd_partitions()
RETURNS TABLE (name text, lo timestamptz, hi timestamptz)
LANGUAGE plpgsql STABLE SET TimeZone = 'UTC' AS $fl$
DECLARE
    r record;
    m text[];
BEGIN
    FOR r IN SELECT c.relname::text AS relname,
                    pg_get_expr(c.relpartbound, c.oid) AS bound
             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
             WHERE i.inhparent = 'telemetry'::regclass
    LOOP
        m := regexp_match(r.bound,
                          '^FOR VALUES FROM \((.*)\) TO \((.*)\)$');
        CONTINUE WHEN m IS NULL; -- a DEFAULT partition
        name := r.relname;
        lo := CASE m[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz
              ELSE btrim(m[1], '''')::timestamptz END;
        hi := CASE m[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz
              ELSE btrim(m[2], '''')::timestamptz END;
        RETURN NEXT;
    END LOOP;
END
$fl$;

CREATE FUNCTION fleetd_partition_create(p_lo timestamptz,
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
                   'FOR VALUES FROM (%L) TO (%L)', n, p_lo, p_hi);
    RETURN n;
END
$fl$;

CREATE FUNCTION fleetd_partition_ensure(iv_ms bigint,
                                        retention_days integer,
                                        buckets bigint[])
RETURNS SETOF text LANGUAGE plpgsql
SET TimeZone = 'UTC' SET lock_timeout = '5s' AS $fl$
DECLARE
    horizon timestamptz := now() - make_interval(days => retention_days);
    b    bigint;
    b_lo timestamptz;
    b_hi timestamptz;
    cur  timestamptz;
    los  timestamptz[];
    his  timestamptz[];
    r    record;
BEGIN
    PERFORM pg_advisory_xact_lock(7380385375772213250);
    SELECT coalesce(array_agg(p.lo), '{}'), coalesce(array_agg(p.hi), '{}')
      INTO los, his FROM fleetd_partitions() p;
    FOR b IN SELECT DISTINCT x FROM unnest(buckets) x
             WHERE x IS NOT NULL ORDER BY 1
    LOOP
        b_lo := to_timestamp(b * iv_ms / 1000.0);
        b_hi := to_timestamp((b + 1) * iv_ms / 1000.0);
        CONTINUE WHEN b_hi <= horizon;
        cur := b_lo;
        FOR r IN SELECT u.plo, u.phi
                 FROM unnest(los, his) AS u(plo, phi)
                 WHERE u.plo < b_hi AND u.phi > b_lo ORDER BY u.plo
        LOOP
            IF r.plo > cur THEN
                RETURN NEXT fleetd_partition_create(cur, r.plo);
                los := los || cur;
                his := his || r.plo;
            END IF;
            cur := greatest(cur, r.phi);
        END LOOP;
        IF cur < b_hi THEN
            RETURN NEXT fleetd_partition_create(cur, b_hi);
            los := los || cur;
            his := his || b_hi;
        END IF;
    END LOOP;
END
$fl$;

CREATE FUNCTION fleetd_partition_upkeep(iv_ms bigint, ahead integer,
                                        retention_days integer)
RETURNS TABLE (action text, item text) LANGUAGE plpgsql
SET TimeZone = 'UTC' SET lock_timeout = '5s' AS $fl$
DECLARE
    horizon timestamptz := now() - make_interval(days => retention_days);
    nowb    bigint := (extract(epoch FROM now()) * 1000)::bigint
                      / iv_ms;
    r       record;
BEGIN
    IF (SELECT c.relkind FROM pg_class c
        WHERE c.oid = 'telemetry'::regclass) <> 'p' THEN
        action := 'mode';
        item := 'timescaledb';
        RETURN NEXT;
        PERFORM set_chunk_time_interval('telemetry',
            make_interval(secs => iv_ms / 1000.0));
        action := 'dropped';
        FOR item IN SELECT c::text
                    FROM drop_chunks('telemetry', older_than => horizon) c
        LOOP
            RETURN NEXT;
        END LOOP;
        RETURN;
    END IF;
    action := 'mode';
    item := 'native';
    RETURN NEXT;
    PERFORM pg_advisory_xact_lock(7380385375772213250);
    action := 'created';
    FOR item IN SELECT fleetd_partition_ensure(iv_ms, retention_days,
                  ARRAY(SELECT generate_series(nowb - 1, nowb + ahead)))
    LOOP
        RETURN NEXT;
    END LOOP;
    action := 'dropped';
    FOR r IN SELECT p.name FROM fleetd_partitions() p
             WHERE p.hi <= horizon ORDER BY p.lo
    LOOP
        EXECUTE format('DROP TABLE %I', r.name);
        item := r.name;
        RETURN NEXT;
    END LOOP;
END
$fl$;
