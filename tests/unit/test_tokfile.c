/* Token files: round trip (with stories arriving in pieces and buffers crossing their
 * flush sizes), empty stories, truncation, bad magic, damaged data, another vocabulary,
 * and the atomic write (abort leaves the old file; no temporary files remain). */
#include <dirent.h>
#include <fcntl.h>
#include <stdint.h>
#include <sys/stat.h>

#include "test.h"
#include "tokfile.h"

#define VOCAB_NAME "bert-base-uncased-vocab.txt"
/* More ids and stories than the writer buffers hold (512 Ki ids, 128 Ki offsets), so the
 * flush paths run; small enough for the sanitizer pass. */
#define BIG_STORIES 140000
#define BIG_STORY_MAX 9

static cdcd_tokenizer *tok;

#define PATH_LEN 4200
#define ERR_LEN 400 /* fits EXPECTF's message */

/* A path in the test directory; each call site keeps its own copy. */
#define TMP_PATH(var, name)     \
    char var[PATH_LEN];         \
    snprintf(var, sizeof var, "%s/%s", test_tmpdir(), (name))

/* Story i of the synthetic corpus: length 1..BIG_STORY_MAX, ids derived from (i, j). */
static size_t story_len(uint64_t i) { return 1 + (size_t)((i * 2654435761u) % BIG_STORY_MAX); }
static int32_t story_id(uint64_t i, size_t j) {
    return (int32_t)((i * 31 + j * 7919 + 1000) % CDCD_TOK_BERT_VOCAB_SIZE);
}

/* Writes n synthetic stories (story i in two appends when it is long enough). */
static int write_corpus(const char *path, uint64_t n) {
    char err[ERR_LEN];
    cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    if (!w) {
        printf("  %s\n", err);
        return -1;
    }
    int32_t ids[BIG_STORY_MAX];
    for (uint64_t i = 0; i < n; i++) {
        size_t len = story_len(i);
        for (size_t j = 0; j < len; j++) ids[j] = story_id(i, j);
        size_t half = len / 2;
        if (cdcd_tokfile_writer_append(w, ids, half) ||
            cdcd_tokfile_writer_append(w, ids + half, len - half) ||
            cdcd_tokfile_writer_end_story(w) != 1) {
            printf("  %s\n", cdcd_tokfile_writer_error(w));
            cdcd_tokfile_writer_abort(w);
            return -1;
        }
        if (i % 1000 == 0 && cdcd_tokfile_writer_end_story(w) != 0) { /* empty: not recorded */
            cdcd_tokfile_writer_abort(w);
            return -1;
        }
    }
    if (cdcd_tokfile_writer_finish(w, err, sizeof err)) {
        printf("  %s\n", err);
        return -1;
    }
    return 0;
}

static int copy_file(const char *from, const char *to, long cut, long flip_at) {
    FILE *a = fopen(from, "rb"), *b = fopen(to, "wb");
    if (!a || !b) {
        if (a) fclose(a);
        if (b) fclose(b);
        return -1;
    }
    fseek(a, 0, SEEK_END);
    long n = ftell(a);
    fseek(a, 0, SEEK_SET);
    for (long i = 0; i < n - cut; i++) {
        int c = fgetc(a);
        if (i == flip_at) c ^= 0x01;
        fputc(c, b);
    }
    fclose(a);
    fclose(b);
    return 0;
}

static int open_fails_with(const char *path, const cdcd_tokenizer *t, const char *word) {
    char err[ERR_LEN] = "";
    cdcd_tokfile *f = cdcd_tokfile_open(path, t, err, sizeof err);
    int ok = !f && strstr(err, word);
    if (!ok) printf("  open %s: %s, message \"%s\" (want \"%s\")\n", path, f ? "opened" : "refused",
                    err, word);
    cdcd_tokfile_close(f);
    return ok;
}

TEST(test_round_trip) {
    ASSERT(tok);
    TMP_PATH(path, "big.tok");
    ASSERT(write_corpus(path, BIG_STORIES) == 0);
    char err[ERR_LEN];
    cdcd_tokfile *f = cdcd_tokfile_open(path, tok, err, sizeof err);
    EXPECTF(f != NULL, "%s", err);
    if (!f) return;
    EXPECT(f->h.n_stories == BIG_STORIES);
    EXPECT(f->h.vocab_size == CDCD_TOK_BERT_VOCAB_SIZE);
    EXPECT(f->h.vocab_checksum == cdcd_tok_checksum(tok));
    EXPECT(f->h.cls_id == cdcd_tok_specials(tok)->cls);
    EXPECT(f->h.sep_id == cdcd_tok_specials(tok)->sep);
    EXPECT(f->h.pad_id == cdcd_tok_specials(tok)->pad);
    uint64_t total = 0, bad = 0;
    for (uint64_t i = 0; i < f->h.n_stories; i++) {
        size_t len = story_len(i);
        total += len;
        if (cdcd_tokfile_story_len(f, i) != len) {
            bad++;
            continue;
        }
        const uint16_t *s = cdcd_tokfile_story(f, i);
        for (size_t j = 0; j < len; j++) bad += s[j] != (uint16_t)story_id(i, j);
    }
    EXPECTF(bad == 0, "%llu stories/ids differ", (unsigned long long)bad);
    EXPECT(f->h.n_tokens == total);
    EXPECTF(cdcd_tokfile_verify(f, err, sizeof err) == 0, "%s", err);
    struct stat st;
    EXPECT(stat(path, &st) == 0 && (st.st_mode & 0777) == 0644);
    cdcd_tokfile_close(f);
}

