/* Word statistics of stories against a reference text (see textstats.h).
 *
 * Words are hashed once (FNV-1a over the case-folded, accent-stripped bytes, then a
 * 64-bit finaliser) and n-grams hash the word hashes, so nothing but 64-bit keys is kept:
 * the reference for 1M words is three open-addressing tables of keys (linear probing,
 * power-of-two capacity, at most half full), unigram keys with counts. Two different
 * n-grams share a key with probability about n^2 / 2^65: nothing at these sizes. */
#include "textstats.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

#include "rng.h"
#include "tokenizer.h"
#include "tokfile.h"

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define NGRAM_MULT 0x9e3779b97f4a7c15ull
#define NGRAM_SEED 0x243f6a8885a308d3ull /* + n: each order hashes from its own seed */
#define EMPTY_KEY 0ull                   /* slot marker; a real key of 0 becomes ZERO_KEY */
#define ZERO_KEY 0x6a09e667f3bcc909ull
#define SET_MIN_CAP 64    /* power of two */
#define SET_LOAD_NUM 1    /* grow past NUM/DEN full */
#define SET_LOAD_DEN 2
#define DECOMP_MAX 32     /* code points one character may fold/decompose into */
#define UTF8_MAX_BYTES 4
#define CP_RIGHT_SINGLE_QUOTE 0x2019
#define CONT_PREFIX "##"
#define CONT_PREFIX_LEN 2
#define SHUFFLE_STREAM 0x7e57 /* + story index: the rng stream of a shuffled row */
#define WORDS_MIN_CAP 256
#define SEPARATOR_LEN (sizeof CDCD_TEXT_STORY_SEPARATOR - 1)

/* ------------------------------------------------------------------ hash set */

typedef struct {
    uint64_t *keys;   /* cap slots, EMPTY_KEY = free */
    uint64_t *counts; /* cap, or NULL for a plain set */
    size_t cap, n;
} ts_set;

static inline uint64_t mix64(uint64_t x) { /* SplitMix64's finaliser */
    x ^= x >> 30;
    x *= 0xbf58476d1ce4e5b9ull;
    x ^= x >> 27;
    x *= 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x;
}

static inline uint64_t set_key(uint64_t h) { return h == EMPTY_KEY ? ZERO_KEY : h; }

/* An empty set with room for min_n keys before it grows. 0 or -1 (out of memory). */
static int set_init(ts_set *s, size_t min_n, int with_counts) {
    size_t cap = SET_MIN_CAP;
    while (cap / SET_LOAD_DEN * SET_LOAD_NUM < min_n) cap <<= 1;
    s->keys = calloc(cap, sizeof *s->keys);
    s->counts = with_counts ? calloc(cap, sizeof *s->counts) : NULL;
    s->cap = cap;
    s->n = 0;
    if (!s->keys || (with_counts && !s->counts)) {
        free(s->keys);
        free(s->counts);
        s->keys = s->counts = NULL;
        return -1;
    }
    return 0;
}

static void set_free(ts_set *s) {
    free(s->keys);
    free(s->counts);
    s->keys = s->counts = NULL;
    s->cap = s->n = 0;
}

/* Slot of key k (already through set_key): where it is, or the free slot where it goes. */
static inline size_t set_slot(const ts_set *s, uint64_t k) {
    size_t m = s->cap - 1, i = (size_t)k & m;
    while (s->keys[i] != EMPTY_KEY && s->keys[i] != k) i = (i + 1) & m;
    return i;
}

static int set_grow(ts_set *s) {
    ts_set g;
    if (set_init(&g, s->cap, s->counts != NULL)) return -1; /* twice the slots */
    for (size_t i = 0; i < s->cap; i++) {
        if (s->keys[i] == EMPTY_KEY) continue;
        size_t j = set_slot(&g, s->keys[i]);
        g.keys[j] = s->keys[i];
        if (g.counts) g.counts[j] = s->counts[i];
    }
    g.n = s->n;
    set_free(s);
    *s = g;
    return 0;
}

/* Inserts hash h (adding inc to its count in a counting set). 1 when it was new, 0 when
 * it was there, -1 out of memory (the set is unchanged). */
static int set_add(ts_set *s, uint64_t h, uint64_t inc) {
    if ((s->n + 1) * SET_LOAD_DEN > s->cap * SET_LOAD_NUM && set_grow(s)) return -1;
    uint64_t k = set_key(h);
    size_t i = set_slot(s, k);
    int fresh = s->keys[i] == EMPTY_KEY;
    if (fresh) {
        s->keys[i] = k;
        s->n++;
    }
    if (s->counts) s->counts[i] += inc;
    return fresh;
}

