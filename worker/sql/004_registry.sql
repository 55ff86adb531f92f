-- Migration 4, registry: the device registry and the API keys (REST API,
-- worker/api/).
--
-- devices: one row per device an operator registered (POST
-- /api/v1/devices) or that published before it was registered (auto:
-- the ingest writer adds the row with auto = true in the transaction that
-- stores its first points). The id is the contract's device id. tags are
-- short labels (a GIN index answers ?tag=); metadata is free JSON.
-- Listing pages through the primary key (keyset pagination: a cursor is
-- the last id of a page, so rows added meanwhile never shift a page).
--
-- api_keys: the secret of a key is never stored, only the hex SHA-256 of
-- it (fl_auth.c); scopes are 'read', 'write', 'admin'.

CREATE TABLE devices (
    id         text        PRIMARY KEY
                           CHECK (id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name       text        NOT NULL DEFAULT '',
    type       text        NOT NULL DEFAULT '',
    tags       text[]      NOT NULL DEFAULT '{}',
    metadata   jsonb       NOT NULL DEFAULT '{}',
    auto       boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX devices_type ON devices (type, id);
CREATE INDEX devices_tags ON devices USING gin (tags);
CREATE INDEX devices_name ON devices (name text_pattern_ops);

CREATE TABLE api_keys (
    id         text        PRIMARY KEY,
    name       text        NOT NULL DEFAULT '',
    scopes     text[]      NOT NULL,
    hash       text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- a device as the API shows it (times in RFC 3339, UTC, milliseconds)
CREATE FUNCTION fleetd_device_json(d devices) RETURNS jsonb
LANGUAGE sql STABLE AS $fl$
    SELECT jsonb_build_object(
        'id', d.id, 'name', d.name, 'type', d.type, 'tags', to_jsonb(d.tags),
        'metadata', d.metadata, 'auto', d.auto,
        'created_at', to_char(d.created_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'updated_at', to_char(d.updated_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
$fl$;
