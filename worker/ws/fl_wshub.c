/*
 * fl_wshub.c - WebSocket fan-out: which connection watches which device,
 * the worker's Redis Pub/Sub connection, and the subscribe flow.
 *
 * Channels. The ingest consumers publish every telemetry message, in its
 * WebSocket form, on {prefix}tele:{shard} (fl_shadow_shard), after the
 * shadow has it. A worker SUBSCRIBEs to the shards its clients' devices
 * fall in (all of them while a client watches "*"), counting clients per
 * shard; a shard nobody needs any more is UNSUBSCRIBEd after
 * SHARD_LINGER_MS, so clients that come and go do not turn into a storm
 * of SUBSCRIBE/UNSUBSCRIBE. Other nodes sharing the Redis publish on the
 * same channels: cross-node delivery is the same path.
 *
 * The Pub/Sub connection is a bufferevent of its own, with hiredis's
 * reply reader (redisReader) for the protocol only: hiredis 0.14's async
 * context keeps one callback per channel and has known edge cases with
 * many SUBSCRIBE/UNSUBSCRIBE replies (fixed in 1.1), so this file keeps
 * the channel state itself and reads every push the same way. It
 * reconnects with backoff, re-subscribes what is needed, PINGs when idle
 * (a silent dead Redis is noticed within PING_MS + redis.command_timeout),
 * and tells every client what it may have missed meanwhile ("gap").
 *
 * Subscribe. A client's subscribe registers its devices at once, then
 * waits until every shard it needs is confirmed subscribed, then reads
 * the shadows (the snapshot) and, with "since", each device's resume list
 * (fl_shadow.h) in one pipelined round trip on the API's Redis
 * connection. A message published after the SUBSCRIBE was confirmed
 * reaches the worker through Pub/Sub; one published before it is in the
 * list (the ingest script publishes and pushes in one step): so the
 * client gets the list's entries after "since", then what Pub/Sub brought
 * meanwhile minus what the list already had (fl_ws_op_done), with nothing
 * missed or doubled at the seam.
 */
#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "fl_api.h"
#include "fl_log.h"
#include "fl_payload.h"
#include "fl_shadow.h"
#include "fl_worker.h"
#include "fl_ws.h"

#define SHARD_LINGER_MS 10000
#define PING_MS         5000
#define OP_WAIT_MS      5000
#define BACKOFF_MIN_MS  100
#define BACKOFF_MAX_MS  5000

enum { SH_NONE = 0, SH_SUBSCRIBING, SH_SUBSCRIBED, SH_UNSUBSCRIBING };
enum { PS_DOWN = 0, PS_CONNECTING, PS_AUTH, PS_UP };

typedef struct {
    uint32_t refs; /* subscriptions that need it */
    uint8_t  state;
    int64_t  idle_since;
} shard_t;

struct fl_ws_op_s {
    fl_ws_conn_t *c; /* NULL once the connection went away */
    fl_ws_op_t   *wprev, *wnext; /* waiting for channels */
    int           waiting;
    int64_t       started;
    fl_ws_dev_t **devs; /* listed in the subscribe (references) */
    int           ndevs;
    int           star;
    int           has_since;
    int           lost; /* Pub/Sub may have missed messages: gap */
    fl_ws_id_t    since;
    fl_kv_t      *shadow, *desired, *recent; /* per device */
    int           expect, answered; /* commands sent, answered */
};

static struct {
    struct event_base *base;
    const fl_config_t *cf;
    fl_ws_dev_t      **tab;
    uint32_t           tabcap, ndevs;
    fl_ws_conn_t     **star;
    uint32_t           nstar, starcap;
    shard_t           *shards;
    int                nshards;
    fl_ws_op_t        *waiting;

    /* the Pub/Sub connection */
    struct bufferevent *bev;
    redisReader        *rd;
    int                 state;
    int                 was_up;
    int64_t             backoff_ms;
    int64_t             connect_deadline;
    int64_t             last_rx, last_ping;
    struct event       *ev_retry;
    char                chan_prefix[160];
    size_t              chan_plen;
    char                recent_prefix[160];
    char                shadow_prefix[160];
    char                desired_prefix[160];
} hub;

static void ps_connect(void);
static void op_fetch(fl_ws_op_t *op);

/* ---- ids ---- */

int fl_ws_id_parse(const char *s, size_t len, fl_ws_id_t *id)
{
    uint64_t v = 0;

    if (len == 0 || len > 20)
        return FL_ERROR;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
            return FL_ERROR;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *id = v;
    return FL_OK;
}

/*
 * The id and device of a message in the form the ingest script publishes
 * ({"type":"telemetry","id":"...","device":"...", ...}; device ids need
 * no escaping). FL_ERROR for anything else.
 */
