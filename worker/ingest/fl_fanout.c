/*
 * fl_fanout.c - the intake's append-and-fan-out script and the arguments
 * it takes (fl_fanout.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "fl_core.h"
#include "fl_fanout.h"
#include "fl_log.h"

const char fl_fanout_append_lua[] =
    FL_FANOUT_LUA
    "local A = ARGV\n"
    "local maxlen, dttl, spfx = A[1], A[2], A[3]\n"
    "local rpfx, skew = A[5], tonumber(A[8])\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])\n"
    "local c = fl_ctx(A[4], A[7], tonumber(A[6]), math.floor(now / 1000))\n"
    "local id = nil\n"
    "local function nextid()\n"
    "  if id == nil then\n"
    "    id = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now - 1)\n"
    "  end\n"
    "  id = id + 1\n"
    "  return string.format('%d', id)\n"
    "end\n"
    /* any message: every point's metrics against the stored times of
     * their names (read here), the newest per name wins */
    "local function fan_all(x, seen, key, dev, ch, a, cur)\n"
    "  local tail, np, b = A[a], tonumber(A[a + 1]), a + 2\n"
    "  local f, pos = {}, {}\n"
    "  for j = 1, np do\n"
    "    local nm = tonumber(A[b + 3])\n"
    "    for q = b + 4, b + 3 + 4 * nm, 4 do\n"
    "      local n = A[q + 2]\n"
    "      if pos[n] == nil then f[#f + 1] = n; pos[n] = #f end\n"
    "    end\n"
    "    b = b + 4 + 4 * nm\n"
    "  end\n"
    "  local st = redis.call('HMGET', key, unpack(f))\n"
    "  local mx = fl_tmax(key, cur[1], cur[4])\n"
    "  local arr, set, best, msgs = nil, {}, {}, {}\n"
    "  b = a + 2\n"
    "  for j = 1, np do\n"
    "    local t, tn, nm = A[b + 1], nil, tonumber(A[b + 3])\n"
    "    if A[b] == 'A' then\n"
    "      tn = tonumber(t)\n"
    "    else\n"
    "      if arr == nil then\n"
    "        local ms, sq = string.match(x, '^(%d+)-(%d+)$')\n"
    "        arr = tonumber(ms) * 1000 + tonumber(sq)\n"
    "      end\n"
    "      local us = tonumber(t)\n"
    "      if A[b] == 'r' then us = arr + us end\n"
    "      if us <= arr + skew then\n"
    "        tn = math.floor(us / 1000)\n"
    "        t = string.format('%d', tn)\n"
    "      end\n"
    "    end\n"
    "    if tn ~= nil then\n"
    "      msgs[#msgs + 1] = '{\"type\":\"telemetry\",\"id\":\"' ..\n"
    "        nextid() .. tail .. t .. A[b + 2]\n"
    "      if tn > mx then mx = tn end\n"
    "      for q = b + 4, b + 3 + 4 * nm, 4 do\n"
    "        local n = A[q + 2]\n"
    "        if tn >= (best[n] or tonumber(st[pos[n]] or '-1')) then\n"
    "          best[n] = tn\n"
    "          set[#set + 1] = A[q]; set[#set + 1] = A[q + 1]\n"
    "          set[#set + 1] = n; set[#set + 1] = t\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    b = b + 4 + 4 * nm\n"
    "  end\n"
    "  if #msgs == 0 then return 0 end\n"
    "  set[#set + 1] = '_t'; set[#set + 1] = fl_t13(mx)\n"
    "  if fl_later(seen, cur[1]) then\n"
    "    set[#set + 1] = 'last_seen'; set[#set + 1] = seen\n"
    "  end\n"
    "  fl_put(c, key, set, {}, cur[2], cur[3], rpfx .. dev, ch, msgs)\n"
    "  return #msgs\n"
    "end\n"
    /* the telemetry of one message, its XADD id x, arrival ms seen; its
     * arguments from A[a] on (see fl_fanout_message). The common case -
     * one point, its time in ms, not older than the shadow's newest (_t,
     * compared as 13-digit text) - sets every metric: one HSET of the
     * arguments as they are, nothing parsed but nm */
    "local function fan(x, seen, dev, ch, a)\n"
    "  local key = spfx .. dev\n"
    "  local cur = redis.call('HMGET', key, 'last_seen', '_e', '_r', '_t')\n"
    "  local t, mt = A[a + 3], cur[4]\n"
    "  if A[a + 1] ~= '1' or A[a + 2] ~= 'A' or\n"
    "     (mt and (#mt ~= 13 or t < mt)) or (not mt and cur[1]) then\n"
    "    return fan_all(x, seen, key, dev, ch, a, cur)\n"
    "  end\n"
    "  local q = a + 6\n"
    "  local e = q + 4 * tonumber(A[a + 5]) + 1\n"
    "  if fl_later(seen, cur[1]) then e = e + 2 end\n"
    "  local m = '{\"type\":\"telemetry\",\"id\":\"' .. nextid() .. A[a] ..\n"
    "    t .. A[a + 4]\n"
    "  local rk = rpfx .. dev\n"
    "  if cur[2] ~= c.eb or (c.keep > 0 and cur[3] ~= c.rb) then\n"
    "    fl_put(c, key, {unpack(A, q, e)}, {}, cur[2], cur[3], rk, ch, {m})\n"
    "    return 1\n"
    "  end\n"
    "  redis.call('HSET', key, unpack(A, q, e))\n"
    "  redis.call('PUBLISH', ch, m)\n"
    "  if c.keep > 0 then\n"
    "    local len = redis.call('LPUSH', rk, m)\n"
    "    if len > c.keep + c.slack then\n"
    "      redis.call('LTRIM', rk, 0, c.keep - 1)\n"
    "    end\n"
    "    if len == 1 then redis.call('PEXPIRE', rk, c.rttl) end\n"
    "  end\n"
    "  return 1\n"
    "end\n"
    "local out, a = {0, '', 0}, " FL_STR(FL_FANOUT_APPEND_ARGV) " + 1\n"
    "local rec, rix = {}, {}\n"
    "for k = 1, tonumber(A[" FL_STR(FL_FANOUT_APPEND_ARGV) "]) do\n"
    "  local tp, p, r, rf = A[a], A[a + 1], A[a + 2], A[a + 3]\n"
    "  local dev, ch, na = A[a + 5], A[a + 6], tonumber(A[a + 7])\n"
    "  local x\n"
    "  if dev == '' then\n"
    "    x = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',\n"
    "      't', tp, 'p', p, 'r', r)\n"
    "  else\n"
    "    x = redis.pcall('XADD', KEYS[1], 'MAXLEN', '~', maxlen, '*',\n"
    "      't', tp, 'p', p, 'r', r, 'f', '1')\n"
    "  end\n"
    "  if type(x) ~= 'string' then\n"
    "    out[#out + 1] = '!' .. tostring(type(x) == 'table' and x.err or x)\n"
    "    break\n"
    "  end\n"
    "  out[#out + 1] = x\n"
    "  if rf ~= '' then\n"
    "    rec[#rec + 1] = rf; rec[#rec + 1] = A[a + 4]\n"
    "    rix[#rix + 1] = #out\n"
    "  end\n"
    "  if dev ~= '' then\n"
    "    local ok, v = pcall(fan, x, r, dev, ch, a + 8)\n"
    "    if ok then\n"
    "      out[3] = out[3] + v\n"
    "    else\n"
    "      out[1] = out[1] + tonumber(A[a + 9])\n"
    "      out[2] = tostring(type(v) == 'table' and v.err or v)\n"
    "    end\n"
    "  end\n"
    "  a = a + 8 + na\n"
    "end\n"
    /* the records of all the call's messages in one HSET */
    "if #rec > 0 then\n"
    "  local h = redis.pcall('HSET', KEYS[2], unpack(rec))\n"
    "  if type(h) == 'table' then\n"
    "    for i = 1, #rix do out[rix[i]] = 'U' .. tostring(h.err) end\n"
    "  end\n"
    "end\n"
    "if dttl ~= '' then redis.pcall('PEXPIRE', KEYS[2], dttl) end\n"
    "if id ~= nil then redis.call('SET', KEYS[3], string.format('%d', id)) "
    "end\n"
    "return out\n";

