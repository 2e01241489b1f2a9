/* Checkpoint container: round trip, atomic replace, truncation and corruption refused. */
#include <stdio.h>
#include <sys/stat.h>

#include "ckpt.h"
#include "test.h"

static void write_sample(const char *path, float base, uint64_t *bytes, char sha[65]) {
    static float a[1000];
    static int b[7];
    for (int i = 0; i < 1000; i++) a[i] = base + (float)i;
    for (int i = 0; i < 7; i++) b[i] = i * 3;
    cdcd_ckpt_writer *w = cdcd_ckpt_writer_new(path);
    EXPECT(w != NULL);
    EXPECT(cdcd_ckpt_add(w, "params", a, sizeof a) == 0);
    EXPECT(cdcd_ckpt_add(w, "ints", b, sizeof b) == 0);
    EXPECT(cdcd_ckpt_add(w, "params", a, sizeof a) == -1); /* duplicate name */
    EXPECT(cdcd_ckpt_add(w, "empty", NULL, 0) == 0);
    char err[256];
    EXPECTF(cdcd_ckpt_commit(w, bytes, sha, err, sizeof err) == 0, "%s", err);
}

TEST(test_ckpt_round_trip) {
    char path[4200];
    snprintf(path, sizeof path, "%s/a.ckpt", test_tmpdir());
    uint64_t bytes = 0;
    char sha[65];
    write_sample(path, 1.5f, &bytes, sha);
    struct stat st;
    ASSERT(stat(path, &st) == 0);
    EXPECT((uint64_t)st.st_size == bytes);
    EXPECT(strlen(sha) == 64);
    char err[256];
    cdcd_ckpt_reader *r = cdcd_ckpt_open(path, err, sizeof err);
    ASSERT(r != NULL);
    float a[1000];
    EXPECT(cdcd_ckpt_read_exact(r, "params", a, sizeof a) == 0);
    EXPECT(a[0] == 1.5f && a[999] == 1000.5f);
    int b[7];
    EXPECT(cdcd_ckpt_read_exact(r, "ints", b, sizeof b) == 0);
    EXPECT(b[6] == 18);
    EXPECT(cdcd_ckpt_read_exact(r, "ints", b, 4) == -1); /* wrong size */
    const void *p;
    size_t n;
    EXPECT(cdcd_ckpt_get(r, "empty", &p, &n) == 0 && n == 0);
    EXPECT(cdcd_ckpt_get(r, "missing", &p, &n) == -1);
    cdcd_ckpt_close(r);
    /* Rewriting replaces atomically and leaves no temp file. */
    write_sample(path, 2.5f, NULL, NULL);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    EXPECT(access(tmp, F_OK) != 0);
    r = cdcd_ckpt_open(path, err, sizeof err);
    ASSERT(r != NULL);
    EXPECT(cdcd_ckpt_read_exact(r, "params", a, sizeof a) == 0 && a[0] == 2.5f);
    cdcd_ckpt_close(r);
}

static long file_size(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 ? (long)st.st_size : -1;
}

TEST(test_ckpt_truncated_and_corrupt_refused) {
    char path[4200], bad[4300];
    snprintf(path, sizeof path, "%s/b.ckpt", test_tmpdir());
    write_sample(path, 0.f, NULL, NULL);
    long size = file_size(path);
    FILE *in = fopen(path, "rb");
    ASSERT(in != NULL);
    char *buf = malloc((size_t)size);
    ASSERT(fread(buf, 1, (size_t)size, in) == (size_t)size);
    fclose(in);
    char err[256];

    snprintf(bad, sizeof bad, "%s/trunc.ckpt", test_tmpdir());
    FILE *out = fopen(bad, "wb");
    fwrite(buf, 1, (size_t)size - 100, out);
    fclose(out);
    EXPECT(cdcd_ckpt_open(bad, err, sizeof err) == NULL);
    EXPECTF(strstr(err, "truncated") != NULL, "message: %s", err);

    buf[200] ^= 0x40; /* flip a bit inside a section */
    out = fopen(bad, "wb");
    fwrite(buf, 1, (size_t)size, out);
    fclose(out);
    EXPECT(cdcd_ckpt_open(bad, err, sizeof err) == NULL);
    EXPECTF(strstr(err, "checksum") != NULL, "message: %s", err);
    buf[200] ^= 0x40;

    buf[0] = 'X';
    out = fopen(bad, "wb");
    fwrite(buf, 1, (size_t)size, out);
    fclose(out);
    EXPECT(cdcd_ckpt_open(bad, err, sizeof err) == NULL);
    EXPECTF(strstr(err, "magic") != NULL, "message: %s", err);

    EXPECT(cdcd_ckpt_open("/nonexistent/x.ckpt", err, sizeof err) == NULL);
    free(buf);
}

TEST(test_ckpt_unwritable_directory) {
    cdcd_ckpt_writer *w = cdcd_ckpt_writer_new("/nonexistent-dir/x.ckpt");
    ASSERT(w != NULL);
    int v = 1;
    cdcd_ckpt_add(w, "v", &v, sizeof v);
    char err[256] = "";
    EXPECT(cdcd_ckpt_commit(w, NULL, NULL, err, sizeof err) == -1);
    EXPECT(strstr(err, "cannot create") != NULL);
}

TEST(test_sha256_known_vector) {
    char hex[65];
    cdcd_sha256_hex("abc", 3, hex);
    EXPECT_STREQ(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

int main(void) {
    RUN(test_ckpt_round_trip);
    RUN(test_ckpt_truncated_and_corrupt_refused);
    RUN(test_ckpt_unwritable_directory);
    RUN(test_sha256_known_vector);
    return test_summary();
}
