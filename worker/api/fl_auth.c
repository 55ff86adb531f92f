/*
 * fl_auth.c - bearer tokens: admin tokens and API keys (see fl_auth.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>

#include "fl_auth.h"
#include "fl_log.h"

#define AUTH_CACHE_MS    5000
#define AUTH_CACHE_SLOTS 1024 /* power of two */
#define KEY_PREFIX       "flk_"

typedef struct {
    char          id[17];
    unsigned char hash[SHA256_DIGEST_LENGTH];
    int           scopes;
    int64_t       at_ms; /* 0: empty */
} cached_t;

static struct {
    unsigned char (*admin)[SHA256_DIGEST_LENGTH];
    int      nadmin;
    int      stmt_key;
    cached_t cache[AUTH_CACHE_SLOTS];
} au;

typedef struct {
    fl_auth_cb    cb;
    unsigned char hash[SHA256_DIGEST_LENGTH]; /* of the presented secret */
} lookup_t;

/* SHA-256 through one digest and one context fetched at init: OpenSSL
 * 3's one-shot SHA256() looks the algorithm up on every call, a third of
 * what hashing a token costs. Loop thread only. */
static EVP_MD     *md;
static EVP_MD_CTX *mdctx;

static void sha256(const void *p, size_t n, unsigned char *out)
{
    unsigned int len;

    if (md && mdctx && EVP_DigestInit_ex2(mdctx, md, NULL) &&
        EVP_DigestUpdate(mdctx, p, n) && EVP_DigestFinal_ex(mdctx, out, &len))
        return;
    SHA256(p, n, out);
}

static int hex_val(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* n lower-case hex digits at s into bytes; FL_ERROR on anything else */
static int unhex(const char *s, size_t n, unsigned char *out)
{
    for (size_t i = 0; i < n; i += 2) {
        int hi = hex_val(s[i]), lo = hex_val(s[i + 1]);

        if (hi < 0 || lo < 0)
            return FL_ERROR;
        out[i / 2] = (unsigned char)(hi << 4 | lo);
    }
    return FL_OK;
}

static void tohex(const unsigned char *p, size_t n, char *out)
{
    static const char digits[] = "0123456789abcdef";

    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[p[i] >> 4];
        out[2 * i + 1] = digits[p[i] & 15];
    }
    out[2 * n] = '\0';
}

static unsigned slot_of(const char *id)
{
    return fl_fnv1a(id, strlen(id)) & (AUTH_CACHE_SLOTS - 1);
}

int fl_auth_scopes(const char *const *names, int n)
{
    int s = 0;

    for (int i = 0; i < n; i++) {
        if (strcmp(names[i], "read") == 0)
            s |= FL_SCOPE_READ;
        else if (strcmp(names[i], "write") == 0)
            s |= FL_SCOPE_READ | FL_SCOPE_WRITE;
        else if (strcmp(names[i], "admin") == 0)
            s |= FL_SCOPE_READ | FL_SCOPE_WRITE | FL_SCOPE_ADMIN;
        else
            return -1;
    }
    return s;
}

/* "read,write" from the database into scope bits */
static int scopes_text(const char *s)
{
    char        buf[64];
    const char *names[8];
    int         n = 0;

    snprintf(buf, sizeof(buf), "%s", s);
    for (char *save = NULL, *t = strtok_r(buf, ",", &save); t && n < 8;
         t = strtok_r(NULL, ",", &save))
        names[n++] = t;
    return fl_auth_scopes(names, n);
}

void fl_auth_init(const fl_config_t *cf)
{
    if (md == NULL)
        md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (mdctx == NULL)
        mdctx = EVP_MD_CTX_new();
    au.nadmin = cf->auth.admin_tokens.n;
    au.admin = fl_calloc((size_t)au.nadmin + 1, SHA256_DIGEST_LENGTH);
    for (int i = 0; i < au.nadmin; i++) {
        const char *t = cf->auth.admin_tokens.items[i];
        sha256(t, strlen(t), au.admin[i]);
    }
    au.stmt_key = fl_db_stmt("auth_key", "SELECT hash, array_to_string("
                                         "scopes, ',') FROM api_keys WHERE "
                                         "id = $1");
    memset(au.cache, 0, sizeof(au.cache));
}

