#include "ckpt.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "check.h"

#define CKPT_ALIGN 64
#define CKPT_HEADER_BYTES 24
#define CKPT_TOC_ENTRY_BYTES (CDCD_CKPT_NAME_LEN + 16)
#define CKPT_TRAILER_TAG "CKPTEND"
#define CKPT_TRAILER_BYTES (32 + 8)

typedef struct {
    char name[CDCD_CKPT_NAME_LEN];
    const void *data;
    uint64_t offset, bytes;
} ckpt_section;

struct cdcd_ckpt_writer {
    char path[PATH_MAX];
    ckpt_section sections[CDCD_CKPT_MAX_SECTIONS];
    int n;
};

struct cdcd_ckpt_reader {
    unsigned char *buf;
    size_t size;
    ckpt_section sections[CDCD_CKPT_MAX_SECTIONS];
    int n;
};

static void put_u32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put_u64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint32_t get_u32(const unsigned char *p) {
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << (8 * i);
    return v;
}
static uint64_t get_u64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << (8 * i);
    return v;
}

static void hex32(const unsigned char *d, char out[65]) {
    static const char digits[] = "0123456789abcdef";
    for (int i = 0; i < 32; i++) {
        out[2 * i] = digits[d[i] >> 4];
        out[2 * i + 1] = digits[d[i] & 15];
    }
    out[64] = 0;
}

void cdcd_sha256_hex(const void *buf, size_t len, char out[65]) {
    unsigned char d[32];
    unsigned int dl = 0;
    EVP_Digest(buf, len, d, &dl, EVP_sha256(), NULL);
    hex32(d, out);
}

static int fsync_dir_of(const char *path) {
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc;
}

static int write_all(int fd, const void *buf, size_t len) {
    const unsigned char *p = buf;
    while (len) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        p += w;
        len -= (size_t)w;
    }
    return 0;
}

cdcd_ckpt_writer *cdcd_ckpt_writer_new(const char *path) {
    cdcd_ckpt_writer *w = calloc(1, sizeof *w);
    if (!w) return NULL;
    if (snprintf(w->path, sizeof w->path, "%s", path) >= (int)sizeof w->path - 8) {
        free(w);
        errno = ENAMETOOLONG;
        return NULL;
    }
    return w;
}

int cdcd_ckpt_add(cdcd_ckpt_writer *w, const char *name, const void *data, size_t bytes) {
    if (w->n >= CDCD_CKPT_MAX_SECTIONS || strlen(name) >= CDCD_CKPT_NAME_LEN) return -1;
    for (int i = 0; i < w->n; i++)
        if (strcmp(w->sections[i].name, name) == 0) return -1;
    ckpt_section *s = &w->sections[w->n++];
    snprintf(s->name, sizeof s->name, "%s", name);
    s->data = data;
    s->bytes = bytes;
    return 0;
}

void cdcd_ckpt_writer_abort(cdcd_ckpt_writer *w) { free(w); }

/* Streams header, sections, TOC and trailer through one SHA-256 context. */
int cdcd_ckpt_commit(cdcd_ckpt_writer *w, uint64_t *bytes_out, char *sha256_hex, char *err,
                     size_t errlen) {
    char tmp[PATH_MAX + 8];
    int fd = -1;
    EVP_MD_CTX *md = NULL;
    static const unsigned char zeros[CKPT_ALIGN] = {0};
    unsigned char header[CKPT_HEADER_BYTES];
    unsigned char *toc = NULL;
    uint64_t pos = CKPT_HEADER_BYTES;

    snprintf(tmp, sizeof tmp, "%s.tmp", w->path);
    for (int i = 0; i < w->n; i++) {
        pos = (pos + CKPT_ALIGN - 1) & ~(uint64_t)(CKPT_ALIGN - 1);
        w->sections[i].offset = pos;
        pos += w->sections[i].bytes;
    }
    uint64_t toc_offset = (pos + CKPT_ALIGN - 1) & ~(uint64_t)(CKPT_ALIGN - 1);
    memcpy(header, CDCD_CKPT_MAGIC, 8);
    put_u32(header + 8, CDCD_CKPT_VERSION);
    put_u32(header + 12, (uint32_t)w->n);
    put_u64(header + 16, toc_offset);

    size_t toc_bytes = (size_t)w->n * CKPT_TOC_ENTRY_BYTES;
    toc = calloc(1, toc_bytes ? toc_bytes : 1);
    md = EVP_MD_CTX_new();
    if (!toc || !md) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    for (int i = 0; i < w->n; i++) {
        unsigned char *e = toc + (size_t)i * CKPT_TOC_ENTRY_BYTES;
        memcpy(e, w->sections[i].name, CDCD_CKPT_NAME_LEN);
        put_u64(e + CDCD_CKPT_NAME_LEN, w->sections[i].offset);
        put_u64(e + CDCD_CKPT_NAME_LEN + 8, w->sections[i].bytes);
    }

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        snprintf(err, errlen, "cannot create %s: %s", tmp, strerror(errno));
        goto fail;
    }
    EVP_DigestInit_ex(md, EVP_sha256(), NULL);
