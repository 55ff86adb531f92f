-- Migration 6, rollups: per-minute and per-hour aggregates of telemetry,
-- kept by a refresh job, so that a history over a long range reads a few
-- thousand rows instead of millions (GET /api/v1/devices/{id}/telemetry,
-- worker/api/fl_history.c; the job: worker/api/fl_rollup.c).
--
-- The design is TimescaleDB's real-time continuous aggregates on native
-- tables. telemetry_1m and telemetry_1h hold, per device, metric and
-- bucket, n (points), sum, min, max, first and last. Each has a watermark
-- (rollup_state.wm_1m, wm_1h): buckets before it are materialized, and an
-- answer reads the rollup before the watermark and the raw table after it,
-- so a point stored a second ago is in every answer.
--
-- How the job finds what to aggregate: telemetry.tx, the id of the
-- transaction that wrote the row (DEFAULT txid_current(); an UPDATE sets
-- it again through the trigger telemetry_tx), with a BRIN index. A pass
-- reads the rows with tx >= rollup_state.x_done, the snapshot xmin of the
-- previous pass (every transaction below it had ended, so its rows were
-- seen then), partition by partition; whatever their ts, the minutes they
-- touch go to rollup_dirty_1m. So a point that arrives late, behind the
-- watermark, or that overwrites another (the ingest writer's staging
-- UPDATE), marks its minute dirty like any other; so do rows written by
-- anything else than fleetd (psql, an import). Deleted rows mark their
-- minutes dirty through the statement trigger telemetry_deleted. A
-- complete pass sets goal_1m, its start less a lag (one minute, for what
-- ingest has not committed yet); dirty minutes before it are aggregated
-- again from the raw rows (never incremented: recomputing is idempotent,
-- so seeing a row twice is harmless), the later ones wait until they are
-- complete. Their hours go to rollup_dirty_1h and are aggregated again
-- from telemetry_1m once wm_1m has passed them. Rows from before this
-- migration have tx NULL: the first pass reads every row. On a table
-- that holds rows, the BRIN index is built under the migration lock
-- (writes wait for it; a sequential read of every partition).
--
-- Why a refresh job and not the ingest batches: see the README (History),
-- measured with bench/history-bench: tx + its BRIN index add a few
-- percent to the COPY of a batch; upserting the batch into the rollups
-- inside the ingest transaction would add far more, on the path that
-- holds the stream's acknowledgements.
--
-- telemetry_metrics: the kind of each (device, metric) ('n' number, 'b'
-- boolean, 't' text, the type of its newest point as of the last pass)
-- and the day it was last seen. The history answers from it whether a
-- metric exists and whether it can be aggregated without touching
-- telemetry's partitions (planning a query over hundreds of partitions
-- costs more than the whole answer).
--
-- The watermarks never pass a dirty bucket: wm_1m is goal_1m (where the
-- last complete pass allows it) or the oldest dirty minute before that,
-- wm_1h the hour of wm_1m or the oldest dirty hour. While a backlog is
-- being worked off (a first pass over a big table, a bulk import) the
-- answers read more raw rows, never a stale rollup.
--
-- Retention: the job deletes rollup rows older than their retention
-- (postgres.rollup_1m_retention_days, postgres.rollup_1h_retention_days,
-- never shorter than postgres.retention_days) a bounded number at a time.
-- A minute or hour older than the raw data it would be computed from is
-- never recomputed (what is left of it stays as it was).
--
-- Functions (plpgsql, TimeZone UTC inside):
--   fleetd_rollup_refresh(raw_days, m_days, h_days, lag_ms, budget_ms,
--                         max_buckets [, now])
--       one step of the job, under pg_try_advisory_xact_lock
--       (FL_PG_LOCK_ROLLUPS, fl_schema.h): 'busy' when another session
--       runs it; more = true when work is left (call again soon). now
--       (default: the transaction's) is the time a pass starts at, for
--       bench/history-bench, which writes data faster than time passes.
--   fleetd_history(device, metric, from_us, to_us, bucket_ms, agg,
--                  limit, descending)
--       the history answer, its points as JSON text.

ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS tx bigint;
-- a default set after the column was added rewrites nothing: rows from
-- before keep NULL
ALTER TABLE telemetry ALTER COLUMN tx SET DEFAULT txid_current();
CREATE INDEX IF NOT EXISTS telemetry_tx ON telemetry USING brin (tx)
    WITH (pages_per_range = 32, autosummarize = on);

CREATE FUNCTION fleetd_telemetry_tx() RETURNS trigger
LANGUAGE plpgsql AS $fl$
BEGIN
    NEW.tx := txid_current();
    RETURN NEW;
END
$fl$;

CREATE TRIGGER telemetry_tx BEFORE UPDATE ON telemetry
    FOR EACH ROW EXECUTE FUNCTION fleetd_telemetry_tx();

CREATE TABLE telemetry_1m (
    device_id text             NOT NULL,
    metric    text             NOT NULL,
    bucket    timestamptz      NOT NULL,
    n         bigint           NOT NULL,
    sum       double precision NOT NULL,
    min       double precision NOT NULL,
    max       double precision NOT NULL,
    first     double precision NOT NULL,
    last      double precision NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
        INCLUDE (n, sum, min, max, first, last)
) WITH (autovacuum_vacuum_insert_scale_factor = 0.02);
CREATE INDEX telemetry_1m_bucket ON telemetry_1m USING brin (bucket);

CREATE TABLE telemetry_1h (LIKE telemetry_1m INCLUDING ALL)
    WITH (autovacuum_vacuum_insert_scale_factor = 0.02);

CREATE TABLE rollup_dirty_1m (
    device_id text        NOT NULL,
    metric    text        NOT NULL,
    bucket    timestamptz NOT NULL,
    PRIMARY KEY (device_id, metric, bucket)
);
-- no index on bucket: the job reads the whole (small) table once a step,
-- and every row is inserted and deleted once
CREATE TABLE rollup_dirty_1h (LIKE rollup_dirty_1m INCLUDING ALL);

CREATE TABLE telemetry_metrics (
    device_id text        NOT NULL,
    metric    text        NOT NULL,
    kind      "char"      NOT NULL CHECK (kind IN ('n', 'b', 't')),
    seen      timestamptz NOT NULL, -- the day of its newest point
    PRIMARY KEY (device_id, metric)
);

CREATE TABLE rollup_state (
    one       boolean     PRIMARY KEY DEFAULT true CHECK (one),
    x_done    bigint,      -- rows of transactions below it were seen
    pass_x    bigint,      -- a pass in progress: its snapshot xmin,
    pass_t    timestamptz, -- its start,
    pass_next timestamptz, -- and the partitions from lo < this are left
    goal_1m   timestamptz NOT NULL DEFAULT '-infinity', -- the last complete
                           -- pass's: every row with ts before it was seen
    wm_1m     timestamptz NOT NULL DEFAULT '-infinity', -- <= goal_1m
    wm_1h     timestamptz NOT NULL DEFAULT '-infinity',
    refreshed_at timestamptz
);
INSERT INTO rollup_state DEFAULT VALUES;

-- deleted rows (a device purged, a correction by hand) make their minutes
-- dirty; partitions dropped by retention fire nothing, on purpose
CREATE FUNCTION fleetd_telemetry_deleted() RETURNS trigger
LANGUAGE plpgsql AS $fl$
BEGIN
    INSERT INTO rollup_dirty_1m (device_id, metric, bucket)
    SELECT DISTINCT device_id, metric,
           date_bin('1 minute', ts, 'epoch'::timestamptz)
    FROM fl_old
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fl$;

CREATE FUNCTION fleetd_telemetry_deleted_row() RETURNS trigger
LANGUAGE plpgsql AS $fl$
BEGIN
    INSERT INTO rollup_dirty_1m (device_id, metric, bucket)
    VALUES (OLD.device_id, OLD.metric,
            date_bin('1 minute', OLD.ts, 'epoch'::timestamptz))
    ON CONFLICT DO NOTHING;
    RETURN NULL;
END
$fl$;

DO $fl$
BEGIN
    CREATE TRIGGER telemetry_deleted AFTER DELETE ON telemetry
        REFERENCING OLD TABLE AS fl_old
        FOR EACH STATEMENT EXECUTE FUNCTION fleetd_telemetry_deleted();
EXCEPTION WHEN feature_not_supported OR object_not_in_prerequisite_state
               OR wrong_object_type THEN
    -- a TimescaleDB hypertable takes no transition tables
    CREATE TRIGGER telemetry_deleted AFTER DELETE ON telemetry
        FOR EACH ROW EXECUTE FUNCTION fleetd_telemetry_deleted_row();
END
$fl$;

-- ---- JSON text of points ----

-- epoch milliseconds, with the microseconds as a fraction when there are
-- any (1764370000000 or 1764370000000.123)
CREATE FUNCTION fleetd_ms(t timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fl$
    SELECT trim_scale(extract(epoch FROM t) * 1000)::text
$fl$;

CREATE FUNCTION fleetd_us(t timestamptz) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fl$
    SELECT (extract(epoch FROM t) * 1000000)::bigint
$fl$;

-- a number as JSON: NaN and infinities (which only a hand-written row can
-- hold) become null
CREATE FUNCTION fleetd_num(v double precision) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fl$
    SELECT CASE WHEN v IS NULL OR v = 'NaN'::float8 OR v = 'Infinity'::float8
                     OR v = '-Infinity'::float8 THEN 'null'
                ELSE v::text END
$fl$;

-- ---- the refresh job ----

CREATE FUNCTION fleetd_rollup_refresh(p_raw_days integer, p_m_days integer,
                                      p_h_days integer, p_lag_ms integer,
                                      p_budget_ms integer,
                                      p_max_buckets integer,
                                      p_now timestamptz DEFAULT NULL)
RETURNS TABLE (status text, more boolean, partitions integer,
               done_1m integer, done_1h integer, expired bigint,
               wm_1m timestamptz, wm_1h timestamptz)
-- jit off: a statement over hundreds of partitions costs enough to be
-- compiled, and compiling its plan takes seconds (measured: 13 s for one
-- step over a year of daily partitions)
LANGUAGE plpgsql SET TimeZone = 'UTC' SET jit = off AS $fl$
DECLARE
    epoch   constant timestamptz := 'epoch';
    t0      constant timestamptz := clock_timestamp();
    raw_h   timestamptz := now() - make_interval(days => p_raw_days);
    m_h     timestamptz := now() - make_interval(days => greatest(p_m_days, p_raw_days));
    h_h     timestamptz := now() - make_interval(days => greatest(p_h_days, p_m_days, p_raw_days));
    st      rollup_state;
    cand    timestamptz;
    goal_1h timestamptz;
    r       record;
    cond    text;
    a_d     text[];
    a_m     text[];
    a_b     timestamptz[];
    a_k     text[];
    n       bigint;
BEGIN
    partitions := 0;
    done_1m := 0;
    done_1h := 0;
    expired := 0;
    more := false;
    IF NOT pg_try_advisory_xact_lock(7380385375772213251) THEN
        status := 'busy';
        RETURN NEXT;
        RETURN;
    END IF;
    status := 'ok';
    SELECT * INTO st FROM rollup_state FOR UPDATE;

    -- 1. the pass: rows of transactions since the last one, partition by
    -- partition, newest first, until the time budget is spent
    IF st.pass_x IS NULL THEN
        st.pass_x := txid_snapshot_xmin(txid_current_snapshot());
        st.pass_t := coalesce(p_now, now());
        st.pass_next := 'infinity';
    END IF;
    cond := CASE WHEN st.x_done IS NULL THEN 'true'
                 ELSE format('tx >= %s', st.x_done) END;
    FOR r IN
        SELECT p.name, p.lo FROM fleetd_partitions() p
        WHERE p.lo < st.pass_next AND p.hi > raw_h
        UNION ALL -- a TimescaleDB hypertable: the whole table at once
        SELECT 'telemetry', '-infinity'::timestamptz
        WHERE st.pass_next = 'infinity' AND (SELECT c.relkind FROM pg_class c
               WHERE c.oid = 'telemetry'::regclass) <> 'p'
        ORDER BY 2 DESC
    LOOP
        IF partitions > 0 AND
           clock_timestamp() - t0 > make_interval(secs => p_budget_ms / 1000.0) THEN
            more := true;
            EXIT;
        END IF;
        EXECUTE format($q$
            WITH n AS (
                SELECT device_id, metric,
                       date_bin('1 minute', ts, 'epoch'::timestamptz) AS b,
                       max(ts) AS t,
                       max(ts) FILTER (WHERE value IS NOT NULL) AS t_n,
                       max(ts) FILTER (WHERE value_bool IS NOT NULL) AS t_b
                FROM %I WHERE %s
                GROUP BY 1, 2, 3
            ), d AS (
                INSERT INTO rollup_dirty_1m (device_id, metric, bucket)
                SELECT device_id, metric, b FROM n
                ON CONFLICT DO NOTHING
            )
            INSERT INTO telemetry_metrics AS m (device_id, metric, kind, seen)
            SELECT DISTINCT ON (device_id, metric) device_id, metric,
                   CASE t WHEN t_n THEN 'n' WHEN t_b THEN 'b'
                          ELSE 't' END::"char",
                   date_bin('1 day', t, 'epoch'::timestamptz)
            FROM n ORDER BY device_id, metric, t DESC
            ON CONFLICT (device_id, metric) DO UPDATE
                SET kind = excluded.kind, seen = excluded.seen
                WHERE excluded.seen > m.seen OR
                      (excluded.seen = m.seen AND excluded.kind <> m.kind)
            $q$, r.name, cond);
        partitions := partitions + 1;
        st.pass_next := r.lo;
    END LOOP;
    IF NOT more THEN
        -- the pass is complete: everything committed before it began has
        -- been seen, so the watermark may move up to its start (less the
        -- lag that ingest needs to commit what arrived just before)
        st.x_done := st.pass_x;
        cand := date_bin('1 minute', st.pass_t - make_interval(secs => p_lag_ms / 1000.0), epoch);
        st.goal_1m := greatest(st.goal_1m, cand);
        st.pass_x := NULL;
        st.pass_t := NULL;
        st.pass_next := NULL;
    END IF;

    -- 2. dirty minutes before the watermark, oldest first, again from
    -- the raw rows (those older than the raw data are dropped); a minute
    -- left without rows (deleted) loses its rollup row
    WITH del AS (
        DELETE FROM rollup_dirty_1m WHERE ctid = ANY (ARRAY(
            SELECT x.ctid FROM rollup_dirty_1m x WHERE x.bucket < st.goal_1m
            ORDER BY x.bucket LIMIT p_max_buckets))
        RETURNING device_id, metric, bucket
    )
    SELECT coalesce(array_agg(del.device_id), '{}'),
           coalesce(array_agg(del.metric), '{}'),
           coalesce(array_agg(del.bucket), '{}'),
           coalesce(array_agg(coalesce(c.kind, 't')::text), '{}')
      INTO a_d, a_m, a_b, a_k
      FROM del LEFT JOIN telemetry_metrics c
        ON c.device_id = del.device_id AND c.metric = del.metric
     WHERE del.bucket >= raw_h;
    done_1m := cardinality(a_b);
    IF done_1m > 0 THEN
        -- a one-shot plan with the batch's time bounds: only the
        -- partitions it touches are planned and opened
        EXECUTE $q$
        WITH x AS (
            SELECT * FROM unnest($1::text[], $2::text[], $3::timestamptz[],
                                 $4::text[]) AS x(d, m, b, k)
        ), a AS (
            -- numbers: from the key's index alone (INCLUDE (value))
            SELECT x.d, x.m, x.b, a.* FROM x CROSS JOIN LATERAL (
                SELECT count(*) AS n, sum(t.value) AS s, min(t.value) AS lo,
                       max(t.value) AS hi,
                       (array_agg(t.value ORDER BY t.ts))[1] AS f,
                       (array_agg(t.value ORDER BY t.ts DESC))[1] AS l
                FROM telemetry t
                WHERE t.device_id = x.d AND t.metric = x.m AND t.ts >= x.b
                  AND t.ts < x.b + interval '1 minute'
                  AND t.ts >= $5 AND t.ts < $6 AND t.value IS NOT NULL) a
            WHERE x.k = 'n'
            UNION ALL
            -- booleans count as 0 and 1
            SELECT x.d, x.m, x.b, a.* FROM x CROSS JOIN LATERAL (
                SELECT count(*) AS n, sum(v) AS s, min(v) AS lo, max(v) AS hi,
                       (array_agg(v ORDER BY ts))[1] AS f,
                       (array_agg(v ORDER BY ts DESC))[1] AS l
                FROM (SELECT t.ts, t.value_bool::int::float8 AS v
                      FROM telemetry t
                      WHERE t.device_id = x.d AND t.metric = x.m
                        AND t.ts >= x.b AND t.ts < x.b + interval '1 minute'
                        AND t.ts >= $5 AND t.ts < $6
                        AND t.value_bool IS NOT NULL) s) a
            WHERE x.k = 'b'
            UNION ALL
            -- text has no rollup rows
            SELECT x.d, x.m, x.b, 0, NULL, NULL, NULL, NULL, NULL FROM x
            WHERE x.k NOT IN ('n', 'b')
        ), put AS (
            INSERT INTO telemetry_1m AS t (device_id, metric, bucket, n, sum,
                                           min, max, first, last)
            SELECT a.d, a.m, a.b, a.n, a.s, a.lo, a.hi, a.f, a.l FROM a
            WHERE a.n > 0
            ON CONFLICT (device_id, metric, bucket) DO UPDATE
                SET n = excluded.n, sum = excluded.sum, min = excluded.min,
                    max = excluded.max, first = excluded.first,
                    last = excluded.last
        ), h AS (
            INSERT INTO rollup_dirty_1h (device_id, metric, bucket)
            SELECT DISTINCT x.d, x.m,
                   date_bin('1 hour', x.b, 'epoch'::timestamptz) FROM x
            ON CONFLICT DO NOTHING
        )
        SELECT coalesce(array_agg(a.d), '{}'), coalesce(array_agg(a.m), '{}'),
               coalesce(array_agg(a.b), '{}')
          FROM a WHERE a.n = 0 $q$
          INTO a_d, a_m, a_b
          USING a_d, a_m, a_b, a_k, (SELECT min(v) FROM unnest(a_b) v),
                (SELECT max(v) FROM unnest(a_b) v) + interval '1 minute';
        IF cardinality(a_b) > 0 THEN
            DELETE FROM telemetry_1m
            WHERE (device_id, metric, bucket) IN (
                SELECT * FROM unnest(a_d, a_m, a_b));
        END IF;
    END IF;
    -- never past a dirty minute (a backlog larger than one step)
    SELECT least(st.goal_1m, min(x.bucket)) INTO st.wm_1m
    FROM rollup_dirty_1m x WHERE x.bucket < st.goal_1m;
    goal_1h := date_bin('1 hour', st.wm_1m, epoch);

    -- 3. dirty hours before the hour watermark, from telemetry_1m
    WITH del AS (
        DELETE FROM rollup_dirty_1h WHERE ctid = ANY (ARRAY(
            SELECT x.ctid FROM rollup_dirty_1h x WHERE x.bucket < goal_1h
            ORDER BY x.bucket LIMIT p_max_buckets))
        RETURNING device_id, metric, bucket
    )
    SELECT coalesce(array_agg(del.device_id), '{}'),
           coalesce(array_agg(del.metric), '{}'),
           coalesce(array_agg(del.bucket), '{}')
      INTO a_d, a_m, a_b FROM del WHERE del.bucket >= m_h;
    done_1h := cardinality(a_b);
    IF done_1h > 0 THEN
        WITH a AS (
            SELECT x.d, x.m, x.b, a.* FROM unnest(a_d, a_m, a_b) AS x(d, m, b)
            CROSS JOIN LATERAL (
                SELECT coalesce(sum(t.n), 0)::bigint AS n, sum(t.sum) AS s,
                       min(t.min) AS lo, max(t.max) AS hi,
                       (array_agg(t.first ORDER BY t.bucket))[1] AS f,
                       (array_agg(t.last ORDER BY t.bucket DESC))[1] AS l
                FROM telemetry_1m t
                WHERE t.device_id = x.d AND t.metric = x.m AND t.bucket >= x.b
                  AND t.bucket < x.b + interval '1 hour') a
        ), put AS (
            INSERT INTO telemetry_1h AS t (device_id, metric, bucket, n, sum,
                                           min, max, first, last)
            SELECT a.d, a.m, a.b, a.n, a.s, a.lo, a.hi, a.f, a.l FROM a
            WHERE a.n > 0
            ON CONFLICT (device_id, metric, bucket) DO UPDATE
                SET n = excluded.n, sum = excluded.sum, min = excluded.min,
                    max = excluded.max, first = excluded.first,
                    last = excluded.last
        )
        SELECT coalesce(array_agg(a.d), '{}'), coalesce(array_agg(a.m), '{}'),
               coalesce(array_agg(a.b), '{}')
          INTO a_d, a_m, a_b FROM a WHERE a.n = 0;
        IF cardinality(a_b) > 0 THEN
            DELETE FROM telemetry_1h
            WHERE (device_id, metric, bucket) IN (
                SELECT * FROM unnest(a_d, a_m, a_b));
        END IF;
    END IF;
    SELECT least(goal_1h, min(x.bucket)) INTO st.wm_1h
    FROM rollup_dirty_1h x WHERE x.bucket < goal_1h;

    -- 4. retention, a bounded number of rows per step
    DELETE FROM telemetry_1m WHERE ctid = ANY (ARRAY(
        SELECT t.ctid FROM telemetry_1m t WHERE t.bucket < m_h
        LIMIT p_max_buckets));
    GET DIAGNOSTICS n = ROW_COUNT;
    expired := expired + n;
    DELETE FROM telemetry_1h WHERE ctid = ANY (ARRAY(
        SELECT t.ctid FROM telemetry_1h t WHERE t.bucket < h_h
        LIMIT p_max_buckets));
    GET DIAGNOSTICS n = ROW_COUNT;
    expired := expired + n;
    DELETE FROM telemetry_metrics WHERE ctid = ANY (ARRAY(
        SELECT t.ctid FROM telemetry_metrics t WHERE t.seen < h_h - interval '1 day'
        LIMIT p_max_buckets));
    GET DIAGNOSTICS n = ROW_COUNT;
    expired := expired + n;

    more := more OR expired >= p_max_buckets
         OR st.wm_1m < st.goal_1m OR st.wm_1h < goal_1h;
    UPDATE rollup_state s SET x_done = st.x_done, pass_x = st.pass_x,
           pass_t = st.pass_t, pass_next = st.pass_next,
           goal_1m = st.goal_1m, wm_1m = st.wm_1m,
           wm_1h = st.wm_1h, refreshed_at = now();
    wm_1m := st.wm_1m;
    wm_1h := st.wm_1h;
    RETURN NEXT;
END
$fl$;

-- ---- the history ----

-- status: 'ok', 'no_device', 'unknown_metric' (neither a refresh nor the
-- range has seen it), 'not_numeric' (bucketed answer of a text metric);
-- kind: 'n', 'b', 't'; points: the JSON array's elements; n: points or
-- buckets found (up to p_limit + 1); last_us: the time of the p_limit-th
-- one (for "next")
CREATE FUNCTION fleetd_history(p_dev text, p_metric text, p_from_us bigint,
                               p_to_us bigint, p_bucket_ms bigint,
                               p_agg text, p_limit integer,
                               p_desc boolean)
RETURNS TABLE (status text, kind text, points text, n integer,
               last_us bigint)
LANGUAGE plpgsql STABLE SET TimeZone = 'UTC' SET extra_float_digits = 1
SET jit = off AS $fl$
DECLARE
    v_from timestamptz := 'epoch'::timestamptz + p_from_us * interval '1 microsecond';
    v_to   timestamptz := 'epoch'::timestamptz + p_to_us * interval '1 microsecond';
    dir    text := CASE WHEN p_desc THEN 'DESC' ELSE 'ASC' END;
    val    text;
    nn     text;
    agg    text;
    s      rollup_state;
    -- raw rows for [v_from, a_m) and [b_m, v_to), telemetry_1m for
    -- [a_m, a_h) and [b_h, b_m), telemetry_1h for [a_h, b_h)
    a_m    timestamptz := v_to;
    b_m    timestamptz := v_to;
    a_h    timestamptz := v_to;
    b_h    timestamptz := v_to;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM devices d WHERE d.id = p_dev) THEN
        status := 'no_device';
        RETURN NEXT;
        RETURN;
    END IF;
    SELECT c.kind::text INTO kind FROM telemetry_metrics c
    WHERE c.device_id = p_dev AND c.metric = p_metric;
    IF kind IS NULL THEN
        -- not seen by a refresh yet: the newest point of the range
        EXECUTE $q$
            SELECT CASE WHEN value IS NOT NULL THEN 'n'
                        WHEN value_bool IS NOT NULL THEN 'b' ELSE 't' END
            FROM telemetry WHERE device_id = $1 AND metric = $2
              AND ts >= $3 AND ts < $4 ORDER BY ts DESC LIMIT 1 $q$
        INTO kind USING p_dev, p_metric, v_from, v_to;
        IF kind IS NULL THEN
            -- nor the range: the newest point anywhere (planned over every
            -- partition, so only for a metric unknown or seconds old)
            EXECUTE $q$
                SELECT CASE WHEN value IS NOT NULL THEN 'n'
                            WHEN value_bool IS NOT NULL THEN 'b' ELSE 't' END
                FROM telemetry WHERE device_id = $1 AND metric = $2
                ORDER BY ts DESC LIMIT 1 $q$
            INTO kind USING p_dev, p_metric;
        END IF;
        IF kind IS NULL THEN
            status := 'unknown_metric';
            RETURN NEXT;
            RETURN;
        END IF;
    END IF;
    -- the metric is read as the type of its newest point; numbers come
    -- from the key's index alone
    val := CASE kind WHEN 'n' THEN 'value' WHEN 'b' THEN 'value_bool'
                     ELSE 'value_text' END;
    nn := val || ' IS NOT NULL';

    IF p_bucket_ms IS NULL THEN
        RETURN QUERY EXECUTE format($q$
            SELECT 'ok'::text, $6,
                   coalesce(string_agg(j, ',' ORDER BY rn)
                            FILTER (WHERE rn <= $5), ''),
                   count(*)::int,
                   max(fleetd_us(ts)) FILTER (WHERE rn = $5)
            FROM (SELECT ts, '[' || fleetd_ms(ts) || ',' || %s || ']' AS j,
                         row_number() OVER (ORDER BY ts %s) AS rn
                  FROM (SELECT ts, %s AS v FROM telemetry
                        WHERE device_id = $1 AND metric = $2 AND %s
                          AND ts >= $3 AND ts < $4
                        ORDER BY ts %s LIMIT $5 + 1) s) s $q$,
            CASE kind WHEN 'n' THEN 'fleetd_num(v)' WHEN 'b' THEN 'v::text'
                      ELSE 'to_json(v)::text' END,
            dir, val, nn, dir)
        USING p_dev, p_metric, v_from, v_to, p_limit, kind;
        RETURN;
    END IF;
    IF kind = 't' THEN
        status := 'not_numeric';
        RETURN NEXT;
        RETURN;
    END IF;
    IF kind = 'b' THEN
        val := 'value_bool::int::float8';
    END IF;

    -- the coarsest rollups that hold whole buckets of this size
    SELECT * INTO s FROM rollup_state;
    IF p_bucket_ms % 60000 = 0 AND s.wm_1m > v_from THEN
        a_m := date_bin('1 minute', v_from + interval '1 minute'
                        - interval '1 microsecond', 'epoch'::timestamptz);
        b_m := least(date_bin('1 minute', v_to, 'epoch'::timestamptz), s.wm_1m);
        IF a_m >= b_m THEN
            a_m := v_to;
            b_m := v_to;
        ELSIF p_bucket_ms % 3600000 = 0 AND s.wm_1h > a_m THEN
            a_h := date_bin('1 hour', a_m + interval '1 hour'
                            - interval '1 microsecond', 'epoch'::timestamptz);
            b_h := least(date_bin('1 hour', b_m, 'epoch'::timestamptz), s.wm_1h);
            IF a_h >= b_h THEN
                a_h := b_m;
                b_h := b_m;
            END IF;
        ELSE
            a_h := b_m;
            b_h := b_m;
        END IF;
    END IF;
    agg := CASE p_agg
        WHEN 'avg' THEN 'sum(sum) / sum(n)'
        WHEN 'min' THEN 'min(min)'
        WHEN 'max' THEN 'max(max)'
        WHEN 'sum' THEN 'sum(sum)'
        WHEN 'count' THEN 'sum(n)::float8'
        WHEN 'first' THEN '(array_agg(first ORDER BY t))[1]'
        WHEN 'last' THEN '(array_agg(last ORDER BY t DESC))[1]'
    END;
    IF agg IS NULL THEN
        RAISE EXCEPTION 'unknown aggregate %', p_agg;
    END IF;
    -- each range its own branch, so that every one is a plain index
    -- range scan (an OR would become a bitmap scan of the heap)
    RETURN QUERY EXECUTE format($q$
        SELECT 'ok'::text, $11,
               coalesce(string_agg('[' || fleetd_ms(b) || ',' ||
                                   fleetd_num(v) || ']', ',' ORDER BY rn)
                        FILTER (WHERE rn <= $10), ''),
               count(*)::int,
               max(fleetd_us(b)) FILTER (WHERE rn = $10)
        FROM (
            SELECT b, %s AS v, row_number() OVER (ORDER BY b %s) AS rn
            FROM (
                SELECT date_bin($9, t, 'epoch'::timestamptz) AS b, t, n,
                       sum, min, max, first, last
                FROM (
                    SELECT ts AS t, 1::bigint AS n, %s AS sum, %s AS min,
                           %s AS max, %s AS first, %s AS last
                    FROM telemetry WHERE device_id = $1 AND metric = $2
                      AND %s AND ts >= $3 AND ts < $5
                    UNION ALL
                    SELECT ts, 1, %s, %s, %s, %s, %s
                    FROM telemetry WHERE device_id = $1 AND metric = $2
                      AND %s AND ts >= $6 AND ts < $4
                    UNION ALL
                    SELECT bucket, n, sum, min, max, first, last
                    FROM telemetry_1m WHERE device_id = $1 AND metric = $2
                      AND bucket >= $5 AND bucket < $7
                    UNION ALL
                    SELECT bucket, n, sum, min, max, first, last
                    FROM telemetry_1m WHERE device_id = $1 AND metric = $2
                      AND bucket >= $8 AND bucket < $6
                    UNION ALL
                    SELECT bucket, n, sum, min, max, first, last
                    FROM telemetry_1h WHERE device_id = $1 AND metric = $2
                      AND bucket >= $7 AND bucket < $8
                ) u
            ) u
            GROUP BY b
        ) g $q$,
        agg, dir, val, val, val, val, val, nn, val, val, val, val, val, nn)
    USING p_dev, p_metric, v_from, v_to, a_m, b_m, a_h, b_h,
          make_interval(secs => p_bucket_ms / 1000.0), p_limit,
          kind;
END
$fl$;
