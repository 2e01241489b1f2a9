#include "check.h"
#include "tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <utf8proc.h>

/* ------------------------------------------------------------------ constants */

#define FNV_OFFSET 0xcbf29ce484222325ull
#define FNV_PRIME 0x100000001b3ull
#define CONT_SALT 0x9e3779b97f4a7c15ull /* "##" keys hash from another seed */
#define SLOT_MULT 0x9e3779b97f4a7c15ull /* Fibonacci hashing of the FNV value */
#define MIN_TABLE_BITS 10
#define CONT_PREFIX "##"
#define CONT_PREFIX_LEN 2
#define UTF8_MAX_BYTES 4
#define CP_GREEK_CAPITAL_SIGMA 0x03A3
#define CP_GREEK_SMALL_SIGMA 0x03C3
#define CP_GREEK_FINAL_SIGMA 0x03C2
#define CP_LATIN_CAPITAL_I_DOT 0x0130 /* the one unconditional multi-char lowercase */
#define CP_COMBINING_DOT_ABOVE 0x0307
#define CP_REPLACEMENT 0xFFFD
#define CP_LINE_SEP 0x2028
#define CP_PARA_SEP 0x2029

/* Byte classes of the ASCII fast path. */
enum { BC_SPACE = 0, BC_WORD = 1, BC_PUNCT = 2, BC_SLOW = 3 };

/* HF BertTokenizer's _is_chinese_char: the CJK Unified Ideographs blocks and their
 * extensions (Unicode block ranges, which utf8proc does not expose). */
static const int32_t cjk_ranges[][2] = {
    {0x4E00, 0x9FFF},   {0x3400, 0x4DBF},   {0x20000, 0x2A6DF}, {0x2A700, 0x2B73F},
    {0x2B740, 0x2B81F}, {0x2B820, 0x2CEAF}, {0xF900, 0xFAFF},   {0x2F800, 0x2FA1F},
};

/* Word_Break MidLetter, MidNumLet and Single_Quote (UAX #29): with Mn, Me, Cf, Lm and Sk
 * they make up Case_Ignorable, which Python's final-sigma rule skips over. utf8proc has
 * categories but not this property. */
static const int32_t word_break_mid[] = {
    0x0027, 0x002E, 0x003A, 0x00B7, 0x0387, 0x055F, 0x05F4, 0x2018,
    0x2019, 0x2024, 0x2027, 0xFE13, 0xFE52, 0xFE55, 0xFF07, 0xFF0E, 0xFF1A,
};

/* ------------------------------------------------------------------ types */

typedef struct {
    uint64_t hash;  /* FNV-1a of the key with the seed of its kind */
    uint32_t key;   /* offset of the key in the pool ("##" stripped for continuations) */
    uint16_t len;   /* key bytes */
    uint8_t cont;   /* 1: a "##" continuation piece */
} vocab_entry;

struct cdcd_tokenizer {
    int n;                 /* vocabulary size */
    char *pool;            /* every line, NUL-terminated, in id order */
    uint32_t *piece_off;   /* id -> offset of its line in pool */
    vocab_entry *entries;  /* by id */
    uint32_t *slots;       /* open addressing: id + 1, 0 = empty */
    int table_bits;
    size_t max_key[2];     /* longest key in bytes: [0] word-initial, [1] continuation */
    cdcd_tok_special sp;
    uint64_t checksum;
    uint8_t byte_class[256];
    int32_t punct_id[128]; /* id of each ASCII punctuation character as a word */
};

/* ------------------------------------------------------------------ helpers */


static inline uint64_t hash_seed(int cont) { return cont ? FNV_OFFSET ^ CONT_SALT : FNV_OFFSET; }
static inline uint64_t hash_step(uint64_t h, uint8_t b) { return (h ^ b) * FNV_PRIME; }

static uint64_t hash_bytes(const uint8_t *s, size_t n, int cont) {
    uint64_t h = hash_seed(cont);
    for (size_t i = 0; i < n; i++) h = hash_step(h, s[i]);
    return h;
}

static inline size_t slot_of(const cdcd_tokenizer *t, uint64_t h) {
    return (size_t)((h * SLOT_MULT) >> (64 - t->table_bits));
}

/* Id of the key (s, n) of kind cont whose hash is h, or -1. */
static inline int32_t vocab_find(const cdcd_tokenizer *t, const uint8_t *s, size_t n, int cont,
                                 uint64_t h) {
    size_t mask = ((size_t)1 << t->table_bits) - 1;
    for (size_t i = slot_of(t, h);; i = (i + 1) & mask) {
        uint32_t e = t->slots[i];
        if (!e) return -1;
        const vocab_entry *v = &t->entries[e - 1];
        if (v->hash == h && v->len == n && v->cont == cont &&
            memcmp(t->pool + v->key, s, n) == 0)
            return (int32_t)(e - 1);
    }
}