/* Count of h in a counting set (0 when absent); 1/0 membership in a plain one. */
static uint64_t set_count(const ts_set *s, uint64_t h) {
    size_t i = set_slot(s, set_key(h));
    if (s->keys[i] == EMPTY_KEY) return 0;
    return s->counts ? s->counts[i] : 1;
}

/* ------------------------------------------------------------------ words */

/* The words of one story: hashes, byte spans and the sentence count. */
typedef struct {
    uint64_t *h;
    size_t *beg, *end; /* word i is text[beg[i], end[i]) */
    size_t n, cap;
    size_t sentences;
} ts_words;

enum { CL_OTHER, CL_WORD, CL_MARK, CL_APOS, CL_END };

static inline uint64_t fnv_byte(uint64_t h, uint8_t b) { return (h ^ b) * FNV_PRIME; }

static int words_push(ts_words *w, uint64_t h, size_t beg, size_t end) {
    if (w->n == w->cap) {
        size_t cap = w->cap ? w->cap * 2 : WORDS_MIN_CAP;
        uint64_t *nh = realloc(w->h, cap * sizeof *nh);
        if (!nh) return -1;
        w->h = nh;
        size_t *nb = realloc(w->beg, cap * sizeof *nb);
        if (!nb) return -1;
        w->beg = nb;
        size_t *ne = realloc(w->end, cap * sizeof *ne);
        if (!ne) return -1;
        w->end = ne;
        w->cap = cap;
    }
    w->h[w->n] = mix64(h);
    w->beg[w->n] = beg;
    w->end[w->n] = end;
    w->n++;
    return 0;
}

static void words_free(ts_words *w) {
    free(w->h);
    free(w->beg);
    free(w->end);
    memset(w, 0, sizeof *w);
}

/* Class of a non-ASCII code point. */
static int class_of(int32_t c) {
    if (c == CP_RIGHT_SINGLE_QUOTE) return CL_APOS;
    utf8proc_category_t cat = utf8proc_category(c);
    if (cat >= UTF8PROC_CATEGORY_LU && cat <= UTF8PROC_CATEGORY_LO) return CL_WORD;
    if (cat >= UTF8PROC_CATEGORY_ND && cat <= UTF8PROC_CATEGORY_NO) return CL_WORD;
    if (cat >= UTF8PROC_CATEGORY_MN && cat <= UTF8PROC_CATEGORY_ME) return CL_MARK;
    return CL_OTHER;
}

/* Hashes the folded form of a non-ASCII word character: case folded, decomposed, marks
 * dropped, each resulting code point as UTF-8. */
static uint64_t hash_folded(uint64_t h, int32_t c) {
    utf8proc_int32_t d[DECOMP_MAX];
    int last_boundclass = 0;
    utf8proc_ssize_t nd = utf8proc_decompose_char(
        c, d, DECOMP_MAX, UTF8PROC_DECOMPOSE | UTF8PROC_STRIPMARK | UTF8PROC_CASEFOLD,
        &last_boundclass);
    if (nd < 0 || nd > DECOMP_MAX) { /* cannot happen with these options; keep c as is */
        d[0] = c;
        nd = 1;
    }
    for (utf8proc_ssize_t k = 0; k < nd; k++) {
        utf8proc_uint8_t u[UTF8_MAX_BYTES];
        utf8proc_ssize_t nb = utf8proc_encode_char(d[k], u);
        for (utf8proc_ssize_t b = 0; b < nb; b++) h = fnv_byte(h, u[b]);
    }
    return h;
}

static int is_punct_cp(int32_t c);

/* Splits s[0, len) into words (textstats.h) and counts its sentences into w (reset
 * first). With punct, every punctuation mark other than the apostrophe is a word of its
 * own too (the "_punct" figures). 0, or -1 out of memory. */
