/*
 * fl_ingest.c - the stream consumer: Redis Stream -> PostgreSQL, shadow,
 * fan-out.
 *
 * The MQTT intake (fl_mqttc.c; fl_mqtt.c for TLS brokers) appends raw
 * messages to the stream {prefix}ingest and acknowledges them once they
 * are there; the native one also fans out the telemetry it can parse in
 * the same script call, and marks those entries f = 1 (fl_fanout.h), so
 * that the fan-out below skips them. This module
 * consumes that stream in the consumer group "fleetd" as consumer
 * {node_id}-w{slot}, with two batches in hand at most: the gatherer
 * reads, prepares and fans out one (ing.g) while the storer stores,
 * publishes and acknowledges the one before it (ing.s). A due batch goes
 * to the storer when it is free (handover()); the gatherer never waits
 * for PostgreSQL unless its own batch is full, so dashboards keep
 * getting messages while a batch commits.
 *
 *   read      XREADGROUP COUNT ingest.batch BLOCK ingest.block ">", then
 *             more reads for up to ingest.linger while the batch is not
 *             full (flush by size or by age), and on while the storer is
 *             busy
 *   prepare   on the thread pool, CHUNK_ENTRIES entries per job:
 *             fl_payload_parse, the COPY rows, and one shadow/fan-out
 *             script call per chunk in the protocol's form; the loop only
 *             sends what the jobs built
 *   fan-out   per chunk one EVALSHA of shadow_lua, sent as soon as the
 *             read is prepared: the newest value per metric into each
 *             shadow, a PUBLISH of each point on {prefix}tele:{shard} and
 *             a push on its device's resume list
 *   --- the storer, batch by batch in stream order ---
 *   store     one transaction (fl_pg.c): COPY into the telemetry table,
 *             or through a staging table when a key is already there: a
 *             batch written twice adds no row, of two messages with one
 *             key the later in the stream wins
 *   answers   the devices' answers to commands (devices/{id}/commands/ack)
 *             of the batch: one UPDATE per ACK_SLICE of them through the
 *             API's pool (fl_commands_ack), see "Command answers" below
 *   publish   dead letters (XADD {prefix}dead); then wait for the fan-out
 *             replies
 *   ack       XACK, only after all of the above succeeded
 *
 * Nothing is acknowledged before it is committed: a crash anywhere leaves
 * the entries pending, and they are processed again (idempotently).
 *
 * Time of arrival. A point without a time of its own (no "ts", or a SenML
 * time relative to now) takes the message's arrival time, and that must
 * differ from every other message of the device, or a burst within one
 * millisecond collapses into one row. The stream entry id "MS-SEQ" is
 * unique and ordered across every worker and node that appends to the
 * stream (Redis assigns it: MS its clock, SEQ counting entries within that
 * millisecond), so the arrival time is MS * 1000 + SEQ microseconds:
 * the millisecond Redis received the message, the microseconds its place
 * in that millisecond. Unique as long as fewer than 1,000 entries share a
 * millisecond of Redis's clock (Redis appends at most ~140,000/s on the
 * machines measured; a step back of its clock makes it count on in the
 * last millisecond and can exceed it - then two points could share a key,
 * and the later one wins, counted as overwritten). The same id, as MS *
 * 1000000 + SEQ, is the row's src: the order in which two messages with
 * one key are resolved (fl_pg.c), and what tells an entry stored again
 * from another message.
 *
 * Points outside the storable range are taken out of their message
 * (fl_telemetry_cut()) and dead-lettered with reason too_old (older than
 * postgres.retention_days at the time the batch is prepared) or in_future
 * (later than arrival + limits.max_clock_skew); the rest of the message is
 * stored.
 *
 * Pending entries: at start the worker takes back the entries its previous
 * life left pending (same consumer name; during a reload only once the
 * slot's old worker is gone, see predecessor_alive()); every
 * claim_idle / 2 it claims entries idle for claim_idle on any consumer (a
 * dead worker or node).
 * Both go through XPENDING + XCLAIM rather than XAUTOCLAIM, because only
 * XPENDING tells how many times an entry was delivered: an entry delivered
 * more than ingest.max_deliveries times (it keeps killing workers, or
 * keeps failing) is dead-lettered instead of blocking the queue.
 *
 * Command answers. An ack entry is checked by fl_ack_parse() on the pool
 * (a bad one is a dead letter like a bad telemetry message) and applied
 * to its command after the batch's telemetry committed and before the
 * publish step, so the entry is acknowledged (XACK) only once its UPDATE
 * committed: while the API's pool is down, busy or times out, the batch
 * waits and retries with the same backoff as a failed COPY (no new entry
 * is read meanwhile), and an ack is never lost. Applying one again (a
 * retried batch, a redelivery) changes nothing: a command keeps its first
 * answer. An answer for no command of that device (unknown id, or another
 * device's command) changes nothing and is dead-lettered as
 * unknown_command; one for a command answered before is ignored. A
 * statement PostgreSQL refuses is retried one answer at a time, and the
 * answer it still refuses is dead-lettered (storage_rejected). Answers are
 * not telemetry: no row, no shadow, not counted as stored.
 *
 * When PostgreSQL is down the batch is retried with backoff; the next
 * batch is read and fanned out until it is full, then nothing more is
 * read: the stream grows, entries stay pending, nothing is lost.
 * When Redis is down nothing can be read or acknowledged; the batch in
 * hand is dropped from memory (it is still pending in Redis) and read
 * again through the recovery path once Redis is back.
 */
#include <inttypes.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cjson/cJSON.h>

#include "fl_commands.h"
#include "fl_enc.h"
#include "fl_fanout.h"
#include "fl_idset.h"
#include "fl_log.h"
#include "fl_payload.h"
#include "fl_pg.h"
#include "fl_pool.h"
#include "fl_redis.h"
#include "fl_shadow.h"
#include "fl_worker.h"

#define GROUP         "fleetd"
#define RETRY_MIN_MS  100
#define RETRY_MAX_MS  2000
#define SAMPLE_MS     1000
#define DEAD_PAYLOAD  1024    /* bytes of a payload kept in a dead letter */
#define CHUNK_ENTRIES 256     /* entries per pool job (and per script call) */
#define LINGER_BELOW  64      /* a first read this big is stored at once */
#define ROUND_BURST   8       /* rounds that may follow one another at once */
#define ROUND_KNEE    1000.0  /* entries/s per worker: rounds space out above */
#define RATE_WINDOW_US 100000
#define INLINE_ENTRIES 8      /* a round this small is parsed on the loop */
#define INLINE_BYTES  4096
#define KNOWN_MAX     200000  /* device ids remembered as registered */
#define KNOWN_TTL_MS  600000  /* and for how long */
#define ACK_SLICE     256     /* command answers per UPDATE, at most */
#define ACK_BYTES     1048576 /* a slice stops once its payloads reach it */

_Static_assert(FL_REJECT_COUNT <= FL_SHM_REJECT_REASONS,
               "fl_shm_worker_t.ingest_rejected is too small");

/* extra dead-letter reasons, after the parser's */
#define REASON_STORAGE    "storage_rejected"
#define REASON_DELIVERIES "max_deliveries"
#define REASON_TRIMMED    "trimmed"
#define REASON_TOO_OLD    "too_old"
#define REASON_IN_FUTURE  "in_future"

typedef enum { E_TELEMETRY, E_STATE, E_ACK, E_DEAD, E_SKIP } entry_kind_t;

typedef struct {
    char           id[48];
    char          *topic;
    char          *payload;
    size_t         plen;
    int64_t        rx_ms;      /* fleetd's clock at intake: latency, seen */
    int64_t        arrival_us; /* from the id: MS * 1000 + SEQ (unique) */
    int64_t        src;        /* from the id: MS * 1000000 + SEQ */
    int64_t        deliveries; /* from XPENDING; 0 = first delivery */
    int            fanned;     /* fanned out at append (field f) */
    entry_kind_t   kind;
    char           device[FL_DEVICE_ID_MAX + 1];
    fl_telemetry_t tele;        /* E_TELEMETRY: npoints 0 when all were cut */
    fl_cut_t       old, future; /* points taken out for their time */
    cJSON         *state;       /* E_STATE: the reported object */
    fl_ack_t       ack;         /* E_ACK: the answer to a command */
    const char    *dead_reason;
    char           dead_msg[FL_REJECT_MSGLEN];
} entry_t;

struct batch;

/* A slice of the batch prepared by one pool job. */
typedef struct {
    struct batch *b;        /* the batch it is a slice of */
    int           first, n; /* entries [first, first + n) */
    fl_pg_batch_t pgb;      /* their rows (moved into the batch's) */
    char         *cmd;      /* the shadow/fan-out script call, RESP */
    size_t        cmdlen;
    size_t        published; /* points the call publishes */
    char          sha[48];   /* the script's SHA1 when submitted, "" EVAL */
} chunk_t;

/* The gatherer: reads a batch, prepares and fans out each read. */
typedef enum {
    G_IDLE,     /* nothing in hand, nothing in flight */
    G_CLAIMING, /* XGROUP CREATE / XPENDING / XCLAIM in flight */
    G_READING,  /* XREADGROUP in flight, or the next round waits its turn */
    G_PARSING,  /* pool jobs (chunks) outstanding */
    G_FULL,     /* due and can read no more: waits for the storer */
} gphase_t;

/* The storer: stores, answers, publishes and acknowledges a batch. */
typedef enum {
    S_IDLE,       /* no batch */
    S_STORING,    /* fl_pg_write in flight or waiting to retry */
    S_ANSWERS,    /* command answers in flight or waiting to retry */
    S_PUBLISHING, /* dead letters in flight, fan-out replies awaited */
    S_ACKING,     /* XACK in flight */
} sphase_t;