#define EMIT(p, n)                                                                       \
    do {                                                                                 \
        if (write_all(fd, (p), (n)) < 0) {                                               \
            snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));          \
            goto fail;                                                                   \
        }                                                                                \
        EVP_DigestUpdate(md, (p), (n));                                                  \
    } while (0)
    EMIT(header, sizeof header);
    pos = CKPT_HEADER_BYTES;
    for (int i = 0; i < w->n; i++) {
        size_t pad = (size_t)(w->sections[i].offset - pos);
        if (pad) EMIT(zeros, pad);
        if (w->sections[i].bytes) EMIT(w->sections[i].data, (size_t)w->sections[i].bytes);
        pos = w->sections[i].offset + w->sections[i].bytes;
    }
    if (toc_offset > pos) EMIT(zeros, (size_t)(toc_offset - pos));
    if (toc_bytes) EMIT(toc, toc_bytes);
#undef EMIT
    unsigned char digest[32];
    unsigned int dl = 0;
    EVP_DigestFinal_ex(md, digest, &dl);
    unsigned char trailer[CKPT_TRAILER_BYTES] = {0};
    memcpy(trailer, digest, 32);
    memcpy(trailer + 32, CKPT_TRAILER_TAG, sizeof CKPT_TRAILER_TAG);
    if (write_all(fd, trailer, sizeof trailer) < 0 || fsync(fd) < 0) {
        snprintf(err, errlen, "cannot write %s: %s", tmp, strerror(errno));
        goto fail;
    }
    if (close(fd) < 0) {
        fd = -1;
        snprintf(err, errlen, "cannot close %s: %s", tmp, strerror(errno));
        goto fail;
    }
    fd = -1;
    if (rename(tmp, w->path) < 0 || fsync_dir_of(w->path) < 0) {
        snprintf(err, errlen, "cannot move %s into place: %s", w->path, strerror(errno));
        goto fail;
    }
    if (bytes_out) *bytes_out = toc_offset + toc_bytes + CKPT_TRAILER_BYTES;
    if (sha256_hex) {
        /* The file's own SHA-256 (what `sha256sum` prints), not the internal digest. */
        EVP_MD_CTX_reset(md);
        EVP_DigestInit_ex(md, EVP_sha256(), NULL);
        FILE *f = fopen(w->path, "rb");
        if (f) {
            unsigned char chunk[1 << 16];
            size_t got;
            while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) EVP_DigestUpdate(md, chunk, got);
            fclose(f);
        }
        unsigned char d2[32];
        EVP_DigestFinal_ex(md, d2, &dl);
        hex32(d2, sha256_hex);
    }
    EVP_MD_CTX_free(md);
    free(toc);
    free(w);
    return 0;
fail:
    if (fd >= 0) close(fd);
    unlink(tmp);
    EVP_MD_CTX_free(md);
    free(toc);
    free(w);
    return -1;
}

