/* Batch iterator: [CLS] tokens [SEP] [PAD] rows and masks, windows that lose no text,
 * truncation, one-pass and endless iteration, per-epoch shuffles that cover every example
 * once and depend only on the seed, state save/restore, and bad options. */
#include <stdint.h>

#include "batch.h"
#include "test.h"

#define VOCAB_NAME "bert-base-uncased-vocab.txt"
#define VALID_NAME "tinystories/valid.txt"
#define PATH_LEN 4200
#define ERR_LEN 400
/* Story s, position j holds id ID_BASE + s * ID_STRIDE + j, so a row tells where it came
 * from (j < ID_STRIDE, and the ids stay inside the vocabulary and away from specials). */
#define ID_BASE 1000
#define ID_STRIDE 131
#define TMP_PATH(var, name)     \
    char var[PATH_LEN];         \
    snprintf(var, sizeof var, "%s/%s", test_tmpdir(), (name))

static cdcd_tokenizer *tok;
static const size_t lens[] = {1, 5, 6, 7, 12, 13, 30, 2, 100, 6, 11, 3};
#define N_STORIES (sizeof lens / sizeof lens[0])

static cdcd_tokfile *make_file(const char *name, size_t n_stories) {
    TMP_PATH(path, name);
    char err[ERR_LEN];
    cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    if (!w) return NULL;
    for (size_t s = 0; s < n_stories; s++) {
        int32_t ids[ID_STRIDE];
        size_t n = lens[s % N_STORIES];
        for (size_t j = 0; j < n; j++) ids[j] = (int32_t)(ID_BASE + s * ID_STRIDE + j);
        cdcd_tokfile_writer_append(w, ids, n);
        cdcd_tokfile_writer_end_story(w);
    }
    if (cdcd_tokfile_writer_finish(w, err, sizeof err)) return NULL;
    cdcd_tokfile *f = cdcd_tokfile_open(path, tok, err, sizeof err);
    if (!f) printf("  %s\n", err);
    return f;
}

static size_t ceil_div(size_t a, size_t b) { return (a + b - 1) / b; }

/* Checks one row's layout; returns its (story, first position) or -1 when malformed. */
static long check_row(const cdcd_tokfile *f, const int32_t *ids, const uint8_t *mask, int L,
                      size_t *n_content) {
    if (ids[0] != f->h.cls_id || !mask[0]) return -1;
    int k = 1;
    while (k < L && ids[k] != f->h.sep_id) {
        if (!mask[k] || ids[k] < ID_BASE) return -1;
        if (k > 1 && ids[k] != ids[k - 1] + 1) return -1; /* consecutive tokens of one story */
        k++;
    }
    if (k == L || !mask[k] || k == 1) return -1;
    for (int i = k + 1; i < L; i++)
        if (ids[i] != f->h.pad_id || mask[i]) return -1;
    *n_content = (size_t)(k - 1);
    return ids[1] - ID_BASE;
}

TEST(test_window_rows_and_one_pass) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("windows.tok", N_STORIES);
    ASSERT(f);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    EXPECT(o.seq_len == CDCD_BATCH_DEFAULT_SEQ_LEN && o.mode == CDCD_BATCH_WINDOW);
    o.seq_len = 8; /* 6 content positions */
    o.batch_size = 4;
    o.shuffle = 0;
    o.wrap = 0;
    char err[ERR_LEN];
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    EXPECTF(b != NULL, "%s", err);
    if (!b) {
        cdcd_tokfile_close(f);
        return;
    }
    size_t want_ex = 0;
    for (size_t s = 0; s < N_STORIES; s++) want_ex += ceil_div(lens[s], 6);
    EXPECT(cdcd_batch_num_examples(b) == want_ex);
    int32_t ids[4 * 8];
    uint8_t mask[4 * 8];
    size_t rows_seen = 0, bad = 0, story = 0, pos = 0, content = 0;
    int64_t real_sum = 0;
    int r;
    while ((r = cdcd_batch_next(b, ids, mask, &real_sum)) > 0) {
        int64_t ones = 0;
        for (int i = 0; i < r * 8; i++) ones += mask[i];
        EXPECT(ones == real_sum);
        for (int row = 0; row < r; row++, rows_seen++) {
            size_t n;
            long at = check_row(f, ids + row * 8, mask + row * 8, 8, &n);
            /* file order: windows of story 0, then story 1, ... each continuing the last */
            if (pos == lens[story]) story++, pos = 0;
            if (at != (long)(story * ID_STRIDE + pos)) bad++;
            else pos += n, content += n;
        }
        EXPECT(r == 4 || rows_seen == want_ex); /* only the last batch is short */
    }
    EXPECT(r == 0);
    EXPECTF(bad == 0, "%zu rows out of place or malformed", bad);
    EXPECT(rows_seen == want_ex);
    EXPECT(content == f->h.n_tokens); /* no text lost */
    EXPECT(cdcd_batch_next(b, ids, mask, NULL) == 0);
    cdcd_batch_reset(b);
    EXPECT(cdcd_batch_next(b, ids, mask, NULL) == 4);
    cdcd_batch_free(b);
    cdcd_tokfile_close(f);
}

