#include "flops.h"

cdcd_flops cdcd_flops_forward(const cdcd_model_config *c, int B, int T, int with_x0) {
    double bt = (double)B * T, D = c->d_model, E = c->d_emb, V = c->vocab_size, C = c->cond_dim;
    double in_dim = cdcd_model_in_dim(c), L = c->n_layers;
    cdcd_flops f = {0, 0};
    f.gemm += 2 * bt * in_dim * D;                      /* input projection */
    f.gemm += 2.0 * B * (C * C * 2 + L * C * 6 * D + C * 2 * D); /* time MLP, adaLN (per sequence) */
    double per_layer = 2 * bt * D * 3 * D                /* qkv */
                       + 2 * (double)B * T * T * D * 2 /* scores and P.V over all heads */
                       + 2 * bt * D * D                /* output projection */
                       + 2 * bt * D * 4 * D * 2;       /* MLP */
    f.gemm += L * per_layer;
    if (c->head == CDCD_HEAD_LOGITS)
        f.gemm += 2 * bt * D * V;
    else
        f.gemm += 2 * bt * D * E + 2 * bt * E * V;
    if (with_x0) f.gemm += 2 * bt * V * E;
    /* Elementwise work: a few ops per activation element and per logit. */
    f.other = L * bt * (D * 30 + 4 * D * 10 + (double)T * c->n_heads * 6) + bt * V * 5 + bt * E * 10;
    return f;
}

cdcd_flops cdcd_flops_train_step(const cdcd_model_config *c, int B, int T) {
    cdcd_flops fwd = cdcd_flops_forward(c, B, T, 0);
    cdcd_flops f = {3 * fwd.gemm, 3 * fwd.other + 12.0 * (double)cdcd_model_num_params(c)};
    return f;
}
