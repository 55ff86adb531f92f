/*
 * fuzz_payload.c - libFuzzer harness for the telemetry payload parser.
 *
 * Feeds the input to fl_payload_parse() with small limits (so the fuzzer
 * reaches every limit quickly) and frees the result. ASan/UBSan catch
 * memory and arithmetic errors; on top of that:
 *
 *   - a rejection has a known reason other than "internal" (that one
 *     means the pre-scan let through something cJSON refused), a
 *     non-empty message of valid UTF-8 without control characters, and a
 *     zeroed result;
 *   - an accepted result has >= 1 point, every point >= 1 metric, at most
 *     max_metrics in all, names non-empty, within max_name_len, valid
 *     UTF-8 without control characters, text values within
 *     max_string_bytes and valid UTF-8, finite numbers, timestamps within
 *     the bounds, SenML points in ascending time, no name twice at one
 *     time.
 *
 * UTF-8 is checked here with a decoder of its own, not fl_utf8_valid().
 * The input is also fed to fl_topic_parse(): an accepted topic must give
 * a device id of the documented shape; and to fl_ack_parse() (a command
 * answer): accepted, a command id of the documented shape, ok 0 or 1 and
 * the JSON after at most a BOM; refused, a known reason other than
 * "internal" with a message, and a zeroed result.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fl_payload.h"
#include "fuzz_utf8_ref.h"

#define NOW 1764370000000123LL /* us, not a whole ms */

/* UTF-8 as RFC 3629 has it (fuzz_utf8_ref.h). */
static int utf8_ok(const unsigned char *s, size_t n)
{
    return fuzz_utf8_ref(s, n);
}

/* C0, DEL, or C1 (U+0080-U+009F, encoded c2 80..c2 9f). */
static int has_control(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;

    for (; *p; p++) {
        if (*p < 0x20 || *p == 0x7f ||
            (p[0] == 0xc2 && p[1] >= 0x80 && p[1] < 0xa0))
            return 1;
    }
    return 0;
}

static void check_text(const char *s, size_t max, int name)
{
    size_t n;

    if (s == NULL)
        abort();
    n = strlen(s);
    if ((name && n == 0) || n > max || !utf8_ok((const unsigned char *)s, n))
        abort();
    if (name && has_control(s))
        abort();
}

static void check_accepted(const fl_telemetry_t      *t,
                           const fl_payload_limits_t *lim)
{
    const fl_metric_t *m, *o;
    size_t             p, i, q, j, total = 0;
    int64_t            hi = NOW + lim->max_future_ms * 1000;

    if (t->npoints < 1 || t->points == NULL || t->arena == NULL ||
        t->nmetrics > lim->max_metrics)
        abort();
    if (t->form < FL_FORM_FLAT || t->form > FL_FORM_SENML)
        abort();
    if ((t->form == FL_FORM_FLAT || t->form == FL_FORM_VALUES) &&
        t->npoints != 1)
        abort();
    for (p = 0; p < t->npoints; p++) {
        const fl_point_t *pt = &t->points[p];

        if (pt->nmetrics < 1 || pt->ts_us < lim->min_ts_ms * 1000 ||
            pt->ts_us > hi)
            abort();
        if (t->form == FL_FORM_SENML && p > 0 &&
            pt->ts_us <= t->points[p - 1].ts_us)
            abort();
        total += pt->nmetrics;
        for (i = 0; i < pt->nmetrics; i++) {
            m = &pt->metrics[i];
            check_text(m->name, lim->max_name_len, 1);
            switch (m->type) {
            case FL_METRIC_NUM:
                if (!(m->num == m->num) || m->num - m->num != 0)
                    abort();
                break;
            case FL_METRIC_BOOL:
                if (m->b != 0 && m->b != 1)
                    abort();
                break;
            case FL_METRIC_STR:
                check_text(m->str, lim->max_string_bytes, 0);
                break;
            default: abort();
            }
            if (m->unit != NULL)
                check_text(m->unit, lim->max_payload_bytes, 0);
            /* no name twice at one time, in any point */
            for (q = p; q < t->npoints; q++) {
                if (t->points[q].ts_us != pt->ts_us)
                    continue;
                for (j = q == p ? i + 1 : 0; j < t->points[q].nmetrics; j++) {
                    o = &t->points[q].metrics[j];
                    if (strcmp(o->name, m->name) == 0)
                        abort();
                }
            }
        }
    }
    if (total != t->nmetrics)
        abort();
}

static void check_topic(const uint8_t *data, size_t size)
{
    char            dev[FL_DEVICE_ID_MAX + 1];
    fl_topic_kind_t kind;
    fl_reject_t     why;
    size_t          n, i;

    if (fl_topic_parse((const char *)data, size, dev, &kind, &why) != FL_OK) {
        if (why.reason != FL_REJECT_BAD_TOPIC &&
            why.reason != FL_REJECT_BAD_DEVICE_ID)
            abort();
        if (!utf8_ok((const unsigned char *)why.msg, strlen(why.msg)) ||
            has_control(why.msg))
            abort();
        return;
    }
    n = strlen(dev);
    if (n < 1 || n > FL_DEVICE_ID_MAX ||
        (kind != FL_TOPIC_TELEMETRY && kind != FL_TOPIC_STATE &&
         kind != FL_TOPIC_CMD_ACK))
        abort();
    for (i = 0; i < n; i++) {
        if (strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                   "0123456789_.:-",
                   dev[i]) == NULL)
            abort();
    }
}

static void check_ack(const uint8_t *data, size_t size,
                      const fl_payload_limits_t *lim)
{
    fl_ack_t    a;
    fl_reject_t why;

    if (fl_ack_parse(data, size, lim, &a, &why) == FL_OK) {
        if (!fl_device_id_valid(a.id, strlen(a.id)) ||
            (a.ok != 0 && a.ok != 1) || (a.json_off != 0 && a.json_off != 3))
            abort();
        return;
    }
    if (why.reason == FL_REJECT_NONE || why.reason == FL_REJECT_INTERNAL ||
        why.reason >= FL_REJECT_COUNT || why.msg[0] == '\0' ||
        !utf8_ok((const unsigned char *)why.msg, strlen(why.msg)) ||
        has_control(why.msg) || a.id[0] != '\0' || a.ok || a.has_result)
        abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fl_payload_limits_t lim;
    fl_telemetry_t      t;
    fl_reject_t         why;

    fl_payload_limits_default(&lim);
    lim.max_metrics = 64;
    lim.max_name_len = 32;
    lim.max_batch = 16;
    lim.max_string_bytes = 64;
    lim.max_payload_bytes = 16384;

    check_topic(data, size);
    check_ack(data, size, &lim);

    if (fl_payload_parse(data, size, NOW, &lim, &t, &why) != FL_OK) {
        if (why.reason <= FL_REJECT_BAD_DEVICE_ID ||
            why.reason >= FL_REJECT_INTERNAL)
            abort();
        if (why.msg[0] == '\0' ||
            !utf8_ok((const unsigned char *)why.msg, strlen(why.msg)) ||
            has_control(why.msg))
            abort();
        if (t.points != NULL || t.arena != NULL || t.npoints != 0)
            abort();
        return 0;
    }
    check_accepted(&t, &lim);
    fl_telemetry_free(&t);
    return 0;
}
