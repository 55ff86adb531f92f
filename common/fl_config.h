/*
 * fl_config.h - the typed configuration.
 *
 * fl_config_load() reads a YAML file through libyaml into fl_config_t.
 * Every key has a default (fl_config_defaults), unknown keys, wrong types
 * and out-of-range values are errors reported as "FILE:LINE: message".
 * Durations are kept in milliseconds, sizes in bytes.
 */
#ifndef FL_CONFIG_H
#define FL_CONFIG_H

#include "fl_core.h"
#include <stdint.h>

#define FL_MAX_WORKERS   64
#define FL_CONF_ERRLEN   512
#define FL_CONF_MAX_LIST 64

typedef struct {
    char **items;
    int    n;
} fl_strlist_t;

typedef struct {
    char *file; /* the path it was loaded from */

    char   *node_id;
    int     workers; /* resolved: auto -> number of cores */
    int     workers_auto;
    char   *listen;      /* as written: "127.0.0.1:8080" */
    char   *listen_host; /* "127.0.0.1", "::1", "0.0.0.0" */
    int     listen_port;
    int     listen_line; /* for bind errors reported by -t */
    int     backlog;
    char   *pid_file;
    int64_t shutdown_timeout_ms;      /* graceful drain deadline */
    int64_t fast_shutdown_timeout_ms; /* SIGTERM/SIGINT deadline */
    int64_t worker_ready_timeout_ms;  /* reload: new generation must be
                                         ready within this, or is killed */

    struct {
        int   level; /* fl_log_level_t */
        char *file;
    } log;

    struct {
        int64_t max_header_bytes;
        int64_t max_body_bytes;
        int64_t header_timeout_ms;
        int64_t idle_timeout_ms;
        int64_t drain_idle_ms;
        int     max_connections;  /* per worker */
        int64_t max_output_bytes; /* stop reading a pipelining client */
    } http;

    struct {
        char        *uri;
        char        *username;
        char        *password;
        fl_strlist_t topics;
        int          qos;
        char        *client_id;   /* "" = fleetd-{node_id}-w{slot} */
        char        *share_group; /* "" = plain (non-shared) subscription */
        int64_t      keepalive_ms;
        int64_t      session_expiry_ms;
        int64_t      connect_timeout_ms;
        int64_t      reconnect_max_ms;
        int          receive_max; /* MQTT 5 Receive Maximum */
        char        *ca_file;     /* TLS (ssl:// or mqtts:// uri) */
        char        *cert_file;
        char        *key_file;
        int          tls_insecure; /* skip server certificate checks */
    } mqtt;

    struct {
        char   *host;
        int     port;
        char   *password;
        char   *prefix;        /* every key and channel starts so */
        int64_t stream_maxlen; /* approximate MAXLEN of the stream */
        int64_t dead_letter_maxlen;
        int64_t shadow_ttl_ms;
        int     channel_shards;
        int64_t connect_timeout_ms;
        int64_t command_timeout_ms;
    } redis;

    struct {
        char   *conninfo;
        int     retention_days;
        int64_t connect_timeout_ms;
        int64_t partition_interval_ms; /* 1h..30d */
        int     partitions_ahead;
        int     synchronous_commit; /* bool */
        int     pool_size;          /* API connections per worker */
        int     pool_queue;         /* API queries waiting, at most */
        int64_t pool_wait_ms;       /* a waiting query gives up after */
        int64_t query_timeout_ms;   /* statement_timeout of the pool */
        /* rollups (worker/api/fl_rollup.c); the retentions are never
         * shorter than retention_days (the longer one is used) */
        int     rollup_1m_retention_days;
        int     rollup_1h_retention_days;
        int64_t rollup_refresh_ms; /* 0: this node runs no refresh */
    } postgres;

    struct {
        fl_strlist_t admin_tokens;
        fl_strlist_t ws_origins; /* empty: any Origin may open /ws */
    } auth;

    struct {
        int64_t ping_interval_ms; /* heartbeat of idle WebSockets */
        int     resume_keep;      /* messages kept per device for resume */
        int64_t resume_ttl_ms;    /* ... this long after the newest */
    } ws;

    struct {
        int     batch;          /* stream entries read at once */
        int64_t block_ms;       /* XREADGROUP BLOCK */
        int64_t linger_ms;      /* a batch fills this long at most */
        int64_t fanout_interval_ms; /* lingering: a round this often */
        int64_t claim_idle_ms;  /* pending this long: claimed */
        int     max_deliveries; /* then dead-lettered */
        int     parse_threads;
        int64_t parse_inline_max; /* bigger payloads go to the pool */
        int64_t online_window_ms; /* online = seen within this */
    } ingest;

    struct {
        int64_t max_payload_bytes;
        int64_t ws_send_buffer;   /* then a client is conflated */
        int64_t ws_slow_timeout_ms; /* then closed with 1013 */
        int     ws_max_connections; /* per worker */
        int64_t ws_max_message;     /* a client message, fragments summed */
        int     ws_max_subscriptions; /* devices per connection */
        int     ws_msg_rate;          /* client messages per second */
        int     max_metrics;
        int     max_name_bytes;
        int     max_depth;
        int     max_batch;
        int     max_string_bytes;
        int64_t max_clock_skew_ms; /* points later than arrival + this
                                      are dead-lettered (in_future) */
    } limits;
} fl_config_t;

/*
 * Load path into a freshly allocated config. On success returns it; on
 * failure returns NULL and writes "FILE:LINE: message" into err.
 * The caller owns the result and frees it with fl_config_free().
 */
fl_config_t *fl_config_load(const char *path, char *err, size_t errlen);

/* Same from a string (unit tests, fuzzing); name is used in messages. */
fl_config_t *fl_config_load_string(const char *name, const char *yaml,
                                   size_t len, char *err, size_t errlen);

void fl_config_free(fl_config_t *cf);

/* Parse "30s", "500ms", "2m", "1h", or a bare number of seconds. */
int fl_parse_duration_ms(const char *s, int64_t *out);
/* Parse "16k", "1m", "1g" (optional b/ib suffix), or bare bytes. */
int fl_parse_size(const char *s, int64_t *out);
/* Split "host:port" / "[v6]:port" / ":port" / "port". */
int fl_parse_listen(const char *s, char **host, int *port);

#endif
