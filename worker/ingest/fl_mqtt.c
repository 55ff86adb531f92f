/*
 * fl_mqtt.c - MQTT intake (see fl_mqtt.h): every message is in the Redis
 * stream before its PUBACK leaves.
 *
 * Since issue 10 this file's paho client serves TLS (and WebSocket)
 * brokers only; plain TCP goes to the native client on the loop
 * (fl_mqttc.c), which keeps every rule below but schedules the appends
 * differently (pipelined, see its top). The module (mqtt_init) picks one;
 * the retire thread and its paho client serve both. What both append and
 * record is in fl_mqttsh.c.
 *
 * What paho-mqtt-c 1.3.12 does, read in its source (eclipse/paho.mqtt.c,
 * tag v1.3.12 = commit f7799da; Debian's 1.3.12-1 patches none of this):
 *
 * - PUBACK timing. src/MQTTProtocolClient.c, MQTTProtocol_handlePublishes():
 *   for a QoS 1 PUBLISH it first calls Protocol_processPublication()
 *   (src/MQTTAsyncUtils.c), which calls messageArrived directly, on the
 *   receive thread, when paho's in-memory queue client->messageQueue is
 *   empty; only after that returns is the PUBACK written (or, when the
 *   socket has pending writes, queued by MQTTProtocol_queueAck() and sent
 *   by MQTTProtocol_writeAvailable()). Upstream commit 31c44e7 ("Change
 *   ordering of acks to after processing incoming message", 1.3.10) made it
 *   so; 1.3.9 acknowledged first.
 * - Returning 0 does not hold the PUBACK back. handlePublishes ignores
 *   the callback's result: Protocol_processPublication() appends the
 *   message to client->messageQueue (memory only; disk only with paho
 *   persistence, unused here) and the PUBACK is sent right after. While
 *   that queue is not empty, every new PUBLISH skips the direct call: it
 *   is queued and acknowledged before the application has seen it.
 *   MQTTAsync_receiveThread() offers the head of the queue again once per
 *   pass of its loop, i.e. after each MQTTAsync_cycle(), which waits up to
 *   1 s for the socket (and sleeps 100 ms when nothing came): no CPU busy
 *   loop, a retry per received packet under traffic, ~1.1 s apart when
 *   idle. So returning 0 means "acknowledged, held in this process's
 *   memory", without a bound - exactly the loss the ingest issue forbids.
 * - Locks. MQTTAsync_cycle() calls handlePublishes with paho's global
 *   mqttasync_mutex held, so messageArrived runs under it. Every call that
 *   takes that mutex waits for the callback: MQTTAsync_connect(),
 *   MQTTAsync_isConnected(), MQTTAsync_destroy(), MQTTAsync_send() at
 *   QoS > 0 (MQTTAsync_assignMsgId() locks it on foreign threads).
 *   MQTTAsync_disconnect() takes only mqttcommand_mutex. Keepalive
 *   (MQTTAsync_retry() -> MQTTProtocol_keepalive()) runs inside
 *   MQTTAsync_cycle() on the receive thread: no PINGREQ while a callback
 *   runs.
 * - A DISCONNECT from the broker (MQTT 5: session taken over, server
 *   shutting down) reaches only the disconnected callback: the receive
 *   thread clears m->c->connected before nextOrClose(), which therefore
 *   does not call connectionLost. A dropped socket calls connectionLost.
 * - Automatic reconnect (MQTTAsync_checkTimeouts(), evaluated every 3 s)
 *   reports reconnects only through the connected callback, which has no
 *   sessionPresent: the connect onSuccess5 is cleared after its first
 *   call. Hence our own reconnect, one MQTTAsync_connect() per attempt.
 * - One receive thread for every client of the process, and one mutex.
 *   MQTTAsync_connect() starts MQTTAsync_receiveThread only when the
 *   global receiveThread_state says none runs (src/MQTTAsync.c).
 *   messageArrived is called only from that thread, by
 *   Protocol_processPublication() inside MQTTAsync_cycle() or by the
 *   thread's own retry of client->messageQueue, and the connect
 *   onSuccess5 too; all with the global mqttasync_mutex held. So the
 *   callbacks of our client and of a retired slot's client (below) never
 *   run at the same time, and mq.redis needs no lock of its own.
 * - A received message carries its header: Protocol_processPublication()
 *   sets mm->msgid = publish->msgId and mm->dup = publish->header.bits.dup
 *   (forced to 0 at QoS 2; we subscribe at QoS 1 at most).
 *
 * The design built on it:
 * - messageArrived never returns 0. It retries the append (reconnecting
 *   to Redis, 50 ms backoff doubling to 1 s) until it succeeds, then
 *   returns 1 and paho sends the PUBACK. While Redis is down the receive
 *   thread stays in the callback: paho reads nothing more, the broker
 *   keeps at most mqtt.receive_max messages in flight to us and queues
 *   the rest in the session. With no PINGREQ the broker closes the
 *   connection after 1.5 x keepalive; the message held in the callback is
 *   then redelivered (with DUP) on the next connection, and the record
 *   below tells whether its append went through.
 * - The loop calls paho only in init: any later call could wait for a
 *   callback stuck on Redis. A control thread owns connect, subscribe,
 *   publish and disconnect. The loop, the control thread and the paho
 *   callbacks share state only under mq.lock, which nobody holds while
 *   calling paho or Redis (callbacks take it with paho's mutex held, so
 *   the reverse order would deadlock). Counters are shm atomics.
 * - Stop: DISCONNECT (reason 0) without unsubscribing, so the session,
 *   with its queued and unacknowledged messages, waits on the broker for
 *   mqtt.session_expiry for the next worker with this client id. busy()
 *   counts a callback in progress and a disconnect not yet complete; a
 *   callback still stuck on Redis at the drain deadline is cut off by the
 *   exit, with its PUBACK unsent (the broker redelivers the message).
 * - Reload: the new generation's worker of a slot has the same client id.
 *   Two clients with one id make the broker close the older connection at
 *   each CONNECT of the other (mosquitto 2.0.11, src/handle_connect.c
 *   connect__on_authorised(), closes it with do_disconnect() and sends no
 *   DISCONNECT 0x8E; paho reports a lost connection), so an old worker
 *   that reconnects takes the session back: seen in testing. Instead the
 *   slot is handed over through the shared stats segment
 *   (fl_mqttsh_slot_holder()):
 *   a worker does not connect while an older worker of its slot is
 *   connected or connecting, nor while a newer one of its slot is alive.
 *   The master drains the old generation once the new one is ready (which
 *   does not wait for MQTT), the old worker sends DISCONNECT, the new one
 *   connects within HANDOFF_POLL_MS and resumes the session with what the
 *   old one had not acknowledged. Measured: ~50 ms without a connection
 *   per slot, no duplicate, no loss. If the old worker is stuck on Redis,
 *   the new one waits for it (up to shutdown_timeout).
 * - A broker DISCONNECT 0x8E (session taken over) anyway - two nodes with
 *   one node_id - is logged as an error, and we wait mqtt.reconnect_max
 *   before taking the session back.
 *
 * Broker redeliveries. A worker killed (or a connection dropped) after an
 * append and before the broker read its PUBACK leaves the message in the
 * broker's in-flight set, and Mosquitto sends it again on the resumed
 * session with DUP set (2.0.11 src/database.c: msg->dup = 1 after each
 * send). So every append of a QoS 1 message also records it, atomically,
 * in one pipelined round trip:
 *
 *     MULTI
 *     XADD {prefix}ingest ... (or {prefix}dead for an oversize payload)
 *     HSET {prefix}dedup:{client id} <packet id % N> "<packet id>:<hash>"
 *     PEXPIRE {prefix}dedup:{client id} <ttl>   (once a minute)
 *     EXEC
 *
 * hash = FNV-1a 64 over topic, a 0 byte and payload, in 16 hex digits. A
 * DUP delivery first reads its slot (HGET, one more round trip, only after
 * a reconnect): the same packet id and hash means the message is in the
 * stream; it is acknowledged without a second append and counted in
 * mqtt_duplicates. Anything else is appended. A retry after a failed
 * append checks the same way, since the failure may have come after Redis
 * ran the transaction (its reply lost). QoS 0 messages (packet id 0) keep
 * the bare XADD. The key of a session lives 2 x mqtt.session_expiry + 2
 * minutes after its last PEXPIRE, so the keys of sessions that are gone
 * disappear; it is deleted when the broker starts a new session for the
 * client id (CONNACK without session present), before any message of that
 * session is handled: packet ids start at 1 again.
 *
 * Why N slots suffice. A record is needed for a message we appended whose
 * PUBACK the broker had not processed when the connection ended. We append
 * and acknowledge one message at a time, in delivery order, on one TCP
 * stream, so these are the last messages we appended, and all of them are
 * in the broker's in-flight set at once, which our Receive Maximum
 * (mqtt.receive_max = R, announced by both clients) bounds to R. The
 * broker numbers a session's messages 1, 2, ..., 65535, 1, ... (lib/
 * util_mosq.c, mosquitto__mid_generate) as it queues them and sends them
 * in that order, so they carry at most R consecutive ids. N is the
 * smallest divisor of 65535 not below R (R = 100: N = 255): then id % N
 * also runs through the ring in order across the wrap from 65535 to 1
 * (id % R would not: near the wrap two ids in flight could share a slot),
 * and R consecutive ids have R distinct slots. N is capped at 21845 =
 * 65535 / 3, so that every slot serves at least three ids (below).
 *
 * When a redelivery is not caught (the message is stored twice, never
 * lost): its slot was written again before the DUP came - more than N of
 * our appends unacknowledged at once, which takes R > 21845, ids the
 * broker skipped (each message it drops from a full queue or lets expire
 * takes one), or a Mosquitto before 2.0.13, whose quota accounting (issue
 * 2306, db__message_delete_outgoing) moves up to R queued messages into
 * flight at every PUBACK, so that a session with a backlog has more than R
 * in flight (even then only the PUBACKs still on their way when the
 * connection died are missing, rarely more than a few); or the record is
 * gone - the key expired, Redis lost it with the machine (README), or a
 * reload changed mqtt.receive_max (the slots moved). A device's own
 * re-publish (its PUBACK from the broker was lost) is not a redelivery to
 * us at all: the broker takes it as a new message and delivers it with a
 * new packet id, without DUP.
 *
 * A false positive (a DUP dropped whose first copy never reached the
 * stream) needs a record with the same packet id and the same hash in its
 * slot while this delivery was never appended, i.e. a record of an older
 * message with the same id and the same topic and payload. In a resumed
 * session that id was last used 65535 messages ago, and the other ids of
 * the slot (k - N, k - 2N, ...: at least two) were delivered, in order,
 * after it and before k, each overwriting the slot: only a broker that
 * skipped every one of them leaves the old record there. An older session
 * of the client id is wiped when the new one starts (above). A record of
 * the same id with other content matches only by a 64-bit hash collision.
 * A retired slot's client (retire_slot) records under its own client id,
 * the session its messages would be redelivered on.
 */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/eventfd.h>

