#include "masks.h"

#include <string.h>

/* One example: returns 1 when a prefix mask was drawn, 0 for a random subset. */
static int draw_mask(const cdcd_mask_params *p, cdcd_rng *rng, int T, const uint8_t *real,
                     uint8_t *cond) {
    int n_real = 0;
    while (n_real < T && real[n_real]) n_real++;
    /* Real tokens form a prefix ([CLS] story [SEP] then padding); count any stragglers too. */
    int total_real = 0;
    for (int t = 0; t < T; t++) total_real += real[t] != 0;
    if (total_real < 2) return -1; /* nothing could be left to predict */
    if (cdcd_rng_uniform(rng) < p->p_prefix && n_real >= 2) {
        int k = 1 + (int)cdcd_rng_below(rng, (uint64_t)(n_real - 1)); /* 1 .. n_real-1 */
        for (int t = 0; t < k; t++) cond[t] = 1;
        return 1;
    }
    double rate = cdcd_rng_uniform(rng);
    int n_cond = 0, last_free = -1;
    for (int t = 0; t < T; t++) {
        if (!real[t]) continue;
        if (cdcd_rng_uniform(rng) < rate) {
            cond[t] = 1;
            n_cond++;
        }
    }
    if (n_cond == total_real) { /* keep one position to predict */
        int pick = (int)cdcd_rng_below(rng, (uint64_t)total_real);
        for (int t = 0; t < T; t++) {
            if (real[t] && pick-- == 0) {
                cond[t] = 0;
                last_free = t;
                break;
            }
        }
    }
    (void)last_free;
    return 0;
}

cdcd_mask_stats cdcd_masks_make(const cdcd_mask_params *p, cdcd_rng *rng, int B, int T,
                                const uint8_t *pad_mask, uint8_t *cond_mask, uint8_t *loss_mask) {
    cdcd_mask_stats st = {0, 0, 0};
    memset(cond_mask, 0, (size_t)B * (size_t)T);
    for (int b = 0; b < B; b++) {
        const uint8_t *real = pad_mask + (size_t)b * T;
        uint8_t *cond = cond_mask + (size_t)b * T;
        /* Always draw the same number of uniforms per decision so that changing p_cond
         * does not shift every later random number of the batch. */
        double u_cond = cdcd_rng_uniform(rng), u_drop = cdcd_rng_uniform(rng);
        if (u_cond < p->p_cond) {
            int kind = draw_mask(p, rng, T, real, cond);
            if (kind >= 0) {
                if (u_drop < p->p_drop) {
                    memset(cond, 0, (size_t)T);
                    st.dropped++;
                } else {
                    st.conditioned++;
                    st.prefix += kind;
                }
            }
        }
        uint8_t *loss = loss_mask + (size_t)b * T;
        for (int t = 0; t < T; t++) loss[t] = real[t] && !cond[t];
    }
    return st;
}