static int is_cjk(int32_t c) {
    for (size_t i = 0; i < sizeof cjk_ranges / sizeof cjk_ranges[0]; i++)
        if (c >= cjk_ranges[i][0] && c <= cjk_ranges[i][1]) return 1;
    return 0;
}

static int is_ascii_punct(int32_t c) {
    return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
           (c >= 123 && c <= 126);
}

/* BERT's _is_punctuation: the ASCII symbol ranges (so $ + < = > ^ ` | ~ count) or P*. */
static int is_punct(int32_t c) {
    if (c < 128) return is_ascii_punct(c);
    utf8proc_category_t cat = utf8proc_category(c);
    return cat >= UTF8PROC_CATEGORY_PC && cat <= UTF8PROC_CATEGORY_PO;
}

static int is_cased(int32_t c) {
    utf8proc_category_t cat = utf8proc_category(c);
    return cat == UTF8PROC_CATEGORY_LU || cat == UTF8PROC_CATEGORY_LL ||
           cat == UTF8PROC_CATEGORY_LT || utf8proc_islower(c) || utf8proc_isupper(c);
}

static int is_case_ignorable(int32_t c) {
    utf8proc_category_t cat = utf8proc_category(c);
    if (cat == UTF8PROC_CATEGORY_MN || cat == UTF8PROC_CATEGORY_ME ||
        cat == UTF8PROC_CATEGORY_CF || cat == UTF8PROC_CATEGORY_LM ||
        cat == UTF8PROC_CATEGORY_SK)
        return 1;
    for (size_t i = 0; i < sizeof word_break_mid / sizeof word_break_mid[0]; i++)
        if (word_break_mid[i] == c) return 1;
    return 0;
}

/* Python's str.lower() of the capital sigma at w[i]: final form when a cased letter
 * precedes it and none follows (case-ignorable characters skipped on both sides). */
static int32_t lower_sigma(const int32_t *w, size_t n, size_t i) {
    size_t j = i;
    while (j > 0 && is_case_ignorable(w[j - 1])) j--;
    if (j == 0 || !is_cased(w[j - 1])) return CP_GREEK_SMALL_SIGMA;
    size_t k = i + 1;
    while (k < n && is_case_ignorable(w[k])) k++;
    return (k < n && is_cased(w[k])) ? CP_GREEK_SMALL_SIGMA : CP_GREEK_FINAL_SIGMA;
}

/* Grows *buf to hold at least need elements of size elem. 0, or -1 with errno ENOMEM. */
static int grow(void **buf, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 0;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *p = realloc(*buf, c * elem);
    if (!p) {
        errno = ENOMEM;
        return -1;
    }
    *buf = p;
    *cap = c;
    return 0;
}

static inline int push_id(cdcd_tok_ids *o, int32_t id) {
    if (o->n == o->cap && grow((void **)&o->ids, &o->cap, o->n + 1, sizeof *o->ids)) return -1;
    o->ids[o->n++] = id;
    return 0;
}

/* ------------------------------------------------------------------ loading */

static int build_table(cdcd_tokenizer *t) {
    int bits = MIN_TABLE_BITS;
    while (((size_t)1 << bits) < (size_t)t->n * 2) bits++;
    t->table_bits = bits;
    t->slots = calloc((size_t)1 << bits, sizeof *t->slots);
    return t->slots ? 0 : -1;
}

/* Inserts entry id; returns the id of an identical earlier key, or -1 when new. */
static int32_t table_insert(cdcd_tokenizer *t, int32_t id) {
    const vocab_entry *v = &t->entries[id];
    int32_t old = vocab_find(t, (const uint8_t *)t->pool + v->key, v->len, v->cont, v->hash);
    if (old >= 0) return old;
    size_t mask = ((size_t)1 << t->table_bits) - 1;
    size_t i = slot_of(t, v->hash);
    while (t->slots[i]) i = (i + 1) & mask;
    t->slots[i] = (uint32_t)id + 1;
    return -1;
}

static int valid_utf8(const uint8_t *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

/* Reads a whole file of at most max_bytes. Returns a malloc'd buffer (NUL-terminated)
 * or NULL with a message. */
static char *read_file(const char *path, size_t max_bytes, size_t *len, char *err, size_t errlen) {
    char *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        cdcd_errf(err, errlen, "vocab %s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) < 0) {
        cdcd_errf(err, errlen, "vocab %s: %s", path, strerror(errno));
        goto fail;
    }
    if (!S_ISREG(st.st_mode)) {
        cdcd_errf(err, errlen, "vocab %s: not a regular file", path);
        goto fail;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        cdcd_errf(err, errlen, "vocab %s: %lld bytes, more than the %zu accepted", path,
                (long long)st.st_size, max_bytes);
        goto fail;
    }
    size_t size = (size_t)st.st_size, got = 0;
    buf = malloc(size + 1);
    if (!buf) {
        cdcd_errf(err, errlen, "vocab %s: out of memory", path);
        goto fail;
    }
    while (got < size) {
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            cdcd_errf(err, errlen, "vocab %s: read failed: %s", path,
                    r < 0 ? strerror(errno) : "file shrank while reading");
            goto fail;
        }
        got += (size_t)r;
    }
    buf[size] = '\0';
    *len = size;
    close(fd);
    return buf;
fail:
    free(buf);
    close(fd);
    return NULL;
}

