/* The whole model on the GPU against the CPU backend (issue 14): the same config and seed
 * give the same initial parameters (initialised on the host, uploaded); one forward-backward
 * on the same batch gives the loss, the per-sequence losses and every gradient tensor within
 * the TF32 tolerances below; one AdamW step moves the parameters the same way; a 20-step loss
 * curve stays together; and inference (the expected embedding, the entropy) agrees. Every
 * configuration the model has is covered: conditioning channels with a prompt mask, padding,
 * self-conditioning inputs, the embedding head and the logits head with the output prior.
 *
 * SKIP (never a pass) without the CUDA backend or a GPU. Tolerances: TF32 products carry
 * about 10 mantissa bits, so a gradient tensor is compared by its relative norm error
 * |g_gpu - g_cpu| / |g_cpu| <= GRAD_TOL; losses relatively to LOSS_TOL. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "model.h"
#include "rng.h"
#include "test.h"

#define MB 4
#define MT 32
#define MV 300
#define ME 16
#define LOSS_TOL 2e-3      /* relative, loss and per-sequence losses */
#define GRAD_TOL 1e-2      /* relative norm error per gradient tensor */
#define PARAM_TOL 1e-2     /* relative norm error of a tensor's AdamW update */
#define CURVE_TOL 3e-2     /* relative, each loss of the 20-step curve */
#define CURVE_STEPS 20

static int no_gpu(const char **why) {
    if (!cdcd_cuda_built()) *why = "this build has no CUDA backend (nvcc not found at build time)";
    else if (cdcd_cuda_device_count() == 0) *why = "no GPU: cdcd_cuda_device_count() is 0";
    else return 0;
    return 1;
}

static cdcd_model_config config(int head, int prior) {
    cdcd_model_config c;
    cdcd_model_config_default(&c);
    c.vocab_size = MV;
    c.d_emb = ME;
    c.d_model = 64;
    c.n_heads = 4;
    c.n_layers = 2;
    c.cond_dim = 16;
    c.max_seq_len = MT;
    c.cond_channels = 1;
    c.self_cond = 1;
    c.head = head;
    c.output_prior = prior;
    return c;
}

typedef struct {
    int32_t ids[MB * MT];
    uint8_t pad[MB * MT], cond[MB * MT], loss[MB * MT];
    float sigma[MB], noise[MB * MT * ME], self_cond[MB * MT * ME];
} batch_data;

static void make_batch(batch_data *d, uint64_t seed) {
    cdcd_rng r;
    cdcd_rng_init(&r, seed, 3);
    for (int i = 0; i < MB * MT; i++) {
        int t = i % MT, b = i / MT;
        d->ids[i] = (int32_t)cdcd_rng_below(&r, MV);
        d->pad[i] = t < MT - 3 * b; /* sequence b has 3b padded positions at its end */
        d->cond[i] = d->pad[i] && t < 4 && b % 2 == 0; /* a prompt on every other sequence */
        d->loss[i] = d->pad[i] && !d->cond[i];
    }
    for (int b = 0; b < MB; b++) d->sigma[b] = 0.3f + 4.0f * (float)b;
    cdcd_rng_fill_normal(&r, d->noise, MB * MT * ME, 1.0f);
    cdcd_rng_fill_normal(&r, d->self_cond, MB * MT * ME, 0.5f);
}

static cdcd_batch as_batch(batch_data *d, int with_self) {
    cdcd_batch b = {.B = MB, .T = MT, .ids = d->ids, .pad_mask = d->pad, .cond_mask = d->cond,
                    .loss_mask = d->loss, .sigma = d->sigma, .noise = d->noise,
                    .self_cond = with_self ? d->self_cond : NULL};
    return b;
}

/* |a - b| / |b| over n floats (|b| = 0: |a - b|). */
static double rel_norm_err(const float *a, const float *b, size_t n) {
    double d = 0, s = 0;
    for (size_t i = 0; i < n; i++) {
        d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
        s += (double)b[i] * b[i];
    }
    return s > 0 ? sqrt(d / s) : sqrt(d);
}

static float *read_all(cdcd_model *m, cdcd_model_buffer which) {
    size_t n = cdcd_model_param_count(m);
    float *v = malloc(n * sizeof *v);
    if (v && cdcd_model_read(m, which, 0, n, v) != 0) {
        free(v);
        return NULL;
    }
    return v;
}