cdcd_ckpt_reader *cdcd_ckpt_open(const char *path, char *err, size_t errlen) {
    cdcd_ckpt_reader *r = NULL;
    FILE *f = NULL;
    struct stat st;
    r = calloc(1, sizeof *r);
    if (!r) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "cannot open checkpoint %s: %s", path, strerror(errno));
        goto fail;
    }
    if (fstat(fileno(f), &st) < 0 || !S_ISREG(st.st_mode)) {
        snprintf(err, errlen, "%s is not a regular file", path);
        goto fail;
    }
    r->size = (size_t)st.st_size;
    if (r->size < CKPT_HEADER_BYTES + CKPT_TRAILER_BYTES) {
        snprintf(err, errlen, "%s: truncated checkpoint (%zu bytes)", path, r->size);
        goto fail;
    }
    r->buf = malloc(r->size);
    if (!r->buf || fread(r->buf, 1, r->size, f) != r->size) {
        snprintf(err, errlen, "%s: cannot read %zu bytes", path, r->size);
        goto fail;
    }
    fclose(f);
    f = NULL;
    if (memcmp(r->buf, CDCD_CKPT_MAGIC, 8) != 0) {
        snprintf(err, errlen, "%s: not a cdcd checkpoint (bad magic)", path);
        goto fail;
    }
    uint32_t version = get_u32(r->buf + 8);
    if (version != CDCD_CKPT_VERSION) {
        snprintf(err, errlen, "%s: checkpoint version %u, this build reads version %u", path,
                 version, CDCD_CKPT_VERSION);
        goto fail;
    }
    const unsigned char *trailer = r->buf + r->size - CKPT_TRAILER_BYTES;
    if (memcmp(trailer + 32, CKPT_TRAILER_TAG, sizeof CKPT_TRAILER_TAG) != 0) {
        snprintf(err, errlen, "%s: truncated checkpoint (no end marker)", path);
        goto fail;
    }
    unsigned char digest[32];
    unsigned int dl = 0;
    EVP_Digest(r->buf, r->size - CKPT_TRAILER_BYTES, digest, &dl, EVP_sha256(), NULL);
    if (memcmp(digest, trailer, 32) != 0) {
        snprintf(err, errlen, "%s: checksum mismatch (corrupt checkpoint)", path);
        goto fail;
    }
    r->n = (int)get_u32(r->buf + 12);
    uint64_t toc_offset = get_u64(r->buf + 16);
    size_t data_end = r->size - CKPT_TRAILER_BYTES;
    if (r->n < 0 || r->n > CDCD_CKPT_MAX_SECTIONS || toc_offset > data_end ||
        (data_end - toc_offset) != (size_t)r->n * CKPT_TOC_ENTRY_BYTES) {
        snprintf(err, errlen, "%s: malformed table of contents", path);
        goto fail;
    }
    for (int i = 0; i < r->n; i++) {
        const unsigned char *e = r->buf + toc_offset + (size_t)i * CKPT_TOC_ENTRY_BYTES;
        ckpt_section *s = &r->sections[i];
        memcpy(s->name, e, CDCD_CKPT_NAME_LEN);
        s->name[CDCD_CKPT_NAME_LEN - 1] = 0;
        s->offset = get_u64(e + CDCD_CKPT_NAME_LEN);
        s->bytes = get_u64(e + CDCD_CKPT_NAME_LEN + 8);
        if (s->offset > toc_offset || s->bytes > toc_offset - s->offset) {
            snprintf(err, errlen, "%s: section %s lies outside the file", path, s->name);
            goto fail;
        }
        s->data = r->buf + s->offset;
    }
    return r;
fail:
    if (f) fclose(f);
    cdcd_ckpt_close(r);
    return NULL;
}

int cdcd_ckpt_get(const cdcd_ckpt_reader *r, const char *name, const void **data, size_t *bytes) {
    for (int i = 0; i < r->n; i++) {
        if (strcmp(r->sections[i].name, name) == 0) {
            *data = r->sections[i].data;
            *bytes = (size_t)r->sections[i].bytes;
            return 0;
        }
    }
    return -1;
}

int cdcd_ckpt_read_exact(const cdcd_ckpt_reader *r, const char *name, void *dst, size_t bytes) {
    const void *p;
    size_t n;
    if (cdcd_ckpt_get(r, name, &p, &n) < 0 || n != bytes) return -1;
    memcpy(dst, p, bytes);
    return 0;
}

void cdcd_ckpt_close(cdcd_ckpt_reader *r) {
    if (!r) return;
    free(r->buf);
    free(r);
}

int cdcd_ckpt_mark_done(const char *path) {
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s%s", path, CDCD_CKPT_DONE_SUFFIX) >= sizeof p) {
        errno = ENAMETOOLONG;
        return -1;
    }
    int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    int rc = fsync(fd);
    close(fd);
    return rc < 0 || fsync_dir_of(p) < 0 ? -1 : 0;
}

int cdcd_ckpt_is_done(const char *path) {
    char p[PATH_MAX];
    if ((size_t)snprintf(p, sizeof p, "%s%s", path, CDCD_CKPT_DONE_SUFFIX) >= sizeof p) return 0;
    return access(p, F_OK) == 0;
}