static int scan_words_ex(const char *s, size_t len, ts_words *w, int punct) {
    const uint8_t *p = (const uint8_t *)s;
    size_t i = 0, wbeg = 0, wend = 0, in_sentence = 0, pending_apos = 0;
    int in_word = 0;
    uint64_t h = 0;
    w->n = 0;
    w->sentences = 0;
    while (i < len) {
        int32_t c = p[i];
        size_t k = 1;
        int cl;
        if (c < 0x80) {
            if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')) cl = CL_WORD;
            else if (c >= 'A' && c <= 'Z') cl = CL_WORD, c += 'a' - 'A';
            else if (c == '\'') cl = CL_APOS;
            else if (c == '.' || c == '!' || c == '?') cl = CL_END;
            else cl = CL_OTHER;
        } else {
            utf8proc_int32_t cp;
            utf8proc_ssize_t r = utf8proc_iterate(p + i, (utf8proc_ssize_t)(len - i), &cp);
            if (r <= 0) {
                cl = CL_OTHER; /* an invalid byte separates words */
            } else {
                k = (size_t)r;
                c = cp;
                cl = class_of(c);
            }
        }
        if (cl == CL_MARK && !in_word) cl = CL_OTHER;
        if (cl == CL_WORD || cl == CL_MARK) {
            if (!in_word) {
                in_word = 1;
                h = FNV_OFFSET;
                wbeg = i;
            }
            for (; pending_apos; pending_apos--) h = fnv_byte(h, '\'');
            h = c < 0x80 ? fnv_byte(h, (uint8_t)c) : hash_folded(h, c);
            wend = i + k;
        } else if (cl == CL_APOS) {
            if (in_word) pending_apos++;
        } else {
            if (in_word) {
                if (words_push(w, h, wbeg, wend)) return -1;
                in_sentence++;
                in_word = 0;
                pending_apos = 0;
            }
            if (cl == CL_END && in_sentence) {
                w->sentences++;
                in_sentence = 0;
            }
            if (punct && (cl == CL_END || (cl == CL_OTHER && is_punct_cp(c)))) {
                uint64_t ph = FNV_OFFSET;
                for (size_t b = 0; b < k; b++) ph = fnv_byte(ph, p[i + b]);
                if (words_push(w, fnv_byte(ph, 0xff), i, i + k)) return -1; /* no word hashes so */
            }
        }
        i += k;
    }
    if (in_word) {
        if (words_push(w, h, wbeg, wend)) return -1;
        in_sentence++;
    }
    if (in_sentence) w->sentences++;
    return 0;
}

static int scan_words(const char *s, size_t len, ts_words *w) { return scan_words_ex(s, len, w, 0); }

/* Hash of the n words starting at w. */
static inline uint64_t ngram_hash(const uint64_t *w, int n) {
    uint64_t h = NGRAM_SEED + (uint64_t)n;
    for (int j = 0; j < n; j++) h = mix64(h * NGRAM_MULT + w[j]);
    return h;
}

/* ------------------------------------------------------------------ reference */

struct cdcd_text_ref {
    ts_set uni; /* with counts */
    ts_set bi, tri;
    ts_set bi_p, tri_p; /* with punctuation marks as words */
    uint64_t n_words;
    size_t n_stories;
};

static void set_err(char *err, size_t errlen, const char *fmt, const char *a, const char *b) {
    if (err && errlen) snprintf(err, errlen, fmt, a, b);
}

static cdcd_text_ref *ref_new(void) {
    cdcd_text_ref *r = calloc(1, sizeof *r);
    if (!r) return NULL;
    if (set_init(&r->uni, 0, 1) || set_init(&r->bi, 0, 0) || set_init(&r->tri, 0, 0) ||
        set_init(&r->bi_p, 0, 0) || set_init(&r->tri_p, 0, 0)) {
        cdcd_text_ref_free(r);
        return NULL;
    }
    return r;
}

void cdcd_text_ref_free(cdcd_text_ref *r) {
    if (!r) return;
    set_free(&r->uni);
    set_free(&r->bi);
    set_free(&r->tri);
    set_free(&r->bi_p);
    set_free(&r->tri_p);
    free(r);
}

size_t cdcd_text_ref_stories(const cdcd_text_ref *r) { return r ? r->n_stories : 0; }
uint64_t cdcd_text_ref_words(const cdcd_text_ref *r) { return r ? r->n_words : 0; }

/* Adds one story's unigrams (counted), bigrams and trigrams. w is scratch. 0 or -1. */
static int ref_add(cdcd_text_ref *r, const char *s, size_t len, ts_words *w) {
    if (scan_words(s, len, w)) return -1;
    for (size_t i = 0; i < w->n; i++) {
        if (set_add(&r->uni, w->h[i], 1) < 0) return -1;
        if (i >= 1 && set_add(&r->bi, ngram_hash(w->h + i - 1, 2), 0) < 0) return -1;
        if (i >= 2 && set_add(&r->tri, ngram_hash(w->h + i - 2, 3), 0) < 0) return -1;
    }
    r->n_words += w->n;
    r->n_stories++;
    if (scan_words_ex(s, len, w, 1)) return -1;
    for (size_t i = 0; i < w->n; i++) {
        if (i >= 1 && set_add(&r->bi_p, ngram_hash(w->h + i - 1, 2), 0) < 0) return -1;
        if (i >= 2 && set_add(&r->tri_p, ngram_hash(w->h + i - 2, 3), 0) < 0) return -1;
    }
    return 0;
}

