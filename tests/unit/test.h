/* Minimal unit-test harness. Each test binary:
 *
 *   TEST(test_something) { EXPECT(x == 1); EXPECT_NEAR(a, b, 1e-6); ASSERT(p != NULL); ... }
 *   int main(void) { RUN(test_something); return test_summary(); }
 *
 * Prints "PASS name" or "FAIL name" (with every failed expectation, file:line) per test;
 * tests/run.sh counts those lines. EXPECT records a failure and goes on; ASSERT also
 * returns from the test; SKIP(fmt, ...) returns and prints "SKIP name: reason" instead
 * (missing data, or a check the sanitizer pass cannot make: see SKIP_IF_FAST), counted by
 * tests/run.sh as skipped, neither passed nor failed. test_data_path() finds the shared data folder
 * ($CDCD_SHARED_DATA, else ../shared/data from the repository root). */
#ifndef CDCD_TEST_H
#define CDCD_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int test_current_failed_;
static int test_current_skipped_;
static int test_passed_;
static int test_failed_;
static int test_skipped_;
static char test_skip_reason_[512];

static inline void test_fail_(const char *file, int line, const char *what) {
    if (!test_current_failed_) fflush(stdout);
    fprintf(stdout, "  %s:%d: %s\n", file, line, what);
    test_current_failed_ = 1;
}

#define EXPECT(cond)                                                     \
    do {                                                                 \
        if (!(cond)) test_fail_(__FILE__, __LINE__, "expected " #cond);  \
    } while (0)

#define EXPECTF(cond, ...)                                               \
    do {                                                                 \
        if (!(cond)) {                                                   \
            char msg_[512];                                              \
            snprintf(msg_, sizeof msg_, __VA_ARGS__);                    \
            test_fail_(__FILE__, __LINE__, msg_);                        \
        }                                                                \
    } while (0)

#define ASSERT(cond)                                                     \
    do {                                                                 \
        if (!(cond)) {                                                   \
            test_fail_(__FILE__, __LINE__, "assertion " #cond);          \
            return;                                                      \
        }                                                                \
    } while (0)

#define EXPECT_NEAR(a, b, tol)                                                        \
    do {                                                                              \
        double a_ = (double)(a), b_ = (double)(b), t_ = (double)(tol);                \
        if (!(fabs(a_ - b_) <= t_)) {                                                 \
            char msg_[256];                                                           \
            snprintf(msg_, sizeof msg_, "%s = %.9g, %s = %.9g, |diff| %.3g > %.3g",   \
                     #a, a_, #b, b_, fabs(a_ - b_), t_);                              \
            test_fail_(__FILE__, __LINE__, msg_);                                     \
        }                                                                             \
    } while (0)

#define EXPECT_STREQ(a, b)                                                            \
    do {                                                                              \
        const char *a_ = (a), *b_ = (b);                                              \
        if (!a_ || !b_ || strcmp(a_, b_) != 0) {                                      \
            char msg_[1024];                                                          \
            snprintf(msg_, sizeof msg_, "%s = \"%.400s\" != \"%.400s\"", #a,          \
                     a_ ? a_ : "(null)", b_ ? b_ : "(null)");                         \
            test_fail_(__FILE__, __LINE__, msg_);                                     \
        }                                                                             \
    } while (0)

/* SKIP("no %s", path): ends the test as skipped, printed "SKIP name: reason" (not a PASS:
 * tests/run.sh counts it as skipped and lists it). A failure before it in the test wins:
 * the test is reported FAIL. */
#define SKIP(...)                                                                     \
    do {                                                                              \
        snprintf(test_skip_reason_, sizeof test_skip_reason_, __VA_ARGS__);           \
        test_current_skipped_ = 1;                                                    \
        return;                                                                       \
    } while (0)

#define TEST(name) static void name(void)

#define RUN(name)                                                        \
    do {                                                                 \
        test_current_failed_ = 0;                                        \
        test_current_skipped_ = 0;                                       \
        name();                                                          \
        if (test_current_failed_) {                                      \
            test_failed_++;                                              \
            printf("FAIL %s\n", #name);                                  \
        } else if (test_current_skipped_) {                              \
            test_skipped_++;                                             \
            printf("SKIP %s: %s\n", #name, test_skip_reason_);           \
        } else {                                                         \
            test_passed_++;                                              \
            printf("PASS %s\n", #name);                                  \
        }                                                                \
        fflush(stdout);                                                  \
    } while (0)

static inline int test_summary(void) {
    if (test_skipped_)
        printf("# %d passed, %d failed, %d skipped\n", test_passed_, test_failed_, test_skipped_);
    else
        printf("# %d passed, %d failed\n", test_passed_, test_failed_);
    return test_failed_ ? 1 : 0;
}

/* Path to a file in the shared data folder; static buffer (one call at a time). */
static inline const char *test_data_path(const char *name) {
    static char buf[4096];
    const char *dir = getenv("CDCD_SHARED_DATA");
    snprintf(buf, sizeof buf, "%s/%s", dir && *dir ? dir : "../shared/data", name);
    return buf;
}

/* A fresh temporary directory for this test binary ($TMPDIR or /tmp). Static buffer. */
static inline const char *test_tmpdir(void) {
    static char buf[4096];
    if (!buf[0]) {
        const char *t = getenv("TMPDIR");
        snprintf(buf, sizeof buf, "%s/cdcd-test-XXXXXX", t && *t ? t : "/tmp");
        if (!mkdtemp(buf)) {
            perror("mkdtemp");
            exit(2);
        }
    }
    return buf;
}

/* The sanitizer pass sets CDCD_TEST_FAST=1. A test may do less work there (fewer seeds or
 * steps) only when it still makes every check it makes in the normal pass; a check that
 * cannot be made there (quality of a briefly trained model, a wall-time budget, a slow
 * comparison) goes in its own test that starts with SKIP_IF_FAST("why"), so the pass shows
 * it as "SKIP name: fast mode ...: why" and counts it as skipped, never as passed. */
static inline int test_fast_mode(void) {
    const char *f = getenv("CDCD_TEST_FAST");
    return f && *f && strcmp(f, "0") != 0;
}

/* SKIP_IF_FAST("reason %d", ...): the first argument must be a string literal. */
#define SKIP_IF_FAST(...)                                                             \
    do {                                                                              \
        if (test_fast_mode()) SKIP("fast mode (CDCD_TEST_FAST, sanitizer pass): " __VA_ARGS__); \
    } while (0)

#endif