static int tele_head(const char *p, size_t len, fl_ws_id_t *id,
                     const char **dev, size_t *devlen)
{
    static const char h1[] = "{\"type\":\"telemetry\",\"id\":\"";
    static const char h2[] = "\",\"device\":\"";
    const char       *end = p + len, *q;

    if (len < sizeof(h1) || memcmp(p, h1, sizeof(h1) - 1) != 0)
        return FL_ERROR;
    p += sizeof(h1) - 1;
    q = memchr(p, '"', (size_t)(end - p));
    if (q == NULL || fl_ws_id_parse(p, (size_t)(q - p), id) != FL_OK)
        return FL_ERROR;
    if ((size_t)(end - q) < sizeof(h2) || memcmp(q, h2, sizeof(h2) - 1) != 0)
        return FL_ERROR;
    *dev = q + sizeof(h2) - 1;
    q = memchr(*dev, '"', (size_t)(end - *dev));
    if (q == NULL || q == *dev || q - *dev > FL_API_ID_MAX)
        return FL_ERROR;
    *devlen = (size_t)(q - *dev);
    return FL_OK;
}

/* ---- devices ---- */

static fl_ws_dev_t *dev_find(const char *id, size_t len)
{
    fl_ws_dev_t *d;

    if (hub.ndevs == 0)
        return NULL;
    d = hub.tab[fl_fnv1a(id, len) & (hub.tabcap - 1)];
    for (; d; d = d->hnext) {
        if (strncmp(d->id, id, len) == 0 && d->id[len] == '\0')
            return d;
    }
    return NULL;
}

static void tab_grow(void)
{
    uint32_t      cap = hub.tabcap ? hub.tabcap * 2 : 64;
    fl_ws_dev_t **tab = fl_calloc(cap, sizeof(*tab));

    for (uint32_t i = 0; i < hub.tabcap; i++) {
        for (fl_ws_dev_t *d = hub.tab[i], *next; d; d = next) {
            uint32_t h = fl_fnv1a(d->id, strlen(d->id)) & (cap - 1);

            next = d->hnext;
            d->hnext = tab[h];
            tab[h] = d;
        }
    }
    free(hub.tab);
    hub.tab = tab;
    hub.tabcap = cap;
}

/* The device's entry, made if needed; the caller takes a reference. */
static fl_ws_dev_t *dev_get(const char *id, size_t len)
{
    fl_ws_dev_t *d = dev_find(id, len);
    uint32_t     h;

    if (d) {
        d->refs++;
        return d;
    }
    if (hub.ndevs + 1 > hub.tabcap)
        tab_grow();
    d = fl_calloc(1, sizeof(*d) + len + 1);
    memcpy(d->id, id, len);
    d->refs = 1;
    d->shard = fl_shadow_shard(d->id, hub.nshards);
    h = fl_fnv1a(id, len) & (hub.tabcap - 1);
    d->hnext = hub.tab[h];
    hub.tab[h] = d;
    hub.ndevs++;
    return d;
}

void fl_ws_dev_unref(fl_ws_dev_t *d)
{
    fl_ws_dev_t **pp;

    if (--d->refs > 0)
        return;
    pp = &hub.tab[fl_fnv1a(d->id, strlen(d->id)) & (hub.tabcap - 1)];
    while (*pp != d)
        pp = &(*pp)->hnext;
    *pp = d->hnext;
    hub.ndevs--;
    free(d->subs);
    free(d);
}

/* ---- channels ---- */

static void ps_send(int argc, const char **argv)
{
    fl_resp_t r = {0};
    char     *buf;
    size_t    len;

    for (int i = 0; i < argc; i++)
        fl_resp_str(&r, argv[i]);
    buf = fl_resp_finish(&r, &len);
    bufferevent_write(hub.bev, buf, len);
    free(buf);
}

static void shard_cmd(const char *cmd, int shard)
{
    char        ch[200];
    const char *argv[2] = {cmd, ch};

    snprintf(ch, sizeof(ch), "%s%d", hub.chan_prefix, shard);
    ps_send(2, argv);
}

static void shard_ref(uint32_t s)
{
    shard_t *sh = &hub.shards[s];

    if (sh->refs++ > 0)
        return;
    if (hub.state == PS_UP && sh->state == SH_NONE) {
        shard_cmd("SUBSCRIBE", (int)s);
        sh->state = SH_SUBSCRIBING;
    }
    /* SH_UNSUBSCRIBING: subscribed again when the UNSUBSCRIBE is answered */
}

static void shard_unref(uint32_t s)
{
    if (--hub.shards[s].refs == 0)
        hub.shards[s].idle_since = fl_now_ms();
}

