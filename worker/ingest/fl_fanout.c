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
     * arguments from ARGV[a] on (see fl_fanout_message) */
    "local function fan(x, seen, dev, ch, a)\n"
    "  local tail, nf = ARGV[a], tonumber(ARGV[a + 1])\n"
    "  local fi, key = a + 2, spfx .. dev\n"
    "  local cur = redis.call('HMGET', key, 'last_seen', '_e', '_r',\n"
    "    unpack(ARGV, fi, fi + nf - 1))\n"
    "  local np, b = tonumber(ARGV[fi + nf]), fi + nf + 1\n"
    "  local arr, set, best, msgs = nil, {}, {}, {}\n"
    "  for j = 1, np do\n"
    "    local t, tn, nm = ARGV[b + 1], nil, tonumber(ARGV[b + 3])\n"
    "    if ARGV[b] == 'A' then\n"
    "      tn = tonumber(t)\n"
    "    else\n"
    "      if arr == nil then\n"
    "        local ms, sq = string.match(x, '^(%d+)-(%d+)$')\n"
    "        arr = tonumber(ms) * 1000 + tonumber(sq)\n"
    "      end\n"
    "      local us = tonumber(t)\n"
    "      if ARGV[b] == 'r' then us = arr + us end\n"
    "      if us <= arr + skew then\n"
    "        tn = math.floor(us / 1000)\n"
    "        t = string.format('%d', tn)\n"
    "      end\n"
    "    end\n"
    "    if tn ~= nil then\n"
    "      if id == nil then\n"
    "        id = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), "
    "now - 1)\n"
    "      end\n"
    "      id = id + 1\n"
    "      msgs[#msgs + 1] = '{\"type\":\"telemetry\",\"id\":\"' ..\n"
    "        string.format('%d', id) .. tail .. t .. ARGV[b + 2]\n"
    "      for i = b + 4, b + 1 + 3 * nm, 3 do\n"
    "        local k = tonumber(ARGV[i])\n"
    "        if tn >= (best[k] or tonumber(cur[k + 3] or '-1')) then\n"
    "          best[k] = tn\n"
    "          set[#set + 1] = ARGV[i + 1]; set[#set + 1] = ARGV[i + 2]\n"
    "          set[#set + 1] = ARGV[fi + k - 1]; set[#set + 1] = t\n"
    "        end\n"
    "      end\n"
    "    end\n"
    "    b = b + 4 + 3 * nm\n"
    "  end\n"
    "  if #msgs == 0 then return end\n"
    "  if tonumber(cur[1] or '0') < tonumber(seen) then\n"
    "    set[#set + 1] = 'last_seen'; set[#set + 1] = seen\n"
    "  end\n"
    "  fl_put(c, key, set, {}, cur[2], cur[3], rpfx .. dev, ch, msgs)\n"
    "end\n"
    "local out, a = {0, ''}, " FL_STR(FL_FANOUT_APPEND_ARGV) " + 1\n"
    "local rec, rix = {}, {}\n"
    "for k = 1, tonumber(ARGV[" FL_STR(FL_FANOUT_APPEND_ARGV) "]) do\n"
    "  local tp, p, r, rf = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]\n"
    "  local dev, ch, na = ARGV[a + 5], ARGV[a + 6], tonumber(ARGV[a + 7])\n"
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
    "    rec[#rec + 1] = rf; rec[#rec + 1] = ARGV[a + 4]\n"
    "    rix[#rix + 1] = #out\n"
    "  end\n"
    "  if dev ~= '' then\n"
    "    local ok, err = pcall(fan, x, r, dev, ch, a + 8)\n"
    "    if not ok then\n"
    "      out[1] = out[1] + 1\n"
    "      out[2] = tostring(type(err) == 'table' and err.err or err)\n"
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

/* The index (1-based) of name among the message's distinct metric names,
 * added when new: open addressing in h (cap a power of 2, > names). */
