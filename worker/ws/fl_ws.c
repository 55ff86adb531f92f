/*
 * fl_ws.c - the WebSocket module: /ws handshake, connections, the client
 * protocol (CONTRACT.md section 5; README "Real-time").
 *
 * Handshake. GET /ws is answered by the HTTP core's route; after the
 * checks (Upgrade, version 13, key, Origin allow-list, connection limit)
 * the token ("?token=" or a Bearer header, fl_auth) is looked up, and the
 * connection is taken over with fl_http_upgrade(). The bufferevent is
 * given back at once: a WebSocket connection is a plain struct event on
 * its socket.
 *
 * What an idle connection costs: fl_ws_conn_t (its event included) and
 * the kernel's socket. Reads go through one per-worker buffer; the frame
 * reader (fl_wsframe.c) allocates only for a frame or message that came
 * in pieces; the output queue is empty; no timer of its own - every
 * connection is on one list ordered by when its heartbeat is due, and
 * one per-worker tick walks its head.
 *
 * Output. A connection's queue is a list of frames (fl_ws.h), written
 * with writev(). A telemetry frame that would take the queue past
 * limits.ws_send_buffer is not queued: the connection is conflated, and
 * the frame's values are merged into a per-connection map (device ->
 * newest id, ts and value per metric). When the queue has drained, the
 * map goes out as one message per device marked "conflated": true, and
 * the connection is back to normal. One that stays conflated for
 * limits.ws_slow_timeout is closed with 1013. While over the limit the
 * connection's own requests are not read either, so a client that does
 * not read cannot make fleetd queue more answers.
 *
 * Closing. fleetd sends a close frame (what was queued and not started
 * is dropped first, so a slow client gets it promptly), shuts its side
 * down after it is written, and waits up to CLOSE_WAIT_MS for the peer
 * to close. A peer's close frame is answered with its code.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/bufferevent.h>
#include <event2/event_struct.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

#include "fl_api.h"
#include "fl_auth.h"
#include "fl_log.h"
#include "fl_worker.h"
#include "fl_ws.h"

#define TICK_MS       250
#define CLOSE_WAIT_MS 2000
#define READS_PER_EV  4
#define WRITEV_MAX    64
#define FLUSH_SLICE   32 /* connections written before the loop polls */

typedef struct outq_s {
    struct outq_s *next;
    fl_ws_frame_t *f;
} outq_t;

/* conflation map: open addressing on the device pointer */
typedef struct {
    fl_ws_dev_t *dev;
    fl_ws_id_t   id;
    int64_t      ts;
    cJSON       *values;
} cfl_ent_t;

typedef struct {
    cfl_ent_t *e;
    uint32_t   n, cap;
} cfl_t;

/* a client message that arrived while a subscribe was in flight */
typedef struct held_s {
    struct held_s *next;
    size_t         len;
    unsigned char  data[];
} held_t;

enum { L_NONE = 0, L_HB, L_CLOSING };

struct fl_ws_conn_s {
    struct event  ev;
    fl_wsrx_t     rx;
    fl_ws_conn_t *prev, *next;   /* on the heartbeat or the closing list */
    fl_ws_conn_t *oprev, *onext; /* on the conflated list */
    fl_ws_conn_t *dnext;         /* on the dirty list */
    fl_ws_conn_t *gnext;         /* on the grave list */
    outq_t       *qh, *qt;
    outq_t       *mark; /* the last node queued before the op began */
    held_t       *inh, *int_;
    size_t        qbytes;
    uint32_t      qoff; /* bytes of qh->f already written */
    fl_ws_subs_t  subs;
    fl_ws_op_t   *op;
    /* the seam of the last resume (fl_ws_op_done): per device the newest
     * id the replay sent, until Pub/Sub brings a newer message */
    fl_ws_dev_t **seam_dev;
    fl_ws_id_t   *seam_upto;
    fl_ws_id_t    seam_max;
    int           nseam;
    cfl_t        *cfl;
    int64_t       deadline; /* heartbeat due, or closing: give up */
    int64_t       over_since;
    int           fd;
    uint32_t      tok_s, tokens; /* client message rate */
    short         evmask;
    uint8_t       list;
    uint8_t       pinged, closing, shut, dirty, gone, has_op;
};

typedef struct {
    fl_ws_conn_t *head, *tail;
} clist_t;

static struct {
    const fl_config_t *cf;
    clist_t            hb, closing;
    fl_ws_conn_t      *over;  /* conflated connections */
    fl_ws_conn_t      *dirty; /* have output to write, oldest first */
    fl_ws_conn_t      *dirty_tail;
    fl_ws_conn_t      *grave; /* gone, freed at the next safe point */
    struct event      *tick;
    struct event      *more; /* the rest of a sliced flush */
    int                nconns;
    int                stopping;
} ws;

static unsigned char rbuf[64 * 1024];

static void conn_flush(fl_ws_conn_t *c);
static void conn_events(fl_ws_conn_t *c);
static void conn_fail(fl_ws_conn_t *c, int code, const char *why);
static int  on_text(fl_ws_conn_t *c, unsigned char *data, size_t len);

/* ---- lists ---- */