static int op_ready(const fl_ws_op_t *op)
{
    if (op->star) {
        for (int s = 0; s < hub.nshards; s++) {
            if (hub.shards[s].state != SH_SUBSCRIBED)
                return 0;
        }
        return 1;
    }
    for (int i = 0; i < op->ndevs; i++) {
        if (hub.shards[op->devs[i]->shard].state != SH_SUBSCRIBED)
            return 0;
    }
    return 1;
}

static void wait_del(fl_ws_op_t *op)
{
    if (!op->waiting)
        return;
    if (op->wprev)
        op->wprev->wnext = op->wnext;
    else
        hub.waiting = op->wnext;
    if (op->wnext)
        op->wnext->wprev = op->wprev;
    op->waiting = 0;
}

/* a shard changed state: start the ops that were waiting for it */
static void wake_waiting(void)
{
    for (fl_ws_op_t *op = hub.waiting, *next; op; op = next) {
        next = op->wnext;
        if (op_ready(op)) {
            wait_del(op);
            op_fetch(op);
        }
    }
}

/* ---- subscriptions of a connection ---- */

static void star_add(fl_ws_conn_t *c)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);

    if (s->star)
        return;
    if (hub.nstar == hub.starcap) {
        hub.starcap = hub.starcap ? hub.starcap * 2 : 16;
        hub.star = fl_realloc(hub.star, hub.starcap * sizeof(*hub.star));
    }
    hub.star[hub.nstar++] = c;
    s->star = hub.nstar;
    for (int i = 0; i < hub.nshards; i++)
        shard_ref((uint32_t)i);
}

static void star_del(fl_ws_conn_t *c)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    uint32_t      i;

    if (!s->star)
        return;
    i = s->star - 1;
    hub.star[i] = hub.star[--hub.nstar];
    if (i < hub.nstar)
        fl_ws_conn_subs(hub.star[i])->star = i + 1;
    s->star = 0;
    for (int k = 0; k < hub.nshards; k++)
        shard_unref((uint32_t)k);
}

static int subs_has(const fl_ws_subs_t *s, const fl_ws_dev_t *d)
{
    for (uint32_t i = 0; i < s->n; i++) {
        if (s->devs[i] == d)
            return 1;
    }
    return 0;
}

static void sub_add(fl_ws_conn_t *c, fl_ws_dev_t *d)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);

    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 2;
        s->devs = fl_realloc(s->devs, s->cap * sizeof(*s->devs));
    }
    s->devs[s->n++] = d;
    d->refs++;
    if (d->nsubs == d->cap) {
        d->cap = d->cap ? d->cap * 2 : 2;
        d->subs = fl_realloc(d->subs, d->cap * sizeof(*d->subs));
    }
    d->subs[d->nsubs++] = c;
    shard_ref(d->shard);
}

/* drop subscription i of c */
static void sub_del(fl_ws_conn_t *c, uint32_t i)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    fl_ws_dev_t  *d = s->devs[i];

    s->devs[i] = s->devs[--s->n];
    for (uint32_t k = 0; k < d->nsubs; k++) {
        if (d->subs[k] == c) {
            d->subs[k] = d->subs[--d->nsubs];
            break;
        }
    }
    shard_unref(d->shard);
    fl_ws_dev_unref(d);
}

/* ---- the subscribe flow ---- */

static void op_free(fl_ws_op_t *op)
{
    wait_del(op);
    for (int i = 0; i < op->ndevs; i++) {
        if (op->shadow)
            fl_kv_free(&op->shadow[i]);
        if (op->desired)
            fl_kv_free(&op->desired[i]);
        if (op->recent)
            fl_kv_free(&op->recent[i]);
        fl_ws_dev_unref(op->devs[i]);
    }
    free(op->shadow);
    free(op->desired);
    free(op->recent);
    free(op->devs);
    free(op);
}

static void devs_json(fl_sbuf_t *b, fl_ws_dev_t *const *devs, int n, int star)
{
    fl_sb_lit(b, "[");
    if (star)
        fl_sb_lit(b, "\"*\"");
    for (int i = 0; i < n; i++) {
        if (i > 0 || star)
            fl_sb_lit(b, ",");
        fl_sb_jstr(b, devs[i]->id);
    }
    fl_sb_lit(b, "]");
}

typedef struct {
    fl_ws_id_t  id;
    int         dev;
    const char *s;
    size_t      len;
} replay_t;

static int replay_cmp(const void *a, const void *b)
{
    const replay_t *x = a, *y = b;

    if (x->id != y->id)
        return x->id < y->id ? -1 : 1;
    return (x->dev > y->dev) - (x->dev < y->dev);
}

