/* Conditioning masks (CDCD paper, section 4): which positions of an example are given
 * clean, as a prompt or as the known part of an infilling task, and which the model must
 * denoise. With probability p_cond an example gets a mask: a prefix of uniform length
 * (share p_prefix) or a uniform random subset (the rest, with a uniform rate). The mask is
 * then dropped with probability p_drop, so that the model also learns the unconditional
 * task that classifier-free guidance needs. Only real (non-pad) positions are conditioned,
 * and at least one real position of every example is left to predict. */
#ifndef CDCD_MASKS_H
#define CDCD_MASKS_H

#include <stdint.h>

#include "rng.h"

typedef struct {
    float p_cond;   /* share of examples that get a mask */
    float p_prefix; /* among them, share of prefix masks */
    float p_drop;   /* a drawn mask is dropped with this probability */
} cdcd_mask_params;

typedef struct {
    int conditioned; /* examples that kept a mask */
    int prefix;      /* of which prefix masks */
    int dropped;     /* masks drawn then dropped */
} cdcd_mask_stats;

/* pad_mask (B,T): 1 = real token. Writes cond_mask (B,T) and loss_mask (B,T) =
 * real and not conditioned. Deterministic for a given rng state. */
cdcd_mask_stats cdcd_masks_make(const cdcd_mask_params *p, cdcd_rng *rng, int B, int T,
                                const uint8_t *pad_mask, uint8_t *cond_mask, uint8_t *loss_mask);

#endif
