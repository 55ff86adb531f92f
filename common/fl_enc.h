/*
 * fl_enc.h - output encoders built on a growing byte string: JSON text
 * (strings, numbers) and Redis protocol (RESP) commands.
 *
 * The ingest pool jobs build the fan-out messages and the script calls
 * with these, off the loop, without cJSON trees (a tree and a print per
 * message cost more than the message). Nothing here fails: memory comes
 * from fl_alloc, which aborts on exhaustion.
 */
#ifndef FL_ENC_H
#define FL_ENC_H
#include <stddef.h>
#include <stdint.h>

typedef struct {
    char  *p;
    size_t len, cap;
} fl_sbuf_t;

void fl_sb_reserve(fl_sbuf_t *b, size_t n); /* room for n more bytes */
void fl_sb_put(fl_sbuf_t *b, const char *s, size_t n);
#define fl_sb_lit(b, s) fl_sb_put(b, s, sizeof(s) - 1)
void fl_sb_i64(fl_sbuf_t *b, int64_t v);
/* A finite double as JSON: %.15g, or %.17g when that does not read back
 * the same (callers never pass NaN or infinities: the parser refuses
 * them). */
void fl_sb_num(fl_sbuf_t *b, double d);
/* NUL-terminated s (valid UTF-8) as a JSON string: quote, backslash and
 * control characters escaped, everything else as is. */
void fl_sb_jstr(fl_sbuf_t *b, const char *s);
void fl_sb_free(fl_sbuf_t *b);

/* A RESP command ("*argc" then "$len" + bytes per argument); the header
 * goes in front in fl_resp_finish(), once argc is known. Zero-init. */
typedef struct {
    fl_sbuf_t body;
    int       argc;
} fl_resp_t;

void fl_resp_arg(fl_resp_t *r, const char *s, size_t n); /* binary-safe */
void fl_resp_str(fl_resp_t *r, const char *s);
void fl_resp_i64(fl_resp_t *r, int64_t v);
/* Append src's arguments to r (src unchanged). */
void fl_resp_append(fl_resp_t *r, const fl_resp_t *src);
/* The whole command (malloc, *len bytes, not NUL-terminated); r is reset. */
char *fl_resp_finish(fl_resp_t *r, size_t *len);
void  fl_resp_free(fl_resp_t *r);
#endif