cdcd_tokenizer *cdcd_tok_load(const char *vocab_path, char *err, size_t errlen) {
    return cdcd_tok_load_sized(vocab_path, CDCD_TOK_BERT_VOCAB_SIZE, err, errlen);
}

/* Parses the vocabulary text (size bytes, NUL-terminated, malloc'd: taken over in every
 * case). vocab_path names it in messages. */
static cdcd_tokenizer *tok_parse(char *text, size_t size, const char *vocab_path, int expect_size,
                                 char *err, size_t errlen);

cdcd_tokenizer *cdcd_tok_load_sized(const char *vocab_path, int expect_size, char *err,
                                    size_t errlen) {
    size_t size = 0;
    char *text = read_file(vocab_path, CDCD_TOK_MAX_VOCAB_FILE_BYTES, &size, err, errlen);
    if (!text) return NULL;
    return tok_parse(text, size, vocab_path, expect_size, err, errlen);
}

cdcd_tokenizer *cdcd_tok_load_from_buffer(const void *buf, size_t len, const char *name,
                                          int expect_size, char *err, size_t errlen) {
    if (!name) name = "(buffer)";
    if (len > CDCD_TOK_MAX_VOCAB_FILE_BYTES) {
        cdcd_errf(err, errlen, "vocab %s: %zu bytes, more than the %u accepted", name, len,
                  (unsigned)CDCD_TOK_MAX_VOCAB_FILE_BYTES);
        return NULL;
    }
    char *text = malloc(len + 1);
    if (!text) {
        cdcd_errf(err, errlen, "vocab %s: out of memory", name);
        return NULL;
    }
    if (len) memcpy(text, buf, len);
    text[len] = '\0';
    return tok_parse(text, len, name, expect_size, err, errlen);
}

static cdcd_tokenizer *tok_parse(char *text, size_t size, const char *vocab_path, int expect_size,
                                 char *err, size_t errlen) {
    cdcd_tokenizer *t = NULL;
    if (size == 0) {
        cdcd_errf(err, errlen, "vocab %s: the file is empty", vocab_path);
        goto fail;
    }
    size_t lines = 0;
    for (size_t i = 0; i < size; i++) lines += text[i] == '\n';
    if (text[size - 1] != '\n') lines++; /* a last line without newline still counts */
    if (expect_size > 0 && lines != (size_t)expect_size) {
        cdcd_errf(err, errlen, "vocab %s: %zu lines, expected %d (one token per line%s)",
                vocab_path, lines, expect_size,
                expect_size == CDCD_TOK_BERT_VOCAB_SIZE ? ", bert-base-uncased" : "");
        goto fail;
    }
    if (lines > CDCD_TOK_MAX_VOCAB) {
        cdcd_errf(err, errlen, "vocab %s: %zu lines, more than %d", vocab_path, lines,
                CDCD_TOK_MAX_VOCAB);
        goto fail;
    }
    t = calloc(1, sizeof *t);
    if (!t) goto oom;
    t->n = (int)lines;
    t->pool = text; /* lines become NUL-terminated strings in place */
    text = NULL;
    t->piece_off = malloc(lines * sizeof *t->piece_off);
    t->entries = calloc(lines, sizeof *t->entries);
    if (!t->piece_off || !t->entries || build_table(t)) goto oom;

    uint64_t sum = FNV_OFFSET;
    size_t off = 0;
    for (size_t id = 0; id < lines; id++) {
        char *line = t->pool + off;
        char *nl = memchr(line, '\n', size - off);
        size_t len = nl ? (size_t)(nl - line) : size - off;
        if (nl) *nl = '\0';
        if (len == 0) {
            cdcd_errf(err, errlen, "vocab %s: line %zu is empty", vocab_path, id + 1);
            goto fail;
        }
        if (line[len - 1] == '\r') {
            cdcd_errf(err, errlen, "vocab %s: line %zu ends with CR (Windows line endings?)",
                    vocab_path, id + 1);
            goto fail;
        }
        if (len > CDCD_TOK_MAX_PIECE_BYTES) {
            cdcd_errf(err, errlen, "vocab %s: line %zu is %zu bytes, more than %d", vocab_path,
                    id + 1, len, CDCD_TOK_MAX_PIECE_BYTES);
            goto fail;
        }
        if (memchr(line, '\0', len) || !valid_utf8((const uint8_t *)line, len)) {
            cdcd_errf(err, errlen, "vocab %s: line %zu is not valid UTF-8 text", vocab_path,
                    id + 1);
            goto fail;
        }
        for (size_t i = 0; i < len; i++) sum = hash_step(sum, (uint8_t)line[i]);
        sum = hash_step(sum, '\n');
        vocab_entry *v = &t->entries[id];
        /* "##" on its own is a word-initial key (it has no continuation text). */
        v->cont = len > CONT_PREFIX_LEN && memcmp(line, CONT_PREFIX, CONT_PREFIX_LEN) == 0;
        v->key = (uint32_t)(off + (v->cont ? CONT_PREFIX_LEN : 0));
        v->len = (uint16_t)(len - (v->cont ? CONT_PREFIX_LEN : 0));
        v->hash = hash_bytes((const uint8_t *)t->pool + v->key, v->len, v->cont);
        t->piece_off[id] = (uint32_t)off;
        if (v->len > t->max_key[v->cont]) t->max_key[v->cont] = v->len;
        int32_t dup = table_insert(t, (int32_t)id);
        if (dup >= 0) {
            cdcd_errf(err, errlen, "vocab %s: line %zu duplicates line %d (\"%s\")", vocab_path,
                    id + 1, dup + 1, line);
            goto fail;
        }
        off += len + 1;
    }
    t->checksum = sum;

    struct {
        const char *name;
        int32_t *id;
    } specials[] = {{"[PAD]", &t->sp.pad}, {"[UNK]", &t->sp.unk}, {"[CLS]", &t->sp.cls},
                    {"[SEP]", &t->sp.sep}, {"[MASK]", &t->sp.mask}};
    for (size_t i = 0; i < sizeof specials / sizeof specials[0]; i++) {
        *specials[i].id = cdcd_tok_lookup(t, specials[i].name);
        if (*specials[i].id < 0) {
            cdcd_errf(err, errlen, "vocab %s: no %s token", vocab_path, specials[i].name);
            goto fail;
        }
    }

    for (int c = 0; c < 256; c++) {
        if (c == ' ' || c == '\t' || c == '\n' || c == '\r')
            t->byte_class[c] = BC_SPACE;
        else if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
            t->byte_class[c] = BC_WORD;
        else if (is_ascii_punct(c))
            t->byte_class[c] = BC_PUNCT;
        else
            t->byte_class[c] = BC_SLOW; /* controls, DEL and every non-ASCII byte */
    }
    for (int c = 0; c < 128; c++) {
        uint8_t b = (uint8_t)c;
        int32_t id = vocab_find(t, &b, 1, 0, hash_bytes(&b, 1, 0));
        t->punct_id[c] = id >= 0 ? id : t->sp.unk;
    }
    return t;

oom:
    cdcd_errf(err, errlen, "vocab %s: out of memory", vocab_path);
fail:
    free(text);
    cdcd_tok_free(t);
    return NULL;
}