typedef struct batch {
    entry_t       *e;
    int            n;
    chunk_t       *chunks;
    int            nchunks;
    int            jobs;      /* pool jobs outstanding */
    int            lingering; /* the batch gathers for ingest.linger */
    int            fanning;   /* a script call of ours went out for it */
    int            lazy;      /* 1: waits out the linger, 2: then read */
    int            noread;    /* a read failed: store what is in hand */
    int            parsed;    /* entries in chunks so far */
    int            fanned;    /* chunks whose script call went out */
    int            replies;   /* publish replies outstanding (the
                                 fan-out's from before the store on) */
    int            failed;    /* a publish command failed */
    int            isolate;   /* storing one entry at a time */
    int            next;      /* isolate: the entry being stored */
    size_t         rows;      /* rows of this batch's committed writes */
    uint64_t       published;  /* points its script calls published */
    uint64_t       fan_failed; /* points whose shadow and fan-out failed */
    fl_cmd_ack_t  *acks;      /* the answers being applied (ACK_SLICE) */
    int           *ack_entry; /* their entries */
    int            nacks;
    int            ack_pos;    /* entries before it are done */
    int            ack_single; /* one answer per statement */
    fl_cmd_acks_t *ackq;       /* the statement in flight */
    int64_t        read_us;
    fl_pg_batch_t  pgb;
} batch_t;

static struct {
    fl_redis_t         *rd; /* blocking reads */
    fl_redis_t         *wr; /* everything else */
    fl_pg_t            *pg;
    fl_pool_t          *pool;
    fl_payload_limits_t lim;
    char                stream[128];
    char                dead[128];
    char                consumer[128];
    char                shadow_prefix[128];
    char                desired_prefix[128];
    char                recent_prefix[128];
    char                wsid_key[128];
    int64_t             round_credit_us; /* token bucket of rounds */
    int64_t             round_last_us;
    double              rate; /* entries read per second (rate_note) */
    int64_t             rate_n, rate_t0;
    char                channel_prefix[128];
    gphase_t            phase;  /* the gatherer's */
    sphase_t            sphase; /* the storer's */
    int                 reading; /* an XREADGROUP is in flight */
    batch_t             bat[2];
    batch_t            *g; /* the batch being gathered */
    batch_t            *s; /* the batch being stored, NULL: none */
    int                 group_ready;
    char                shadow_sha[48]; /* SCRIPT LOAD result, "" = EVAL */
    int                 recover_own;    /* take back our own pending first */
    int                 stopping;
    int64_t             retry_ms;
    int64_t             next_claim_ms;
    struct event       *ev_kick;  /* the gatherer's next step (timer) */
    struct event       *ev_store; /* the storer's retry (timer) */
    struct event       *ev_sample;
    fl_idset_t          known;        /* devices with a registry row (lately) */
    struct event       *ev_hook;      /* FLEETD_TEST_HOOKS stall_before_xack */
    int64_t             hook_xack_ms; /* -1: no hook */
    fl_fanout_log_t     fan_log;      /* records that failed in the script */
} ing;

static void step(void);
static void kick(int64_t ms);
static void store_kick(int64_t ms);
static void handover(void);
static void store_batch(void);
static void store_answers(void);
static void register_devices(batch_t *b);
static void publish_batch(void);
static void fan_out(void);
static int  read_new(int count, int64_t block_ms);

/*
 * What the script saves per message (measured with bench/shadow-bench):
 * a key's TTL is set again only when FL_FANOUT_TTL_SLACK-th of it has
 * passed since the last time: the shadow hash remembers in the fields _e
 * (its own TTL) and _r (the resume list's) the TTL period (a 64th of the
 * TTL) they were last set in, read by the HMGET that reads the metric
 * times anyway, and a key is set again in a later period; so a shadow
 * expires between 63/64
 * of redis.shadow_ttl and all of it after its device's last message, a
 * resume list likewise with ws.resume_ttl. A resume list is trimmed back
 * to ws.resume_keep only when it has grown by FL_FANOUT_KEEP_SLACK-th of
 * that more; readers take its first resume_keep entries (fl_wshub.c).
 * The pieces are shared with the intake's script (fl_fanout.h).
 */
static const char shadow_lua[] =
    /* KEYS: one shadow hash per entry (a device may repeat, in stream
     * order). ARGV[1] ttl_ms, ARGV[2] the length of the shadow key
     * prefix, ARGV[3] the desired key prefix, ARGV[4] the resume list
     * prefix, ARGV[5] ws.resume_keep, ARGV[6] ws.resume_ttl in ms,
     * ARGV[7] the last id given, ARGV[8] the messages to publish, then per
     * key a record:
     *   mode ("t"|"s"), last_seen_ms, n, then n items -
     *     t: (metric, ts_ms, json), s: (key, json or "" for null) -
     *   then np, and when np > 0 a channel and np messages to PUBLISH.
     * Telemetry keeps the newest value per metric (out-of-order batches on
     * several workers cannot roll a value back): one HMGET of the stored
     * times, one HSET of what is newer. State is merged key by key, ""
     * (JSON null) deletes the key. The fan-out PUBLISH happens here, after
     * the shadow has the values: a dashboard that reads the shadow on a
     * message sees at least that message. Each published message gets
     * its id here: Redis's clock in microseconds, or one more than the
     * last id given when that is not smaller (ARGV[7] keeps it). Ids grow
     * in the order messages are published, which is the order every
     * subscriber receives them in, whichever worker or node published
     * them - so a WebSocket client resumes after the last id it saw and
     * misses nothing (stream ids would not do: two workers commit their
     * batches concurrently) - and an id tells when it was published,
     * which resume needs to know whether a range has expired. The
     * published messages are
     * also pushed on the device's resume list (newest first, the last
     * resume_keep, expiring resume_ttl after the newest; worker/ws/),
     * in the same script, so a WebSocket client that reads the list after
     * its SUBSCRIBE was confirmed misses nothing between the two. A
     * state change of a device with
     * desired state recomputes its delta (fl_shadow.h). The script
     * returns {failed, last failure, published, device, delta, ...}: the
     * points (a state message counts one) of the records that failed
     * (each record is its own pcall:
     * a device whose shadow or resume list key holds another type is
     * stored but not shown, and costs the others nothing), the points
     * published, and the deltas that changed, which the caller
     * publishes. */
    FL_DELTA_LUA
    FL_FANOUT_LUA
    "local plen, dpfx, rpfx, a = tonumber(ARGV[2]), ARGV[3], ARGV[4], 9\n"
    "local total, id = tonumber(ARGV[8]), 0\n"
    "local t = redis.call('TIME')\n"
    "local now = tonumber(t[1]) * 1000000 + tonumber(t[2])\n"
    "local c = fl_ctx(ARGV[1], ARGV[6], tonumber(ARGV[5]), "
    "math.floor(now / 1000))\n"
    "if total > 0 then\n"
    "  id = math.max(tonumber(redis.call('GET', ARGV[7]) or '0'), now - 1)\n"
    "  redis.call('SET', ARGV[7], string.format('%.0f', id + total))\n"
    "end\n"
    /* one record (its arguments from a, n items, np messages): the
     * shadow's delta when it changed, else nil */
    "local function rec(key, mode, seen, a, n, np)\n"
    "  local dev = string.sub(key, plen + 1)\n"
    "  if mode == 't' then\n"
    "    local set, ex, rx = fl_newer(key, seen, ARGV, a, n)\n"
    "    a = a + 3 * n\n"
    "    local ch, msgs = ARGV[a + 1], {}\n"
    "    for i = a + 2, a + 1 + np do\n"
    "      id = id + 1\n"
    "      msgs[#msgs + 1] = '{\"type\":\"telemetry\",\"id\":\"' ..\n"
    "        string.format('%.0f', id) .. '\",' .. ARGV[i]\n"
    "    end\n"
    "    fl_put(c, key, set, {}, ex, rx, rpfx .. dev, ch, msgs)\n"
    "    return nil\n"
    "  end\n"
    "  local cur = redis.call('HMGET', key, 'last_seen', '_e', '_r')\n"
    "  local set, del = {}, {}\n"
    "  if tonumber(cur[1] or '0') < tonumber(seen) then\n"
    "    set[#set + 1] = 'last_seen'; set[#set + 1] = seen\n"
    "  end\n"
    "  for i = a, a + 2 * n - 1, 2 do\n"
    "    if ARGV[i + 1] == '' then del[#del + 1] = 'r:' .. ARGV[i]\n"
    "    else set[#set + 1] = 'r:' .. ARGV[i]; set[#set + 1] = ARGV[i + 1] "
    "end\n"
    "  end\n"
    "  fl_put(c, key, set, del, cur[2], cur[3], nil, nil, {})\n"
    "  local dkey = dpfx .. dev\n"
    "  if redis.call('EXISTS', dkey) == 1 then\n"
    "    local d = fl_delta(dkey, key)\n"
    "    if d then return {dev, d} end\n"
    "  end\n"
    "  return nil\n"
    "end\n"
    /* a record that fails (a key of another type) costs only its own
     * device: counted, the others go on, the batch is acknowledged */
    "local out = {0, '', 0}\n"
    "for k = 1, #KEYS do\n"
    "  local mode, seen, n = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2])\n"
    "  local np, nx = 0, a + 4 + 2 * n\n"
    "  if mode == 't' then\n"
    "    np = tonumber(ARGV[a + 3 + 3 * n])\n"
    "    nx = a + 5 + 3 * n + np\n"
    "  end\n"
    "  local ok, v = pcall(rec, KEYS[k], mode, seen, a + 3, n, np)\n"
    "  if not ok then\n"
    "    out[1] = out[1] + (mode == 't' and np or 1)\n"
    "    out[2] = tostring(type(v) == 'table' and v.err or v)\n"
    "  else\n"
    "    out[3] = out[3] + np\n"
    "    if v then out[#out + 1] = v[1]; out[#out + 1] = v[2] end\n"
    "  end\n"
    "  a = nx\n"
    "end\n"
    "return out\n";

/* ---- batches ---- */

static void entry_clear(entry_t *e)
{
    free(e->topic);
    free(e->payload);
    fl_telemetry_free(&e->tele);
    if (e->state)
        cJSON_Delete(e->state);
    memset(e, 0, sizeof(*e));
}

static void batch_clear(batch_t *b)
{
    fl_commands_ack_cancel(b->ackq);
    free(b->acks);
    free(b->ack_entry);
    for (int i = 0; i < b->n; i++)
        entry_clear(&b->e[i]);
    free(b->e);
    for (int i = 0; i < b->nchunks; i++) {
        fl_pg_batch_free(&b->chunks[i].pgb);
        free(b->chunks[i].cmd);
    }
    free(b->chunks);
    fl_pg_batch_free(&b->pgb);
    memset(b, 0, sizeof(*b));
    fl_pg_batch_init(&b->pgb);
}

