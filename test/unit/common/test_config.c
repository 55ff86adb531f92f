/*
 * test_config.c - fl_config_load_string() and the value parsers.
 *
 * Every error is checked for its "NAME:LINE:" prefix, since that is what an
 * operator running `fleetd -t` reads.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fl_config.h"
#include "fl_log.h"
#include "unit.h"

static char err[FL_CONF_ERRLEN];

/* Loads a NUL-terminated document named "t.yaml"; err holds the message
 * on failure. The caller frees the result. */
static fl_config_t *load(const char *yaml)
{
    err[0] = '\0';
    return fl_config_load_string("t.yaml", yaml, strlen(yaml), err,
                                 sizeof(err));
}

/* yaml on one line, newlines shown as \n, for failure messages. */
static const char *show(const char *yaml)
{
    static char buf[256];
    size_t      n = 0;

    for (; *yaml && n < sizeof(buf) - 3; yaml++) {
        if (*yaml == '\n') {
            buf[n++] = '\\';
            buf[n++] = 'n';
        } else {
            buf[n++] = *yaml;
        }
    }
    buf[n] = '\0';
    return buf;
}

/* Expects yaml to fail on line with a message containing needle. */
#define CHECK_FAILS(yaml, line, needle)                                   \
    do {                                                                  \
        fl_config_t *cf_ = load(yaml);                                    \
        char         prefix_[32];                                         \
        snprintf(prefix_, sizeof(prefix_), "t.yaml:%d: ", (line));        \
        if (cf_ != NULL) {                                                \
            fl_test_fail(__FILE__, __LINE__, "accepted: %s", show(yaml)); \
            fl_config_free(cf_);                                          \
        } else {                                                          \
            FL_CHECK_PREFIX(err, prefix_);                                \
            FL_CHECK_CONTAINS(err, (needle));                             \
        }                                                                 \
    } while (0)

/* Loads yaml, failing the test (and returning) when it is rejected. */
#define LOAD_OK(cf, yaml)                                          \
    do {                                                           \
        (cf) = load(yaml);                                         \
        if ((cf) == NULL) {                                        \
            fl_test_fail(__FILE__, __LINE__, "rejected: %s", err); \
            return;                                                \
        }                                                          \
    } while (0)

static void check_defaults(const fl_config_t *cf)
{
    FL_CHECK_STR(cf->node_id, "node-1");
    FL_CHECK(cf->workers >= 1 && cf->workers <= FL_MAX_WORKERS);
    FL_CHECK_EQ_INT(cf->workers_auto, 1);
    FL_CHECK_STR(cf->listen, "127.0.0.1:8080");
    FL_CHECK_STR(cf->listen_host, "127.0.0.1");
    FL_CHECK_EQ_INT(cf->listen_port, 8080);
    FL_CHECK(cf->backlog > 0);
    FL_CHECK_STR(cf->pid_file, "run/fleetd.pid");
    FL_CHECK_EQ_INT(cf->shutdown_timeout_ms, 30000);
    FL_CHECK_EQ_INT(cf->fast_shutdown_timeout_ms, 3000);
    FL_CHECK_EQ_INT(cf->worker_ready_timeout_ms, 10000);

    FL_CHECK_EQ_INT(cf->log.level, FL_LOG_INFO);
    FL_CHECK_STR(cf->log.file, "");

    FL_CHECK_EQ_INT(cf->http.max_header_bytes, 16384);
    FL_CHECK_EQ_INT(cf->http.max_body_bytes, 1048576);
    FL_CHECK_EQ_INT(cf->http.header_timeout_ms, 10000);
    FL_CHECK_EQ_INT(cf->http.idle_timeout_ms, 60000);
    FL_CHECK_EQ_INT(cf->http.drain_idle_ms, 1000);
    FL_CHECK_EQ_INT(cf->http.max_connections, 10000);
    FL_CHECK_EQ_INT(cf->http.max_output_bytes, 1048576);

    FL_CHECK_STR(cf->mqtt.uri, "tcp://127.0.0.1:1883");
    FL_CHECK_STR(cf->mqtt.username, "");
    FL_CHECK_STR(cf->mqtt.password, "");
    FL_CHECK_EQ_INT(cf->mqtt.topics.n, 3);
    if (cf->mqtt.topics.n == 3) {
        FL_CHECK_STR(cf->mqtt.topics.items[0], "devices/+/telemetry");
        FL_CHECK_STR(cf->mqtt.topics.items[1], "devices/+/state");
        FL_CHECK_STR(cf->mqtt.topics.items[2], "devices/+/commands/ack");
    }
    FL_CHECK_EQ_INT(cf->mqtt.qos, 1);

    FL_CHECK_STR(cf->redis.host, "127.0.0.1");
    FL_CHECK_EQ_INT(cf->redis.port, 6379);
    FL_CHECK_STR(cf->redis.password, "");

    FL_CHECK_STR(cf->postgres.conninfo,
                 "host=127.0.0.1 port=5432 dbname=fleetd user=fleetd");
    FL_CHECK_EQ_INT(cf->postgres.retention_days, 30);
    FL_CHECK_EQ_INT(cf->postgres.rollup_1m_retention_days, 90);
    FL_CHECK_EQ_INT(cf->postgres.rollup_1h_retention_days, 730);
    FL_CHECK(cf->postgres.rollup_refresh_ms == 15000);

    FL_CHECK_EQ_INT(cf->auth.admin_tokens.n, 1);
    if (cf->auth.admin_tokens.n == 1)
        FL_CHECK_STR(cf->auth.admin_tokens.items[0], "change-me");

    FL_CHECK_EQ_INT(cf->limits.max_payload_bytes, 65536);
    FL_CHECK_EQ_INT(cf->limits.ws_send_buffer, 1048576);
}

