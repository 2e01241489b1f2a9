#include "check.h"
#include "tokfile.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define WRITER_BUF_IDS (1u << 19)     /* 1 MiB of uint16 ids per write */
#define WRITER_BUF_OFFSETS (1u << 17) /* 1 MiB of uint64 offsets per write */
#define COPY_BUF_BYTES (1u << 20)
#define HEADER_SUM_BYTES (CDCD_TOKFILE_HEADER_BYTES - 8)
#define TEMP_SUFFIX ".tmp.XXXXXX"
#define OFFSETS_TEMP_SUFFIX ".offsets.XXXXXX"
/* mkstemp makes 0600 files; a token file is data anyone on the machine may read. (Not
 * umask-derived: reading the umask means setting it, which races other threads.) */
#define TOKFILE_MODE 0644

_Static_assert(sizeof(cdcd_tokfile_header) == CDCD_TOKFILE_HEADER_BYTES, "header layout");
_Static_assert(WRITER_BUF_IDS % 4 == 0, "id buffer flushes whole 8-byte words");
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "token files are little-endian and mapped as is: a big-endian host needs byte swaps"
#endif


static uint64_t fnv_bytes(uint64_t h, const void *p, size_t n) {
    const uint8_t *s = p;
    for (size_t i = 0; i < n; i++) h = (h ^ s[i]) * FNV_PRIME;
    return h;
}

/* The data checksum: FNV-1a over little-endian 64-bit words (8x fewer steps than bytes;
 * n is a multiple of 8 because both sections are padded to 8 bytes). */
static uint64_t fnv_words(uint64_t h, const void *p, size_t n) {
    const uint8_t *s = p;
    for (size_t i = 0; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, s + i, 8);
        h = (h ^ w) * FNV_PRIME;
    }
    return h;
}

static uint64_t align8(uint64_t x) { return (x + 7) & ~(uint64_t)7; }

/* ------------------------------------------------------------------ reader */

cdcd_tokfile *cdcd_tokfile_open(const char *path, const cdcd_tokenizer *tok, char *err,
                                size_t errlen) {
    cdcd_tokfile *f = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cdcd_errf(err, errlen, "token file %s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        cdcd_errf(err, errlen, "token file %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        cdcd_errf(err, errlen, "token file %s: not a regular file", path);
        goto fail;
    }
    if (st.st_size < CDCD_TOKFILE_HEADER_BYTES) {
        cdcd_errf(err, errlen, "token file %s: %lld bytes, too short for a header (truncated?)",
                path, (long long)st.st_size);
        goto fail;
    }
    f = calloc(1, sizeof *f);
    if (!f) {
        cdcd_errf(err, errlen, "token file %s: out of memory", path);
        goto fail;
    }
    snprintf(f->path, sizeof f->path, "%s", path);
    f->map_bytes = (size_t)st.st_size;
    f->map = mmap(NULL, f->map_bytes, PROT_READ, MAP_SHARED, fd, 0);
    if (f->map == MAP_FAILED) {
        f->map = NULL;
        cdcd_errf(err, errlen, "token file %s: mmap: %s", path, strerror(errno));
        goto fail;
    }
    close(fd);
    fd = -1;
    memcpy(&f->h, f->map, sizeof f->h);
    const cdcd_tokfile_header *h = &f->h;
    if (memcmp(h->magic, CDCD_TOKFILE_MAGIC, sizeof h->magic) != 0) {
        cdcd_errf(err, errlen, "token file %s: not a cdcd token file (bad magic)", path);
        goto fail;
    }
    if (h->version != CDCD_TOKFILE_VERSION) {
        cdcd_errf(err, errlen, "token file %s: format version %u, this build reads version %d "
                "(re-run cdcd prep)", path, h->version, CDCD_TOKFILE_VERSION);
        goto fail;
    }
    if (h->header_bytes != CDCD_TOKFILE_HEADER_BYTES ||
        fnv_bytes(FNV_OFFSET, h, HEADER_SUM_BYTES) != h->header_checksum) {
        cdcd_errf(err, errlen, "token file %s: the header is corrupt (checksum mismatch)", path);
        goto fail;
    }
    if (h->file_bytes != (uint64_t)st.st_size) {
        cdcd_errf(err, errlen, "token file %s: %lld bytes but the header says %llu (%s)", path,
                (long long)st.st_size, (unsigned long long)h->file_bytes,
                (uint64_t)st.st_size < h->file_bytes ? "truncated" : "trailing data");
        goto fail;
    }
    /* The sizes are bounded by the real file size, so none of this overflows. */
    if (h->ids_off != CDCD_TOKFILE_HEADER_BYTES || h->n_tokens > h->file_bytes / 2 ||
        h->n_stories > h->file_bytes / 8 ||
        h->offsets_off != align8(h->ids_off + 2 * h->n_tokens) ||
        h->file_bytes != h->offsets_off + 8 * (h->n_stories + 1)) {
        cdcd_errf(err, errlen, "token file %s: inconsistent section sizes in the header", path);
        goto fail;
    }
    if (h->vocab_size == 0 || h->vocab_size > CDCD_TOKFILE_MAX_VOCAB || h->pad_id < 0 ||
        h->unk_id < 0 || h->cls_id < 0 || h->sep_id < 0 || h->mask_id < 0 ||
        (uint32_t)h->pad_id >= h->vocab_size || (uint32_t)h->unk_id >= h->vocab_size ||
        (uint32_t)h->cls_id >= h->vocab_size || (uint32_t)h->sep_id >= h->vocab_size ||
        (uint32_t)h->mask_id >= h->vocab_size) {
        cdcd_errf(err, errlen, "token file %s: bad vocabulary size or special ids", path);
        goto fail;
    }
    if (tok && (h->vocab_checksum != cdcd_tok_checksum(tok) ||
                h->vocab_size != (uint32_t)cdcd_tok_vocab_size(tok))) {
        cdcd_errf(err, errlen, "token file %s: made with another vocabulary (%u tokens, checksum "
                "%016llx; this vocabulary: %d tokens, checksum %016llx): re-run cdcd prep",
                path, h->vocab_size, (unsigned long long)h->vocab_checksum,
                cdcd_tok_vocab_size(tok), (unsigned long long)cdcd_tok_checksum(tok));
        goto fail;
    }
    f->ids = (const uint16_t *)((const char *)f->map + h->ids_off);
    f->offsets = (const uint64_t *)((const char *)f->map + h->offsets_off);
    if (f->offsets[0] != 0 || f->offsets[h->n_stories] != h->n_tokens) {
        cdcd_errf(err, errlen, "token file %s: story offsets do not span the ids", path);
        goto fail;
    }
    for (uint64_t i = 0; i < h->n_stories; i++)
        if (f->offsets[i + 1] <= f->offsets[i]) {
            cdcd_errf(err, errlen, "token file %s: story %llu has no tokens or a bad offset",
                    path, (unsigned long long)i);
            goto fail;
        }
    return f;
fail:
    if (fd >= 0) close(fd);
    cdcd_tokfile_close(f);
    return NULL;
}