cdcd_text_ref *cdcd_text_ref_build(const char *const *stories, size_t n) {
    ts_words w = {0};
    cdcd_text_ref *r = ref_new();
    if (!r) return NULL;
    for (size_t i = 0; i < n; i++)
        if (ref_add(r, stories[i], strlen(stories[i]), &w)) goto fail;
    words_free(&w);
    return r;
fail:
    words_free(&w);
    cdcd_text_ref_free(r);
    return NULL;
}

/* A read-only mapping of a whole file (len 0: map NULL). 0, or -1 with a message. */
static int map_file(const char *path, const char **map, size_t *len, char *err, size_t errlen) {
    *map = NULL;
    *len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        set_err(err, errlen, "%s: %s", path, S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file");
        close(fd);
        return -1;
    }
    if ((uint64_t)st.st_size > CDCD_TEXT_MAX_FILE_BYTES) {
        set_err(err, errlen, "%s: %s", path, "larger than CDCD_TEXT_MAX_FILE_BYTES");
        close(fd);
        return -1;
    }
    if (st.st_size > 0) {
        void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (m == MAP_FAILED) {
            set_err(err, errlen, "%s: mmap: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        madvise(m, (size_t)st.st_size, MADV_SEQUENTIAL);
        *map = m;
        *len = (size_t)st.st_size;
    }
    close(fd);
    return 0;
}

static inline int is_space_byte(char c) { return c == ' ' || c == '\n' || c == '\t' || c == '\r'; }

/* Calls fn(ctx, story, len) for each non-empty story of a TinyStories text (split on the
 * separator, trimmed) until fn returns nonzero; returns that value, or 0. */
static int for_each_text_story(const char *s, size_t len, int (*fn)(void *, const char *, size_t),
                               void *ctx) {
    const char *p = s, *end = s + len;
    while (p < end) {
        const char *q = memmem(p, (size_t)(end - p), CDCD_TEXT_STORY_SEPARATOR, SEPARATOR_LEN);
        const char *b = p, *e = q ? q : end;
        while (b < e && is_space_byte(*b)) b++;
        while (e > b && is_space_byte(e[-1])) e--;
        if (e > b) {
            int rc = fn(ctx, b, (size_t)(e - b));
            if (rc) return rc;
        }
        if (!q) break;
        p = q + SEPARATOR_LEN;
    }
    return 0;
}

typedef struct {
    cdcd_text_ref *r;
    ts_words w;
} ref_load_ctx;

static int ref_load_story(void *ctx, const char *s, size_t len) {
    ref_load_ctx *c = ctx;
    return ref_add(c->r, s, len, &c->w) ? -1 : 0;
}

cdcd_text_ref *cdcd_text_ref_load(const char *path, char *err, size_t errlen) {
    const char *map = NULL;
    size_t len = 0;
    ref_load_ctx c = {0};
    if (map_file(path, &map, &len, err, errlen)) return NULL;
    c.r = ref_new();
    if (!c.r) goto oom;
    if (for_each_text_story(map, len, ref_load_story, &c)) goto oom;
    if (c.r->n_stories == 0) {
        set_err(err, errlen, "%s: %s", path, "no stories");
        goto fail;
    }
    words_free(&c.w);
    if (map) munmap((void *)map, len);
    return c.r;
oom:
    set_err(err, errlen, "%s: %s", path, "out of memory");
fail:
    words_free(&c.w);
    if (map) munmap((void *)map, len);
    cdcd_text_ref_free(c.r);
    return NULL;
}

/* Story i of a token file decoded as a story (malloc'd), ids32 scratch grown as needed.
 * NULL with errno ENOMEM or EINVAL. */
static char *decode_tok_story(const cdcd_tokfile *f, uint64_t i, const cdcd_tokenizer *tok,
                              int32_t **ids32, size_t *cap) {
    uint64_t n = cdcd_tokfile_story_len(f, i);
    const uint16_t *src = cdcd_tokfile_story(f, i);
    if (n > *cap) {
        int32_t *nb = realloc(*ids32, (size_t)n * sizeof *nb);
        if (!nb) {
            errno = ENOMEM;
            return NULL;
        }
        *ids32 = nb;
        *cap = (size_t)n;
    }
    for (uint64_t j = 0; j < n; j++) (*ids32)[j] = src[j];
    return cdcd_tok_decode(tok, *ids32, (size_t)n, 0);
}

cdcd_text_ref *cdcd_text_ref_from_tokfile(const char *tok_path, const cdcd_tokenizer *tok,
                                          char *err, size_t errlen) {
    ts_words w = {0};
    int32_t *ids32 = NULL;
    size_t cap = 0;
    cdcd_text_ref *r = NULL;
    if (!tok) {
        set_err(err, errlen, "%s: %s", tok_path, "decoding a token file needs the vocabulary");
        return NULL;
    }
    cdcd_tokfile *f = cdcd_tokfile_open(tok_path, tok, err, errlen);
    if (!f) return NULL;
    r = ref_new();
    if (!r) goto oom;
    for (uint64_t i = 0; i < f->h.n_stories; i++) {
        char *text = decode_tok_story(f, i, tok, &ids32, &cap);
        if (!text) {
            if (errno == ENOMEM) goto oom;
            set_err(err, errlen, "%s: %s", tok_path, "an id outside the vocabulary");
            goto fail;
        }
        int rc = ref_add(r, text, strlen(text), &w);
        free(text);
        if (rc) goto oom;
    }
    if (r->n_stories == 0) {
        set_err(err, errlen, "%s: %s", tok_path, "no stories");
        goto fail;
    }
    free(ids32);
    words_free(&w);
    cdcd_tokfile_close(f);
    return r;
oom:
    set_err(err, errlen, "%s: %s", tok_path, "out of memory");
fail:
    free(ids32);
    words_free(&w);
    cdcd_tokfile_close(f);
    cdcd_text_ref_free(r);
    return NULL;
}

/* 1 when path starts with the token file magic, 0 when not, -1 (message) when it cannot
 * be read. */
static int is_tokfile(const char *path, char *err, size_t errlen) {
    char magic[sizeof CDCD_TOKFILE_MAGIC - 1];
    FILE *fp = fopen(path, "rb");
    if (!fp) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    size_t got = fread(magic, 1, sizeof magic, fp);
    fclose(fp);
    return got == sizeof magic && memcmp(magic, CDCD_TOKFILE_MAGIC, sizeof magic) == 0;
}

cdcd_text_ref *cdcd_text_ref_open(const char *path, const cdcd_tokenizer *tok, char *err,
                                  size_t errlen) {
    int t = is_tokfile(path, err, errlen);
    if (t < 0) return NULL;
    return t ? cdcd_text_ref_from_tokfile(path, tok, err, errlen) : cdcd_text_ref_load(path, err, errlen);
}

/* ------------------------------------------------------------------ story lists */

void cdcd_text_stories_free(char **stories, size_t n) {
    if (!stories) return;
    for (size_t i = 0; i < n; i++) free(stories[i]);
    free(stories);
}

typedef struct {
    char **v;
    size_t n, cap, max_n;
} story_list;

/* Appends a story (taken over: freed on failure). 0 or -1. */
static int list_push(story_list *l, char *s) {
    if (!s) return -1;
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : WORDS_MIN_CAP;
        char **nv = realloc(l->v, cap * sizeof *nv);
        if (!nv) {
            free(s);
            return -1;
        }
        l->v = nv;
        l->cap = cap;
    }
    l->v[l->n++] = s;
    return 0;
}

#define LIST_FULL 1 /* for_each_text_story's stop signal once max_n stories are in */

static int list_text_story(void *ctx, const char *s, size_t len) {
    story_list *l = ctx;
    if (l->max_n && l->n >= l->max_n) return LIST_FULL;
    char *c = malloc(len + 1);
    if (!c) return -1;
    memcpy(c, s, len);
    c[len] = '\0';
    return list_push(l, c) ? -1 : 0;
}

int cdcd_text_stories_load(const char *path, size_t max_n, char ***out, size_t *n, char *err,
                           size_t errlen) {
    const char *map = NULL;
    size_t len = 0;
    story_list l = {.max_n = max_n};
    *out = NULL;
    *n = 0;
    if (map_file(path, &map, &len, err, errlen)) return -1;
    int rc = for_each_text_story(map, len, list_text_story, &l);
    if (map) munmap((void *)map, len);
    if (rc < 0) {
        set_err(err, errlen, "%s: %s", path, "out of memory");
        cdcd_text_stories_free(l.v, l.n);
        return -1;
    }
    *out = l.v;
    *n = l.n;
    return 0;
}

int cdcd_text_stories_from_tokfile(const char *tok_path, const cdcd_tokenizer *tok, size_t max_n,
                                   char ***out, size_t *n, char *err, size_t errlen) {
    story_list l = {.max_n = max_n};
    int32_t *ids32 = NULL;
    size_t cap = 0;
    *out = NULL;
    *n = 0;
    if (!tok) {
        set_err(err, errlen, "%s: %s", tok_path, "decoding a token file needs the vocabulary");
        return -1;
    }
    cdcd_tokfile *f = cdcd_tokfile_open(tok_path, tok, err, errlen);
    if (!f) return -1;
    uint64_t want = f->h.n_stories;
    if (max_n && max_n < want) want = max_n;
    for (uint64_t i = 0; i < want; i++) {
        char *text = decode_tok_story(f, i, tok, &ids32, &cap);
        if (!text) {
            set_err(err, errlen, "%s: %s", tok_path,
                    errno == ENOMEM ? "out of memory" : "an id outside the vocabulary");
            goto fail;
        }
        if (list_push(&l, text)) {
            set_err(err, errlen, "%s: %s", tok_path, "out of memory");
            goto fail;
        }
    }
    free(ids32);
    cdcd_tokfile_close(f);
    *out = l.v;
    *n = l.n;
    return 0;
fail:
    free(ids32);
    cdcd_tokfile_close(f);
    cdcd_text_stories_free(l.v, l.n);
    return -1;
}

int cdcd_text_stories_open(const char *path, const cdcd_tokenizer *tok, size_t max_n,
                           char ***out, size_t *n, char *err, size_t errlen) {
    int t = is_tokfile(path, err, errlen);
    *out = NULL;
    *n = 0;
    if (t < 0) return -1;
    return t ? cdcd_text_stories_from_tokfile(path, tok, max_n, out, n, err, errlen)
             : cdcd_text_stories_load(path, max_n, out, n, err, errlen);
}

/* ------------------------------------------------------------------ statistics */

#define FIELD(name) {#name, offsetof(cdcd_text_stats, name)}
const cdcd_text_stats_field cdcd_text_stats_fields[] = {
    FIELD(words_per_story), FIELD(bigram_seen),         FIELD(trigram_seen),
    FIELD(distinct1),       FIELD(distinct2),           FIELD(repeat4),
    FIELD(dangling),        FIELD(sentences_per_story), FIELD(words_per_sentence),
    FIELD(unigram_kl),      FIELD(token_entropy),       FIELD(bigram_seen_punct),
    FIELD(trigram_seen_punct),
};
#undef FIELD
const size_t cdcd_text_stats_n_fields = sizeof cdcd_text_stats_fields / sizeof cdcd_text_stats_fields[0];

static inline double share(uint64_t num, uint64_t den) { return den ? (double)num / (double)den : NAN; }

/* BERT's punctuation (the tokenizer's rule): ASCII 33-47, 58-64, 91-96, 123-126, or P*. */
static int is_punct_cp(int32_t c) {
    if (c < 128) return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
                        (c >= 123 && c <= 126);
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

/* A piece a "##" piece can attach to: not a special token, not one punctuation mark. */
static int piece_is_word(const cdcd_tokenizer *tok, int32_t id) {
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    if (id == sp->pad || id == sp->unk || id == sp->cls || id == sp->sep || id == sp->mask) return 0;
    const char *p = cdcd_tok_piece(tok, id);
    if (!p || !*p) return 0;
    utf8proc_int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const utf8proc_uint8_t *)p, -1, &c);
    if (k <= 0) return 1;
    return p[k] != '\0' || !is_punct_cp(c);
}