void test_config_defaults(void)
{
    fl_config_t *cf;
    long         ncpu = sysconf(_SC_NPROCESSORS_ONLN);

    LOAD_OK(cf, "");
    FL_CHECK_STR(cf->file, "t.yaml");
    check_defaults(cf);
    if (ncpu >= 1 && ncpu <= FL_MAX_WORKERS)
        FL_CHECK_EQ_INT(cf->workers, ncpu);
    fl_config_free(cf);
}

/* Documents that hold nothing still give the defaults: comments, a null
 * root, empty sections, an explicit document marker. */
void test_config_empty_forms(void)
{
    static const char *docs[] = {
        "# only a comment\n",
        "~\n",
        "---\n",
        "---\n...\n",
        "log:\nhttp:\nmqtt: ~\nredis: null\n",
        "log: {}\nhttp: {}\n",
        "\n\n   \n",
    };
    fl_config_t *cf;

    for (size_t i = 0; i < sizeof(docs) / sizeof(docs[0]); i++) {
        cf = load(docs[i]);
        if (cf == NULL) {
            fl_test_fail(__FILE__, __LINE__, "rejected \"%s\": %s", docs[i],
                         err);
            continue;
        }
        check_defaults(cf);
        fl_config_free(cf);
    }
}

void test_config_scalars(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "node_id: edge-7.lab_2\n"
                "workers: 3\n"
                "listen: 0.0.0.0:9000\n"
                "backlog: 1024\n"
                "pid_file: /tmp/x.pid\n"
                "log:\n"
                "  level: warn\n"
                "  file: /var/log/fleetd.log\n"
                "mqtt:\n"
                "  uri: \"tcp://broker:1883\"\n"
                "  username: u\n"
                "  password: 'p: w'\n"
                "  qos: 0\n"
                "redis:\n"
                "  host: redis.local\n"
                "  port: 6380\n"
                "  password: secret\n"
                "postgres:\n"
                "  conninfo: dbname=x\n"
                "  retention_days: 7\n"
                "http:\n"
                "  max_connections: 50\n");
    FL_CHECK_STR(cf->node_id, "edge-7.lab_2");
    FL_CHECK_EQ_INT(cf->workers, 3);
    FL_CHECK_EQ_INT(cf->workers_auto, 0);
    FL_CHECK_STR(cf->listen, "0.0.0.0:9000");
    FL_CHECK_STR(cf->listen_host, "0.0.0.0");
    FL_CHECK_EQ_INT(cf->listen_port, 9000);
    FL_CHECK_EQ_INT(cf->listen_line, 3);
    FL_CHECK_EQ_INT(cf->backlog, 1024);
    FL_CHECK_STR(cf->pid_file, "/tmp/x.pid");
    FL_CHECK_EQ_INT(cf->log.level, FL_LOG_WARN);
    FL_CHECK_STR(cf->log.file, "/var/log/fleetd.log");
    FL_CHECK_STR(cf->mqtt.uri, "tcp://broker:1883");
    FL_CHECK_STR(cf->mqtt.username, "u");
    FL_CHECK_STR(cf->mqtt.password, "p: w");
    FL_CHECK_EQ_INT(cf->mqtt.qos, 0);
    FL_CHECK_STR(cf->redis.host, "redis.local");
    FL_CHECK_EQ_INT(cf->redis.port, 6380);
    FL_CHECK_STR(cf->redis.password, "secret");
    FL_CHECK_STR(cf->postgres.conninfo, "dbname=x");
    FL_CHECK_EQ_INT(cf->postgres.retention_days, 7);
    FL_CHECK_EQ_INT(cf->http.max_connections, 50);
    /* untouched keys keep their defaults */
    FL_CHECK_EQ_INT(cf->http.max_header_bytes, 16384);
    FL_CHECK_EQ_INT(cf->mqtt.topics.n, 3);
    fl_config_free(cf);
}