void cdcd_tokfile_close(cdcd_tokfile *f) {
    if (!f) return;
    if (f->map) munmap(f->map, f->map_bytes);
    free(f);
}

int cdcd_tokfile_verify(const cdcd_tokfile *f, char *err, size_t errlen) {
    const cdcd_tokfile_header *h = &f->h;
    uint64_t sum = fnv_words(FNV_OFFSET, (const char *)f->map + h->ids_off,
                             (size_t)(h->file_bytes - h->ids_off));
    if (sum != h->data_checksum) {
        cdcd_errf(err, errlen, "token file %s: data checksum mismatch (the file is damaged)",
                f->path);
        return -1;
    }
    for (uint64_t i = 0; i < h->n_tokens; i++)
        if (f->ids[i] >= h->vocab_size) {
            cdcd_errf(err, errlen, "token file %s: id %u at position %llu is out of the "
                    "vocabulary (%u)", f->path, f->ids[i], (unsigned long long)i,
                    h->vocab_size);
            return -1;
        }
    return 0;
}

/* ------------------------------------------------------------------ writer */

struct cdcd_tokfile_writer {
    char path[1024];
    char tmp_path[1024 + sizeof TEMP_SUFFIX];
    int fd, off_fd;
    cdcd_tokfile_header h;
    uint16_t *ids;       /* WRITER_BUF_IDS */
    size_t n_ids;
    uint64_t *offs;      /* WRITER_BUF_OFFSETS */
    size_t n_offs;
    uint64_t tokens;     /* ids written so far, the open story included */
    uint64_t story_start;
    uint64_t stories;
    uint64_t sum;        /* running data checksum */
    int failed;
    char err[1024 + 256]; /* path + message */
};

static int write_all(int fd, const void *p, size_t n) {
    const char *s = p;
    while (n) {
        ssize_t r = write(fd, s, n);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return -1;
        s += r;
        n -= (size_t)r;
    }
    return 0;
}

static int writer_fail(cdcd_tokfile_writer *w, const char *what) {
    if (!w->failed)
        snprintf(w->err, sizeof w->err, "token file %s: %s: %s", w->path, what, strerror(errno));
    w->failed = 1;
    return -1;
}