#include <MQTTAsync.h>
#include <hiredis/hiredis.h>

#include "fl_log.h"
#include "fl_mqtt.h"
#include "fl_mqttc.h"
#include "fl_mqttsh.h"
#include "fl_worker.h"

#define RECONNECT_MIN_MS      100
#define STABLE_CONNECTION_MS  5000 /* up this long: backoff starts over */
#define REDIS_BACKOFF_MIN_MS  50
#define REDIS_BACKOFF_MAX_MS  1000
#define REDIS_LOG_EVERY_MS    10000
#define OVERSIZE_LOG_EVERY_MS 1000
#define PUB_MAX_QUEUE         1000
#define PUB_MAX_BYTES         (16 * 1024 * 1024)
#define DISCONNECT_TIMEOUT_MS 1000
#define FAST_DISCONNECT_MS    100
#define CTL_JOIN_MS           2000
#define HANDOFF_POLL_MS       FL_MQTTSH_HANDOFF_POLL_MS
/* Broker redeliveries (see the top of the file). */
#define DEDUP_REFRESH_MS   FL_MQTTSH_DEDUP_REFRESH_MS
#define DEDUP_LOG_EVERY_MS 10000
/* Maximum Packet Size we announce: the broker never sends us more, so a
 * device cannot make a worker allocate 256 MB. Between max_payload_bytes
 * and this the message is dead-lettered; beyond it the broker drops it. */
#define MAX_PACKET_FACTOR 16
#define MAX_PACKET_FLOOR  (1024 * 1024)
#define MQTT_MAX_PACKET   268435455

typedef enum {
    M_IDLE,          /* not connected; next attempt at reconnect_at */
    M_CONNECTING,    /* MQTTAsync_connect() issued */
    M_UP,            /* connected */
    M_DISCONNECTING, /* stopping: DISCONNECT issued */
    M_CLOSED,        /* stopped: no connection and none will be made */
} mstate_t;

typedef enum {
    A_NONE,
    A_CONNECT,
    A_SUBSCRIBE,
    A_PUBLISH,
    A_DISCONNECT,
    A_QUIT,
} action_t;

/*
 * One MQTT session's dedup record (see the top of the file): ours, or a
 * retired slot's while it is drained. The paho callback context of its
 * client; used in paho callbacks only, which run one at a time.
 */
typedef struct {
    const char *client_id;
    char       *key;       /* {prefix}dedup:{client id} */
    int64_t     expire_at; /* monotonic ms of the next PEXPIRE, 0 = now */
} msession_t;

typedef struct pub_s pub_t;
struct pub_s {
    pub_t         *next;
    char          *topic;
    void          *payload;
    size_t         len;
    int            qos;
    int            retain;
    uint32_t       expiry_s; /* MQTT 5 message expiry, 0 = none */
    fl_mqtt_pub_cb cb;       /* the outcome, on the loop; may be NULL */
    void          *ud;
};

/* A publish's outcome on its way to the loop (pub_done()). */
typedef struct done_s done_t;
struct done_s {
    done_t        *next;
    fl_mqtt_pub_cb cb;
    void          *ud;
    int            ok;
    char           err[160];
};

static struct {
    /* Set by init, read-only afterwards. Copies, not pointers into the
     * config: paho's threads may outlive it (see mqtt_destroy). */
    char                  *uri;
    char                  *client_id;
    char                  *username;
    char                  *password;
    char                  *ca_file;
    char                  *cert_file;
    char                  *key_file;
    int                    tls;
    int                    tls_insecure;
    char                 **topics; /* as subscribed: $share/{group}/... */
    int                   *qoss;
    MQTTSubscribe_options *subopts;
    int                    ntopics;
    int                    keepalive_s;
    int                    connect_timeout_s;
    int                    receive_max;
    unsigned               session_expiry_s;
    unsigned               max_packet;
    int64_t                reconnect_max_ms;
    int64_t                max_payload;
    char                  *redis_host;
    int                    redis_port;
    char                  *redis_password;
    struct timeval         redis_connect_tv;
    struct timeval         redis_command_tv;
    char                  *ingest_key;
    char                  *dead_key;
    char                   ingest_maxlen[24];
    char                   dead_maxlen[24];
    fl_mqttsh_stream_t     stream;
    char                  *dedup_prefix; /* {prefix}dedup: */
    unsigned               dedup_slots;  /* N */
    char                   dedup_ttl[24];
    fl_shm_worker_t       *stats;
    int                    slot;
    uint32_t               generation;

    MQTTAsync client;
    pthread_t ctl;
    int       ctl_running;

    /* guarded by lock */
    pthread_mutex_t lock;
    pthread_cond_t  cond;
    mstate_t        state;
    unsigned        conn_gen; /* connect attempts: tells stale callbacks */
    int             stopping;
    int             fast;
    int             quit;
    int64_t         reconnect_at;
    int64_t         backoff_ms;
    int64_t         up_since;
    int             sub_pending;
    int64_t         sub_at;
    int64_t         sub_backoff_ms;
    pid_t           waiting_for; /* the other worker holding our client id */
    unsigned        rand_state;
    done_t         *done_head; /* outcomes for the loop (ev_done) */
    int             done_fd;   /* eventfd: outcomes are waiting */
    struct event   *ev_done;
    pub_t          *pub_head;
    pub_t          *pub_tail;
    int             pub_count;
    size_t          pub_bytes;

    /* atomic: messageArrived calls in progress */
    int in_cb;

    /* owned by the paho receive thread (messageArrived) */
    msession_t    sess; /* our own session's record */
    redisContext *redis;
    int64_t       redis_backoff_ms;
    int64_t       fail_since; /* monotonic ms, 0 = Redis fine */
    int64_t       fail_logged_at;
    uint64_t      fail_attempts;
    int64_t       oversize_logged_at;
    uint64_t      oversize_quiet;
    int64_t       unrecorded_logged_at;
    uint64_t      unrecorded_quiet;
    char          err[512];
} mq = {.lock = PTHREAD_MUTEX_INITIALIZER};

/* ---- small helpers ---- */

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

    while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
        ;
}

/* A delay in [ms/2, ms], so that the workers of a node (and the nodes of a
 * fleet) do not reconnect in step. Called with mq.lock held. */
static int64_t jitter(int64_t ms)
{
    return fl_mqttsh_jitter(&mq.rand_state, ms);
}

static const char *reason_text(int code)
{
    const char *s = MQTTReasonCode_toString((enum MQTTReasonCodes)code);
    return s ? s : "unknown reason";
}

/* A paho failure as text: positive codes are MQTT 5 reason codes (a
 * CONNACK refusal), the others paho's own MQTTASYNC_* codes. */
static void describe_failure(char *buf, size_t len, int code, const char *msg)
{
    if (code > 0)
        snprintf(buf, len, "reason 0x%02x %s%s%s", code, reason_text(code),
                 msg ? ", " : "", msg ? msg : "");
    else
        snprintf(buf, len, "%s%s%s", MQTTAsync_strerror(code), msg ? ", " : "",
                 msg ? msg : "");
}

/*
 * Hand a publish's outcome to the loop: paho calls its onSuccess /
 * onFailure on its own threads, and the caller's callback must run on the
 * loop. Any thread; takes mq.lock.
 */
