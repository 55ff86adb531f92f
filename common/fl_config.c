/*
 * fl_config.c - YAML configuration into fl_config_t.
 *
 * The file is loaded as a libyaml document (node tree with line marks) and
 * walked against one static schema table. A key is addressed by its dotted
 * path ("http.max_body_bytes"); a path that is a prefix of other keys is a
 * section and must be a mapping. Anything not in the table is an error, so
 * a typo never silently falls back to a default.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>
#include <yaml.h>

#include "fl_config.h"
#include "fl_log.h"

typedef enum {
    T_SECTION,
    T_STR,
    T_NAME, /* string of [A-Za-z0-9_.-] */
    T_INT,
    T_SIZE,
    T_DURATION,
    T_WORKERS,
    T_LISTEN,
    T_LOGLEVEL,
    T_STRLIST,
    T_STRLIST0, /* a list that may be empty */
    T_BOOL,
    T_INT64,
} conf_type_t;

typedef struct {
    const char *path;
    conf_type_t type;
    size_t      off;
    int64_t     min, max;
    const char *def; /* default as it would be written in YAML */
} conf_key_t;

#define O(f) offsetof(fl_config_t, f)
#define S(p)                        \
    {                               \
        p, T_SECTION, 0, 0, 0, NULL \
    }

static const conf_key_t conf_keys[] = {
    {"node_id", T_NAME, O(node_id), 1, 64, "node-1"},
    {"workers", T_WORKERS, O(workers), 1, FL_MAX_WORKERS, "auto"},
    {"listen", T_LISTEN, O(listen), 0, 0, "127.0.0.1:8080"},
    {"backlog", T_INT, O(backlog), 1, 65535, "511"},
    {"pid_file", T_STR, O(pid_file), 0, 4095, "run/fleetd.pid"},
    {"shutdown_timeout", T_DURATION, O(shutdown_timeout_ms), 100, 3600000,
     "30s"},
    {"fast_shutdown_timeout", T_DURATION, O(fast_shutdown_timeout_ms), 10,
     600000, "3s"},
    {"worker_ready_timeout", T_DURATION, O(worker_ready_timeout_ms), 100,
     600000, "10s"},

    S("log"),
    {"log.level", T_LOGLEVEL, O(log.level), 0, 0, "info"},
    {"log.file", T_STR, O(log.file), 0, 4095, ""},

    S("http"),
    {"http.max_header_bytes", T_SIZE, O(http.max_header_bytes), 1024, 1048576,
     "16k"},
    {"http.max_body_bytes", T_SIZE, O(http.max_body_bytes), 0, 1073741824,
     "1m"},
    {"http.header_timeout", T_DURATION, O(http.header_timeout_ms), 100, 3600000,
     "10s"},
    {"http.idle_timeout", T_DURATION, O(http.idle_timeout_ms), 100, 86400000,
     "60s"},
    {"http.drain_idle", T_DURATION, O(http.drain_idle_ms), 0, 600000, "1s"},
    {"http.max_connections", T_INT, O(http.max_connections), 1, 1000000,
     "10000"},
    {"http.max_output_bytes", T_SIZE, O(http.max_output_bytes), 4096,
     1073741824, "1m"},
    {"limits.ws_slow_timeout", T_DURATION, O(limits.ws_slow_timeout_ms), 100,
     3600000, "10s"},
    {"limits.ws_max_connections", T_INT, O(limits.ws_max_connections), 1,
     1000000, "10000"},
    {"limits.ws_max_message", T_SIZE, O(limits.ws_max_message), 128,
     16777216, "64k"},
    {"limits.ws_max_subscriptions", T_INT, O(limits.ws_max_subscriptions), 1,
     1000000, "1000"},
    {"limits.ws_msg_rate", T_INT, O(limits.ws_msg_rate), 1, 1000000, "100"},

    S("mqtt"),
    {"mqtt.uri", T_STR, O(mqtt.uri), 1, 1024, "tcp://127.0.0.1:1883"},
    {"mqtt.username", T_STR, O(mqtt.username), 0, 1024, ""},
    {"mqtt.password", T_STR, O(mqtt.password), 0, 1024, ""},
    {"mqtt.topics", T_STRLIST, O(mqtt.topics), 1, 1024,
     "[\"devices/+/telemetry\", \"devices/+/state\", "
     "\"devices/+/commands/ack\"]"},
    {"mqtt.qos", T_INT, O(mqtt.qos), 0, 1, "1"},
    {"mqtt.client_id", T_STR, O(mqtt.client_id), 0, 128, ""},
    {"mqtt.share_group", T_STR, O(mqtt.share_group), 0, 64, "fleetd"},
    {"mqtt.keepalive", T_DURATION, O(mqtt.keepalive_ms), 1000, 3600000, "30s"},
    {"mqtt.session_expiry", T_DURATION, O(mqtt.session_expiry_ms), 0,
     4294967000LL * 1000, "1d"},
    {"mqtt.connect_timeout", T_DURATION, O(mqtt.connect_timeout_ms), 100,
     600000, "5s"},
    {"mqtt.reconnect_max", T_DURATION, O(mqtt.reconnect_max_ms), 100, 600000,
     "10s"},
    {"mqtt.receive_max", T_INT, O(mqtt.receive_max), 1, 65535, "100"},
    {"mqtt.ca_file", T_STR, O(mqtt.ca_file), 0, 4095, ""},
    {"mqtt.cert_file", T_STR, O(mqtt.cert_file), 0, 4095, ""},
    {"mqtt.key_file", T_STR, O(mqtt.key_file), 0, 4095, ""},
    {"mqtt.tls_insecure", T_BOOL, O(mqtt.tls_insecure), 0, 1, "false"},

    S("redis"),
    {"redis.host", T_STR, O(redis.host), 1, 1024, "127.0.0.1"},
    {"redis.port", T_INT, O(redis.port), 1, 65535, "6379"},
    {"redis.password", T_STR, O(redis.password), 0, 1024, ""},
    {"redis.prefix", T_STR, O(redis.prefix), 0, 64, "fleetd:"},
    {"redis.stream_maxlen", T_INT64, O(redis.stream_maxlen), 1000, 1000000000,
     "10000000"},
    {"redis.dead_letter_maxlen", T_INT64, O(redis.dead_letter_maxlen), 100,
     1000000000, "100000"},
    {"redis.shadow_ttl", T_DURATION, O(redis.shadow_ttl_ms), 1000,
     31536000000LL * 10, "7d"},
    {"redis.channel_shards", T_INT, O(redis.channel_shards), 1, 1024, "16"},
    {"redis.connect_timeout", T_DURATION, O(redis.connect_timeout_ms), 100,
     600000, "2s"},
    {"redis.command_timeout", T_DURATION, O(redis.command_timeout_ms), 100,
     600000, "5s"},

    S("postgres"),
    {"postgres.conninfo", T_STR, O(postgres.conninfo), 0, 4096,
     "host=127.0.0.1 port=5432 dbname=fleetd user=fleetd"},
    {"postgres.retention_days", T_INT, O(postgres.retention_days), 1, 36500,
     "30"},
    {"postgres.connect_timeout", T_DURATION, O(postgres.connect_timeout_ms),
     100, 600000, "5s"},
    {"postgres.partition_interval", T_DURATION,
     O(postgres.partition_interval_ms), 3600000, 2592000000LL, "1d"},
    {"postgres.partitions_ahead", T_INT, O(postgres.partitions_ahead), 1, 365,
     "3"},
    {"postgres.synchronous_commit", T_BOOL, O(postgres.synchronous_commit), 0,
     1, "true"},
    {"postgres.pool_size", T_INT, O(postgres.pool_size), 1, 64, "4"},
    {"postgres.pool_queue", T_INT, O(postgres.pool_queue), 1, 1000000, "1024"},
    {"postgres.pool_wait", T_DURATION, O(postgres.pool_wait_ms), 10, 600000,
     "5s"},
    {"postgres.query_timeout", T_DURATION, O(postgres.query_timeout_ms), 100,
     3600000, "30s"},
    {"postgres.rollup_1m_retention_days", T_INT,
     O(postgres.rollup_1m_retention_days), 1, 36500, "90"},
    {"postgres.rollup_1h_retention_days", T_INT,
     O(postgres.rollup_1h_retention_days), 1, 36500, "730"},
    {"postgres.rollup_refresh", T_DURATION, O(postgres.rollup_refresh_ms), 0,
     3600000, "15s"},

    S("auth"),
    {"auth.admin_tokens", T_STRLIST, O(auth.admin_tokens), 1, 1024,
     "[\"change-me\"]"},
    {"auth.ws_origins", T_STRLIST0, O(auth.ws_origins), 1, 1024, "[]"},

    S("ws"),
    {"ws.ping_interval", T_DURATION, O(ws.ping_interval_ms), 1000, 3600000,
     "30s"},
    {"ws.resume_keep", T_INT, O(ws.resume_keep), 0, 100000, "100"},
    {"ws.resume_ttl", T_DURATION, O(ws.resume_ttl_ms), 1000, 86400000, "10m"},

    S("ingest"),
    {"ingest.batch", T_INT, O(ingest.batch), 1, 100000, "5000"},
    {"ingest.block", T_DURATION, O(ingest.block_ms), 1, 60000, "100ms"},
    {"ingest.linger", T_DURATION, O(ingest.linger_ms), 0, 10000, "20ms"},
    {"ingest.fanout_interval", T_DURATION, O(ingest.fanout_interval_ms), 1,
     10000, "2ms"},
    {"ingest.claim_idle", T_DURATION, O(ingest.claim_idle_ms), 1000, 86400000,
     "30s"},
    {"ingest.max_deliveries", T_INT, O(ingest.max_deliveries), 1, 1000, "5"},
    {"ingest.parse_threads", T_INT, O(ingest.parse_threads), 1, 64, "2"},
    {"ingest.parse_inline_max", T_SIZE, O(ingest.parse_inline_max), 0,
     268435456, "8k"},
    {"ingest.online_window", T_DURATION, O(ingest.online_window_ms), 1000,
     31536000000LL, "5m"},

    S("limits"),
    {"limits.max_payload_bytes", T_SIZE, O(limits.max_payload_bytes), 16,
     268435456, "64k"},
    {"limits.ws_send_buffer", T_SIZE, O(limits.ws_send_buffer), 1024,
     1073741824, "1m"},
    {"limits.ws_slow_timeout", T_DURATION, O(limits.ws_slow_timeout_ms), 100,
     3600000, "10s"},
    {"limits.ws_max_connections", T_INT, O(limits.ws_max_connections), 1,
     1000000, "10000"},
    {"limits.ws_max_message", T_SIZE, O(limits.ws_max_message), 128,
     16777216, "64k"},
    {"limits.ws_max_subscriptions", T_INT, O(limits.ws_max_subscriptions), 1,
     1000000, "1000"},
    {"limits.ws_msg_rate", T_INT, O(limits.ws_msg_rate), 1, 1000000, "100"},
    {"limits.max_metrics", T_INT, O(limits.max_metrics), 1, 1500, "1000"},
    {"limits.max_name_bytes", T_INT, O(limits.max_name_bytes), 1, 1024, "128"},
    {"limits.max_depth", T_INT, O(limits.max_depth), 1, 64, "8"},
    {"limits.max_batch", T_INT, O(limits.max_batch), 1, 100000, "1000"},
    {"limits.max_string_bytes", T_INT, O(limits.max_string_bytes), 1, 16777216,
     "1024"},
    {"limits.max_clock_skew", T_DURATION, O(limits.max_clock_skew_ms), 0,
     31536000000LL, "1d"},
    /* 0.2's name of max_clock_skew, still read */
    {"limits.max_future", T_DURATION, O(limits.max_clock_skew_ms), 0,
     31536000000LL, "1d"},
};