static void dead(entry_t *e, const char *reason, const char *msg)
{
    e->kind = E_DEAD;
    e->dead_reason = reason;
    snprintf(e->dead_msg, sizeof(e->dead_msg), "%s", msg);
}

static const redisReply *field(const redisReply *fields, const char *name)
{
    for (size_t i = 0; i + 1 < fields->elements; i += 2) {
        const redisReply *f = fields->element[i];
        if (f->type == REDIS_REPLY_STRING && strcmp(f->str, name) == 0)
            return fields->element[i + 1];
    }
    return NULL;
}

/* The entry id "MS-SEQ" as the message's arrival time and src (see "Time
 * of arrival" at the top). */
static void entry_times(entry_t *e)
{
    char     *end;
    long long ms = strtoll(e->id, &end, 10);
    long long seq = *end == '-' ? strtoll(end + 1, NULL, 10) : 0;

    if (ms <= 0 || seq < 0) { /* not Redis's: never seen, but be total */
        ms = fl_wall_ms();
        seq = 0;
    }
    e->arrival_us = ms * 1000 + seq;
    e->src = ms * 1000000 + fl_min(seq, 999999LL);
}

/*
 * Copy stream entries ([id, [field, value, ...]] each) from a reply into
 * the batch. Entries whose fields are gone (trimmed by MAXLEN before they
 * were processed) become dead letters so that the loss is visible.
 */
static void batch_add_entries(batch_t *b, const redisReply *list)
{
    size_t n0 = (size_t)b->n;

    b->e = fl_realloc(b->e, (n0 + list->elements) * sizeof(entry_t));
    for (size_t i = 0; i < list->elements; i++) {
        const redisReply *it = list->element[i], *f, *t, *p, *r;
        entry_t          *e = &b->e[b->n];

        if (it->type != REDIS_REPLY_ARRAY || it->elements < 2 ||
            it->element[0]->type != REDIS_REPLY_STRING)
            continue;
        memset(e, 0, sizeof(*e));
        snprintf(e->id, sizeof(e->id), "%s", it->element[0]->str);
        entry_times(e);
        b->n++;
        f = it->element[1];
        if (f->type != REDIS_REPLY_ARRAY) {
            dead(e, REASON_TRIMMED,
                 "entry trimmed from the stream before it was stored "
                 "(redis.stream_maxlen too small for the backlog)");
            continue;
        }
        t = field(f, "t");
        p = field(f, "p");
        r = field(f, "r");
        e->fanned = field(f, "f") != NULL;
        e->topic = fl_strdup(t && t->type == REDIS_REPLY_STRING ? t->str : "");
        e->plen = p && p->type == REDIS_REPLY_STRING ? p->len : 0;
        e->payload = fl_alloc(e->plen + 1);
        if (e->plen)
            memcpy(e->payload, p->str, e->plen);
        e->payload[e->plen] = '\0';
        e->rx_ms = r && r->type == REDIS_REPLY_STRING ? atoll(r->str) : 0;
        if (e->rx_ms <= 0)
            e->rx_ms = fl_wall_ms();
    }
}

/* ---- parsing ---- */

static void count_reject(const entry_t *e, fl_reject_reason_t reason)
{
    (void)e;
    if ((int)reason >= 0 && reason < FL_REJECT_COUNT)
        fl_shm_add(fl_worker.stats->ingest_rejected[reason], 1);
}

/* Reported state: a JSON object, shallow-merged into the shadow. */
static void parse_state(entry_t *e)
{
    cJSON *o;

    if (e->plen == 0 || !fl_utf8_valid(e->payload, e->plen)) {
        dead(e, fl_reject_name(e->plen ? FL_REJECT_NOT_UTF8 : FL_REJECT_EMPTY),
             "state payload must be a UTF-8 JSON object");
        count_reject(e, e->plen ? FL_REJECT_NOT_UTF8 : FL_REJECT_EMPTY);
        return;
    }
    o = cJSON_ParseWithLength(e->payload, e->plen);
    if (o == NULL || !cJSON_IsObject(o)) {
        dead(e,
             fl_reject_name(o ? FL_REJECT_NOT_AN_OBJECT
                              : FL_REJECT_INVALID_JSON),
             "state payload must be a JSON object");
        count_reject(e, o ? FL_REJECT_NOT_AN_OBJECT : FL_REJECT_INVALID_JSON);
        cJSON_Delete(o);
        return;
    }
    if (cJSON_GetArraySize(o) > fl_worker.cf->limits.max_metrics) {
        dead(e, fl_reject_name(FL_REJECT_TOO_MANY_METRICS),
             "state has more keys than limits.max_metrics");
        count_reject(e, FL_REJECT_TOO_MANY_METRICS);
        cJSON_Delete(o);
        return;
    }
    e->state = o;
}

/* A device's answer to a command: checked here, applied after the
 * batch's telemetry committed (store_answers). */
static void parse_ack(entry_t *e)
{
    fl_reject_t why;

    if (fl_ack_parse(e->payload, e->plen, &ing.lim, &e->ack, &why) != FL_OK) {
        dead(e, fl_reject_name(why.reason), why.msg);
        count_reject(e, why.reason);
    }
}

/* Classify and parse one entry. Runs on the loop or on a pool thread
 * (it touches nothing but the entry and atomic counters). */
static void parse_entry(entry_t *e)
{
    fl_topic_kind_t kind;
    fl_reject_t     why;

    if (fl_topic_parse(e->topic, strlen(e->topic), e->device, &kind, &why) !=
        FL_OK) {
        dead(e, fl_reject_name(why.reason), why.msg);
        count_reject(e, why.reason);
        return;
    }
    if (kind == FL_TOPIC_STATE) {
        e->kind = E_STATE;
        parse_state(e);
        return;
    }
    if (kind == FL_TOPIC_CMD_ACK) {
        e->kind = E_ACK;
        parse_ack(e);
        return;
    }
    e->kind = E_TELEMETRY;
    if (fl_payload_parse(e->payload, e->plen, e->arrival_us, &ing.lim, &e->tele,
                         &why) != FL_OK) {
        dead(e, fl_reject_name(why.reason), why.msg);
        count_reject(e, why.reason);
        return;
    }
    fl_shm_add(fl_worker.stats->ingest_accepted, 1);
    /* the storable range: retention as of now, the clock skew as of the
     * message's arrival (the same for every delivery of the entry) */
    fl_telemetry_cut(
        &e->tele,
        (fl_wall_ms() -
         (int64_t)fl_worker.cf->postgres.retention_days * 86400000LL) *
            1000,
        e->arrival_us + fl_worker.cf->limits.max_clock_skew_ms * 1000, &e->old,
        &e->future);
}

/* ---- preparing a batch on the pool ---- */

/*
 * The CPU work of a batch (parsing, the COPY rows, the shadow and fan-out
 * script call in the protocol's form) runs on the pool, CHUNK_ENTRIES
 * entries per job, so the loop only moves bytes: with thousands of
 * entries per batch, doing it inline held the loop for tens of ms. A
 * payload above ingest.parse_inline_max gets a job of its own, so one big
 * payload does not hold back a chunk of small ones. A job touches only its
 * own chunk, its entries, the read-only configuration and atomic counters.
 */

/* The WebSocket form of point p of e (CONTRACT.md section 5) without its
 * head: the script puts {"type":"telemetry","id":"N", in front, N from
 * the id counter (see shadow_lua). */
static void point_json(fl_sbuf_t *b, const entry_t *e, size_t p)
{
    const fl_point_t *pt = &e->tele.points[p];

    b->len = 0;
    fl_sb_lit(b, "\"device\":");
    fl_sb_jstr(b, e->device);
    fl_sb_lit(b, ",\"ts\":");
    fl_sb_i64(b, pt->ts_us / 1000);
    fl_sb_lit(b, ",\"values\":{");
    for (size_t m = 0; m < pt->nmetrics; m++) {
        if (m > 0)
            fl_sb_lit(b, ",");
        fl_sb_jstr(b, pt->metrics[m].name);
        fl_sb_lit(b, ":");
        fl_fanout_metric_json(b, &pt->metrics[m]);
    }
    fl_sb_lit(b, "}}");
}

/* Telemetry with points that was not fanned out at append
 * (fl_fanout.h): this consumer's script call takes it. */
static int has_points(const entry_t *e)
{
    return e->kind == E_TELEMETRY && e->tele.npoints > 0 && !e->fanned;
}

/*
 * The telemetry entries of a chunk grouped by device: next[k] is the
 * chunk's next entry (index from c->first) of the same device after entry
 * k, -1 for none; tail[k] is 1 for an entry that follows an earlier one of
 * its device. A hash of the device ids, GROUP_TABLE slots (chunks hold at most
 * CHUNK_ENTRIES entries), open addressing.
 */
#define GROUP_TABLE 512
_Static_assert(GROUP_TABLE >= 2 * CHUNK_ENTRIES, "group table too small");

static void chunk_group(const chunk_t *c, int *next, char *tail)
{
    int slot[GROUP_TABLE], last[GROUP_TABLE];

    for (int k = 0; k < GROUP_TABLE; k++)
        slot[k] = -1;
    for (int k = 0; k < c->n; k++) {
        const entry_t *e = &c->b->e[c->first + k];
        uint32_t       h;

        next[k] = -1;
        tail[k] = 0;
        if (!has_points(e))
            continue;
        h = fl_fnv1a(e->device, strlen(e->device)) & (GROUP_TABLE - 1);
        while (slot[h] >= 0 &&
               strcmp(c->b->e[c->first + slot[h]].device, e->device) != 0)
            h = (h + 1) & (GROUP_TABLE - 1);
        if (slot[h] < 0) {
            slot[h] = last[h] = k;
        } else {
            next[last[h]] = k;
            last[h] = k;
            tail[k] = 1;
        }
    }
}

/*
 * One script call for the chunk's shadow updates and fan-out (see
 * shadow_lua for the argument layout): a call per chunk instead of an
 * EVALSHA and a PUBLISH per message. Entries that are not telemetry or
 * state (dead letters) are left out; they go through publish_dead().
 * The telemetry of one device in the chunk is one record (chunk_group()),
 * its entries' metrics and points in stream order: one HMGET, HSET and
 * LPUSH for a burst of a device instead of one each per message; the
 * script keeps the newest value per metric of the whole record.
 */