/* Counts the tokens of ids[0, n) and the dangling ones among them (textstats.h); with
 * sample_ids, [PAD]/[CLS] are skipped and the story ends at the first [SEP]. */
static void count_dangling(const cdcd_tokenizer *tok, const int32_t *ids, size_t n, int sample_ids,
                           uint64_t *tokens, uint64_t *dangling) {
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    int attach = 0; /* the previous token is one a "##" piece can join */
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (sample_ids) {
            if (id == sp->sep) break;
            if (id == sp->pad || id == sp->cls) continue;
        }
        const char *p = cdcd_tok_piece(tok, id);
        ++*tokens;
        if (id == sp->unk) {
            ++*dangling;
            attach = 0;
        } else if (p && strncmp(p, CONT_PREFIX, CONT_PREFIX_LEN) == 0) {
            if (!attach) ++*dangling; /* and attach stays 0: the chain dangles */
        } else {
            attach = piece_is_word(tok, id);
        }
    }
}

int cdcd_text_stats_compute(const cdcd_text_ref *ref, const cdcd_tokenizer *tok,
                            const char *const *texts, size_t n, cdcd_text_stats *out) {
    return cdcd_text_stats_compute_ids(ref, tok, texts, NULL, NULL, n, out);
}

int cdcd_text_stats_compute_ids(const cdcd_text_ref *ref, const cdcd_tokenizer *tok,
                                const char *const *texts, const int32_t *const *ids,
                                const size_t *n_ids, size_t n, cdcd_text_stats *out) {
    int rc = -1;
    ts_words w = {0};
    ts_set uni = {0}, bi = {0}, four = {0};
    uint64_t *tok_counts = NULL;
    cdcd_tok_ids enc;
    cdcd_tok_ids_init(&enc);
    uint64_t n_words = 0, n_sent = 0, n_bi = 0, bi_seen = 0, n_tri = 0, tri_seen = 0;
    uint64_t n_four = 0, four_rep = 0, n_tok = 0, n_dangling = 0, n_tok_enc = 0;
    uint64_t n_bi_p = 0, bi_seen_p = 0, n_tri_p = 0, tri_seen_p = 0;
    int V = tok ? cdcd_tok_vocab_size(tok) : 0;
    if (set_init(&uni, 0, 1) || set_init(&bi, 0, 0)) goto done;
    if (tok && !(tok_counts = calloc((size_t)V, sizeof *tok_counts))) goto done;
    for (size_t s = 0; s < n; s++) {
        const char *text = texts[s] ? texts[s] : "";
        size_t len = strlen(text);
        if (scan_words(text, len, &w)) goto done;
        n_words += w.n;
        n_sent += w.sentences;
        for (size_t i = 0; i < w.n; i++) {
            if (set_add(&uni, w.h[i], 1) < 0) goto done;
            if (i >= 1) {
                uint64_t h = ngram_hash(w.h + i - 1, 2);
                if (set_add(&bi, h, 0) < 0) goto done;
                n_bi++;
                if (ref) bi_seen += set_count(&ref->bi, h) != 0;
            }
            if (i >= 2) {
                n_tri++;
                if (ref) tri_seen += set_count(&ref->tri, ngram_hash(w.h + i - 2, 3)) != 0;
            }
        }
        if (ref) { /* the same shares with punctuation marks as words */
            if (scan_words_ex(text, len, &w, 1)) goto done;
            for (size_t i = 1; i < w.n; i++) {
                n_bi_p++;
                bi_seen_p += set_count(&ref->bi_p, ngram_hash(w.h + i - 1, 2)) != 0;
                if (i >= 2) {
                    n_tri_p++;
                    tri_seen_p += set_count(&ref->tri_p, ngram_hash(w.h + i - 2, 3)) != 0;
                }
            }
            if (scan_words(text, len, &w)) goto done;
        }
        if (w.n >= 4) { /* a fresh set per story, sized to it: O(story), whatever came before */
            if (set_init(&four, w.n - 3, 0)) goto done;
            for (size_t i = 3; i < w.n; i++) {
                int fresh = set_add(&four, ngram_hash(w.h + i - 3, 4), 0);
                if (fresh < 0) goto done;
                n_four++;
                four_rep += fresh == 0;
            }
            set_free(&four);
        }
        if (tok) {
            enc.n = 0;
            if (cdcd_tok_encode(tok, text, len, &enc)) goto done;
            for (size_t i = 0; i < enc.n; i++) tok_counts[enc.ids[i]]++;
            n_tok_enc += enc.n;
            if (ids && ids[s]) {
                for (size_t i = 0; i < n_ids[s]; i++)
                    if (ids[s][i] < 0 || ids[s][i] >= V) {
                        errno = EINVAL;
                        goto done;
                    }
                count_dangling(tok, ids[s], n_ids[s], 1, &n_tok, &n_dangling);
            } else {
                count_dangling(tok, enc.ids, enc.n, 0, &n_tok, &n_dangling);
            }
        }
    }
    memset(out, 0, sizeof *out);
    out->n_stories = (int)n;
    out->words_per_story = n ? (double)n_words / (double)n : NAN;
    out->bigram_seen = ref ? share(bi_seen, n_bi) : NAN;
    out->trigram_seen = ref ? share(tri_seen, n_tri) : NAN;
    out->bigram_seen_punct = ref ? share(bi_seen_p, n_bi_p) : NAN;
    out->trigram_seen_punct = ref ? share(tri_seen_p, n_tri_p) : NAN;
    out->distinct1 = share(uni.n, n_words);
    out->distinct2 = share(bi.n, n_bi);
    out->repeat4 = share(four_rep, n_four);
    out->dangling = tok ? share(n_dangling, n_tok) : NAN;
    out->sentences_per_story = n ? (double)n_sent / (double)n : NAN;
    out->words_per_sentence = share(n_words, n_sent);
    out->unigram_kl = NAN;
    if (ref && n_words) {
        /* Q(w) = (c_ref(w) + 1) / (N_ref + |ref vocabulary ∪ sample vocabulary|) */
        uint64_t unseen = 0;
        for (size_t i = 0; i < uni.cap; i++)
            if (uni.keys[i] != EMPTY_KEY) unseen += set_count(&ref->uni, uni.keys[i]) == 0;
        double qden = (double)ref->n_words + (double)(ref->uni.n + unseen), kl = 0;
        for (size_t i = 0; i < uni.cap; i++) {
            if (uni.keys[i] == EMPTY_KEY) continue;
            double p = (double)uni.counts[i] / (double)n_words;
            double q = ((double)set_count(&ref->uni, uni.keys[i]) + 1.0) / qden;
            kl += p * log(p / q);
        }
        out->unigram_kl = kl;
    }
    out->token_entropy = NAN;
    if (tok && n_tok_enc) {
        double hsum = 0;
        for (int v = 0; v < V; v++)
            if (tok_counts[v]) {
                double p = (double)tok_counts[v] / (double)n_tok_enc;
                hsum -= p * log(p);
            }
        out->token_entropy = hsum;
    }
    rc = 0;
done:
    words_free(&w);
    set_free(&uni);
    set_free(&bi);
    set_free(&four);
    free(tok_counts);
    cdcd_tok_ids_free(&enc);
    return rc;
}

