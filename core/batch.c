#include "check.h"
#include "batch.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rng.h"

#define DEFAULT_BATCH_SIZE 32
#define SPECIALS_PER_EXAMPLE 2 /* [CLS] and [SEP] */

struct cdcd_batcher {
    const cdcd_tokfile *f;
    cdcd_batch_opts o;
    uint64_t content;  /* C = L - 2 story tokens per example */
    uint64_t n_ex;
    uint64_t *ex_start; /* window mode: first example of each story, n_stories + 1 */
    uint32_t *perm;     /* shuffle: this epoch's order */
    uint64_t epoch, pos;
};


void cdcd_batch_opts_default(cdcd_batch_opts *o) {
    memset(o, 0, sizeof *o);
    o->batch_size = DEFAULT_BATCH_SIZE;
    o->seq_len = CDCD_BATCH_DEFAULT_SEQ_LEN;
    o->mode = CDCD_BATCH_WINDOW;
    o->shuffle = 1;
    o->wrap = 1;
}

/* The permutation of an epoch depends only on (seed, epoch), so restoring a position
 * needs nothing but those two numbers. */
static void make_perm(cdcd_batcher *b) {
    if (!b->perm) return;
    for (uint64_t i = 0; i < b->n_ex; i++) b->perm[i] = (uint32_t)i;
    cdcd_rng r;
    cdcd_rng_init(&r, b->o.seed, CDCD_BATCH_RNG_STREAM + b->epoch);
    cdcd_rng_shuffle_u32(&r, b->perm, (size_t)b->n_ex);
}

cdcd_batcher *cdcd_batch_create(const cdcd_tokfile *f, const cdcd_batch_opts *o, char *err,
                                size_t errlen) {
    cdcd_batcher *b = NULL;
    if (o->batch_size < 1) {
        cdcd_errf(err, errlen, "batch size %d: must be at least 1", o->batch_size);
        return NULL;
    }
    if (o->seq_len < CDCD_BATCH_MIN_SEQ_LEN || o->seq_len > CDCD_BATCH_MAX_SEQ_LEN) {
        cdcd_errf(err, errlen, "sequence length %d: must be in [%d, %d]", o->seq_len,
                CDCD_BATCH_MIN_SEQ_LEN, CDCD_BATCH_MAX_SEQ_LEN);
        return NULL;
    }
    if (o->mode != CDCD_BATCH_WINDOW && o->mode != CDCD_BATCH_TRUNCATE) {
        cdcd_errf(err, errlen, "data mode %d: must be window (%d) or truncate (%d)", o->mode,
                CDCD_BATCH_WINDOW, CDCD_BATCH_TRUNCATE);
        return NULL;
    }
    uint64_t ns = f->h.n_stories;
    if (ns == 0) {
        cdcd_errf(err, errlen, "token file %s holds no stories", f->path);
        return NULL;
    }
    b = calloc(1, sizeof *b);
    if (!b) goto oom;
    b->f = f;
    b->o = *o;
    b->content = (uint64_t)o->seq_len - SPECIALS_PER_EXAMPLE;
    if (o->mode == CDCD_BATCH_WINDOW) {
        b->ex_start = malloc((ns + 1) * sizeof *b->ex_start);
        if (!b->ex_start) goto oom;
        uint64_t e = 0;
        for (uint64_t s = 0; s < ns; s++) {
            b->ex_start[s] = e;
            e += (cdcd_tokfile_story_len(f, s) + b->content - 1) / b->content;
        }
        b->ex_start[ns] = e;
        b->n_ex = e;
    } else {
        b->n_ex = ns;
    }
    if (b->n_ex > UINT32_MAX) {
        cdcd_errf(err, errlen, "token file %s: %llu examples, more than the %u a permutation "
                "holds (use a longer sequence length)", f->path,
                (unsigned long long)b->n_ex, UINT32_MAX);
        goto fail;
    }
    if (o->shuffle) {
        b->perm = malloc(b->n_ex * sizeof *b->perm);
        if (!b->perm) goto oom;
    }
    make_perm(b);
    return b;
oom:
    cdcd_errf(err, errlen, "batch iterator: out of memory");
fail:
    cdcd_batch_free(b);
    return NULL;
}

void cdcd_batch_free(cdcd_batcher *b) {
    if (!b) return;
    free(b->ex_start);
    free(b->perm);
    free(b);
}

