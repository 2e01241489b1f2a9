/* The CPU backend's embedding-side kernels (backend.h): the unit embedding table and its
 * gradient, the noisy input and input channels and their gradient into the table, the
 * time features, the embedding head's preconditioning, the output prior's scale, and the
 * guidance mix. */
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("tree-loop-vectorize", "vect-cost-model=dynamic", "no-trapping-math")
#endif

#include <math.h>
#include <string.h>

#include "backend_cpu_internal.h"
#include "ops.h"

typedef struct {
    float *etab, *enorm, *demb;
    const float *emb, *detab, *cenorm;
    int E;
} table_ctx;

static void etab_range(void *vctx, size_t lo, size_t hi) {
    const table_ctx *c = vctx;
    int E = c->E;
    for (size_t v = lo; v < hi; v++)
        c->enorm[v] = cdcd_ops_l2norm_forward(c->etab + v * E, c->emb + v * E, E, 1.0f);
}

void cpu_unit_embed_forward(cdcd_backend *be, float *etab, float *enorm, const float *emb, int V,
                            int E) {
    table_ctx c = {.etab = etab, .enorm = enorm, .emb = emb, .E = E};
    cdcd_pool_for(cpu_of(be)->pool, (size_t)V, CPU_VOCAB_GRAIN, etab_range, &c);
}

static void demb_range(void *vctx, size_t lo, size_t hi) {
    const table_ctx *c = vctx;
    int E = c->E;
    for (size_t v = lo; v < hi; v++)
        cdcd_ops_l2norm_backward(c->demb + v * E, c->detab + v * E, c->emb + v * E, c->cenorm[v],
                                 E, 1.0f);
}

void cpu_unit_embed_backward(cdcd_backend *be, float *demb, const float *detab, const float *emb,
                             const float *enorm, int V, int E) {
    table_ctx c = {.demb = demb, .detab = detab, .emb = emb, .cenorm = enorm, .E = E};
    cdcd_pool_for(cpu_of(be)->pool, (size_t)V, CPU_VOCAB_GRAIN, demb_range, &c);
}

/* ---- inputs */

typedef struct {
    float *x;
    const float *etab, *noise, *sigma;
    const int32_t *ids;
    int T, E;
} noisy_ctx;

static void noisy_range(void *vctx, size_t lo, size_t hi) {
    const noisy_ctx *c = vctx;
    int E = c->E;
    float se = sqrtf((float)E);
    for (size_t n = lo; n < hi; n++) {
        const float *e = c->etab + (size_t)c->ids[n] * E;
        const float *eps = c->noise + n * E;
        float s = c->sigma[n / c->T];
        float *x = c->x + n * E;
        for (int i = 0; i < E; i++) x[i] = se * e[i] + s * eps[i];
    }
}

void cpu_noisy_input(cdcd_backend *be, float *x, const float *etab, const int32_t *ids,
                     const float *noise, const float *sigma, int B, int T, int E) {
    noisy_ctx c = {x, etab, noise, sigma, ids, T, E};
    cdcd_pool_for(cpu_of(be)->pool, (size_t)B * T, CPU_ROW_GRAIN, noisy_range, &c);
}

static void chan_range(void *vctx, size_t lo, size_t hi) {
    const cdcd_backend_channels *c = vctx;
    int E = c->E, in_dim = c->in_dim;
    float se = sqrtf((float)E);
    for (size_t n = lo; n < hi; n++) {
        float *ch = c->chan + n * in_dim;
        const float *x = c->x + n * E;
        int cond = c->cond_mask && c->cond_mask[n];
        float s = c->sigma[n / c->T];
        float c_in = 1.0f / sqrtf(1.0f + s * s);
        int off = 0;
        if (cond)
            memset(ch, 0, sizeof(float) * E);
        else
            for (int i = 0; i < E; i++) ch[i] = c_in * x[i];
        off = E;
        if (c->cond_channels) {
            if (cond) {
                const float *e = c->etab + (size_t)c->cond_ids[n] * E;
                for (int i = 0; i < E; i++) ch[off + i] = se * e[i];
            } else {
                memset(ch + off, 0, sizeof(float) * E);
            }
            ch[off + E] = cond ? 1.0f : 0.0f;
            off += E + 1;
        }
        if (c->self_cond_slot) {
            if (c->self_cond)
                memcpy(ch + off, c->self_cond + n * E, sizeof(float) * E);
            else
                memset(ch + off, 0, sizeof(float) * E);
        }
    }
}

