/* Tokenizer: the 447 reference vectors, edge cases, bad vocabularies, decode, the ASCII
 * fast path against the Unicode path, and the round trip over the valid stories. */
#include <errno.h>
#include <stdint.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include <cjson/cJSON.h>

#include "test.h"
#include "tokenizer.h"

#define VOCAB_NAME "bert-base-uncased-vocab.txt"
#define VECTORS_NAME "tokenizer-vectors.jsonl"
#define VALID_NAME "tinystories/valid.txt"
#define N_VECTORS 447
#define MAX_SHOWN 8
#define ROUND_TRIP_MIN_FOLDED 0.99 /* the bar */
#define ROUND_TRIP_MIN_STRICT 0.98 /* see test_round_trip */

static cdcd_tokenizer *tok;

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = '\0';
    fclose(f);
    if (len) *len = (size_t)n;
    return buf;
}

/* Stories of a TinyStories file (split on <|endoftext|>, trimmed, empty ones dropped).
 * Returns the count; *out holds malloc'd strings. */
static size_t load_stories(const char *path, char ***out) {
    char *all = read_all(path, NULL);
    if (!all) return 0;
    size_t n = 0, cap = 0;
    char **v = NULL;
    const char *sep = "<|endoftext|>";
    for (char *p = all; p && *p;) {
        char *q = strstr(p, sep);
        size_t len = q ? (size_t)(q - p) : strlen(p);
        while (len && strchr(" \n\t\r", *p)) p++, len--;
        while (len && strchr(" \n\t\r", p[len - 1])) len--;
        if (len) {
            if (n == cap) {
                cap = cap ? cap * 2 : 512;
                v = realloc(v, cap * sizeof *v);
            }
            v[n] = malloc(len + 1);
            memcpy(v[n], p, len);
            v[n++][len] = '\0';
        }
        p = q ? q + strlen(sep) : NULL;
    }
    free(all);
    *out = v;
    return n;
}

static void free_stories(char **v, size_t n) {
    for (size_t i = 0; i < n; i++) free(v[i]);
    free(v);
}

/* Encodes (text, len) into a fresh buffer. */
static cdcd_tok_ids enc(const char *text, size_t len) {
    cdcd_tok_ids o;
    cdcd_tok_ids_init(&o);
    if (cdcd_tok_encode(tok, text, len, &o)) o.n = (size_t)-1;
    return o;
}

static int same_ids(const cdcd_tok_ids *a, const cdcd_tok_ids *b) {
    return a->n == b->n && (a->n == 0 || memcmp(a->ids, b->ids, a->n * sizeof *a->ids) == 0);
}

/* text (len bytes) must encode to the pieces listed space-separated in want. */
static int encodes_to(const char *text, size_t len, const char *want) {
    cdcd_tok_ids o = enc(text, len);
    char buf[1024];
    snprintf(buf, sizeof buf, "%s", want);
    size_t k = 0;
    int ok = 1;
    for (char *p = strtok(buf, " "); p; p = strtok(NULL, " "), k++) {
        int32_t id = cdcd_tok_lookup(tok, p);
        if (id < 0) {
            printf("  (test bug: piece \"%s\" is not in the vocabulary)\n", p);
            ok = 0;
        }
        if (k >= o.n || o.ids[k] != id) ok = 0;
    }
    if (k != o.n) ok = 0;
    if (!ok) {
        printf("  encode(\"%.*s\") gave", (int)len, text);
        for (size_t i = 0; i < o.n; i++) printf(" %s", cdcd_tok_piece(tok, o.ids[i]));
        printf(", want %s\n", want);
    }
    cdcd_tok_ids_free(&o);
    return ok;
}
#define ENCODES(text, want) encodes_to((text), sizeof(text) - 1, (want))

/* encode(a) == encode(b): relations that need no hard-coded ids. */
static int same_encoding(const char *a, size_t la, const char *b, size_t lb) {
    cdcd_tok_ids x = enc(a, la), y = enc(b, lb);
    int ok = same_ids(&x, &y) && x.n != (size_t)-1;
    if (!ok) printf("  \"%.*s\" and \"%.*s\" encode differently\n", (int)la, a, (int)lb, b);
    cdcd_tok_ids_free(&x);
    cdcd_tok_ids_free(&y);
    return ok;
}
#define SAME(a, b) same_encoding((a), sizeof(a) - 1, (b), sizeof(b) - 1)