/* Writes example e into one row; returns its real-token count. */
static int64_t fill_row(const cdcd_batcher *b, uint64_t e, int32_t *ids, uint8_t *mask) {
    const cdcd_tokfile *f = b->f;
    uint64_t story = e, start = 0;
    if (b->ex_start) {
        /* the last story whose first example is <= e */
        uint64_t lo = 0, hi = f->h.n_stories;
        while (hi - lo > 1) {
            uint64_t mid = lo + (hi - lo) / 2;
            if (b->ex_start[mid] <= e) lo = mid;
            else hi = mid;
        }
        story = lo;
        start = (e - b->ex_start[lo]) * b->content;
    }
    uint64_t len = cdcd_tokfile_story_len(f, story) - start;
    if (len > b->content) len = b->content;
    const uint16_t *src = cdcd_tokfile_story(f, story) + start;
    size_t L = (size_t)b->o.seq_len, n = (size_t)len;
    ids[0] = f->h.cls_id;
    for (size_t i = 0; i < n; i++) ids[1 + i] = src[i];
    ids[1 + n] = f->h.sep_id;
    for (size_t i = n + 2; i < L; i++) ids[i] = f->h.pad_id;
    memset(mask, 1, n + 2);
    memset(mask + n + 2, 0, L - n - 2);
    return (int64_t)n + SPECIALS_PER_EXAMPLE;
}

int cdcd_batch_next(cdcd_batcher *b, int32_t *ids, uint8_t *mask, int64_t *n_real) {
    size_t L = (size_t)b->o.seq_len;
    int rows = 0;
    int64_t real = 0;
    while (rows < b->o.batch_size) {
        if (b->pos == b->n_ex) {
            if (!b->o.wrap) break;
            b->epoch++;
            b->pos = 0;
            make_perm(b);
        }
        uint64_t e = b->perm ? b->perm[b->pos] : b->pos;
        b->pos++;
        real += fill_row(b, e, ids + (size_t)rows * L, mask + (size_t)rows * L);
        rows++;
    }
    if (n_real) *n_real = real;
    return rows;
}

void cdcd_batch_reset(cdcd_batcher *b) {
    int new_epoch = b->epoch != 0;
    b->epoch = 0;
    b->pos = 0;
    if (new_epoch) make_perm(b);
}

uint64_t cdcd_batch_num_examples(const cdcd_batcher *b) { return b->n_ex; }
uint64_t cdcd_batch_epoch(const cdcd_batcher *b) { return b->epoch; }

void cdcd_batch_get_state(const cdcd_batcher *b, cdcd_batch_state *s) {
    memset(s, 0, sizeof *s);
    s->version = CDCD_BATCH_STATE_VERSION;
    s->seq_len = b->o.seq_len;
    s->mode = b->o.mode;
    s->shuffle = b->o.shuffle;
    s->seed = b->o.seed;
    s->epoch = b->epoch;
    s->pos = b->pos;
    s->n_examples = b->n_ex;
    s->data_checksum = b->f->h.data_checksum;
}

int cdcd_batch_set_state(cdcd_batcher *b, const cdcd_batch_state *s, char *err, size_t errlen) {
    if (s->version != CDCD_BATCH_STATE_VERSION) {
        cdcd_errf(err, errlen, "batch state version %u, expected %d", s->version,
                CDCD_BATCH_STATE_VERSION);
        return -1;
    }
    if (s->data_checksum != b->f->h.data_checksum || s->n_examples != b->n_ex) {
        cdcd_errf(err, errlen, "batch state is for another token file (%llu examples, data "
                "checksum %016llx; %s has %llu, %016llx)", (unsigned long long)s->n_examples,
                (unsigned long long)s->data_checksum, b->f->path,
                (unsigned long long)b->n_ex, (unsigned long long)b->f->h.data_checksum);
        return -1;
    }
    if (s->seq_len != b->o.seq_len || s->mode != b->o.mode || s->shuffle != b->o.shuffle ||
        s->seed != b->o.seed) {
        cdcd_errf(err, errlen, "batch state is for seq_len %d, mode %d, shuffle %d, seed %llu; "
                "this iterator has %d, %d, %d, %llu", s->seq_len, s->mode, s->shuffle,
                (unsigned long long)s->seed, b->o.seq_len, b->o.mode, b->o.shuffle,
                (unsigned long long)b->o.seed);
        return -1;
    }
    if (s->pos > b->n_ex) {
        cdcd_errf(err, errlen, "batch state position %llu is past the %llu examples",
                (unsigned long long)s->pos, (unsigned long long)b->n_ex);
        return -1;
    }
    int new_epoch = s->epoch != b->epoch;
    b->epoch = s->epoch;
    b->pos = s->pos;
    if (new_epoch) make_perm(b);
    return 0;
}
