/*
 * fl_schema.sql.h - fleetd's versioned schema migrations, as SQL text.
 *
 * Included by fl_pg.c only. fl_pg.c applies, after every connect and in
 * one transaction under pg_advisory_xact_lock(FL_PG_LOCK_MIGRATIONS), the
 * entries of fl_migrations whose version is not yet in the table
 * fleetd_migrations (version, name, applied_at), in order, each followed
 * by its row in fleetd_migrations. Workers and nodes that start together
 * wait on the lock and then find the work done, so every migration runs
 * exactly once per database.
 *
 * Rules for adding one: append with the next version number, never edit
 * or reorder an applied one (change something with a new migration:
 * ALTER, CREATE OR REPLACE FUNCTION). A migration is one string of SQL
 * statements that may run inside a transaction block (no CREATE INDEX
 * CONCURRENTLY, no VACUUM).
 *
 * Migration 1, telemetry: one row per metric value.
 *
 *   ts, value, value_bool, device_id, metric, value_text, unit
 *
 * Exactly one of value (numbers), value_bool and value_text (strings) is
 * set (CHECK telemetry_one_value); the column that is set is the type, so
 * no value_type column is needed. unit is the SenML unit (u / bu), NULL
 * for every other form: a NULL costs a bit in the null bitmap the row has
 * anyway. The fixed-width columns come first so that no alignment padding
 * sits between the text columns and ts (64 bytes per typical row instead
 * of 72). PRIMARY KEY (device_id, metric, ts) is both the history index
 * (one device, one metric, a time range: GET /api/v1/devices/{id}/
 * telemetry) and the dedup key: a batch written again after a redelivery
 * adds nothing (INSERT .. ON CONFLICT DO NOTHING).
 *
 * Migration 2, index_only_history: PRIMARY KEY (device_id, metric, ts)
 * INCLUDE (value). The number goes into the key's index too, so a numeric
 * history is an index-only scan. Every batch holds all devices, so the
 * rows of one device are spread over the whole partition: without it a
 * 24 h history of 1,440 points reads ~1,440 heap pages, with it ~30 index
 * pages, for about 10 % more bytes and 2-10 % more write time
 * (bench/pg-layout, README). Index-only scans need the visibility map, so
 * partitions also get autovacuum_vacuum_insert_scale_factor 0.02: their
 * insert-driven autovacuum (PostgreSQL 13+) runs after 2 % new rows
 * instead of 20 %. On a table that already holds rows this rebuilds the
 * key's indexes once, under the migration lock (writes wait for it).
 *
 * Migration 3, row_source: telemetry.src bigint, the stream entry that
 * wrote the row (entry id ms * 1000000 + seq, fl_ingest.c). Two messages
 * with the same device, metric and ts: the one later in the stream wins
 * (fl_pg.c's staging path updates a row only for a greater src), and an
 * entry written twice is recognised as itself (equal src). Nullable with
 * no default, so adding it rewrites nothing; rows from before it read as
 * src 0, older than any message.
 *
 * Storage, decided when migration 1 runs:
 *   - TimescaleDB, when pg_available_extensions lists it and CREATE
 *     EXTENSION works (it needs shared_preload_libraries and usually a
 *     superuser): telemetry becomes a hypertable on ts; chunks are made by
 *     TimescaleDB, fleetd_partition_upkeep() sets chunk_time_interval to
 *     postgres.partition_interval and calls drop_chunks() for retention.
 *   - otherwise native declarative partitioning: PARTITION BY RANGE (ts),
 *     partitions telemetry_pYYYYMMDD (intervals of whole days) or
 *     telemetry_pYYYYMMDDHH, aligned on multiples of the interval since
 *     the Unix epoch, made by the functions below. No DEFAULT partition
 *     (see fl_pg.c for why); a row whose partition is missing makes the
 *     write create it (fleetd_partition_ensure) and retry once.
 *
 * Functions (all plpgsql, TimeZone UTC inside, so names and bounds are
 * UTC whatever the session says):
 *   fleetd_partitions()          name, lo, hi of every partition, read
 *                                from the catalog (so partitions made by
 *                                hand or with another interval count)
 *   fleetd_partition_create(lo, hi)    one partition, returns its name
 *   fleetd_partition_ensure(iv_ms, retention_days, buckets bigint[])
 *                                makes sure partitions cover the buckets
 *                                (bucket = ts_ms / iv_ms) that are not
 *                                wholly older than the retention; only
 *                                the gaps are created, so a changed
 *                                interval never makes overlapping ones.
 *                                Returns the names it created.
 *   fleetd_partition_upkeep(iv_ms, ahead, retention_days)
 *                                partitions for the buckets now-1 ..
 *                                now+ahead, drops those wholly older than
 *                                the retention; rows (action, item) say
 *                                what it did: ('mode', 'native' |
 *                                'timescaledb'), ('created' | 'dropped',
 *                                name).
 * Creating and dropping partitions serialise on pg_advisory_xact_lock(
 * FL_PG_LOCK_PARTITIONS) and take the parent's ACCESS EXCLUSIVE lock with
 * lock_timeout 5s, so a long query on telemetry makes upkeep fail (and
 * be retried) instead of queueing every write behind it.
 */