void cdcd_tok_free(cdcd_tokenizer *t) {
    if (!t) return;
    free(t->pool);
    free(t->piece_off);
    free(t->entries);
    free(t->slots);
    free(t);
}

int cdcd_tok_vocab_size(const cdcd_tokenizer *t) { return t->n; }
const cdcd_tok_special *cdcd_tok_specials(const cdcd_tokenizer *t) { return &t->sp; }
uint64_t cdcd_tok_checksum(const cdcd_tokenizer *t) { return t->checksum; }

int32_t cdcd_tok_lookup(const cdcd_tokenizer *t, const char *piece) {
    size_t len = strlen(piece);
    int cont = len > CONT_PREFIX_LEN && memcmp(piece, CONT_PREFIX, CONT_PREFIX_LEN) == 0;
    const uint8_t *key = (const uint8_t *)piece + (cont ? CONT_PREFIX_LEN : 0);
    size_t n = len - (cont ? CONT_PREFIX_LEN : 0);
    return vocab_find(t, key, n, cont, hash_bytes(key, n, cont));
}

const char *cdcd_tok_piece(const cdcd_tokenizer *t, int32_t id) {
    if (id < 0 || id >= t->n) return NULL;
    return t->pool + t->piece_off[id];
}

/* ------------------------------------------------------------------ encoding */

void cdcd_tok_ids_init(cdcd_tok_ids *o) { memset(o, 0, sizeof *o); }

void cdcd_tok_ids_free(cdcd_tok_ids *o) {
    free(o->ids);
    free(o->cp_a);
    free(o->cp_b);
    free(o->cp_c);
    free(o->u8);
    memset(o, 0, sizeof *o);
}

/* Appends the WordPiece ids of one word: nb bytes of UTF-8, nchars code points, already
 * lowercased and normalised, without whitespace or punctuation. Greedy longest match
 * first; keys longer than the longest vocabulary key are never tried, and the prefix
 * hashes of the remaining text are computed once per piece. 0, or -1 on ENOMEM. */