static void clist_del(clist_t *l, fl_ws_conn_t *c)
{
    if (c->prev)
        c->prev->next = c->next;
    else
        l->head = c->next;
    if (c->next)
        c->next->prev = c->prev;
    else
        l->tail = c->prev;
    c->prev = c->next = NULL;
}

static void clist_add(clist_t *l, fl_ws_conn_t *c)
{
    c->prev = l->tail;
    c->next = NULL;
    if (l->tail)
        l->tail->next = c;
    else
        l->head = c;
    l->tail = c;
}

static clist_t *list_of(fl_ws_conn_t *c)
{
    return c->list == L_HB ? &ws.hb : c->list == L_CLOSING ? &ws.closing : NULL;
}

static void list_move(fl_ws_conn_t *c, int to, int64_t deadline)
{
    clist_t *l = list_of(c);

    if (l)
        clist_del(l, c);
    c->list = (uint8_t)to;
    c->deadline = deadline;
    if ((l = list_of(c)) != NULL)
        clist_add(l, c);
}

static void over_del(fl_ws_conn_t *c)
{
    if (c->oprev)
        c->oprev->onext = c->onext;
    else
        ws.over = c->onext;
    if (c->onext)
        c->onext->oprev = c->oprev;
    c->oprev = c->onext = NULL;
}

/* In order: a write-out in slices serves first the connections that have
 * waited longest, not the ones the last message touched again. */
static void mark_dirty(fl_ws_conn_t *c)
{
    if (!c->dirty) {
        c->dirty = 1;
        c->dnext = NULL;
        if (ws.dirty)
            ws.dirty_tail->dnext = c;
        else
            ws.dirty = c;
        ws.dirty_tail = c;
    }
}

static void count_close(int code)
{
    int i;

    for (i = 0; i < FL_SHM_WS_CLOSES - 1; i++) {
        if (fl_shm_ws_close[i] == code)
            break;
    }
    fl_shm_add(fl_worker.stats->ws_closes[i], 1);
}

/* ---- frames ---- */

static fl_ws_frame_t *frame_alloc(size_t hlen, size_t len)
{
    fl_ws_frame_t *f = fl_alloc(sizeof(*f) + hlen + len);

    memset(f, 0, sizeof(*f));
    f->refs = 1;
    f->hlen = (uint32_t)hlen;
    f->len = (uint32_t)(hlen + len);
    return f;
}

static fl_ws_frame_t *frame_op(int opcode, const void *payload, size_t len)
{
    unsigned char  h[FL_WS_HEADER_MAX];
    size_t         hl = fl_ws_header(h, opcode, len);
    fl_ws_frame_t *f = frame_alloc(hl, len);

    memcpy(f->data, h, hl);
    if (len)
        memcpy(f->data + hl, payload, len);
    return f;
}

fl_ws_frame_t *fl_ws_frame_new(const void *payload, size_t len)
{
    return frame_op(FL_WS_OP_TEXT, payload, len);
}

void fl_ws_frame_unref(fl_ws_frame_t *f)
{
    if (f == NULL || --f->refs > 0)
        return;
    if (f->doc)
        cJSON_Delete(f->doc);
    if (f->dev)
        fl_ws_dev_unref(f->dev);
    free(f);
}

/* ---- the output queue ---- */

static void q_push(fl_ws_conn_t *c, fl_ws_frame_t *f)
{
    outq_t *q = fl_alloc(sizeof(*q));

    q->next = NULL;
    q->f = f;
    if (c->qt)
        c->qt->next = q;
    else
        c->qh = q;
    c->qt = q;
    c->qbytes += f->len;
    mark_dirty(c);
}

/* Drop what is queued and not started (before a close frame). */
static void q_drop_unstarted(fl_ws_conn_t *c)
{
    outq_t *q, *next, *keep = NULL;

    q = c->qh;
    if (q && c->qoff > 0) {
        keep = q;
        q = q->next;
        keep->next = NULL;
    }
    for (; q; q = next) {
        next = q->next;
        c->qbytes -= q->f->len;
        fl_ws_frame_unref(q->f);
        free(q);
    }
    c->qh = c->qt = keep;
    c->mark = NULL;
}

void fl_ws_send(fl_ws_conn_t *c, fl_ws_frame_t *f)
{
    if (c->closing || c->gone) {
        fl_ws_frame_unref(f);
        return;
    }
    q_push(c, f);
}

static void send_text(fl_ws_conn_t *c, const char *s, size_t len)
{
    fl_ws_send(c, fl_ws_frame_new(s, len));
}

void fl_ws_send_error(fl_ws_conn_t *c, const char *code, const char *fmt, ...)
{
    char      msg[256];
    fl_sbuf_t b = {0};
    va_list   ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    fl_sb_lit(&b, "{\"type\":\"error\",\"code\":");
    fl_sb_jstr(&b, code);
    fl_sb_lit(&b, ",\"message\":");
    fl_sb_jstr(&b, msg);
    fl_sb_lit(&b, "}");
    send_text(c, b.p, b.len);
    fl_sb_free(&b);
    fl_shm_add(fl_worker.stats->ws_client_errors, 1);
}

/* ---- conflation ---- */

static cfl_ent_t *cfl_slot(cfl_t *m, const fl_ws_dev_t *d)
{
    uint32_t i = (uint32_t)(((uintptr_t)d >> 4) * 2654435761u) & (m->cap - 1);

    while (m->e[i].dev && m->e[i].dev != d)
        i = (i + 1) & (m->cap - 1);
    return &m->e[i];
}

