/*
 * fl_shadow.c - what the ingest consumer, the API and the WebSocket layer
 * share about the shadow besides its layout (fl_shadow.h): the state
 * document and publishing a desired delta.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_log.h"
#include "fl_mqtt.h"
#include "fl_shadow.h"

void fl_shadow_publish_delta(const char *device, const char *delta, size_t len)
{
    char topic[128];

    snprintf(topic, sizeof(topic), "devices/%s/desired", device);
    /* an empty delta clears the retained message: an empty payload */
    if (strcmp(delta, "{}") == 0)
        len = 0;
    if (fl_mqtt_publish_ex(topic, delta, len, 1, 1, 0, NULL, NULL) != FL_OK)
        fl_warn("desired delta of %s not published (mqtt not connected); "
                "it is published with the next change",
                device);
}

void fl_kv_free(fl_kv_t *kv)
{
    for (size_t i = 0; i < kv->n; i++)
        free(kv->f[i]);
    free(kv->f);
    free(kv->len);
    memset(kv, 0, sizeof(*kv));
}

int fl_kv_from(fl_kv_t *kv, const redisReply *rep)
{
    if (rep == NULL || rep->type != REDIS_REPLY_ARRAY)
        return FL_ERROR;
    kv->n = rep->elements;
    kv->f = fl_calloc(kv->n + 1, sizeof(char *));
    kv->len = fl_calloc(kv->n + 1, sizeof(size_t));
    for (size_t i = 0; i < kv->n; i++) {
        const redisReply *e = rep->element[i];
        size_t            l = e->type == REDIS_REPLY_STRING ? e->len : 0;

        kv->f[i] = fl_alloc(l + 1);
        memcpy(kv->f[i], l ? e->str : "", l);
        kv->f[i][l] = '\0';
        kv->len[i] = l;
    }
    return FL_OK;
}

/* the value of field name in kv, or NULL */
static const char *kv_get(const fl_kv_t *kv, const char *name, size_t *len)
{
    for (size_t i = 0; i + 1 < kv->n; i += 2) {
        if (strcmp(kv->f[i], name) == 0) {
            *len = kv->len[i + 1];
            return kv->f[i + 1];
        }
    }
    return NULL;
}

/* {"k": raw, ...} of the fields with prefix pfx (2 bytes), raw JSON */
static void raw_object(fl_sbuf_t *b, const fl_kv_t *kv, const char *pfx)
{
    int first = 1;

    fl_sb_lit(b, "{");
    for (size_t i = 0; i + 1 < kv->n; i += 2) {
        if (strncmp(kv->f[i], pfx, 2) != 0)
            continue;
        if (!first)
            fl_sb_lit(b, ",");
        first = 0;
        fl_sb_jstr(b, kv->f[i] + 2);
        fl_sb_lit(b, ":");
        fl_sb_put(b, kv->f[i + 1], kv->len[i + 1]);
    }
    fl_sb_lit(b, "}");
}

void fl_shadow_state_json(fl_sbuf_t *b, const char *device,
                          const fl_kv_t *shadow, const fl_kv_t *desired,
                          int64_t online_window_ms)
{
    const char *seen_s;
    size_t      len;
    int64_t     seen = 0, ts = -1;
    int         first = 1;

    seen_s = kv_get(shadow, "last_seen", &len);
    if (seen_s)
        seen = atoll(seen_s);
    for (size_t i = 0; i + 1 < shadow->n; i += 2) {
        if (strncmp(shadow->f[i], "t:", 2) == 0)
            ts = fl_max(ts, (int64_t)atoll(shadow->f[i + 1]));
    }
    fl_sb_lit(b, "{\"device\":");
    fl_sb_jstr(b, device);
    fl_sb_lit(b, ",\"ts\":");
    if (ts >= 0)
        fl_sb_i64(b, ts);
    else
        fl_sb_lit(b, "null");
    if (seen > 0 && fl_wall_ms() - seen <= online_window_ms)
        fl_sb_lit(b, ",\"online\":true,\"last_seen\":");
    else
        fl_sb_lit(b, ",\"online\":false,\"last_seen\":");
    if (seen > 0)
        fl_sb_i64(b, seen);
    else
        fl_sb_lit(b, "null");
    fl_sb_lit(b, ",\"values\":");
    raw_object(b, shadow, "v:");
    fl_sb_lit(b, ",\"value_ts\":");
    raw_object(b, shadow, "t:");
    fl_sb_lit(b, ",\"reported\":");
    raw_object(b, shadow, "r:");
    fl_sb_lit(b, ",\"desired\":");
    raw_object(b, desired, "d:");
    /* the delta: desired keys whose value is not the reported one */
    fl_sb_lit(b, ",\"delta\":{");
    for (size_t i = 0; i + 1 < desired->n; i += 2) {
        const char *k = desired->f[i], *rep;
        char        name[1100];

        if (strncmp(k, "d:", 2) != 0)
            continue;
        snprintf(name, sizeof(name), "r:%s", k + 2);
        rep = kv_get(shadow, name, &len);
        if (rep && len == desired->len[i + 1] &&
            memcmp(rep, desired->f[i + 1], len) == 0)
            continue;
        if (!first)
            fl_sb_lit(b, ",");
        first = 0;
        fl_sb_jstr(b, k + 2);
        fl_sb_lit(b, ":");
        fl_sb_put(b, desired->f[i + 1], desired->len[i + 1]);
    }
    fl_sb_lit(b, "}}");
}

uint32_t fl_shadow_shard(const char *device, int shards)
{
    return fl_fnv1a(device, strlen(device)) % (uint32_t)shards;
}