static int wordpiece(const cdcd_tokenizer *t, const uint8_t *w, size_t nb, size_t nchars,
                     cdcd_tok_ids *o) {
    if (nchars > CDCD_TOK_MAX_WORD_CHARS) return push_id(o, t->sp.unk);
    uint64_t prefix_hash[CDCD_TOK_MAX_PIECE_BYTES + 1];
    size_t n0 = o->n, start = 0;
    while (start < nb) {
        int cont = start > 0;
        size_t lim = nb - start < t->max_key[cont] ? nb - start : t->max_key[cont];
        uint64_t h = hash_seed(cont);
        for (size_t k = 0; k < lim; k++) prefix_hash[k + 1] = h = hash_step(h, w[start + k]);
        int32_t id = -1;
        size_t len = lim;
        for (; len > 0; len--) {
            /* only whole code points: the byte after the piece must not be a continuation */
            if (start + len < nb && (w[start + len] & 0xC0) == 0x80) continue;
            id = vocab_find(t, w + start, len, cont, prefix_hash[len]);
            if (id >= 0) break;
        }
        if (id < 0) {
            o->n = n0; /* the whole word becomes [UNK] */
            return push_id(o, t->sp.unk);
        }
        if (push_id(o, id)) return -1;
        start += len;
    }
    return 0;
}

/* A run of printable ASCII between whitespace: lowercase, split punctuation, WordPiece. */
static int encode_ascii_chunk(const cdcd_tokenizer *t, const uint8_t *s, size_t n,
                              cdcd_tok_ids *o) {
    uint8_t word[CDCD_TOK_MAX_WORD_CHARS + 1];
    size_t wl = 0; /* characters of the current word (counted past the buffer) */
    for (size_t i = 0; i <= n; i++) {
        int punct = i < n && t->byte_class[s[i]] == BC_PUNCT;
        if (i < n && !punct) {
            uint8_t c = s[i];
            if (wl < sizeof word) word[wl] = (c >= 'A' && c <= 'Z') ? (uint8_t)(c | 0x20) : c;
            wl++;
            continue;
        }
        if (wl && wordpiece(t, word, wl > sizeof word ? sizeof word : wl, wl, o)) return -1;
        wl = 0;
        if (punct && push_id(o, t->punct_id[s[i]])) return -1;
    }
    return 0;
}

static int is_split_space(int32_t c) {
    /* Python's str.split(): after cleaning, only the space and the line/paragraph
     * separators (Zl, Zp: not C*, not Zs, yet whitespace to Python) remain. */
    return c == ' ' || c == CP_LINE_SEP || c == CP_PARA_SEP;
}

/* UTF-8 encodes cps[0..n) into o->u8. Returns the byte count, or -1 on ENOMEM. */
static ptrdiff_t to_utf8(cdcd_tok_ids *o, const int32_t *cps, size_t n) {
    if (grow((void **)&o->u8, &o->u8_cap, n * UTF8_MAX_BYTES + 1, 1)) return -1;
    size_t len = 0;
    for (size_t i = 0; i < n; i++) len += (size_t)utf8proc_encode_char(cps[i], o->u8 + len);
    o->u8[len] = 0;
    return (ptrdiff_t)len;
}

/* utf8proc_decompose of o->u8[0..len) into *dst (grown as needed). Returns the code point
 * count, or -1 (errno ENOMEM or EINVAL). */
static ptrdiff_t decompose(cdcd_tok_ids *o, size_t len, int32_t **dst, size_t *cap,
                           utf8proc_option_t opts) {
    for (;;) {
        utf8proc_ssize_t r = utf8proc_decompose(o->u8, (utf8proc_ssize_t)len, *dst,
                                                (utf8proc_ssize_t)*cap, opts);
        if (r < 0) {
            errno = r == UTF8PROC_ERROR_NOMEM ? ENOMEM : EINVAL;
            return -1;
        }
        if ((size_t)r <= *cap) return r;
        if (grow((void **)dst, cap, (size_t)r, sizeof **dst)) return -1;
    }
}

/* One whitespace-separated token of the NFC text: lowercase, NFD, drop Mn, split off
 * punctuation, WordPiece. */