TEST(test_refusals) {
    ASSERT(tok);
    TMP_PATH(good, "small.tok");
    ASSERT(write_corpus(good, 100) == 0);
    TMP_PATH(p, "variant.tok");
    TMP_PATH(missing, "missing.tok");
    ASSERT(copy_file(good, p, 1, -1) == 0);
    EXPECT(open_fails_with(p, tok, "truncated"));
    ASSERT(copy_file(good, p, 1000000, -1) == 0); /* empty file */
    EXPECT(open_fails_with(p, tok, "too short"));
    ASSERT(copy_file(good, p, 0, 0) == 0);
    EXPECT(open_fails_with(p, tok, "bad magic"));
    ASSERT(copy_file(good, p, 0, 40) == 0); /* a header field */
    EXPECT(open_fails_with(p, tok, "header is corrupt"));
    EXPECT(open_fails_with(missing, tok, "cannot open"));
    /* a flipped id bit passes the O(stories) open checks but not verify */
    ASSERT(copy_file(good, p, 0, CDCD_TOKFILE_HEADER_BYTES + 3) == 0);
    char err[ERR_LEN] = "";
    cdcd_tokfile *f = cdcd_tokfile_open(p, tok, err, sizeof err);
    EXPECTF(f != NULL, "%s", err);
    if (f) {
        EXPECT(cdcd_tokfile_verify(f, err, sizeof err) == -1 && strstr(err, "checksum"));
        cdcd_tokfile_close(f);
    }
    /* another vocabulary of the same size (two lines swapped) is refused */
    TMP_PATH(vpath, "swapped-vocab.txt");
    FILE *out = fopen(vpath, "w");
    ASSERT(out);
    for (int id = 0; id < cdcd_tok_vocab_size(tok); id++) {
        int src = id == 1996 ? 1997 : id == 1997 ? 1996 : id;
        fprintf(out, "%s\n", cdcd_tok_piece(tok, src));
    }
    fclose(out);
    cdcd_tokenizer *other = cdcd_tok_load(vpath, err, sizeof err);
    EXPECTF(other != NULL, "%s", err);
    if (other) {
        EXPECT(open_fails_with(good, other, "another vocabulary"));
        cdcd_tok_free(other);
    }
    /* without a tokenizer the file opens (the trainer reads ids only) */
    f = cdcd_tokfile_open(good, NULL, err, sizeof err);
    EXPECT(f != NULL);
    cdcd_tokfile_close(f);
}

static int temp_files_left(const char *dir) {
    DIR *d = opendir(dir);
    if (!d) return -1;
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strstr(e->d_name, ".tmp.") || strstr(e->d_name, ".offsets.")) n++;
    closedir(d);
    return n;
}

TEST(test_atomic_write) {
    ASSERT(tok);
    TMP_PATH(path, "atomic.tok");
    ASSERT(write_corpus(path, 10) == 0);
    char err[ERR_LEN];
    /* an aborted rewrite leaves the old file as it was */
    cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    ASSERT(w);
    int32_t ids[3] = {5, 6, 7};
    EXPECT(cdcd_tokfile_writer_append(w, ids, 3) == 0);
    EXPECT(cdcd_tokfile_writer_end_story(w) == 1);
    cdcd_tokfile_writer_abort(w);
    cdcd_tokfile *f = cdcd_tokfile_open(path, tok, err, sizeof err);
    EXPECT(f && f->h.n_stories == 10);
    cdcd_tokfile_close(f);
    /* an id outside the vocabulary fails the writer; finish then leaves the file alone */
    w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    ASSERT(w);
    int32_t bad[1] = {CDCD_TOK_BERT_VOCAB_SIZE};
    EXPECT(cdcd_tokfile_writer_append(w, bad, 1) == -1);
    EXPECT(strstr(cdcd_tokfile_writer_error(w), "out of the vocabulary") != NULL);
    EXPECT(cdcd_tokfile_writer_finish(w, err, sizeof err) == -1);
    f = cdcd_tokfile_open(path, tok, err, sizeof err);
    EXPECT(f && f->h.n_stories == 10);
    cdcd_tokfile_close(f);
    /* a directory that does not exist: clear error at open */
    EXPECT(cdcd_tokfile_writer_open("/nonexistent-dir/x.tok", tok, err, sizeof err) == NULL);
    EXPECT(strstr(err, "cannot create") != NULL);
    /* a file with no stories is valid (prep refuses to write one) */
    TMP_PATH(empty, "empty.tok");
    w = cdcd_tokfile_writer_open(empty, tok, err, sizeof err);
    ASSERT(w);
    EXPECT(cdcd_tokfile_writer_finish(w, err, sizeof err) == 0);
    f = cdcd_tokfile_open(empty, tok, err, sizeof err);
    EXPECT(f && f->h.n_stories == 0 && f->h.n_tokens == 0);
    if (f) EXPECT(cdcd_tokfile_verify(f, err, sizeof err) == 0);
    cdcd_tokfile_close(f);
    EXPECT(temp_files_left(test_tmpdir()) == 0);
}

int main(void) {
    char err[1024];
    tok = cdcd_tok_load(test_data_path(VOCAB_NAME), err, sizeof err);
    if (!tok) printf("  cannot load the vocabulary: %s\n", err);
    RUN(test_round_trip);
    RUN(test_refusals);
    RUN(test_atomic_write);
    cdcd_tok_free(tok);
    return test_summary();
}
