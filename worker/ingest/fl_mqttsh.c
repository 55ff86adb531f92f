/*
 * fl_mqttsh.c - see fl_mqttsh.h. Moved out of fl_mqtt.c when the native
 * client came, so that both clients append and record alike.
 */
#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_log.h"
#include "fl_mqttsh.h"

int fl_mqttsh_xadd_argv(const fl_mqttsh_stream_t *s, const char *topic,
                        size_t tlen, const void *payload, size_t plen,
                        const char *rx, char *error, size_t errlen,
                        const char **argv, size_t *lens, int *oversize)
{
    int argc = 0;

#define ARG(str, n) (argv[argc] = (str), lens[argc] = (n), argc++)
    ARG("XADD", 4);
    *oversize = (int64_t)plen > s->max_payload;
    if (!*oversize) {
        ARG(s->ingest_key, strlen(s->ingest_key));
        ARG("MAXLEN", 6);
        ARG("~", 1);
        ARG(s->ingest_maxlen, strlen(s->ingest_maxlen));
        ARG("*", 1);
        ARG("t", 1);
        ARG(topic, tlen);
        ARG("p", 1);
        ARG(plen ? (const char *)payload : "", plen);
        ARG("r", 1);
        ARG(rx, strlen(rx));
        return argc;
    }
    snprintf(error, errlen,
             "payload of %zu bytes exceeds limits.max_payload_bytes "
             "(%" PRId64 ")",
             plen, s->max_payload);
    ARG(s->dead_key, strlen(s->dead_key));
    ARG("MAXLEN", 6);
    ARG("~", 1);
    ARG(s->dead_maxlen, strlen(s->dead_maxlen));
    ARG("*", 1);
    ARG("topic", 5);
    ARG(topic, tlen);
    ARG("reason", 6);
    ARG("too_large", 9);
    ARG("error", 5);
    ARG(error, strlen(error));
    ARG("payload", 7);
    ARG((const char *)payload, fl_min(plen, FL_MQTTSH_DEAD_PAYLOAD));
    ARG("rx", 2);
    ARG(rx, strlen(rx));
#undef ARG
    return argc;
}

unsigned fl_mqttsh_dedup_ring(int r)
{
    for (unsigned n = (unsigned)fl_max(r, 1); n < FL_MQTTSH_DEDUP_MAX_SLOTS;
         n++)
        if (FL_MQTTSH_DEDUP_ID_SPACE % n == 0)
            return n;
    return FL_MQTTSH_DEDUP_MAX_SLOTS;
}

