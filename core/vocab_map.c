/* See vocab_map.h. */
#include "vocab_map.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static cdcd_vocab_map *vmap_alloc(int n_tokens, int n_model) {
    cdcd_vocab_map *m = calloc(1, sizeof *m);
    if (!m) return NULL;
    m->n_tokens = n_tokens;
    m->n_model = n_model;
    m->to_model = malloc(sizeof(int32_t) * (size_t)n_tokens);
    m->to_token = malloc(sizeof(int32_t) * (size_t)(n_model > 0 ? n_model : 1));
    if (!m->to_model || !m->to_token) {
        cdcd_vmap_free(m);
        return NULL;
    }
    return m;
}

void cdcd_vmap_free(cdcd_vocab_map *m) {
    if (!m) return;
    free(m->to_model);
    free(m->to_token);
    free(m);
}

/* Fills to_model from to_token (every other id -> unk_model). -1 when [UNK] is absent. */
static int vmap_index(cdcd_vocab_map *m, int32_t unk_token) {
    for (int i = 0; i < m->n_tokens; i++) m->to_model[i] = -1;
    for (int k = 0; k < m->n_model; k++) m->to_model[m->to_token[k]] = k;
    if (unk_token < 0 || unk_token >= m->n_tokens || m->to_model[unk_token] < 0) return -1;
    m->unk_model = m->to_model[unk_token];
    for (int i = 0; i < m->n_tokens; i++)
        if (m->to_model[i] < 0) m->to_model[i] = m->unk_model;
    return 0;
}

cdcd_vocab_map *cdcd_vmap_from_tokfile(const cdcd_tokfile *tf, char *err, size_t errlen) {
    int V = (int)tf->h.vocab_size;
    uint8_t *seen = calloc((size_t)V, 1);
    if (!seen) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    for (uint64_t i = 0; i < tf->h.n_tokens; i++) {
        if (tf->ids[i] >= V) {
            snprintf(err, errlen, "%s: token id %u outside the %d-id vocabulary", tf->path,
                     (unsigned)tf->ids[i], V);
            free(seen);
            return NULL;
        }
        seen[tf->ids[i]] = 1;
    }
    const int32_t specials[] = {tf->h.pad_id, tf->h.unk_id, tf->h.cls_id, tf->h.sep_id, tf->h.mask_id};
    for (size_t k = 0; k < sizeof specials / sizeof specials[0]; k++) {
        if (specials[k] < 0 || specials[k] >= V) {
            snprintf(err, errlen, "%s: special id %d outside the vocabulary", tf->path, (int)specials[k]);
            free(seen);
            return NULL;
        }
        seen[specials[k]] = 1;
    }
    int n = 0;
    for (int i = 0; i < V; i++) n += seen[i];
    cdcd_vocab_map *m = vmap_alloc(V, n);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        free(seen);
        return NULL;
    }
    n = 0;
    for (int i = 0; i < V; i++)
        if (seen[i]) m->to_token[n++] = i;
    free(seen);
    vmap_index(m, tf->h.unk_id); /* [UNK] is in the set: cannot fail */
    return m;
}

void cdcd_vmap_ids_to_model(const cdcd_vocab_map *m, int32_t *ids, size_t n) {
    if (!m) return;
    for (size_t i = 0; i < n; i++) ids[i] = cdcd_vmap_to_model(m, ids[i]);
}

void cdcd_vmap_ids_to_token(const cdcd_vocab_map *m, int32_t *ids, size_t n) {
    if (!m) return;
    for (size_t i = 0; i < n; i++) ids[i] = cdcd_vmap_to_token(m, ids[i]);
}

size_t cdcd_vmap_count_unseen(const cdcd_vocab_map *m, const cdcd_tokfile *tf) {
    if (!m) return 0;
    size_t c = 0;
    for (uint64_t i = 0; i < tf->h.n_tokens; i++)
        c += tf->ids[i] != tf->h.unk_id && cdcd_vmap_to_model(m, tf->ids[i]) == m->unk_model;
    return c;
}

int cdcd_vmap_serialise(const cdcd_vocab_map *m, void **out, size_t *len) {
    size_t n = CDCD_VMAP_HEADER_BYTES + sizeof(int32_t) * (size_t)m->n_model;
    uint8_t *b = malloc(n);
    if (!b) return -1;
    uint32_t hdr[2] = {CDCD_VMAP_MAGIC, CDCD_VMAP_VERSION};
    int32_t dims[4] = {m->n_tokens, m->n_model, m->unk_model, 0};
    memcpy(b, hdr, sizeof hdr);
    memcpy(b + sizeof hdr, dims, sizeof dims);
    memcpy(b + CDCD_VMAP_HEADER_BYTES, m->to_token, sizeof(int32_t) * (size_t)m->n_model);
    *out = b;
    *len = n;
    return 0;
}

cdcd_vocab_map *cdcd_vmap_deserialise(const void *blob, size_t len, char *err, size_t errlen) {
    const uint8_t *b = blob;
    uint32_t hdr[2];
    int32_t dims[4];
    if (len < CDCD_VMAP_HEADER_BYTES) {
        snprintf(err, errlen, "vocabulary map: truncated");
        return NULL;
    }
    memcpy(hdr, b, sizeof hdr);
    memcpy(dims, b + sizeof hdr, sizeof dims);
    if (hdr[0] != CDCD_VMAP_MAGIC || hdr[1] != CDCD_VMAP_VERSION) {
        snprintf(err, errlen, "vocabulary map: bad magic or version %u", hdr[1]);
        return NULL;
    }
    int n_tokens = dims[0], n_model = dims[1];
    if (n_tokens < 2 || n_tokens > CDCD_TOKFILE_MAX_VOCAB || n_model < 1 || n_model > n_tokens ||
        len != CDCD_VMAP_HEADER_BYTES + sizeof(int32_t) * (size_t)n_model) {
        snprintf(err, errlen, "vocabulary map: sizes %d/%d do not match its %zu bytes", n_model, n_tokens, len);
        return NULL;
    }
    cdcd_vocab_map *m = vmap_alloc(n_tokens, n_model);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(m->to_token, b + CDCD_VMAP_HEADER_BYTES, sizeof(int32_t) * (size_t)n_model);
    for (int k = 0; k < n_model; k++) {
        if (m->to_token[k] < 0 || m->to_token[k] >= n_tokens || (k && m->to_token[k] <= m->to_token[k - 1])) {
            snprintf(err, errlen, "vocabulary map: entry %d is out of order or range", k);
            cdcd_vmap_free(m);
            return NULL;
        }
    }
    if (dims[2] < 0 || dims[2] >= n_model || vmap_index(m, m->to_token[dims[2]]) != 0) {
        snprintf(err, errlen, "vocabulary map: bad [UNK] entry");
        cdcd_vmap_free(m);
        return NULL;
    }
    return m;
}