typedef struct {
    const char  *name;
    char        *err;
    size_t       errlen;
    fl_config_t *cf;
    int          failed;
} conf_ctx_t;

static void conf_error(conf_ctx_t *ctx, int line, const char *fmt, ...)
    fl_printf(3, 4);

static void conf_error(conf_ctx_t *ctx, int line, const char *fmt, ...)
{
    va_list ap;
    int     n;

    if (ctx->failed)
        return;
    ctx->failed = 1;
    n = snprintf(ctx->err, ctx->errlen, "%s:%d: ", ctx->name, line);
    if (n < 0 || (size_t)n >= ctx->errlen)
        return;
    va_start(ap, fmt);
    vsnprintf(ctx->err + n, ctx->errlen - n, fmt, ap);
    va_end(ap);
}

/* ---- value parsers, exported for tests and for -s/-t callers ---- */

int fl_parse_duration_ms(const char *s, int64_t *out)
{
    const char *p = s;
    char       *end;
    double      v;
    int64_t     mul;

    /* digits with at most one '.', nothing strtod would also take
     * (signs, hex, exponents, inf, nan) */
    if (!isdigit((unsigned char)*p))
        return FL_ERROR;
    while (isdigit((unsigned char)*p))
        p++;
    if (*p == '.' && isdigit((unsigned char)p[1]))
        for (p++; isdigit((unsigned char)*p); p++) {
        }
    if (p - s > 15)
        return FL_ERROR;
    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || end != p)
        return FL_ERROR;
    if (strcmp(end, "") == 0 || strcmp(end, "s") == 0)
        mul = 1000;
    else if (strcmp(end, "ms") == 0)
        mul = 1;
    else if (strcmp(end, "m") == 0 || strcmp(end, "min") == 0)
        mul = 60000;
    else if (strcmp(end, "h") == 0)
        mul = 3600000;
    else if (strcmp(end, "d") == 0)
        mul = 86400000;
    else
        return FL_ERROR;
    if (v * mul > 1e15)
        return FL_ERROR;
    *out = (int64_t)(v * mul + 0.5);
    return FL_OK;
}

