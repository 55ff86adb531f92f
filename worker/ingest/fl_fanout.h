/*
 * fl_fanout.h - a telemetry message's way to the dashboards: its newest
 * values into the device's shadow, each of its points published on the
 * device's channel and pushed on its resume list under a new id
 * (fl_shadow.h has the layout). Two Redis scripts do it, built from the
 * Lua pieces here:
 *
 *   fl_fanout_append_lua  the native intake's (fl_mqttc.c): appends the
 *                         messages of a socket read to the stream (and
 *                         their dedup records), and fans out the
 *                         telemetry among them in the same call - the
 *                         stream entry gets the field f = 1 so that the
 *                         consumer does not fan it out again;
 *   fl_ingest.c shadow_lua  the consumer's, per chunk of the stream, for
 *                         what was not fanned out at append: state, and
 *                         messages appended by the paho intake (TLS
 *                         brokers), too big to parse on the loop
 *                         (ingest.parse_inline_max), or that the intake's
 *                         parse refused (the consumer dead-letters them).
 *
 * Why at append: a message then reaches a dashboard two hops sooner (no
 * wait for the consumer's read and its own script call), and a stalled
 * PostgreSQL holds nothing back. The ids still grow in the order messages
 * are published, whichever script published them (both take the next id
 * from {prefix}wsid, atomically), so resume keeps its guarantees.
 *
 * A point's time is decided where it is stored: without "ts" (or with a
 * relative SenML time) it is the arrival time that the consumer reads
 * from the stream entry id, MS * 1000 + SEQ microseconds (fl_ingest.c,
 * "Time of arrival"). The intake parses before it has that id, so it
 * sends such a point's time as an offset from the arrival ("r"), and the
 * script adds the arrival it reads from the id its XADD returned: the
 * dashboard, the shadow and the stored row show the same time. The
 * script likewise drops the points later than arrival +
 * limits.max_clock_skew, as the consumer does (fl_telemetry_cut); points
 * older than the retention are dropped by the intake against its own
 * clock (the consumer's, a moment later, may keep one more point at that
 * edge in the table, never one fewer on a dashboard than stored).
 */
#ifndef FL_FANOUT_H
#define FL_FANOUT_H

#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#include "fl_config.h"
#include "fl_enc.h"
#include "fl_payload.h"

/* A shadow's and a resume list's TTL is set again when TTL_SLACK-th of
 * it has passed; a resume list is trimmed back to ws.resume_keep when it
 * has grown by KEEP_SLACK-th more (see FL_FANOUT_LUA). */
#define FL_FANOUT_TTL_SLACK  64
#define FL_FANOUT_KEEP_SLACK 4

/*
 * Lua, to prepend to a script (after FL_DELTA_LUA if that is used):
 *
 * fl_ctx(ttl, rttl, keep, nowms): the context of fl_put - the shadow TTL
 *   and the resume list TTL in ms (strings as passed), ws.resume_keep, and
 *   the TTL periods nowms (Redis's clock in ms) falls in, eb and rb: a
 *   key's TTL is set again when the period its _e / _r field names is
 *   over, at most TTL / FL_FANOUT_TTL_SLACK after it was last set, by a
 *   string comparison (no number parsed per message).
 * fl_later(s, o): whether time s (ms, a string) is later than o (a string
 *   or nil/false).
 * fl_tmax(key, seen, mt): the shadow's _t (the newest t:NAME it holds, at
 *   least) as a number: mt when given; else the newest t: field, read
 *   (once per device, then _t is kept) when the shadow exists (its
 *   last_seen seen is given), -1 when it does not.
 * fl_t13(mx): _t as written: 13 digits for any time up to 2286, which the
 *   intake compares as text; times before 2001 raised to 10^12 (_t only
 *   has to be at least every t:).
 * fl_newer(key, seen, m, a, n): of n metrics m[a], m[a+1], m[a+2]
 *   (name, time in ms, JSON value) of shadow hash key, the fields to set
 *   (each metric newer than the one stored, the newest of m per name,
 *   and _t; last_seen when seen, ms as a string, is newer); returns them
 *   and the hash's _e and _r.
 * fl_put(c, key, set, del, ex, rx, rk, ch, msgs): HDEL del, HSET set (and
 *   _e / _r when the TTLs are refreshed), PEXPIRE key when due; PUBLISH
 *   each of msgs on ch and push them on resume list rk, trimmed lazily,
 *   its TTL set when due.
 */