static void chunk_build_cmd(chunk_t *c)
{
    const fl_config_t *cf = fl_worker.cf;
    fl_resp_t          keys = {0}, args = {0}, r = {0};
    fl_sbuf_t          js = {0};
    char               key[200], channel[160];
    int                nkeys = 0, next[CHUNK_ENTRIES];
    char               tail[CHUNK_ENTRIES];

    free(c->cmd);
    c->cmd = NULL;
    c->cmdlen = 0;
    c->published = 0;
    chunk_group(c, next, tail);
    for (int i = c->first; i < c->first + c->n; i++) {
        entry_t *e = &c->b->e[i];
        int64_t  seen = 0;
        size_t   nmetrics = 0, npoints = 0;

        if ((e->kind != E_TELEMETRY && e->kind != E_STATE) ||
            (e->kind == E_TELEMETRY && !has_points(e)) ||
            tail[i - c->first])
            continue;
        snprintf(key, sizeof(key), "%s%s", ing.shadow_prefix, e->device);
        fl_resp_str(&keys, key);
        nkeys++;
        if (e->kind == E_STATE) {
            cJSON *it;

            fl_resp_str(&args, "s");
            fl_resp_i64(&args, e->rx_ms);
            fl_resp_i64(&args, cJSON_GetArraySize(e->state));
            cJSON_ArrayForEach(it, e->state)
            {
                fl_resp_str(&args, it->string);
                if (cJSON_IsNull(it)) {
                    fl_resp_arg(&args, "", 0);
                } else {
                    char *v = cJSON_PrintUnformatted(it);
                    fl_resp_str(&args, v);
                    cJSON_free(v);
                }
            }
            fl_resp_i64(&args, 0);
            continue;
        }
        for (int k = i - c->first; k >= 0; k = next[k]) {
            const entry_t *g = &c->b->e[c->first + k];

            seen = fl_max(seen, g->rx_ms);
            nmetrics += g->tele.nmetrics;
            npoints += g->tele.npoints;
        }
        fl_resp_str(&args, "t");
        fl_resp_i64(&args, seen);
        fl_resp_i64(&args, (int64_t)nmetrics);
        for (int k = i - c->first; k >= 0; k = next[k]) {
            const entry_t *g = &c->b->e[c->first + k];

            for (size_t p = 0; p < g->tele.npoints; p++) {
                const fl_point_t *pt = &g->tele.points[p];

                for (size_t m = 0; m < pt->nmetrics; m++) {
                    fl_resp_str(&args, pt->metrics[m].name);
                    fl_resp_i64(&args, pt->ts_us / 1000);
                    js.len = 0;
                    fl_fanout_metric_json(&js, &pt->metrics[m]);
                    fl_resp_arg(&args, js.p, js.len);
                }
            }
        }
        snprintf(channel, sizeof(channel), "%s%u", ing.channel_prefix,
                 fl_shadow_shard(e->device, cf->redis.channel_shards));
        fl_resp_i64(&args, (int64_t)npoints);
        fl_resp_str(&args, channel);
        for (int k = i - c->first; k >= 0; k = next[k]) {
            const entry_t *g = &c->b->e[c->first + k];

            for (size_t p = 0; p < g->tele.npoints; p++) {
                point_json(&js, g, p);
                fl_resp_arg(&args, js.p, js.len);
            }
        }
        c->published += npoints;
    }
    fl_sb_free(&js);
    if (nkeys == 0) {
        fl_resp_free(&keys);
        fl_resp_free(&args);
        return;
    }
    fl_resp_str(&r, c->sha[0] ? "EVALSHA" : "EVAL");
    fl_resp_str(&r, c->sha[0] ? c->sha : shadow_lua);
    fl_resp_i64(&r, nkeys);
    fl_resp_append(&r, &keys);
    fl_resp_i64(&r, cf->redis.shadow_ttl_ms);
    fl_resp_i64(&r, (int64_t)strlen(ing.shadow_prefix));
    fl_resp_str(&r, ing.desired_prefix);
    fl_resp_str(&r, ing.recent_prefix);
    fl_resp_i64(&r, cf->ws.resume_keep);
    fl_resp_i64(&r, cf->ws.resume_ttl_ms);
    fl_resp_str(&r, ing.wsid_key);
    fl_resp_i64(&r, (int64_t)c->published);
    fl_resp_append(&r, &args);
    fl_resp_free(&keys);
    fl_resp_free(&args);
    c->cmd = fl_resp_finish(&r, &c->cmdlen);
}

static void chunk_work(void *arg)
{
    chunk_t *c = arg;

    for (int i = c->first; i < c->first + c->n; i++) {
        entry_t *e = &c->b->e[i];

        if (e->kind == E_DEAD)
            continue;
        parse_entry(e);
        if (e->kind == E_TELEMETRY)
            fl_pg_batch_add(&c->pgb, e->device, &e->tele, e->src);
    }
    chunk_build_cmd(c);
}

static void round_done(void);

/*
 * The gathering batch's next read. While it lingers: what comes within
 * the rest of the linger (BLOCK). Once it is due but the storer still
 * has the previous batch: what comes within ingest.block, so that
 * dashboards keep getting messages while PostgreSQL commits. A batch
 * that can read no more (full, stopping, a read failed) waits for the
 * storer (G_FULL).
 */
static void next_read(void)
{
    const fl_config_t *cf = fl_worker.cf;
    batch_t           *g = ing.g;
    int64_t left_ms = cf->ingest.linger_ms - (fl_now_us() - g->read_us) / 1000;

    ing.phase = G_READING;
    if (g->lingering) {
        int more = !ing.stopping && g->n < cf->ingest.batch;

        /* the wait is over: what came meanwhile, at once */
        if (g->lazy == 1 && more) {
            g->lazy = 2;
            if (read_new(cf->ingest.batch - g->n, -1) == FL_OK)
                return;
        }
        /* nothing in the batch for our script call (all fanned out at
         * append): no dashboard waits for it, so no round wakes us for
         * each entry that comes; one read at the end of the linger */
        if (left_ms > 0 && more && g->lazy == 0 && !g->fanning) {
            g->lazy = 1;
            kick(left_ms);
            return;
        }
        if (left_ms > 0 && more &&
            read_new(cf->ingest.batch - g->n, left_ms) == FL_OK)
            return;
        g->lingering = 0;
        round_done();
        return;
    }
    if (!ing.stopping && !g->noread && g->n < cf->ingest.batch &&
        read_new(cf->ingest.batch - g->n, cf->ingest.block_ms) == FL_OK)
        return;
    ing.phase = G_FULL;
}

/* Entries read per second by this worker (an average over windows of
 * RATE_WINDOW_US, halved each window), for round_interval_us(). */
static void rate_note(int n)
{
    int64_t now = fl_now_us();

    ing.rate_n += n;
    if (ing.rate_t0 == 0)
        ing.rate_t0 = now;
    if (now - ing.rate_t0 >= RATE_WINDOW_US) {
        double r = (double)ing.rate_n * 1e6 / (double)(now - ing.rate_t0);

        ing.rate = 0.5 * ing.rate + 0.5 * r;
        ing.rate_n = 0;
        ing.rate_t0 = now;
    }
}

/* ingest.fanout_interval up to ROUND_KNEE entries a second, then longer
 * in proportion to the rate (up to the linger): at 5,000/s a round per
 * 10 ms, tens of entries each. */
static int64_t round_interval_us(void)
{
    const fl_config_t *cf = fl_worker.cf;
    int64_t            iv = cf->ingest.fanout_interval_ms * 1000;
    double             k = ing.rate / ROUND_KNEE;

    if (k > 1.0)
        iv = fl_min((int64_t)((double)iv * k),
                    fl_max(iv, cf->ingest.linger_ms * 1000));
    return iv;
}

/*
 * How long the next round (a read, and the script call of what it
 * brought) must wait: rounds draw on a token bucket that refills one per
 * round_interval_us() and holds ROUND_BURST. Each round costs Redis and
 * fleetd a read and a script call, so rounds as fast as messages come
 * would multiply what each message costs; at low rates the bucket is
 * full and a message is fanned out the moment it is read.
 */
static int64_t round_wait_us(void)
{
    int64_t now = fl_now_us();
    int64_t iv = round_interval_us();

    ing.round_credit_us =
        fl_min(ing.round_credit_us + (now - ing.round_last_us),
               ROUND_BURST * iv);
    ing.round_last_us = now;
    if (ing.round_credit_us >= iv) {
        ing.round_credit_us -= iv;
        return 0;
    }
    return iv - ing.round_credit_us;
}

/* A round of the gathering batch is prepared and fanned out: hand the
 * batch to the storer when it is due, or read the next round when the
 * bucket allows (round_wait_us). */
static void round_done(void)
{
    const fl_config_t *cf = fl_worker.cf;
    batch_t           *g = ing.g;
    int64_t            wait_us;

    ing.phase = G_READING;
    if (!g->lingering) {
        handover();
        if (ing.g != g) {
            step(); /* the storer took it: gather the next */
            return;
        }
        if (ing.stopping || g->noread || g->n >= cf->ingest.batch) {
            ing.phase = G_FULL;
            return;
        }
        /* due while the storer commits the batch before: gather on,
         * round by round (the storer taking the batch ends a wait,
         * handover()) */
    }
    wait_us = round_wait_us();
    if (wait_us > 0)
        kick((wait_us + 999) / 1000); /* on_kick() -> next_read() */
    else
        next_read();
}

static void chunk_done(void *arg)
{
    chunk_t *c = arg;

    if (--c->b->jobs > 0 || ing.phase != G_PARSING)
        return;
    fan_out();
    round_done();
}

static void on_published(fl_redis_t *r, redisReply *reply, void *ud);

/*
 * The shadow and fan-out script calls of a round go out as soon as it is
 * prepared, while PostgreSQL stores the batch before it: a dashboard
 * sees a message a commit sooner, and keeps seeing messages while
 * PostgreSQL is slow or away (until the batch after the one being
 * stored is full). Their replies are counted in the batch (on_published),
 * which is acknowledged only when all are in and its commit is done. An
 * entry that PostgreSQL refuses later (dead-lettered with reason
 * storage) has then been shown on dashboards already; and a batch taken
 * back after a crash before its XACK is published again, under new ids.
 */
