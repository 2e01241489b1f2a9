/* Core utilities: RNG streams, arena, clock. */
#include "arena.h"
#include "clock.h"
#include "log.h"
#include "rng.h"
#include "test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

TEST(test_rng_reproducible_and_streams_differ) {
    cdcd_rng a, b, c;
    cdcd_rng_init(&a, 42, 0);
    cdcd_rng_init(&b, 42, 0);
    cdcd_rng_init(&c, 42, 1);
    int same_ab = 1, same_ac = 1;
    for (int i = 0; i < 100; i++) {
        uint64_t x = cdcd_rng_u64(&a), y = cdcd_rng_u64(&b), z = cdcd_rng_u64(&c);
        same_ab &= x == y;
        same_ac &= x == z;
    }
    EXPECT(same_ab);
    EXPECT(!same_ac);
}

TEST(test_rng_normal_moments) {
    cdcd_rng r;
    cdcd_rng_init(&r, 7, 3);
    double s = 0, s2 = 0;
    int n = 200000;
    for (int i = 0; i < n; i++) {
        double x = cdcd_rng_normal(&r);
        s += x;
        s2 += x * x;
    }
    EXPECT_NEAR(s / n, 0.0, 0.01);
    EXPECT_NEAR(s2 / n, 1.0, 0.02);
}

TEST(test_rng_below_unbiased_range) {
    cdcd_rng r;
    cdcd_rng_init(&r, 1, 1);
    int counts[7] = {0};
    for (int i = 0; i < 70000; i++) {
        uint64_t v = cdcd_rng_below(&r, 7);
        ASSERT(v < 7);
        counts[v]++;
    }
    for (int i = 0; i < 7; i++) EXPECT_NEAR(counts[i], 10000, 400);
}

TEST(test_rng_split_is_deterministic) {
    cdcd_rng p1, p2;
    cdcd_rng_init(&p1, 5, 0);
    cdcd_rng_init(&p2, 5, 0);
    cdcd_rng c1 = cdcd_rng_split(&p1, 9), c2 = cdcd_rng_split(&p2, 9);
    EXPECT(cdcd_rng_u64(&c1) == cdcd_rng_u64(&c2));
    EXPECT(cdcd_rng_u64(&p1) == cdcd_rng_u64(&p2));
}

TEST(test_arena_alignment_and_capacity) {
    cdcd_arena a;
    ASSERT(cdcd_arena_init(&a, 1000) == 0);
    void *p = cdcd_arena_alloc(&a, 3);
    void *q = cdcd_arena_alloc(&a, 100);
    EXPECT(p && q);
    EXPECT(((uintptr_t)p % CDCD_ARENA_ALIGN) == 0);
    EXPECT(((uintptr_t)q % CDCD_ARENA_ALIGN) == 0);
    EXPECT(cdcd_arena_alloc(&a, 100000) == NULL);
    size_t m = cdcd_arena_mark(&a);
    (void)cdcd_arena_alloc(&a, 64);
    cdcd_arena_reset_to(&a, m);
    EXPECT(cdcd_arena_mark(&a) == m);
    cdcd_arena_free(&a);

    cdcd_arena measure;
    ASSERT(cdcd_arena_init(&measure, 0) == 0);
    EXPECT(cdcd_arena_alloc(&measure, 10) == NULL);
    EXPECT(measure.used == CDCD_ARENA_ALIGN);
}

TEST(test_clock_monotonic) {
    uint64_t t0 = cdcd_now_ns();
    cdcd_sleep_ms(2);
    uint64_t t1 = cdcd_now_ns();
    EXPECT(t1 > t0 + 1000000);
    EXPECT(cdcd_wall_s() > 1.6e9);
}

/* A log message carries client-chosen strings (run names, URLs): a newline or an escape
 * sequence in one is written as \xNN, so it can neither forge a line nor drive a terminal. */
TEST(test_log_escapes_control_characters) {
    char path[] = "/tmp/cdcd-log-XXXXXX";
    int fd = mkstemp(path);
    EXPECT(fd >= 0);
    close(fd);
    EXPECT(cdcd_log_open(path) == 0);
    cdcd_info("run %s created", "evil\nFORGED error: x\x1b[2J");
    char longer[3000];
    memset(longer, 'a', sizeof longer - 1);
    longer[sizeof longer - 1] = '\0';
    longer[2000] = '\n';
    cdcd_info("%s", longer);
    EXPECT(cdcd_log_open(NULL) == 0);
    FILE *f = fopen(path, "r");
    EXPECT(f != NULL);
    char line[4096];
    int lines = 0, forged = 0, esc = 0, longest = 0;
    while (f && fgets(line, sizeof line, f)) {
        lines++;
        forged += strncmp(line, "FORGED", 6) == 0;
        esc += strchr(line, 0x1b) != NULL;
        if ((int)strlen(line) > longest) longest = (int)strlen(line);
        if (lines == 1) EXPECT(strstr(line, "evil\\x0aFORGED error: x\\x1b[2J created") != NULL);
    }
    if (f) fclose(f);
    unlink(path);
    EXPECTF(lines == 2 && !forged && !esc, "%d lines, %d forged, %d escapes", lines, forged, esc);
    EXPECT(longest > 3000); /* a message longer than the stack buffer is written whole */
}

int main(void) {
    RUN(test_rng_reproducible_and_streams_differ);
    RUN(test_rng_normal_moments);
    RUN(test_rng_below_unbiased_range);
    RUN(test_rng_split_is_deterministic);
    RUN(test_arena_alignment_and_capacity);
    RUN(test_clock_monotonic);
    RUN(test_log_escapes_control_characters);
    return test_summary();
}
