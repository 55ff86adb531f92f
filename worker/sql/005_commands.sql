-- Migration 5, commands: commands sent to devices through the API
-- (worker/api/fl_commands.c).
--
-- One row per POST /api/v1/devices/{id}/commands. The id is a UUIDv7 made
-- by fleetd (time-ordered: the list pages through (device_id, id) newest
-- first; COLLATE "C" so that text order is byte order). body is what the
-- device gets, without the "id" fleetd adds.
--
-- status:
--   pending  recorded and handed to the MQTT client
--   sent     the broker acknowledged the QoS 1 publish (PUBACK)
--   acked    the device answered on devices/{id}/commands/ack, ok true
--   failed   the device answered with ok false, or the publish failed
--            (error says why; answered_at is then null)
--   expired  expires_at (created + ttl_s) passed without an answer
-- A device's answer counts while answered_at is null: also after
-- expired (it came late, but the device did run the command) and after a
-- failed publish that reached the device anyway. The first answer wins.

CREATE TABLE commands (
    id          text COLLATE "C" PRIMARY KEY,
    device_id   text        NOT NULL,
    body        jsonb       NOT NULL,
    status      text        NOT NULL DEFAULT 'pending'
                            CHECK (status IN ('pending', 'sent', 'acked',
                                              'failed', 'expired')),
    result      jsonb,
    error       text,
    ttl_s       integer     CHECK (ttl_s > 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    sent_at     timestamptz,
    answered_at timestamptz,
    expires_at  timestamptz
);
CREATE INDEX commands_device ON commands (device_id, id);
-- what the expiry job looks at: open commands with a deadline
CREATE INDEX commands_open ON commands (expires_at)
    WHERE status IN ('pending', 'sent');
-- what the retention job deletes
CREATE INDEX commands_created ON commands (created_at);

-- a command as the API shows it (times in RFC 3339, UTC, milliseconds)
CREATE FUNCTION fleetd_command_json(c commands) RETURNS jsonb
LANGUAGE sql STABLE AS $fl$
    SELECT jsonb_build_object(
        'id', c.id, 'device', c.device_id, 'status', c.status,
        'body', c.body, 'ttl_s', c.ttl_s, 'result', c.result,
        'error', c.error,
        'created_at', to_char(c.created_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'sent_at', to_char(c.sent_at AT TIME ZONE 'UTC',
                           'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'answered_at', to_char(c.answered_at AT TIME ZONE 'UTC',
                               'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
        'expires_at', to_char(c.expires_at AT TIME ZONE 'UTC',
                              'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
$fl$;