/* Everything fetched: the answer, the gap, the replay, then what waited. */
static void op_finish(fl_ws_op_t *op)
{
    const fl_config_t *cf = hub.cf;
    fl_sbuf_t          b = {0};
    fl_ws_frame_t    **frames, *first, *gapf = NULL;
    replay_t          *rp = NULL;
    fl_ws_id_t        *upto = NULL;
    int                nframes = 0, nrp = 0, nrpcap = 0, ngap = 0;
    int64_t            now = fl_wall_ms();

    if (op->c == NULL) {
        op_free(op);
        return;
    }
    fl_sb_lit(&b, "{\"type\":\"subscribed\",\"devices\":");
    devs_json(&b, op->devs, op->ndevs, op->star);
    fl_sb_lit(&b, ",\"snapshot\":[");
    for (int i = 0, n = 0; i < op->ndevs; i++) {
        if (op->shadow == NULL ||
            (op->shadow[i].n == 0 && op->desired[i].n == 0))
            continue;
        if (n++ > 0)
            fl_sb_lit(&b, ",");
        fl_shadow_state_json(&b, op->devs[i]->id, &op->shadow[i],
                             &op->desired[i], cf->ingest.online_window_ms);
    }
    fl_sb_lit(&b, "]}");
    first = fl_ws_frame_new(b.p, b.len);

    if (op->has_since) {
        upto = fl_calloc((size_t)op->ndevs + 1, sizeof(*upto));
        b.len = 0;
        fl_sb_lit(&b, "{\"type\":\"gap\",\"devices\":[");
        if (op->star) {
            fl_sb_lit(&b, "\"*\"");
            ngap++;
        }
        for (int i = 0; i < op->ndevs; i++) {
            const fl_kv_t *l = op->recent ? &op->recent[i] : NULL;
            fl_ws_id_t     oldest = UINT64_MAX;
            size_t         n = l ? l->n : 0;
            int            gap;

            upto[i] = op->since;
            for (size_t k = 0; k < n; k++) {
                fl_ws_id_t  id;
                const char *dv;
                size_t      dl;

                if (tele_head(l->f[k], l->len[k], &id, &dv, &dl) != FL_OK)
                    continue;
                if (id < oldest)
                    oldest = id;
                if (id <= op->since)
                    continue;
                if (nrp == nrpcap) {
                    nrpcap = nrpcap ? nrpcap * 2 : 64;
                    rp = fl_realloc(rp, (size_t)nrpcap * sizeof(*rp));
                }
                rp[nrp++] = (replay_t){id, i, l->f[k], l->len[k]};
                if (id > upto[i])
                    upto[i] = id;
            }
            /*
             * A gap: the list was trimmed past since (it is full and its
             * oldest entry is newer), or since is older than the list can
             * remember (a list that expired, or never was, would look
             * empty), or Pub/Sub may have lost messages meanwhile.
             */
            gap = op->lost;
            if (n > 0 && oldest > op->since &&
                (int64_t)n >= cf->ws.resume_keep)
                gap = 1;
            if ((n == 0 || oldest > op->since) &&
                (int64_t)(op->since / 1000) < now - cf->ws.resume_ttl_ms)
                gap = 1;
            if (gap) {
                if (ngap++ > 0)
                    fl_sb_lit(&b, ",");
                fl_sb_jstr(&b, op->devs[i]->id);
            }
        }
        fl_sb_lit(&b, "]}");
        if (ngap > 0) {
            gapf = fl_ws_frame_new(b.p, b.len);
            fl_shm_add(fl_worker.stats->ws_gaps, 1);
        }
        if (nrp > 1)
            qsort(rp, (size_t)nrp, sizeof(*rp), replay_cmp);
    }
    frames = fl_calloc((size_t)nrp + 2, sizeof(*frames));
    frames[nframes++] = first;
    if (gapf)
        frames[nframes++] = gapf;
    if (op->has_since) {
        for (int k = 0; k < nrp; k++) {
            fl_ws_frame_t *f;

            /* the same message twice in a list (a redelivered batch) */
            if (k > 0 && rp[k].dev == rp[k - 1].dev && rp[k].id == rp[k - 1].id)
                continue;
            f = fl_ws_frame_new(rp[k].s, rp[k].len);
            f->dev = op->devs[rp[k].dev];
            f->dev->refs++;
            f->id = rp[k].id;
            frames[nframes++] = f;
        }
        fl_shm_add(fl_worker.stats->ws_replayed, (uint64_t)nrp);
    }
    fl_sb_free(&b);
    fl_ws_op_done(op->c, frames, nframes, op->devs, upto,
                  op->has_since ? op->ndevs : 0);
    free(rp);
    free(upto);
    free(frames);
    op_free(op);
    fl_ws_flush_dirty();
}

static void on_fetch(fl_redis_t *r, redisReply *reply, void *ud)
{
    fl_ws_op_t *op = ud;
    int         per = op->has_since ? 3 : 2;
    int         k = op->answered++, i = k / per;

    (void)r;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        op->lost = 1;
    else if (k % per == 0)
        fl_kv_from(&op->shadow[i], reply);
    else if (k % per == 1)
        fl_kv_from(&op->desired[i], reply);
    else
        fl_kv_from(&op->recent[i], reply);
    if (op->answered == op->expect)
        op_finish(op);
}