TEST(test_truncate_mode) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("truncate.tok", N_STORIES);
    ASSERT(f);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.seq_len = 8;
    o.batch_size = (int)N_STORIES;
    o.mode = CDCD_BATCH_TRUNCATE;
    o.shuffle = 0;
    o.wrap = 0;
    char err[ERR_LEN];
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    ASSERT(b);
    EXPECT(cdcd_batch_num_examples(b) == N_STORIES);
    int32_t ids[N_STORIES * 8];
    uint8_t mask[N_STORIES * 8];
    int64_t real;
    EXPECT(cdcd_batch_next(b, ids, mask, &real) == (int)N_STORIES);
    int64_t want_real = 0;
    for (size_t s = 0; s < N_STORIES; s++) {
        size_t n;
        long at = check_row(f, ids + s * 8, mask + s * 8, 8, &n);
        EXPECT(at == (long)(s * ID_STRIDE));
        EXPECT(n == (lens[s] < 6 ? lens[s] : 6));
        want_real += (int64_t)n + 2;
    }
    EXPECT(real == want_real);
    EXPECT(cdcd_batch_next(b, ids, mask, NULL) == 0);
    cdcd_batch_free(b);
    cdcd_tokfile_close(f);
}

/* Runs `batches` batches and returns a malloc'd copy of all their ids. */
static int32_t *run(cdcd_batcher *b, int B, int L, int batches) {
    int32_t *all = malloc((size_t)batches * B * L * sizeof *all);
    uint8_t *mask = malloc((size_t)B * L);
    for (int i = 0; i < batches; i++) cdcd_batch_next(b, all + (size_t)i * B * L, mask, NULL);
    free(mask);
    return all;
}

TEST(test_shuffle_covers_each_example_once) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("shuffle.tok", 200);
    ASSERT(f);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.seq_len = 10;
    o.batch_size = 7; /* does not divide the example count: batches straddle epochs */
    o.seed = 1234;
    char err[ERR_LEN];
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    ASSERT(b);
    size_t n_ex = (size_t)cdcd_batch_num_examples(b);
    int batches = (int)(3 * n_ex / 7) + 1;
    int32_t *ids = run(b, 7, 10, batches);
    uint8_t *seen = calloc(200 * ID_STRIDE, 1);
    for (int epoch = 0; epoch < 3; epoch++) {
        memset(seen, 0, 200 * ID_STRIDE);
        size_t dup = 0, in_order = 0, bad = 0;
        long prev = -1;
        for (size_t r = 0; r < n_ex; r++) {
            const int32_t *row = ids + (epoch * n_ex + r) * 10;
            uint8_t mask[10];
            for (int i = 0; i < 10; i++) mask[i] = row[i] != f->h.pad_id;
            size_t n;
            long at = check_row(f, row, mask, 10, &n);
            if (at < 0) {
                bad++;
                continue;
            }
            dup += seen[at]++;
            in_order += at > prev;
            prev = at;
        }
        EXPECTF(bad == 0 && dup == 0, "epoch %d: %zu malformed, %zu repeated", epoch, bad, dup);
        EXPECTF(in_order < n_ex - 1, "epoch %d is in file order", epoch);
    }
    EXPECT(cdcd_batch_epoch(b) == 3);
    free(seen);
    free(ids);
    cdcd_batch_free(b);
    cdcd_tokfile_close(f);
}