TEST(test_vocab_and_specials) {
    ASSERT(tok);
    EXPECT(cdcd_tok_vocab_size(tok) == CDCD_TOK_BERT_VOCAB_SIZE);
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    EXPECT_STREQ(cdcd_tok_piece(tok, sp->pad), "[PAD]");
    EXPECT_STREQ(cdcd_tok_piece(tok, sp->unk), "[UNK]");
    EXPECT_STREQ(cdcd_tok_piece(tok, sp->cls), "[CLS]");
    EXPECT_STREQ(cdcd_tok_piece(tok, sp->sep), "[SEP]");
    EXPECT_STREQ(cdcd_tok_piece(tok, sp->mask), "[MASK]");
    /* every line maps back to its own id */
    int bad = 0;
    for (int id = 0; id < cdcd_tok_vocab_size(tok); id++)
        bad += cdcd_tok_lookup(tok, cdcd_tok_piece(tok, id)) != id;
    EXPECTF(bad == 0, "%d vocabulary lines do not look up to their own id", bad);
    EXPECT(cdcd_tok_piece(tok, -1) == NULL);
    EXPECT(cdcd_tok_piece(tok, CDCD_TOK_BERT_VOCAB_SIZE) == NULL);
    EXPECT(cdcd_tok_lookup(tok, "definitely-not-a-piece") == -1);
}

TEST(test_reference_vectors) {
    ASSERT(tok);
    size_t len;
    char *all = read_all(test_data_path(VECTORS_NAME), &len);
    EXPECTF(all != NULL, "cannot read %s", test_data_path(VECTORS_NAME));
    if (!all) return;
    int n = 0, ok = 0;
    cdcd_tok_ids o;
    cdcd_tok_ids_init(&o);
    for (char *line = strtok(all, "\n"); line; line = strtok(NULL, "\n")) {
        cJSON *j = cJSON_Parse(line);
        const cJSON *text = cJSON_GetObjectItem(j, "text"), *ids = cJSON_GetObjectItem(j, "ids");
        if (!cJSON_IsString(text) || !cJSON_IsArray(ids)) {
            EXPECTF(0, "vector line %d is malformed", n + 1);
            cJSON_Delete(j);
            continue;
        }
        n++;
        o.n = 0;
        EXPECT(cdcd_tok_encode(tok, text->valuestring, strlen(text->valuestring), &o) == 0);
        int match = (size_t)cJSON_GetArraySize(ids) == o.n;
        for (size_t i = 0; match && i < o.n; i++)
            match = cJSON_GetArrayItem(ids, (int)i)->valueint == o.ids[i];
        ok += match;
        if (!match && n - ok <= MAX_SHOWN)
            printf("  vector %d mismatch: \"%.60s\" (%zu ids, want %d)\n", n,
                   text->valuestring, o.n, cJSON_GetArraySize(ids));
        cJSON_Delete(j);
    }
    cdcd_tok_ids_free(&o);
    free(all);
    printf("# reference vectors: %d of %d match\n", ok, n);
    EXPECTF(n == N_VECTORS, "%d vectors read, expected %d", n, N_VECTORS);
    EXPECTF(ok == n, "%d of %d vectors differ", n - ok, n);
}

TEST(test_cleaning) {
    ASSERT(tok);
    EXPECT(SAME("a\0b", "ab"));                 /* NUL dropped */
    EXPECT(SAME("a\xEF\xBF\xBD" "b", "ab"));   /* U+FFFD dropped */
    EXPECT(SAME("a\x07" "b", "ab"));            /* BEL (Cc) dropped */
    EXPECT(SAME("a\x0b" "b", "ab"));            /* VT is Cc, not whitespace, to BERT */
    EXPECT(SAME("a\xC2\x85" "b", "ab"));        /* NEL (Cc) dropped */
    EXPECT(SAME("zero\xE2\x80\x8Bwidth", "zerowidth")); /* U+200B (Cf) dropped */
    EXPECT(SAME("a\xC2\xAD" "b", "ab"));        /* soft hyphen (Cf) dropped */
    EXPECT(SAME("a\tb\nc\r\nd", "a b c d"));
    EXPECT(SAME("a\xC2\xA0" "b", "a b"));       /* NBSP (Zs) splits */
    EXPECT(SAME("a\xE3\x80\x80" "b", "a b"));   /* ideographic space (Zs) */
    EXPECT(SAME("a\xE2\x80\xA8" "b", "a b"));   /* line separator (Zl): Python splits on it */
    EXPECT(SAME("a\xEE\x80\x80" "b", "ab"));    /* private use (Co) dropped */
    cdcd_tok_ids e = enc("", 0), w = enc(" \t\n\r  ", 6);
    EXPECT(e.n == 0 && w.n == 0);
    cdcd_tok_ids_free(&e);
    cdcd_tok_ids_free(&w);
}

