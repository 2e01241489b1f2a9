/* Where everything lives: the parameter binding (pointer fields at offsets into one
 * backend buffer) and the activation layout (buffers carved from one arena), both
 * expanded from the tables in model_internal.h. Offsets only: the same code lays out
 * host or device memory. */
#include <string.h>

#include "model_internal.h"


/* As the layout always did: float buffers of at least one element, int32 ones exact. */
static void *take(cdcd_arena *ar, size_t n, size_t elem, int is_float) {
    if (is_float) return cdcd_arena_floats(ar, n ? n : 1);
    return cdcd_arena_alloc(ar, n * elem);
}

void cdcd_model_head_vocab_split(const cdcd_model_config *c, int *blocks, int *width) {
    int V = c->vocab_size, nb = HEAD_VOCAB_BLOCKS;
    if (nb > (V + 15) / 16) nb = (V + 15) / 16;
    int w = (V + nb - 1) / nb;
    w = (w + 15) / 16 * 16;
    *width = w;
    *blocks = (V + w - 1) / w;
}

void cdcd_model_layout_acts(const cdcd_model_config *c, int Bm, int Tm, int train,
                            cdcd_arena *ar, acts *a, layer_acts *layers) {
    size_t N = (size_t)Bm * Tm, D = c->d_model, E = c->d_emb, C = c->cond_dim;
    size_t V = c->vocab_size, H = c->n_heads, IN = cdcd_model_in_dim(c);
    size_t TT = (size_t)Tm * Tm, KD = D > E ? D : E;
    size_t chunk = N < CE_CHUNK_ROWS ? N : CE_CHUNK_ROWS;
    int emb_head = c->head == CDCD_HEAD_EMBEDDING, prior = c->output_prior;
    int selfc = c->self_cond;
    int hblocks_i, hwidth_i;
    cdcd_model_head_vocab_split(c, &hblocks_i, &hwidth_i);
    size_t hblocks = (size_t)hblocks_i, hwidth = (size_t)hwidth_i;
    size_t hchunk = N < HEAD_CHUNK_ROWS ? N : HEAD_CHUNK_ROWS;
    size_t tiles = hblocks * HEAD_TILE_ROWS * hwidth; /* tile stride: full tiles */
    memset(a, 0, sizeof *a);
    /* floats take at least one element (an empty buffer still gets an address) */
#define TAKE_(type_, name_, n_, when_) \
    if (when_)                                                                    \
        dst->name_ = (type_ *)take(ar, (n_), sizeof(type_), _Generic((type_ *)0, float *: 1, default: 0));
    acts *dst = a;
    CDCD_ACTS_PRE(TAKE_)
    for (int l = 0; l < c->n_layers; l++) {
        layer_acts *dst = &layers[l];
        CDCD_LAYER_ACTS(TAKE_)
    }
    a->layers = layers;
    CDCD_ACTS_POST(TAKE_)
#undef TAKE_
}

void cdcd_model_bind_params(const cdcd_model_config *c, const cdcd_param_info *t,
                            float *base, param_ptrs *pp, block_ptrs *blocks) {
    int i = 0;
#define BIND_(n_, r_, c_, d_) dst->n_ = base + t[i++].offset;
    param_ptrs *dst = pp;
    CDCD_TENSORS_PRE(BIND_)
    for (int l = 0; l < c->n_layers; l++) {
        block_ptrs *dst = &blocks[l];
        CDCD_TENSORS_BLOCK(BIND_)
    }
    pp->blocks = blocks;
    CDCD_TENSORS_POST(BIND_)
#undef BIND_
}