/* The channels are there: read shadows (and resume lists), pipelined. */
static void op_fetch(fl_ws_op_t *op)
{
    int  per = op->has_since ? 3 : 2;
    char key[3][200], last[24];

    if (op->c == NULL) {
        op_free(op);
        return;
    }
    if (op->ndevs == 0 || !fl_redis_connected(fl_api.redis)) {
        op->lost |= op->ndevs > 0;
        op_finish(op);
        return;
    }
    op->shadow = fl_calloc((size_t)op->ndevs, sizeof(fl_kv_t));
    op->desired = fl_calloc((size_t)op->ndevs, sizeof(fl_kv_t));
    if (op->has_since)
        op->recent = fl_calloc((size_t)op->ndevs, sizeof(fl_kv_t));
    /* expect stays above answered until every command is sent */
    op->expect = op->ndevs * per + 1;
    /* a resume list may hold up to a quarter more than resume_keep
     * (fl_ingest.c trims it lazily): the newest resume_keep count */
    snprintf(last, sizeof(last), "%d", fl_worker.cf->ws.resume_keep - 1);
    for (int i = 0, sent = 0; i < op->ndevs; i++) {
        const char *argv[3][4] = {{"HGETALL", key[0]},
                                  {"HGETALL", key[1]},
                                  {"LRANGE", key[2], "0", last}};
        static const int argc[3] = {2, 2, 4};

        snprintf(key[0], sizeof(key[0]), "%s%s", hub.shadow_prefix,
                 op->devs[i]->id);
        snprintf(key[1], sizeof(key[1]), "%s%s", hub.desired_prefix,
                 op->devs[i]->id);
        snprintf(key[2], sizeof(key[2]), "%s%s", hub.recent_prefix,
                 op->devs[i]->id);
        for (int k = 0; k < per; k++) {
            size_t lens[4];

            for (int a = 0; a < argc[k]; a++)
                lens[a] = strlen(argv[k][a]);
            if (fl_redis_cmdargv(fl_api.redis, 0, on_fetch, op, argc[k],
                                 argv[k], lens) != FL_OK) {
                /* the connection went: what was sent is answered (with
                 * NULL), the rest is lost */
                op->lost = 1;
                op->expect = sent;
                if (op->answered == op->expect)
                    op_finish(op);
                return;
            }
            sent++;
        }
    }
    op->expect--;
    if (op->answered == op->expect)
        op_finish(op);
}

/* "devices": a list of ids, "*" or ["*"]. FL_ERROR with the error sent. */
static int parse_devices(fl_ws_conn_t *c, const cJSON *msg, int *star,
                         const cJSON **list)
{
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(msg, "devices"), *it;

    *star = 0;
    *list = NULL;
    if (cJSON_IsString(d) && strcmp(d->valuestring, "*") == 0) {
        *star = 1;
        return FL_OK;
    }
    if (!cJSON_IsArray(d)) {
        fl_ws_send_error(c, "bad_message",
                         "\"devices\" must be a list of device ids or \"*\"");
        return FL_ERROR;
    }
    cJSON_ArrayForEach(it, d)
    {
        const char *s = cJSON_GetStringValue(it);
        size_t      n = s ? strlen(s) : 0;

        if (s && strcmp(s, "*") == 0) {
            *star = 1;
            continue;
        }
        if (s == NULL || !fl_device_id_valid(s, n)) {
            fl_ws_send_error(c, "bad_device",
                             "device ids match [A-Za-z0-9_.:-]{1,64}");
            return FL_ERROR;
        }
    }
    *list = d;
    return FL_OK;
}