TEST(test_case_accents_cjk) {
    ASSERT(tok);
    EXPECT(ENCODES("Hello WORLD", "hello world"));
    EXPECT(SAME("Caf\xC3\xA9 na\xC3\xAFve", "cafe naive"));   /* precomposed accents */
    EXPECT(SAME("Cafe\xCC\x81", "cafe"));                     /* combining acute (Mn) */
    EXPECT(SAME("\xC3\x85land", "aland"));                    /* Å */
    EXPECT(SAME("\xC4\xB0stanbul", "istanbul"));              /* İ: i + U+0307, then stripped */
    /* final sigma: capital sigma lowers to ς at the end of a word, σ elsewhere */
    EXPECT(SAME("\xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3", "\xCE\xBF\xCE\xB4\xCE\xBF\xCF\x82"));
    EXPECT(SAME("\xCE\xA3\xCE\x91", "\xCF\x83\xCE\xB1"));
    EXPECT(ENCODES("\xE4\xB8\xAD\xE6\x96\x87", "\xE4\xB8\xAD \xE6\x96\x87")); /* 中文 */
    EXPECT(SAME("a\xE4\xB8\xAD" "b", "a \xE4\xB8\xAD b"));   /* spaces around CJK */
    EXPECT(ENCODES("\xF0\x9F\x98\x80", "[UNK]"));             /* emoji: not in the vocab */
    EXPECT(ENCODES("smile\xF0\x9F\x98\x80", "[UNK]"));        /* the whole word is [UNK] */
}

TEST(test_punctuation) {
    ASSERT(tok);
    EXPECT(ENCODES("$5.00 @home", "$ 5 . 00 @ home"));
    EXPECT(ENCODES("a+b=c^d`e|f~g", "a + b = c ^ d ` e | f ~ g")); /* ASCII symbols count */
    EXPECT(ENCODES("don't", "don ' t"));
    EXPECT(ENCODES("a\xE2\x80\x94" "b", "a \xE2\x80\x94 b"));        /* — (Pd) */
    EXPECT(ENCODES("\xC2\xBFqu\xC3\xA9?", "\xC2\xBF que ?"));       /* ¿ (Po) */
    EXPECT(ENCODES("\xE2\x80\x9Chi\xE2\x80\x9D", "\xE2\x80\x9C hi \xE2\x80\x9D")); /* “ ” */
    EXPECT(ENCODES("[CLS]", "[ cl ##s ]")); /* special names in text are plain text */
    /* ... unless asked: then they are their ids, and the text around them separate */
    const char *t = "Un[MASK]able [SEP] [mask] [MASK";
    cdcd_tok_ids sp, want;
    cdcd_tok_ids_init(&sp);
    EXPECT(cdcd_tok_encode_ex(tok, t, strlen(t), CDCD_TOK_ENCODE_SPECIALS, &sp) == 0);
    want = enc("un", 2);
    const cdcd_tok_special *s = cdcd_tok_specials(tok);
    cdcd_tok_ids rest = enc("able", 4), tail = enc(" [mask] [MASK", 13);
    int ok = sp.n == want.n + 1 + rest.n + 1 + tail.n;
    size_t k = 0;
    for (size_t i = 0; ok && i < want.n; i++) ok = sp.ids[k++] == want.ids[i];
    ok = ok && sp.ids[k++] == s->mask;
    for (size_t i = 0; ok && i < rest.n; i++) ok = sp.ids[k++] == rest.ids[i];
    ok = ok && sp.ids[k++] == s->sep;
    for (size_t i = 0; ok && i < tail.n; i++) ok = sp.ids[k++] == tail.ids[i];
    EXPECTF(ok, "encode_ex with specials gave %zu ids", sp.n);
    cdcd_tok_ids_free(&sp);
    cdcd_tok_ids_free(&want);
    cdcd_tok_ids_free(&rest);
    cdcd_tok_ids_free(&tail);
    /* × (Sm) is not punctuation: it stays inside the word */
    cdcd_tok_ids x = enc("a\xC3\x97" "b", 4), y = enc("a \xC3\x97 b", 6);
    EXPECT(!same_ids(&x, &y));
    cdcd_tok_ids_free(&x);
    cdcd_tok_ids_free(&y);
}