void cpu_input_channels(cdcd_backend *be, const cdcd_backend_channels *a) {
    cdcd_pool_for(cpu_of(be)->pool, (size_t)a->B * a->T, CPU_ROW_GRAIN, chan_range, (void *)a);
}

/* One pass in row order on the calling thread: the scatter into detab adds the rows of a
 * token in a fixed order, so the sum is the same for any thread count. */
void cpu_embed_backward(cdcd_backend *be, const cdcd_backend_embed_grad *a) {
    (void)be;
    int E = a->E;
    size_t N = (size_t)a->B * a->T;
    float se = sqrtf((float)E);
    for (size_t n = 0; n < N; n++) {
        float s = a->sigma[n / a->T];
        float c_in = 1.0f / sqrtf(1.0f + s * s);
        int cond = a->cond_mask && a->cond_mask[n];
        const float *dch = a->dchan + n * a->in_dim;
        float *de = a->de + n * E;
        if (cond && a->cond_channels)
            for (int i = 0; i < E; i++) de[i] = dch[E + i];
        else if (cond)
            for (int i = 0; i < E; i++) de[i] = 0.0f;
        else
            for (int i = 0; i < E; i++) de[i] = c_in * dch[i];
        if (a->dDx) {
            float c_skip = 1.0f / (1.0f + s * s);
            for (int i = 0; i < E; i++) de[i] += c_skip * a->dDx[n * E + i];
        }
        if (a->dxprior) /* x = e_ids + sigma eps feeds the prior's logits too */
            for (int i = 0; i < E; i++) de[i] += a->dxprior[n * E + i];
        float *dt = a->detab + (size_t)a->ids[n] * E;
        for (int i = 0; i < E; i++) dt[i] += se * de[i];
    }
}

/* ---- time features, preconditioning, prior, guidance: O(N E) or less, on the caller */

void cpu_time_fourier(cdcd_backend *be, float *fourier, const float *sigma, const float *freqs,
                      int B, int C) {
    (void)be;
    int K = C / 2;
    for (int b = 0; b < B; b++) {
        float cn = logf(sigma[b]) / 4.0f;
        for (int k = 0; k < K; k++) {
            float arg = freqs[k] * cn;
            fourier[(size_t)b * C + 2 * k] = sinf(arg);
            fourier[(size_t)b * C + 2 * k + 1] = cosf(arg);
        }
    }
}

void cpu_precondition(cdcd_backend *be, float *Dx, const float *x, const float *F,
                      const float *sigma, int B, int T, int E) {
    (void)be;
    size_t N = (size_t)B * T;
    for (size_t n = 0; n < N; n++) {
        float s = sigma[n / T];
        float c_skip = 1.0f / (1.0f + s * s), c_out = s / sqrtf(1.0f + s * s);
        for (int i = 0; i < E; i++) Dx[n * E + i] = c_skip * x[n * E + i] + c_out * F[n * E + i];
    }
}

void cpu_precondition_backward(cdcd_backend *be, float *dF, const float *dDx, const float *sigma,
                               int B, int T, int E) {
    (void)be;
    size_t N = (size_t)B * T;
    for (size_t n = 0; n < N; n++) {
        float s = sigma[n / T];
        float c_out = s / sqrtf(1.0f + s * s);
        for (int i = 0; i < E; i++) dF[n * E + i] = c_out * dDx[n * E + i];
    }
}

void cpu_prior_scale(cdcd_backend *be, float *scale, float *xs, const float *x,
                     const float *sigma, int B, int T, int E) {
    (void)be;
    size_t N = (size_t)B * T;
    float se = sqrtf((float)E);
    for (size_t n = 0; n < N; n++) {
        float s = sigma[n / T];
        scale[n] = se / (s * s);
    }
    if (!xs) return;
    for (size_t n = 0; n < N; n++) {
        float sc = scale[n];
        for (int i = 0; i < E; i++) xs[n * E + i] = sc * x[n * E + i];
    }
}

typedef struct {
    float *dst;
    const float *cond;
    float gamma;
} guide_ctx;

static void guide_range(void *vctx, size_t lo, size_t hi) {
    const guide_ctx *c = vctx;
    for (size_t i = lo; i < hi; i++) c->dst[i] = c->dst[i] + c->gamma * (c->cond[i] - c->dst[i]);
}

void cpu_guide_mix(cdcd_backend *be, float *dst, const float *cond, float gamma, size_t n) {
    guide_ctx c = {dst, cond, gamma};
    cdcd_pool_for(cpu_of(be)->pool, n, 4096, guide_range, &c);
}