/* ------------------------------------------------------------------ reference rows */

/* Story s cut to its first max_tokens WordPiece tokens, decoded (a copy when uncut). */
static char *cut_story(const cdcd_tokenizer *tok, const char *s, int max_tokens, cdcd_tok_ids *enc) {
    if (max_tokens > 0 && tok) {
        enc->n = 0;
        if (cdcd_tok_encode(tok, s, strlen(s), enc)) return NULL;
        if (enc->n > (size_t)max_tokens) return cdcd_tok_decode(tok, enc->ids, (size_t)max_tokens, 0);
    }
    return strdup(s);
}

/* text with its words permuted (rng stream (seed, SHUFFLE_STREAM + index)), the text
 * between them in place. NULL on out of memory. */
static char *shuffle_words(const char *text, uint64_t seed, size_t index, ts_words *w) {
    size_t len = strlen(text);
    uint32_t *perm = NULL;
    char *out = NULL;
    if (scan_words(text, len, w)) return NULL;
    if (w->n > UINT32_MAX) return NULL;
    perm = malloc((w->n ? w->n : 1) * sizeof *perm);
    out = malloc(len + 1);
    if (!perm || !out) goto fail;
    for (size_t i = 0; i < w->n; i++) perm[i] = (uint32_t)i;
    cdcd_rng r;
    cdcd_rng_init(&r, seed, SHUFFLE_STREAM + (uint64_t)index);
    cdcd_rng_shuffle_u32(&r, perm, w->n);
    size_t o = 0, at = 0; /* at: end of the previous word slot in text */
    for (size_t i = 0; i < w->n; i++) {
        memcpy(out + o, text + at, w->beg[i] - at); /* the gap before slot i */
        o += w->beg[i] - at;
        size_t src = perm[i], wl = w->end[src] - w->beg[src];
        memcpy(out + o, text + w->beg[src], wl);
        o += wl;
        at = w->end[i];
    }
    memcpy(out + o, text + at, len - at);
    o += len - at;
    out[o] = '\0';
    free(perm);
    return out;
fail:
    free(perm);
    free(out);
    return NULL;
}

int cdcd_text_reference_rows(const cdcd_tokenizer *tok, const char *const *stories, size_t n,
                             const int *lengths, uint64_t seed, char **out_real, char **out_shuffled) {
    ts_words w = {0};
    cdcd_tok_ids enc;
    cdcd_tok_ids_init(&enc);
    for (size_t i = 0; i < n; i++) {
        out_real[i] = NULL;
        if (out_shuffled) out_shuffled[i] = NULL;
    }
    for (size_t i = 0; i < n; i++) {
        int cut = lengths ? lengths[i] : 0;
        if (cut > 0 && !tok) goto fail;
        out_real[i] = cut_story(tok, stories[i], cut, &enc);
        if (!out_real[i]) goto fail;
        if (out_shuffled && !(out_shuffled[i] = shuffle_words(out_real[i], seed, i, &w))) goto fail;
    }
    words_free(&w);
    cdcd_tok_ids_free(&enc);
    return 0;
fail:
    for (size_t i = 0; i < n; i++) {
        free(out_real[i]);
        out_real[i] = NULL;
        if (out_shuffled) {
            free(out_shuffled[i]);
            out_shuffled[i] = NULL;
        }
    }
    words_free(&w);
    cdcd_tok_ids_free(&enc);
    return -1;
}