static void done_queue(fl_mqtt_pub_cb cb, void *ud, int ok, const char *err)
{
    done_t  *d;
    uint64_t one = 1;

    if (cb == NULL)
        return;
    d = fl_calloc(1, sizeof(*d));
    d->cb = cb;
    d->ud = ud;
    d->ok = ok;
    snprintf(d->err, sizeof(d->err), "%s", err ? err : "");
    pthread_mutex_lock(&mq.lock);
    d->next = mq.done_head;
    mq.done_head = d;
    pthread_mutex_unlock(&mq.lock);
    if (write(mq.done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
        fl_log_errno(FL_LOG_ERROR, errno, "write() to the mqtt eventfd failed");
}

/* The loop: run the outcomes that arrived, oldest first. */
static void on_done(evutil_socket_t fd, short what, void *arg)
{
    uint64_t n;
    done_t  *list, *rev = NULL;

    (void)what, (void)arg;
    if (read(fd, &n, sizeof(n)) < 0 && errno != EAGAIN)
        fl_log_errno(FL_LOG_ERROR, errno, "read() of the mqtt eventfd failed");
    pthread_mutex_lock(&mq.lock);
    list = mq.done_head;
    mq.done_head = NULL;
    pthread_mutex_unlock(&mq.lock);
    while (list) {
        done_t *d = list;
        list = d->next;
        d->next = rev;
        rev = d;
    }
    while (rev) {
        done_t *d = rev;
        rev = d->next;
        d->cb(d->ok, d->err[0] ? d->err : NULL, d->ud);
        free(d);
    }
}

static void pub_free(pub_t *p)
{
    free(p->topic);
    free(p->payload);
    free(p);
}

/* Called with mq.lock held. */
static void pub_drop_all(const char *why)
{
    int n = mq.pub_count;

    while (mq.pub_head) {
        pub_t *p = mq.pub_head;
        mq.pub_head = p->next;
        if (p->cb) {
            /* done_queue() takes the lock we hold: queue it directly */
            done_t  *d = fl_calloc(1, sizeof(*d));
            uint64_t one = 1;

            d->cb = p->cb;
            d->ud = p->ud;
            snprintf(d->err, sizeof(d->err), "%s", why);
            d->next = mq.done_head;
            mq.done_head = d;
            if (write(mq.done_fd, &one, sizeof(one)) < 0 && errno != EAGAIN)
                fl_log_errno(FL_LOG_ERROR, errno,
                             "write() to the mqtt eventfd failed");
        }
        pub_free(p);
    }
    mq.pub_tail = NULL;
    mq.pub_count = 0;
    mq.pub_bytes = 0;
    if (n)
        fl_warn("%d queued MQTT publishes dropped: %s", n, why);
}

/*
 * A connection (or an attempt) is over: go back to IDLE with the next
 * attempt scheduled, or to CLOSED when stopping. takeover: the broker gave
 * our session to another client with our id; wait the longest delay.
 * Called with mq.lock held; returns the delay before the next attempt.
 */
static int64_t conn_ended(int takeover)
{
    int64_t now = fl_now_ms(), delay;

    if (mq.stopping) {
        mq.state = M_CLOSED;
        pthread_cond_signal(&mq.cond);
        return 0;
    }
    if (mq.up_since && now - mq.up_since >= STABLE_CONNECTION_MS)
        mq.backoff_ms = RECONNECT_MIN_MS;
    delay = takeover ? mq.reconnect_max_ms : jitter(mq.backoff_ms);
    mq.backoff_ms = fl_min(mq.backoff_ms * 2, mq.reconnect_max_ms);
    mq.state = M_IDLE;
    mq.up_since = 0;
    mq.sub_pending = 0;
    mq.reconnect_at = now + delay;
    pthread_cond_signal(&mq.cond);
    return delay;
}

static void dedup_reset(msession_t *s);

/* ---- paho callbacks (paho's threads, paho's mutex held) ---- */

static void on_connect_ok(void *ctx, MQTTAsync_successData5 *d)
{
    unsigned gen = (unsigned)(uintptr_t)ctx;
    int      present = d ? d->alt.connect.sessionPresent : 0;

    /* even on a connection we gave up on: its messages come all the same */
    if (!present)
        dedup_reset(&mq.sess);

    pthread_mutex_lock(&mq.lock);
    if (gen != mq.conn_gen || mq.state != M_CONNECTING) {
        pthread_mutex_unlock(&mq.lock);
        return;
    }
    mq.state = M_UP;
    mq.up_since = fl_now_ms();
    /* subscribe on every connect, not only without a session: a reload
     * may have changed mqtt.topics, and subscribing again to an existing
     * subscription only replaces it (retain handling 1: no replay) */
    mq.sub_pending = mq.ntopics > 0;
    mq.sub_at = 0;
    mq.sub_backoff_ms = RECONNECT_MIN_MS;
    pthread_cond_signal(&mq.cond);
    pthread_mutex_unlock(&mq.lock);

    fl_shm_add(mq.stats->mqtt_connects, 1);
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_UP);
    fl_info("connected to mqtt broker %s as \"%s\", session %s", mq.uri,
            mq.client_id, present ? "resumed" : "new");
}

static void on_connect_fail(void *ctx, MQTTAsync_failureData5 *d)
{
    unsigned gen = (unsigned)(uintptr_t)ctx;
    int64_t  delay;
    char     why[256];

    pthread_mutex_lock(&mq.lock);
    if (gen != mq.conn_gen || mq.state != M_CONNECTING) {
        pthread_mutex_unlock(&mq.lock);
        return;
    }
    delay = conn_ended(0);
    pthread_mutex_unlock(&mq.lock);

    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    describe_failure(why, sizeof(why), d ? d->code : MQTTASYNC_FAILURE,
                     d ? d->message : NULL);
    fl_warn("connect() to mqtt broker %s as \"%s\" failed: %s; retrying in "
            "%" PRId64 " ms",
            mq.uri, mq.client_id, why, delay);
}

/* The connection ended without our asking: cause is paho's (a socket
 * error) or the reason code of the broker's DISCONNECT (reason >= 0). */
static void connection_lost(int reason)
{
    int     stopping, takeover = reason == MQTTREASONCODE_SESSION_TAKEN_OVER;
    int64_t delay;

    pthread_mutex_lock(&mq.lock);
    if (mq.state != M_UP && mq.state != M_DISCONNECTING) {
        pthread_mutex_unlock(&mq.lock);
        return;
    }
    delay = conn_ended(takeover);
    stopping = mq.stopping;
    pthread_mutex_unlock(&mq.lock);

    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    if (stopping)
        fl_info("connection to mqtt broker %s closed while stopping (%s)",
                mq.uri, reason >= 0 ? reason_text(reason) : "socket closed");
    else if (takeover)
        fl_error("mqtt broker %s gave session \"%s\" to another client with "
                 "the same id (a reload's new worker, or two nodes with one "
                 "node_id); reconnecting in %" PRId64 " ms",
                 mq.uri, mq.client_id, delay);
    else if (reason >= 0)
        fl_warn("mqtt broker %s disconnected us: reason 0x%02x %s; "
                "reconnecting in %" PRId64 " ms",
                mq.uri, reason, reason_text(reason), delay);
    else
        fl_warn("connection to mqtt broker %s lost; reconnecting in "
                "%" PRId64 " ms",
                mq.uri, delay);
}

static void on_disconnected(void *ctx, MQTTProperties *props,
                            enum MQTTReasonCodes reason)
{
    (void)ctx, (void)props;
    connection_lost((int)reason);
}

static void on_connection_lost(void *ctx, char *cause)
{
    (void)ctx, (void)cause;
    connection_lost(-1);
}

static void on_disconnect_done(void *ctx, MQTTAsync_successData5 *d)
{
    (void)ctx, (void)d;
    pthread_mutex_lock(&mq.lock);
    mq.state = M_CLOSED;
    pthread_mutex_unlock(&mq.lock);
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    fl_info("disconnected from mqtt broker %s; session \"%s\" kept for %u s",
            mq.uri, mq.client_id, mq.session_expiry_s);
}

static void on_disconnect_fail(void *ctx, MQTTAsync_failureData5 *d)
{
    char why[256];

    (void)ctx;
    pthread_mutex_lock(&mq.lock);
    mq.state = M_CLOSED;
    pthread_mutex_unlock(&mq.lock);
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    describe_failure(why, sizeof(why), d ? d->code : MQTTASYNC_FAILURE,
                     d ? d->message : NULL);
    fl_warn("disconnect from mqtt broker %s failed: %s", mq.uri, why);
}

/* Called with mq.lock held. */
static int64_t sub_retry(void)
{
    int64_t delay = mq.sub_backoff_ms;

    mq.sub_pending = 1;
    mq.sub_at = fl_now_ms() + delay;
    mq.sub_backoff_ms = fl_min(mq.sub_backoff_ms * 2, mq.reconnect_max_ms);
    pthread_cond_signal(&mq.cond);
    return delay;
}

static void on_subscribe_ok(void *ctx, MQTTAsync_successData5 *d)
{
    unsigned                    gen = (unsigned)(uintptr_t)ctx;
    const enum MQTTReasonCodes *codes;
    int                         n, failed = 0, current;
    int64_t                     delay = 0;

    n = d->alt.sub.reasonCodeCount;
    codes = n > 1 ? d->alt.sub.reasonCodes : &d->reasonCode;
    for (int i = 0; i < n && i < mq.ntopics; i++) {
        if (codes[i] >= MQTTREASONCODE_UNSPECIFIED_ERROR) {
            fl_error("SUBSCRIBE to %s on mqtt broker %s refused: reason "
                     "0x%02x %s",
                     mq.topics[i], mq.uri, codes[i], reason_text(codes[i]));
            failed++;
        } else if ((int)codes[i] < mq.qoss[i]) {
            fl_warn("SUBSCRIBE to %s on mqtt broker %s granted QoS %d, not "
                    "%d",
                    mq.topics[i], mq.uri, codes[i], mq.qoss[i]);
        }
    }

    pthread_mutex_lock(&mq.lock);
    current = gen == mq.conn_gen && mq.state == M_UP;
    if (current && failed)
        delay = sub_retry();
    pthread_mutex_unlock(&mq.lock);

    if (!current)
        return; /* that connection is gone; the next one subscribes */
    if (failed) {
        fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
        fl_warn("subscribing again in %" PRId64 " ms", delay);
        return;
    }
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_UP);
    fl_info("subscribed to %d topic%s on mqtt broker %s (%s%s) at QoS %d",
            mq.ntopics, mq.ntopics > 1 ? "s" : "", mq.uri, mq.topics[0],
            mq.ntopics > 1 ? ", ..." : "", mq.qoss[0]);
}

static void on_subscribe_fail(void *ctx, MQTTAsync_failureData5 *d)
{
    unsigned gen = (unsigned)(uintptr_t)ctx;
    int64_t  delay = -1;
    char     why[256];

    pthread_mutex_lock(&mq.lock);
    if (gen == mq.conn_gen && mq.state == M_UP)
        delay = sub_retry();
    pthread_mutex_unlock(&mq.lock);
    if (delay < 0)
        return; /* that connection is gone; the next one subscribes */

    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    describe_failure(why, sizeof(why), d ? d->code : MQTTASYNC_FAILURE,
                     d ? d->message : NULL);
    if (d && d->reasonCode >= MQTTREASONCODE_UNSPECIFIED_ERROR)
        snprintf(why + strlen(why), sizeof(why) - strlen(why),
                 " (reason 0x%02x %s)", d->reasonCode,
                 reason_text(d->reasonCode));
    fl_error("SUBSCRIBE to %s on mqtt broker %s failed: %s; retrying in "
             "%" PRId64 " ms",
             mq.topics[0], mq.uri, why, delay);
}

static int on_ssl_error(const char *str, size_t len, void *u)
{
    (void)u;
    while (len > 0 && (str[len - 1] == '\n' || str[len - 1] == '\r'))
        len--;
    fl_warn("TLS to mqtt broker %s: %.*s", mq.uri, (int)fl_min(len, 512), str);
    return 0;
}

/* ---- Redis, on the paho receive thread ---- */

static void redis_drop(void)
{
    if (mq.redis) {
        redisFree(mq.redis);
        mq.redis = NULL;
    }
}

/* Connect (and AUTH) the receive thread's synchronous connection.
 * FL_OK, or FL_ERROR with mq.err set. */
static int redis_connect(void)
{
    redisContext *c;
    redisReply   *r;
    const char   *argv[2] = {"AUTH", mq.redis_password};
    size_t        lens[2] = {4, strlen(mq.redis_password)};

    c = redisConnectWithTimeout(mq.redis_host, mq.redis_port,
                                mq.redis_connect_tv);
    if (c == NULL || c->err) {
        snprintf(mq.err, sizeof(mq.err), "connect() to redis %s:%d failed: %s",
                 mq.redis_host, mq.redis_port,
                 c ? c->errstr : "cannot allocate a context");
        if (c)
            redisFree(c);
        return FL_ERROR;
    }
    /* both fail only on a broken socket, and leave c->err set */
    if (redisSetTimeout(c, mq.redis_command_tv) != REDIS_OK ||
        redisEnableKeepAlive(c) != REDIS_OK) {
        snprintf(mq.err, sizeof(mq.err),
                 "setsockopt() on redis %s:%d failed: %s", mq.redis_host,
                 mq.redis_port, c->errstr);
        redisFree(c);
        return FL_ERROR;
    }
    mq.redis = c;

    if (mq.redis_password[0] == '\0')
        return FL_OK;
    r = redisCommandArgv(c, 2, argv, lens);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        snprintf(mq.err, sizeof(mq.err), "AUTH to redis %s:%d failed: %s",
                 mq.redis_host, mq.redis_port, r ? r->str : c->errstr);
        if (r)
            freeReplyObject(r);
        redis_drop();
        return FL_ERROR;
    }
    freeReplyObject(r);
    return FL_OK;
}