static int name_index(const char **names, int *n, int *h, size_t cap,
                      const char *name)
{
    size_t i = (size_t)fl_fnv1a(name, strlen(name)) & (cap - 1);

    for (; h[i]; i = (i + 1) & (cap - 1)) {
        if (strcmp(names[h[i] - 1], name) == 0)
            return h[i];
    }
    names[*n] = name;
    h[i] = ++*n;
    return h[i];
}

void fl_fanout_message(fl_resp_t *args, const char *device,
                       const fl_telemetry_t *t, int64_t now_us,
                       int64_t skew_us, const char *channel)
{
    fl_resp_t    head = {0}, pts = {0};
    fl_sbuf_t    js = {0};
    size_t       total = 0, cap = 8;
    const char **names;
    int         *h, n = 0;

    if (t == NULL || t->npoints == 0) {
        fl_resp_arg(args, "", 0);
        fl_resp_arg(args, "", 0);
        fl_resp_i64(args, 0);
        return;
    }
    for (size_t p = 0; p < t->npoints; p++)
        total += t->points[p].nmetrics;
    while (cap <= 2 * total)
        cap *= 2;
    /* one block: the distinct names in order, then the hash slots */
    names = fl_calloc(1, total * sizeof(*names) + cap * sizeof(*h));
    h = (int *)(names + total);
    /* the points, each metric by the index of its name ... */
    fl_resp_i64(&pts, (int64_t)t->npoints);
    for (size_t p = 0; p < t->npoints; p++) {
        const fl_point_t *pt = &t->points[p];
        int               rel = pt->nmetrics > 0 && pt->metrics[0].rel;

        if (rel) {
            fl_resp_str(&pts, "r");
            fl_resp_i64(&pts, pt->ts_us - now_us);
        } else if (pt->ts_us <= now_us + skew_us - FL_FANOUT_CLOCK_MARGIN_US) {
            /* surely not past the skew: the time in ms, as shown */
            fl_resp_str(&pts, "A");
            fl_resp_i64(&pts, pt->ts_us >= 0 ? pt->ts_us / 1000
                                               : -((999 - pt->ts_us) / 1000));
        } else {
            fl_resp_str(&pts, "a");
            fl_resp_i64(&pts, pt->ts_us);
        }
        js.len = 0;
        fl_sb_lit(&js, ",\"values\":{");
        for (size_t m = 0; m < pt->nmetrics; m++) {
            if (m > 0)
                fl_sb_lit(&js, ",");
            fl_sb_jstr(&js, pt->metrics[m].name);
            fl_sb_lit(&js, ":");
            fl_fanout_metric_json(&js, &pt->metrics[m]);
        }
        fl_sb_lit(&js, "}}");
        fl_resp_arg(&pts, js.p, js.len);
        fl_resp_i64(&pts, (int64_t)pt->nmetrics);
        for (size_t m = 0; m < pt->nmetrics; m++) {
            const char *name = pt->metrics[m].name;

            fl_resp_i64(&pts, name_index(names, &n, h, cap, name));
            js.len = 0;
            fl_sb_lit(&js, "v:");
            fl_sb_put(&js, name, strlen(name));
            fl_resp_arg(&pts, js.p, js.len);
            js.len = 0;
            fl_fanout_metric_json(&js, &pt->metrics[m]);
            fl_resp_arg(&pts, js.p, js.len);
        }
    }
    /* ... after the shadow fields to read, one per distinct name */
    js.len = 0;
    fl_sb_lit(&js, "\",\"device\":");
    fl_sb_jstr(&js, device);
    fl_sb_lit(&js, ",\"ts\":");
    fl_resp_arg(&head, js.p, js.len);
    fl_resp_i64(&head, n);
    for (int i = 0; i < n; i++) {
        js.len = 0;
        fl_sb_lit(&js, "t:");
        fl_sb_put(&js, names[i], strlen(names[i]));
        fl_resp_arg(&head, js.p, js.len);
    }
    fl_resp_str(args, device);
    fl_resp_str(args, channel);
    fl_resp_i64(args, head.argc + pts.argc);
    fl_resp_append(args, &head);
    fl_resp_append(args, &pts);
    fl_resp_free(&head);
    fl_resp_free(&pts);
    fl_sb_free(&js);
    free(names);
}