static void fan_out(void)
{
    batch_t *g = ing.g;

    for (int i = g->fanned; i < g->nchunks && !g->failed; i++) {
        chunk_t *c = &g->chunks[i];

        if (c->cmd == NULL)
            continue;
        if (fl_redis_cmdraw(ing.wr, 0, on_published, g, c->cmd, c->cmdlen) !=
            FL_OK) {
            g->failed = 1;
            break;
        }
        g->fanning = 1;
        g->replies++;
    }
    g->fanned = g->nchunks;
}

/*
 * Auto-registration: a device that publishes before anyone registered it
 * gets a registry row (auto = true), written in the batch's transaction
 * (fl_pg_batch_device). The ids registered lately are remembered
 * (KNOWN_TTL_MS), so a steady fleet costs nothing here; a device deleted
 * through the API that keeps publishing is registered again within that
 * time.
 */
static void register_devices(batch_t *b)
{
    int64_t now = fl_now_ms();

    for (int i = 0; i < b->n; i++) {
        const entry_t *e = &b->e[i];

        if (!((e->kind == E_TELEMETRY && e->tele.npoints > 0) ||
              e->kind == E_STATE) ||
            fl_idset_has(&ing.known, e->device, now))
            continue;
        fl_pg_batch_device(&b->pgb, e->device);
        fl_idset_add(&ing.known, e->device, now);
    }
}

/*
 * The gathered batch is due (no longer lingering): the storer takes it
 * when it has none, else when it is done with its own (on_acked()). Not
 * while pool jobs work on it or a claim fills it. The gatherer goes on
 * with an empty batch; an XREADGROUP in flight fills that one.
 */
static void handover(void)
{
    batch_t *b = ing.g;

    if (ing.s != NULL || b->n == 0 || b->lingering ||
        ing.phase == G_PARSING || ing.phase == G_CLAIMING)
        return;
    ing.s = b;
    ing.g = b == &ing.bat[0] ? &ing.bat[1] : &ing.bat[0];
    if (!ing.reading) {
        evtimer_del(ing.ev_kick); /* a round waiting for its turn */
        ing.phase = G_IDLE;
    }
    /* the rows of all chunks, in entry order, make the batch's COPY */
    fl_pg_batch_reset(&b->pgb);
    for (int i = 0; i < b->nchunks; i++) {
        chunk_t *c = &b->chunks[i];

        evbuffer_add_buffer(b->pgb.copy, c->pgb.copy);
        b->pgb.rows += c->pgb.rows;
    }
    register_devices(b);
    store_batch();
}

/* Submit the chunks from index from on to the pool; a round of a few
 * small entries (INLINE_ENTRIES, INLINE_BYTES in all) is prepared on the
 * loop instead: a few microseconds of parsing cost less than the two
 * thread hand-offs, which a dashboard would wait for. */
static void chunks_submit(int from)
{
    batch_t *g = ing.g;
    size_t   bytes = 0;

    ing.phase = G_PARSING;
    g->jobs = g->nchunks - from;
    if (g->jobs == 1 && g->chunks[from].n <= INLINE_ENTRIES) {
        chunk_t *c = &g->chunks[from];

        for (int i = c->first; i < c->first + c->n; i++)
            bytes += g->e[i].plen;
        if (bytes <= INLINE_BYTES) {
            snprintf(c->sha, sizeof(c->sha), "%s", ing.shadow_sha);
            chunk_work(c);
            chunk_done(c);
            return;
        }
    }
    for (int i = from; i < g->nchunks; i++) {
        chunk_t *c = &g->chunks[i];

        snprintf(c->sha, sizeof(c->sha), "%s", ing.shadow_sha);
        fl_pool_submit(ing.pool, chunk_work, chunk_done, c);
    }
}

/* Split the entries of the gathering batch not yet prepared (those of
 * its last read) into chunks and prepare them on the pool; chunk_done()
 * follows, or round_done() at once when there are none. */
static void parse_batch(void)
{
    batch_t *g = ing.g;
    int64_t  big = fl_worker.cf->ingest.parse_inline_max;
    int      first = g->parsed, from = g->nchunks;

    if (g->parsed == g->n) {
        round_done();
        return;
    }
    for (int i = g->parsed; i < g->n; i++) {
        entry_t *e = &g->e[i];

        if (e->kind != E_DEAD &&
            e->deliveries > fl_worker.cf->ingest.max_deliveries) {
            char msg[96];
            snprintf(msg, sizeof(msg),
                     "delivered %lld times without being "
                     "stored",
                     (long long)e->deliveries);
            dead(e, REASON_DELIVERIES, msg);
        }
    }
    /* at most one chunk per entry */
    g->chunks = fl_realloc(g->chunks, (size_t)g->n * sizeof(chunk_t));
    for (int i = g->parsed; i < g->n; i++) {
        int alone = (int64_t)g->e[i].plen > big;

        /* close the open chunk before a big entry, when full, at the end */
        if (i > first && (alone || i - first == CHUNK_ENTRIES)) {
            g->chunks[g->nchunks++] =
                (chunk_t){.b = g, .first = first, .n = i - first};
            first = i;
        }
        if (alone) {
            g->chunks[g->nchunks++] = (chunk_t){.b = g, .first = i, .n = 1};
            first = i + 1;
        }
    }
    if (first < g->n)
        g->chunks[g->nchunks++] =
            (chunk_t){.b = g, .first = first, .n = g->n - first};
    g->parsed = g->n;
    for (int i = from; i < g->nchunks; i++)
        fl_pg_batch_init(&g->chunks[i].pgb);
    chunks_submit(from);
}

/* ---- storing ---- */

static void on_stored(fl_pg_t *pg, fl_pg_result_t res, const char *err,
                      const fl_pg_counts_t *counts, void *ud);

/* Storing one entry at a time (after PostgreSQL refused the batch): the
 * COPY buffer holds the single entry s->next. */
static void fill_one(void)
{
    batch_t *s = ing.s;
    entry_t *e = &s->e[s->next];

    fl_pg_batch_reset(&s->pgb);
    fl_pg_batch_add(&s->pgb, e->device, &e->tele, e->src);
    fl_pg_batch_device(&s->pgb, e->device);
}

static void store_batch(void)
{
    batch_t *s = ing.s;
    int rc;

    ing.sphase = S_STORING;
    if (s->isolate) {
        while (s->next < s->n && s->e[s->next].kind != E_TELEMETRY)
            s->next++;
        if (s->next >= s->n) {
            store_answers();
            return;
        }
        fill_one();
    }
    if (s->pgb.rows == 0 && s->pgb.devices_len == 0) {
        store_answers();
        return;
    }
    rc = fl_pg_write(ing.pg, &s->pgb, on_stored, NULL);
    if (rc != FL_OK) {
        /* not connected: the entries stay pending
         * in Redis, the stream grows; try again shortly */
        store_kick(ing.retry_ms);
        ing.retry_ms = fl_min(ing.retry_ms * 2, RETRY_MAX_MS);
    }
}

/* The counters of a committed write: they say what is in the table now,
 * whatever happens to the batch later (a batch stored again after a
 * failed publish step finds its rows there: duplicates). */
static void count_write(const fl_pg_counts_t *c)
{
    fl_shm_worker_t *s = fl_worker.stats;

    fl_shm_add(s->ingest_rows, c->inserted);
    fl_shm_add(s->ingest_overwritten, c->updated + c->lost);
    fl_shm_add(s->ingest_duplicates, c->duplicates);
    fl_shm_add(s->ingest_rows_dead[FL_ROW_TOO_OLD], c->expired);
}

static void on_stored(fl_pg_t *pg, fl_pg_result_t res, const char *err,
                      const fl_pg_counts_t *counts, void *ud)
{
    batch_t *s = ing.s;
    (void)pg, (void)ud;

    if (ing.sphase != S_STORING)
        return;
    if (res == FL_PG_OK) {
        s->rows += s->pgb.rows;
        ing.retry_ms = RETRY_MIN_MS;
        if (counts)
            count_write(counts);
        if (s->isolate) {
            s->next++;
            store_batch();
        } else {
            store_answers();
        }
        return;
    }
    fl_shm_add(fl_worker.stats->ingest_pg_failures, 1);
    if (res == FL_PG_REJECTED) {
        if (!s->isolate) {
            /* one bad row fails a COPY: find it by storing one entry at
             * a time; the others are written normally */
            fl_warn("postgres refused a batch of %d entries (%s), "
                    "storing them one by one",
                    s->n, err ? err : "");
            s->isolate = 1;
            s->next = 0;
        } else {
            dead(&s->e[s->next], REASON_STORAGE,
                 err ? err : "refused by postgres");
            s->next++;
        }
        store_batch();
        return;
    }
    /* FL_PG_DOWN: keep the batch, retry */
    store_kick(ing.retry_ms);
    ing.retry_ms = fl_min(ing.retry_ms * 2, RETRY_MAX_MS);
}

/* ---- command answers ---- */

static void on_answers(int rc, const char *err, void *ud);

/* The database is away or busy: keep the batch, try again shortly. */
static void answers_retry(const char *err)
{
    if (ing.retry_ms == RETRY_MIN_MS)
        fl_warn("command answers of a batch not applied (%s), retrying", err);
    store_kick(ing.retry_ms);
    ing.retry_ms = fl_min(ing.retry_ms * 2, RETRY_MAX_MS);
}

/*
 * Apply the next slice of the batch's answers (entries from ack_pos on),
 * or go on to the publish step when none is left. See "Command answers"
 * at the top.
 */
static void store_answers(void)
{
    batch_t *s = ing.s;
    int    max = s->ack_single ? 1 : ACK_SLICE, n = 0;
    size_t bytes = 0;

    ing.sphase = S_ANSWERS;
    while (s->ack_pos < s->n && s->e[s->ack_pos].kind != E_ACK)
        s->ack_pos++;
    if (s->ack_pos >= s->n) {
        publish_batch();
        return;
    }
    if (s->acks == NULL) {
        s->acks = fl_calloc(ACK_SLICE, sizeof(*s->acks));
        s->ack_entry = fl_calloc(ACK_SLICE, sizeof(*s->ack_entry));
    }
    for (int i = s->ack_pos; i < s->n && n < max && bytes < ACK_BYTES;
         i++) {
        entry_t *e = &s->e[i];

        if (e->kind != E_ACK)
            continue;
        s->acks[n] = (fl_cmd_ack_t){
            .device = e->device,
            .id = e->ack.id,
            .ok = e->ack.ok,
            .json = e->payload + e->ack.json_off,
            .len = e->plen - e->ack.json_off,
        };
        s->ack_entry[n++] = i;
        bytes += e->plen;
    }
    s->nacks = n;
    if (fl_commands_ack(s->acks, n, on_answers, NULL, &s->ackq) !=
        FL_OK) {
        s->ackq = NULL;
        answers_retry("the API's database pool is down or its queue full");
    }
}