static int redis_ready(void)
{
    return mq.redis != NULL ? FL_OK : redis_connect();
}

/* A command on the receive thread's connection failed: say so in mq.err
 * (r: its error reply, or NULL for the connection's own error) and drop
 * the connection, the next call makes a new one. Returns FL_ERROR. */
static int redis_failed(const char *cmd, const char *key, const redisReply *r)
{
    snprintf(mq.err, sizeof(mq.err), "%s %s to redis %s:%d failed: %s", cmd,
             key, mq.redis_host, mq.redis_port,
             r == NULL                      ? mq.redis->errstr
             : r->type == REDIS_REPLY_ERROR ? r->str
                                            : "unexpected reply");
    redis_drop();
    return FL_ERROR;
}

/* One XADD (argv[1] is the key). FL_OK when the entry is in the stream;
 * FL_ERROR with mq.err set, the connection dropped (the next call makes
 * a new one). */
static int redis_xadd(int argc, const char **argv, const size_t *lens)
{
    redisReply *r;
    int         rc = FL_OK;

    if (redis_ready() != FL_OK)
        return FL_ERROR;
    r = redisCommandArgv(mq.redis, argc, argv, lens);
    if (r == NULL || r->type != REDIS_REPLY_STRING)
        rc = redis_failed("XADD", argv[1], r);
    if (r)
        freeReplyObject(r);
    return rc;
}

/* An append (or the look-up of a record) failed: count it, say so (first
 * failure of an outage, then every REDIS_LOG_EVERY_MS), and back off. Sleeps on
 * the paho receive thread - the message stays unacknowledged meanwhile, which
 * is the point. */
static void enqueue_failed(void)
{
    int64_t now = fl_now_ms();

    fl_shm_add(mq.stats->mqtt_enqueue_failures, 1);
    fl_shm_store(mq.stats->dep[FL_DEP_REDIS], FL_DEP_DOWN);
    mq.fail_attempts++;
    if (mq.fail_since == 0) {
        mq.fail_since = now;
        mq.fail_logged_at = now;
        mq.redis_backoff_ms = REDIS_BACKOFF_MIN_MS;
        fl_error("%s; MQTT intake paused, the message is not acknowledged",
                 mq.err);
    } else if (now - mq.fail_logged_at >= REDIS_LOG_EVERY_MS) {
        mq.fail_logged_at = now;
        fl_warn("%s; MQTT intake paused for %" PRId64 " ms, %" PRIu64
                " attempts",
                mq.err, now - mq.fail_since, mq.fail_attempts);
    }
    sleep_ms(mq.redis_backoff_ms);
    mq.redis_backoff_ms = fl_min(mq.redis_backoff_ms * 2, REDIS_BACKOFF_MAX_MS);
}

static void enqueue_recovered(void)
{
    fl_shm_store(mq.stats->dep[FL_DEP_REDIS], FL_DEP_UP);
    fl_info("redis %s:%d is back: MQTT intake resumed after %" PRId64
            " ms, %" PRIu64 " failed attempts",
            mq.redis_host, mq.redis_port, fl_now_ms() - mq.fail_since,
            mq.fail_attempts);
    mq.fail_since = 0;
    mq.fail_attempts = 0;
}

/* ---- broker redeliveries (see the top of the file) ---- */

/* What the record of one QoS 1 message says: its slot and value. */
typedef struct {
    msession_t *s;
    char        field[12]; /* packet id % N */
    char        value[32]; /* "<packet id>:<hash, 16 hex digits>" */
} mrecord_t;

static void record_init(mrecord_t *rec, msession_t *s, int msgid,
                        const char *topic, size_t tlen, const void *payload,
                        size_t plen)
{
    fl_mqttsh_record_t r;

    fl_mqttsh_record(&r, mq.dedup_slots, msgid, topic, tlen, payload, plen);
    rec->s = s;
    memcpy(rec->field, r.field, sizeof(rec->field));
    memcpy(rec->value, r.value, sizeof(rec->value));
}

/* Is the message of rec in the stream already? 1 yes, 0 no, FL_ERROR on a
 * Redis failure (mq.err set, the connection dropped). A key of another
 * type (WRONGTYPE: not ours) holds no record: 0, the append warns. */
static int dedup_lookup(const mrecord_t *rec)
{
    const char *argv[3] = {"HGET", rec->s->key, rec->field};
    size_t      lens[3] = {4, strlen(rec->s->key), strlen(rec->field)};
    redisReply *r;
    int         rc;

    if (redis_ready() != FL_OK)
        return FL_ERROR;
    r = redisCommandArgv(mq.redis, 3, argv, lens);
    if (r != NULL && r->type == REDIS_REPLY_NIL)
        rc = 0;
    else if (r != NULL && r->type == REDIS_REPLY_STRING)
        rc = r->len == strlen(rec->value) &&
             memcmp(r->str, rec->value, r->len) == 0;
    else if (r != NULL && r->type == REDIS_REPLY_ERROR &&
             strncmp(r->str, "WRONGTYPE", 9) == 0)
        rc = 0;
    else
        rc = redis_failed("HGET", rec->s->key, r);
    if (r)
        freeReplyObject(r);
    return rc;
}

/* The append went through but its record did not (the dedup key holds a
 * value of another type): a redelivery of that message would be appended
 * again. At most one line per DEDUP_LOG_EVERY_MS. */
static void unrecorded_log(const mrecord_t *rec, const char *why)
{
    int64_t now = fl_now_ms();

    if (mq.unrecorded_logged_at &&
        now - mq.unrecorded_logged_at < DEDUP_LOG_EVERY_MS) {
        mq.unrecorded_quiet++;
        return;
    }
    fl_warn("HSET %s on redis %s:%d failed: %s; the message is in the stream "
            "but a broker redelivery of it would be appended again%s",
            rec->s->key, mq.redis_host, mq.redis_port, why,
            mq.unrecorded_quiet ? " (and earlier ones not logged)" : "");
    mq.unrecorded_logged_at = now;
    mq.unrecorded_quiet = 0;
}

/*
 * The append (XADD argv, argv[1] is the key) and its record in one
 * transaction, written at once and answered in one round trip: MULTI,
 * XADD, HSET, PEXPIRE when due, EXEC. FL_OK when the entry is in the
 * stream: EXEC answered with its id first, or - MULTI refused, e.g. by an
 * ACL - the XADD ran on its own and answered with it. A record that
 * failed on its own is logged; retrying would append the message again.
 * Otherwise FL_ERROR with mq.err set, the connection dropped.
 */
static int redis_append_recorded(int argc, const char **argv,
                                 const size_t *lens, const mrecord_t *rec)
{
    msession_t  *s = rec->s;
    const char  *multi[1] = {"MULTI"}, *exec[1] = {"EXEC"};
    const size_t multi_len[1] = {5}, exec_len[1] = {4};
    const char  *hset[4] = {"HSET", s->key, rec->field, rec->value};
    const size_t hset_lens[4] = {4, strlen(s->key), strlen(rec->field),
                                 strlen(rec->value)};
    const char  *pexpire[3] = {"PEXPIRE", s->key, mq.dedup_ttl};
    const size_t pexpire_lens[3] = {7, strlen(s->key), strlen(mq.dedup_ttl)};
    redisReply  *r[5] = {NULL};
    const redisReply *ex, *bad = NULL;
    int64_t           now = fl_now_ms();
    int               expire = now >= s->expire_at, n = expire ? 5 : 4;
    int               appended, recorded, rc = FL_OK;

    if (redis_ready() != FL_OK)
        return FL_ERROR;
    if (redisAppendCommandArgv(mq.redis, 1, multi, multi_len) != REDIS_OK ||
        redisAppendCommandArgv(mq.redis, argc, argv, lens) != REDIS_OK ||
        redisAppendCommandArgv(mq.redis, 4, hset, hset_lens) != REDIS_OK ||
        (expire && redisAppendCommandArgv(mq.redis, 3, pexpire, pexpire_lens) !=
                       REDIS_OK) ||
        redisAppendCommandArgv(mq.redis, 1, exec, exec_len) != REDIS_OK)
        return redis_failed("MULTI/XADD", argv[1], NULL);
    for (int i = 0; i < n; i++) {
        if (redisGetReply(mq.redis, (void **)&r[i]) != REDIS_OK) {
            rc = redis_failed("MULTI/XADD", argv[1], NULL);
            goto done;
        }
    }

    ex = r[n - 1];
    appended =
        (ex->type == REDIS_REPLY_ARRAY && ex->elements >= 1 &&
         ex->element[0]->type == REDIS_REPLY_STRING) ||
        (r[0]->type == REDIS_REPLY_ERROR && r[1]->type == REDIS_REPLY_STRING);
    recorded = ex->type == REDIS_REPLY_ARRAY &&
               ex->elements == (size_t)(n - 2) &&
               ex->element[1]->type == REDIS_REPLY_INTEGER;
    if (appended && recorded) {
        if (expire)
            s->expire_at = now + DEDUP_REFRESH_MS;
        goto done;
    }

    /* the first error tells why (EXEC says only EXECABORT) */
    for (int i = 0; i < n - 1 && bad == NULL; i++)
        if (r[i]->type == REDIS_REPLY_ERROR)
            bad = r[i];
    for (size_t i = 0;
         ex->type == REDIS_REPLY_ARRAY && i < ex->elements && bad == NULL; i++)
        if (ex->element[i]->type == REDIS_REPLY_ERROR)
            bad = ex->element[i];
    if (bad == NULL)
        bad = ex;
    if (appended)
        unrecorded_log(rec, bad->type == REDIS_REPLY_ERROR
                                ? bad->str
                                : "unexpected reply");
    else
        rc = redis_failed("MULTI/XADD", argv[1], bad);

done:
    for (int i = 0; i < n; i++)
        if (r[i])
            freeReplyObject(r[i]);
    return rc;
}

/*
 * The broker starts a new session for s's client id (CONNACK without
 * session present): its packet ids start at 1 again, so the records of the
 * old session must go before any message of the new one is looked up.
 * Called in the connect callback, on the receive thread, which handles
 * those messages only after it returns; retried like an append.
 */
static void dedup_reset(msession_t *s)
{
    const char *argv[2] = {"DEL", s->key};
    size_t      lens[2] = {3, strlen(s->key)};
    redisReply *r = NULL;

    __atomic_add_fetch(&mq.in_cb, 1, __ATOMIC_SEQ_CST);
    for (;;) {
        if (redis_ready() == FL_OK) {
            r = redisCommandArgv(mq.redis, 2, argv, lens);
            if (r != NULL && r->type == REDIS_REPLY_INTEGER)
                break;
            redis_failed("DEL", s->key, r);
            if (r)
                freeReplyObject(r);
        }
        enqueue_failed();
    }
    if (r->integer > 0)
        fl_info("new mqtt session \"%s\": the records of the old one deleted",
                s->client_id);
    freeReplyObject(r);
    if (mq.fail_since)
        enqueue_recovered();
    s->expire_at = 0; /* the next HSET makes a key without a TTL */
    __atomic_sub_fetch(&mq.in_cb, 1, __ATOMIC_SEQ_CST);
}