static int flush_ids(cdcd_tokfile_writer *w) {
    size_t bytes = w->n_ids * sizeof *w->ids;
    if (!bytes) return 0;
    w->sum = fnv_words(w->sum, w->ids, bytes);
    if (write_all(w->fd, w->ids, bytes)) return writer_fail(w, "write");
    w->n_ids = 0;
    return 0;
}

static int flush_offsets(cdcd_tokfile_writer *w) {
    if (!w->n_offs) return 0;
    if (write_all(w->off_fd, w->offs, w->n_offs * sizeof *w->offs))
        return writer_fail(w, "write (offsets)");
    w->n_offs = 0;
    return 0;
}

static int push_offset(cdcd_tokfile_writer *w, uint64_t off) {
    if (w->n_offs == WRITER_BUF_OFFSETS && flush_offsets(w)) return -1;
    w->offs[w->n_offs++] = off;
    return 0;
}

cdcd_tokfile_writer *cdcd_tokfile_writer_open(const char *path, const cdcd_tokenizer *tok,
                                              char *err, size_t errlen) {
    cdcd_tokfile_writer *w = NULL;
    int vs = cdcd_tok_vocab_size(tok);
    if (vs > CDCD_TOKFILE_MAX_VOCAB) {
        cdcd_errf(err, errlen, "token file %s: a vocabulary of %d tokens does not fit uint16 ids",
                path, vs);
        return NULL;
    }
    if (strlen(path) >= sizeof w->path) {
        cdcd_errf(err, errlen, "token file path too long: %s", path);
        return NULL;
    }
    w = calloc(1, sizeof *w);
    if (!w) goto oom;
    w->fd = w->off_fd = -1;
    snprintf(w->path, sizeof w->path, "%s", path);
    w->ids = malloc(WRITER_BUF_IDS * sizeof *w->ids);
    w->offs = malloc(WRITER_BUF_OFFSETS * sizeof *w->offs);
    if (!w->ids || !w->offs) goto oom;
    snprintf(w->tmp_path, sizeof w->tmp_path, "%s" TEMP_SUFFIX, path);
    w->fd = mkostemp(w->tmp_path, O_CLOEXEC);
    if (w->fd < 0) {
        cdcd_errf(err, errlen, "token file %s: cannot create %s: %s", path, w->tmp_path,
                strerror(errno));
        w->tmp_path[0] = '\0';
        goto fail;
    }
    char off_path[sizeof w->path + sizeof OFFSETS_TEMP_SUFFIX];
    snprintf(off_path, sizeof off_path, "%s" OFFSETS_TEMP_SUFFIX, path);
    w->off_fd = mkostemp(off_path, O_CLOEXEC);
    if (w->off_fd < 0) {
        cdcd_errf(err, errlen, "token file %s: cannot create %s: %s", path, off_path,
                strerror(errno));
        goto fail;
    }
    unlink(off_path); /* anonymous from now on: it vanishes with the descriptor */

    cdcd_tokfile_header *h = &w->h;
    memcpy(h->magic, CDCD_TOKFILE_MAGIC, sizeof h->magic);
    h->version = CDCD_TOKFILE_VERSION;
    h->header_bytes = CDCD_TOKFILE_HEADER_BYTES;
    h->vocab_checksum = cdcd_tok_checksum(tok);
    h->vocab_size = (uint32_t)vs;
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    h->pad_id = sp->pad;
    h->unk_id = sp->unk;
    h->cls_id = sp->cls;
    h->sep_id = sp->sep;
    h->mask_id = sp->mask;
    h->ids_off = CDCD_TOKFILE_HEADER_BYTES;
    w->sum = FNV_OFFSET;
    /* A zero header as a placeholder: a file cut short before finish has no magic. */
    static const char zeros[CDCD_TOKFILE_HEADER_BYTES];
    if (write_all(w->fd, zeros, sizeof zeros) || push_offset(w, 0)) {
        cdcd_errf(err, errlen, "token file %s: write: %s", path, strerror(errno));
        goto fail;
    }
    return w;
oom:
    cdcd_errf(err, errlen, "token file %s: out of memory", path);
fail:
    cdcd_tokfile_writer_abort(w);
    return NULL;
}

int cdcd_tokfile_writer_append(cdcd_tokfile_writer *w, const int32_t *ids, size_t n) {
    if (w->failed) return -1;
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0 || (uint32_t)ids[i] >= w->h.vocab_size) {
            snprintf(w->err, sizeof w->err, "token file %s: id %d out of the vocabulary (%u)",
                     w->path, ids[i], w->h.vocab_size);
            w->failed = 1;
            return -1;
        }
        if (w->n_ids == WRITER_BUF_IDS && flush_ids(w)) return -1;
        w->ids[w->n_ids++] = (uint16_t)ids[i];
    }
    w->tokens += n;
    return 0;
}

