/* The model's output vocabulary as a subset of the tokenizer's ids.
 *
 * bert-base-uncased has 30,522 ids; the TinyStories training split uses about 6,700 of
 * them, and the 30,522-way head is most of the training FLOPs of a small model. With
 * data.vocab = "corpus" the model's ids are the tokenizer ids that occur in the training
 * file plus the five specials, in increasing tokenizer-id order (so [PAD] = 0 stays 0);
 * any other id (in validation data or a prompt) becomes [UNK]. The map travels in the
 * checkpoint (section "vocab_map"): a checkpoint samples and decodes on its own.
 *
 * Serialised form (little-endian): u32 magic "VMAP", u32 version, i32 n_tokens,
 * i32 n_model, i32 unk_model, i32 reserved, i32 to_token[n_model]. */
#ifndef CDCD_VOCAB_MAP_H
#define CDCD_VOCAB_MAP_H

#include <stddef.h>
#include <stdint.h>

#include "tokfile.h"

#define CDCD_VMAP_MAGIC 0x50414d56u /* "VMAP" */
#define CDCD_VMAP_VERSION 1u
#define CDCD_VMAP_HEADER_BYTES 24

typedef struct cdcd_vocab_map {
    int n_tokens;      /* tokenizer ids are [0, n_tokens) */
    int n_model;       /* model ids are [0, n_model) */
    int unk_model;     /* model id of [UNK]: what an id outside the set becomes */
    int32_t *to_model; /* (n_tokens) */
    int32_t *to_token; /* (n_model), increasing */
} cdcd_vocab_map;

/* The ids of tf (every story) plus its five specials. NULL with a message in err. */
cdcd_vocab_map *cdcd_vmap_from_tokfile(const cdcd_tokfile *tf, char *err, size_t errlen);
void cdcd_vmap_free(cdcd_vocab_map *m);

/* Token id -> model id (outside [0, n_tokens) or unseen: [UNK]); NULL map = identity. */
static inline int32_t cdcd_vmap_to_model(const cdcd_vocab_map *m, int32_t id) {
    if (!m) return id;
    return id >= 0 && id < m->n_tokens ? m->to_model[id] : m->unk_model;
}
/* Model id -> token id; NULL map = identity. */
static inline int32_t cdcd_vmap_to_token(const cdcd_vocab_map *m, int32_t id) {
    if (!m) return id;
    return id >= 0 && id < m->n_model ? m->to_token[id] : m->to_token[m->unk_model];
}
/* In place over n ids. No-ops for a NULL map. */
void cdcd_vmap_ids_to_model(const cdcd_vocab_map *m, int32_t *ids, size_t n);
void cdcd_vmap_ids_to_token(const cdcd_vocab_map *m, int32_t *ids, size_t n);
/* Number of (validation) ids that the map sends to [UNK] though they are not [UNK]. */
size_t cdcd_vmap_count_unseen(const cdcd_vocab_map *m, const cdcd_tokfile *tf);

/* Serialised bytes of m: malloc'd into *out (length *len). 0 or -1 (no memory). */
int cdcd_vmap_serialise(const cdcd_vocab_map *m, void **out, size_t *len);
/* Parses a blob made by cdcd_vmap_serialise (magic, version, sizes and that to_token is
 * increasing and in range are checked). NULL with a message in err. */
cdcd_vocab_map *cdcd_vmap_deserialise(const void *blob, size_t len, char *err, size_t errlen);

#endif
