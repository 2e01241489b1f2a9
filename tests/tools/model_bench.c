/* model_bench: training throughput of the C model on random tokens (no data files needed),
 * and a short training run whose loss is printed (a sanity check that training moves).
 *
 *   model_bench [--preset tiny] [--batch 32] [--seq 128] [--threads 2] [--steps 5]
 *               [--warmup 1] [--vocab V] [--lr 1e-3] [--self-cond-share 0]
 *
 * Prints the model's parameter count and memory, then per step the loss, grad norm and
 * milliseconds, then "tokens/s" = batch * seq / median step time (every position is a real
 * token and in the loss, no conditioning). --self-cond-share p adds the trainer's no-grad
 * x0 pass on the first p * batch sequences (needs a self_cond model: it switches it on). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blas.h"
#include "clock.h"
#include "flops.h"
#include "model.h"
#include "rng.h"

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    cdcd_blas_ensure_kernel(argc, argv);
    const char *preset = "tiny";
    int B = 32, T = 128, threads = 2, steps = 5, warmup = 1, vocab = 0;
    float lr = 1e-3f, sc_share = 0.0f;
    for (int i = 1; i < argc; i++) {
        if (i + 1 >= argc) goto usage;
        if (strcmp(argv[i], "--preset") == 0) preset = argv[++i];
        else if (strcmp(argv[i], "--batch") == 0) B = atoi(argv[++i]);
        else if (strcmp(argv[i], "--seq") == 0) T = atoi(argv[++i]);
        else if (strcmp(argv[i], "--threads") == 0) threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--steps") == 0) steps = atoi(argv[++i]);
        else if (strcmp(argv[i], "--warmup") == 0) warmup = atoi(argv[++i]);
        else if (strcmp(argv[i], "--vocab") == 0) vocab = atoi(argv[++i]);
        else if (strcmp(argv[i], "--lr") == 0) lr = (float)atof(argv[++i]);
        else if (strcmp(argv[i], "--self-cond-share") == 0) sc_share = (float)atof(argv[++i]);
        else goto usage;
    }
    cdcd_model_config c;
    if (cdcd_model_preset(preset, &c) != 0) {
        fprintf(stderr, "unknown preset %s\n", preset);
        return 1;
    }
    if (vocab > 0) c.vocab_size = vocab;
    if (sc_share > 0) c.self_cond = 1;
    char err[256];
    cdcd_model *m = cdcd_model_create(&c, B, T, threads, 1, err, sizeof err);
    if (!m) {
        fprintf(stderr, "model_bench: %s\n", err);
        return 1;
    }
    cdcd_model_memory mem;
    cdcd_model_memory_report(m, &mem);
    printf("%s: %zu parameters; MB params %.1f grads %.1f adam %.1f activations %.1f total %.1f; "
           "batch %d x %d, %d threads, BLAS kernel %s\n",
           preset, cdcd_model_param_count(m), mem.params / 1e6, mem.grads / 1e6, mem.adam / 1e6,
           mem.activations / 1e6, mem.total / 1e6, B, T, threads, cdcd_blas_core_name());
    size_t N = (size_t)B * T, E = c.d_emb;
    int32_t *ids = malloc(N * sizeof *ids);
    uint8_t *pad = malloc(N), *lm = malloc(N);
    float *sigma = malloc(B * sizeof *sigma), *noise = malloc(N * E * sizeof *noise);
    float *x0 = calloc(N * E, sizeof *x0);
    cdcd_rng r;
    cdcd_rng_init(&r, 5, 5);
    cdcd_adamw_params o = {lr, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    double *ms = malloc((size_t)(steps > 0 ? steps : 1) * sizeof *ms);
    for (int s = -warmup; s < steps; s++) {
        for (size_t n = 0; n < N; n++) {
            ids[n] = (int32_t)cdcd_rng_below(&r, (uint64_t)c.vocab_size);
            pad[n] = lm[n] = 1;
        }
        for (int b = 0; b < B; b++) sigma[b] = (float)exp(cdcd_rng_uniform(&r) * 6.0 - 1.0);
        cdcd_rng_fill_normal(&r, noise, N * E, 1.0f);
        double t0 = cdcd_now_s();
        int nsc = (int)(sc_share * B);
        if (nsc > 0) {
            cdcd_batch sb = {nsc, T, ids, pad, NULL, lm, sigma, noise, NULL, 0};
            cdcd_model_forward_x0(m, &sb, x0);
        }
        cdcd_batch b = {B, T, ids, pad, NULL, lm, sigma, noise, nsc > 0 ? x0 : NULL, 0};
        cdcd_train_result res;
        if (cdcd_model_train_step(m, &b, &o, s + warmup + 1, NULL, &res) != 0) return 1;
        double dt = (cdcd_now_s() - t0) * 1e3;
        printf("step %3d  loss %.4f  grad norm %.3f  %.1f ms%s\n", s, res.loss, res.grad_norm, dt,
               s < 0 ? " (warm-up)" : "");
        fflush(stdout);
        if (s >= 0) ms[s] = dt;
    }
    if (steps > 0) {
        qsort(ms, (size_t)steps, sizeof *ms, cmp_double);
        double med = ms[steps / 2];
        cdcd_flops f = cdcd_flops_train_step(&c, B, T);
        printf("median step %.1f ms, %.0f tokens/s, GEMM %.1f GFLOP/step = %.1f GFLOP/s "
               "(%s, batch %d x %d, %d threads)\n",
               med, N / (med / 1e3), f.gemm / 1e9, f.gemm / 1e6 / med, preset, B, T, threads);
    }
    free(ids), free(pad), free(lm), free(sigma), free(noise), free(x0), free(ms);
    cdcd_model_free(m);
    return 0;
usage:
    fprintf(stderr, "usage: model_bench [--preset P] [--batch B] [--seq T] [--threads N] "
                    "[--steps S] [--warmup W] [--vocab V] [--lr LR] [--self-cond-share p]\n");
    return 1;
}