#ifndef FL_SCHEMA_SQL_H
#define FL_SCHEMA_SQL_H

/* pg_advisory_xact_lock keys: "fleetd" in ASCII, then 1 / 2 */
#define FL_PG_LOCK_MIGRATIONS "7380385375772213249"
#define FL_PG_LOCK_PARTITIONS "7380385375772213250"

typedef struct {
    int         version;
    const char *name; /* recorded in fleetd_migrations.name */
    const char *sql;
} fl_migration_t;

static const fl_migration_t fl_migrations[] = {
    {1, "telemetry",
     /* the table: a hypertable when TimescaleDB can be had */
     "DO $fl$\n"
     "DECLARE\n"
     "    tsdb boolean := false;\n"
     "    cols text := '\n"
     "        ts         timestamptz      NOT NULL,\n"
     "        value      double precision,\n"
     "        value_bool boolean,\n"
     "        device_id  text             NOT NULL,\n"
     "        metric     text             NOT NULL,\n"
     "        value_text text,\n"
     "        unit       text,\n"
     "        CONSTRAINT telemetry_one_value\n"
     "            CHECK (num_nonnulls(value, value_bool, value_text) = 1),\n"
     "        PRIMARY KEY (device_id, metric, ts)';\n"
     "BEGIN\n"
     "    IF EXISTS (SELECT 1 FROM pg_available_extensions\n"
     "               WHERE name = 'timescaledb') THEN\n"
     "        BEGIN\n"
     "            CREATE EXTENSION IF NOT EXISTS timescaledb;\n"
     "            tsdb := true;\n"
     "        EXCEPTION WHEN OTHERS THEN\n"
     "            RAISE WARNING 'fleetd: TimescaleDB is available but "
     "CREATE EXTENSION failed (%), using native partitioning', SQLERRM;\n"
     "        END;\n"
     "    END IF;\n"
     "    IF tsdb THEN\n"
     "        EXECUTE 'CREATE TABLE telemetry (' || cols || ')';\n"
     "        PERFORM create_hypertable('telemetry', 'ts',\n"
     "            chunk_time_interval => interval '1 day');\n"
     "    ELSE\n"
     "        EXECUTE 'CREATE TABLE telemetry (' || cols ||\n"
     "                ') PARTITION BY RANGE (ts)';\n"
     "    END IF;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "CREATE FUNCTION fleetd_partitions()\n"
     "RETURNS TABLE (name text, lo timestamptz, hi timestamptz)\n"
     "LANGUAGE plpgsql STABLE SET TimeZone = 'UTC' AS $fl$\n"
     "DECLARE\n"
     "    r record;\n"
     "    m text[];\n"
     "BEGIN\n"
     "    FOR r IN SELECT c.relname::text AS relname,\n"
     "                    pg_get_expr(c.relpartbound, c.oid) AS bound\n"
     "             FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid\n"
     "             WHERE i.inhparent = 'telemetry'::regclass\n"
     "    LOOP\n"
     "        m := regexp_match(r.bound,\n"
     "                          '^FOR VALUES FROM \\((.*)\\) TO "
     "\\((.*)\\)$');\n"
     "        CONTINUE WHEN m IS NULL; -- a DEFAULT partition\n"
     "        name := r.relname;\n"
     "        lo := CASE m[1] WHEN 'MINVALUE' THEN '-infinity'::timestamptz\n"
     "              ELSE btrim(m[1], '''')::timestamptz END;\n"
     "        hi := CASE m[2] WHEN 'MAXVALUE' THEN 'infinity'::timestamptz\n"
     "              ELSE btrim(m[2], '''')::timestamptz END;\n"
     "        RETURN NEXT;\n"
     "    END LOOP;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "CREATE FUNCTION fleetd_partition_create(p_lo timestamptz,\n"
     "                                        p_hi timestamptz)\n"
     "RETURNS text LANGUAGE plpgsql SET TimeZone = 'UTC' AS $fl$\n"
     "DECLARE\n"
     "    fmt text;\n"
     "    n   text;\n"
     "BEGIN\n"
     "    IF date_trunc('day', p_lo) = p_lo AND\n"
     "       date_trunc('day', p_hi) = p_hi THEN\n"
     "        fmt := 'YYYYMMDD';\n"
     "    ELSIF date_trunc('hour', p_lo) = p_lo THEN\n"
     "        fmt := 'YYYYMMDDHH24';\n"
     "    ELSE\n"
     "        fmt := 'YYYYMMDDHH24MI';\n"
     "    END IF;\n"
     "    n := 'telemetry_p' || to_char(p_lo, fmt);\n"
     "    IF to_regclass(quote_ident(n)) IS NOT NULL THEN\n"
     "        n := n || '_' || extract(epoch FROM p_lo)::bigint;\n"
     "    END IF;\n"
     "    EXECUTE format('CREATE TABLE %I PARTITION OF telemetry '\n"
     "                   'FOR VALUES FROM (%L) TO (%L)', n, p_lo, p_hi);\n"
     "    RETURN n;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "CREATE FUNCTION fleetd_partition_ensure(iv_ms bigint,\n"
     "                                        retention_days integer,\n"
     "                                        buckets bigint[])\n"
     "RETURNS SETOF text LANGUAGE plpgsql\n"
     "SET TimeZone = 'UTC' SET lock_timeout = '5s' AS $fl$\n"
     "DECLARE\n"
     "    horizon timestamptz := now() - make_interval(days => "
     "retention_days);\n"
     "    b    bigint;\n"
     "    b_lo timestamptz;\n"
     "    b_hi timestamptz;\n"
     "    cur  timestamptz;\n"
     "    los  timestamptz[];\n"
     "    his  timestamptz[];\n"
     "    r    record;\n"
     "BEGIN\n"
     "    PERFORM pg_advisory_xact_lock(" FL_PG_LOCK_PARTITIONS ");\n"
     "    SELECT coalesce(array_agg(p.lo), '{}'), "
     "coalesce(array_agg(p.hi), '{}')\n"
     "      INTO los, his FROM fleetd_partitions() p;\n"
     "    FOR b IN SELECT DISTINCT x FROM unnest(buckets) x\n"
     "             WHERE x IS NOT NULL ORDER BY 1\n"
     "    LOOP\n"
     "        b_lo := to_timestamp(b * iv_ms / 1000.0);\n"
     "        b_hi := to_timestamp((b + 1) * iv_ms / 1000.0);\n"
     "        CONTINUE WHEN b_hi <= horizon;\n"
     "        cur := b_lo;\n"
     "        FOR r IN SELECT u.plo, u.phi\n"
     "                 FROM unnest(los, his) AS u(plo, phi)\n"
     "                 WHERE u.plo < b_hi AND u.phi > b_lo ORDER BY u.plo\n"
     "        LOOP\n"
     "            IF r.plo > cur THEN\n"
     "                RETURN NEXT fleetd_partition_create(cur, r.plo);\n"
     "                los := los || cur;\n"
     "                his := his || r.plo;\n"
     "            END IF;\n"
     "            cur := greatest(cur, r.phi);\n"
     "        END LOOP;\n"
     "        IF cur < b_hi THEN\n"
     "            RETURN NEXT fleetd_partition_create(cur, b_hi);\n"
     "            los := los || cur;\n"
     "            his := his || b_hi;\n"
     "        END IF;\n"
     "    END LOOP;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "CREATE FUNCTION fleetd_partition_upkeep(iv_ms bigint, ahead integer,\n"
     "                                        retention_days integer)\n"
     "RETURNS TABLE (action text, item text) LANGUAGE plpgsql\n"
     "SET TimeZone = 'UTC' SET lock_timeout = '5s' AS $fl$\n"
     "DECLARE\n"
     "    horizon timestamptz := now() - make_interval(days => "
     "retention_days);\n"
     "    nowb    bigint := (extract(epoch FROM now()) * 1000)::bigint\n"
     "                      / iv_ms;\n"
     "    r       record;\n"
     "BEGIN\n"
     "    IF (SELECT c.relkind FROM pg_class c\n"
     "        WHERE c.oid = 'telemetry'::regclass) <> 'p' THEN\n"
     "        action := 'mode';\n"
     "        item := 'timescaledb';\n"
     "        RETURN NEXT;\n"
     "        PERFORM set_chunk_time_interval('telemetry',\n"
     "            make_interval(secs => iv_ms / 1000.0));\n"
     "        action := 'dropped';\n"
     "        FOR item IN SELECT c::text\n"
     "                    FROM drop_chunks('telemetry', older_than => "
     "horizon) c\n"
     "        LOOP\n"
     "            RETURN NEXT;\n"
     "        END LOOP;\n"
     "        RETURN;\n"
     "    END IF;\n"
     "    action := 'mode';\n"
     "    item := 'native';\n"
     "    RETURN NEXT;\n"
     "    PERFORM pg_advisory_xact_lock(" FL_PG_LOCK_PARTITIONS ");\n"
     "    action := 'created';\n"
     "    FOR item IN SELECT fleetd_partition_ensure(iv_ms, retention_days,\n"
     "                  ARRAY(SELECT generate_series(nowb - 1, nowb + "
     "ahead)))\n"
     "    LOOP\n"
     "        RETURN NEXT;\n"
     "    END LOOP;\n"
     "    action := 'dropped';\n"
     "    FOR r IN SELECT p.name FROM fleetd_partitions() p\n"
     "             WHERE p.hi <= horizon ORDER BY p.lo\n"
     "    LOOP\n"
     "        EXECUTE format('DROP TABLE %I', r.name);\n"
     "        item := r.name;\n"
     "        RETURN NEXT;\n"
     "    END LOOP;\n"
     "END\n"
     "$fl$;\n"},
    {2, "index_only_history",
     "DO $fl$\n"
     "BEGIN\n"
     "    IF (SELECT c.relkind FROM pg_class c\n"
     "        WHERE c.oid = 'telemetry'::regclass) = 'p' THEN\n"
     "        ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;\n"
     "        ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey\n"
     "            PRIMARY KEY (device_id, metric, ts) INCLUDE (value);\n"
     "    ELSE\n"
     "        -- a TimescaleDB hypertable: keep the plain key if it cannot\n"
     "        BEGIN\n"
     "            ALTER TABLE telemetry DROP CONSTRAINT telemetry_pkey;\n"
     "            ALTER TABLE telemetry ADD CONSTRAINT telemetry_pkey\n"
     "                PRIMARY KEY (device_id, metric, ts) INCLUDE (value);\n"
     "        EXCEPTION WHEN OTHERS THEN\n"
     "            RAISE WARNING 'fleetd: INCLUDE (value) on the hypertable "
     "failed (%), keeping the plain primary key', SQLERRM;\n"
     "        END;\n"
     "    END IF;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "CREATE OR REPLACE FUNCTION fleetd_partition_create(p_lo timestamptz,\n"
     "                                                   p_hi timestamptz)\n"
     "RETURNS text LANGUAGE plpgsql SET TimeZone = 'UTC' AS $fl$\n"
     "DECLARE\n"
     "    fmt text;\n"
     "    n   text;\n"
     "BEGIN\n"
     "    IF date_trunc('day', p_lo) = p_lo AND\n"
     "       date_trunc('day', p_hi) = p_hi THEN\n"
     "        fmt := 'YYYYMMDD';\n"
     "    ELSIF date_trunc('hour', p_lo) = p_lo THEN\n"
     "        fmt := 'YYYYMMDDHH24';\n"
     "    ELSE\n"
     "        fmt := 'YYYYMMDDHH24MI';\n"
     "    END IF;\n"
     "    n := 'telemetry_p' || to_char(p_lo, fmt);\n"
     "    IF to_regclass(quote_ident(n)) IS NOT NULL THEN\n"
     "        n := n || '_' || extract(epoch FROM p_lo)::bigint;\n"
     "    END IF;\n"
     "    EXECUTE format('CREATE TABLE %I PARTITION OF telemetry '\n"
     "                   'FOR VALUES FROM (%L) TO (%L) WITH '\n"
     "                   '(autovacuum_vacuum_insert_scale_factor = 0.02)',\n"
     "                   n, p_lo, p_hi);\n"
     "    RETURN n;\n"
     "END\n"
     "$fl$;\n"
     "\n"
     "DO $fl$\n"
     "DECLARE\n"
     "    r record;\n"
     "BEGIN\n"
     "    FOR r IN SELECT p.name FROM fleetd_partitions() p LOOP\n"
     "        EXECUTE format('ALTER TABLE %I SET '\n"
     "                       '(autovacuum_vacuum_insert_scale_factor = "
     "0.02)',\n"
     "                       r.name);\n"
     "    END LOOP;\n"
     "END\n"
     "$fl$;\n"},
    {3, "row_source",
     "ALTER TABLE telemetry ADD COLUMN IF NOT EXISTS src bigint;\n"},
};

#endif