static void on_answers(int rc, const char *err, void *ud)
{
    batch_t *s = ing.s;
    char msg[FL_REJECT_MSGLEN];

    (void)ud;
    s->ackq = NULL;
    if (ing.sphase != S_ANSWERS)
        return;
    if (rc == FL_AGAIN) {
        answers_retry(err ? err : "database unavailable");
        return;
    }
    ing.retry_ms = RETRY_MIN_MS;
    if (rc != FL_OK) {
        if (s->nacks > 1) {
            /* find the answer PostgreSQL refuses: one at a time */
            fl_warn("postgres refused %d command answers (%s), applying "
                    "them one by one",
                    s->nacks, err ? err : "");
            s->ack_single = 1;
            store_answers();
            return;
        }
        dead(&s->e[s->ack_entry[0]], REASON_STORAGE,
             err ? err : "refused by postgres");
    }
    for (int k = 0; rc == FL_OK && k < s->nacks; k++) {
        const fl_cmd_ack_t *a = &s->acks[k];
        entry_t            *e = &s->e[s->ack_entry[k]];

        switch (a->outcome) {
        case FL_ACK_APPLIED:
            fl_debug("command %s of %s answered, ok %d", a->id, a->device,
                     a->ok);
            break;
        case FL_ACK_ANSWERED:
            fl_debug("command %s of %s: answered before, answer ignored", a->id,
                     a->device);
            break;
        case FL_ACK_UNKNOWN:
        case FL_ACK_OTHER_DEVICE:
            snprintf(msg, sizeof(msg), "no command \"%s\" for device \"%s\"%s",
                     a->id, a->device,
                     a->outcome == FL_ACK_OTHER_DEVICE
                         ? " (it is another device's)"
                         : "");
            dead(e, fl_reject_name(FL_REJECT_UNKNOWN_COMMAND), msg);
            count_reject(e, FL_REJECT_UNKNOWN_COMMAND);
            break;
        }
    }
    s->ack_pos = s->ack_entry[s->nacks - 1] + 1;
    store_answers();
}

/* ---- publishing: dead letters, shadow, fan-out ---- */

static void ack_batch(void);

static int publish_dead(const entry_t *e, const char *reason, const char *msg)
{
    batch_t *s = ing.s;
    char        rx[24], maxlen[24];
    size_t      plen = fl_min(e->plen, (size_t)DEAD_PAYLOAD);
    const char *argv[] = {"XADD",    ing.dead,
                          "MAXLEN",  "~",
                          maxlen,    "*",
                          "topic",   e->topic ? e->topic : "",
                          "reason",  reason,
                          "error",   msg,
                          "payload", e->payload ? e->payload : "",
                          "rx",      rx,
                          "id",      e->id};
    size_t      len[fl_nelem(argv)];

    snprintf(rx, sizeof(rx), "%lld", (long long)e->rx_ms);
    snprintf(maxlen, sizeof(maxlen), "%lld",
             (long long)fl_worker.cf->redis.dead_letter_maxlen);
    for (size_t i = 0; i < fl_nelem(argv); i++)
        len[i] = strlen(argv[i]);
    len[13] = plen; /* payload: binary-safe, truncated */
    if (fl_redis_cmdargv(ing.wr, 0, on_published, s, (int)fl_nelem(argv),
                         argv, len) != FL_OK)
        return FL_ERROR;
    s->replies++;
    return FL_OK;
}

/* "2026-12-04T10:00:00.123Z" of an epoch us, into buf. */
static void iso_time(char *buf, size_t len, int64_t us)
{
    time_t    sec = (time_t)(us / 1000000);
    struct tm tm;

    if (gmtime_r(&sec, &tm) == NULL ||
        strftime(buf, len, "%Y-%m-%dT%H:%M:%S", &tm) == 0) {
        snprintf(buf, len, "%lld us", (long long)us);
        return;
    }
    snprintf(buf + strlen(buf), len - strlen(buf), ".%03dZ",
             (int)(us / 1000 % 1000));
}

/* The dead letter of the points a message lost for their time (one per
 * reason); the payload is the whole message's. */
static int publish_cut(const entry_t *e, const fl_cut_t *c, int old)
{
    const fl_config_t *cf = fl_worker.cf;
    char               first[48], msg[FL_REJECT_MSGLEN + 64];
    size_t total = e->tele.npoints + e->old.npoints + e->future.npoints;

    iso_time(first, sizeof(first), c->first_us);
    if (old)
        snprintf(msg, sizeof(msg),
                 "%zu of %zu points older than postgres.retention_days (%d), "
                 "the first at %s; %s",
                 c->npoints, total, cf->postgres.retention_days, first,
                 e->tele.npoints ? "the other points were stored"
                                 : "nothing of the message was stored");
    else
        snprintf(msg, sizeof(msg),
                 "%zu of %zu points later than arrival + "
                 "limits.max_clock_skew (%lld s), the first at %s; %s",
                 c->npoints, total,
                 (long long)(cf->limits.max_clock_skew_ms / 1000), first,
                 e->tele.npoints ? "the other points were stored"
                                 : "nothing of the message was stored");
    return publish_dead(e, old ? REASON_TOO_OLD : REASON_IN_FUTURE, msg);
}

static void publish_done(void);

/* The dead letters; the script calls went out while the batch was
 * gathered (fan_out). on_published() counts the replies of both. */
static void publish_batch(void)
{
    batch_t *s = ing.s;
    int      ok = 1;

    ing.sphase = S_PUBLISHING;
    for (int i = 0; i < s->n && ok; i++) {
        const entry_t *e = &s->e[i];

        if (e->kind == E_DEAD) {
            ok = publish_dead(e, e->dead_reason, e->dead_msg) == FL_OK;
        } else if (e->kind == E_TELEMETRY) {
            if (e->old.npoints)
                ok = publish_cut(e, &e->old, 1) == FL_OK;
            if (ok && e->future.npoints)
                ok = publish_cut(e, &e->future, 0) == FL_OK;
        }
    }
    if (!ok)
        s->failed = 1;
    if (s->replies == 0)
        publish_done();
}

/* A script call's reply: {device, delta, ...} of the desired deltas that
 * changed (fl_shadow.h); publish them, retained. An empty delta clears
 * the retained message. */
static void publish_deltas(const redisReply *reply)
{
    for (size_t i = FL_FANOUT_REPLY_HEAD; i + 1 < reply->elements; i += 2) {
        const redisReply *id = reply->element[i], *d = reply->element[i + 1];

        if (id->type == REDIS_REPLY_STRING && d->type == REDIS_REPLY_STRING)
            fl_shadow_publish_delta(id->str, d->str, d->len);
    }
}

/* One reply of a batch's fan-out or dead letters (ud: the batch). */
static void on_published(fl_redis_t *r, redisReply *reply, void *ud)
{
    batch_t *b = ud;
    uint64_t failed, published;

    (void)r;
    /* a shadow script's reply (the dead letters' are entry ids) */
    if (fl_fanout_reply_head(reply, &ing.fan_log, "stream consumer", &failed,
                             &published) == 0) {
        b->published += published;
        b->fan_failed += failed;
        publish_deltas(reply);
    }
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (reply && strncmp(reply->str, "NOSCRIPT", 8) == 0)
            ing.shadow_sha[0] = '\0'; /* script cache flushed: EVAL */
        else if (reply)
            fl_error("redis refused a publish step command: %s", reply->str);
        b->failed = 1;
    }
    if (--b->replies > 0)
        return;
    if (b == ing.s && ing.sphase == S_PUBLISHING)
        publish_done();
}

/* The storer is done with its batch (acknowledged or given up): take the
 * gathered one if it is due, and let the gatherer go on. */
static void store_done(void)
{
    batch_clear(ing.s);
    ing.s = NULL;
    ing.sphase = S_IDLE;
    handover();
    step();
}

/* Every reply of the batch is in: acknowledge it, or leave it pending. */
static void publish_done(void)
{
    batch_t *s = ing.s;

    if (s->failed) {
        /* Redis went away or refused: nothing is acknowledged; the
         * entries are taken back through the recovery path (step()) */
        fl_warn("publish step of a batch of %d entries failed, the entries "
                "stay pending",
                s->n);
        ing.recover_own = 1;
        store_done();
        return;
    }
    if (ing.hook_xack_ms >= 0) {
        /* test hook: hold the committed batch before its XACK, so that a
         * test can kill the worker inside that window */
        struct timeval tv = {ing.hook_xack_ms / 1000,
                             (ing.hook_xack_ms % 1000) * 1000};

        fl_warn("test hook stall_before_xack: a batch of %d entries is "
                "committed, XACK in %lld ms",
                s->n, (long long)ing.hook_xack_ms);
        evtimer_add(ing.ev_hook, &tv);
        return;
    }
    ack_batch();
}

static void on_hook(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (ing.sphase == S_PUBLISHING)
        ack_batch();
}

/* ---- acknowledging ---- */

static void on_acked(fl_redis_t *r, redisReply *reply, void *ud)
{
    int64_t          now_ms = fl_wall_ms(), now_us = fl_now_us();
    fl_shm_worker_t *st = fl_worker.stats;
    batch_t         *s = ing.s;
    uint64_t         stored = 0, dead_n = 0, state_n = 0;
    uint64_t         published = s ? s->published : 0;

    (void)r, (void)ud;
    if (ing.sphase != S_ACKING)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        fl_warn("XACK of %d entries failed, they stay pending", s->n);
        ing.recover_own = 1;
    } else {
        for (int i = 0; i < s->n; i++) {
            entry_t *e = &s->e[i];
            if (e->kind == E_TELEMETRY) {
                fl_shm_add(st->ingest_rows_dead[FL_ROW_TOO_OLD],
                           e->old.nmetrics);
                fl_shm_add(st->ingest_rows_dead[FL_ROW_IN_FUTURE],
                           e->future.nmetrics);
                if (e->tele.npoints == 0) {
                    dead_n++; /* every point went to the dead letters */
                    continue;
                }
                stored++;
                fl_hist_record(&st->e2e_latency_us,
                               (uint64_t)fl_max(0, now_ms - e->rx_ms) * 1000);
            } else if (e->kind == E_DEAD) {
                dead_n++;
            } else if (e->kind == E_STATE) {
                state_n++;
            }
        }
        fl_shm_add(st->ingest_stored, stored);
        fl_shm_add(st->ingest_published, published);
        fl_shm_add(st->ingest_fanout_failures, s->fan_failed);
        fl_shm_add(st->ingest_state, state_n);
        fl_shm_add(st->ingest_dead_lettered, dead_n);
        fl_shm_add(st->ingest_batches, 1);
        fl_hist_record(&st->batch_rows, s->rows);
        fl_hist_record(&st->batch_latency_us,
                       (uint64_t)(now_us - s->read_us));
    }
    store_done();
}