/* At most one line per OVERSIZE_LOG_EVERY_MS: a device can send many. */
static void oversize_log(const char *topic, size_t tlen, int plen)
{
    int64_t now = fl_now_ms();
    char    t[129];

    if (now - mq.oversize_logged_at < OVERSIZE_LOG_EVERY_MS) {
        mq.oversize_quiet++;
        return;
    }
    fl_warn("message on %s dead-lettered: payload of %d bytes exceeds "
            "limits.max_payload_bytes (%" PRId64 ")%s",
            fl_mqttsh_safe_topic(t, sizeof(t), topic, tlen), plen, mq.max_payload,
            mq.oversize_quiet ? " (and earlier ones not logged)" : "");
    mq.oversize_logged_at = now;
    mq.oversize_quiet = 0;
}

/*
 * messageArrived, on paho's receive thread, for our client (ctx =
 * &mq.sess) and a retired slot's (ctx = its msession_t). Appends the
 * message to the ingest stream (or, when too large, to the dead-letter
 * stream), recording it when it has a packet id, and returns 1 only then,
 * so paho's PUBACK follows the append. A redelivery (DUP) whose record
 * says it is in the stream already is acknowledged without a second
 * append. Never returns 0 (see the top of the file): while Redis fails it
 * retries here. Frees the message and the topic (paho hands them over when
 * we return 1).
 */
static int on_message(void *ctx, char *topic, int topic_len,
                      MQTTAsync_message *msg)
{
    size_t      tlen = topic_len > 0 ? (size_t)topic_len : strlen(topic);
    size_t      plen = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    int         oversize;
    int         recorded = ctx != NULL && msg->qos > 0 && msg->msgid > 0;
    int         check = recorded && msg->dup, tried = 0, found = 0;
    char        rx[24], error[160], t[129];
    const char *argv[FL_MQTTSH_ARGV_MAX];
    size_t      lens[FL_MQTTSH_ARGV_MAX];
    int         argc;
    mrecord_t   rec;

    __atomic_add_fetch(&mq.in_cb, 1, __ATOMIC_SEQ_CST);
    fl_shm_add(mq.stats->mqtt_received, 1);
    snprintf(rx, sizeof(rx), "%" PRId64, fl_wall_ms());

    argc = fl_mqttsh_xadd_argv(&mq.stream, topic, tlen, msg->payload, plen,
                               rx, error, sizeof(error), argv, lens,
                               &oversize);

    if (recorded)
        record_init(&rec, ctx, msg->msgid, topic, tlen, msg->payload, plen);
    for (;;) {
        int rc;

        if (check) {
            rc = dedup_lookup(&rec);
            if (rc == FL_ERROR) {
                enqueue_failed();
                continue;
            }
            if (rc == 1) {
                found = 1;
                break;
            }
        }
        rc = recorded ? redis_append_recorded(argc, argv, lens, &rec)
                      : redis_xadd(argc, argv, lens);
        if (rc == FL_OK)
            break;
        /* Redis may have run it and only the reply got lost: look first */
        check = recorded;
        tried = 1;
        enqueue_failed();
    }
    if (mq.fail_since)
        enqueue_recovered();

    if (found && !tried) {
        fl_shm_add(mq.stats->mqtt_duplicates, 1);
        fl_debug("message %d on %s redelivered by the broker to \"%s\" is in "
                 "the stream already: acknowledged, not appended again",
                 msg->msgid, fl_mqttsh_safe_topic(t, sizeof(t), topic, tlen),
                 rec.s->client_id);
    } else {
        if (found)
            fl_info("message %d on %s: the append whose reply was lost had "
                    "gone through; not appended again",
                    msg->msgid, fl_mqttsh_safe_topic(t, sizeof(t), topic, tlen));
        if (oversize) {
            fl_shm_add(mq.stats->mqtt_oversize, 1);
            oversize_log(topic, tlen, msg->payloadlen);
        } else {
            fl_shm_add(mq.stats->mqtt_enqueued, 1);
        }
    }
    MQTTAsync_freeMessage(&msg);
    MQTTAsync_free(topic);
    __atomic_sub_fetch(&mq.in_cb, 1, __ATOMIC_SEQ_CST);
    return 1;
}

/* ---- the control thread: every paho call after init ---- */

/*
 * What every CONNECT of this worker shares (its own session and a retired
 * slot's): MQTT 5, clean start off, session expiry, Receive Maximum,
 * Maximum Packet Size, keepalive, timeout, credentials and TLS. ssl and props
 * must outlive the connect call; the caller frees props.
 */
static void conn_opts(MQTTAsync_connectOptions *co, MQTTAsync_SSLOptions *ssl,
                      MQTTProperties *props)
{
    MQTTProperty p;

    memset(&p, 0, sizeof(p));
    p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
    p.value.integer4 = mq.session_expiry_s;
    MQTTProperties_add(props, &p);
    /* both clients: the ring of dedup records is sized for it */
    p.identifier = MQTTPROPERTY_CODE_RECEIVE_MAXIMUM;
    p.value.integer2 = (unsigned short)mq.receive_max;
    MQTTProperties_add(props, &p);
    p.identifier = MQTTPROPERTY_CODE_MAXIMUM_PACKET_SIZE;
    p.value.integer4 = mq.max_packet;
    MQTTProperties_add(props, &p);

    co->keepAliveInterval = mq.keepalive_s;
    co->cleanstart = 0;
    co->connectTimeout = mq.connect_timeout_s;
    co->automaticReconnect = 0;
    co->MQTTVersion = MQTTVERSION_5;
    co->connectProperties = props;
    if (mq.username[0])
        co->username = mq.username;
    if (mq.password[0])
        co->password = mq.password;
    if (mq.tls) {
        ssl->trustStore = mq.ca_file[0] ? mq.ca_file : NULL;
        ssl->keyStore = mq.cert_file[0] ? mq.cert_file : NULL;
        ssl->privateKey = mq.key_file[0] ? mq.key_file : NULL;
        ssl->enableServerCertAuth = !mq.tls_insecure;
        ssl->verify = !mq.tls_insecure;
        ssl->ssl_error_cb = on_ssl_error;
        co->ssl = ssl;
    }
}

static void ctl_connect(unsigned gen)
{
    MQTTAsync_connectOptions co = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_SSLOptions     ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties           props = MQTTProperties_initializer;
    int                      rc;
    int64_t                  delay = 0;

    conn_opts(&co, &ssl, &props);
    co.onSuccess5 = on_connect_ok;
    co.onFailure5 = on_connect_fail;
    co.context = (void *)(uintptr_t)gen;

    fl_debug("connecting to mqtt broker %s as \"%s\"", mq.uri, mq.client_id);
    rc = MQTTAsync_connect(mq.client, &co);
    MQTTProperties_free(&props);
    if (rc == MQTTASYNC_SUCCESS)
        return;

    pthread_mutex_lock(&mq.lock);
    if (gen == mq.conn_gen && mq.state == M_CONNECTING)
        delay = conn_ended(0);
    pthread_mutex_unlock(&mq.lock);
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    fl_warn("MQTTAsync_connect() to mqtt broker %s failed: %s; retrying in "
            "%" PRId64 " ms",
            mq.uri, MQTTAsync_strerror(rc), delay);
}

static void ctl_subscribe(unsigned gen)
{
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    int                       rc;
    int64_t                   delay = -1;

    ro.onSuccess5 = on_subscribe_ok;
    ro.onFailure5 = on_subscribe_fail;
    ro.context = (void *)(uintptr_t)gen;
    ro.subscribeOptionsCount = mq.ntopics;
    ro.subscribeOptionsList = mq.subopts;
    rc =
        MQTTAsync_subscribeMany(mq.client, mq.ntopics, mq.topics, mq.qoss, &ro);
    if (rc == MQTTASYNC_SUCCESS)
        return;

    pthread_mutex_lock(&mq.lock);
    if (gen == mq.conn_gen && mq.state == M_UP)
        delay = sub_retry();
    pthread_mutex_unlock(&mq.lock);
    if (delay >= 0)
        fl_warn("MQTTAsync_subscribeMany() on mqtt broker %s failed: %s; "
                "retrying in %" PRId64 " ms",
                mq.uri, MQTTAsync_strerror(rc), delay);
}

/* paho's outcome of a publish with a callback (context: a done_t) */
static void on_pub_ok(void *ctx, MQTTAsync_successData5 *d)
{
    done_t *dn = ctx;

    (void)d;
    done_queue(dn->cb, dn->ud, 1, NULL);
    free(dn);
}

static void on_pub_fail(void *ctx, MQTTAsync_failureData5 *d)
{
    done_t *dn = ctx;
    char    why[160];

    describe_failure(why, sizeof(why), d ? d->code : MQTTASYNC_FAILURE,
                     d ? d->message : NULL);
    done_queue(dn->cb, dn->ud, 0, why);
    free(dn);
}

static void ctl_publish(pub_t *p)
{
    MQTTAsync_message         m = MQTTAsync_message_initializer;
    MQTTAsync_responseOptions ro = MQTTAsync_responseOptions_initializer;
    MQTTProperty              prop;
    done_t                   *dn = NULL;
    int                       rc;

    m.payload = p->payload;
    m.payloadlen = (int)p->len;
    m.qos = p->qos;
    m.retained = p->retain;
    if (p->expiry_s > 0) {
        memset(&prop, 0, sizeof(prop));
        prop.identifier = MQTTPROPERTY_CODE_MESSAGE_EXPIRY_INTERVAL;
        prop.value.integer4 = p->expiry_s;
        MQTTProperties_add(&m.properties, &prop);
    }
    if (p->cb) {
        dn = fl_calloc(1, sizeof(*dn));
        dn->cb = p->cb;
        dn->ud = p->ud;
        ro.onSuccess5 = on_pub_ok;
        ro.onFailure5 = on_pub_fail;
        ro.context = dn;
    }
    rc = MQTTAsync_sendMessage(mq.client, p->topic, &m, &ro);
    if (rc != MQTTASYNC_SUCCESS) {
        fl_warn("publish to %s via mqtt broker %s failed: %s", p->topic, mq.uri,
                MQTTAsync_strerror(rc));
        if (dn) {
            done_queue(dn->cb, dn->ud, 0, MQTTAsync_strerror(rc));
            free(dn);
        }
    }
    MQTTProperties_free(&m.properties);
    pub_free(p);
}