int fl_parse_size(const char *s, int64_t *out)
{
    char     *end;
    long long v;
    int64_t   mul = 1;

    if (!isdigit((unsigned char)*s))
        return FL_ERROR;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || v < 0)
        return FL_ERROR;
    switch (tolower((unsigned char)*end)) {
    case '\0': break;
    case 'k':
        mul = 1024;
        end++;
        break;
    case 'm':
        mul = 1024 * 1024;
        end++;
        break;
    case 'g':
        mul = 1024LL * 1024 * 1024;
        end++;
        break;
    case 'b': break;
    default: return FL_ERROR;
    }
    if (mul > 1 && tolower((unsigned char)*end) == 'i')
        end++;
    if (tolower((unsigned char)*end) == 'b')
        end++;
    if (*end != '\0')
        return FL_ERROR;
    if (v > INT64_MAX / mul)
        return FL_ERROR;
    *out = v * mul;
    return FL_OK;
}

/*
 * "host:port", "[v6addr]:port", ":port" or "port" (host then 0.0.0.0).
 * On success *host is allocated (caller frees).
 */
int fl_parse_listen(const char *s, char **host, int *port)
{
    const char *colon, *p, *h = "0.0.0.0";
    size_t      hlen = strlen(h);
    long        v;
    char       *end;

    if (s[0] == '[') {
        const char *rb = strchr(s, ']');
        if (rb == NULL || rb[1] != ':' || rb == s + 1)
            return FL_ERROR;
        h = s + 1;
        hlen = rb - h;
        p = rb + 2;
    } else if ((colon = strrchr(s, ':')) != NULL) {
        if (strchr(s, ':') != colon) /* bare IPv6 needs brackets */
            return FL_ERROR;
        if (colon != s) {
            h = s;
            hlen = colon - s;
        }
        p = colon + 1;
    } else {
        p = s;
    }
    if (!isdigit((unsigned char)*p))
        return FL_ERROR;
    errno = 0;
    v = strtol(p, &end, 10);
    if (errno != 0 || *end != '\0' || v < 1 || v > 65535)
        return FL_ERROR;
    *host = fl_alloc(hlen + 1);
    memcpy(*host, h, hlen);
    (*host)[hlen] = '\0';
    *port = (int)v;
    return FL_OK;
}

