/*
 * fl_shadow.h - the device shadow in Redis, as the ingest consumer writes
 * it and the API reads it. One place for the key layout and for the
 * desired-state delta, which both sides compute.
 *
 *   {prefix}shadow:{id}   hash, TTL redis.shadow_ttl, refreshed on every
 *                         update (fl_ingest.c):
 *       v:{metric}        the newest value, JSON text
 *       t:{metric}        its time, epoch ms
 *       r:{key}           reported state, JSON text
 *       last_seen         arrival of the newest message, epoch ms
 *       _t                at least the newest t:{metric}, epoch ms (13
 *                         digits from 2001: the intake compares a reading
 *                         with it as text, fl_fanout.h)
 *       _e, _r            the TTL period in which the hash's and the
 *                         resume list's TTL were last set (fl_fanout.h)
 *   {prefix}recent:{id}   list, the device's last ws.resume_keep
 *                         telemetry messages in their WebSocket form,
 *                         newest first, TTL ws.resume_ttl after the
 *                         newest (for WebSocket resume, worker/ws/)
 *   {prefix}wsid          string, the last telemetry message id given
 *                         (fl_ingest.c shadow_lua)
 *   {prefix}tele:{shard}  Pub/Sub channel of every telemetry message in
 *                         its WebSocket form (fl_shadow_shard)
 *   {prefix}desired:{id}  hash, no TTL (desired state must wait for a
 *                         sleeping device however long it sleeps):
 *       d:{key}           desired value, JSON text
 *       _delta            the delta last published on
 *                         devices/{id}/desired
 *
 * Values are compared as JSON text. Both sides print them with cJSON
 * (the parser re-prints what a device sent, the API what an operator
 * sent), so equal numbers, strings and booleans have equal text; objects
 * and arrays compare by their text, key order included.
 *
 * The delta is the desired keys whose value differs from the reported
 * one (a key not reported at all differs), as one JSON object with the
 * keys in byte order. Whenever it changes - an operator sets desired
 * state, or a device reports state - fleetd publishes it on
 * devices/{id}/desired, QoS 1, retained, so a device that was asleep gets
 * it when it connects; an empty delta publishes an empty retained
 * message, which clears it.
 */
#ifndef FL_SHADOW_H
#define FL_SHADOW_H

#include <hiredis/hiredis.h>
#include <stddef.h>
#include <stdint.h>

#include "fl_enc.h"

/* Publish device's delta (JSON text, len bytes) on devices/{id}/desired,
 * QoS 1, retained; "{}" clears the retained message. Logged, not
 * reported, when MQTT is not connected: the next change publishes the
 * delta again. */
void fl_shadow_publish_delta(const char *device, const char *delta, size_t len);

/* The fan-out channel {prefix}tele:N of a device: N = FNV-1a of its id
 * modulo redis.channel_shards. */
uint32_t fl_shadow_shard(const char *device, int shards);

/* An HGETALL reply's [field, value, ...] (or any array reply's
 * elements) as owned NUL-terminated strings: a reply lives only as long
 * as its callback. */
typedef struct {
    char  **f;
    size_t *len;
    size_t  n; /* strings (twice the fields of a hash) */
} fl_kv_t;

/* FL_ERROR when rep is not an array (an error or no reply). */
int  fl_kv_from(fl_kv_t *kv, const redisReply *rep);
void fl_kv_free(fl_kv_t *kv);

/*
 * A device's state as GET /api/v1/devices/{id}/state answers it (and the
 * WebSocket snapshot carries it), from its shadow and desired hashes:
 *
 *   {"device": id, "ts": newest value time | null, "online": bool,
 *    "last_seen": ms | null, "values": {metric: value},
 *    "value_ts": {metric: ms}, "reported": {...}, "desired": {...},
 *    "delta": {...}}
 *
 * Written without a JSON tree: the values are JSON text already.
 */
void fl_shadow_state_json(fl_sbuf_t *b, const char *device,
                          const fl_kv_t *shadow, const fl_kv_t *desired,
                          int64_t online_window_ms);

/*
 * Lua, to prepend to a script: fl_delta(dkey, skey) computes the delta of
 * desired hash dkey against shadow hash skey; when it differs from the
 * stored _delta it stores it and returns it, else returns false.
 */
#define FL_DELTA_LUA                                                           \
    "local function fl_delta(dkey, skey)\n"                                    \
    "  local d = redis.call('HGETALL', dkey)\n"                                \
    "  local ks, vs = {}, {}\n"                                                \
    "  for i = 1, #d, 2 do\n"                                                  \
    "    if string.sub(d[i], 1, 2) == 'd:' then\n"                             \
    "      local k = string.sub(d[i], 3)\n"                                    \
    "      ks[#ks + 1] = k; vs[k] = d[i + 1]\n"                                \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  table.sort(ks)\n"                                                       \
    "  local parts = {}\n"                                                     \
    "  if #ks > 0 then\n"                                                      \
    "    local f = {}\n"                                                       \
    "    for i = 1, #ks do f[i] = 'r:' .. ks[i] end\n"                         \
    "    local r = redis.call('HMGET', skey, unpack(f))\n"                     \
    "    for i = 1, #ks do\n"                                                  \
    "      if r[i] ~= vs[ks[i]] then\n"                                        \
    "        parts[#parts + 1] = cjson.encode(ks[i]) .. ':' .. vs[ks[i]]\n"    \
    "      end\n"                                                              \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  local delta = '{' .. table.concat(parts, ',') .. '}'\n"                 \
    "  local old = redis.call('HGET', dkey, '_delta')\n"                       \
    "  if old == delta or (not old and delta == '{}') then return false end\n" \
    "  redis.call('HSET', dkey, '_delta', delta)\n"                            \
    "  return delta\n"                                                         \
    "end\n"

#endif