void test_config_durations(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "shutdown_timeout: 500ms\n"
                "fast_shutdown_timeout: 2m\n"
                "worker_ready_timeout: 5\n"
                "http:\n"
                "  header_timeout: 1h\n"
                "  idle_timeout: 90s\n"
                "  drain_idle: 0\n");
    FL_CHECK_EQ_INT(cf->shutdown_timeout_ms, 500);
    FL_CHECK_EQ_INT(cf->fast_shutdown_timeout_ms, 120000);
    FL_CHECK_EQ_INT(cf->worker_ready_timeout_ms, 5000);
    FL_CHECK_EQ_INT(cf->http.header_timeout_ms, 3600000);
    FL_CHECK_EQ_INT(cf->http.idle_timeout_ms, 90000);
    FL_CHECK_EQ_INT(cf->http.drain_idle_ms, 0);
    fl_config_free(cf);

    /* quoted forms are the same value */
    LOAD_OK(cf, "shutdown_timeout: \"45s\"\n");
    FL_CHECK_EQ_INT(cf->shutdown_timeout_ms, 45000);
    fl_config_free(cf);
}

void test_config_sizes(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "http:\n"
                "  max_header_bytes: 32k\n"
                "  max_body_bytes: 1m\n"
                "  max_output_bytes: 65536\n"
                "limits:\n"
                "  max_payload_bytes: 16k\n"
                "  ws_send_buffer: 2m\n");
    FL_CHECK_EQ_INT(cf->http.max_header_bytes, 32768);
    FL_CHECK_EQ_INT(cf->http.max_body_bytes, 1048576);
    FL_CHECK_EQ_INT(cf->http.max_output_bytes, 65536);
    FL_CHECK_EQ_INT(cf->limits.max_payload_bytes, 16384);
    FL_CHECK_EQ_INT(cf->limits.ws_send_buffer, 2097152);
    fl_config_free(cf);
}

void test_config_flow_mappings(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "log: {level: debug}\n"
                "redis: { host: 10.0.0.5, port: 7000, password: \"\" }\n"
                "http: {max_header_bytes: 8k, idle_timeout: 5m}\n");
    FL_CHECK_EQ_INT(cf->log.level, FL_LOG_DEBUG);
    FL_CHECK_STR(cf->log.file, "");
    FL_CHECK_STR(cf->redis.host, "10.0.0.5");
    FL_CHECK_EQ_INT(cf->redis.port, 7000);
    FL_CHECK_EQ_INT(cf->http.max_header_bytes, 8192);
    FL_CHECK_EQ_INT(cf->http.idle_timeout_ms, 300000);
    fl_config_free(cf);

    /* the whole document as one flow mapping */
    LOAD_OK(cf, "{node_id: n2, log: {level: error}, mqtt: {qos: 0}}\n");
    FL_CHECK_STR(cf->node_id, "n2");
    FL_CHECK_EQ_INT(cf->log.level, FL_LOG_ERROR);
    FL_CHECK_EQ_INT(cf->mqtt.qos, 0);
    fl_config_free(cf);
}