void fl_fanout_sha(char out[41])
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int  len = 0;

    out[0] = '\0';
    if (!EVP_Digest(fl_fanout_append_lua, strlen(fl_fanout_append_lua), md,
                    &len, EVP_sha1(), NULL) ||
        len != 20)
        return; /* "" : EVALSHA of nothing, NOSCRIPT, EVAL on reconnect */
    for (unsigned i = 0; i < len; i++)
        snprintf(out + 2 * i, 3, "%02x", md[i]);
}

int fl_fanout_reply_head(const redisReply *reply, fl_fanout_log_t *l,
                         const char *where, uint64_t *failed,
                         uint64_t *published)
{
    const redisReply *why;
    int64_t           now;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY ||
        reply->elements < FL_FANOUT_REPLY_HEAD ||
        reply->element[0]->type != REDIS_REPLY_INTEGER ||
        reply->element[2]->type != REDIS_REPLY_INTEGER ||
        reply->element[0]->integer < 0 || reply->element[2]->integer < 0)
        return -1;
    *failed = (uint64_t)reply->element[0]->integer;
    *published = (uint64_t)reply->element[2]->integer;
    if (*failed == 0)
        return 0;
    now = fl_now_ms();
    if (l->logged_at && now - l->logged_at < FL_FANOUT_LOG_EVERY_MS) {
        l->quiet += *failed;
        return 0;
    }
    why = reply->element[1];
    fl_warn("%s: the shadow update and fan-out of %" PRIu64 " point%s failed "
            "in redis: %s; stored all the same, not shown live%s",
            where, *failed, *failed == 1 ? "" : "s",
            why->type == REDIS_REPLY_STRING ? why->str : "?",
            l->quiet ? " (and earlier ones not logged)" : "");
    l->logged_at = now;
    l->quiet = 0;
    return 0;
}

