/* Private to the CPU backend's files (backend_cpu*.c): its state and the ops each file
 * contributes to the table in backend_cpu.c. */
#ifndef CDCD_BACKEND_CPU_INTERNAL_H
#define CDCD_BACKEND_CPU_INTERNAL_H

#include "backend.h"
#include "blas.h"
#include "threadpool.h"

#define CPU_ROW_GRAIN 32   /* rows per pool task for O(width) row work */
#define CPU_VOCAB_GRAIN 256 /* embedding-table rows per pool task */

typedef struct {
    cdcd_backend base;
    cdcd_pool *pool;
    double *seg_partial;    /* (max_segments) */
    int n_threads;
    int blas_threads;       /* demand outside inference mode */
    cdcd_blas_user *blas;   /* this backend's demand in the process's BLAS thread policy */
    int split;              /* 1 in inference mode: products tiled on the pool, 1 BLAS thread */
} cpu_backend;

static inline cpu_backend *cpu_of(cdcd_backend *be) { return (cpu_backend *)be; }

/* backend_cpu_block.c: linears, adaLN, gates, activations, QK-norm + RoPE, attention */
void cpu_set_inference(cdcd_backend *be, int on);
void cpu_linear_forward(cdcd_backend *be, float *out, const float *in, const float *w,
                        const float *b, size_t N, int n_in, int n_out);
void cpu_linear_backward(cdcd_backend *be, float *din, int din_accumulate, float *dw, float *db,
                         const float *dout, const float *in, const float *w, size_t N, int n_in,
                         int n_out);
void cpu_adaln_forward(cdcd_backend *be, float *out, float *mean, float *rstd, const float *x,
                       const float *shift, const float *scale, int mod_stride, int B, int T,
                       int D);
void cpu_adaln_recompute(cdcd_backend *be, float *out, const float *x, const float *mean,
                         const float *rstd, const float *shift, const float *scale,
                         int mod_stride, int B, int T, int D);
void cpu_adaln_backward(cdcd_backend *be, float *dx, float *dshift, float *dscale,
                        const float *dout, const float *x, const float *mean, const float *rstd,
                        const float *scale, int mod_stride, int B, int T, int D);
void cpu_gate_residual_forward(cdcd_backend *be, float *h, const float *copy_from,
                               const float *branch, const float *gate, int mod_stride, int B,
                               int T, int D);
void cpu_gate_residual_backward(cdcd_backend *be, float *dbranch, float *dgate, const float *dh,
                                const float *branch, const float *gate, int mod_stride, int B,
                                int T, int D);
void cpu_gelu_forward(cdcd_backend *be, float *out, const float *in, size_t rows, size_t width);
void cpu_gelu_backward(cdcd_backend *be, float *din, const float *dout, const float *in,
                       size_t rows, size_t width);
void cpu_silu_forward(cdcd_backend *be, float *out, const float *in, size_t n);
void cpu_silu_backward(cdcd_backend *be, float *din, const float *dout, const float *in,
                       size_t n);
void cpu_qk_norm_rope_forward(cdcd_backend *be, float *qk, float *norms, const float *qkv,
                              const float *rope_cos, const float *rope_sin, int B, int T, int H,
                              int hd);
void cpu_qk_norm_rope_backward(cdcd_backend *be, float *dqkv, float *dqk, const float *qkv,
                               const float *norms, const float *rope_cos, const float *rope_sin,
                               int B, int T, int H, int hd);
void cpu_attention_forward(cdcd_backend *be, float *o, float *P, const float *qk, const float *v,
                           int ldv, const uint8_t *pad_mask, const float *scale, int B, int T,
                           int H, int hd);
void cpu_attention_backward(cdcd_backend *be, float *dqk, float *dv, int lddv, float *dscale,
                            float *dP, float *scratch_bh, const float *dout, const float *P,
                            const float *qk, const float *v, int ldv, const float *scale, int B,
                            int T, int H, int hd);

/* backend_cpu_embed.c: embeddings, inputs, time features, preconditioning, prior, guidance */
void cpu_unit_embed_forward(cdcd_backend *be, float *etab, float *enorm, const float *emb, int V,
                            int E);
void cpu_unit_embed_backward(cdcd_backend *be, float *demb, const float *detab, const float *emb,
                             const float *enorm, int V, int E);
void cpu_noisy_input(cdcd_backend *be, float *x, const float *etab, const int32_t *ids,
                     const float *noise, const float *sigma, int B, int T, int E);
void cpu_input_channels(cdcd_backend *be, const cdcd_backend_channels *a);
void cpu_embed_backward(cdcd_backend *be, const cdcd_backend_embed_grad *a);
void cpu_time_fourier(cdcd_backend *be, float *fourier, const float *sigma, const float *freqs,
                      int B, int C);
void cpu_precondition(cdcd_backend *be, float *Dx, const float *x, const float *F,
                      const float *sigma, int B, int T, int E);
void cpu_precondition_backward(cdcd_backend *be, float *dF, const float *dDx, const float *sigma,
                               int B, int T, int E);
void cpu_prior_scale(cdcd_backend *be, float *scale, float *xs, const float *x,
                     const float *sigma, int B, int T, int E);
void cpu_guide_mix(cdcd_backend *be, float *dst, const float *cond, float gamma, size_t n);

/* backend_cpu_head.c: the training cross-entropy and the inference head */
void cpu_linear_ce(cdcd_backend *be, const cdcd_ops_ce_args *a);
void cpu_head_infer(cdcd_backend *be, const cdcd_backend_head_args *a);

#endif
