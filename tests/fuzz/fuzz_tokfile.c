/* Fuzz target: the token-file reader (core/tokfile.c) and the batch iterator that reads
 * what it maps (core/batch.c), the way the trainer uses them (open without a tokenizer,
 * no verify; `cdcd prep` verifies).
 *
 * The input is the file, written to an in-memory file (the reader takes a path and
 * mmaps). It is read twice: as it is, and with its two FNV-1a checksums (header and data)
 * recomputed, so that mutations get past them to the size, offset and id checks behind.
 * Invariants: an open file's stories lie inside its ids and are non-empty; batches hold
 * [CLS] ... [SEP] [PAD]... with the mask on exactly the non-padding positions; a state
 * taken from an iterator restores on a new one over the same file. */
#include "batch.h"
#include "fuzz.h"
#include "tokfile.h"

static fuzz_file file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    fuzz_file_open(&file, "fuzz.tok");
    return 0;
}

/* FNV-1a over little-endian 64-bit words, as the data checksum is made. */
static uint64_t fnv_words(uint64_t h, const uint8_t *p, size_t n) {
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
    }
    return h;
}

static void batches(const cdcd_tokfile *f, int B, int L, int mode, int shuffle, int wrap) {
    cdcd_batch_opts o;
    cdcd_batch_opts_default(&o);
    o.batch_size = B;
    o.seq_len = L;
    o.mode = mode;
    o.shuffle = shuffle;
    o.wrap = wrap;
    o.seed = 7;
    char err[512];
    cdcd_batcher *b = cdcd_batch_create(f, &o, err, sizeof err);
    if (!b) return;
    int32_t *ids = calloc((size_t)B * L, sizeof *ids);
    uint8_t *mask = calloc((size_t)B * L, 1);
    if (!ids || !mask) abort();
    const cdcd_tokfile_header *h = &f->h;
    for (int k = 0; k < 4; k++) {
        int64_t n_real = -1;
        int rows = cdcd_batch_next(b, ids, mask, &n_real);
        FUZZ_ASSERT(rows >= 0 && rows <= B);
        if (wrap) FUZZ_ASSERT(rows == B);
        int64_t ones = 0;
        for (int r = 0; r < rows; r++) {
            const int32_t *row = ids + (size_t)r * L;
            const uint8_t *m = mask + (size_t)r * L;
            FUZZ_ASSERT(row[0] == h->cls_id && m[0] == 1);
            int j = 1;
            while (j < L && m[j]) j++;
            FUZZ_ASSERT(j >= 2 && row[j - 1] == h->sep_id);
            for (int q = j; q < L; q++) FUZZ_ASSERT(m[q] == 0 && row[q] == h->pad_id);
            ones += j;
        }
        FUZZ_ASSERT(n_real == ones);
        if (rows < B) break;
    }
    cdcd_batch_state st;
    cdcd_batch_get_state(b, &st);
    cdcd_batcher *b2 = cdcd_batch_create(f, &o, err, sizeof err);
    FUZZ_ASSERT(b2);
    FUZZ_ASSERT(cdcd_batch_set_state(b2, &st, err, sizeof err) == 0);
    st.n_examples++;
    FUZZ_ASSERT(cdcd_batch_set_state(b2, &st, err, sizeof err) == -1);
    cdcd_batch_free(b2);
    cdcd_batch_free(b);
    free(ids);
    free(mask);
}

static void read_file(const uint8_t *data, size_t size) {
    fuzz_file_write(&file, data, size);
    char err[512];
    cdcd_tokfile *f = cdcd_tokfile_open(file.path, NULL, err, sizeof err);
    if (!f) return;
    const cdcd_tokfile_header *h = &f->h;
    FUZZ_ASSERT(h->file_bytes == size);
    FUZZ_ASSERT(f->offsets[0] == 0 && f->offsets[h->n_stories] == h->n_tokens);
    for (uint64_t i = 0; i < h->n_stories; i++) {
        FUZZ_ASSERT(cdcd_tokfile_story_len(f, i) >= 1);
        FUZZ_ASSERT(f->offsets[i + 1] <= h->n_tokens);
    }
    (void)cdcd_tokfile_verify(f, err, sizeof err);
    batches(f, 2, 5, CDCD_BATCH_WINDOW, 1, 1);
    batches(f, 3, 3, CDCD_BATCH_TRUNCATE, 0, 0);
    batches(f, 1, 64, CDCD_BATCH_WINDOW, 0, 0);
    cdcd_tokfile_close(f);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    read_file(data, size);
    if (size < CDCD_TOKFILE_HEADER_BYTES) return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed) abort();
    memcpy(fixed, data, size);
    cdcd_tokfile_header h;
    memcpy(&h, fixed, sizeof h);
    if (h.ids_off <= size) h.data_checksum = fnv_words(FUZZ_FNV_OFFSET, fixed + h.ids_off, size - h.ids_off);
    h.header_checksum = fuzz_fnv1a(FUZZ_FNV_OFFSET, &h, CDCD_TOKFILE_HEADER_BYTES - 8);
    memcpy(fixed, &h, sizeof h);
    read_file(fixed, size);
    free(fixed);
    return 0;
}