/* ---- schema walk ---- */

static const conf_key_t *conf_find(const char *path)
{
    for (size_t i = 0; i < fl_nelem(conf_keys); i++) {
        if (strcmp(conf_keys[i].path, path) == 0)
            return &conf_keys[i];
    }
    return NULL;
}

static const char *type_name(conf_type_t t)
{
    switch (t) {
    case T_SECTION: return "a mapping";
    case T_STRLIST:
    case T_STRLIST0: return "a list of strings";
    case T_BOOL: return "true or false";
    case T_INT64: return "an integer";
    case T_INT: return "an integer";
    case T_SIZE: return "a size (e.g. 16k, 1m)";
    case T_DURATION: return "a duration (e.g. 500ms, 30s, 2m)";
    case T_WORKERS: return "\"auto\" or a number";
    case T_LISTEN: return "\"host:port\"";
    case T_LOGLEVEL: return "one of debug, info, warn, error, crit";
    default: return "a string";
    }
}

static void strlist_free(fl_strlist_t *l)
{
    for (int i = 0; i < l->n; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->n = 0;
}

static int ncpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);

    return n < 1 ? 1 : (n > FL_MAX_WORKERS ? FL_MAX_WORKERS : (int)n);
}

/* Store one scalar value for key k. value is the YAML scalar text. */
static void conf_set_scalar(conf_ctx_t *ctx, const conf_key_t *k,
                            const char *value, int line)
{
    char   *base = (char *)ctx->cf;
    int64_t v;
    char   *end;

    switch (k->type) {
    case T_STR:
    case T_NAME: {
        char **dst = (char **)(base + k->off);
        size_t len = strlen(value);
        if ((int64_t)len < k->min || (int64_t)len > k->max) {
            conf_error(ctx, line, "\"%s\" must be %lld to %lld characters long",
                       k->path, (long long)k->min, (long long)k->max);
            return;
        }
        for (const char *c = value; k->type == T_NAME && *c; c++) {
            if (!isalnum((unsigned char)*c) && *c != '-' && *c != '_' &&
                *c != '.') {
                conf_error(ctx, line,
                           "\"%s\" may only hold letters, "
                           "digits, '-', '_' and '.'",
                           k->path);
                return;
            }
        }
        free(*dst);
        *dst = fl_strdup(value);
        return;
    }
    case T_INT:
    case T_INT64:
        errno = 0;
        v = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' ||
            !(isdigit((unsigned char)value[0]) || value[0] == '-')) {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
            return;
        }
        break;
    case T_BOOL:
        if (strcmp(value, "true") == 0 || strcmp(value, "yes") == 0 ||
            strcmp(value, "on") == 0) {
            *(int *)(base + k->off) = 1;
        } else if (strcmp(value, "false") == 0 || strcmp(value, "no") == 0 ||
                   strcmp(value, "off") == 0) {
            *(int *)(base + k->off) = 0;
        } else {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
        }
        return;
    case T_SIZE:
        if (fl_parse_size(value, &v) != FL_OK) {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
            return;
        }
        break;
    case T_DURATION:
        if (fl_parse_duration_ms(value, &v) != FL_OK) {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
            return;
        }
        break;
    case T_WORKERS:
        if (strcasecmp(value, "auto") == 0) {
            ctx->cf->workers_auto = 1;
            ctx->cf->workers = ncpus();
            return;
        }
        errno = 0;
        v = strtoll(value, &end, 10);
        if (errno != 0 || end == value || *end != '\0' ||
            !isdigit((unsigned char)value[0])) {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
            return;
        }
        if (v < k->min || v > k->max) {
            conf_error(ctx, line, "\"%s\" must be between %lld and %lld",
                       k->path, (long long)k->min, (long long)k->max);
            return;
        }
        ctx->cf->workers_auto = 0;
        ctx->cf->workers = (int)v;
        return;
    case T_LISTEN: {
        char *host;
        int   port;
        if (fl_parse_listen(value, &host, &port) != FL_OK) {
            conf_error(ctx, line,
                       "\"%s\" must be \"host:port\" with a port "
                       "from 1 to 65535, not \"%s\"",
                       k->path, value);
            return;
        }
        free(ctx->cf->listen);
        free(ctx->cf->listen_host);
        ctx->cf->listen = fl_strdup(value);
        ctx->cf->listen_host = host;
        ctx->cf->listen_port = port;
        ctx->cf->listen_line = line;
        return;
    }
    case T_LOGLEVEL: {
        fl_log_level_t lv;
        if (fl_log_level_parse(value, &lv) != FL_OK) {
            conf_error(ctx, line, "\"%s\" must be %s, not \"%s\"", k->path,
                       type_name(k->type), value);
            return;
        }
        ctx->cf->log.level = (int)lv;
        return;
    }
    default:
        conf_error(ctx, line, "\"%s\" must be %s", k->path, type_name(k->type));
        return;
    }

    if (v < k->min || v > k->max) {
        conf_error(ctx, line, "\"%s\" is out of range (%lld to %lld)", k->path,
                   (long long)k->min, (long long)k->max);
        return;
    }
    if (k->type == T_INT)
        *(int *)(base + k->off) = (int)v;
    else
        *(int64_t *)(base + k->off) = v;
}