TEST(test_wordpiece_limits) {
    ASSERT(tok);
    char w[CDCD_TOK_MAX_WORD_CHARS + 16];
    memset(w, 'a', sizeof w);
    cdcd_tok_ids o = enc(w, CDCD_TOK_MAX_WORD_CHARS + 1);
    EXPECT(o.n == 1 && o.ids[0] == cdcd_tok_specials(tok)->unk);
    cdcd_tok_ids_free(&o);
    o = enc(w, CDCD_TOK_MAX_WORD_CHARS);
    EXPECT(o.n > 1); /* exactly 100 characters: still split into pieces */
    for (size_t i = 0; i < o.n; i++) EXPECT(o.ids[i] != cdcd_tok_specials(tok)->unk);
    cdcd_tok_ids_free(&o);
    /* the limit counts characters, not bytes: 60 two-byte letters are fine */
    char u[120], e[60];
    for (int i = 0; i < 60; i++) memcpy(u + 2 * i, "\xC3\xA9", 2); /* é -> e after NFD */
    memset(e, 'e', sizeof e);
    cdcd_tok_ids a = enc(u, sizeof u), b = enc(e, sizeof e);
    EXPECT(same_ids(&a, &b));
    cdcd_tok_ids_free(&a);
    cdcd_tok_ids_free(&b);
    /* punctuation splits a long run before the limit applies */
    char p[CDCD_TOK_MAX_WORD_CHARS + 16];
    memset(p, 'b', sizeof p);
    p[50] = ',';
    o = enc(p, sizeof p);
    EXPECT(o.n > 2);
    for (size_t i = 0; i < o.n; i++) EXPECT(o.ids[i] != cdcd_tok_specials(tok)->unk);
    cdcd_tok_ids_free(&o);
    EXPECT(ENCODES("unaffable", "una ##ffa ##ble"));
}

TEST(test_invalid_utf8) {
    ASSERT(tok);
    struct {
        const char *s;
        size_t len;
        const char *same_as;
        uint64_t bad;
    } cases[] = {
        {"ab\xFF" "cd", 5, "abcd", 1},
        {"ab\xE2\x82", 4, "ab", 2},         /* truncated sequence at the end */
        {"\xC0\xAF" "x", 3, "x", 2},        /* overlong '/' */
        {"\xED\xA0\x80" "y", 4, "y", 3},    /* UTF-16 surrogate */
        {"caf\xC3" " ok", 7, "caf ok", 1},  /* cut before a space */
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        cdcd_tok_ids a = enc(cases[i].s, cases[i].len);
        cdcd_tok_ids b = enc(cases[i].same_as, strlen(cases[i].same_as));
        EXPECTF(same_ids(&a, &b), "case %zu: invalid bytes not skipped", i);
        EXPECTF(a.invalid_bytes == cases[i].bad, "case %zu: %llu invalid bytes counted, want %llu",
                i, (unsigned long long)a.invalid_bytes, (unsigned long long)cases[i].bad);
        cdcd_tok_ids_free(&a);
        cdcd_tok_ids_free(&b);
    }
}

/* Writes text to a file in the test directory; returns its path (static buffer). */
static const char *write_tmp(const char *name, const char *text, size_t len) {
    static char path[4200];
    snprintf(path, sizeof path, "%s/%s", test_tmpdir(), name);
    FILE *f = fopen(path, "wb");
    if (f) {
        fwrite(text, 1, len, f);
        fclose(f);
    }
    return path;
}

static int load_fails_with(const char *name, const char *text, int expect, const char *word) {
    char err[1024] = "";
    cdcd_tokenizer *t = cdcd_tok_load_sized(write_tmp(name, text, strlen(text)), expect, err,
                                            sizeof err);
    int ok = t == NULL && strstr(err, word) != NULL;
    if (!ok) printf("  %s: loaded=%d, message \"%s\" (want \"%s\")\n", name, t != NULL, err, word);
    cdcd_tok_free(t);
    return ok;
}

#define SMALL_VOCAB "[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n##s\ncat\n"