static cfl_ent_t *cfl_get(cfl_t *m, fl_ws_dev_t *d)
{
    cfl_ent_t *e;

    if ((m->n + 1) * 2 > m->cap) {
        cfl_t g = {fl_calloc(m->cap ? m->cap * 2 : 8, sizeof(cfl_ent_t)), 0,
                   m->cap ? m->cap * 2 : 8};

        for (uint32_t i = 0; i < m->cap; i++) {
            if (m->e[i].dev) {
                *cfl_slot(&g, m->e[i].dev) = m->e[i];
                g.n++;
            }
        }
        free(m->e);
        *m = g;
    }
    e = cfl_slot(m, d);
    if (e->dev == NULL) {
        e->dev = d;
        d->refs++;
        e->values = cJSON_CreateObject();
        m->n++;
    }
    return e;
}

static void cfl_free(fl_ws_conn_t *c)
{
    cfl_t *m = c->cfl;

    if (m == NULL)
        return;
    for (uint32_t i = 0; i < m->cap; i++) {
        if (m->e[i].dev) {
            cJSON_Delete(m->e[i].values);
            fl_ws_dev_unref(m->e[i].dev);
        }
    }
    free(m->e);
    free(m);
    c->cfl = NULL;
    over_del(c);
    fl_shm_add(fl_worker.stats->ws_conflated, (uint32_t)-1);
}

/* Merge telemetry frame f into c's map: newest value per metric. */
static void cfl_merge(fl_ws_conn_t *c, fl_ws_frame_t *f)
{
    cfl_ent_t *e;
    cJSON     *v, *it, *ts;

    if (f->doc == NULL)
        f->doc = cJSON_ParseWithLength((const char *)f->data + f->hlen,
                                       f->len - f->hlen);
    v = cJSON_GetObjectItemCaseSensitive(f->doc, "values");
    ts = cJSON_GetObjectItemCaseSensitive(f->doc, "ts");
    if (!cJSON_IsObject(v) || f->dev == NULL)
        return;
    e = cfl_get(c->cfl, f->dev);
    cJSON_ArrayForEach(it, v)
    {
        cJSON_DeleteItemFromObjectCaseSensitive(e->values, it->string);
        cJSON_AddItemToObject(e->values, it->string, cJSON_Duplicate(it, 1));
    }
    if (f->id > e->id)
        e->id = f->id;
    if (cJSON_IsNumber(ts) && (int64_t)ts->valuedouble > e->ts)
        e->ts = (int64_t)ts->valuedouble;
    fl_shm_add(fl_worker.stats->ws_frames_conflated, 1);
}

static void id_json(fl_sbuf_t *b, fl_ws_id_t id)
{
    char s[24];

    fl_sb_put(b, s, (size_t)snprintf(s, sizeof(s), "\"%llu\"",
                                     (unsigned long long)id));
}

/* The queue drained: send the map, one message per device. */
static void cfl_send(fl_ws_conn_t *c)
{
    cfl_t    *m = c->cfl;
    fl_sbuf_t b = {0};

    for (uint32_t i = 0; i < m->cap; i++) {
        cfl_ent_t     *e = &m->e[i];
        fl_ws_frame_t *f;
        char          *vals;

        if (e->dev == NULL)
            continue;
        vals = cJSON_PrintUnformatted(e->values);
        b.len = 0;
        fl_sb_lit(&b, "{\"type\":\"telemetry\",\"id\":");
        id_json(&b, e->id);
        fl_sb_lit(&b, ",\"device\":");
        fl_sb_jstr(&b, e->dev->id);
        fl_sb_lit(&b, ",\"ts\":");
        fl_sb_i64(&b, e->ts);
        fl_sb_lit(&b, ",\"values\":");
        fl_sb_put(&b, vals ? vals : "{}", vals ? strlen(vals) : 2);
        fl_sb_lit(&b, ",\"conflated\":true}");
        cJSON_free(vals);
        f = fl_ws_frame_new(b.p, b.len);
        f->dev = e->dev; /* telemetry: counted when written */
        f->dev->refs++;
        f->id = e->id;
        q_push(c, f);
    }
    fl_sb_free(&b);
    cfl_free(c);
}

/*
 * The seam of a resume, after its op is done. The op holds what Pub/Sub
 * brings while the resume lists are read and drops what the replay
 * covers (covered()); but the answer of the list read and a message
 * published just before it come on two connections, and the message can
 * be read after the answer: then it reaches the client live, after the
 * replay sent it. So the replay's newest id per device stays until
 * Pub/Sub brings a message newer than all of them (ids grow in the order
 * Pub/Sub delivers), and live messages at or below it are dropped.
 */
static void seam_clear(fl_ws_conn_t *c)
{
    for (int i = 0; i < c->nseam; i++)
        fl_ws_dev_unref(c->seam_dev[i]);
    free(c->seam_dev);
    free(c->seam_upto);
    c->seam_dev = NULL;
    c->seam_upto = NULL;
    c->nseam = 0;
}

