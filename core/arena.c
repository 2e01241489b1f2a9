#include "arena.h"

#include <errno.h>
#include <stdlib.h>

size_t cdcd_arena_round(size_t n) { return (n + CDCD_ARENA_ALIGN - 1) & ~(size_t)(CDCD_ARENA_ALIGN - 1); }

int cdcd_arena_init(cdcd_arena *a, size_t capacity) {
    a->base = NULL;
    a->capacity = cdcd_arena_round(capacity);
    a->used = 0;
    a->high_water = 0;
    if (capacity == 0) return 0;
    void *p = NULL;
    if (posix_memalign(&p, CDCD_ARENA_ALIGN, a->capacity) != 0) {
        errno = ENOMEM;
        return -1;
    }
    a->base = p;
    return 0;
}

void cdcd_arena_free(cdcd_arena *a) {
    free(a->base);
    a->base = NULL;
    a->capacity = a->used = a->high_water = 0;
}

void *cdcd_arena_alloc(cdcd_arena *a, size_t bytes) {
    size_t need = cdcd_arena_round(bytes);
    if (!a->base) { /* measuring pass */
        a->used += need;
        if (a->used > a->high_water) a->high_water = a->used;
        return NULL;
    }
    if (a->used + need > a->capacity) return NULL;
    void *p = a->base + a->used;
    a->used += need;
    if (a->used > a->high_water) a->high_water = a->used;
    return p;
}

float *cdcd_arena_floats(cdcd_arena *a, size_t n) { return cdcd_arena_alloc(a, n * sizeof(float)); }

size_t cdcd_arena_mark(const cdcd_arena *a) { return a->used; }

void cdcd_arena_reset_to(cdcd_arena *a, size_t mark) {
    if (mark <= a->used) a->used = mark;
}
