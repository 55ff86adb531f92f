/*
 * fl_fanout.c - the intake's append-and-fan-out script and the arguments
 * it takes (fl_fanout.h).
 */
#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

#include "fl_fanout.h"

const char fl_fanout_append_lua[] =
    FL_FANOUT_LUA
    "local maxlen, dttl, spfx = ARGV[1], ARGV[2], ARGV[3]\n"
    "local rpfx, skew = ARGV[5], tonumber(ARGV[8])\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])\n"
    "local c = fl_ctx(ARGV[4], ARGV[7], tonumber(ARGV[6]), "
    "math.floor(now / 1000))\n"
    "local id = nil\n"
    /* the telemetry of one message, its XADD id x, arrival ms seen; its
     * points from ARGV[a] on (see fl_fanout_message) */
    "local function fan(x, seen, dev, dj, ch, a)\n"
    "  local ms, seq = string.match(x, '^(%d+)-(%d+)$')\n"
    "  local arr = tonumber(ms) * 1000 + tonumber(seq)\n"
    "  local np, m, pts = tonumber(ARGV[a]), {}, {}\n"
    "  a = a + 1\n"
    "  for j = 1, np do\n"
    "    local ts, nm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 3])\n"
    "    if ARGV[a] == 'r' then ts = arr + ts end\n"
    "    if ts <= arr + skew then\n"
    "      local t = string.format('%.0f', math.floor(ts / 1000))\n"
    "      pts[#pts + 1] = t .. ',\"values\":' .. ARGV[a + 2] .. '}'\n"
    "      for i = a + 4, a + 3 + 2 * nm, 2 do\n"
    "        m[#m + 1] = ARGV[i]; m[#m + 1] = t; m[#m + 1] = ARGV[i + 1]\n"
    "      end\n"
    "    end\n"
    "    a = a + 4 + 2 * nm\n"
    "  end\n"
    "  if #pts == 0 then return end\n"
    "  local key = spfx .. dev\n"
    "  local set, ex, rx = fl_newer(key, seen, m, 1, #m / 3)\n"
    "  if id == nil then\n"
    "    id = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now - 1)\n"
    "  end\n"
    "  local msgs = {}\n"
    "  for i = 1, #pts do\n"
    "    id = id + 1\n"
    "    msgs[i] = '{\"type\":\"telemetry\",\"id\":\"' ..\n"
    "      string.format('%.0f', id) .. '\",' .. dj .. '\"ts\":' .. pts[i]\n"
    "  end\n"
    "  fl_put(c, key, set, {}, ex, rx, rpfx .. dev, ch, msgs)\n"
    "end\n"
    "local out, a = {0, ''}, " FL_STR(FL_FANOUT_APPEND_ARGV) " + 1\n"
    "for k = 1, tonumber(ARGV[" FL_STR(FL_FANOUT_APPEND_ARGV) "]) do\n"
    "  local tp, p, r, rf, rv = ARGV[a], ARGV[a + 1], ARGV[a + 2], "
    "ARGV[a + 3], ARGV[a + 4]\n"
    "  local dev, dj, ch, na = ARGV[a + 5], ARGV[a + 6], ARGV[a + 7], "
    "tonumber(ARGV[a + 8])\n"
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
    "  local res = x\n"
    "  if rf ~= '' then\n"
    "    local h = redis.pcall('HSET', KEYS[2], rf, rv)\n"
    "    if type(h) == 'table' then res = 'U' .. tostring(h.err) end\n"
    "  end\n"
    "  out[#out + 1] = res\n"
    "  if dev ~= '' then\n"
    "    local ok, err = pcall(fan, x, r, dev, dj, ch, a + 9)\n"
    "    if not ok then\n"
    "      out[1] = out[1] + 1\n"
    "      out[2] = tostring(type(err) == 'table' and err.err or err)\n"
    "    end\n"
    "  end\n"
    "  a = a + 9 + na\n"
    "end\n"
    "if dttl ~= '' then redis.pcall('PEXPIRE', KEYS[2], dttl) end\n"
    "if id ~= nil then redis.call('SET', KEYS[3], string.format('%.0f', id)) "
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
                       const char *channel)
{
    fl_resp_t pts = {0};
    fl_sbuf_t js = {0};

    if (t == NULL || t->npoints == 0) {
        fl_resp_arg(args, "", 0);
        fl_resp_arg(args, "", 0);
        fl_resp_arg(args, "", 0);
        fl_resp_i64(args, 0);
        return;
    }
    fl_resp_i64(&pts, (int64_t)t->npoints);
    for (size_t p = 0; p < t->npoints; p++) {
        const fl_point_t *pt = &t->points[p];
        int               rel = pt->nmetrics > 0 && pt->metrics[0].rel;

        fl_resp_str(&pts, rel ? "r" : "a");
        fl_resp_i64(&pts, rel ? pt->ts_us - now_us : pt->ts_us);
        js.len = 0;
        fl_sb_lit(&js, "{");
        for (size_t m = 0; m < pt->nmetrics; m++) {
            if (m > 0)
                fl_sb_lit(&js, ",");
            fl_sb_jstr(&js, pt->metrics[m].name);
            fl_sb_lit(&js, ":");
            fl_fanout_metric_json(&js, &pt->metrics[m]);
        }
        fl_sb_lit(&js, "}");
        fl_resp_arg(&pts, js.p, js.len);
        fl_resp_i64(&pts, (int64_t)pt->nmetrics);
        for (size_t m = 0; m < pt->nmetrics; m++) {
            fl_resp_str(&pts, pt->metrics[m].name);
            js.len = 0;
            fl_fanout_metric_json(&js, &pt->metrics[m]);
            fl_resp_arg(&pts, js.p, js.len);
        }
    }
    fl_resp_str(args, device);
    js.len = 0;
    fl_sb_lit(&js, "\"device\":");
    fl_sb_jstr(&js, device);
    fl_sb_lit(&js, ",");
    fl_resp_arg(args, js.p, js.len);
    fl_resp_str(args, channel);
    fl_resp_i64(args, pts.argc);
    fl_resp_append(args, &pts);
    fl_resp_free(&pts);
    fl_sb_free(&js);
}