void test_config_lists(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "mqtt:\n"
                "  topics:\n"
                "    - sensors/#\n"
                "    - \"a/+/b\"\n"
                "    - c\n"
                "auth:\n"
                "  admin_tokens: [t1, \"t 2\"]\n");
    FL_CHECK_EQ_INT(cf->mqtt.topics.n, 3);
    if (cf->mqtt.topics.n == 3) {
        FL_CHECK_STR(cf->mqtt.topics.items[0], "sensors/#");
        FL_CHECK_STR(cf->mqtt.topics.items[1], "a/+/b");
        FL_CHECK_STR(cf->mqtt.topics.items[2], "c");
    }
    FL_CHECK_EQ_INT(cf->auth.admin_tokens.n, 2);
    if (cf->auth.admin_tokens.n == 2) {
        FL_CHECK_STR(cf->auth.admin_tokens.items[0], "t1");
        FL_CHECK_STR(cf->auth.admin_tokens.items[1], "t 2");
    }
    fl_config_free(cf);

    LOAD_OK(cf, "mqtt: {topics: [only/one]}\n");
    FL_CHECK_EQ_INT(cf->mqtt.topics.n, 1);
    if (cf->mqtt.topics.n == 1)
        FL_CHECK_STR(cf->mqtt.topics.items[0], "only/one");
    fl_config_free(cf);
}

void test_config_workers(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "workers: \"auto\"\n");
    FL_CHECK_EQ_INT(cf->workers_auto, 1);
    FL_CHECK(cf->workers >= 1 && cf->workers <= FL_MAX_WORKERS);
    fl_config_free(cf);

    LOAD_OK(cf, "workers: auto\n");
    FL_CHECK_EQ_INT(cf->workers_auto, 1);
    FL_CHECK(cf->workers >= 1);
    fl_config_free(cf);

    LOAD_OK(cf, "workers: 1\n");
    FL_CHECK_EQ_INT(cf->workers, 1);
    FL_CHECK_EQ_INT(cf->workers_auto, 0);
    fl_config_free(cf);

    LOAD_OK(cf, "workers: 64\n");
    FL_CHECK_EQ_INT(cf->workers, FL_MAX_WORKERS);
    fl_config_free(cf);
}

void test_config_listen(void)
{
    fl_config_t *cf;

    LOAD_OK(cf, "node_id: a\nlisten: \"[::1]:8443\"\n");
    FL_CHECK_STR(cf->listen, "[::1]:8443");
    FL_CHECK_STR(cf->listen_host, "::1");
    FL_CHECK_EQ_INT(cf->listen_port, 8443);
    FL_CHECK_EQ_INT(cf->listen_line, 2);
    fl_config_free(cf);

    LOAD_OK(cf, "listen: localhost:65535\n");
    FL_CHECK_STR(cf->listen_host, "localhost");
    FL_CHECK_EQ_INT(cf->listen_port, 65535);
    fl_config_free(cf);
}

void test_config_err_unknown_key(void)
{
    CHECK_FAILS("node_id: a\n"
                "workers: 2\n"
                "wrokers: 3\n",
                3, "wrokers");
    /* after a comment and a blank line, the line still counts them */
    CHECK_FAILS("# fleetd\n"
                "\n"
                "node_id: a\n"
                "bogus_key: 1\n",
                4, "bogus_key");
    CHECK_FAILS("{node_id: a, nope: 1}\n", 1, "nope");
    /* a NUL inside a key does not cut it down to a known key */
    CHECK_FAILS("\"node_id\\0x\": abc\n", 1, "");
}

void test_config_err_unknown_nested(void)
{
    CHECK_FAILS("http:\n"
                "  max_header_bytes: 8k\n"
                "  nope: 1\n",
                3, "http.nope");
    CHECK_FAILS("log: {level: info, colour: red}\n", 1, "colour");
    /* a key of one section is unknown in another */
    CHECK_FAILS("redis:\n"
                "  qos: 1\n",
                2, "qos");
    /* top-level keys are not valid inside a section */
    CHECK_FAILS("log:\n"
                "  level: info\n"
                "  workers: 2\n",
                3, "workers");
}