static void ctl_disconnect(void)
{
    MQTTAsync_disconnectOptions o = MQTTAsync_disconnectOptions_initializer5;
    int                         rc;

    pthread_mutex_lock(&mq.lock);
    o.timeout = mq.fast ? FAST_DISCONNECT_MS : DISCONNECT_TIMEOUT_MS;
    pthread_mutex_unlock(&mq.lock);
    o.reasonCode = MQTTREASONCODE_NORMAL_DISCONNECTION;
    o.onSuccess5 = on_disconnect_done;
    o.onFailure5 = on_disconnect_fail;
    rc = MQTTAsync_disconnect(mq.client, &o);
    if (rc == MQTTASYNC_SUCCESS)
        return;

    /* not connected any more: nothing to wait for */
    pthread_mutex_lock(&mq.lock);
    mq.state = M_CLOSED;
    pthread_mutex_unlock(&mq.lock);
    fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
    fl_debug("MQTTAsync_disconnect() on %s: %s", mq.uri,
             MQTTAsync_strerror(rc));
}

/*
 * The worker of another generation that owns this slot's client id for
 * now: a newer one (we are being replaced: it takes the id) or an older
 * one still connected or connecting (we replace it: we wait until it has
 * disconnected). Two clients with one id make the broker close the older
 * connection on every CONNECT of the other, so without this a reload's
 * old and new worker could take the session from each other until the
 * old one stops. Returns the holder's pid (*newer set), or 0. Reads the
 * shared stats segment only.
 */
/* Whether the next connect must wait for another worker of our slot
 * (fl_mqttsh_handoff_wait); if so, the attempt moves HANDOFF_POLL_MS on.
 * Called with mq.lock held. */
static int handoff_wait(int64_t now)
{
    if (!fl_mqttsh_handoff_wait(mq.stats, mq.slot, mq.generation,
                                mq.client_id, &mq.waiting_for))
        return 0;
    mq.reconnect_at = now + HANDOFF_POLL_MS;
    return 1;
}

/* What the control thread does next. Called with mq.lock held; sets *wake
 * (monotonic ms) when the answer is A_NONE. */
static action_t ctl_next(pub_t **pub, unsigned *gen, int64_t *wake)
{
    int64_t now = fl_now_ms();

    *wake = now + 1000;
    if (mq.quit)
        return A_QUIT;
    if (mq.state == M_UP && mq.pub_head) {
        *pub = mq.pub_head;
        mq.pub_head = (*pub)->next;
        if (mq.pub_head == NULL)
            mq.pub_tail = NULL;
        mq.pub_count--;
        mq.pub_bytes -= (*pub)->len;
        return A_PUBLISH;
    }
    if (mq.stopping) {
        if (mq.state == M_UP) {
            mq.state = M_DISCONNECTING;
            return A_DISCONNECT;
        }
        if (mq.state == M_IDLE) {
            mq.state = M_CLOSED;
            fl_shm_store(mq.stats->dep[FL_DEP_MQTT], FL_DEP_DOWN);
        }
        if (mq.state == M_CLOSED)
            pub_drop_all("the MQTT connection is closed");
        return A_NONE;
    }
    if (mq.state == M_IDLE) {
        if (now >= mq.reconnect_at && handoff_wait(now))
            *wake = mq.reconnect_at;
        else if (now >= mq.reconnect_at) {
            mq.state = M_CONNECTING;
            *gen = ++mq.conn_gen;
            return A_CONNECT;
        }
        *wake = mq.reconnect_at;
    }
    if (mq.state == M_UP && mq.sub_pending) {
        if (now >= mq.sub_at) {
            mq.sub_pending = 0;
            *gen = mq.conn_gen;
            return A_SUBSCRIBE;
        }
        *wake = fl_min(*wake, mq.sub_at);
    }
    return A_NONE;
}

static void ctl_wait(int64_t wake_ms)
{
    struct timespec ts;
    int64_t         now = fl_now_ms(), ms = wake_ms > now ? wake_ms - now : 0;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ts.tv_sec += ms / 1000;
    ts.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_cond_timedwait(&mq.cond, &mq.lock, &ts);
}

static void *ctl_main(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&mq.lock);
    for (;;) {
        pub_t   *pub = NULL;
        unsigned gen = 0;
        int64_t  wake;
        action_t a = ctl_next(&pub, &gen, &wake);

        if (a == A_QUIT)
            break;
        if (a == A_NONE) {
            ctl_wait(wake);
            continue;
        }
        pthread_mutex_unlock(&mq.lock);
        switch (a) {
        case A_CONNECT: ctl_connect(gen); break;
        case A_SUBSCRIBE: ctl_subscribe(gen); break;
        case A_PUBLISH: ctl_publish(pub); break;
        case A_DISCONNECT: ctl_disconnect(); break;
        default: break;
        }
        pthread_mutex_lock(&mq.lock);
    }
    pthread_mutex_unlock(&mq.lock);
    return NULL;
}

/* ---- publish (any thread) ---- */

static int native; /* the native client is in use (mqtt_init) */

int fl_mqtt_publish(const char *topic, const void *payload, size_t len, int qos)
{
    return fl_mqtt_publish_ex(topic, payload, len, qos, 0, 0, NULL, NULL);
}

int fl_mqtt_publish_ex(const char *topic, const void *payload, size_t len,
                       int qos, int retain, uint32_t expiry_s,
                       fl_mqtt_pub_cb cb, void *ud)
{
    pub_t *p;
    size_t tlen;
    int    rc = FL_OK;

    if (topic == NULL || (tlen = strlen(topic)) == 0 || tlen > 65535 ||
        strpbrk(topic, "+#") != NULL || qos < 0 || qos > 2 || len > INT_MAX ||
        (len > 0 && payload == NULL))
        return FL_ERROR;
    if (native)
        return fl_mqttc_publish(topic, payload, len, qos, retain, expiry_s, cb,
                                ud);

    p = fl_calloc(1, sizeof(*p));
    p->topic = fl_strdup(topic);
    p->payload = fl_alloc(len ? len : 1);
    if (len)
        memcpy(p->payload, payload, len);
    p->len = len;
    p->qos = qos;
    p->retain = retain != 0;
    p->expiry_s = expiry_s;
    p->cb = cb;
    p->ud = ud;

    pthread_mutex_lock(&mq.lock);
    if (!mq.ctl_running || mq.state != M_UP || mq.stopping)
        rc = FL_ERROR;
    else if (mq.pub_count >= PUB_MAX_QUEUE ||
             mq.pub_bytes + len > PUB_MAX_BYTES)
        rc = FL_AGAIN;
    if (rc == FL_OK) {
        if (mq.pub_tail)
            mq.pub_tail->next = p;
        else
            mq.pub_head = p;
        mq.pub_tail = p;
        mq.pub_count++;
        mq.pub_bytes += len;
        pthread_cond_signal(&mq.cond);
    }
    pthread_mutex_unlock(&mq.lock);
    if (rc != FL_OK)
        pub_free(p);
    return rc;
}

/* ---- the module ---- */

static void conf_free(void)
{
    free(mq.uri);
    free(mq.client_id);
    free(mq.username);
    free(mq.password);
    free(mq.ca_file);
    free(mq.cert_file);
    free(mq.key_file);
    for (int i = 0; i < mq.ntopics; i++)
        free(mq.topics[i]);
    free(mq.topics);
    free(mq.qoss);
    free(mq.subopts);
    free(mq.redis_host);
    free(mq.redis_password);
    free(mq.ingest_key);
    free(mq.dead_key);
    free(mq.dedup_prefix);
    free(mq.sess.key);
    mq.topics = NULL;
    mq.ntopics = 0;
}

static char *concat(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b);
    char  *s = fl_alloc(la + lb + 1);

    memcpy(s, a, la);
    memcpy(s + la, b, lb + 1);
    return s;
}