static int encode_unicode_word(const cdcd_tokenizer *t, const int32_t *w, size_t n,
                               cdcd_tok_ids *o) {
    if (grow((void **)&o->cp_a, &o->cp_a_cap, 2 * n, sizeof *o->cp_a)) return -1;
    size_t m = 0;
    for (size_t i = 0; i < n; i++) {
        if (w[i] == CP_GREEK_CAPITAL_SIGMA) {
            o->cp_a[m++] = lower_sigma(w, n, i);
        } else if (w[i] == CP_LATIN_CAPITAL_I_DOT) {
            o->cp_a[m++] = 'i';
            o->cp_a[m++] = CP_COMBINING_DOT_ABOVE;
        } else {
            o->cp_a[m++] = utf8proc_tolower(w[i]);
        }
    }
    ptrdiff_t len = to_utf8(o, o->cp_a, m);
    if (len < 0) return -1;
    ptrdiff_t nd = decompose(o, (size_t)len, &o->cp_c, &o->cp_c_cap,
                             UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
    if (nd < 0) return -1;
    /* o->u8 is free again: build each word's UTF-8 there. */
    if (grow((void **)&o->u8, &o->u8_cap, (size_t)nd * UTF8_MAX_BYTES + 1, 1)) return -1;
    size_t wb = 0, wc = 0;
    for (ptrdiff_t i = 0; i <= nd; i++) {
        int32_t c = i < nd ? o->cp_c[i] : 0;
        if (i < nd && utf8proc_category(c) == UTF8PROC_CATEGORY_MN) continue;
        int punct = i < nd && is_punct(c);
        if (i < nd && !punct) {
            wb += (size_t)utf8proc_encode_char(c, o->u8 + wb);
            wc++;
            continue;
        }
        if (wc && wordpiece(t, o->u8, wb, wc, o)) return -1;
        wb = wc = 0;
        if (punct) {
            uint8_t p[UTF8_MAX_BYTES];
            size_t pl = (size_t)utf8proc_encode_char(c, p);
            if (wordpiece(t, p, pl, 1, o)) return -1;
        }
    }
    return 0;
}

/* A run of bytes between ASCII whitespace that holds something other than printable
 * ASCII: the full BasicTokenizer path. Chunks are independent because whitespace maps to
 * a space, and NFC never composes across a space. */
static int encode_unicode_chunk(const cdcd_tokenizer *t, const uint8_t *s, size_t n,
                                cdcd_tok_ids *o) {
    /* 1. decode, clean, space out CJK: at most three code points per input byte */
    if (grow((void **)&o->cp_a, &o->cp_a_cap, 3 * n + 1, sizeof *o->cp_a)) return -1;
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) { /* invalid byte: skipped like U+FFFD would be */
            o->invalid_bytes++;
            i++;
            continue;
        }
        i += (size_t)k;
        if (c == 0 || c == CP_REPLACEMENT) continue;
        utf8proc_category_t cat = utf8proc_category(c);
        if (c == '\t' || c == '\n' || c == '\r' || cat == UTF8PROC_CATEGORY_ZS) {
            o->cp_a[m++] = ' ';
        } else if (cat == UTF8PROC_CATEGORY_CN || cat >= UTF8PROC_CATEGORY_CC) {
            continue; /* Cc, Cf, Cs, Co, Cn */
        } else if (is_cjk(c)) {
            o->cp_a[m++] = ' ';
            o->cp_a[m++] = c;
            o->cp_a[m++] = ' ';
        } else {
            o->cp_a[m++] = c;
        }
    }
    if (m == 0) return 0;
    /* 2. NFC */
    ptrdiff_t len = to_utf8(o, o->cp_a, m);
    if (len < 0) return -1;
    ptrdiff_t nc = decompose(o, (size_t)len, &o->cp_b, &o->cp_b_cap,
                             UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nc < 0) return -1;
    nc = utf8proc_normalize_utf32(o->cp_b, nc, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
    if (nc < 0) {
        errno = EINVAL;
        return -1;
    }
    /* 3. whitespace split, then each word */
    for (ptrdiff_t i = 0; i < nc;) {
        while (i < nc && is_split_space(o->cp_b[i])) i++;
        ptrdiff_t j = i;
        while (j < nc && !is_split_space(o->cp_b[j])) j++;
        if (j > i && encode_unicode_word(t, o->cp_b + i, (size_t)(j - i), o)) return -1;
        i = j;
    }
    return 0;
}

int cdcd_tok_encode(const cdcd_tokenizer *t, const char *text, size_t len, cdcd_tok_ids *out) {
    const uint8_t *s = (const uint8_t *)text;
    const uint8_t *cls = t->byte_class;
    size_t i = 0;
    while (i < len) {
        if (cls[s[i]] == BC_SPACE) {
            i++;
            continue;
        }
        size_t j = i;
        while (j < len && cls[s[j]] != BC_SPACE && cls[s[j]] != BC_SLOW) j++;
        if (j < len && cls[s[j]] == BC_SLOW) {
            while (j < len && cls[s[j]] != BC_SPACE) j++;
            if (encode_unicode_chunk(t, s + i, j - i, out)) return -1;
        } else if (encode_ascii_chunk(t, s + i, j - i, out)) {
            return -1;
        }
        i = j;
    }
    return 0;
}

int cdcd_tok_encode_ex(const cdcd_tokenizer *t, const char *text, size_t len, unsigned flags,
                       cdcd_tok_ids *out) {
    if (!(flags & CDCD_TOK_ENCODE_SPECIALS)) return cdcd_tok_encode(t, text, len, out);
    const int32_t ids[] = {t->sp.pad, t->sp.unk, t->sp.cls, t->sp.sep, t->sp.mask};
    size_t done = 0;
    for (size_t i = 0; i < len; i++) {
        if (text[i] != '[') continue;
        for (size_t k = 0; k < sizeof ids / sizeof ids[0]; k++) {
            const char *name = t->pool + t->piece_off[ids[k]];
            size_t nl = strlen(name);
            if (nl > len - i || memcmp(text + i, name, nl) != 0) continue;
            if (cdcd_tok_encode(t, text + done, i - done, out) || push_id(out, ids[k]))
                return -1;
            done = i + nl;
            i = done - 1;
            break;
        }
    }
    return cdcd_tok_encode(t, text + done, len - done, out);
}