TEST(test_bad_vocab) {
    char err[400] = ""; /* fits EXPECTF's message */
    EXPECT(cdcd_tok_load("/nonexistent/vocab.txt", err, sizeof err) == NULL);
    EXPECT(strstr(err, "cannot open") != NULL);
    EXPECT(load_fails_with("short.txt", SMALL_VOCAB, CDCD_TOK_BERT_VOCAB_SIZE,
                           "8 lines, expected 30522"));
    EXPECT(load_fails_with("dup.txt", SMALL_VOCAB "cat\n", 0, "line 9 duplicates line 8"));
    EXPECT(load_fails_with("empty-line.txt", "[PAD]\n\n[UNK]\n", 0, "line 2 is empty"));
    EXPECT(load_fails_with("crlf.txt", "[PAD]\r\n[UNK]\r\n", 0, "CR"));
    EXPECT(load_fails_with("nounk.txt", "[PAD]\n[CLS]\n[SEP]\n[MASK]\n", 0, "no [UNK]"));
    EXPECT(load_fails_with("empty.txt", "", 0, "empty"));
    EXPECT(load_fails_with("badutf8.txt", SMALL_VOCAB "\xFF\n", 0, "UTF-8"));
    /* a good small vocab loads; a missing final newline does not change it */
    cdcd_tokenizer *a = cdcd_tok_load_sized(write_tmp("ok.txt", SMALL_VOCAB, strlen(SMALL_VOCAB)),
                                            0, err, sizeof err);
    cdcd_tokenizer *b = cdcd_tok_load_sized(
        write_tmp("ok-nonl.txt", SMALL_VOCAB, strlen(SMALL_VOCAB) - 1), 0, err, sizeof err);
    EXPECTF(a && b, "small vocab refused: %s", err);
    if (a && b) {
        EXPECT(cdcd_tok_vocab_size(a) == 8 && cdcd_tok_vocab_size(b) == 8);
        EXPECT(cdcd_tok_checksum(a) == cdcd_tok_checksum(b));
        EXPECT(cdcd_tok_checksum(a) != cdcd_tok_checksum(tok));
        cdcd_tok_ids o;
        cdcd_tok_ids_init(&o);
        EXPECT(cdcd_tok_encode(a, "cats dogs", 9, &o) == 0);
        EXPECT(o.n == 3 && o.ids[0] == 7 && o.ids[1] == 6 && o.ids[2] == 1); /* cat ##s [UNK] */
        cdcd_tok_ids_free(&o);
    }
    cdcd_tok_free(a);
    cdcd_tok_free(b);
}

static char *dec(const char *text, unsigned flags) {
    cdcd_tok_ids o = enc(text, strlen(text));
    char *s = cdcd_tok_decode(tok, o.ids, o.n, flags);
    cdcd_tok_ids_free(&o);
    return s;
}

#define EXPECT_DECODE(text, flags, want)        \
    do {                                        \
        char *s_ = dec((text), (flags));        \
        EXPECT_STREQ(s_, (want));               \
        free(s_);                               \
    } while (0)

/* A vocabulary from memory (a checkpoint's "vocab" section) is the tokenizer the same bytes
 * give from a file: size, checksum, specials, every piece, encode and decode; bad bytes are
 * refused with the same checks, named by the caller's label. */
TEST(test_load_from_buffer_equals_file) {
    ASSERT(tok);
    const char *path = test_data_path(VOCAB_NAME);
    FILE *f = fopen(path, "rb");
    ASSERT(f != NULL);
    static char bytes[1 << 20];
    size_t len = fread(bytes, 1, sizeof bytes, f);
    fclose(f);
    ASSERT(len > 0 && len < sizeof bytes);
    char err[400] = "";
    cdcd_tokenizer *b = cdcd_tok_load_from_buffer(bytes, len, "embedded", CDCD_TOK_BERT_VOCAB_SIZE, err, sizeof err);
    ASSERT(b != NULL);
    EXPECT(cdcd_tok_vocab_size(b) == cdcd_tok_vocab_size(tok));
    EXPECT(cdcd_tok_checksum(b) == cdcd_tok_checksum(tok));
    EXPECT(memcmp(cdcd_tok_specials(b), cdcd_tok_specials(tok), sizeof(cdcd_tok_special)) == 0);
    int same = 1;
    for (int32_t id = 0; id < cdcd_tok_vocab_size(tok); id++)
        same &= strcmp(cdcd_tok_piece(b, id), cdcd_tok_piece(tok, id)) == 0 && cdcd_tok_lookup(b, cdcd_tok_piece(tok, id)) == id;
    EXPECT(same);
    const char *text = "Once upon a time, Lily's cat found a SHINY stone. Caf\xc3\xa9 \xe4\xb8\xad unbelievable!";
    cdcd_tok_ids x, y;
    cdcd_tok_ids_init(&x);
    cdcd_tok_ids_init(&y);
    EXPECT(cdcd_tok_encode(tok, text, strlen(text), &x) == 0 && cdcd_tok_encode(b, text, strlen(text), &y) == 0);
    EXPECT(x.n > 10 && x.n == y.n && memcmp(x.ids, y.ids, x.n * sizeof *x.ids) == 0);
    char *dx = cdcd_tok_decode(tok, x.ids, x.n, 0), *dy = cdcd_tok_decode(b, y.ids, y.n, 0);
    EXPECT(dx && dy && strcmp(dx, dy) == 0);
    free(dx);
    free(dy);
    cdcd_tok_ids_free(&x);
    cdcd_tok_ids_free(&y);
    cdcd_tok_free(b);
    /* The buffer is copied: the caller may reuse it at once. */
    cdcd_tokenizer *s = cdcd_tok_load_from_buffer(SMALL_VOCAB, strlen(SMALL_VOCAB), NULL, 0, err, sizeof err);
    cdcd_tokenizer *sf = cdcd_tok_load_sized(write_tmp("buf.txt", SMALL_VOCAB, strlen(SMALL_VOCAB)), 0, err, sizeof err);
    EXPECT(s && sf && cdcd_tok_checksum(s) == cdcd_tok_checksum(sf) && cdcd_tok_vocab_size(s) == 8);
    cdcd_tok_free(s);
    cdcd_tok_free(sf);
    EXPECT(cdcd_tok_load_from_buffer(SMALL_VOCAB "cat\n", strlen(SMALL_VOCAB) + 4, "ckpt vocab", 0, err, sizeof err) == NULL);
    EXPECTF(strstr(err, "ckpt vocab") && strstr(err, "line 9 duplicates line 8"), "%s", err);
    EXPECT(cdcd_tok_load_from_buffer(bytes, len, "x", 8, err, sizeof err) == NULL && strstr(err, "expected 8"));
    EXPECT(cdcd_tok_load_from_buffer("", 0, "x", 0, err, sizeof err) == NULL && strstr(err, "empty"));
}