static void seam_set(fl_ws_conn_t *c, fl_ws_dev_t *const *devs,
                     const fl_ws_id_t *upto, int ndevs)
{
    seam_clear(c);
    c->seam_dev = fl_calloc((size_t)ndevs, sizeof(*c->seam_dev));
    c->seam_upto = fl_calloc((size_t)ndevs, sizeof(*c->seam_upto));
    c->seam_max = 0;
    for (int i = 0; i < ndevs; i++) {
        c->seam_dev[i] = devs[i];
        devs[i]->refs++;
        c->seam_upto[i] = upto[i];
        c->seam_max = fl_max(c->seam_max, upto[i]);
    }
    c->nseam = ndevs;
}

/* 1 when f is a live message the last resume's replay sent already */
static int seam_covers(fl_ws_conn_t *c, const fl_ws_frame_t *f)
{
    if (c->nseam == 0 || f->dev == NULL)
        return 0;
    if (f->id > c->seam_max) {
        seam_clear(c);
        return 0;
    }
    for (int i = 0; i < c->nseam; i++) {
        if (c->seam_dev[i] == f->dev)
            return f->id <= c->seam_upto[i];
    }
    return 0;
}

void fl_ws_send_telemetry(fl_ws_conn_t *c, fl_ws_frame_t *f)
{
    if (c->closing || c->gone || seam_covers(c, f))
        return;
    if (c->cfl == NULL &&
        c->qbytes + f->len <= (size_t)ws.cf->limits.ws_send_buffer) {
        f->refs++;
        q_push(c, f);
        return;
    }
    if (c->cfl == NULL) {
        c->cfl = fl_calloc(1, sizeof(*c->cfl));
        c->over_since = fl_now_ms();
        c->onext = ws.over;
        if (ws.over)
            ws.over->oprev = c;
        ws.over = c;
        fl_shm_add(fl_worker.stats->ws_conflated, 1);
        conn_events(c); /* stop reading its requests */
    }
    cfl_merge(c, f);
}

/* ---- writing ---- */

/* Give back what writev() took: n bytes from the head. */
static void q_consumed(fl_ws_conn_t *c, size_t n)
{
    c->qbytes -= n;
    while (n > 0) {
        outq_t *q = c->qh;
        size_t  rest = q->f->len - c->qoff;

        if (n < rest) {
            c->qoff += (uint32_t)n;
            return;
        }
        n -= rest;
        c->qoff = 0;
        c->qh = q->next;
        if (c->qh == NULL)
            c->qt = NULL;
        if (q->f->dev) /* a telemetry message, all of it written */
            fl_shm_add(fl_worker.stats->ws_messages, 1);
        if (c->mark == q)
            c->mark = NULL;
        fl_ws_frame_unref(q->f);
        free(q);
    }
}

static void conn_gone(fl_ws_conn_t *c)
{
    if (c->gone)
        return;
    c->gone = 1;
    list_move(c, L_NONE, 0);
    c->gnext = ws.grave;
    ws.grave = c;
}

/* The socket failed or the peer closed it: counted as 1006 unless a
 * close was under way. */
static void conn_lost(fl_ws_conn_t *c)
{
    if (!c->closing)
        count_close(1006);
    conn_gone(c);
}

