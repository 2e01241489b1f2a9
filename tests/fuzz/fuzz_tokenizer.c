/* Fuzz target: the WordPiece tokenizer (core/tokenizer.c), encode and decode.
 *
 * The real bert-base-uncased vocabulary is loaded once: $CDCD_FUZZ_VOCAB, else data/vocab.txt,
 * else $CDCD_SHARED_DATA/bert-base-uncased-vocab.txt, else ../shared/data/...; without one,
 * a small built-in vocabulary (the specials, letters, a few pieces) so the target still runs.
 *
 * Input: byte 0 holds the flags (bit 0: CDCD_TOK_ENCODE_SPECIALS, bits 1-2: the decode flags);
 * the rest is text. The text is encoded, its ids decoded; the same bytes are also read as
 * little-endian ids (any value, out of range included) and decoded.
 * Invariants: every id encode gives is in the vocabulary, encoding appends (a second call
 * doubles the output), decode of valid ids gives a string, decode of an out-of-range id
 * fails with EINVAL and nothing else. */
#include <errno.h>

#include "fuzz.h"
#include "tokenizer.h"

static cdcd_tokenizer *tok;

static const char small_vocab[] =
    "[PAD]\n[unused0]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n!\n\"\n'\n(\n)\n,\n-\n.\n:\n?\na\nb\nc\nd\ne\n"
    "f\ng\nh\ni\nj\nk\nl\nm\nn\no\np\nq\nr\ns\nt\nu\nv\nw\nx\ny\nz\nthe\nonce\nupon\ntime\n"
    "##s\n##ed\n##ing\n##a\n##e\n##n\n##t\nun\n##able\né\n##é\n中\n";

static cdcd_tokenizer *load_first(void) {
    char err[512], path[2048];
    const char *env = getenv("CDCD_FUZZ_VOCAB");
    if (env && *env) {
        cdcd_tokenizer *t = cdcd_tok_load(env, err, sizeof err);
        if (!t) fprintf(stderr, "fuzz_tokenizer: %s\n", err);
        return t;
    }
    const char *shared = getenv("CDCD_SHARED_DATA");
    const char *candidates[3] = {"data/vocab.txt", NULL, "../shared/data/bert-base-uncased-vocab.txt"};
    if (shared && *shared) {
        snprintf(path, sizeof path, "%s/bert-base-uncased-vocab.txt", shared);
        candidates[1] = path;
    }
    for (int i = 0; i < 3; i++) {
        if (!candidates[i] || access(candidates[i], R_OK) != 0) continue;
        cdcd_tokenizer *t = cdcd_tok_load(candidates[i], err, sizeof err);
        if (t) {
            fprintf(stderr, "fuzz_tokenizer: vocabulary %s\n", candidates[i]);
            return t;
        }
    }
    fprintf(stderr, "fuzz_tokenizer: no bert vocabulary found, using the built-in small one\n");
    cdcd_tokenizer *t = cdcd_tok_load_from_buffer(small_vocab, sizeof small_vocab - 1, "small", 0,
                                                  err, sizeof err);
    if (!t) fprintf(stderr, "fuzz_tokenizer: %s\n", err);
    return t;
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    tok = load_first();
    if (!tok) abort();
    return 0;
}

static void decode_checked(const int32_t *ids, size_t n, unsigned flags, int all_valid) {
    errno = 0;
    char *s = cdcd_tok_decode(tok, ids, n, flags);
    if (all_valid) FUZZ_ASSERT(s != NULL);
    if (!s) FUZZ_ASSERT(errno == EINVAL || errno == ENOMEM);
    free(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    unsigned flags = data[0];
    const char *text = (const char *)data + 1;
    size_t len = size - 1;
    unsigned enc_flags = (flags & 1) ? CDCD_TOK_ENCODE_SPECIALS : 0;
    unsigned dec_flags = ((flags >> 1) & 1 ? CDCD_TOK_DECODE_STOP_AT_SEP : 0) |
                         ((flags >> 2) & 1 ? CDCD_TOK_DECODE_HF : 0);
    int vocab = cdcd_tok_vocab_size(tok);

    cdcd_tok_ids out;
    cdcd_tok_ids_init(&out);
    FUZZ_ASSERT(cdcd_tok_encode_ex(tok, text, len, enc_flags, &out) == 0);
    size_t n = out.n;
    for (size_t i = 0; i < n; i++) FUZZ_ASSERT(out.ids[i] >= 0 && out.ids[i] < vocab);
    decode_checked(out.ids, n, dec_flags, 1);
    /* encode appends, and gives the same ids again */
    FUZZ_ASSERT(cdcd_tok_encode_ex(tok, text, len, enc_flags, &out) == 0);
    FUZZ_ASSERT(out.n == 2 * n);
    FUZZ_ASSERT(n == 0 || memcmp(out.ids, out.ids + n, n * sizeof *out.ids) == 0);
    /* the plain entry point is the flags-0 one */
    if (!enc_flags) {
        out.n = 0;
        FUZZ_ASSERT(cdcd_tok_encode(tok, text, len, &out) == 0);
        FUZZ_ASSERT(out.n == n);
    }
    cdcd_tok_ids_free(&out);

    /* the bytes as raw ids: 4 bytes each, decoded as they are (most out of range), and
     * folded into the vocabulary */
    size_t m = len / 4;
    int32_t *ids = malloc((m ? m : 1) * sizeof *ids);
    if (!ids) abort();
    int valid = 1;
    for (size_t i = 0; i < m; i++) {
        memcpy(&ids[i], text + 4 * i, 4);
        if (ids[i] < 0 || ids[i] >= vocab) valid = 0;
    }
    decode_checked(ids, m, dec_flags, valid);
    for (size_t i = 0; i < m; i++) ids[i] = (int32_t)((uint32_t)ids[i] % (uint32_t)vocab);
    decode_checked(ids, m, dec_flags, 1);
    for (size_t i = 0; i < m; i++) {
        const char *piece = cdcd_tok_piece(tok, ids[i]);
        FUZZ_ASSERT(piece && cdcd_tok_lookup(tok, piece) == ids[i]);
    }
    free(ids);
    return 0;
}