void fl_wshub_subscribe(fl_ws_conn_t *c, const cJSON *msg)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    const cJSON  *list, *since, *it;
    fl_ws_op_t   *op;
    int           star, n = 0;

    if (parse_devices(c, msg, &star, &list) != FL_OK)
        return;
    since = cJSON_GetObjectItemCaseSensitive(msg, "since");
    op = fl_calloc(1, sizeof(*op));
    if (since && !cJSON_IsNull(since)) {
        if (!cJSON_IsString(since) ||
            fl_ws_id_parse(since->valuestring, strlen(since->valuestring),
                           &op->since) != FL_OK) {
            fl_ws_send_error(c, "bad_message",
                             "\"since\" must be the id of a telemetry "
                             "message (\"MS-SEQ\")");
            free(op);
            return;
        }
        op->has_since = 1;
    }
    if (list) {
        int newn = 0, total = cJSON_GetArraySize(list);

        op->devs = fl_calloc((size_t)total + 1, sizeof(*op->devs));
        cJSON_ArrayForEach(it, list)
        {
            const char  *id = it->valuestring;
            fl_ws_dev_t *d;
            int          dup = 0;

            if (strcmp(id, "*") == 0)
                continue;
            d = dev_get(id, strlen(id));
            for (int k = 0; k < n && !dup; k++)
                dup = op->devs[k] == d;
            if (dup) {
                fl_ws_dev_unref(d);
                continue;
            }
            op->devs[n++] = d;
            newn += !subs_has(s, d);
        }
        op->ndevs = n;
        if ((int64_t)s->n + newn > hub.cf->limits.ws_max_subscriptions) {
            fl_ws_send_error(c, "too_many_subscriptions",
                             "at most %d devices per connection "
                             "(limits.ws_max_subscriptions)",
                             hub.cf->limits.ws_max_subscriptions);
            op_free(op);
            return;
        }
        for (int k = 0; k < n; k++) {
            if (!subs_has(s, op->devs[k]))
                sub_add(c, op->devs[k]);
        }
    }
    if (star)
        star_add(c);
    op->star = star;
    op->c = c;
    op->started = fl_now_ms();
    fl_ws_op_begin(c, op);
    if (op_ready(op)) {
        op_fetch(op);
        return;
    }
    op->waiting = 1;
    op->wnext = hub.waiting;
    if (hub.waiting)
        hub.waiting->wprev = op;
    hub.waiting = op;
}

void fl_wshub_unsubscribe(fl_ws_conn_t *c, const cJSON *msg)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    const cJSON  *list, *it;
    fl_sbuf_t     b = {0};
    int           star, n = 0;

    if (parse_devices(c, msg, &star, &list) != FL_OK)
        return;
    fl_sb_lit(&b, "{\"type\":\"unsubscribed\",\"devices\":[");
    if (star) {
        /* "*" drops everything */
        star_del(c);
        while (s->n > 0)
            sub_del(c, s->n - 1);
        fl_sb_lit(&b, "\"*\"");
        n++;
    }
    cJSON_ArrayForEach(it, list)
    {
        const char *id = it->valuestring;

        if (strcmp(id, "*") == 0)
            continue;
        for (uint32_t i = 0; i < s->n; i++) {
            if (strcmp(s->devs[i]->id, id) == 0) {
                sub_del(c, i);
                break;
            }
        }
        if (n++ > 0)
            fl_sb_lit(&b, ",");
        fl_sb_jstr(&b, id);
    }
    fl_sb_lit(&b, "]}");
    fl_ws_send(c, fl_ws_frame_new(b.p, b.len));
    fl_sb_free(&b);
}

void fl_wshub_conn_gone(fl_ws_conn_t *c)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    fl_ws_op_t   *op = fl_ws_conn_op(c);

    star_del(c);
    while (s->n > 0)
        sub_del(c, s->n - 1);
    free(s->devs);
    s->devs = NULL;
    s->cap = 0;
    if (op) {
        op->c = NULL;
        if (op->waiting)
            op_free(op); /* no reply pending */
    }
}

/* ---- delivery ---- */

static void deliver(const char *p, size_t len)
{
    fl_ws_id_t     id;
    const char    *dv;
    size_t         dl;
    fl_ws_dev_t   *d;
    fl_ws_frame_t *f;

    if (tele_head(p, len, &id, &dv, &dl) != FL_OK) {
        fl_warn("ws: a Pub/Sub message not in the telemetry form, ignored");
        return;
    }
    d = dev_find(dv, dl);
    if ((d == NULL || d->nsubs == 0) && hub.nstar == 0)
        return;
    f = fl_ws_frame_new(p, len);
    f->id = id;
    f->dev = dev_get(dv, dl);
    d = f->dev;
    for (uint32_t i = 0; i < d->nsubs; i++) {
        if (!fl_ws_conn_subs(d->subs[i])->star)
            fl_ws_send_telemetry(d->subs[i], f);
    }
    for (uint32_t i = 0; i < hub.nstar; i++)
        fl_ws_send_telemetry(hub.star[i], f);
    fl_ws_frame_unref(f);
}

/* ---- the Pub/Sub connection ---- */

/* One gap message naming everything c watches ("*" covers it all). */
static void send_gap(fl_ws_conn_t *c)
{
    fl_ws_subs_t *s = fl_ws_conn_subs(c);
    fl_sbuf_t     b = {0};

    if (!s->star && s->n == 0)
        return;
    fl_sb_lit(&b, "{\"type\":\"gap\",\"devices\":");
    devs_json(&b, s->devs, s->star ? 0 : (int)s->n, s->star != 0);
    fl_sb_lit(&b, "}");
    fl_ws_send(c, fl_ws_frame_new(b.p, b.len));
    fl_sb_free(&b);
}

