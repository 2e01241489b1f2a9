/* Exact floating-point operation counts of the model, for benchmarks (GFLOP/s achieved and
 * the GEMM-only ceiling: the time the matrix products alone would take at a given rate). */
#ifndef CDCD_FLOPS_H
#define CDCD_FLOPS_H

#include "model.h"

typedef struct {
    double gemm;  /* multiply-adds x 2 in matrix products (incl. attention products) */
    double other; /* elementwise / reductions, approximate (norms, softmax, GELU, RoPE...) */
} cdcd_flops;

/* One forward pass over B sequences of T tokens. with_x0 adds the expected-embedding
 * product softmax . e (sampler and self-conditioning). */
cdcd_flops cdcd_flops_forward(const cdcd_model_config *c, int B, int T, int with_x0);
/* One training step: forward + backward (2x the forward products) + AdamW. */
cdcd_flops cdcd_flops_train_step(const cdcd_model_config *c, int B, int T);

#endif