static int is_plain_null(yaml_node_t *n)
{
    return n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE &&
           (n->data.scalar.length == 0 ||
            strcmp((char *)n->data.scalar.value, "~") == 0 ||
            strcmp((char *)n->data.scalar.value, "null") == 0);
}

static void conf_set_list(conf_ctx_t *ctx, yaml_document_t *doc,
                          const conf_key_t *k, yaml_node_t *node)
{
    fl_strlist_t *dst = (fl_strlist_t *)((char *)ctx->cf + k->off);
    fl_strlist_t  l = {NULL, 0};
    int           n =
        (int)(node->data.sequence.items.top - node->data.sequence.items.start);

    if (n > FL_CONF_MAX_LIST) {
        conf_error(ctx, (int)node->start_mark.line + 1,
                   "\"%s\" has more than %d items", k->path, FL_CONF_MAX_LIST);
        return;
    }
    l.items = fl_calloc(n ? n : 1, sizeof(char *));
    for (int i = 0; i < n; i++) {
        yaml_node_t *it =
            yaml_document_get_node(doc, node->data.sequence.items.start[i]);
        if (it == NULL || it->type != YAML_SCALAR_NODE) {
            conf_error(ctx, it ? (int)it->start_mark.line + 1 : 0,
                       "\"%s\" must be %s", k->path, type_name(k->type));
            strlist_free(&l);
            return;
        }
        if ((int64_t)it->data.scalar.length < k->min ||
            (int64_t)it->data.scalar.length > k->max ||
            strlen((char *)it->data.scalar.value) != it->data.scalar.length) {
            conf_error(ctx, (int)it->start_mark.line + 1,
                       "items of \"%s\" must be %lld to %lld characters long",
                       k->path, (long long)k->min, (long long)k->max);
            strlist_free(&l);
            return;
        }
        l.items[l.n++] = fl_strdup((char *)it->data.scalar.value);
    }
    if (l.n == 0 && k->type == T_STRLIST) {
        conf_error(ctx, (int)node->start_mark.line + 1,
                   "\"%s\" must not be empty", k->path);
        strlist_free(&l);
        return;
    }
    strlist_free(dst);
    *dst = l;
}