static struct timeval ms_tv(int64_t ms)
{
    struct timeval tv = {(time_t)(ms / 1000), (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

/* ---- retired slots ----
 *
 * Mosquitto keeps giving an offline persistent member of a shared
 * subscription its share of the messages (subs.c, subs__shared_process):
 * when a node runs fewer workers than before (a reload or restart with a
 * smaller `workers`), the sessions of the slots it no longer runs would
 * collect a share of the traffic, acknowledged to the devices, until they
 * expire. So every worker records its slot in the Redis set
 * {prefix}mqtt:slots:{client id base}, and the worker of slot 0 retires
 * every recorded slot >= workers: once no live worker holds it, it resumes
 * that slot's session (same client id, clean start off), unsubscribes so
 * the broker stops sending it anything new, takes in what was queued
 * through the same messageArrived (XADD, then PUBACK), and when nothing
 * came for RETIRE_QUIET_MS it disconnects with Session Expiry Interval 0,
 * which ends the session. The session expiry stays at its normal value
 * until that last DISCONNECT, so a worker that dies mid-way loses nothing:
 * the session is still there for the next attempt.
 */

#define RETIRE_QUIET_MS 1000
#define RETIRE_RETRY_MS 2000

static struct {
    pthread_t       thr;
    int             started;
    int             quit; /* atomic */
    char           *registry;
    char           *base_id;
    int             workers;
    int64_t         wait_max_ms;
    pthread_mutex_t lock;
    pthread_cond_t  cond;
    int             step_done; /* guarded by lock */
    int             step_ok;
    int64_t         last_msg_ms; /* atomic */
    uint64_t        taken;       /* atomic */
} rt = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static int retire_quit(void)
{
    return __atomic_load_n(&rt.quit, __ATOMIC_SEQ_CST);
}

static void retire_step_end(int ok)
{
    pthread_mutex_lock(&rt.lock);
    rt.step_done = 1;
    rt.step_ok = ok;
    pthread_cond_broadcast(&rt.cond);
    pthread_mutex_unlock(&rt.lock);
}

static void retire_ok(void *ctx, MQTTAsync_successData5 *d)
{
    (void)ctx, (void)d;
    retire_step_end(1);
}

/* Connected to a retired slot's session (ctx: its msession_t). Should it
 * be gone after all, a new one starts: as on_connect_ok. */
static void retire_connected(void *ctx, MQTTAsync_successData5 *d)
{
    if (d == NULL || !d->alt.connect.sessionPresent)
        dedup_reset(ctx);
    retire_step_end(1);
}

static void retire_fail(void *ctx, MQTTAsync_failureData5 *d)
{
    (void)ctx;
    fl_warn("retiring an mqtt session: %s (code %d)",
            d && d->message ? d->message : "failed", d ? d->code : 0);
    retire_step_end(0);
}

/* Wait for the step started last; 0 on failure or timeout. */
static int retire_step_wait(int64_t timeout_ms)
{
    int64_t deadline = fl_now_ms() + timeout_ms;
    int     ok;

    pthread_mutex_lock(&rt.lock);
    while (!rt.step_done && fl_now_ms() < deadline && !retire_quit()) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 50 * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&rt.cond, &rt.lock, &ts);
    }
    ok = rt.step_done && rt.step_ok;
    rt.step_done = 0;
    pthread_mutex_unlock(&rt.lock);
    return ok;
}

static int on_retire_message(void *ctx, char *topic, int topic_len,
                             MQTTAsync_message *msg)
{
    __atomic_store_n(&rt.last_msg_ms, fl_now_ms(), __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&rt.taken, 1, __ATOMIC_SEQ_CST);
    return on_message(ctx, topic, topic_len, msg); /* the slot's session */
}

/* Is a live worker (any generation) running slot s? */
static int slot_alive(int s)
{
    for (int i = 0; i < FL_SHM_ENTRIES; i++) {
        pid_t pid = fl_shm_load(fl_shm->w[i].pid);
        if (fl_shm_load(fl_shm->w[i].slot) == s && pid > 0 &&
            fl_shm_load(fl_shm->w[i].state) != FL_W_EMPTY && kill(pid, 0) == 0)
            return 1;
    }
    return 0;
}

/* Drain and end the session of slot s. FL_OK when it is gone. */
static int retire_slot(int s)
{
    MQTTAsync_createOptions     co = MQTTAsync_createOptions_initializer5;
    MQTTAsync_connectOptions    cn = MQTTAsync_connectOptions_initializer5;
    MQTTAsync_responseOptions   ro = MQTTAsync_responseOptions_initializer;
    MQTTAsync_disconnectOptions dso = MQTTAsync_disconnectOptions_initializer5;
    MQTTAsync_SSLOptions        ssl = MQTTAsync_SSLOptions_initializer;
    MQTTProperties              props = MQTTProperties_initializer;
    MQTTProperty                p;
    MQTTAsync                   c;
    char                        id[300];
    msession_t                  sess = {id, NULL, 0};
    int64_t                     deadline = fl_now_ms() + rt.wait_max_ms;
    uint64_t                    taken0;
    int                         rc, ok = 0;

    while (slot_alive(s)) {
        if (retire_quit() || fl_now_ms() > deadline)
            return FL_ERROR;
        sleep_ms(100);
    }
    snprintf(id, sizeof(id), "%s-w%d", rt.base_id, s);
    rc = MQTTAsync_createWithOptions(&c, mq.uri, id,
                                     MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS)
        return FL_ERROR;
    /* its messages are recorded under its own client id: a redelivery
     * comes on that session */
    sess.key = concat(mq.dedup_prefix, id);
    MQTTAsync_setCallbacks(c, &sess, NULL, on_retire_message, NULL);

    conn_opts(&cn, &ssl, &props);
    cn.onSuccess5 = retire_connected;
    cn.onFailure5 = retire_fail;
    cn.context = &sess;
    taken0 = __atomic_load_n(&rt.taken, __ATOMIC_SEQ_CST);
    __atomic_store_n(&rt.last_msg_ms, fl_now_ms(), __ATOMIC_SEQ_CST);
    rc = MQTTAsync_connect(c, &cn);
    MQTTProperties_free(&props);
    if (rc != MQTTASYNC_SUCCESS ||
        !retire_step_wait(mq.connect_timeout_s * 1000LL + 2000))
        goto done;

    ro.onSuccess5 = retire_ok;
    ro.onFailure5 = retire_fail;
    if (MQTTAsync_unsubscribeMany(c, mq.ntopics, mq.topics, &ro) !=
            MQTTASYNC_SUCCESS ||
        !retire_step_wait(10000))
        goto done;

    /* take in what the session had queued */
    while (!retire_quit() &&
           fl_now_ms() - __atomic_load_n(&rt.last_msg_ms, __ATOMIC_SEQ_CST) <
               RETIRE_QUIET_MS)
        sleep_ms(100);
    if (retire_quit())
        goto done;

    memset(&p, 0, sizeof(p));
    p.identifier = MQTTPROPERTY_CODE_SESSION_EXPIRY_INTERVAL;
    p.value.integer4 = 0;
    MQTTProperties_add(&dso.properties, &p);
    dso.timeout = DISCONNECT_TIMEOUT_MS;
    dso.onSuccess5 = retire_ok;
    dso.onFailure5 = retire_fail;
    if (MQTTAsync_disconnect(c, &dso) == MQTTASYNC_SUCCESS &&
        retire_step_wait(DISCONNECT_TIMEOUT_MS + 2000))
        ok = 1;
    MQTTProperties_free(&dso.properties);

done:
    if (MQTTAsync_isConnected(c)) {
        MQTTAsync_disconnectOptions d2 =
            MQTTAsync_disconnectOptions_initializer5;
        d2.timeout = FAST_DISCONNECT_MS;
        MQTTAsync_disconnect(c, &d2); /* session kept for the next try */
        sleep_ms(FAST_DISCONNECT_MS);
    }
    MQTTAsync_destroy(&c); /* no callback runs after it: sess is free */
    free(sess.key);
    if (ok)
        fl_info(
            "retired the mqtt session \"%s\" of a slot this node no "
            "longer runs: %llu queued messages taken in",
            id,
            (unsigned long long)(__atomic_load_n(&rt.taken, __ATOMIC_SEQ_CST) -
                                 taken0));
    else
        fl_warn("could not retire the mqtt session \"%s\" yet", id);
    return ok ? FL_OK : FL_ERROR;
}

static redisContext *retire_redis(void)
{
    redisContext *r = redisConnectWithTimeout(mq.redis_host, mq.redis_port,
                                              mq.redis_connect_tv);
    redisReply   *rep;

    if (r == NULL || r->err) {
        if (r)
            redisFree(r);
        return NULL;
    }
    redisSetTimeout(r, mq.redis_command_tv);
    if (mq.redis_password[0]) {
        rep = redisCommand(r, "AUTH %s", mq.redis_password);
        if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
            if (rep)
                freeReplyObject(rep);
            redisFree(r);
            return NULL;
        }
        freeReplyObject(rep);
    }
    return r;
}

/* Record our slot; on slot 0, retire the recorded slots >= workers. */
static void *retire_main(void *arg)
{
    (void)arg;
    while (!retire_quit()) {
        redisContext *r = retire_redis();
        redisReply   *rep;
        int           pending = 0;

        if (r == NULL) {
            sleep_ms(RETIRE_RETRY_MS);
            continue;
        }
        rep = redisCommand(r, "SADD %s %d", rt.registry, mq.slot);
        if (rep)
            freeReplyObject(rep);
        if (mq.slot != 0) {
            redisFree(r);
            break;
        }
        rep = redisCommand(r, "SMEMBERS %s", rt.registry);
        for (size_t i = 0; rep && rep->type == REDIS_REPLY_ARRAY &&
                           i < rep->elements && !retire_quit();
             i++) {
            int s = atoi(rep->element[i]->str);
            if (s < rt.workers)
                continue;
            if (retire_slot(s) == FL_OK) {
                redisReply *x = redisCommand(r, "SREM %s %d", rt.registry, s);
                if (x)
                    freeReplyObject(x);
            } else {
                pending++;
            }
        }
        if (rep)
            freeReplyObject(rep);
        redisFree(r);
        if (!pending)
            break;
        sleep_ms(RETIRE_RETRY_MS);
    }
    return NULL;
}

static void retire_start(const fl_worker_t *w)
{
    const fl_config_t *cf = w->cf;
    char               buf[300];
    sigset_t           all, old;

    if (cf->mqtt.client_id[0])
        snprintf(buf, sizeof(buf), "%s", cf->mqtt.client_id);
    else
        snprintf(buf, sizeof(buf), "fleetd-%s", cf->node_id);
    rt.base_id = fl_strdup(buf);
    snprintf(buf, sizeof(buf), "%smqtt:slots:%s", cf->redis.prefix, rt.base_id);
    rt.registry = fl_strdup(buf);
    rt.workers = cf->workers;
    rt.wait_max_ms = cf->shutdown_timeout_ms + 5000;
    rt.quit = 0;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rt.started = pthread_create(&rt.thr, NULL, retire_main, NULL) == 0;
    pthread_sigmask(SIG_SETMASK, &old, NULL);
}

/* FL_OK when the thread is gone (its config copies may be freed). */
static int retire_stop(void)
{
    struct timespec ts;

    if (!rt.started)
        return FL_OK;
    __atomic_store_n(&rt.quit, 1, __ATOMIC_SEQ_CST);
    pthread_mutex_lock(&rt.lock);
    pthread_cond_broadcast(&rt.cond);
    pthread_mutex_unlock(&rt.lock);
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += CTL_JOIN_MS / 1000 + 1;
    if (pthread_timedjoin_np(rt.thr, NULL, &ts) != 0)
        return FL_ERROR;
    rt.started = 0;
    free(rt.registry);
    free(rt.base_id);
    return FL_OK;
}