int cdcd_tokfile_writer_end_story(cdcd_tokfile_writer *w) {
    if (w->failed) return -1;
    if (w->tokens == w->story_start) return 0;
    if (push_offset(w, w->tokens)) return -1;
    w->story_start = w->tokens;
    w->stories++;
    return 1;
}

uint64_t cdcd_tokfile_writer_stories(const cdcd_tokfile_writer *w) { return w->stories; }
uint64_t cdcd_tokfile_writer_tokens(const cdcd_tokfile_writer *w) { return w->tokens; }
const char *cdcd_tokfile_writer_error(const cdcd_tokfile_writer *w) { return w->err; }

/* fsync of the directory holding path, so the rename itself is durable. */
static int fsync_parent(const char *path) {
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", path);
    int dfd = open(dirname(buf), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) return -1;
    int rc = fsync(dfd);
    int e = errno;
    close(dfd);
    errno = e;
    return rc;
}

int cdcd_tokfile_writer_finish(cdcd_tokfile_writer *w, char *err, size_t errlen) {
    char *copy = NULL;
    if (cdcd_tokfile_writer_end_story(w) < 0) goto fail;
    /* pad the ids to 8 bytes with zero ids (they are part of the checksum) */
    while (w->n_ids % 4) w->ids[w->n_ids++] = 0; /* fits: the buffer holds 4k ids */
    if (flush_ids(w) || flush_offsets(w)) goto fail;
    cdcd_tokfile_header *h = &w->h;
    h->n_stories = w->stories;
    h->n_tokens = w->tokens;
    h->offsets_off = align8(h->ids_off + 2 * h->n_tokens);
    h->file_bytes = h->offsets_off + 8 * (h->n_stories + 1);

    /* append the offsets */
    copy = malloc(COPY_BUF_BYTES);
    if (!copy) {
        errno = ENOMEM;
        writer_fail(w, "offsets");
        goto fail;
    }
    if (lseek(w->off_fd, 0, SEEK_SET) < 0) {
        writer_fail(w, "seek (offsets)");
        goto fail;
    }
    for (;;) {
        ssize_t r = read(w->off_fd, copy, COPY_BUF_BYTES);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            writer_fail(w, "read (offsets)");
            goto fail;
        }
        if (r == 0) break;
        w->sum = fnv_words(w->sum, copy, (size_t)r);
        if (write_all(w->fd, copy, (size_t)r)) {
            writer_fail(w, "write");
            goto fail;
        }
    }
    h->data_checksum = w->sum;
    h->header_checksum = fnv_bytes(FNV_OFFSET, h, HEADER_SUM_BYTES);
    struct stat st;
    if (fstat(w->fd, &st) < 0 || (uint64_t)st.st_size != h->file_bytes) {
        errno = EIO;
        writer_fail(w, "size check after writing");
        goto fail;
    }
    if (pwrite(w->fd, h, sizeof *h, 0) != (ssize_t)sizeof *h) {
        if (!errno) errno = EIO;
        writer_fail(w, "write (header)");
        goto fail;
    }
    if (fchmod(w->fd, TOKFILE_MODE) < 0) {
        writer_fail(w, "chmod");
        goto fail;
    }
    if (fsync(w->fd) < 0) {
        writer_fail(w, "fsync");
        goto fail;
    }
    if (close(w->fd) < 0) {
        w->fd = -1;
        writer_fail(w, "close");
        goto fail;
    }
    w->fd = -1;
    if (rename(w->tmp_path, w->path) < 0) {
        writer_fail(w, "rename");
        goto fail;
    }
    w->tmp_path[0] = '\0'; /* nothing left to remove */
    if (fsync_parent(w->path) < 0) {
        writer_fail(w, "fsync (directory)");
        goto fail;
    }
    free(copy);
    cdcd_tokfile_writer_abort(w);
    return 0;
fail:
    cdcd_errf(err, errlen, "%s", w->err[0] ? w->err : "token file: write failed");
    free(copy);
    cdcd_tokfile_writer_abort(w);
    return -1;
}

void cdcd_tokfile_writer_abort(cdcd_tokfile_writer *w) {
    if (!w) return;
    if (w->fd >= 0) close(w->fd);
    if (w->off_fd >= 0) close(w->off_fd);
    if (w->tmp_path[0]) unlink(w->tmp_path);
    free(w->ids);
    free(w->offs);
    free(w);
}
