/* Batch iterator over a token file: fixed-shape (B, L) batches of examples
 * [CLS] tokens [SEP] [PAD]..., with a pad mask, shuffled per epoch from a seed.
 *
 * Examples. With C = L - 2 content positions, a story of n tokens gives
 *   window   (default): ceil(n / C) examples, tokens [0, C), [C, 2C), ... so no text is
 *            lost; every window has its own [CLS] and [SEP];
 *   truncate:  one example, tokens [0, min(n, C)) (the seed project's behaviour).
 * Examples are numbered story by story, window by window.
 *
 * Order. shuffle = 1: epoch e visits the examples in a permutation drawn from
 * cdcd_rng_init(seed, CDCD_BATCH_RNG_STREAM + e), so it depends only on (seed, e).
 * shuffle = 0: file order. wrap = 1 (training): the stream is endless and a batch may
 * straddle two epochs; wrap = 0 (validation): one pass, the last batch may be short and
 * then cdcd_batch_next returns 0.
 *
 * Position. The whole position is (epoch, pos): cdcd_batch_get_state() copies it with
 * enough identification to refuse a different file or shape on restore, into a POD
 * struct a checkpoint can store as bytes. After set_state, batches continue exactly as
 * they would have. */
#ifndef CDCD_BATCH_H
#define CDCD_BATCH_H

#include <stddef.h>
#include <stdint.h>

#include "tokfile.h"

#define CDCD_BATCH_DEFAULT_SEQ_LEN 128
#define CDCD_BATCH_MIN_SEQ_LEN 3 /* [CLS] + one token + [SEP] */
#define CDCD_BATCH_MAX_SEQ_LEN 65536
#define CDCD_BATCH_RNG_STREAM 0x6261746368000000ull /* "batch": epoch e uses stream + e */
#define CDCD_BATCH_STATE_VERSION 1

/* Same values as cdcd_data_mode in runconfig.h. */
#define CDCD_BATCH_WINDOW 0
#define CDCD_BATCH_TRUNCATE 1

typedef struct {
    int batch_size; /* B >= 1 */
    int seq_len;    /* L, CDCD_BATCH_MIN_SEQ_LEN..CDCD_BATCH_MAX_SEQ_LEN */
    int mode;       /* CDCD_BATCH_WINDOW or CDCD_BATCH_TRUNCATE */
    int shuffle;    /* 1: a new permutation each epoch */
    int wrap;       /* 1: endless; 0: one pass */
    uint64_t seed;
} cdcd_batch_opts;

/* B 32, L 128, window, shuffle, wrap, seed 0. */
void cdcd_batch_opts_default(cdcd_batch_opts *o);

/* The iterator's position: plain data, fixed-width fields, no pointers. */
typedef struct {
    uint32_t version;      /* CDCD_BATCH_STATE_VERSION */
    int32_t seq_len;
    int32_t mode;
    int32_t shuffle;
    uint64_t seed;
    uint64_t epoch;        /* epochs completed */
    uint64_t pos;          /* examples consumed in the current epoch */
    uint64_t n_examples;   /* examples per epoch (identifies file + shape) */
    uint64_t data_checksum; /* of the token file */
} cdcd_batch_state;

typedef struct cdcd_batcher cdcd_batcher;

/* The iterator reads f (which must outlive it). NULL with a message in err: bad options,
 * a file without stories, more than 2^32 - 1 examples. */
cdcd_batcher *cdcd_batch_create(const cdcd_tokfile *f, const cdcd_batch_opts *o, char *err,
                                size_t errlen);
void cdcd_batch_free(cdcd_batcher *b);

/* Fills the next batch: ids (B, L) int32 row-major, mask (B, L) uint8 (1 = real token:
 * [CLS], the story tokens and [SEP]). n_real (may be NULL) receives the number of 1s.
 * Returns the number of rows filled: B, fewer for the last batch of a one-pass iterator
 * (rows after it are left untouched), 0 when a one-pass iterator is done. */
int cdcd_batch_next(cdcd_batcher *b, int32_t *ids, uint8_t *mask, int64_t *n_real);

/* Back to the start of epoch 0. */
void cdcd_batch_reset(cdcd_batcher *b);

uint64_t cdcd_batch_num_examples(const cdcd_batcher *b);
uint64_t cdcd_batch_epoch(const cdcd_batcher *b);

void cdcd_batch_get_state(const cdcd_batcher *b, cdcd_batch_state *s);
/* Restores a position taken from an iterator over the same file with the same seq_len,
 * mode, shuffle and seed. 0, or -1 with a message (nothing changed). */
int cdcd_batch_set_state(cdcd_batcher *b, const cdcd_batch_state *s, char *err, size_t errlen);

#endif