void test_config_err_type(void)
{
    CHECK_FAILS("workers: [1]\n", 1, "workers");
    CHECK_FAILS("node_id: a\nworkers: {n: 1}\n", 2, "workers");
    CHECK_FAILS("backlog: many\n", 1, "backlog");
    CHECK_FAILS("backlog: 1.5\n", 1, "backlog");
    CHECK_FAILS("mqtt:\n  topics: devices/#\n", 2, "mqtt.topics");
    CHECK_FAILS("mqtt:\n  topics:\n    - [a, b]\n", 3, "mqtt.topics");
    CHECK_FAILS("mqtt:\n  topics:\n    - {a: b}\n", 3, "mqtt.topics");
    CHECK_FAILS("node_id: [a]\n", 1, "node_id");
    CHECK_FAILS("node_id: \"has space\"\n", 1, "node_id");
    CHECK_FAILS("redis:\n  port: tcp\n", 2, "redis.port");
    CHECK_FAILS("workers: true\n", 1, "workers");
}

void test_config_err_range(void)
{
    CHECK_FAILS("workers: 0\n", 1, "workers");
    CHECK_FAILS("node_id: a\nworkers: 1000\n", 2, "workers");
    CHECK_FAILS("workers: 65\n", 1, "workers");
    CHECK_FAILS("workers: -1\n", 1, "workers");
    CHECK_FAILS("workers: 99999999999999999999999\n", 1, "workers");
    CHECK_FAILS("redis:\n  port: 0\n", 2, "redis.port");
    CHECK_FAILS("redis:\n  port: 65536\n", 2, "redis.port");
    CHECK_FAILS("postgres: {retention_days: 0}\n", 1, "retention_days");
    CHECK_FAILS("node_id: \"\"\n", 1, "node_id");
}

void test_config_err_qos(void)
{
    fl_config_t *cf;

    CHECK_FAILS("mqtt:\n  uri: tcp://x:1\n  qos: 2\n", 3, "mqtt.qos");
    CHECK_FAILS("mqtt: {qos: -1}\n", 1, "mqtt.qos");
    LOAD_OK(cf, "mqtt: {qos: 0}\n");
    FL_CHECK_EQ_INT(cf->mqtt.qos, 0);
    fl_config_free(cf);
}

void test_config_err_duration(void)
{
    CHECK_FAILS("shutdown_timeout: 10 parsecs\n", 1, "shutdown_timeout");
    CHECK_FAILS("node_id: a\nhttp:\n  idle_timeout: soon\n", 3,
                "http.idle_timeout");
    CHECK_FAILS("shutdown_timeout: -5s\n", 1, "shutdown_timeout");
    CHECK_FAILS("shutdown_timeout: 5x\n", 1, "shutdown_timeout");
    CHECK_FAILS("shutdown_timeout: \"\"\n", 1, "shutdown_timeout");
    CHECK_FAILS("shutdown_timeout: [5s]\n", 1, "shutdown_timeout");
}

void test_config_err_size(void)
{
    CHECK_FAILS("http:\n  max_body_bytes: lots\n", 2, "http.max_body_bytes");
    CHECK_FAILS("http:\n  max_body_bytes: 10q\n", 2, "http.max_body_bytes");
    CHECK_FAILS("http:\n  max_body_bytes: -1\n", 2, "http.max_body_bytes");
    CHECK_FAILS("limits: {max_payload_bytes: 1.5k}\n", 1,
                "limits.max_payload_bytes");
    CHECK_FAILS("limits: {ws_send_buffer: 16 k}\n", 1, "limits.ws_send_buffer");
}

void test_config_err_listen(void)
{
    CHECK_FAILS("listen: nohost\n", 1, "listen");
    CHECK_FAILS("node_id: a\nlisten: 127.0.0.1:70000\n", 2, "listen");
    CHECK_FAILS("listen: 127.0.0.1:0\n", 1, "listen");
    CHECK_FAILS("listen: \"127.0.0.1:\"\n", 1, "listen");
    CHECK_FAILS("listen: \"127.0.0.1:80x\"\n", 1, "listen");
    CHECK_FAILS("listen: \"::1:8080\"\n", 1, "listen");
    CHECK_FAILS("listen: \"[::1]\"\n", 1, "listen");
}