TEST(test_decode) {
    ASSERT(tok);
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    EXPECT_DECODE("Hello, World!", 0, "hello, world!");
    EXPECT_DECODE("unaffable", 0, "unaffable"); /* ## pieces glued */
    /* HF's clean_up_tokenization exactly: quotes keep their spaces */
    EXPECT_DECODE("\"Hi,\" she said. Don't, I'm sure it's fine.", CDCD_TOK_DECODE_HF,
                  "\" hi, \" she said. don't, i'm sure it's fine.");
    /* story spacing: quotes, apostrophes, hyphens, brackets */
    EXPECT_DECODE("\"Hi,\" she said. Don't, I'm sure it's fine.", 0,
                  "\"hi,\" she said. don't, i'm sure it's fine.");
    EXPECT_DECODE("They ate ice-cream (yummy) - it was good.", 0,
                  "they ate ice-cream (yummy) - it was good.");
    EXPECT_DECODE("It was 'display day' at the friends' house at 3 o'clock.", 0,
                  "it was 'display day' at the friends' house at 3 o'clock.");
    EXPECT_DECODE("\xE2\x80\x9CHi!\xE2\x80\x9D he said\xE2\x80\xA6", 0,
                  "\xE2\x80\x9Chi!\xE2\x80\x9D he said\xE2\x80\xA6");
    /* specials: [PAD] and [CLS] skipped; [SEP] kept or the end */
    int32_t ids[] = {sp->cls, cdcd_tok_lookup(tok, "the"), cdcd_tok_lookup(tok, "cat"),
                     cdcd_tok_lookup(tok, "##s"), sp->sep, cdcd_tok_lookup(tok, "dog"),
                     sp->pad, sp->pad};
    size_t n = sizeof ids / sizeof ids[0];
    char *s = cdcd_tok_decode(tok, ids, n, CDCD_TOK_DECODE_STOP_AT_SEP);
    EXPECT_STREQ(s, "the cats");
    free(s);
    s = cdcd_tok_decode(tok, ids, n, 0);
    EXPECT_STREQ(s, "the cats [SEP] dog");
    free(s);
    s = cdcd_tok_decode(tok, ids, 0, 0);
    EXPECT_STREQ(s, "");
    free(s);
    int32_t bad[] = {sp->cls, CDCD_TOK_BERT_VOCAB_SIZE};
    errno = 0;
    EXPECT(cdcd_tok_decode(tok, bad, 2, 0) == NULL && errno == EINVAL);
    int32_t neg[] = {-1};
    EXPECT(cdcd_tok_decode(tok, neg, 1, 0) == NULL);
}

/* The ASCII fast path and the Unicode path must agree: a dropped control character at
 * the start of every chunk sends the chunk down the Unicode path, and NBSP for space
 * does the same for the separators. Also: chunks are independent (a + " " + b). */