static void conn_flush(fl_ws_conn_t *c)
{
    struct iovec iov[WRITEV_MAX];

    if (c->gone || c->has_op)
        return;
    for (;;) {
        int     n = 0;
        ssize_t w;

        if (c->qh == NULL && c->cfl) {
            cfl_send(c);
            continue;
        }
        if (c->qh == NULL)
            break;
        for (outq_t *q = c->qh; q && n < WRITEV_MAX; q = q->next, n++) {
            size_t off = n == 0 ? c->qoff : 0;

            iov[n].iov_base = q->f->data + off;
            iov[n].iov_len = q->f->len - off;
        }
        w = writev(c->fd, iov, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (w <= 0) {
            conn_lost(c);
            return;
        }
        q_consumed(c, (size_t)w);
    }
    if (c->qh == NULL && c->closing && !c->shut) {
        /* the close frame is out: our side is done */
        shutdown(c->fd, SHUT_WR);
        c->shut = 1;
    }
    conn_events(c);
}

static void bury(void);

/* Write what the connections touched since the last call queued, then
 * free the connections that went away and are off the dirty list (never
 * earlier: they may be on the stack of a callback). A message to many
 * clients is written FLUSH_SLICE connections at a time: the rest waits
 * for ws.more, a timer due at once, which libevent runs only after it
 * has polled again and run what was ready by then - so a device's
 * message waiting on the worker's MQTT socket is read after one slice,
 * not after the whole write-out, and nothing waits longer than its turn
 * (one priority: no starving either way). */
static void flush(int sliced)
{
    for (int n = 0; ws.dirty; n++) {
        fl_ws_conn_t *c = ws.dirty;

        if (sliced && n == FLUSH_SLICE && ws.more) {
            static const struct timeval now = {0, 0};

            evtimer_add(ws.more, &now);
            break;
        }
        ws.dirty = c->dnext;
        if (ws.dirty == NULL)
            ws.dirty_tail = NULL;
        c->dnext = NULL;
        c->dirty = 0;
        conn_flush(c);
    }
    bury();
}

void fl_ws_flush_dirty(void)
{
    flush(1);
}

static void on_more(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    fl_ws_flush_dirty();
}

static void on_event(evutil_socket_t fd, short what, void *arg);

/* Arm the event for what c needs: reading while it may take requests
 * (or, closing, to see the peer's close), writing while it has output. */
static void conn_events(fl_ws_conn_t *c)
{
    short want = EV_PERSIST;

    if (c->gone)
        return;
    if (c->closing ||
        (!c->has_op && c->cfl == NULL &&
         c->qbytes <= (size_t)ws.cf->limits.ws_send_buffer))
        want |= EV_READ;
    if (c->qh && !c->has_op)
        want |= EV_WRITE;
    if (want == c->evmask)
        return;
    event_del(&c->ev);
    event_assign(&c->ev, fl_worker.base, c->fd, want, on_event, c);
    if (want != EV_PERSIST)
        event_add(&c->ev, NULL);
    c->evmask = want;
}

/* ---- closing ---- */

static void conn_free(fl_ws_conn_t *c)
{
    seam_clear(c);
    fl_wshub_conn_gone(c);
    cfl_free(c);
    event_del(&c->ev);
    close(c->fd);
    q_drop_unstarted(c);
    if (c->qh) {
        fl_ws_frame_unref(c->qh->f);
        free(c->qh);
    }
    while (c->inh) {
        held_t *h = c->inh;

        c->inh = h->next;
        free(h);
    }
    fl_wsrx_free(&c->rx);
    free(c);
    ws.nconns--;
    fl_shm_store(fl_worker.stats->conns_ws, (uint32_t)ws.nconns);
    if (fl_worker.draining)
        fl_worker_drain_check();
}

/* Free the connections that went away, except those still on the dirty
 * list (a sliced flush has not reached them yet): they stay for the
 * next call, so that a list that never empties under load does not keep
 * every closed socket open. */
static void bury(void)
{
    fl_ws_conn_t *keep = NULL;

    while (ws.grave) {
        fl_ws_conn_t *c = ws.grave;

        ws.grave = c->gnext;
        if (c->dirty) {
            c->gnext = keep;
            keep = c;
        } else {
            conn_free(c);
        }
    }
    ws.grave = keep;
}

/* Close c with code (FL_WS_CLOSE_NO_STATUS: a close frame without one,
 * counted as 1000): a close frame after what is being written, then wait
 * for the peer's close. */
static void conn_fail(fl_ws_conn_t *c, int code, const char *why)
{
    unsigned char p[125];
    size_t        n = 0;

    if (c->closing || c->gone)
        return;
    count_close(code == FL_WS_CLOSE_NO_STATUS ? FL_WS_CLOSE_NORMAL : code);
    q_drop_unstarted(c);
    cfl_free(c);
    if (code != FL_WS_CLOSE_NO_STATUS)
        n = fl_ws_close_payload(p, code, why);
    q_push(c, frame_op(FL_WS_OP_CLOSE, p, n));
    c->closing = 1;
    c->has_op = 0; /* nothing held any more: the close goes out */
    list_move(c, L_CLOSING, fl_now_ms() + CLOSE_WAIT_MS);
}

/* ---- reading ---- */

static int rate_ok(fl_ws_conn_t *c)
{
    uint32_t now = (uint32_t)(fl_now_ms() / 1000);
    uint32_t rate = (uint32_t)ws.cf->limits.ws_msg_rate;

    if (now != c->tok_s) {
        c->tok_s = now;
        c->tokens = rate;
    }
    if (c->tokens == 0)
        return 0;
    c->tokens--;
    return 1;
}

static int rx_message(void *ud, int op, unsigned char *data, size_t len)
{
    fl_ws_conn_t *c = ud;

    if (op == FL_WS_OP_BINARY) {
        conn_fail(c, FL_WS_CLOSE_UNSUPPORTED, "binary messages not accepted");
        return 1;
    }
    if (c->has_op) {
        held_t *h = fl_alloc(sizeof(*h) + len);

        h->next = NULL;
        h->len = len;
        memcpy(h->data, data, len);
        if (c->int_)
            c->int_->next = h;
        else
            c->inh = h;
        c->int_ = h;
        return 0;
    }
    return on_text(c, data, len);
}

static int rx_control(void *ud, int op, unsigned char *data, size_t len)
{
    fl_ws_conn_t *c = ud;

    if (op == FL_WS_OP_PING)
        fl_ws_send(c, frame_op(FL_WS_OP_PONG, data, len));
    return 0;
}

/* The peer's close: answered with its code (none when it gave none). */
static int rx_close(void *ud, int code, const char *reason, size_t len)
{
    (void)reason, (void)len;
    conn_fail(ud, code, "");
    return 1;
}

static const fl_wsrx_ops_t *rx_ops(void)
{
    static fl_wsrx_ops_t ops = {0, rx_message, rx_control, rx_close};

    ops.max_message = (size_t)ws.cf->limits.ws_max_message;
    return &ops;
}

/* Feed n bytes of rbuf (or data) to c's reader. */
static void conn_feed(fl_ws_conn_t *c, unsigned char *data, size_t n)
{
    const char *why = NULL;
    int         rc;

    if (c->closing)
        return; /* waiting for the peer's close: the rest is ignored */
    rc = fl_wsrx_feed(&c->rx, data, n, rx_ops(), c, &why);
    if (rc >= 1000)
        conn_fail(c, rc, why);
}

static void conn_read(fl_ws_conn_t *c)
{
    for (int i = 0; i < READS_PER_EV && !c->gone; i++) {
        ssize_t n = read(c->fd, rbuf, sizeof(rbuf));

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        if (n <= 0) {
            conn_lost(c);
            return;
        }
        if (!c->closing) {
            c->pinged = 0;
            list_move(c, L_HB, fl_now_ms() + ws.cf->ws.ping_interval_ms);
        }
        conn_feed(c, rbuf, (size_t)n);
        if ((size_t)n < sizeof(rbuf) || c->has_op)
            break;
    }
}

static void on_event(evutil_socket_t fd, short what, void *arg)
{
    fl_ws_conn_t *c = arg;

    (void)fd;
    if (what & EV_READ)
        conn_read(c);
    if (!c->gone)
        mark_dirty(c);
    fl_ws_flush_dirty();
}

/* ---- the client protocol ---- */

static int on_text(fl_ws_conn_t *c, unsigned char *data, size_t len)
{
    cJSON      *doc;
    const cJSON *type;

    if (!rate_ok(c)) {
        fl_ws_send_error(c, "rate_limited",
                         "more than %d messages a second: message ignored",
                         ws.cf->limits.ws_msg_rate);
        return 0;
    }
    doc = cJSON_ParseWithLength((const char *)data, len);
    if (!cJSON_IsObject(doc)) {
        fl_ws_send_error(c, "bad_json", "a message must be a JSON object");
        cJSON_Delete(doc);
        return 0;
    }
    type = cJSON_GetObjectItemCaseSensitive(doc, "type");
    if (!cJSON_IsString(type))
        fl_ws_send_error(c, "bad_message", "\"type\" must be a string");
    else if (strcmp(type->valuestring, "subscribe") == 0)
        fl_wshub_subscribe(c, doc);
    else if (strcmp(type->valuestring, "unsubscribe") == 0)
        fl_wshub_unsubscribe(c, doc);
    else if (strcmp(type->valuestring, "ping") == 0)
        send_text(c, "{\"type\":\"pong\"}", 15);
    else
        fl_ws_send_error(c, "unknown_type",
                         "unknown message type (subscribe, unsubscribe, "
                         "ping)");
    cJSON_Delete(doc);
    return 0;
}

void fl_ws_op_begin(fl_ws_conn_t *c, fl_ws_op_t *op)
{
    c->op = op;
    c->has_op = 1;
    c->mark = c->qt;
    conn_events(c);
}

fl_ws_op_t *fl_ws_conn_op(const fl_ws_conn_t *c)
{
    return c->op;
}

void fl_ws_each(void (*fn)(fl_ws_conn_t *c))
{
    for (fl_ws_conn_t *c = ws.hb.head; c; c = c->next)
        fn(c);
}

fl_ws_subs_t *fl_ws_conn_subs(fl_ws_conn_t *c)
{
    return &c->subs;
}

/* held telemetry of a resumed device at or before what the replay sent */
static int covered(const fl_ws_frame_t *f, fl_ws_dev_t *const *devs,
                   const fl_ws_id_t *upto, int ndevs)
{
    if (f->dev == NULL)
        return 0;
    for (int i = 0; i < ndevs; i++) {
        if (devs[i] == f->dev)
            return f->id <= upto[i];
    }
    return 0;
}

void fl_ws_op_done(fl_ws_conn_t *c, fl_ws_frame_t **frames, int nframes,
                   fl_ws_dev_t *const *devs, const fl_ws_id_t *upto,
                   int ndevs)
{
    outq_t *first = NULL, *last = NULL, *rest, *q, *next;

    c->op = NULL;
    if (c->closing || c->gone || !c->has_op) {
        for (int i = 0; i < nframes; i++)
            fl_ws_frame_unref(frames[i]);
        return;
    }
    c->has_op = 0;
    for (int i = 0; i < nframes; i++) {
        q = fl_alloc(sizeof(*q));
        q->f = frames[i];
        q->next = NULL;
        if (last)
            last->next = q;
        else
            first = q;
        last = q;
        c->qbytes += frames[i]->len;
    }
    /* what was held since the op began, minus what the replay covers */
    rest = c->mark ? c->mark->next : c->qh;
    if (c->mark)
        c->mark->next = NULL;
    else
        c->qh = NULL;
    c->qt = c->mark;
    if (first) {
        if (c->qt)
            c->qt->next = first;
        else
            c->qh = first;
        c->qt = last;
    }
    for (q = rest; q; q = next) {
        next = q->next;
        q->next = NULL;
        if (ndevs > 0 && covered(q->f, devs, upto, ndevs)) {
            c->qbytes -= q->f->len;
            fl_ws_frame_unref(q->f);
            free(q);
            continue;
        }
        if (c->qt)
            c->qt->next = q;
        else
            c->qh = q;
        c->qt = q;
    }
    c->mark = NULL;
    if (ndevs > 0)
        seam_set(c, devs, upto, ndevs);
    mark_dirty(c);
    /* the messages that waited for the op, until one starts another */
    while (c->inh && !c->has_op && !c->closing) {
        held_t *h = c->inh;

        c->inh = h->next;
        if (c->inh == NULL)
            c->int_ = NULL;
        on_text(c, h->data, h->len);
        free(h);
    }
    conn_events(c);
}

/* ---- the handshake ---- */

/* Does the comma-separated header value list hold token (any case)? */
static int has_token(const char *list, const char *token)
{
    size_t n = strlen(token);

    for (const char *p = list; p && *p;) {
        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (strncasecmp(p, token, n) == 0 &&
            (p[n] == '\0' || p[n] == ',' || p[n] == ' ' || p[n] == '\t'))
            return 1;
        p = strchr(p, ',');
    }
    return 0;
}

static int refuse(fl_http_req_t *req, int reason, int status, const char *code,
                  const char *message)
{
    fl_shm_add(fl_worker.stats->ws_rejected[reason], 1);
    fl_http_respond_error(req, status, code, message);
    return FL_OK;
}

static void conn_new(struct bufferevent *bev, const char *accept)
{
    fl_ws_conn_t   *c = fl_calloc(1, sizeof(*c));
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t          extra = evbuffer_get_length(in);
    unsigned char  *early = NULL;
    char            resp[160];
    int             one = 1, n, sndbuf;

    c->fd = bufferevent_getfd(bev);
    if (extra > 0) {
        early = fl_alloc(extra);
        evbuffer_remove(in, early, extra);
    }
    /* the socket is ours now; the bufferevent goes without closing it */
    bufferevent_setfd(bev, -1);
    bufferevent_free(bev);
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    /* Bound what the kernel holds for a client that does not read, or
     * the queue limit means little: autotuning grows a send buffer to
     * megabytes. Linux doubles the value: the kernel keeps at most half of
     * ws_send_buffer (256 KiB at most, plenty for a dashboard). */
    sndbuf = (int)fl_min(fl_max(ws.cf->limits.ws_send_buffer / 4, 4096),
                         128 * 1024);
    setsockopt(c->fd, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf));
    ws.nconns++;
    fl_shm_store(fl_worker.stats->conns_ws, (uint32_t)ws.nconns);
    fl_shm_add(fl_worker.stats->ws_accepted, 1);
    list_move(c, L_HB, fl_now_ms() + ws.cf->ws.ping_interval_ms);
    event_assign(&c->ev, fl_worker.base, c->fd, EV_PERSIST, on_event, c);
    c->evmask = EV_PERSIST;
    n = snprintf(resp, sizeof(resp),
                 "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                 "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n",
                 accept);
    {
        fl_ws_frame_t *f = frame_alloc(0, (size_t)n);

        memcpy(f->data, resp, (size_t)n);
        q_push(c, f);
    }
    if (early) {
        conn_feed(c, early, extra);
        free(early);
    }
    fl_ws_flush_dirty();
}