static void ps_up(void)
{
    int lost = hub.was_up;

    hub.state = PS_UP;
    hub.backoff_ms = BACKOFF_MIN_MS;
    hub.was_up = 1;
    hub.last_rx = hub.last_ping = fl_now_ms();
    fl_info("ws: redis pub/sub connected");
    for (int s = 0; s < hub.nshards; s++) {
        if (hub.shards[s].refs > 0) {
            shard_cmd("SUBSCRIBE", s);
            hub.shards[s].state = SH_SUBSCRIBING;
        }
    }
    if (!lost)
        return;
    /* messages published while we were away did not reach anyone here */
    fl_ws_each(send_gap);
    fl_ws_flush_dirty();
}

static void ps_down(const char *why)
{
    if (hub.bev) {
        bufferevent_free(hub.bev);
        hub.bev = NULL;
    }
    if (hub.rd) {
        redisReaderFree(hub.rd);
        hub.rd = NULL;
    }
    if (hub.state == PS_UP || hub.state == PS_AUTH)
        fl_error("ws: redis pub/sub connection lost: %s, reconnecting in "
                 "%lld ms",
                 why, (long long)hub.backoff_ms);
    else
        fl_warn("ws: redis pub/sub: %s, retrying in %lld ms", why,
                (long long)hub.backoff_ms);
    hub.state = PS_DOWN;
    for (int s = 0; s < hub.nshards; s++)
        hub.shards[s].state = SH_NONE;
    {
        struct timeval tv = {hub.backoff_ms / 1000,
                             (hub.backoff_ms % 1000) * 1000};

        event_add(hub.ev_retry, &tv);
    }
    hub.backoff_ms = fl_min(hub.backoff_ms * 2, BACKOFF_MAX_MS);
    /* ops waiting for channels keep waiting (OP_WAIT_MS, then a gap) */
}

static int shard_of_channel(const redisReply *ch)
{
    long s;

    if (ch->type != REDIS_REPLY_STRING || ch->len <= hub.chan_plen ||
        memcmp(ch->str, hub.chan_prefix, hub.chan_plen) != 0)
        return -1;
    s = strtol(ch->str + hub.chan_plen, NULL, 10);
    return s >= 0 && s < hub.nshards ? (int)s : -1;
}

static void ps_reply(redisReply *r)
{
    const char *kind;
    int         s;

    if (hub.state == PS_AUTH) {
        if (r->type == REDIS_REPLY_ERROR) {
            fl_error("ws: redis AUTH failed: %s", r->str);
            ps_down("AUTH failed");
            return;
        }
        ps_up();
        return;
    }
    if (r->type != REDIS_REPLY_ARRAY || r->elements < 2 ||
        r->element[0]->type != REDIS_REPLY_STRING)
        return; /* +PONG outside subscribed mode */
    kind = r->element[0]->str;
    if (strcmp(kind, "message") == 0 && r->elements == 3) {
        fl_shm_add(fl_worker.stats->ws_pubsub_messages, 1);
        if (r->element[2]->type == REDIS_REPLY_STRING)
            deliver(r->element[2]->str, r->element[2]->len);
        return;
    }
    if ((s = shard_of_channel(r->element[1])) < 0)
        return;
    if (strcmp(kind, "subscribe") == 0) {
        hub.shards[s].state = SH_SUBSCRIBED;
        wake_waiting();
    } else if (strcmp(kind, "unsubscribe") == 0) {
        hub.shards[s].state = SH_NONE;
        if (hub.shards[s].refs > 0) {
            shard_cmd("SUBSCRIBE", s);
            hub.shards[s].state = SH_SUBSCRIBING;
        }
    }
}

static void ps_read(struct bufferevent *bev, void *arg)
{
    struct evbuffer *in = bufferevent_get_input(bev);
    redisReply      *r;

    (void)arg;
    hub.last_rx = fl_now_ms();
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;

        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1)
            break;
        if (redisReaderFeed(hub.rd, v.iov_base, v.iov_len) != REDIS_OK)
            break;
        evbuffer_drain(in, v.iov_len);
    }
    for (;;) {
        void *reply = NULL;

        if (redisReaderGetReply(hub.rd, &reply) != REDIS_OK) {
            ps_down("protocol error");
            fl_ws_flush_dirty();
            return;
        }
        if (reply == NULL)
            break;
        r = reply;
        ps_reply(r);
        freeReplyObject(r);
        if (hub.rd == NULL)
            break; /* ps_down() */
    }
    fl_ws_flush_dirty();
}