TEST(test_fast_path_matches_unicode_path) {
    ASSERT(tok);
    char **st = NULL;
    size_t n = load_stories(test_data_path(VALID_NAME), &st);
    EXPECTF(n > 0, "cannot read %s", test_data_path(VALID_NAME));
    size_t diff_ctl = 0, diff_nbsp = 0, diff_concat = 0;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(st[i]);
        char *ctl = malloc(2 * len + 2), *nb = malloc(2 * len + 1);
        size_t a = 0, b = 0;
        ctl[a++] = '\x01';
        for (size_t k = 0; k < len; k++) {
            ctl[a++] = st[i][k];
            if (st[i][k] == ' ' || st[i][k] == '\n') ctl[a++] = '\x01';
            if (st[i][k] == ' ') {
                nb[b++] = '\xC2';
                nb[b++] = '\xA0';
            } else {
                nb[b++] = st[i][k];
            }
        }
        cdcd_tok_ids x = enc(st[i], len), y = enc(ctl, a), z = enc(nb, b);
        diff_ctl += !same_ids(&x, &y);
        diff_nbsp += !same_ids(&x, &z);
        /* split at a space in the middle: encode(left) ++ encode(right) == encode(all) */
        const char *mid = strchr(st[i] + len / 2, ' ');
        if (mid) {
            cdcd_tok_ids l = enc(st[i], (size_t)(mid - st[i]));
            EXPECT(cdcd_tok_encode(tok, mid, len - (size_t)(mid - st[i]), &l) == 0);
            diff_concat += !same_ids(&x, &l);
            cdcd_tok_ids_free(&l);
        }
        cdcd_tok_ids_free(&x);
        cdcd_tok_ids_free(&y);
        cdcd_tok_ids_free(&z);
        free(ctl);
        free(nb);
    }
    EXPECTF(diff_ctl == 0, "%zu stories encode differently on the Unicode path", diff_ctl);
    EXPECTF(diff_nbsp == 0, "%zu stories encode differently with NBSP spaces", diff_nbsp);
    EXPECTF(diff_concat == 0, "%zu stories encode differently in two pieces", diff_concat);
    free_stories(st, n);
}

/* ---------------------------------------------------------------- round trip */

static int is_bert_punct(int32_t c) {
    if (c < 128)
        return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) ||
               (c >= 123 && c <= 126);
    utf8proc_category_t k = utf8proc_category(c);
    return k >= UTF8PROC_CATEGORY_PC && k <= UTF8PROC_CATEGORY_PO;
}

/* The story as BERT uncased sees it, written independently of the tokenizer: controls
 * dropped, NFC, lowercase, NFD, nonspacing marks dropped, whitespace runs folded to one
 * space, trimmed. */
static char *normalise(const char *s) {
    size_t n = strlen(s);
    int32_t *cp = malloc((n + 1) * sizeof *cp);
    size_t m = 0;
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k =
            utf8proc_iterate((const uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) {
            i++;
            continue;
        }
        i += (size_t)k;
        utf8proc_category_t cat = utf8proc_category(c);
        if (c == '\t' || c == '\n' || c == '\r' || cat == UTF8PROC_CATEGORY_ZS ||
            cat == UTF8PROC_CATEGORY_ZL || cat == UTF8PROC_CATEGORY_ZP)
            cp[m++] = ' ';
        else if (c != 0xFFFD && cat != UTF8PROC_CATEGORY_CN && cat < UTF8PROC_CATEGORY_CC)
            cp[m++] = c;
    }
    uint8_t *u = malloc(4 * m + 1);
    size_t ul = 0;
    for (size_t i = 0; i < m; i++) ul += (size_t)utf8proc_encode_char(cp[i], u + ul);
    u[ul] = 0;
    uint8_t *nfc = utf8proc_NFC(u);
    /* lowercase */
    ul = 0;
    for (size_t i = 0; nfc[i];) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(nfc + i, -1, &c);
        i += (size_t)k;
        ul += (size_t)utf8proc_encode_char(utf8proc_tolower(c), u + ul);
    }
    u[ul] = 0;
    uint8_t *nfd = utf8proc_NFD(u);
    char *out = malloc(strlen((char *)nfd) + 1);
    size_t o = 0;
    int pending_space = 0;
    for (size_t i = 0; nfd[i];) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate(nfd + i, -1, &c);
        if (utf8proc_category(c) == UTF8PROC_CATEGORY_MN) {
            i += (size_t)k;
            continue;
        }
        if (c == ' ') {
            pending_space = o > 0;
        } else {
            if (pending_space) out[o++] = ' ';
            pending_space = 0;
            memcpy(out + o, nfd + i, (size_t)k);
            o += (size_t)k;
        }
        i += (size_t)k;
    }
    out[o] = '\0';
    free(cp);
    free(u);
    free(nfc);
    free(nfd);
    return out;
}

