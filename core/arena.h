/* Arena: one big aligned block handed out by bumping a pointer; freed all at once.
 * Used for activations, whose sizes are known from the config before the first step,
 * so the training step itself never allocates. */
#ifndef CDCD_ARENA_H
#define CDCD_ARENA_H

#include <stddef.h>

#define CDCD_ARENA_ALIGN 64 /* cache line, and enough for AVX-512 loads */

typedef struct {
    unsigned char *base;
    size_t capacity;
    size_t used;
    size_t high_water;
} cdcd_arena;

/* Returns 0, or -1 with errno set. capacity 0 makes an empty arena that only measures. */
int cdcd_arena_init(cdcd_arena *a, size_t capacity);
void cdcd_arena_free(cdcd_arena *a);
/* Returns zeroed-or-not aligned memory, or NULL when the arena is full. In a measuring
 * arena (base NULL) it returns NULL but still adds to `used`, so a first pass can size it. */
void *cdcd_arena_alloc(cdcd_arena *a, size_t bytes);
float *cdcd_arena_floats(cdcd_arena *a, size_t n);
size_t cdcd_arena_mark(const cdcd_arena *a);
void cdcd_arena_reset_to(cdcd_arena *a, size_t mark);
/* Rounds n up to the arena alignment. */
size_t cdcd_arena_round(size_t n);

#endif