uint64_t fl_mqttsh_hash(const char *topic, size_t tlen, const void *payload,
                        size_t plen)
{
    const unsigned char *p = (const unsigned char *)topic;
    uint64_t             h = 0xcbf29ce484222325ULL;

    for (size_t i = 0; i < tlen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    h *= 0x100000001b3ULL; /* the 0 byte: h ^ 0 == h */
    p = payload;
    for (size_t i = 0; i < plen; i++)
        h = (h ^ p[i]) * 0x100000001b3ULL;
    return h;
}

void fl_mqttsh_record(fl_mqttsh_record_t *rec, unsigned slots, int packet_id,
                      const char *topic, size_t tlen, const void *payload,
                      size_t plen)
{
    snprintf(rec->field, sizeof(rec->field), "%u", (unsigned)packet_id % slots);
    snprintf(rec->value, sizeof(rec->value), "%d:%016" PRIx64, packet_id,
             fl_mqttsh_hash(topic, tlen, payload, plen));
}

int64_t fl_mqttsh_jitter(unsigned *state, int64_t ms)
{
    *state = *state * 1103515245u + 12345u;
    return ms / 2 + (int64_t)((*state >> 8) % (uint64_t)(ms / 2 + 1));
}

const char *fl_mqttsh_safe_topic(char *buf, size_t size, const char *topic,
                                 size_t tlen)
{
    size_t n = fl_min(tlen, size - 1);

    for (size_t i = 0; i < n; i++)
        buf[i] =
            (unsigned char)topic[i] < 0x20 || topic[i] == 0x7f ? '?' : topic[i];
    buf[n] = '\0';
    return buf;
}

pid_t fl_mqttsh_slot_holder(const fl_shm_worker_t *self, int slot,
                            uint32_t generation, int *newer)
{
    for (int i = 0; fl_shm != NULL && i < FL_SHM_ENTRIES; i++) {
        const fl_shm_worker_t *e = &fl_shm->w[i];
        uint32_t               gen;
        int                    st, dep;
        pid_t                  pid;

        if (e == self || fl_shm_load(e->slot) != slot)
            continue;
        gen = fl_shm_load(e->generation);
        st = fl_shm_load(e->state);
        pid = fl_shm_load(e->pid);
        if (gen == generation ||
            (st != FL_W_STARTING && st != FL_W_READY && st != FL_W_DRAINING) ||
            pid <= 0 || (kill(pid, 0) == -1 && errno == ESRCH))
            continue;
        dep = fl_shm_load(e->dep[FL_DEP_MQTT]);
        *newer = gen > generation;
        if (*newer || dep == FL_DEP_UP || dep == FL_DEP_CONNECTING)
            return pid;
    }
    return 0;
}

static const char *uri_body(const char *uri)
{
    if (strncmp(uri, "tcp://", 6) == 0)
        return uri + 6;
    if (strncmp(uri, "mqtt://", 7) == 0)
        return uri + 7;
    return NULL;
}

int fl_mqttsh_uri_native(const char *uri)
{
    return uri_body(uri) != NULL;
}

int fl_mqttsh_parse_uri(const char *uri, char *host, size_t hlen, int *port)
{
    const char *s = uri_body(uri), *h, *end, *colon = NULL;
    size_t      n;
    char       *e;
    long        v = 1883;

    if (s == NULL)
        return FL_ERROR;
    end = s + strcspn(s, "/?#");
    if (*s == '[') {
        const char *rb = memchr(s, ']', (size_t)(end - s));
        if (rb == NULL)
            return FL_ERROR;
        h = s + 1;
        n = (size_t)(rb - h);
        if (rb + 1 < end) {
            if (rb[1] != ':')
                return FL_ERROR;
            colon = rb + 1;
        }
    } else {
        h = s;
        colon = memchr(s, ':', (size_t)(end - s));
        n = (size_t)((colon ? colon : end) - s);
    }
    if (n == 0 || n >= hlen)
        return FL_ERROR;
    if (colon) {
        if (colon + 1 == end)
            return FL_ERROR;
        errno = 0;
        v = strtol(colon + 1, &e, 10);
        if (e != end || errno || v < 1 || v > 65535)
            return FL_ERROR;
    }
    /* a path after the authority means nothing to MQTT: refuse it */
    if (*end != '\0' && !(end[0] == '/' && end[1] == '\0'))
        return FL_ERROR;
    memcpy(host, h, n);
    host[n] = '\0';
    *port = (int)v;
    return FL_OK;
}

int fl_mqttsh_handoff_wait(fl_shm_worker_t *self, int slot,
                           uint32_t generation, const char *client_id,
                           pid_t *waiting_for)
{
    int   newer = 0;
    pid_t pid = fl_mqttsh_slot_holder(self, slot, generation, &newer);

    if (pid == 0) {
        if (*waiting_for)
            fl_info("worker pid %d released mqtt client id \"%s\"",
                    (int)*waiting_for, client_id);
        *waiting_for = 0;
        return 0;
    }
    if (*waiting_for != pid)
        fl_info("%s worker pid %d holds mqtt client id \"%s\": %s",
                newer ? "newer" : "older", (int)pid, client_id,
                newer ? "leaving it the session"
                      : "connecting once it has disconnected");
    *waiting_for = pid;
    fl_shm_store(self->dep[FL_DEP_MQTT], newer ? FL_DEP_DOWN : FL_DEP_CONNECTING);
    return 1;
}