#define FL_FANOUT_LUA                                                          \
    "local function fl_ctx(ttl, rttl, keep, nowms)\n"                          \
    "  local et = math.max(1, math.floor(tonumber(ttl) / " FL_STR(             \
        FL_FANOUT_TTL_SLACK) "))\n"                                            \
    "  local rt = math.max(1, math.floor(tonumber(rttl) / " FL_STR(            \
        FL_FANOUT_TTL_SLACK) "))\n"                                            \
    "  return {ttl = ttl, rttl = rttl, keep = keep,\n"                         \
    "    eb = string.format('%d', math.floor(nowms / et)),\n"                  \
    "    rb = string.format('%d', math.floor(nowms / rt)),\n"                  \
    "    slack = math.max(1, math.floor(keep / " FL_STR(                       \
        FL_FANOUT_KEEP_SLACK) "))}\n"                                          \
    "end\n"                                                                    \
    "local function fl_later(s, o)\n"                                          \
    "  if not o then return true end\n"                                        \
    "  if #s == #o then return s > o end\n"                                    \
    "  return tonumber(s) > (tonumber(o) or -1)\n"                             \
    "end\n"                                                                    \
    "local function fl_tmax(key, seen, mt)\n"                                  \
    "  if mt then return tonumber(mt) or -1 end\n"                             \
    "  local mx = -1\n"                                                        \
    "  if seen then\n"                                                         \
    "    local all = redis.call('HGETALL', key)\n"                             \
    "    for i = 1, #all, 2 do\n"                                              \
    "      if string.sub(all[i], 1, 2) == 't:' then\n"                         \
    "        mx = math.max(mx, tonumber(all[i + 1]) or -1)\n"                  \
    "      end\n"                                                              \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  return mx\n"                                                            \
    "end\n"                                                                    \
    "local function fl_t13(mx)\n"                                              \
    "  return string.format('%d', math.max(mx, " FL_STR(                       \
        FL_FANOUT_MS_MIN) "))\n"                                               \
    "end\n"                                                                    \
    "local function fl_newer(key, seen, m, a, n)\n"                            \
    "  local f = {'last_seen', '_e', '_r', '_t'}\n"                            \
    "  for i = a, a + 3 * n - 1, 3 do f[#f + 1] = 't:' .. m[i] end\n"          \
    "  local cur = redis.call('HMGET', key, unpack(f))\n"                      \
    "  local set, best = {}, {}\n"                                             \
    "  local mx = n > 0 and fl_tmax(key, cur[1], cur[4]) or -1\n"              \
    "  for j = 0, n - 1 do\n"                                                  \
    "    local i = a + 3 * j\n"                                                \
    "    local k, ts = m[i], tonumber(m[i + 1])\n"                             \
    "    local old = best[k] or tonumber(cur[j + 5] or '-1')\n"                \
    "    if ts > mx then mx = ts end\n"                                        \
    "    if ts >= old then\n"                                                  \
    "      best[k] = ts\n"                                                     \
    "      set[#set + 1] = 'v:' .. k; set[#set + 1] = m[i + 2]\n"              \
    "      set[#set + 1] = 't:' .. k; set[#set + 1] = m[i + 1]\n"              \
    "    end\n"                                                                \
    "  end\n"                                                                  \
    "  if n > 0 then set[#set + 1] = '_t'; set[#set + 1] = fl_t13(mx) end\n"   \
    "  if fl_later(seen, cur[1]) then\n"                                       \
    "    set[#set + 1] = 'last_seen'; set[#set + 1] = seen\n"                  \
    "  end\n"                                                                  \
    "  return set, cur[2], cur[3]\n"                                           \
    "end\n"                                                                    \
    "local function fl_put(c, key, set, del, ex, rx, rk, ch, msgs)\n"          \
    "  local rfresh = #msgs > 0 and c.keep > 0 and rx ~= c.rb\n"               \
    "  local efresh = ex ~= c.eb\n"                                            \
    "  if rfresh then set[#set + 1] = '_r'; set[#set + 1] = c.rb end\n"        \
    "  if efresh then set[#set + 1] = '_e'; set[#set + 1] = c.eb end\n"        \
    "  if #del > 0 then redis.call('HDEL', key, unpack(del)) end\n"            \
    "  if #set > 0 then redis.call('HSET', key, unpack(set)) end\n"            \
    "  if efresh then redis.call('PEXPIRE', key, c.ttl) end\n"                 \
    "  for i = 1, #msgs do redis.call('PUBLISH', ch, msgs[i]) end\n"           \
    "  if #msgs > 0 and c.keep > 0 then\n"                                     \
    "    local len = redis.call('LPUSH', rk, unpack(msgs))\n"                  \
    "    if len > c.keep + c.slack then\n"                                     \
    "      redis.call('LTRIM', rk, 0, c.keep - 1)\n"                           \
    "    end\n"                                                                \
    "    if rfresh or len == #msgs then redis.call('PEXPIRE', rk, c.rttl) "    \
    "end\n"                                                                    \
    "  end\n"                                                                  \
    "end\n"

/* The times the intake sends as text ("A", fl_fanout_message): 13 digits,
 * 2001-09-09 to 2286-11-20, so that the script compares them as strings. */
#define FL_FANOUT_MS_MIN 1000000000000
#define FL_FANOUT_MS_MAX 9999999999999

#define FL_STR_(x) #x
#define FL_STR(x)  FL_STR_(x)

/*
 * The intake's script. KEYS[1] the ingest stream, KEYS[2] the intake's
 * dedup hash, KEYS[3] the id counter {prefix}wsid. ARGV[1] the stream's
 * MAXLEN (~), ARGV[2] the dedup hash's TTL in ms or "" (not due),
 * ARGV[3] the shadow key prefix, ARGV[4] redis.shadow_ttl in ms, ARGV[5]
 * the resume list prefix, ARGV[6] ws.resume_keep, ARGV[7] ws.resume_ttl
 * in ms, ARGV[8] limits.max_clock_skew in us, ARGV[9] the number of
 * messages; then per message, in delivery order (FL_FANOUT_MSG_ARGS):
 *   topic, payload, rx (arrival ms at fleetd), record field and value
 *   ("" "": none), then what fl_fanout_message() built: device ("" = not
 *   fanned out here), channel, na, and na more.
 * The records of the call's messages are written by one HSET at the end.
 * Returns {failed, last failure, published, r1, r2, ...}: the points of
 * the messages whose fan-out failed (the messages are in the stream all
 * the same, marked f = 1: not shown live, their shadow not updated), the
 * telemetry messages (points) the fan-outs that succeeded published, and
 * per message
 * appended its entry id, or "U" + error when its record was not written;
 * a message whose XADD failed ends the list with "!" + error, and the
 * messages after it were not appended.
 *
 * What it costs Redis is mostly the calls it makes (XADD, HMGET, HSET,
 * PUBLISH, LPUSH per fanned message): the Lua around them is kept to
 * reading prepared arguments - field names, the message's JSON around
 * its id and time, the time in ms, the HSET as it stands - that fleetd
 * builds on its side. A shadow's _t holds (at least) the newest time of
 * its metrics, so that a message not older reads 4 fields and compares
 * one time as text; an older one, a batch or a time the script checks
 * reads every name's time and compares them as numbers.
 */
extern const char fl_fanout_append_lua[];
#define FL_FANOUT_APPEND_ARGV 9
#define FL_FANOUT_MSG_ARGS    5 /* before fl_fanout_message()'s */

/* A point at most max_clock_skew - this much past fleetd's clock goes as
 * "A" (its time in ms, no skew check in the script): what Redis's clock
 * may be behind fleetd's without a point past the skew being shown. */
#define FL_FANOUT_CLOCK_MARGIN_US (60 * 1000000LL)

/* The SHA1 of fl_fanout_append_lua in hex, for EVALSHA. */
void fl_fanout_sha(char out[41]);

/*
 * The head that the replies of both shadow/fan-out scripts (the intake's
 * fl_fanout_append_lua and the consumer's) start with:
 * {failed, last failure, published} - the points (a state message counts
 * one) whose shadow update and fan-out failed, the last error, the points
 * published. fl_fanout_reply_head() reads it into *failed and *published
 * and logs failures (a device's shadow or resume list key holding another
 * type, say: the messages are stored all the same) at most once per
 * FL_FANOUT_LOG_EVERY_MS per l, naming the caller (where). Returns 0, or
 * -1 when reply does not start with such a head.
 */
#define FL_FANOUT_REPLY_HEAD   3
#define FL_FANOUT_LOG_EVERY_MS 10000
typedef struct {
    int64_t  logged_at;
    uint64_t quiet; /* points not logged since */
} fl_fanout_log_t;
int fl_fanout_reply_head(const redisReply *reply, fl_fanout_log_t *l,
                         const char *where, uint64_t *failed,
                         uint64_t *published);

/* The payload limits of the consumer and the intake (from cf). */
void fl_fanout_limits(fl_payload_limits_t *lim, const fl_config_t *cf);

/* A metric's value as JSON. */
void fl_fanout_metric_json(fl_sbuf_t *b, const fl_metric_t *m);

/*
 * The fan-out part of one message's arguments to fl_fanout_append_lua,
 * appended to args: device, channel, na, then na more -
 *   the message's JSON from the end of its id to its time,
 *     '","device":ID,"ts":';
 *   np, then per point: "A" and its time in ms (13 digits, surely within
 *     the skew, FL_FANOUT_CLOCK_MARGIN_US), "a" and its time in us, or "r"
 *     and the offset from the arrival in us; the JSON after its time,
 *     ',"values":{...}}'; nm, and per metric "v:NAME", its JSON value,
 *     "t:NAME" and T (the point's time in ms for "A", else "");
 *   "_t", T of the last point, "last_seen", seen.
 * So a single point's "v:", value, "t:", T ... "_t", T, "last_seen",
 * seen are the HSET of the script's common case as they stand.
 * t holds the points left after the retention cut; now_us is the time the
 * payload was parsed at, skew_us limits.max_clock_skew, seen the arrival
 * in ms (a string). With t NULL (nothing to fan out here) the three head
 * arguments are empty / 0.
 */
void fl_fanout_message(fl_resp_t *args, const char *device,
                       const fl_telemetry_t *t, int64_t now_us,
                       int64_t skew_us, const char *channel,
                       const char *seen);

#endif