/* ------------------------------------------------------------------ decoding */

typedef struct {
    char *s;
    size_t n, cap;
} strbuf;

static int sb_put(strbuf *b, const char *s, size_t n) {
    if (grow((void **)&b->s, &b->cap, b->n + n + 1, 1)) return -1;
    memcpy(b->s + b->n, s, n);
    b->n += n;
    b->s[b->n] = '\0';
    return 0;
}

/* In-place str.replace(from, to) for len(to) <= len(from), left to right, no overlaps. */
static void replace_all(strbuf *b, const char *from, const char *to) {
    size_t fl = strlen(from), tl = strlen(to), r = 0, w = 0;
    while (r < b->n) {
        if (r + fl <= b->n && memcmp(b->s + r, from, fl) == 0) {
            memmove(b->s + w, to, tl);
            w += tl;
            r += fl;
        } else {
            b->s[w++] = b->s[r++];
        }
    }
    b->n = w;
    b->s[w] = '\0';
}

/* HF tokenization_utils_base.clean_up_tokenization, in its order. */
static void hf_cleanup(strbuf *b) {
    static const char *const rules[][2] = {
        {" .", "."},   {" ?", "?"},     {" !", "!"},     {" ,", ","},     {" ' ", "'"},
        {" n't", "n't"}, {" 'm", "'m"}, {" 's", "'s"},   {" 've", "'ve"}, {" 're", "'re"},
    };
    for (size_t i = 0; i < sizeof rules / sizeof rules[0]; i++)
        replace_all(b, rules[i][0], rules[i][1]);
}

/* Story tidying: which words take no space before / after them. Words are whole tokens
 * after "##" glueing, so every punctuation mark is a word of its own. */
static const char *const nospace_before[] = {".", ",", "!", "?", ";", ":", ")", "]",
                                             "}", "%", "\xE2\x80\xA6" /* … */,
                                             "\xE2\x80\x9D" /* ” */};
static const char *const nospace_after[] = {"(", "[", "{", "$", "#", "\xE2\x80\x9C" /* “ */,
                                            "\xE2\x80\x98" /* ‘ */};
/* Pieces an apostrophe glues on both sides: don't, she's, I'm, we're, you'll, he'd, I've. */
static const char *const clitics[] = {"s", "t", "m", "re", "ll", "d", "ve"};
/* A hyphen before one of these opens a clause ("happy - she smiled"), elsewhere it joins
 * a compound ("ice-cream"). The text cannot tell; this guess is right for about 93% of
 * the hyphens in TinyStories train.txt. */
static const char *const clause_openers[] = {
    "a",    "an",      "the",       "it",      "he",     "she",    "they",  "we",
    "i",    "you",     "that",      "this",    "there",  "and",    "but",   "so",
    "or",   "to",      "his",       "her",     "their",  "some",   "something",
    "someone", "one",  "just",      "even",    "if",     "because", "always", "today",
    "when", "now",     "then",      "what",    "all",
};
#define APOS "'"
#define RIGHT_SINGLE_QUOTE "\xE2\x80\x99" /* ’ */
#define POSSESSIVE_MIN_LEN 5 /* "friends' house"; shorter words ending in s are "was", "is" */
#define QUOTE_LOOKAHEAD_WORDS 64 /* a closing single quote is looked for this far (keeps
                                    decode linear on text full of quotes) */

#define IN_SET(w, set) in_set((w), (set), sizeof(set) / sizeof((set)[0]))
static int in_set(const char *w, const char *const *set, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (strcmp(w, set[i]) == 0) return 1;
    return 0;
}

/* A word is anything but a lone punctuation character. */
static int is_word(const char *w) {
    if (!*w) return 0;
    int32_t c;
    utf8proc_ssize_t k = utf8proc_iterate((const uint8_t *)w, -1, &c);
    if (k <= 0) return 1;
    return w[k] != '\0' || !is_punct(c);
}

typedef struct {
    char **w;
    size_t n;
} wordlist;

static const char *wl_at(const wordlist *l, ptrdiff_t k) {
    return k >= 0 && (size_t)k < l->n ? l->w[k] : NULL;
}

static int is_apostrophe(const wordlist *l, size_t k) {
    const char *p = wl_at(l, (ptrdiff_t)k - 1), *q = wl_at(l, (ptrdiff_t)k + 1);
    if (!p || !q || !is_word(p) || !is_word(q)) return 0;
    /* a clitic after it, or a one-letter word before it (o'clock, c'mon, ma'am) */
    return IN_SET(q, clitics) || strlen(p) == 1;
}

/* Joins words with the story spacing rules:
 *  - no space before . , ! ? ; : ) ] } % … ” and a closing quote;
 *  - no space after ( [ { $ # “ ‘ and an opening quote;
 *  - straight double quotes alternate opening / closing;
 *  - an apostrophe between a word and a clitic (or after a one-letter word) is glued on
 *    both sides; after a long word ending in s it is a plural possessive (friends' toys);
 *    otherwise a straight single quote opens when another one follows (before the next
 *    double quote, within QUOTE_LOOKAHEAD_WORDS words), and closes (glued to the left)
 *    when one is open or none follows;
 *  - a hyphen between two words is glued unless a clause opener follows it (and it is
 *    not part of a chain like hide-and-seek). */