static void conf_copy(const fl_worker_t *w)
{
    const fl_config_t *cf = w->cf;
    char               buf[256];
    int64_t            pk;

    mq.uri = fl_strdup(cf->mqtt.uri);
    if (cf->mqtt.client_id[0])
        snprintf(buf, sizeof(buf), "%s-w%d", cf->mqtt.client_id, w->slot);
    else
        snprintf(buf, sizeof(buf), "fleetd-%s-w%d", cf->node_id, w->slot);
    mq.client_id = fl_strdup(buf);
    mq.username = fl_strdup(cf->mqtt.username);
    mq.password = fl_strdup(cf->mqtt.password);
    mq.ca_file = fl_strdup(cf->mqtt.ca_file);
    mq.cert_file = fl_strdup(cf->mqtt.cert_file);
    mq.key_file = fl_strdup(cf->mqtt.key_file);
    mq.tls = strncmp(cf->mqtt.uri, "ssl://", 6) == 0 ||
             strncmp(cf->mqtt.uri, "mqtts://", 8) == 0 ||
             strncmp(cf->mqtt.uri, "wss://", 6) == 0;
    mq.tls_insecure = cf->mqtt.tls_insecure;

    mq.ntopics = cf->mqtt.topics.n;
    mq.topics = fl_calloc(mq.ntopics + 1, sizeof(char *));
    mq.qoss = fl_calloc(mq.ntopics + 1, sizeof(int));
    mq.subopts = fl_calloc(mq.ntopics + 1, sizeof(MQTTSubscribe_options));
    for (int i = 0; i < mq.ntopics; i++) {
        MQTTSubscribe_options so = MQTTSubscribe_options_initializer;

        if (cf->mqtt.share_group[0]) {
            snprintf(buf, sizeof(buf), "$share/%s/", cf->mqtt.share_group);
            mq.topics[i] = concat(buf, cf->mqtt.topics.items[i]);
        } else {
            mq.topics[i] = fl_strdup(cf->mqtt.topics.items[i]);
        }
        mq.qoss[i] = cf->mqtt.qos;
        so.noLocal = 0; /* must be 0 on a shared subscription */
        so.retainAsPublished = 0;
        so.retainHandling = 1; /* retained messages only when new */
        mq.subopts[i] = so;
    }

    mq.keepalive_s = (int)fl_max(1, cf->mqtt.keepalive_ms / 1000);
    mq.connect_timeout_s =
        (int)fl_max(1, (cf->mqtt.connect_timeout_ms + 999) / 1000);
    mq.receive_max = cf->mqtt.receive_max;
    mq.session_expiry_s =
        (unsigned)fl_min(cf->mqtt.session_expiry_ms / 1000, 0xfffffffeLL);
    mq.reconnect_max_ms = fl_max(cf->mqtt.reconnect_max_ms, RECONNECT_MIN_MS);
    mq.max_payload = cf->limits.max_payload_bytes;
    pk = fl_max(mq.max_payload * MAX_PACKET_FACTOR, MAX_PACKET_FLOOR);
    mq.max_packet = (unsigned)fl_min(pk, MQTT_MAX_PACKET);

    mq.redis_host = fl_strdup(cf->redis.host);
    mq.redis_port = cf->redis.port;
    mq.redis_password = fl_strdup(cf->redis.password);
    mq.redis_connect_tv = ms_tv(cf->redis.connect_timeout_ms);
    mq.redis_command_tv = ms_tv(cf->redis.command_timeout_ms);
    mq.ingest_key = concat(cf->redis.prefix, "ingest");
    mq.dead_key = concat(cf->redis.prefix, "dead");
    snprintf(mq.ingest_maxlen, sizeof(mq.ingest_maxlen), "%" PRId64,
             cf->redis.stream_maxlen);
    snprintf(mq.dead_maxlen, sizeof(mq.dead_maxlen), "%" PRId64,
             cf->redis.dead_letter_maxlen);
    mq.dedup_prefix = concat(cf->redis.prefix, "dedup:");
    mq.stream.ingest_key = mq.ingest_key;
    mq.stream.dead_key = mq.dead_key;
    mq.stream.ingest_maxlen = mq.ingest_maxlen;
    mq.stream.dead_maxlen = mq.dead_maxlen;
    mq.stream.max_payload = mq.max_payload;
    mq.dedup_slots = fl_mqttsh_dedup_ring(mq.receive_max);
    /* at least 2 x session_expiry after the last append: the PEXPIRE is
     * at most DEDUP_REFRESH_MS older than that */
    snprintf(mq.dedup_ttl, sizeof(mq.dedup_ttl), "%" PRId64,
             2 * cf->mqtt.session_expiry_ms + 2 * DEDUP_REFRESH_MS);
    mq.sess.client_id = mq.client_id;
    mq.sess.key = concat(mq.dedup_prefix, mq.client_id);
    mq.sess.expire_at = 0;
    mq.stats = w->stats;
    mq.slot = w->slot;
    mq.generation = w->generation;
}

static int paho_init(fl_worker_t *w)
{
    MQTTAsync_createOptions co = MQTTAsync_createOptions_initializer5;
    pthread_condattr_t      ca;
    sigset_t                all, old;
    int                     rc;

    conf_copy(w);
    mq.done_fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
    if (mq.done_fd == -1) {
        fl_log_errno(FL_LOG_ERROR, errno, "eventfd() for mqtt failed");
        conf_free();
        return FL_ERROR;
    }
    mq.ev_done =
        event_new(w->base, mq.done_fd, EV_READ | EV_PERSIST, on_done, NULL);
    event_add(mq.ev_done, NULL);
    mq.state = M_IDLE;
    mq.stopping = mq.fast = mq.quit = 0;
    mq.reconnect_at = 0;
    mq.backoff_ms = RECONNECT_MIN_MS;
    mq.rand_state = (unsigned)getpid() ^ (unsigned)fl_now_us();
    mq.redis_backoff_ms = REDIS_BACKOFF_MIN_MS;

    co.sendWhileDisconnected = 0;
    co.maxBufferedMessages = PUB_MAX_QUEUE;
    co.restoreMessages = 0;
    co.persistQoS0 = 0;
    rc = MQTTAsync_createWithOptions(&mq.client, mq.uri, mq.client_id,
                                     MQTTCLIENT_PERSISTENCE_NONE, NULL, &co);
    if (rc != MQTTASYNC_SUCCESS) {
        fl_error("MQTTAsync_createWithOptions() for mqtt broker %s failed: %s",
                 mq.uri, MQTTAsync_strerror(rc));
        conf_free();
        return FL_ERROR;
    }
    MQTTAsync_setCallbacks(mq.client, &mq.sess, on_connection_lost, on_message,
                           NULL);
    MQTTAsync_setDisconnected(mq.client, NULL, on_disconnected);

    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&mq.cond, &ca);
    pthread_condattr_destroy(&ca);

    fl_shm_store(w->stats->dep[FL_DEP_MQTT], FL_DEP_CONNECTING);

    /* The control thread, and the paho threads its first connect starts,
     * inherit a mask with every signal blocked: signals stay with the
     * loop's evsignal handling. */
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    rc = pthread_create(&mq.ctl, NULL, ctl_main, NULL);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rc != 0) {
        fl_log_errno(FL_LOG_ERROR, rc, "pthread_create() for mqtt failed");
        MQTTAsync_destroy(&mq.client);
        pthread_cond_destroy(&mq.cond);
        conf_free();
        return FL_ERROR;
    }
    pthread_mutex_lock(&mq.lock);
    mq.ctl_running = 1;
    pthread_mutex_unlock(&mq.lock);
    retire_start(w);
    fl_debug("mqtt intake: %s as \"%s\", %d topic%s, stream %s", mq.uri,
             mq.client_id, mq.ntopics, mq.ntopics == 1 ? "" : "s",
             mq.ingest_key);
    return FL_OK;
}

static void paho_stop(fl_worker_t *w, int fast)
{
    int was;

    (void)w;
    pthread_mutex_lock(&mq.lock);
    was = mq.stopping;
    mq.stopping = 1;
    if (fast)
        mq.fast = 1;
    pthread_cond_signal(&mq.cond);
    pthread_mutex_unlock(&mq.lock);
    if (!was)
        fl_info("disconnecting from mqtt broker %s, keeping session \"%s\"",
                mq.uri, mq.client_id);
}

static int paho_busy(fl_worker_t *w)
{
    int n = __atomic_load_n(&mq.in_cb, __ATOMIC_SEQ_CST);

    (void)w;
    pthread_mutex_lock(&mq.lock);
    if (mq.stopping && mq.state != M_CLOSED)
        n++;
    pthread_mutex_unlock(&mq.lock);
    return n;
}

/*
 * Free the paho client, but only when that cannot hang: the control thread
 * has ended, no connection exists or can appear, and no callback runs
 * (MQTTAsync_destroy() takes paho's mutex, which a callback stuck on Redis
 * holds). Otherwise the client, its threads and our config copies are
 * left to the process exit, which is moments away: a message whose XADD
 * was still being retried is then never acknowledged, and the broker
 * redelivers it.
 */
static void paho_destroy(fl_worker_t *w)
{
    struct timespec ts;
    int             joined = 0, idle;

    (void)w;
    pthread_mutex_lock(&mq.lock);
    mq.quit = 1;
    mq.stopping = 1;
    pthread_cond_signal(&mq.cond);
    pthread_mutex_unlock(&mq.lock);

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += CTL_JOIN_MS / 1000;
    if (pthread_timedjoin_np(mq.ctl, NULL, &ts) == 0)
        joined = 1;
    if (retire_stop() != FL_OK)
        joined = 0; /* still using the config copies: leave them */

    pthread_mutex_lock(&mq.lock);
    mq.ctl_running = 0;
    idle = mq.state == M_CLOSED || mq.state == M_IDLE;
    pub_drop_all("the worker is exiting");
    pthread_mutex_unlock(&mq.lock);
    /* the outcomes that arrived; later ones (a paho callback after this)
     * are left to the exit */
    on_done(mq.done_fd, EV_READ, NULL);
    event_free(mq.ev_done);
    mq.ev_done = NULL;

    if (!joined || !idle || __atomic_load_n(&mq.in_cb, __ATOMIC_SEQ_CST)) {
        fl_warn("mqtt client for %s left to the process exit (%s)", mq.uri,
                !joined ? "control thread busy"
                : !idle ? "connection not closed"
                        : "a message is still being enqueued");
        return;
    }
    MQTTAsync_destroy(&mq.client);
    redis_drop();
    pthread_cond_destroy(&mq.cond);
    conf_free();
}

/*
 * The module picks its client by the broker's uri: the native client on
 * the loop (fl_mqttc.c) for plain TCP, paho for TLS (and WebSockets),
 * which the native client does not speak. Either way the retire thread
 * below, with its own paho client, and the config copies in mq are set up
 * here: the retire thread reads them.
 */
static int mqtt_init(fl_worker_t *w)
{
    const char *force = getenv("FLEETD_MQTT_PAHO");

    /* FLEETD_MQTT_PAHO=1: paho for plain TCP too, so that the integration
     * tests (which run plain TCP) can check the paho path */
    native = fl_mqttsh_uri_native(w->cf->mqtt.uri) &&
             !(force && strcmp(force, "1") == 0);
    if (!native)
        return paho_init(w);
    conf_copy(w);
    if (fl_mqttc_init(w) != FL_OK) {
        conf_free();
        return FL_ERROR;
    }
    retire_start(w);
    return FL_OK;
}

static void mqtt_stop(fl_worker_t *w, int fast)
{
    if (native)
        fl_mqttc_stop(w, fast);
    else
        paho_stop(w, fast);
}

static int mqtt_busy(fl_worker_t *w)
{
    if (native)
        return fl_mqttc_busy(w) + __atomic_load_n(&mq.in_cb, __ATOMIC_SEQ_CST);
    return paho_busy(w);
}

static void mqtt_destroy(fl_worker_t *w)
{
    if (!native) {
        paho_destroy(w);
        return;
    }
    fl_mqttc_destroy(w);
    /* a retire thread stuck in paho keeps using the copies: leave them */
    if (retire_stop() == FL_OK && !__atomic_load_n(&mq.in_cb, __ATOMIC_SEQ_CST)) {
        redis_drop();
        conf_free();
    }
}

const fl_module_t fl_mqtt_module = {
    /* no ready(): a reload's new worker connects only once the old one
     * of its slot has disconnected, which happens when the old one is
     * drained, i.e. after the new one is ready */
    "mqtt", mqtt_init, mqtt_stop, mqtt_busy, mqtt_destroy, NULL,
};
