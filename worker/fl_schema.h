/*
 * fl_schema.h - fleetd's versioned schema migrations.
 *
 * One file per migration, worker/sql/NNN_name.sql: plain SQL, read and
 * reviewed as such; the build embeds them into the binary as
 * fl_migrations[] (scripts/embed-sql, the Makefile), in version order.
 *
 * fl_pg.c applies, after every connect and in one transaction under
 * pg_advisory_xact_lock(FL_PG_LOCK_MIGRATIONS), the migrations whose
 * version is not yet in the table fleetd_migrations (version, name,
 * applied_at), in order, each followed by its row in fleetd_migrations.
 * Workers and nodes that start together wait on the lock and then find
 * the work done, so every migration runs exactly once per database.
 *
 * Rules for adding one: a new file with the next number, never edit or
 * renumber an applied one (change something with a new migration: ALTER,
 * CREATE OR REPLACE FUNCTION); a comment at its top says what it is for.
 * A migration may hold several statements and must run inside a
 * transaction block (no CREATE INDEX CONCURRENTLY, no VACUUM).
 */
#ifndef FL_SCHEMA_H
#define FL_SCHEMA_H

/* pg_advisory_xact_lock keys: "fleetd" in ASCII, then 1 / 2 / 3 */
#define FL_PG_LOCK_MIGRATIONS "7380385375772213249"
#define FL_PG_LOCK_PARTITIONS "7380385375772213250"
/* the rollup refresh (worker/sql/006_rollups.sql, fl_rollup.c), taken with
 * pg_try_advisory_xact_lock: one session at a time in the cluster */
#define FL_PG_LOCK_ROLLUPS "7380385375772213251"

typedef struct {
    int         version;
    const char *name; /* recorded in fleetd_migrations.name */
    const char *sql;
} fl_migration_t;

/* versions 1 .. fl_nmigrations, in order (embed-sql checks it) */
extern const fl_migration_t fl_migrations[];
extern const int            fl_nmigrations;

#endif