TEST(test_determinism) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("det.tok", 60);
    ASSERT(f);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.seq_len = 16;
    o.batch_size = 5;
    o.seed = 42;
    char err[ERR_LEN];
    cdcd_batcher *a = cdcd_batch_create(f, &o, err, sizeof err);
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    o.seed = 43;
    cdcd_batcher *c = cdcd_batch_create(f, &o, err, sizeof err);
    ASSERT(a && b && c);
    int n = (int)(3 * cdcd_batch_num_examples(a) / 5) + 1; /* three epochs */
    size_t bytes = (size_t)n * 5 * 16 * sizeof(int32_t);
    int32_t *x = run(a, 5, 16, n), *y = run(b, 5, 16, n), *z = run(c, 5, 16, n);
    EXPECT(memcmp(x, y, bytes) == 0);
    EXPECT(memcmp(x, z, bytes) != 0);
    /* consecutive epochs use different orders */
    size_t per_epoch = (size_t)cdcd_batch_num_examples(a) * 16;
    EXPECT(memcmp(x, x + per_epoch, per_epoch * sizeof *x) != 0);
    free(x);
    free(y);
    free(z);
    cdcd_batch_free(a);
    cdcd_batch_free(b);
    cdcd_batch_free(c);
    cdcd_tokfile_close(f);
}

TEST(test_state_restore) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("state.tok", 50);
    cdcd_tokfile *g = make_file("state-other.tok", 51);
    ASSERT(f && g);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.seq_len = 12;
    o.batch_size = 6;
    o.seed = 7;
    char err[ERR_LEN];
    cdcd_batcher *a = cdcd_batch_create(f, &o, err, sizeof err);
    ASSERT(a);
    size_t n_ex = (size_t)cdcd_batch_num_examples(a);
    /* stop at several points, including just before and after an epoch boundary */
    int stops[] = {0, 3, (int)(n_ex / 6), (int)(n_ex / 6) + 1, 25};
    for (size_t k = 0; k < sizeof stops / sizeof stops[0]; k++) {
        cdcd_batch_reset(a);
        free(run(a, 6, 12, stops[k]));
        cdcd_batch_state st;
        cdcd_batch_get_state(a, &st);
        unsigned char saved[sizeof st]; /* it is plain data: bytes in, bytes out */
        memcpy(saved, &st, sizeof st);
        int32_t *want = run(a, 6, 12, 20);
        cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
        ASSERT(b);
        cdcd_batch_state back;
        memcpy(&back, saved, sizeof back);
        EXPECTF(cdcd_batch_set_state(b, &back, err, sizeof err) == 0, "%s", err);
        int32_t *got = run(b, 6, 12, 20);
        EXPECTF(memcmp(want, got, 20 * 6 * 12 * sizeof *got) == 0, "stop %d: batches differ",
                stops[k]);
        free(want);
        free(got);
        cdcd_batch_free(b);
    }
    cdcd_batch_state st;
    cdcd_batch_get_state(a, &st);
    /* refused: another seed, another length, another file */
    cdcd_batch_opts o2 = o;
    o2.seed = 8;
    cdcd_batcher *b = cdcd_batch_create(f, &o2, err, sizeof err);
    EXPECT(cdcd_batch_set_state(b, &st, err, sizeof err) == -1 && strstr(err, "seed"));
    cdcd_batch_free(b);
    o2 = o;
    o2.seq_len = 13;
    b = cdcd_batch_create(f, &o2, err, sizeof err);
    EXPECT(cdcd_batch_set_state(b, &st, err, sizeof err) == -1);
    cdcd_batch_free(b);
    b = cdcd_batch_create(g, &o, err, sizeof err);
    EXPECT(cdcd_batch_set_state(b, &st, err, sizeof err) == -1 &&
           strstr(err, "another token file"));
    cdcd_batch_free(b);
    cdcd_batch_free(a);
    cdcd_tokfile_close(f);
    cdcd_tokfile_close(g);
}

