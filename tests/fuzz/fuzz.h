/* Helpers shared by the libFuzzer targets in this directory (one target per file). */
#ifndef CDCD_FUZZ_H
#define CDCD_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

/* The parsers log refusals at warn level: keep the fuzzer's output to its own lines. */
static inline void fuzz_quiet(void) { cdcd_log_set_level(CDCD_LOG_OFF); }

/* Stops the target with a message: a broken invariant is reported like a crash. */
#define FUZZ_ASSERT(cond)                                                                  \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            fprintf(stderr, "%s:%d: invariant broken: %s\n", __FILE__, __LINE__, #cond);   \
            abort();                                                                       \
        }                                                                                  \
    } while (0)

/* A NUL-terminated copy of the input (the parsers under test may expect C strings). */
static inline char *fuzz_strndup(const uint8_t *data, size_t size) {
    char *s = malloc(size + 1);
    if (!s) abort();
    if (size) memcpy(s, data, size);
    s[size] = 0;
    return s;
}

/* An in-memory file (memfd) reachable by a path, for readers that take a path. One per
 * process, rewritten per input, so a fuzzing run never touches the disk. */
typedef struct {
    int fd;
    char path[64];
} fuzz_file;

static inline void fuzz_file_open(fuzz_file *f, const char *name) {
    f->fd = memfd_create(name, 0);
    if (f->fd < 0) {
        perror("memfd_create");
        abort();
    }
    snprintf(f->path, sizeof f->path, "/proc/self/fd/%d", f->fd);
}

static inline void fuzz_file_write(fuzz_file *f, const void *data, size_t size) {
    if (ftruncate(f->fd, 0) != 0) abort();
    size_t done = 0;
    while (done < size) {
        ssize_t n = pwrite(f->fd, (const char *)data + done, size - done, (off_t)done);
        if (n <= 0) abort();
        done += (size_t)n;
    }
}

/* 64-bit FNV-1a, as the token file's checksums use it. */
static inline uint64_t fuzz_fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001b3ull;
    }
    return h;
}
#define FUZZ_FNV_OFFSET 0xcbf29ce484222325ull

#endif
