/* Conditioning masks: invariants and rates. */
#include <stdint.h>

#include "masks.h"
#include "test.h"

#define B 400
#define T 32

static void make_pad(uint8_t *pad, cdcd_rng *r) {
    for (int b = 0; b < B; b++) {
        int len = 2 + (int)cdcd_rng_below(r, T - 1); /* 2..T */
        for (int t = 0; t < T; t++) pad[b * T + t] = t < len;
    }
}

TEST(test_masks_invariants) {
    static uint8_t pad[B * T], cond[B * T], loss[B * T];
    cdcd_rng r;
    cdcd_rng_init(&r, 3, 0);
    make_pad(pad, &r);
    cdcd_mask_params p = {.p_cond = 0.8f, .p_prefix = 0.5f, .p_drop = 0.1f};
    cdcd_mask_stats st = cdcd_masks_make(&p, &r, B, T, pad, cond, loss);
    int bad_pad = 0, bad_loss = 0, none_left = 0;
    for (int b = 0; b < B; b++) {
        int left = 0;
        for (int t = 0; t < T; t++) {
            int i = b * T + t;
            bad_pad += !pad[i] && cond[i];
            bad_loss += loss[i] != (pad[i] && !cond[i]);
            left += loss[i];
        }
        none_left += left == 0;
    }
    EXPECT(bad_pad == 0);
    EXPECT(bad_loss == 0);
    EXPECT(none_left == 0);
    /* Rates: conditioned ~ p_cond*(1-p_drop) = 0.72, prefix share ~ 0.5, dropped ~ 0.08. */
    EXPECTF(st.conditioned > 0.62 * B && st.conditioned < 0.82 * B, "conditioned %d", st.conditioned);
    EXPECTF(st.prefix > 0.38 * st.conditioned && st.prefix < 0.62 * st.conditioned, "prefix %d of %d",
            st.prefix, st.conditioned);
    EXPECTF(st.dropped > 0.03 * B && st.dropped < 0.14 * B, "dropped %d", st.dropped);
}

TEST(test_masks_prefix_is_contiguous) {
    static uint8_t pad[B * T], cond[B * T], loss[B * T];
    cdcd_rng r;
    cdcd_rng_init(&r, 4, 0);
    make_pad(pad, &r);
    cdcd_mask_params p = {.p_cond = 1.0f, .p_prefix = 1.0f, .p_drop = 0.0f};
    cdcd_mask_stats st = cdcd_masks_make(&p, &r, B, T, pad, cond, loss);
    EXPECT(st.conditioned == B && st.prefix == B);
    int bad = 0, lens_seen[T + 1] = {0};
    for (int b = 0; b < B; b++) {
        int k = 0;
        while (k < T && cond[b * T + k]) k++;
        for (int t = k; t < T; t++) bad += cond[b * T + t];
        EXPECT(k >= 1);
        lens_seen[k]++;
    }
    EXPECT(bad == 0);
    int distinct = 0;
    for (int k = 0; k <= T; k++) distinct += lens_seen[k] > 0;
    EXPECTF(distinct > T / 2, "only %d distinct prefix lengths", distinct);
}

TEST(test_masks_off_and_deterministic) {
    static uint8_t pad[B * T], c1[B * T], l1[B * T], c2[B * T], l2[B * T];
    cdcd_rng r;
    cdcd_rng_init(&r, 5, 0);
    make_pad(pad, &r);
    cdcd_mask_params off = {.p_cond = 0.0f, .p_prefix = 0.5f, .p_drop = 0.1f};
    cdcd_mask_stats st = cdcd_masks_make(&off, &r, B, T, pad, c1, l1);
    EXPECT(st.conditioned == 0);
    int any = 0;
    for (int i = 0; i < B * T; i++) any |= c1[i] | (l1[i] != pad[i]);
    EXPECT(!any);
    cdcd_mask_params p = {.p_cond = 0.5f, .p_prefix = 0.5f, .p_drop = 0.1f};
    cdcd_rng a, b2;
    cdcd_rng_init(&a, 9, 1);
    cdcd_rng_init(&b2, 9, 1);
    cdcd_masks_make(&p, &a, B, T, pad, c1, l1);
    cdcd_masks_make(&p, &b2, B, T, pad, c2, l2);
    EXPECT(memcmp(c1, c2, sizeof c1) == 0 && memcmp(l1, l2, sizeof l1) == 0);
}

int main(void) {
    RUN(test_masks_invariants);
    RUN(test_masks_prefix_is_contiguous);
    RUN(test_masks_off_and_deterministic);
    return test_summary();
}