void test_config_err_syntax(void)
{
    CHECK_FAILS("node_id: a\n"
                "workers: 2\n"
                "log: {level: info\n"
                "http: {}\n",
                4, "");
    CHECK_FAILS("node_id: a\n"
                "  workers: 2\n",
                2, "");
    CHECK_FAILS("node_id: \"a\n", 2, "");
    CHECK_FAILS("node_id: a\n"
                "listen: *nowhere\n",
                2, "alias");
    /* a tab cannot indent YAML */
    CHECK_FAILS("log:\n\tlevel: info\n", 2, "");
    /* a broken second document is still a syntax error (reported either
     * where it breaks, line 4, or as an extra document on line 3) */
    {
        fl_config_t *cf = load("node_id: a\n"
                               "---\n"
                               "log: {level: info\n"
                               "http: {}\n");
        FL_CHECK(cf == NULL);
        fl_config_free(cf);
        if (cf == NULL)
            FL_CHECK(strncmp(err, "t.yaml:3: ", 10) == 0 ||
                     strncmp(err, "t.yaml:4: ", 10) == 0);
    }
}

void test_config_err_duplicate(void)
{
    CHECK_FAILS("node_id: a\n"
                "workers: 2\n"
                "node_id: b\n",
                3, "node_id");
    CHECK_FAILS("http:\n"
                "  idle_timeout: 1s\n"
                "  idle_timeout: 2s\n",
                3, "idle_timeout");
    CHECK_FAILS("log: {level: info}\n"
                "log: {file: x}\n",
                2, "log");
}

void test_config_err_not_mapping(void)
{
    CHECK_FAILS("http: 5\n", 1, "http");
    CHECK_FAILS("node_id: a\nlog: [debug]\n", 2, "log");
    CHECK_FAILS("mqtt: \"\"\n", 1, "mqtt");
    /* the document itself must be a mapping */
    CHECK_FAILS("just a string\n", 1, "");
    CHECK_FAILS("- node_id\n- workers\n", 1, "");
}

void test_config_err_log_level(void)
{
    fl_config_t *cf;

    CHECK_FAILS("log:\n  level: loud\n", 2, "log.level");
    LOAD_OK(cf, "log:\n  level: error\n");
    FL_CHECK_EQ_INT(cf->log.level, FL_LOG_ERROR);
    fl_config_free(cf);
}

void test_config_err_list(void)
{
    char   yaml[2048];
    size_t n;
    int    i;

    CHECK_FAILS("auth:\n  admin_tokens: []\n", 2, "auth.admin_tokens");
    CHECK_FAILS("auth:\n  admin_tokens: [\"\"]\n", 2, "auth.admin_tokens");

    n = (size_t)snprintf(yaml, sizeof(yaml), "mqtt:\n  topics: [");
    for (i = 0; i <= FL_CONF_MAX_LIST; i++)
        n += (size_t)snprintf(yaml + n, sizeof(yaml) - n, "%st%d",
                              i ? ", " : "", i);
    snprintf(yaml + n, sizeof(yaml) - n, "]\n");
    CHECK_FAILS(yaml, 2, "mqtt.topics");
}

/* fl_config_load reads the file and names it in errors. */
void test_config_load_file(void)
{
    char         path[] = "/tmp/fleetd-unit-XXXXXX";
    char         prefix[64];
    fl_config_t *cf;
    FILE        *f;
    int          fd;

    fd = mkstemp(path);
    FL_REQUIRE(fd != -1);
    f = fdopen(fd, "w");
    FL_REQUIRE(f != NULL);
    fputs("node_id: from-file\nworkers: 2\n", f);
    fclose(f);

    cf = fl_config_load(path, err, sizeof(err));
    FL_CHECK(cf != NULL);
    if (cf != NULL) {
        FL_CHECK_STR(cf->file, path);
        FL_CHECK_STR(cf->node_id, "from-file");
        FL_CHECK_EQ_INT(cf->workers, 2);
        fl_config_free(cf);
    }

    f = fopen(path, "w");
    FL_REQUIRE(f != NULL);
    fputs("node_id: x\nlisten: nohost\n", f);
    fclose(f);
    cf = fl_config_load(path, err, sizeof(err));
    FL_CHECK(cf == NULL);
    fl_config_free(cf);
    snprintf(prefix, sizeof(prefix), "%s:2: ", path);
    FL_CHECK_PREFIX(err, prefix);

    unlink(path);
    cf = fl_config_load(path, err, sizeof(err));
    FL_CHECK(cf == NULL);
    fl_config_free(cf);
    FL_CHECK_PREFIX(err, path);
}