static int story_join(const wordlist *l, strbuf *out) {
    int glue_next = 1, dq_open = 0, sq_open = 0;
    for (size_t k = 0; k < l->n; k++) {
        const char *w = l->w[k];
        const char *prev = wl_at(l, (ptrdiff_t)k - 1), *next = wl_at(l, (ptrdiff_t)k + 1);
        int space = !glue_next, glue = 0;
        if (IN_SET(w, nospace_before)) space = 0;
        if (strcmp(w, APOS) == 0 || strcmp(w, RIGHT_SINGLE_QUOTE) == 0) {
            size_t pl = prev ? strlen(prev) : 0;
            if (is_apostrophe(l, k)) {
                space = 0;
                glue = 1;
            } else if (sq_open) {
                space = 0;
                sq_open = 0;
            } else if (prev && next && is_word(prev) && is_word(next) &&
                       pl >= POSSESSIVE_MIN_LEN && prev[pl - 1] == 's') {
                space = 0;
            } else {
                int opens = 0;
                if (strcmp(w, APOS) == 0) {
                    size_t end = k + 1 + QUOTE_LOOKAHEAD_WORDS;
                    for (size_t j = k + 1; j < l->n && j < end && strcmp(l->w[j], "\"") != 0;
                         j++)
                        if (strcmp(l->w[j], APOS) == 0 && !is_apostrophe(l, j)) {
                            opens = 1;
                            break;
                        }
                }
                if (opens) {
                    glue = 1;
                    sq_open = 1;
                } else {
                    space = 0;
                }
            }
        } else if (strcmp(w, "\"") == 0) {
            if (dq_open) space = 0;
            else glue = 1;
            dq_open = !dq_open;
        } else if (strcmp(w, "-") == 0 && prev && next && is_word(prev) && is_word(next)) {
            const char *p2 = wl_at(l, (ptrdiff_t)k - 2), *n2 = wl_at(l, (ptrdiff_t)k + 2);
            int chain = (p2 && strcmp(p2, "-") == 0) || (n2 && strcmp(n2, "-") == 0);
            if (chain || !IN_SET(next, clause_openers)) {
                space = 0;
                glue = 1;
            }
        }
        if (IN_SET(w, nospace_after)) glue = 1;
        if (space && out->n && sb_put(out, " ", 1)) return -1;
        if (sb_put(out, w, strlen(w))) return -1;
        glue_next = glue;
    }
    return 0;
}

char *cdcd_tok_decode(const cdcd_tokenizer *t, const int32_t *ids, size_t n, unsigned flags) {
    strbuf words = {0}, out = {0};
    wordlist l = {0};
    size_t *starts = NULL;
    for (size_t i = 0; i < n; i++)
        if (ids[i] < 0 || ids[i] >= t->n) {
            errno = EINVAL;
            return NULL;
        }
    /* "##" pieces join the word before them (HF: " ".join(tokens).replace(" ##", "")). */
    size_t nw = 0;
    starts = malloc((n + 1) * sizeof *starts);
    if (!starts) goto oom;
    for (size_t i = 0; i < n; i++) {
        int32_t id = ids[i];
        if (id == t->sp.pad || id == t->sp.cls) continue;
        if (id == t->sp.sep && (flags & CDCD_TOK_DECODE_STOP_AT_SEP)) break;
        const char *p = t->pool + t->piece_off[id];
        const vocab_entry *v = &t->entries[id];
        if (nw && (v->cont || strcmp(p, CONT_PREFIX) == 0)) {
            if (sb_put(&words, p + CONT_PREFIX_LEN, v->cont ? v->len : 0)) goto oom;
        } else {
            if (nw && sb_put(&words, "", 1)) goto oom; /* the NUL that ends the last word */
            starts[nw++] = words.n;
            if (sb_put(&words, p, strlen(p))) goto oom;
        }
    }
    if (sb_put(&out, "", 0)) goto oom;
    if (nw) {
        l.w = malloc(nw * sizeof *l.w);
        if (!l.w) goto oom;
        for (size_t k = 0; k < nw; k++) l.w[k] = words.s + starts[k];
        l.n = nw;
        if (flags & CDCD_TOK_DECODE_HF) {
            for (size_t k = 0; k < nw; k++)
                if ((k && sb_put(&out, " ", 1)) || sb_put(&out, l.w[k], strlen(l.w[k])))
                    goto oom;
            hf_cleanup(&out);
        } else if (story_join(&l, &out)) {
            goto oom;
        }
    }
    free(words.s);
    free(starts);
    free(l.w);
    return out.s;
oom:
    free(words.s);
    free(out.s);
    free(starts);
    free(l.w);
    errno = ENOMEM;
    return NULL;
}
