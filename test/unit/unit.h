/*
 * unit.h - the smallest test framework that does the job.
 *
 * A test is a void function registered in the table of test_main.c. Checks
 * record a failure with file:line and carry on, so one run shows every
 * broken expectation of a test; FL_REQUIRE stops the test (use it before
 * dereferencing something that may be NULL). A test passes when it recorded
 * no failure.
 */
#ifndef FL_UNIT_H
#define FL_UNIT_H

#include <stdint.h>
#include <string.h>

typedef void (*fl_test_fn)(void);

typedef struct {
    const char *name;
    fl_test_fn  fn;
} fl_test_t;

/* Prints "  file:line: message" and counts a failure of the current test. */
void fl_test_fail(const char *file, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A malloc'd string: prefix, n times c, suffix. */
char *fl_test_repeat(const char *prefix, char c, size_t n, const char *suffix);

/* Failures recorded by the current test so far. */
int fl_test_failures(void);

#define FL_CHECK(cond)                                                   \
    do {                                                                 \
        if (!(cond))                                                     \
            fl_test_fail(__FILE__, __LINE__, "check failed: %s", #cond); \
    } while (0)

#define FL_REQUIRE(cond)                                             \
    do {                                                             \
        if (!(cond)) {                                               \
            fl_test_fail(__FILE__, __LINE__, "required: %s", #cond); \
            return;                                                  \
        }                                                            \
    } while (0)

#define FL_CHECK_EQ_INT(a, b)                                                  \
    do {                                                                       \
        long long fl_a_ = (long long)(a), fl_b_ = (long long)(b);              \
        if (fl_a_ != fl_b_)                                                    \
            fl_test_fail(__FILE__, __LINE__, "%s == %s: %lld != %lld", #a, #b, \
                         fl_a_, fl_b_);                                        \
    } while (0)

#define FL_CHECK_EQ_U64(a, b)                                                  \
    do {                                                                       \
        unsigned long long fl_a_ = (unsigned long long)(a);                    \
        unsigned long long fl_b_ = (unsigned long long)(b);                    \
        if (fl_a_ != fl_b_)                                                    \
            fl_test_fail(__FILE__, __LINE__, "%s == %s: %llu != %llu", #a, #b, \
                         fl_a_, fl_b_);                                        \
    } while (0)

/* a <= b, unsigned 64-bit. */
#define FL_CHECK_LE_U64(a, b)                                                 \
    do {                                                                      \
        unsigned long long fl_a_ = (unsigned long long)(a);                   \
        unsigned long long fl_b_ = (unsigned long long)(b);                   \
        if (!(fl_a_ <= fl_b_))                                                \
            fl_test_fail(__FILE__, __LINE__, "%s <= %s: %llu > %llu", #a, #b, \
                         fl_a_, fl_b_);                                       \
    } while (0)

/* Equal strings; NULL only equals NULL. */
#define FL_CHECK_STR(a, b)                                                     \
    do {                                                                       \
        const char *fl_a_ = (a), *fl_b_ = (b);                                 \
        if (fl_a_ == NULL || fl_b_ == NULL ? fl_a_ != fl_b_                    \
                                           : strcmp(fl_a_, fl_b_) != 0)        \
            fl_test_fail(__FILE__, __LINE__, "%s == %s: \"%s\" != \"%s\"", #a, \
                         #b, fl_a_ ? fl_a_ : "(null)",                         \
                         fl_b_ ? fl_b_ : "(null)");                            \
    } while (0)

/* s starts with prefix. */
#define FL_CHECK_PREFIX(s, prefix)                                            \
    do {                                                                      \
        const char *fl_s_ = (s), *fl_p_ = (prefix);                           \
        if (fl_s_ == NULL || strncmp(fl_s_, fl_p_, strlen(fl_p_)) != 0)       \
            fl_test_fail(__FILE__, __LINE__, "%s starts with \"%s\": \"%s\"", \
                         #s, fl_p_, fl_s_ ? fl_s_ : "(null)");                \
    } while (0)

/* needle occurs in s. */
#define FL_CHECK_CONTAINS(s, needle)                                           \
    do {                                                                       \
        const char *fl_s_ = (s), *fl_n_ = (needle);                            \
        if (fl_s_ == NULL || strstr(fl_s_, fl_n_) == NULL)                     \
            fl_test_fail(__FILE__, __LINE__, "%s contains \"%s\": \"%s\"", #s, \
                         fl_n_, fl_s_ ? fl_s_ : "(null)");                     \
    } while (0)

#endif
