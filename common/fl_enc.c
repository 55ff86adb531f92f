/*
 * fl_enc.c - JSON text and RESP encoders (see fl_enc.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fl_core.h"
#include "fl_enc.h"

void fl_sb_reserve(fl_sbuf_t *b, size_t n)
{
    if (b->len + n <= b->cap)
        return;
    b->cap = fl_max(b->cap * 2, b->len + n + 256);
    b->p = fl_realloc(b->p, b->cap);
}

void fl_sb_put(fl_sbuf_t *b, const char *s, size_t n)
{
    fl_sb_reserve(b, n);
    if (n)
        memcpy(b->p + b->len, s, n);
    b->len += n;
}

void fl_sb_i64(fl_sbuf_t *b, int64_t v)
{
    char tmp[24];
    int  n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);

    fl_sb_put(b, tmp, (size_t)n);
}

void fl_sb_num(fl_sbuf_t *b, double d)
{
    char tmp[32];
    int  n = snprintf(tmp, sizeof(tmp), "%.15g", d);

    if (strtod(tmp, NULL) != d)
        n = snprintf(tmp, sizeof(tmp), "%.17g", d);
    fl_sb_put(b, tmp, (size_t)n);
}

void fl_sb_jstr(fl_sbuf_t *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const char       *run = s;

    fl_sb_lit(b, "\"");
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char          esc[6] = {'\\', 'u', '0', '0', 0, 0};

        if (c >= 0x20 && c != '"' && c != '\\')
            continue;
        fl_sb_put(b, run, (size_t)(s - run));
        run = s + 1;
        switch (c) {
        case '"': fl_sb_lit(b, "\\\""); break;
        case '\\': fl_sb_lit(b, "\\\\"); break;
        case '\n': fl_sb_lit(b, "\\n"); break;
        case '\r': fl_sb_lit(b, "\\r"); break;
        case '\t': fl_sb_lit(b, "\\t"); break;
        default:
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            fl_sb_put(b, esc, 6);
        }
    }
    fl_sb_put(b, run, (size_t)(s - run));
    fl_sb_lit(b, "\"");
}

void fl_sb_free(fl_sbuf_t *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

void fl_resp_arg(fl_resp_t *r, const char *s, size_t n)
{
    char hdr[24];
    int  h = snprintf(hdr, sizeof(hdr), "$%zu\r\n", n);

    fl_sb_reserve(&r->body, (size_t)h + n + 2);
    fl_sb_put(&r->body, hdr, (size_t)h);
    fl_sb_put(&r->body, s, n);
    fl_sb_lit(&r->body, "\r\n");
    r->argc++;
}

void fl_resp_str(fl_resp_t *r, const char *s)
{
    fl_resp_arg(r, s, strlen(s));
}

void fl_resp_i64(fl_resp_t *r, int64_t v)
{
    char tmp[24];
    int  n = snprintf(tmp, sizeof(tmp), "%" PRId64, v);

    fl_resp_arg(r, tmp, (size_t)n);
}

void fl_resp_append(fl_resp_t *r, const fl_resp_t *src)
{
    fl_sb_put(&r->body, src->body.p, src->body.len);
    r->argc += src->argc;
}

char *fl_resp_finish(fl_resp_t *r, size_t *len)
{
    char  hdr[24];
    int   h = snprintf(hdr, sizeof(hdr), "*%d\r\n", r->argc);
    char *out = fl_alloc((size_t)h + r->body.len);

    memcpy(out, hdr, (size_t)h);
    if (r->body.len)
        memcpy(out + h, r->body.p, r->body.len);
    *len = (size_t)h + r->body.len;
    fl_resp_free(r);
    return out;
}

void fl_resp_free(fl_resp_t *r)
{
    fl_sb_free(&r->body);
    r->argc = 0;
}