/* The key's cached entry if fresh, else NULL. */
static const cached_t *cache_get(const char *id)
{
    const cached_t *c = &au.cache[slot_of(id)];

    if (c->at_ms == 0 || strcmp(c->id, id) != 0 ||
        fl_now_ms() - c->at_ms > AUTH_CACHE_MS)
        return NULL;
    return c;
}

void fl_auth_forget(const char *id)
{
    cached_t *c = &au.cache[slot_of(id)];

    if (strcmp(c->id, id) == 0)
        c->at_ms = 0;
}

static void on_key(fl_api_req_t *r, const PGresult *res, const char *err,
                   const char *sqlstate)
{
    lookup_t     *l = r->ctx;
    fl_auth_cb    cb = l->cb;
    unsigned char stored[SHA256_DIGEST_LENGTH];
    cached_t     *c;
    int           scopes = 0;

    r->ctx = NULL;
    if (res == NULL) {
        free(l);
        fl_api_db_error(r, err, sqlstate);
        return;
    }
    if (PQntuples(res) == 1) {
        const char *hex = PQgetvalue(res, 0, 0);

        if (strlen(hex) == 2 * SHA256_DIGEST_LENGTH &&
            unhex(hex, 2 * SHA256_DIGEST_LENGTH, stored) == FL_OK) {
            int s = scopes_text(PQgetvalue(res, 0, 1));

            c = &au.cache[slot_of(r->key_id)];
            memcpy(c->id, r->key_id, sizeof(c->id) - 1); /* 16 hex */
            c->id[sizeof(c->id) - 1] = '\0';
            memcpy(c->hash, stored, sizeof(stored));
            c->scopes = s < 0 ? 0 : s;
            c->at_ms = fl_now_ms();
            if (CRYPTO_memcmp(stored, l->hash, sizeof(stored)) == 0)
                scopes = c->scopes;
        }
    }
    free(l);
    cb(r, scopes);
}

void fl_auth_check(fl_api_req_t *r, const char *token, fl_auth_cb cb)
{
    unsigned char   h[SHA256_DIGEST_LENGTH];
    size_t          len = strlen(token);
    int             admin = 0;
    const cached_t *c;
    lookup_t       *l;
    const char     *param[1];

    /* every admin token is compared, whatever matched first */
    sha256(token, len, h);
    for (int i = 0; i < au.nadmin; i++)
        admin |= CRYPTO_memcmp(h, au.admin[i], sizeof(h)) == 0;
    if (admin) {
        cb(r, FL_SCOPE_READ | FL_SCOPE_WRITE | FL_SCOPE_ADMIN);
        return;
    }
    if (len != FL_KEY_TOKEN_LEN || strncmp(token, KEY_PREFIX, 4) != 0 ||
        token[20] != '_') {
        cb(r, 0);
        return;
    }
    memcpy(r->key_id, token + 4, 16);
    r->key_id[16] = '\0';
    sha256(token + 21, 64, h);
    c = cache_get(r->key_id);
    if (c) {
        cb(r, CRYPTO_memcmp(c->hash, h, sizeof(h)) == 0 ? c->scopes : 0);
        return;
    }
    l = fl_calloc(1, sizeof(*l));
    l->cb = cb;
    memcpy(l->hash, h, sizeof(h));
    r->ctx = l;
    param[0] = r->key_id;
    fl_api_query(r, au.stmt_key, 1, param, on_key); /* l goes with r */
}

int fl_auth_new_key(char *token, char *id, char *hash_hex)
{
    unsigned char rnd[8 + 32], h[SHA256_DIGEST_LENGTH];
    char          secret[65];
    size_t        got = 0;

    while (got < sizeof(rnd)) {
        ssize_t n = getrandom(rnd + got, sizeof(rnd) - got, 0);

        if (n < 0) {
            if (errno == EINTR)
                continue;
            fl_error("getrandom() failed: %s", strerror(errno));
            return FL_ERROR;
        }
        got += (size_t)n;
    }
    tohex(rnd, 8, id);
    tohex(rnd + 8, 32, secret);
    sha256(secret, 64, h);
    tohex(h, sizeof(h), hash_hex);
    snprintf(token, FL_KEY_TOKEN_LEN + 1, KEY_PREFIX "%s_%s", id, secret);
    return FL_OK;
}