void fl_fanout_limits(fl_payload_limits_t *lim, const fl_config_t *cf)
{
    fl_payload_limits_default(lim);
    lim->max_payload_bytes = (size_t)cf->limits.max_payload_bytes;
    lim->max_metrics = (size_t)cf->limits.max_metrics;
    lim->max_name_len = (size_t)cf->limits.max_name_bytes;
    lim->max_depth = cf->limits.max_depth;
    lim->max_batch = (size_t)cf->limits.max_batch;
    lim->max_string_bytes = (size_t)cf->limits.max_string_bytes;
    lim->max_future_ms = -1; /* per point: fl_telemetry_cut() */
}

void fl_fanout_metric_json(fl_sbuf_t *b, const fl_metric_t *m)
{
    switch (m->type) {
    case FL_METRIC_BOOL:
        if (m->b)
            fl_sb_lit(b, "true");
        else
            fl_sb_lit(b, "false");
        break;
    case FL_METRIC_STR: fl_sb_jstr(b, m->str ? m->str : ""); break;
    default: fl_sb_num(b, m->num); break;
    }
}

void fl_fanout_message(fl_resp_t *args, const char *device,
                       const fl_telemetry_t *t, int64_t now_us,
                       int64_t skew_us, const char *channel,
                       const char *seen)
{
    fl_resp_t body = {0}, quads = {0};
    fl_sbuf_t js = {0}, field = {0};
    char      tms[24] = "";

    if (t == NULL || t->npoints == 0) {
        fl_resp_arg(args, "", 0);
        fl_resp_arg(args, "", 0);
        fl_resp_i64(args, 0);
        return;
    }
    fl_sb_lit(&js, "\",\"device\":");
    fl_sb_jstr(&js, device);
    fl_sb_lit(&js, ",\"ts\":");
    fl_resp_arg(&body, js.p, js.len);
    fl_resp_i64(&body, (int64_t)t->npoints);
    for (size_t p = 0; p < t->npoints; p++) {
        const fl_point_t *pt = &t->points[p];
        int               rel = pt->nmetrics > 0 && pt->metrics[0].rel;
        int64_t           ms = pt->ts_us >= 0 ? pt->ts_us / 1000
                                              : -((999 - pt->ts_us) / 1000);

        tms[0] = '\0';
        if (rel) {
            fl_resp_str(&body, "r");
            fl_resp_i64(&body, pt->ts_us - now_us);
        } else if (pt->ts_us <= now_us + skew_us - FL_FANOUT_CLOCK_MARGIN_US &&
                   ms >= FL_FANOUT_MS_MIN && ms <= FL_FANOUT_MS_MAX) {
            /* surely not past the skew, 13 digits: the time in ms, as
             * shown, compared as text by the script */
            snprintf(tms, sizeof(tms), "%" PRId64, ms);
            fl_resp_str(&body, "A");
            fl_resp_str(&body, tms);
        } else {
            fl_resp_str(&body, "a");
            fl_resp_i64(&body, pt->ts_us);
        }
        /* the values object and the metrics' HSET arguments in one pass:
         * each value printed once, into the object, and the argument
         * taken from there; the object goes first */
        js.len = 0;
        quads.argc = 0;
        quads.body.len = 0;
        fl_sb_lit(&js, ",\"values\":{");
        for (size_t m = 0; m < pt->nmetrics; m++) {
            const char *name = pt->metrics[m].name;
            size_t      nlen = strlen(name), at;

            if (m > 0)
                fl_sb_lit(&js, ",");
            fl_sb_jstr(&js, name);
            fl_sb_lit(&js, ":");
            at = js.len;
            fl_fanout_metric_json(&js, &pt->metrics[m]);
            field.len = 0;
            fl_sb_lit(&field, "v:");
            fl_sb_put(&field, name, nlen);
            fl_resp_arg(&quads, field.p, field.len);
            fl_resp_arg(&quads, js.p + at, js.len - at);
            field.p[0] = 't';
            fl_resp_arg(&quads, field.p, field.len);
            fl_resp_str(&quads, tms);
        }
        fl_sb_lit(&js, "}}");
        fl_resp_arg(&body, js.p, js.len);
        fl_resp_i64(&body, (int64_t)pt->nmetrics);
        fl_resp_append(&body, &quads);
    }
    /* the tail of the single point's HSET (tms: the last point's) */
    fl_resp_str(&body, "_t");
    fl_resp_str(&body, tms);
    fl_resp_str(&body, "last_seen");
    fl_resp_str(&body, seen);
    fl_resp_str(args, device);
    fl_resp_str(args, channel);
    fl_resp_i64(args, body.argc);
    fl_resp_append(args, &body);
    fl_resp_free(&body);
    fl_resp_free(&quads);
    fl_sb_free(&js);
    fl_sb_free(&field);
}