static void conf_walk_mapping(conf_ctx_t *ctx, yaml_document_t *doc,
                              yaml_node_t *map, const char *prefix)
{
    yaml_node_pair_t *p;

    for (p = map->data.mapping.pairs.start;
         p < map->data.mapping.pairs.top && !ctx->failed; p++) {
        yaml_node_t      *kn = yaml_document_get_node(doc, p->key);
        yaml_node_t      *vn = yaml_document_get_node(doc, p->value);
        char              path[256];
        const conf_key_t *k;
        int               line;

        if (kn == NULL || vn == NULL)
            continue;
        line = (int)kn->start_mark.line + 1;
        if (kn->type != YAML_SCALAR_NODE ||
            strlen((char *)kn->data.scalar.value) != kn->data.scalar.length) {
            conf_error(ctx, line, "keys must be plain strings");
            return;
        }
        /* duplicates: libyaml accepts them, we do not */
        for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++) {
            yaml_node_t *qk = yaml_document_get_node(doc, q->key);
            if (qk && qk->type == YAML_SCALAR_NODE &&
                strcmp((char *)qk->data.scalar.value,
                       (char *)kn->data.scalar.value) == 0) {
                conf_error(ctx, line, "duplicate key \"%s\"",
                           (char *)kn->data.scalar.value);
                return;
            }
        }
        snprintf(path, sizeof(path), "%s%s%s", prefix, prefix[0] ? "." : "",
                 (char *)kn->data.scalar.value);
        k = conf_find(path);
        if (k == NULL) {
            conf_error(ctx, line, "unknown key \"%s\"", path);
            return;
        }

        if (k->type == T_SECTION) {
            if (vn->type == YAML_SCALAR_NODE && is_plain_null(vn))
                continue;
            if (vn->type != YAML_MAPPING_NODE) {
                conf_error(ctx, line, "\"%s\" must be a mapping", path);
                return;
            }
            conf_walk_mapping(ctx, doc, vn, path);
        } else if (k->type == T_STRLIST || k->type == T_STRLIST0) {
            if (vn->type != YAML_SEQUENCE_NODE) {
                conf_error(ctx, line, "\"%s\" must be %s", path,
                           type_name(k->type));
                return;
            }
            conf_set_list(ctx, doc, k, vn);
        } else {
            if (vn->type != YAML_SCALAR_NODE) {
                conf_error(ctx, line, "\"%s\" must be %s", path,
                           type_name(k->type));
                return;
            }
            if (strlen((char *)vn->data.scalar.value) !=
                vn->data.scalar.length) {
                conf_error(ctx, line, "\"%s\" contains a NUL byte", path);
                return;
            }
            if (is_plain_null(vn) && k->type != T_STR) {
                conf_error(ctx, line, "\"%s\" must be %s, not null", path,
                           type_name(k->type));
                return;
            }
            conf_set_scalar(
                ctx, k, is_plain_null(vn) ? "" : (char *)vn->data.scalar.value,
                (int)vn->start_mark.line + 1);
        }
    }
}

