/*
 * redis_floor.c - what fleetd's append-and-fan-out costs Redis against
 * the floor its mandatory work sets, for bench/ingest-bench -R (issue 10).
 *
 * Drives one Redis with the traffic fleetd's native intake sends it at a
 * given rate - devsim's payloads from N devices, G messages per call -
 * in one of three ways, and reads what Redis spent (its CPU from /proc,
 * and INFO commandstats):
 *
 *   fleetd  fleetd's own script (worker/ingest/fl_fanout.c) with the
 *           arguments fleetd builds (fl_fanout_message), as fl_mqttc.c
 *           sends them: the figure to compare;
 *   mini    the floor of an atomic implementation: one script call per
 *           G messages making the same Redis calls (XADD, one HSET of
 *           the records, and per message HMGET of the shadow's
 *           last_seen, _e, _r and _t, HSET of every value with its time,
 *           _t and last_seen, PUBLISH and LPUSH of the message with its
 *           id) and nothing else - no comparison of times, no arrival,
 *           the newest-wins HSET unconditional. Correctness needs more
 *           (an older point must not overwrite a newer one: at least
 *           the shadow's newest time read), so no correct script costs
 *           less;
 *   pipe    the same commands sent plain, pipelined, no script at all:
 *           not atomic (two workers could interleave a device's
 *           read-then-write and publish ids out of order), so not an
 *           implementation - the lower bound of the commands alone.
 *
 * A consumer on a second connection reads the stream as fleetd's does
 * (XREADGROUP COUNT 1000 every 50 ms, XACK what it read), so that the
 * figures hold the whole of Redis's work per message, as ingest-bench's
 * fleetd step does. Keys are under PREFIX (default "floor:"), and the
 * stream is deleted at the start.
 *
 * Output: one line "RESULT mode= messages= calls= elapsed_s= rate=
 * redis_cpu_s= cpu_us_per_msg= cmd_us_per_msg=" (cmd_us: the time
 * Redis's commandstats count inside the commands, per message - without
 * EVALSHA itself, so cpu_us - cmd_us is what a mode costs around them:
 * Lua, protocol, network, the AOF).
 *
 * Usage: redis_floor -a HOST:PORT -P REDIS_PID -m fleetd|mini|pipe
 *        [-r RATE] [-d S] [-n DEVICES] [-g G] [-p PREFIX]
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>

#include "fl_enc.h"
#include "fl_fanout.h"
#include "fl_payload.h"

#define SHARDS 16
#define SKEW_US (300LL * 1000000)

static const char mini_lua[] =
    "local a, n, rec, id = 10, tonumber(ARGV[9]), {}, nil\n"
    "local tm = redis.call('TIME')\n"
    "local now = tonumber(tm[1]) * 1000000 + tonumber(tm[2])\n"
    "for k = 1, n do\n"
    "  local nf, nset = tonumber(ARGV[a + 6]), tonumber(ARGV[a + 7])\n"
    "  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 't',\n"
    "    ARGV[a], 'p', ARGV[a + 1], 'r', ARGV[a + 2], 'f', '1')\n"
    "  rec[#rec + 1] = ARGV[a + 3]; rec[#rec + 1] = ARGV[a + 4]\n"
    "  local key = ARGV[3] .. ARGV[a + 5]\n"
    "  a = a + 8\n"
    "  redis.call('HMGET', key, unpack(ARGV, a, a + nf - 1))\n"
    "  a = a + nf\n"
    "  redis.call('HSET', key, unpack(ARGV, a, a + nset - 1))\n"
    "  a = a + nset\n"
    "  if id == nil then\n"
    "    id = math.max(tonumber(redis.call('GET', KEYS[3]) or '0'), now)\n"
    "  end\n"
    "  id = id + 1\n"
    "  local m = ARGV[a + 1] .. string.format('%d', id) .. ARGV[a + 2]\n"
    "  redis.call('PUBLISH', ARGV[a], m)\n"
    "  redis.call('LPUSH', ARGV[5] .. ARGV[a - nset - nf - 3], m)\n"
    "  a = a + 3\n"
    "end\n"
    "redis.call('HSET', KEYS[2], unpack(rec))\n"
    "redis.call('SET', KEYS[3], string.format('%d', id))\n"
    "return 1\n";

#define MAX_SLICES 1000

/* A mode's state across its slices; its keys under pfx */
typedef struct {
    const char *name;
    char        pfx[128], sha[41];
    long        pid;
    uint64_t    seq, sent, calls;
    double      cpu, cmd_us, secs;
    double      slice_us[MAX_SLICES]; /* Redis CPU us per message */
} mode_t_;