/* Every tensor of buffer `which` within tol (relative norm error); prints the worst. */
static void expect_tensors_close(cdcd_model *gpu, cdcd_model *cpu, cdcd_model_buffer which, double tol,
                                 const char *what) {
    float *g = read_all(gpu, which), *c = read_all(cpu, which);
    ASSERT(g && c);
    double worst = 0;
    const char *worst_name = "";
    for (int i = 0; i < cdcd_model_num_tensors(cpu); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(cpu, i);
        double e = rel_norm_err(g + t->offset, c + t->offset, t->numel);
        if (e > worst) worst = e, worst_name = t->name;
        EXPECTF(e <= tol, "%s of %s: relative norm error %.3g > %.3g", what, t->name, e, tol);
    }
    printf("  %s: worst tensor %s, relative norm error %.3g\n", what, worst_name, worst);
    free(g);
    free(c);
}

/* One model pair on the same config and seed, checked through a training step. */
static void parity(int head, int prior) {
    cdcd_model_config c = config(head, prior);
    char err[256];
    cdcd_model *cpu = cdcd_model_create_on(&c, MB, MT, 2, 7, 0, CDCD_DEVICE_CPU, err, sizeof err);
    ASSERT(cpu != NULL);
    cdcd_model *gpu = cdcd_model_create_on(&c, MB, MT, 2, 7, 0, 0, err, sizeof err);
    EXPECTF(gpu != NULL, "GPU model: %s", err);
    if (!gpu) {
        cdcd_model_free(cpu);
        return;
    }
    EXPECT(strcmp(cdcd_model_backend_name(gpu), "cuda") == 0);
    float *p0 = read_all(gpu, CDCD_MODEL_PARAMS), *p1 = read_all(cpu, CDCD_MODEL_PARAMS);
    ASSERT(p0 && p1);
    EXPECTF(memcmp(p0, p1, cdcd_model_param_count(cpu) * sizeof(float)) == 0,
            "the initial parameters differ (they are made on the host and uploaded)");
    free(p0);
    free(p1);

    batch_data d;
    make_batch(&d, 1);
    cdcd_batch b = as_batch(&d, 1);
    float lc = 0, lg = 0, sc[MB], sg[MB];
    ASSERT(cdcd_model_forward_backward(cpu, &b, &lc, sc) == 0);
    EXPECTF(cdcd_model_forward_backward(gpu, &b, &lg, sg) == 0, "GPU forward-backward: %s",
            cdcd_model_error(gpu) ? cdcd_model_error(gpu) : "?");
    printf("  loss cpu %.6f gpu %.6f\n", lc, lg);
    EXPECTF(fabs(lg - lc) <= LOSS_TOL * fabs(lc), "loss %.6f vs %.6f", lg, lc);
    for (int i = 0; i < MB; i++) EXPECTF(fabs(sg[i] - sc[i]) <= LOSS_TOL * fabs(sc[i]) + 1e-6, "sequence %d loss %.6f vs %.6f", i, sg[i], sc[i]);
    expect_tensors_close(gpu, cpu, CDCD_MODEL_GRADS, GRAD_TOL, "gradient");

    cdcd_adamw_params op = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    float nc = cdcd_adamw_step(cpu, &op, 1), ng = cdcd_adamw_step(gpu, &op, 1);
    EXPECTF(fabsf(ng - nc) <= GRAD_TOL * nc, "grad norm %.6g vs %.6g", ng, nc);
    expect_tensors_close(gpu, cpu, CDCD_MODEL_ADAM_M, GRAD_TOL, "AdamW first moment");
    /* the parameters after one step: compare the updates (new - old), not the parameters,
     * whose size would hide a wrong step */
    cdcd_model *ref = cdcd_model_create_on(&c, MB, MT, 2, 7, 0, CDCD_DEVICE_CPU, err, sizeof err);
    ASSERT(ref != NULL);
    float *w0 = read_all(ref, CDCD_MODEL_PARAMS), *wc = read_all(cpu, CDCD_MODEL_PARAMS),
          *wg = read_all(gpu, CDCD_MODEL_PARAMS);
    ASSERT(w0 && wc && wg);
    for (int i = 0; i < cdcd_model_num_tensors(cpu); i++) {
        const cdcd_param_info *t = cdcd_model_tensor(cpu, i);
        for (size_t k = 0; k < t->numel; k++) {
            wc[t->offset + k] -= w0[t->offset + k];
            wg[t->offset + k] -= w0[t->offset + k];
        }
        double e = rel_norm_err(wg + t->offset, wc + t->offset, t->numel);
        EXPECTF(e <= PARAM_TOL, "AdamW update of %s: relative norm error %.3g", t->name, e);
    }
    free(w0);
    free(wc);
    free(wg);
    cdcd_model_free(ref);

    /* a short curve: new batches, the same on both */
    double worst = 0;
    for (int s = 2; s <= CURVE_STEPS + 1; s++) {
        make_batch(&d, (uint64_t)s);
        b = as_batch(&d, s % 2);
        cdcd_train_result rc, rg;
        ASSERT(cdcd_model_train_step(cpu, &b, &op, s, NULL, &rc) == 0);
        ASSERT(cdcd_model_train_step(gpu, &b, &op, s, NULL, &rg) == 0);
        double e = fabs(rg.loss - rc.loss) / fabs(rc.loss);
        if (e > worst) worst = e;
        EXPECTF(e <= CURVE_TOL, "step %d: loss %.6f vs %.6f", s, rg.loss, rc.loss);
    }
    printf("  %d-step curve: worst relative loss difference %.3g\n", CURVE_STEPS, worst);

    /* inference: the expected embedding and the entropy of the same noisy input */
    size_t N = (size_t)MB * MT;
    float *x = malloc(N * ME * sizeof *x), *x0c = malloc(N * ME * sizeof *x0c), *x0g = malloc(N * ME * sizeof *x0g);
    float *hc = malloc(N * sizeof *hc), *hg = malloc(N * sizeof *hg);
    ASSERT(x && x0c && x0g && hc && hg);
    cdcd_rng r;
    cdcd_rng_init(&r, 5, 1);
    cdcd_rng_fill_normal(&r, x, N * ME, 3.0f);
    cdcd_infer_input in = {.x = x, .sigma = d.sigma, .B = MB, .T = MT, .pad_mask = d.pad, .cond_ids = d.ids,
                           .cond_mask = d.cond, .self_cond = NULL, .guidance = 1.0f, .score_temp = 1.0f};
    cdcd_infer_output oc = {.x0 = x0c, .entropy = hc}, og = {.x0 = x0g, .entropy = hg};
    ASSERT(cdcd_model_infer(cpu, &in, &oc) == 0);
    ASSERT(cdcd_model_infer(gpu, &in, &og) == 0);
    double ex = rel_norm_err(x0g, x0c, N * ME), eh = rel_norm_err(hg, hc, N);
    printf("  inference: x0 relative norm error %.3g, entropy %.3g\n", ex, eh);
    EXPECTF(ex <= GRAD_TOL && eh <= GRAD_TOL, "inference differs: x0 %.3g, entropy %.3g", ex, eh);
    free(x);
    free(x0c);
    free(x0g);
    free(hc);
    free(hg);
    EXPECT(cdcd_model_error(gpu) == NULL);
    cdcd_model_free(gpu);
    cdcd_model_free(cpu);
}

TEST(test_model_cuda_embedding_head) {
    const char *why;
    if (no_gpu(&why)) SKIP("%s", why);
    parity(CDCD_HEAD_EMBEDDING, 0);
}

TEST(test_model_cuda_logits_head_with_prior) {
    const char *why;
    if (no_gpu(&why)) SKIP("%s", why);
    parity(CDCD_HEAD_LOGITS, 1);
}

/* A GPU that is not there is a clear error, never a crash or a silent CPU model. */
TEST(test_model_cuda_missing_device) {
    cdcd_model_config c = config(CDCD_HEAD_EMBEDDING, 0);
    char err[256] = "";
    cdcd_model *m = cdcd_model_create_on(&c, MB, MT, 1, 7, 0, CDCD_CUDA_MAX_DEVICES - 1, err, sizeof err);
    EXPECT(m == NULL);
    EXPECTF(strstr(err, "CUDA") != NULL || strstr(err, "cuda") != NULL || strstr(err, "GPU") != NULL, "%s", err);
    cdcd_model_free(m);
}

int main(void) {
    RUN(test_model_cuda_embedding_head);
    RUN(test_model_cuda_logits_head_with_prior);
    RUN(test_model_cuda_missing_device);
    return test_summary();
}