static void on_auth(fl_api_req_t *r, int scopes)
{
    struct bufferevent *bev;
    char                accept[29];

    if (scopes == 0) {
        fl_shm_add(fl_worker.stats->ws_rejected[FL_WS_REJ_AUTH], 1);
        fl_api_error(r, 401, "unauthorized", "the token is not valid");
        return;
    }
    if (!(scopes & FL_SCOPE_READ)) {
        fl_shm_add(fl_worker.stats->ws_rejected[FL_WS_REJ_AUTH], 1);
        fl_api_error(r, 403, "forbidden", "/ws needs the read scope");
        return;
    }
    if (ws.stopping || ws.nconns >= ws.cf->limits.ws_max_connections) {
        fl_shm_add(fl_worker.stats->ws_rejected[FL_WS_REJ_LIMIT], 1);
        fl_api_error(r, 503, "busy",
                     ws.stopping ? "this worker is shutting down"
                                 : "too many WebSocket connections");
        return;
    }
    if (r->http->conn == NULL) { /* the client went away meanwhile */
        fl_api_error(r, 503, "gone", "client went away");
        return;
    }
    /* the key was checked by handshake(); r->ctx is fl_auth's */
    fl_ws_accept(fl_http_header(r->http, "Sec-WebSocket-Key"), accept);
    bev = fl_http_upgrade(r->http);
    r->http = NULL;
    conn_new(bev, accept);
    fl_api_done(r);
}