/* Fill every key from its default, parsed by the same code as a file. */
static void conf_defaults(conf_ctx_t *ctx)
{
    yaml_parser_t   parser;
    yaml_document_t doc;

    for (size_t i = 0; i < fl_nelem(conf_keys); i++) {
        const conf_key_t *k = &conf_keys[i];

        if (k->type == T_SECTION)
            continue;
        if (k->type == T_STRLIST || k->type == T_STRLIST0) {
            yaml_parser_initialize(&parser);
            yaml_parser_set_input_string(&parser, (const unsigned char *)k->def,
                                         strlen(k->def));
            if (yaml_parser_load(&parser, &doc)) {
                yaml_node_t *root = yaml_document_get_root_node(&doc);
                if (root)
                    conf_set_list(ctx, &doc, k, root);
                yaml_document_delete(&doc);
            }
            yaml_parser_delete(&parser);
        } else {
            conf_set_scalar(ctx, k, k->def, 0);
        }
    }
}

fl_config_t *fl_config_load_string(const char *name, const char *yaml,
                                   size_t len, char *err, size_t errlen)
{
    conf_ctx_t      ctx = {name, err, errlen, NULL, 0};
    yaml_parser_t   parser;
    yaml_document_t doc;
    yaml_node_t    *root;

    ctx.cf = fl_calloc(1, sizeof(fl_config_t));
    ctx.cf->file = fl_strdup(name);
    conf_defaults(&ctx);
    if (ctx.failed) { /* a broken default is a bug, say so loudly */
        fl_config_free(ctx.cf);
        return NULL;
    }

    yaml_parser_initialize(&parser);
    yaml_parser_set_input_string(&parser, (const unsigned char *)yaml, len);
    if (!yaml_parser_load(&parser, &doc)) {
        conf_error(&ctx, (int)parser.problem_mark.line + 1, "%s%s%s",
                   parser.problem ? parser.problem : "YAML syntax error",
                   parser.context ? " " : "",
                   parser.context ? parser.context : "");
        yaml_parser_delete(&parser);
        fl_config_free(ctx.cf);
        return NULL;
    }

    root = yaml_document_get_root_node(&doc);
    if (root == NULL) {
        /* empty document: all defaults */
    } else if (root->type == YAML_SCALAR_NODE && is_plain_null(root)) {
        /* "~" or blank */
    } else if (root->type != YAML_MAPPING_NODE) {
        conf_error(&ctx, (int)root->start_mark.line + 1,
                   "the configuration must be a mapping of keys");
    } else {
        conf_walk_mapping(&ctx, &doc, root, "");
    }

    /* A second document in the same file is almost certainly a mistake. */
    if (!ctx.failed) {
        yaml_document_t extra;
        if (yaml_parser_load(&parser, &extra)) {
            if (yaml_document_get_root_node(&extra) != NULL)
                conf_error(
                    &ctx,
                    (int)yaml_document_get_root_node(&extra)->start_mark.line +
                        1,
                    "only one YAML document is allowed");
            yaml_document_delete(&extra);
        } else {
            conf_error(&ctx, (int)parser.problem_mark.line + 1, "%s%s%s",
                       parser.problem ? parser.problem : "YAML syntax error",
                       parser.context ? " " : "",
                       parser.context ? parser.context : "");
        }
    }
    yaml_document_delete(&doc);
    yaml_parser_delete(&parser);

    if (ctx.failed) {
        fl_config_free(ctx.cf);
        return NULL;
    }
    return ctx.cf;
}