/* Send head[0 .. nhead) followed by the id of every entry of b (XACK,
 * XCLAIM). */
static int cmd_with_ids(const batch_t *b, const char *const *head, int nhead,
                        fl_redis_cb cb)
{
    int          argc = nhead + b->n, rc;
    const char **argv = fl_alloc((size_t)argc * sizeof(char *));
    size_t      *len = fl_alloc((size_t)argc * sizeof(size_t));

    for (int i = 0; i < argc; i++) {
        argv[i] = i < nhead ? head[i] : b->e[i - nhead].id;
        len[i] = strlen(argv[i]);
    }
    rc = fl_redis_cmdargv(ing.wr, 0, cb, NULL, argc, argv, len);
    free(argv);
    free(len);
    return rc;
}

static void ack_batch(void)
{
    const char *head[] = {"XACK", ing.stream, GROUP};

    ing.sphase = S_ACKING;
    if (ing.s->n == 0 ||
        cmd_with_ids(ing.s, head, (int)fl_nelem(head), on_acked) != FL_OK)
        on_acked(ing.wr, NULL, NULL);
}

/* ---- reading ---- */

static void on_read(fl_redis_t *r, redisReply *reply, void *ud);

/* XREADGROUP of up to count new entries, waiting up to block_ms (< 0:
 * not at all). */
static int read_new(int count, int64_t block_ms)
{
    int64_t timeout =
        fl_max(block_ms, (int64_t)0) + fl_worker.cf->redis.command_timeout_ms;
    int rc;

    if (block_ms < 0)
        rc = fl_redis_cmd(ing.rd, timeout, on_read, NULL,
                          "XREADGROUP GROUP %s %s COUNT %d STREAMS %s >", GROUP,
                          ing.consumer, count, ing.stream);
    else
        rc = fl_redis_cmd(
            ing.rd, timeout, on_read, NULL,
            "XREADGROUP GROUP %s %s COUNT %d BLOCK %lld STREAMS %s >", GROUP,
            ing.consumer, count, (long long)block_ms, ing.stream);
    ing.reading = rc == FL_OK;
    return rc;
}

/* What a read brought goes into the gathering batch - a fresh one when
 * the storer took the batch the read was sent for (handover()). */
static void on_read(fl_redis_t *r, redisReply *reply, void *ud)
{
    const fl_config_t *cf = fl_worker.cf;
    batch_t           *g = ing.g;
    int                n0;

    (void)r, (void)ud;

    ing.reading = 0;
    if (ing.phase != G_READING)
        return;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        if (reply && strstr(reply->str, "NOGROUP"))
            ing.group_ready = 0; /* the stream was deleted: recreate */
        else if (reply)
            fl_error("XREADGROUP on %s failed: %s", ing.stream, reply->str);
        if (g->n > 0) {
            /* entries of an earlier read of this batch are in hand (and
             * pending on us): store them; if Redis is gone the publish
             * step fails and they are taken back through recovery */
            g->lingering = 0;
            g->noread = 1;
            parse_batch();
            return;
        }
        ing.phase = G_IDLE;
        kick(RETRY_MIN_MS);
        return;
    }
    n0 = g->n;
    /* nil: BLOCK timed out with nothing new */
    if (reply->type == REDIS_REPLY_ARRAY && reply->elements > 0) {
        const redisReply *st = reply->element[0];
        if (st->type == REDIS_REPLY_ARRAY && st->elements == 2)
            batch_add_entries(g, st->element[1]);
    }
    if (g->n == 0) {
        ing.phase = G_IDLE;
        step();
        return;
    }
    fl_shm_add(fl_worker.stats->ingest_read, g->n - n0);
    rate_note(g->n - n0);
    if (n0 == 0)
        g->read_us = fl_now_us(); /* not the time spent blocked waiting */
    /* Linger: a batch whose first read brought only a few entries keeps
     * gathering for ingest.linger, so that at moderate rates a
     * transaction and an XACK carry tens of messages rather than a
     * handful (flush by size or by age). It gathers in rounds: a read
     * that BLOCKs for the rest of the linger returns what has come,
     * which is prepared and fanned out at once, so dashboards do not
     * wait for the linger; then the next read. A first read of
     * LINGER_BELOW entries or more means a backlog: the batch already
     * pays for itself, and goes to the storer as soon as it is free
     * (until then it keeps reading, round by round, next_read()). */
    if (n0 == 0)
        g->lingering = !ing.stopping &&
                       g->n < fl_min(cf->ingest.batch, LINGER_BELOW) &&
                       cf->ingest.linger_ms > 0;
    parse_batch();
}

static void on_claimed(fl_redis_t *r, redisReply *reply, void *ud)
{
    batch_t *g = ing.g;

    (void)r, (void)ud;

    if (ing.phase != G_CLAIMING)
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        ing.phase = G_IDLE;
        batch_clear(g);
        kick(RETRY_MIN_MS);
        return;
    }
    {
        /* keep the delivery counts found by XPENDING, by id */
        int      n_pend = g->n;
        entry_t *pend = g->e;

        g->e = NULL; /* the ids only: nothing else to free */
        g->n = 0;
        batch_add_entries(g, reply);
        for (int i = 0; i < g->n; i++) {
            for (int j = 0; j < n_pend; j++) {
                if (strcmp(g->e[i].id, pend[j].id) == 0)
                    g->e[i].deliveries = pend[j].deliveries;
            }
        }
        free(pend);
    }
    if (g->n == 0) {
        ing.phase = G_IDLE;
        step();
        return;
    }
    fl_shm_add(fl_worker.stats->ingest_claimed, g->n);
    fl_shm_add(fl_worker.stats->ingest_read, g->n);
    fl_info("took over %d pending entries", g->n);
    parse_batch();
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;

    return (x > y) - (x < y);
}

/*
 * XPENDING reply: [[id, consumer, idle, deliveries], ...]. Remember ids
 * and delivery counts (XCLAIM adds one), then XCLAIM them. Entries of
 * the batch the storer has are left out: they are pending on us and
 * idle for as long as PostgreSQL keeps it waiting, but they are in hand.
 */
static void on_pending(fl_redis_t *r, redisReply *reply, void *ud)
{
    char     idle[24];
    batch_t *g = ing.g;
    int64_t *held = NULL;
    int      nheld = 0;

    (void)r, (void)ud;
    if (ing.phase != G_CLAIMING)
        return;
    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY) {
        ing.phase = G_IDLE;
        kick(RETRY_MIN_MS);
        return;
    }
    if (reply->elements == 0) {
        ing.recover_own = 0;
        ing.phase = G_IDLE;
        step();
        return;
    }
    int64_t read_us = g->read_us;

    batch_clear(g);
    g->read_us = read_us;
    if (ing.s != NULL) {
        held = fl_alloc((size_t)ing.s->n * sizeof(int64_t));
        for (int i = 0; i < ing.s->n; i++)
            held[nheld++] = ing.s->e[i].src;
        qsort(held, (size_t)nheld, sizeof(int64_t), cmp_i64);
    }
    g->e = fl_calloc(reply->elements, sizeof(entry_t));
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *it = reply->element[i];
        entry_t          *e = &g->e[g->n];

        if (it->type != REDIS_REPLY_ARRAY || it->elements < 4 ||
            it->element[0]->type != REDIS_REPLY_STRING)
            continue;
        snprintf(e->id, sizeof(e->id), "%s", it->element[0]->str);
        entry_times(e);
        if (held && bsearch(&e->src, held, (size_t)nheld, sizeof(int64_t),
                            cmp_i64) != NULL) {
            memset(e, 0, sizeof(*e));
            continue;
        }
        e->deliveries = it->element[3]->integer + 1;
        g->n++;
    }
    free(held);
    if (g->n == 0) {
        batch_clear(g);
        ing.phase = G_IDLE;
        kick(RETRY_MIN_MS); /* only the storer's: read new entries */
        return;
    }
    snprintf(idle, sizeof(idle), "%lld",
             ing.recover_own ? 0LL
                             : (long long)fl_worker.cf->ingest.claim_idle_ms);
    {
        const char *head[] = {"XCLAIM", ing.stream, GROUP, ing.consumer, idle};

        if (cmd_with_ids(g, head, (int)fl_nelem(head), on_claimed) != FL_OK) {
            batch_clear(g);
            ing.phase = G_IDLE;
            kick(RETRY_MIN_MS);
        }
    }
}

static void on_group(fl_redis_t *r, redisReply *reply, void *ud)
{
    (void)r, (void)ud;
    if (ing.phase != G_CLAIMING)
        return;
    if (reply &&
        (reply->type != REDIS_REPLY_ERROR || strstr(reply->str, "BUSYGROUP"))) {
        ing.group_ready = 1;
        ing.recover_own = 1;
    } else if (reply) {
        fl_error("XGROUP CREATE on %s failed: %s", ing.stream, reply->str);
    }
    ing.phase = G_IDLE;
    if (ing.group_ready)
        step();
    else
        kick(RETRY_MAX_MS);
}

/*
 * During a reload the new worker of a slot starts while the old one (same
 * consumer name) still works on its last batch: taking "our own" pending
 * entries back then would process them twice (stored once, but published
 * to dashboards twice). So the take-back waits until the slot's worker
 * of the other generation is gone.
 */
static int predecessor_alive(void)
{
    int                    me = (int)(fl_worker.stats - fl_shm->w);
    const fl_shm_worker_t *o = &fl_shm->w[(me + FL_MAX_WORKERS) %
                                          FL_SHM_ENTRIES];
    pid_t                  pid = fl_shm_load(o->pid);
    int                    st = fl_shm_load(o->state);

    return pid > 0 && fl_shm_load(o->generation) != fl_worker.generation &&
           (st == FL_W_READY || st == FL_W_DRAINING || st == FL_W_STARTING) &&
           kill(pid, 0) == 0;
}