static int handshake(fl_http_req_t *req, void *ud)
{
    const char   *h, *auth;
    char          accept[29], tok[1024];
    fl_api_req_t *r;
    int           bad = 0;
    static const fl_api_route_t route = {"GET", "ws", FL_SCOPE_READ, NULL};

    (void)ud;
    if (req->method != HTTP_GET) {
        fl_http_add_header(req, "Allow", "GET");
        return refuse(req, FL_WS_REJ_HANDSHAKE, 405, "method_not_allowed",
                      "/ws takes GET (a WebSocket handshake)");
    }
    h = fl_http_header(req, "Upgrade");
    if (h == NULL || !has_token(h, "websocket")) {
        fl_http_add_header(req, "Upgrade", "websocket");
        return refuse(req, FL_WS_REJ_HANDSHAKE, 426, "upgrade_required",
                      "/ws is a WebSocket endpoint (Upgrade: websocket)");
    }
    h = fl_http_header(req, "Sec-WebSocket-Version");
    if (h == NULL || strcmp(h, "13") != 0) {
        fl_http_add_header(req, "Sec-WebSocket-Version", "13");
        return refuse(req, FL_WS_REJ_HANDSHAKE, 426, "unsupported_version",
                      "WebSocket version 13 only");
    }
    h = fl_http_header(req, "Connection");
    if (h == NULL || !has_token(h, "upgrade"))
        return refuse(req, FL_WS_REJ_HANDSHAKE, 400, "bad_request",
                      "Connection must include \"Upgrade\"");
    h = fl_http_header(req, "Sec-WebSocket-Key");
    if (h == NULL || fl_ws_accept(h, accept) != 0)
        return refuse(req, FL_WS_REJ_HANDSHAKE, 400, "bad_request",
                      "Sec-WebSocket-Key must be the base64 of 16 bytes");
    h = fl_http_header(req, "Origin");
    if (h && ws.cf->auth.ws_origins.n > 0) {
        int ok = 0;

        for (int i = 0; i < ws.cf->auth.ws_origins.n && !ok; i++)
            ok = strcasecmp(h, ws.cf->auth.ws_origins.items[i]) == 0;
        if (!ok)
            return refuse(req, FL_WS_REJ_ORIGIN, 403, "forbidden_origin",
                          "this Origin may not open /ws (auth.ws_origins)");
    }
    if (ws.stopping || ws.nconns >= ws.cf->limits.ws_max_connections)
        return refuse(req, FL_WS_REJ_LIMIT, 503, "busy",
                      ws.stopping ? "this worker is shutting down"
                                  : "too many WebSocket connections");

    r = fl_api_begin(req, &route);
    if (fl_api_param(r, "token", tok, sizeof(tok), &bad) == NULL) {
        if (bad)
            return FL_OK; /* answered 400 */
        auth = fl_http_header(req, "Authorization");
        if (auth == NULL || strncasecmp(auth, "Bearer ", 7) != 0) {
            fl_shm_add(fl_worker.stats->ws_rejected[FL_WS_REJ_AUTH], 1);
            fl_api_error(r, 401, "unauthorized",
                         "no token: ?token=TOKEN or Authorization: Bearer");
            return FL_OK;
        }
        for (auth += 7; *auth == ' '; auth++)
            ;
        snprintf(tok, sizeof(tok), "%s", auth);
    }
    fl_auth_check(r, tok, on_auth);
    return FL_AGAIN;
}