fl_config_t *fl_config_load(const char *path, char *err, size_t errlen)
{
    FILE        *f;
    char        *buf = NULL;
    size_t       len = 0, cap = 0, n;
    fl_config_t *cf;

    f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "%s:0: open() failed: %s", path, strerror(errno));
        return NULL;
    }
    do {
        if (cap - len < 4096) {
            cap = cap ? cap * 2 : 8192;
            if (cap > 16 * 1024 * 1024) {
                snprintf(err, errlen, "%s:0: file is larger than 16 MiB", path);
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = fl_realloc(buf, cap);
        }
        n = fread(buf + len, 1, cap - len, f);
        len += n;
    } while (n > 0);
    if (ferror(f)) {
        snprintf(err, errlen, "%s:0: read() failed: %s", path, strerror(errno));
        free(buf);
        fclose(f);
        return NULL;
    }
    fclose(f);

    cf = fl_config_load_string(path, buf, len, err, errlen);
    free(buf);
    return cf;
}

void fl_config_free(fl_config_t *cf)
{
    char *base = (char *)cf;

    if (cf == NULL)
        return;
    for (size_t i = 0; i < fl_nelem(conf_keys); i++) {
        const conf_key_t *k = &conf_keys[i];
        if (k->type == T_STR || k->type == T_NAME)
            free(*(char **)(base + k->off));
        else if (k->type == T_STRLIST || k->type == T_STRLIST0)
            strlist_free((fl_strlist_t *)(base + k->off));
    }
    free(cf->listen);
    free(cf->listen_host);
    free(cf->file);
    free(cf);
}
