/*
 * fl_auth.h - who may call the REST API: bearer tokens.
 *
 * Two kinds of token. The config's auth.admin_tokens have every scope.
 * API keys are made by POST /api/v1/keys (fl_keys.c) and look like
 * "flk_<16 hex id>_<64 hex secret>"; PostgreSQL keeps the id, the scopes
 * and the SHA-256 of the secret, never the secret. Tokens are compared
 * through their SHA-256 with CRYPTO_memcmp (OpenSSL), so the time taken
 * says nothing about how much of a guess was right.
 *
 * A key that was looked up is cached per worker for AUTH_CACHE_MS, so
 * that a busy client costs no database round trip per request; deleting
 * a key (fl_auth_forget on the worker that deletes it) takes effect on
 * the other workers within that time.
 */
#ifndef FL_AUTH_H
#define FL_AUTH_H

#include "fl_api.h"

#define FL_KEY_TOKEN_LEN (4 + 16 + 1 + 64) /* flk_ id _ secret */

/* scopes 0: the token is not valid (401) */
typedef void (*fl_auth_cb)(fl_api_req_t *r, int scopes);

void fl_auth_init(const fl_config_t *cf);

/* Check r's bearer token; cb runs now or after the lookup, exactly once.
 * Sets r->key_id for an API key. */
void fl_auth_check(fl_api_req_t *r, const char *token, fl_auth_cb cb);

/* A new key: token (FL_KEY_TOKEN_LEN + 1 bytes), its id (17 bytes) and
 * the hex SHA-256 of its secret (65 bytes), to store. FL_ERROR when the
 * system has no randomness to give. */
int fl_auth_new_key(char *token, char *id, char *hash_hex);

/* Drop key id from this worker's cache (it was deleted). */
void fl_auth_forget(const char *id);

/* "read,write" -> FL_SCOPE_* bits; -1 on an unknown scope. */
int fl_auth_scopes(const char *const *names, int n);

#endif