/* Drops every space next to a punctuation character: the spacing BERT's tokenizer erases
 * (it splits punctuation off whatever the spacing was), so no decoder can restore it. */
static void fold_punct_spaces(char *s) {
    size_t n = strlen(s), o = 0;
    int prev_punct = 0;
    for (size_t i = 0; i < n;) {
        int32_t c;
        utf8proc_ssize_t k = utf8proc_iterate((uint8_t *)s + i, (utf8proc_ssize_t)(n - i), &c);
        if (k <= 0) k = 1, c = 0;
        if (c == ' ') {
            int32_t next = 0;
            if (i + 1 < n)
                utf8proc_iterate((uint8_t *)s + i + 1, (utf8proc_ssize_t)(n - i - 1), &next);
            if (prev_punct || is_bert_punct(next)) {
                i++;
                continue;
            }
        }
        prev_punct = is_bert_punct(c);
        memmove(s + o, s + i, (size_t)k);
        o += (size_t)k;
        i += (size_t)k;
    }
    s[o] = '\0';
}

static void show_difference(size_t story, const char *want, const char *got) {
    size_t i = 0;
    while (want[i] && want[i] == got[i]) i++;
    size_t from = i > 30 ? i - 30 : 0;
    printf("# round-trip exception, story %zu:\n#   story : ...%.60s...\n#   decode: ...%.60s...\n",
           story + 1, want + from, got + from);
}

/* decode(encode(story)) against the normalised story, over every valid story.
 * strict: the same string. folded: the same once spaces next to punctuation are folded
 * away on both sides; that is the criterion (>= 99%): BERT keeps no trace of
 * spacing around punctuation, so only the decoder's spacing guesses (hyphens, quotes)
 * separate the two. */
TEST(test_round_trip) {
    ASSERT(tok);
    char **st = NULL;
    size_t n = load_stories(test_data_path(VALID_NAME), &st);
    EXPECTF(n > 0, "cannot read %s", test_data_path(VALID_NAME));
    if (!n) return;
    size_t strict = 0, folded = 0, unk = 0;
    for (size_t i = 0; i < n; i++) {
        cdcd_tok_ids o = enc(st[i], strlen(st[i]));
        for (size_t k = 0; k < o.n; k++) unk += o.ids[k] == cdcd_tok_specials(tok)->unk;
        char *got = cdcd_tok_decode(tok, o.ids, o.n, 0);
        char *want = normalise(st[i]);
        if (got && strcmp(got, want) == 0) {
            strict++;
            folded++;
        } else if (got) {
            show_difference(i, want, got);
            fold_punct_spaces(got);
            fold_punct_spaces(want);
            if (strcmp(got, want) == 0) folded++;
            else printf("#   (differs even with punctuation spacing folded)\n");
        }
        free(got);
        free(want);
        cdcd_tok_ids_free(&o);
    }
    printf("# round trip over %zu valid stories: %zu exact (%.2f%%), %zu with punctuation "
           "spacing folded (%.2f%%); %zu [UNK] ids\n",
           n, strict, 100.0 * (double)strict / (double)n, folded,
           100.0 * (double)folded / (double)n, unk);
    EXPECTF((double)folded >= ROUND_TRIP_MIN_FOLDED * (double)n, "folded round trip %zu/%zu",
            folded, n);
    EXPECTF((double)strict >= ROUND_TRIP_MIN_STRICT * (double)n, "exact round trip %zu/%zu",
            strict, n);
    free_stories(st, n);
}

int main(void) {
    char err[1024];
    tok = cdcd_tok_load(test_data_path(VOCAB_NAME), err, sizeof err);
    if (!tok) printf("  cannot load the vocabulary: %s\n", err);
    RUN(test_vocab_and_specials);
    RUN(test_reference_vectors);
    RUN(test_cleaning);
    RUN(test_case_accents_cjk);
    RUN(test_punctuation);
    RUN(test_wordpiece_limits);
    RUN(test_invalid_utf8);
    RUN(test_bad_vocab);
    RUN(test_load_from_buffer_equals_file);
    RUN(test_decode);
    RUN(test_fast_path_matches_unicode_path);
    RUN(test_round_trip);
    cdcd_tok_free(tok);
    return test_summary();
}