/*
 * The gatherer's next batch, when it has nothing in hand: create the
 * group, take back pending entries (ours at start and after a failure,
 * once the storer has none in hand either; anyone's idle ones
 * periodically), or read new entries. Does nothing while a dependency is
 * down: the kick timer or a state change calls it again.
 */
static void step(void)
{
    char count[24], cnt_pending[24];
    int  rc;

    if (ing.phase != G_IDLE)
        return;
    if (ing.stopping) {
        fl_worker_drain_check();
        return;
    }
    if (!fl_redis_connected(ing.rd) || !fl_redis_connected(ing.wr) ||
        !fl_pg_ready(ing.pg))
        return;

    ing.g->read_us = fl_now_us();
    snprintf(count, sizeof(count), "%d", fl_worker.cf->ingest.batch);
    ing.phase = G_CLAIMING;
    if (!ing.group_ready) {
        rc = fl_redis_cmd(ing.wr, 0, on_group, NULL,
                          "XGROUP CREATE %s %s 0 MKSTREAM", ing.stream, GROUP);
    } else if (ing.recover_own && !predecessor_alive()) {
        if (ing.s != NULL) {
            ing.phase = G_IDLE; /* store_done() calls again */
            return;
        }
        rc = fl_redis_cmd(ing.wr, 0, on_pending, NULL,
                          "XPENDING %s %s - + %s %s", ing.stream, GROUP, count,
                          ing.consumer);
    } else if (fl_now_ms() >= ing.next_claim_ms) {
        ing.next_claim_ms =
            fl_now_ms() + fl_worker.cf->ingest.claim_idle_ms / 2;
        snprintf(cnt_pending, sizeof(cnt_pending), "%lld",
                 (long long)fl_worker.cf->ingest.claim_idle_ms);
        rc = fl_redis_cmd(ing.wr, 0, on_pending, NULL,
                          "XPENDING %s %s IDLE %s - + %s", ing.stream, GROUP,
                          cnt_pending, count);
    } else {
        int64_t wait_us = round_wait_us(); /* a batch's first read is a round */

        if (wait_us > 0) {
            ing.phase = G_IDLE;
            kick((wait_us + 999) / 1000);
            return;
        }
        ing.phase = G_READING;
        rc =
            read_new(fl_worker.cf->ingest.batch, fl_worker.cf->ingest.block_ms);
    }
    if (rc != FL_OK) {
        ing.phase = G_IDLE;
        kick(RETRY_MIN_MS);
    }
}

/* The gatherer's timer: the next round's turn, or a retry. */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;

    if (ing.phase == G_READING && !ing.reading && ing.g->n > 0)
        next_read();
    else
        step();
}

static void kick(int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(ing.ev_kick, &tv);
}

/* The storer's timer: PostgreSQL or the API's pool was away. */
static void on_store_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;

    if (ing.sphase == S_STORING)
        store_batch();
    else if (ing.sphase == S_ANSWERS)
        store_answers();
}

static void store_kick(int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};

    evtimer_add(ing.ev_store, &tv);
}

/* ---- queue sampling (for /healthz and /metrics) ---- */

static void on_xlen(fl_redis_t *r, redisReply *reply, void *ud)
{
    (void)r, (void)ud;
    if (reply && reply->type == REDIS_REPLY_INTEGER) {
        fl_shm_store(fl_shm->queue_length, reply->integer);
        fl_shm_store(fl_shm->queue_sampled_ms, fl_wall_ms());
    }
}

static void on_xpending_summary(fl_redis_t *r, redisReply *reply, void *ud)
{
    (void)r, (void)ud;
    if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
        reply->element[0]->type == REDIS_REPLY_INTEGER)
        fl_shm_store(fl_shm->queue_pending, reply->element[0]->integer);
}

static void on_sample(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    if (!fl_redis_connected(ing.wr))
        return;
    fl_redis_cmd(ing.wr, 0, on_xlen, NULL, "XLEN %s", ing.stream);
    fl_redis_cmd(ing.wr, 0, on_xpending_summary, NULL, "XPENDING %s %s",
                 ing.stream, GROUP);
}

/* ---- dependencies ---- */

/* The shadow script is loaded once per connection, then called by its
 * SHA1: EVAL would make Redis hash and look up the script body for every
 * message. Until the load answers, EVAL is used. */
static void on_script_loaded(fl_redis_t *r, redisReply *reply, void *ud)
{
    (void)r, (void)ud;
    if (reply && reply->type == REDIS_REPLY_STRING &&
        reply->len < sizeof(ing.shadow_sha))
        snprintf(ing.shadow_sha, sizeof(ing.shadow_sha), "%s", reply->str);
}

static void on_redis_state(fl_redis_t *r, int up, void *ud)
{
    (void)ud;
    if (r == ing.wr) {
        ing.shadow_sha[0] = '\0';
        if (up)
            fl_redis_cmd(ing.wr, 0, on_script_loaded, NULL, "SCRIPT LOAD %s",
                         shadow_lua);
    }
    fl_shm_store(fl_worker.stats->dep[FL_DEP_REDIS],
                 fl_redis_connected(ing.rd) && fl_redis_connected(ing.wr)
                     ? FL_DEP_UP
                     : FL_DEP_DOWN);
    if (up) {
        /* whatever was in hand when it went away is pending in Redis */
        ing.recover_own = 1;
        fl_worker_ready_check();
        step();
    }
}

static void on_pg_state(fl_pg_t *pg, int up, void *ud)
{
    (void)pg, (void)ud;
    fl_shm_store(fl_worker.stats->dep[FL_DEP_POSTGRES],
                 up ? FL_DEP_UP : FL_DEP_DOWN);
    if (up) {
        fl_worker_ready_check();
        if (ing.sphase == S_STORING)
            store_kick(0);
        else
            step();
    }
}

/* ---- module ---- */

static int ingest_init(fl_worker_t *w)
{
    const fl_config_t *cf = w->cf;
    struct timeval     sample = {SAMPLE_MS / 1000, 0};

    memset(&ing, 0, sizeof(ing));
    fl_fanout_limits(&ing.lim, cf);

    snprintf(ing.stream, sizeof(ing.stream), "%singest", cf->redis.prefix);
    snprintf(ing.dead, sizeof(ing.dead), "%sdead", cf->redis.prefix);
    snprintf(ing.consumer, sizeof(ing.consumer), "%s-w%d", cf->node_id,
             w->slot);
    snprintf(ing.shadow_prefix, sizeof(ing.shadow_prefix),
             "%sshadow:", cf->redis.prefix);
    snprintf(ing.desired_prefix, sizeof(ing.desired_prefix),
             "%sdesired:", cf->redis.prefix);
    snprintf(ing.channel_prefix, sizeof(ing.channel_prefix),
             "%stele:", cf->redis.prefix);
    snprintf(ing.recent_prefix, sizeof(ing.recent_prefix), "%srecent:",
             cf->redis.prefix);
    snprintf(ing.wsid_key, sizeof(ing.wsid_key), "%swsid", cf->redis.prefix);
    ing.retry_ms = RETRY_MIN_MS;
    ing.g = &ing.bat[0];
    fl_pg_batch_init(&ing.bat[0].pgb);
    fl_pg_batch_init(&ing.bat[1].pgb);
    fl_idset_init(&ing.known, KNOWN_MAX, KNOWN_TTL_MS);

    fl_shm_store(w->stats->dep[FL_DEP_REDIS], FL_DEP_CONNECTING);
    fl_shm_store(w->stats->dep[FL_DEP_POSTGRES], FL_DEP_CONNECTING);
    ing.ev_kick = evtimer_new(w->base, on_kick, NULL);
    ing.ev_store = evtimer_new(w->base, on_store_kick, NULL);
    ing.ev_hook = evtimer_new(w->base, on_hook, NULL);
    ing.hook_xack_ms = fl_test_hook("stall_before_xack");
    ing.ev_sample = event_new(w->base, -1, EV_PERSIST, on_sample, NULL);
    evtimer_add(ing.ev_sample, &sample);
    ing.pool = fl_pool_new(w->base, cf->ingest.parse_threads);
    ing.rd = fl_redis_new(w->base, cf, "ingest-read", on_redis_state, NULL);
    ing.wr = fl_redis_new(w->base, cf, "ingest", on_redis_state, NULL);
    ing.pg = fl_pg_new(w->base, cf, on_pg_state, NULL);
    return FL_OK;
}

static void ingest_stop(fl_worker_t *w, int fast)
{
    (void)w, (void)fast;
    ing.stopping = 1;
}

/* In-flight work: the batches in hand (a read in flight may still bring
 * entries that are then pending on us and must be stored). A batch that
 * cannot finish before the deadline stays pending in Redis. */
static int ingest_busy(fl_worker_t *w)
{
    (void)w;
    return ing.phase != G_IDLE || ing.s != NULL;
}

/* Ready once both Redis connections and PostgreSQL (migrated) have been
 * up: a reload does not hand the node to workers that cannot store. */
static int ingest_ready(fl_worker_t *w)
{
    (void)w;
    return fl_redis_connected(ing.rd) && fl_redis_connected(ing.wr) &&
           fl_pg_ready(ing.pg);
}

static void ingest_destroy(fl_worker_t *w)
{
    (void)w;
    ing.stopping = 1;
    ing.phase = G_IDLE; /* callbacks below must not start work */
    ing.sphase = S_IDLE;
    fl_pool_free(ing.pool); /* runs job_done of finished jobs */
    fl_redis_free(ing.rd);
    fl_redis_free(ing.wr);
    fl_pg_free(ing.pg);
    ing.phase = G_IDLE;
    ing.sphase = S_IDLE;
    for (int i = 0; i < 2; i++) {
        batch_clear(&ing.bat[i]);
        fl_pg_batch_free(&ing.bat[i].pgb);
    }
    fl_idset_free(&ing.known);
    event_free(ing.ev_kick);
    event_free(ing.ev_store);
    event_free(ing.ev_hook);
    event_free(ing.ev_sample);
}

const fl_module_t fl_ingest_module = {
    "ingest",    ingest_init,    ingest_stop,
    ingest_busy, ingest_destroy, ingest_ready,
};