TEST(test_bad_options) {
    ASSERT(tok);
    cdcd_tokfile *f = make_file("opts.tok", 3);
    cdcd_tokfile *empty = make_file("empty.tok", 0);
    ASSERT(f && empty);
    cdcd_batch_opts o;
    char err[ERR_LEN];
    cdcd_batch_opts_default(&o);
    o.batch_size = 0;
    EXPECT(!cdcd_batch_create(f, &o, err, sizeof err) && strstr(err, "batch size"));
    cdcd_batch_opts_default(&o);
    o.seq_len = 2;
    EXPECT(!cdcd_batch_create(f, &o, err, sizeof err) && strstr(err, "sequence length"));
    cdcd_batch_opts_default(&o);
    o.mode = 5;
    EXPECT(!cdcd_batch_create(f, &o, err, sizeof err) && strstr(err, "mode"));
    cdcd_batch_opts_default(&o);
    EXPECT(!cdcd_batch_create(empty, &o, err, sizeof err) && strstr(err, "no stories"));
    /* the smallest length works: one token per window */
    o.seq_len = CDCD_BATCH_MIN_SEQ_LEN;
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    EXPECT(b && cdcd_batch_num_examples(b) == f->h.n_tokens);
    cdcd_batch_free(b);
    cdcd_tokfile_close(f);
    cdcd_tokfile_close(empty);
}

/* The valid stories through tokenizer, token file and iterator: one epoch of windows
 * holds every token of every story. */
TEST(test_valid_stories_end_to_end) {
    ASSERT(tok);
    FILE *in = fopen(test_data_path(VALID_NAME), "rb");
    EXPECTF(in != NULL, "cannot read %s", test_data_path(VALID_NAME));
    if (!in) return;
    TMP_PATH(path, "valid.tok");
    char err[ERR_LEN];
    cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    ASSERT(w);
    cdcd_tok_ids ids;
    cdcd_tok_ids_init(&ids);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, in)) > 0) {
        if (strcmp(line, "<|endoftext|>\n") == 0) {
            cdcd_tokfile_writer_end_story(w);
            continue;
        }
        ids.n = 0;
        cdcd_tok_encode(tok, line, (size_t)len, &ids);
        cdcd_tokfile_writer_append(w, ids.ids, ids.n);
    }
    free(line);
    fclose(in);
    cdcd_tok_ids_free(&ids);
    EXPECT(cdcd_tokfile_writer_finish(w, err, sizeof err) == 0);
    cdcd_tokfile *f = cdcd_tokfile_open(path, tok, err, sizeof err);
    ASSERT(f);
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.wrap = 0;
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    ASSERT(b);
    int32_t *bi = malloc((size_t)o.batch_size * o.seq_len * sizeof *bi);
    uint8_t *bm = malloc((size_t)o.batch_size * o.seq_len);
    int64_t real, content = 0, rows = 0;
    int r;
    while ((r = cdcd_batch_next(b, bi, bm, &real)) > 0) {
        content += real - 2 * r;
        rows += r;
    }
    EXPECT(content == (int64_t)f->h.n_tokens);
    EXPECT(rows == (int64_t)cdcd_batch_num_examples(b));
    printf("# valid: %llu stories, %llu tokens, %lld windows of %d\n",
           (unsigned long long)f->h.n_stories, (unsigned long long)f->h.n_tokens,
           (long long)rows, o.seq_len);
    free(bi);
    free(bm);
    cdcd_batch_free(b);
    cdcd_tokfile_close(f);
}

int main(void) {
    char err[1024];
    tok = cdcd_tok_load(test_data_path(VOCAB_NAME), err, sizeof err);
    if (!tok) printf("  cannot load the vocabulary: %s\n", err);
    RUN(test_window_rows_and_one_pass);
    RUN(test_truncate_mode);
    RUN(test_shuffle_covers_each_example_once);
    RUN(test_determinism);
    RUN(test_state_restore);
    RUN(test_bad_options);
    RUN(test_valid_stories_end_to_end);
    cdcd_tok_free(tok);
    return test_summary();
}