void test_parse_duration(void)
{
    static const struct {
        const char *s;
        int64_t     ms;
    } good[] = {
        {"500ms", 500}, {"30s", 30000}, {"2m", 120000}, {"1h", 3600000},
        {"5", 5000},    {"0", 0},       {"0ms", 0},     {"1.5s", 1500},
    };
    static const char *bad[] = {
        "",    "s",   "ms",    "10 parsecs", "-1s", "+1s",  "5x",
        "1s2", "5 s", "1e400", "inf",        "nan", "1sec", "ten",
    };
    int64_t v;
    size_t  i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = -1;
        if (fl_parse_duration_ms(good[i].s, &v) != FL_OK)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" rejected", good[i].s);
        else if (v != good[i].ms)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" = %lld, want %lld",
                         good[i].s, (long long)v, (long long)good[i].ms);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (fl_parse_duration_ms(bad[i], &v) == FL_OK)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" accepted as %lld ms",
                         bad[i], (long long)v);
    }
}

void test_parse_size(void)
{
    static const struct {
        const char *s;
        int64_t     bytes;
    } good[] = {
        {"0", 0},
        {"100", 100},
        {"16k", 16384},
        {"16K", 16384},
        {"1m", 1048576},
        {"1M", 1048576},
        {"2g", 2147483648LL},
        {"16kb", 16384},
        {"16KiB", 16384},
        {"100b", 100},
    };
    static const char *bad[] = {
        "",
        "k",
        "-1",
        "+1",
        "1.5k",
        "16 k",
        "16q",
        "16kk",
        "1t",
        "99999999999999999999",
        "9999999999999g",
        "0x10",
    };
    int64_t v;
    size_t  i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        v = -1;
        if (fl_parse_size(good[i].s, &v) != FL_OK)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" rejected", good[i].s);
        else if (v != good[i].bytes)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" = %lld, want %lld",
                         good[i].s, (long long)v, (long long)good[i].bytes);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        if (fl_parse_size(bad[i], &v) == FL_OK)
            fl_test_fail(__FILE__, __LINE__, "\"%s\" accepted as %lld", bad[i],
                         (long long)v);
    }
}

void test_parse_listen(void)
{
    /* fl_config.c: ":port" and "port" listen on 0.0.0.0 */
    static const struct {
        const char *s;
        const char *host;
        int         port;
    } good[] = {
        {"127.0.0.1:8080", "127.0.0.1", 8080},
        {"[::1]:8080", "::1", 8080},
        {"[::]:443", "::", 443},
        {":8080", "0.0.0.0", 8080},
        {"8080", "0.0.0.0", 8080},
        {"example.com:1", "example.com", 1},
        {"0.0.0.0:65535", "0.0.0.0", 65535},
    };
    static const char *bad[] = {
        "",           "nohost",  "host:",    "host:0",   "host:65536",
        "host:70000", "host:-1", "host:80x", "::1:8080", "[::1]",
        "[::1]8080",  "[]:80",   "[::1:80",  ":",        "host:+80",
    };
    char  *host;
    int    port;
    size_t i;

    for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        host = NULL;
        port = -1;
        if (fl_parse_listen(good[i].s, &host, &port) != FL_OK) {
            fl_test_fail(__FILE__, __LINE__, "\"%s\" rejected", good[i].s);
            continue;
        }
        FL_CHECK_STR(host, good[i].host);
        FL_CHECK_EQ_INT(port, good[i].port);
        free(host);
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        host = NULL;
        if (fl_parse_listen(bad[i], &host, &port) == FL_OK) {
            fl_test_fail(__FILE__, __LINE__, "\"%s\" accepted as %s port %d",
                         bad[i], host, port);
            free(host);
        }
    }
}