static void ps_event(struct bufferevent *bev, short what, void *arg)
{
    (void)arg;
    if (what & BEV_EVENT_CONNECTED) {
        int fd = bufferevent_getfd(bev), one = 1;

        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        if (hub.cf->redis.password && hub.cf->redis.password[0]) {
            const char *argv[2] = {"AUTH", hub.cf->redis.password};

            hub.state = PS_AUTH;
            ps_send(2, argv);
        } else {
            ps_up();
        }
        return;
    }
    ps_down(what & BEV_EVENT_EOF ? "closed" : evutil_socket_error_to_string(
                                                  EVUTIL_SOCKET_ERROR()));
}

static void ps_connect(void)
{
    struct addrinfo hints, *ai = NULL;
    char            port[16];

    memset(&hints, 0, sizeof(hints));
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
    snprintf(port, sizeof(port), "%d", hub.cf->redis.port);
    if (getaddrinfo(hub.cf->redis.host, port, &hints, &ai) != 0) {
        /* a host name: resolved as hiredis does it (blocking, once per
         * connect; use an address in redis.host to avoid it) */
        hints.ai_flags = AI_NUMERICSERV;
        if (getaddrinfo(hub.cf->redis.host, port, &hints, &ai) != 0) {
            ps_down("cannot resolve redis.host");
            return;
        }
    }
    hub.rd = redisReaderCreate();
    hub.bev = bufferevent_socket_new(hub.base, -1, BEV_OPT_CLOSE_ON_FREE);
    bufferevent_setcb(hub.bev, ps_read, NULL, ps_event, NULL);
    bufferevent_enable(hub.bev, EV_READ | EV_WRITE);
    hub.state = PS_CONNECTING;
    hub.connect_deadline = fl_now_ms() + hub.cf->redis.connect_timeout_ms;
    if (bufferevent_socket_connect(hub.bev, ai->ai_addr,
                                   (int)ai->ai_addrlen) != 0) {
        freeaddrinfo(ai);
        ps_down("connect() failed");
        return;
    }
    freeaddrinfo(ai);
}

static void on_retry(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    ps_connect();
}

void fl_wshub_tick(int64_t now)
{
    if (hub.state == PS_CONNECTING && now > hub.connect_deadline)
        ps_down("connect timeout");
    if (hub.state == PS_UP) {
        if (now - hub.last_rx > PING_MS + hub.cf->redis.command_timeout_ms) {
            ps_down("no answer to PING");
        } else if (now - hub.last_rx >= PING_MS &&
                   now - hub.last_ping >= PING_MS) {
            const char *argv[1] = {"PING"};

            ps_send(1, argv);
            hub.last_ping = now;
        }
    }
    for (int s = 0; s < hub.nshards && hub.state == PS_UP; s++) {
        shard_t *sh = &hub.shards[s];

        if (sh->refs == 0 && sh->state == SH_SUBSCRIBED &&
            now - sh->idle_since >= SHARD_LINGER_MS) {
            shard_cmd("UNSUBSCRIBE", s);
            sh->state = SH_UNSUBSCRIBING;
        }
    }
    /* ops that waited too long for their channels go ahead, with a gap */
    for (fl_ws_op_t *op = hub.waiting, *next; op; op = next) {
        next = op->wnext;
        if (now - op->started >= OP_WAIT_MS) {
            wait_del(op);
            op->lost = 1;
            op_fetch(op);
        }
    }
}

int fl_wshub_init(struct event_base *base)
{
    const fl_config_t *cf = fl_worker.cf;
    const char        *pfx = cf->redis.prefix;

    memset(&hub, 0, sizeof(hub));
    hub.base = base;
    hub.cf = cf;
    hub.nshards = cf->redis.channel_shards;
    hub.shards = fl_calloc((size_t)hub.nshards, sizeof(*hub.shards));
    hub.backoff_ms = BACKOFF_MIN_MS;
    snprintf(hub.chan_prefix, sizeof(hub.chan_prefix), "%stele:", pfx);
    hub.chan_plen = strlen(hub.chan_prefix);
    snprintf(hub.recent_prefix, sizeof(hub.recent_prefix), "%srecent:", pfx);
    snprintf(hub.shadow_prefix, sizeof(hub.shadow_prefix), "%sshadow:", pfx);
    snprintf(hub.desired_prefix, sizeof(hub.desired_prefix), "%sdesired:",
             pfx);
    hub.ev_retry = event_new(base, -1, 0, on_retry, NULL);
    if (hub.ev_retry == NULL)
        return FL_ERROR;
    ps_connect();
    return FL_OK;
}

void fl_wshub_destroy(void)
{
    while (hub.waiting)
        op_free(hub.waiting);
    if (hub.bev)
        bufferevent_free(hub.bev);
    if (hub.rd)
        redisReaderFree(hub.rd);
    if (hub.ev_retry)
        event_free(hub.ev_retry);
    free(hub.shards);
    free(hub.star);
    free(hub.tab);
    memset(&hub, 0, sizeof(hub));
}