static const char *prefix = "floor:";
static char        k_stream[160], k_dedup[160], k_wsid[160], k_shadow[160],
    k_recent[160], k_chan[160];

static void use_keys(const mode_t_ *m)
{
    snprintf(k_stream, sizeof(k_stream), "%singest", m->pfx);
    snprintf(k_dedup, sizeof(k_dedup), "%sdedup", m->pfx);
    snprintf(k_wsid, sizeof(k_wsid), "%swsid", m->pfx);
    snprintf(k_shadow, sizeof(k_shadow), "%sshadow:", m->pfx);
    snprintf(k_recent, sizeof(k_recent), "%srecent:", m->pfx);
    snprintf(k_chan, sizeof(k_chan), "%stele:", m->pfx);
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static int64_t now_us(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double mono_s(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static double proc_cpu_s(long pid)
{
    char  path[64], buf[1024], *p;
    FILE *f;
    unsigned long ut = 0, st = 0;

    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    if (fgets(buf, sizeof(buf), f) == NULL) {
        fclose(f);
        return -1;
    }
    fclose(f);
    p = strrchr(buf, ')');
    if (p == NULL ||
        sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
               &ut, &st) != 2)
        return -1;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* usec inside commands so far (INFO commandstats): the calls themselves,
 * not EVAL / EVALSHA (which count the calls they make again and the Lua
 * around them) */
static double cmd_usec(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO commandstats");
    double      sum = 0;

    if (r && r->type == REDIS_REPLY_STRING) {
        for (char *p = strstr(r->str, "cmdstat_"); p;
             p = strstr(p + 1, "cmdstat_")) {
            char *u = strstr(p, ",usec=");

            if (u && strncmp(p, "cmdstat_eval", 12) != 0)
                sum += strtod(u + 6, NULL);
        }
    }
    freeReplyObject(r);
    return sum;
}

static int aof_busy(redisContext *c)
{
    redisReply *r = redisCommand(c, "INFO persistence");
    int         busy = 0;

    if (r && r->type == REDIS_REPLY_STRING)
        busy = strstr(r->str, "aof_rewrite_in_progress:1") != NULL ||
               strstr(r->str, "aof_rewrite_scheduled:1") != NULL ||
               strstr(r->str, "rdb_bgsave_in_progress:1") != NULL;
    freeReplyObject(r);
    return busy;
}

/* Start on a freshly rewritten AOF with no fork running, so that an
 * automatic rewrite (auto-aof-rewrite-percentage: when the file has
 * doubled) falls alike on every mode instead of on whichever runs when
 * the file has grown enough. */
static void settle_aof(redisContext *c)
{
    for (int i = 0; i < 600 && aof_busy(c); i++)
        usleep(100000);
    freeReplyObject(redisCommand(c, "BGREWRITEAOF"));
    usleep(100000);
    for (int i = 0; i < 600 && aof_busy(c); i++)
        usleep(100000);
}

static void die(const char *what, redisContext *c)
{
    fprintf(stderr, "redis_floor: %s: %s\n", what,
            c && c->err ? c->errstr : "failed");
    exit(1);
}

static void reply_ok(redisContext *c, const char *what)
{
    redisReply *r = NULL;

    if (redisGetReply(c, (void **)&r) != REDIS_OK)
        die(what, c);
    if (r->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "redis_floor: %s: %s\n", what, r->str);
        exit(1);
    }
    freeReplyObject(r);
}

static void send_resp(redisContext *c, fl_resp_t *r)
{
    size_t len;
    char  *cmd = fl_resp_finish(r, &len);

    redisAppendFormattedCommand(c, cmd, len);
    free(cmd);
}

/* one message as devsim sends it */
static void make_msg(int dev, uint64_t seq, char *topic, size_t tn,
                     char *payload, size_t pn)
{
    snprintf(topic, tn, "devices/dev-%06d/telemetry", dev);
    snprintf(payload, pn,
             "{\"ts\": %" PRId64 ", \"temperature\": %.1f, \"humidity\": "
             "%d, \"seq\": %" PRIu64 "}",
             now_us() / 1000, 20.0 + (double)(seq % 50) / 10, 40 + dev % 20,
             seq);
}

/* The consumer's turn: read what is new, acknowledge it. */
static size_t consume(redisContext *c)
{
    redisReply *r = redisCommand(c, "XREADGROUP GROUP g c COUNT 1000 "
                                    "STREAMS %s >",
                                 k_stream);
    size_t      n = 0;

    if (r == NULL)
        die("XREADGROUP", c);
    if (r->type == REDIS_REPLY_ARRAY && r->elements == 1) {
        redisReply  *ents = r->element[0]->element[1];
        const char **argv = malloc((ents->elements + 3) * sizeof(*argv));
        size_t      *lens = malloc((ents->elements + 3) * sizeof(*lens));

        argv[0] = "XACK";
        argv[1] = k_stream;
        argv[2] = "g";
        for (size_t i = 0; i < ents->elements; i++)
            argv[3 + i] = ents->element[i]->element[0]->str;
        for (size_t i = 0; i < ents->elements + 3; i++)
            lens[i] = strlen(argv[i]);
        n = ents->elements;
        if (n > 0)
            freeReplyObject(redisCommandArgv(c, (int)n + 3, argv, lens));
        free(argv);
        free(lens);
    }
    freeReplyObject(r);
    return n;
}

/* One slice of mode m: secs at rate, then the consumer catches up.
 * Adds what Redis spent to m. */
static void run_slice(redisContext *c, redisContext *cc, mode_t_ *m,
                      int slot, double secs, double rate, int group,
                      int devices, const fl_payload_limits_t *lim0)
{
    const char         *mode = m->name;
    fl_payload_limits_t lim = *lim0;
    uint64_t            seq = m->seq, sent = 0, calls = 0, consumed = 0;
    double   cpu0 = proc_cpu_s(m->pid), us0 = cmd_usec(c), t0 = mono_s();
    double   next_consume = t0;
    uint64_t total = (uint64_t)(rate * secs);

    use_keys(m);
    while (sent < total) {
        double   due = t0 + (double)sent / rate, t = mono_s();
        fl_resp_t r = {0};
        int       n = (int)(total - sent < (uint64_t)group ? total - sent
                                                           : (uint64_t)group);
        int       script = strcmp(mode, "pipe") != 0, ncmd = 0;

        if (t >= next_consume) {
            consumed += consume(cc);
            next_consume = t + 0.05;
        }
        if (due > t)
            usleep((useconds_t)((due - t) * 1e6));
        if (script) {
            fl_resp_str(&r, "EVALSHA");
            fl_resp_str(&r, m->sha);
            fl_resp_i64(&r, 3);
            fl_resp_str(&r, k_stream);
            fl_resp_str(&r, k_dedup);
            fl_resp_str(&r, k_wsid);
            fl_resp_str(&r, "10000000");
            fl_resp_str(&r, "");
            fl_resp_str(&r, k_shadow);
            fl_resp_i64(&r, 604800000);
            fl_resp_str(&r, k_recent);
            fl_resp_i64(&r, 100);
            fl_resp_i64(&r, 600000);
            fl_resp_i64(&r, SKEW_US);
            fl_resp_i64(&r, n);
        }
        for (int i = 0; i < n; i++, seq++) {
            char           topic[64], payload[160], dev[32], chan[192],
                rx[32], rf[32], rv[64];
            int            d = (int)(seq % (uint64_t)devices);
            fl_telemetry_t tl;
            fl_reject_t    why;
            int64_t        t_us = now_us();

            make_msg(d, seq / (uint64_t)devices, topic, sizeof(topic),
                     payload, sizeof(payload));
            snprintf(dev, sizeof(dev), "dev-%06d", d);
            snprintf(chan, sizeof(chan), "%s%d", k_chan, d % SHARDS);
            snprintf(rx, sizeof(rx), "%" PRId64, t_us / 1000);
            snprintf(rf, sizeof(rf), "%" PRIu64, seq % 21845);
            snprintf(rv, sizeof(rv), "%" PRIu64 ":%016llx", seq,
                     (unsigned long long)(seq * 0x9e3779b97f4a7c15ULL));
            if (fl_payload_parse(payload, strlen(payload), t_us, &lim, &tl,
                                 &why) != FL_OK)
                die("payload", NULL);
            if (mode[0] == 'f') {
                fl_resp_str(&r, topic);
                fl_resp_str(&r, payload);
                fl_resp_str(&r, rx);
                fl_resp_str(&r, rf);
                fl_resp_str(&r, rv);
                fl_fanout_message(&r, dev, &tl, t_us, SKEW_US, chan, rx);
            } else {
                /* the same commands: fields and values from the parse */
                fl_sbuf_t   js = {0}, tail = {0};
                fl_point_t *pt = &tl.points[0];
                char        tms[32];
                fl_resp_t   hm = {0}, hs = {0};

                snprintf(tms, sizeof(tms), "%" PRId64, pt->ts_us / 1000);
                fl_resp_str(&hm, "last_seen");
                fl_resp_str(&hm, "_e");
                fl_resp_str(&hm, "_r");
                fl_resp_str(&hm, "_t");
                fl_resp_str(&hs, "last_seen");
                fl_resp_str(&hs, rx);
                fl_resp_str(&hs, "_t");
                fl_resp_str(&hs, tms);
                fl_sb_lit(&tail, "\",\"device\":");
                fl_sb_jstr(&tail, dev);
                fl_sb_lit(&tail, ",\"ts\":");
                fl_sb_put(&tail, tms, strlen(tms));
                fl_sb_lit(&tail, ",\"values\":{");
                for (size_t m = 0; m < pt->nmetrics; m++) {
                    js.len = 0;
                    fl_sb_lit(&js, "t:");
                    fl_sb_put(&js, pt->metrics[m].name,
                              strlen(pt->metrics[m].name));
                    fl_resp_arg(&hs, js.p, js.len);
                    fl_resp_str(&hs, tms);
                    js.p[0] = 'v';
                    fl_resp_arg(&hs, js.p, js.len);
                    js.len = 0;
                    fl_fanout_metric_json(&js, &pt->metrics[m]);
                    fl_resp_arg(&hs, js.p, js.len);
                    if (m > 0)
                        fl_sb_lit(&tail, ",");
                    fl_sb_jstr(&tail, pt->metrics[m].name);
                    fl_sb_lit(&tail, ":");
                    fl_sb_put(&tail, js.p, js.len);
                }
                fl_sb_lit(&tail, "}}");
                if (mode[0] == 'm') {
                    fl_resp_str(&r, topic);
                    fl_resp_str(&r, payload);
                    fl_resp_str(&r, rx);
                    fl_resp_str(&r, rf);
                    fl_resp_str(&r, rv);
                    fl_resp_str(&r, dev);
                    fl_resp_i64(&r, hm.argc);
                    fl_resp_i64(&r, hs.argc);
                    fl_resp_append(&r, &hm);
                    fl_resp_append(&r, &hs);
                    fl_resp_str(&r, chan);
                    fl_resp_str(&r, "{\"type\":\"telemetry\",\"id\":\"");
                    fl_resp_arg(&r, tail.p, tail.len);
                } else {
                    fl_resp_t k = {0};
                    char      key[192], msg[512];

                    redisAppendCommand(c,
                                       "XADD %s MAXLEN ~ 10000000 * t %s p %s "
                                       "r %s f 1",
                                       k_stream, topic, payload, rx);
                    redisAppendCommand(c, "HSET %s %s %s", k_dedup, rf, rv);
                    snprintf(key, sizeof(key), "%s%s", k_shadow, dev);
                    fl_resp_str(&k, "HMGET");
                    fl_resp_str(&k, key);
                    fl_resp_append(&k, &hm);
                    send_resp(c, &k);
                    fl_resp_free(&k);
                    fl_resp_str(&k, "HSET");
                    fl_resp_str(&k, key);
                    fl_resp_append(&k, &hs);
                    send_resp(c, &k);
                    fl_resp_free(&k);
                    snprintf(msg, sizeof(msg),
                             "{\"type\":\"telemetry\",\"id\":\"%" PRId64
                             "%.*s",
                             t_us, (int)tail.len, tail.p);
                    redisAppendCommand(c, "PUBLISH %s %s", chan, msg);
                    redisAppendCommand(c, "LPUSH %s%s %s", k_recent, dev, msg);
                    ncmd += 6;
                }
                fl_resp_free(&hm);
                fl_resp_free(&hs);
                fl_sb_free(&js);
                fl_sb_free(&tail);
            }
            fl_telemetry_free(&tl);
        }
        if (script) {
            send_resp(c, &r);
            ncmd = 1;
        }
        fl_resp_free(&r);
        for (int i = 0; i < ncmd; i++)
            reply_ok(c, mode);
        sent += (uint64_t)n;
        calls++;
    }
    while (consumed < sent) {
        size_t k = consume(cc);

        consumed += k;
        if (k == 0)
            usleep(10000);
    }
    {
        double cpu = proc_cpu_s(m->pid) - cpu0;

        m->seq = seq;
        m->sent += sent;
        m->calls += calls;
        m->secs += mono_s() - t0;
        m->cpu += cpu;
        m->cmd_us += cmd_usec(c) - us0;
        m->slice_us[slot] = cpu * 1e6 / (double)(sent ? sent : 1);
    }
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1:6379", *modelist = "fleetd";
    long        pid = 0;
    double      rate = 10000, dur = 10, slice = 0;
    int         devices = 1000, group = 10, opt, nmodes = 0, rounds;
    char        host[128], list[64];
    int         port;
    redisContext *c, *cc;
    fl_payload_limits_t lim;
    mode_t_     modes[3];

    while ((opt = getopt(argc, argv, "a:P:m:r:d:s:n:g:p:")) != -1) {
        switch (opt) {
        case 'a': addr = optarg; break;
        case 'P': pid = atol(optarg); break;
        case 'm': modelist = optarg; break;
        case 'r': rate = atof(optarg); break;
        case 'd': dur = atof(optarg); break;
        case 's': slice = atof(optarg); break;
        case 'n': devices = atoi(optarg); break;
        case 'g': group = atoi(optarg); break;
        case 'p': prefix = optarg; break;
        default:
            fprintf(stderr, "usage: redis_floor -a HOST:PORT -P REDIS_PID "
                            "-m MODE[,MODE...] [-r RATE] [-d S] [-s SLICE] "
                            "[-n N] [-g G] [-p PREFIX]\n");
            return 2;
        }
    }
    if (sscanf(addr, "%127[^:]:%d", host, &port) != 2 || group < 1 ||
        devices < 1 || rate <= 0 || dur <= 0 || slice < 0)
        die("bad arguments", NULL);
    if (slice == 0 || slice > dur)
        slice = dur;
    rounds = (int)(dur / slice + 0.5);
    if (rounds < 1 || rounds > MAX_SLICES)
        die("-d / -s: 1 to 1000 slices", NULL);
    snprintf(list, sizeof(list), "%s", modelist);
    memset(modes, 0, sizeof(modes));
    for (char *save = NULL, *t = strtok_r(list, ",", &save); t;
         t = strtok_r(NULL, ",", &save)) {
        static const char *const known[] = {"fleetd", "mini", "pipe"};
        int                      k = 0;

        while (k < 3 && strcmp(t, known[k]) != 0)
            k++;
        if (k == 3 || nmodes == 3)
            die("modes are fleetd, mini and pipe", NULL);
        modes[nmodes].name = known[k];
        modes[nmodes].pid = pid;
        /* one mode keeps PREFIX; several each their own keys below it */
        snprintf(modes[nmodes].pfx, sizeof(modes[nmodes].pfx), "%s%s%s",
                 prefix, strchr(modelist, ',') ? known[k] : "",
                 strchr(modelist, ',') ? ":" : "");
        nmodes++;
    }
    c = redisConnect(host, port);
    cc = redisConnect(host, port);
    if (c == NULL || c->err || cc == NULL || cc->err)
        die("connect", c && c->err ? c : cc);
    for (int j = 0; j < nmodes; j++) {
        mode_t_    *m = &modes[j];
        const char *lua = m->name[0] == 'f' ? fl_fanout_append_lua : mini_lua;
        redisReply *r;

        use_keys(m);
        freeReplyObject(redisCommand(c, "DEL %s", k_stream));
        freeReplyObject(
            redisCommand(c, "XGROUP CREATE %s g $ MKSTREAM", k_stream));
        r = redisCommand(c, "SCRIPT LOAD %s", lua);
        if (r == NULL || r->type != REDIS_REPLY_STRING)
            die("SCRIPT LOAD", c);
        snprintf(m->sha, sizeof(m->sha), "%s", r->str);
        freeReplyObject(r);
    }
    {
        char sha[41];

        fl_fanout_sha(sha);
        for (int j = 0; j < nmodes; j++)
            if (modes[j].name[0] == 'f' && strcmp(modes[j].sha, sha) != 0)
                die("SCRIPT LOAD (fleetd): another SHA1", NULL);
    }
    fl_payload_limits_default(&lim);
    lim.max_future_ms = -1;
    settle_aof(c);

    fl_payload_limits_default(&lim);
    lim.max_future_ms = -1;
    settle_aof(c);
    for (int r = 0; r < rounds; r++) {
        for (int j = 0; j < nmodes; j++) {
            mode_t_ *m = &modes[(j + r) % nmodes];

            run_slice(c, cc, m, r, slice, rate, group, devices, &lim);
        }
    }
    for (int j = 0; j < nmodes; j++) {
        mode_t_ *m = &modes[j];

        printf("RESULT mode=%s messages=%" PRIu64 " calls=%" PRIu64
               " elapsed_s=%.2f rate=%.0f redis_cpu_s=%.3f "
               "cpu_us_per_msg=%.2f cmd_us_per_msg=%.2f slices=%d\n",
               m->name, m->sent, m->calls, m->secs,
               (double)m->sent / m->secs, m->cpu,
               m->cpu * 1e6 / (double)m->sent, m->cmd_us / (double)m->sent,
               rounds);
    }
    /* the first mode against each other, slice by slice (each round ran
     * every mode, one after the other): how far noise moves the ratio */
    for (int j = 1; j < nmodes; j++) {
        double q[MAX_SLICES];

        for (int r = 0; r < rounds; r++)
            q[r] = modes[0].slice_us[r] / modes[j].slice_us[r];
        qsort(q, (size_t)rounds, sizeof(q[0]), cmp_double);
        printf("RATIO %s/%s total=%.3f median=%.3f q1=%.3f q3=%.3f "
               "slices=%d\n",
               modes[0].name, modes[j].name,
               (modes[0].cpu / (double)modes[0].sent) /
                   (modes[j].cpu / (double)modes[j].sent),
               q[rounds / 2], q[rounds / 4], q[(3 * rounds) / 4], rounds);
    }
    redisFree(c);
    redisFree(cc);
    return 0;
}
