"""
Schema migrations (worker/sql/NNN_name.sql, embedded at build time):
a fresh database gets every file, once, recorded in fleetd_migrations; a
database left at an older version by an earlier fleetd is brought up to
date with its rows, and rows written before migration 3 (src NULL) count
as older than any message.
"""

import json
import os
import re
from pathlib import Path

import pytest

import stack
from ingest_util import ingest, now_ms, uniq  # noqa: F401

SQL_DIR = Path(stack.REPO) / "worker" / "sql"


def migration_files():
    out = []
    for p in sorted(SQL_DIR.glob("*.sql")):
        m = re.match(r"^(\d{3})_(.+)\.sql$", p.name)
        assert m, "%s: not NNN_name.sql" % p.name
        out.append((int(m.group(1)), m.group(2), p))
    return out


def fresh_db(postgres):
    name = "it_schema_" + uniq()
    c = postgres.connect(dbname="postgres", user="postgres")
    try:
        c.cursor().execute("CREATE DATABASE %s OWNER %s" % (
            name, postgres.dbuser))
    finally:
        c.close()
    return name


def conninfo(postgres, db):
    return "host=%s port=%d dbname=%s user=%s" % (
        postgres.host, postgres.port, db, postgres.dbuser)


def test_files_are_numbered_in_order():
    files = migration_files()
    assert [v for v, _, _ in files] == list(range(1, len(files) + 1))


@pytest.mark.timeout(60)
def test_fresh_database_gets_every_migration_once(fleetd, postgres):
    db = fresh_db(postgres)
    # two nodes of two workers start together on the empty database
    fs = [fleetd({"node_id": "it-s%d-%s" % (i, uniq()),
                  "postgres": {"conninfo": conninfo(postgres, db)}},
                 workers=2, timeout=30) for i in range(2)]
    c = postgres.connect(dbname=db)
    try:
        cur = c.cursor()
        cur.execute("SELECT version, name FROM fleetd_migrations "
                    "ORDER BY version")
        assert cur.fetchall() == [(v, n) for v, n, _ in migration_files()]
        cur.execute("SELECT column_name FROM information_schema.columns "
                    "WHERE table_name = 'telemetry' ORDER BY ordinal_position")
        assert [r[0] for r in cur.fetchall()] == [
            "ts", "value", "value_bool", "device_id", "metric", "value_text",
            "unit", "src", "tx"]
    finally:
        c.close()
    for f in fs:
        assert "migration" not in "".join(
            ln for ln in f.log_text().splitlines() if "ERROR" in ln)


@pytest.mark.timeout(90)
def test_older_database_is_upgraded_and_old_rows_lose_to_new_ones(
        ingest, postgres):
    """A database at version 2 with a row in it (as fleetd 0.2.1 left
    it): fleetd applies the rest, the row is still there with src NULL,
    and a new message with the same key and another value replaces it
    (counted as overwritten); the same value again is a duplicate."""
    db = fresh_db(postgres)
    c = postgres.connect(dbname=db)
    t = now_ms() - 60000
    dev = "old-" + uniq()
    try:
        cur = c.cursor()
        cur.execute("CREATE TABLE fleetd_migrations (version integer "
                    "PRIMARY KEY, name text NOT NULL, applied_at timestamptz "
                    "NOT NULL DEFAULT now())")
        for v, n, p in migration_files()[:2]:
            cur.execute(p.read_text())
            cur.execute("INSERT INTO fleetd_migrations (version, name) "
                        "VALUES (%s, %s)", (v, n))
        cur.execute("SELECT fleetd_partition_ensure(86400000, 30, "
                    "ARRAY[%s::bigint / 86400000])", (t,))
        cur.execute("INSERT INTO telemetry (ts, value, device_id, metric) "
                    "VALUES (to_timestamp(%s / 1000.0), 1, %s, 'v')",
                    (t, dev))
    finally:
        c.close()
    ctx = ingest(extra={"postgres": {"conninfo": conninfo(postgres, db)}},
                 prefix="sc%s:" % uniq(), wait=False)
    ctx.wait_deps_up()
    q = postgres.connect(dbname=db)
    try:
        cur = q.cursor()
        canary = ctx.dev("canary")

        def canary_stored():
            ctx.send(canary, {"c": 1})
            cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s",
                        (canary,))
            return cur.fetchone()[0] > 0
        # the shared subscription exists once a message goes through
        stack.wait_until(canary_stored, 30, interval=0.3,
                         what="a message stored in the upgraded database")
        cur.execute("SELECT max(version) FROM fleetd_migrations")
        assert cur.fetchone()[0] == len(migration_files())
        cur.execute("SELECT value, src FROM telemetry WHERE device_id = %s",
                    (dev,))
        assert cur.fetchall() == [(1.0, None)]
        ow0 = ctx.metric_sum("fleetd_ingest_overwritten_total") or 0
        dup0 = ctx.metric_sum("fleetd_ingest_duplicates_total") or 0
        ctx.send(dev, {"ts": t, "v": 2})
        stack.wait_until(lambda: cur.execute(
            "SELECT value FROM telemetry WHERE device_id = %s", (dev,)) or
            cur.fetchall() == [(2.0,)], 15, what="the new value")
        stack.wait_until(lambda: ctx.metric_sum(
            "fleetd_ingest_overwritten_total") == ow0 + 1, 10,
            what="overwritten counted")
        ctx.send(dev, {"ts": t, "v": 2})
        stack.wait_until(lambda: ctx.metric_sum(
            "fleetd_ingest_duplicates_total") == dup0 + 1, 10,
            what="duplicate counted")
        cur.execute("SELECT count(*) FROM telemetry WHERE device_id = %s",
                    (dev,))
        assert cur.fetchone()[0] == 1
    finally:
        q.close()