/* ---- the tick: heartbeats, slow clients, closes ---- */

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    int64_t now = fl_now_ms();

    (void)fd, (void)what, (void)arg;
    while (ws.hb.head && ws.hb.head->deadline <= now) {
        fl_ws_conn_t *c = ws.hb.head;

        if (c->pinged) {
            conn_fail(c, FL_WS_CLOSE_GOING_AWAY, "heartbeat timeout");
            continue;
        }
        c->pinged = 1;
        fl_ws_send(c, frame_op(FL_WS_OP_PING, NULL, 0));
        list_move(c, L_HB, now + ws.cf->ws.ping_interval_ms);
    }
    for (fl_ws_conn_t *c = ws.over, *next; c; c = next) {
        next = c->onext;
        if (now - c->over_since >= ws.cf->limits.ws_slow_timeout_ms)
            conn_fail(c, FL_WS_CLOSE_TRY_AGAIN, "client too slow");
    }
    while (ws.closing.head && ws.closing.head->deadline <= now)
        conn_gone(ws.closing.head);
    fl_wshub_tick(now);
    fl_ws_flush_dirty();
}

/* ---- module ---- */

static int ws_init(fl_worker_t *w)
{
    struct timeval tv = {0, TICK_MS * 1000};

    ws.cf = w->cf;
    if (fl_wshub_init(w->base) != FL_OK)
        return FL_ERROR;
    ws.tick = event_new(w->base, -1, EV_PERSIST, on_tick, NULL);
    if (ws.tick == NULL || event_add(ws.tick, &tv) != 0)
        return FL_ERROR;
    ws.more = evtimer_new(w->base, on_more, NULL);
    if (ws.more == NULL)
        return FL_ERROR;
    fl_http_route(NULL, "/ws", handshake, NULL);
    return FL_OK;
}

/* Draining (SIGQUIT, SIGTERM, or a reload once the new generation is
 * ready): every client gets 1001 and reconnects to the new workers. */
static void ws_stop(fl_worker_t *w, int fast)
{
    (void)w;
    ws.stopping = 1;
    for (fl_ws_conn_t *c = ws.hb.head, *next; c; c = next) {
        next = c->next;
        conn_fail(c, FL_WS_CLOSE_GOING_AWAY, "server going away");
    }
    fl_ws_flush_dirty();
    if (fast) {
        while (ws.closing.head)
            conn_gone(ws.closing.head);
    }
    flush(0);
}

static int ws_busy(fl_worker_t *w)
{
    (void)w;
    return ws.nconns;
}

static void ws_destroy(fl_worker_t *w)
{
    (void)w;
    while (ws.hb.head)
        conn_gone(ws.hb.head);
    while (ws.closing.head)
        conn_gone(ws.closing.head);
    flush(0);
    if (ws.tick)
        event_free(ws.tick);
    ws.tick = NULL;
    if (ws.more)
        event_free(ws.more);
    ws.more = NULL;
    fl_wshub_destroy();
}

const fl_module_t fl_ws_module = {
    "ws", ws_init, ws_stop, ws_busy, ws_destroy, NULL,
};
