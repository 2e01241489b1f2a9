/* BERT WordPiece tokenizer (bert-base-uncased): encode exactly as Hugging Face's
 * BertTokenizer with do_lower_case=True, decode for people.
 *
 * Encode, per the published BasicTokenizer + WordpieceTokenizer algorithm:
 *   1. clean: drop NUL, U+FFFD and every C* code point except tab/LF/CR; whitespace
 *      (tab, LF, CR, Zs) becomes a space; spaces around CJK ideographs; NFC;
 *   2. split on whitespace; per word: lowercase (Python str.lower(), final sigma included),
 *      NFD, drop Mn, split off every punctuation character (ASCII 33-47, 58-64, 91-96,
 *      123-126 and Unicode P*);
 *   3. WordPiece: greedy longest match first with "##" continuations; a word of more than
 *      CDCD_TOK_MAX_WORD_CHARS code points, or one that cannot be matched, is [UNK].
 * Special tokens written in the text ("[CLS]") are NOT special: they are split like any
 * text (this is what the reference vectors hold). Invalid UTF-8 bytes are skipped and
 * counted. Unicode data (case, normalisation, categories) comes from libutf8proc.
 *
 * Speed: words made only of printable ASCII skip the Unicode machinery entirely, and the
 * vocabulary is an open-addressing hash table probed with incrementally computed prefix
 * hashes, so WordPiece costs one hash pass per piece.
 *
 * A loaded tokenizer is immutable: any number of threads may encode/decode with it at
 * once, each with its own cdcd_tok_ids buffer. */
#ifndef CDCD_TOKENIZER_H
#define CDCD_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#define CDCD_TOK_BERT_VOCAB_SIZE 30522 /* lines of bert-base-uncased vocab.txt */
#define CDCD_TOK_MAX_WORD_CHARS 100    /* HF max_input_chars_per_word */
#define CDCD_TOK_MAX_PIECE_BYTES 256   /* longest vocab line accepted (bert: 18) */
#define CDCD_TOK_MAX_VOCAB (1 << 24)   /* sanity bound for load_sized(…, 0, …) */
#define CDCD_TOK_MAX_VOCAB_FILE_BYTES (256u << 20)

typedef struct cdcd_tokenizer cdcd_tokenizer;

/* Ids of the special tokens, looked up by name at load time. */
typedef struct {
    int32_t pad, unk, cls, sep, mask;
} cdcd_tok_special;

/* Loads a bert-base-uncased style vocab.txt (one token per line, line i = id i) that must
 * have exactly CDCD_TOK_BERT_VOCAB_SIZE lines. Refused with a message in err: a missing
 * or unreadable file, a wrong line count, a duplicate, an empty line, a CR line ending,
 * invalid UTF-8, a line over CDCD_TOK_MAX_PIECE_BYTES, a missing special token.
 * Returns NULL on error. */
cdcd_tokenizer *cdcd_tok_load(const char *vocab_path, char *err, size_t errlen);
/* The same with another required size; expect_size 0 accepts any size (small test vocabs). */
cdcd_tokenizer *cdcd_tok_load_sized(const char *vocab_path, int expect_size, char *err,
                                    size_t errlen);
/* The same from vocab.txt's bytes in memory (e.g. the "vocab" section of a checkpoint): the
 * same checks, the same tokenizer and checksum as loading a file with those bytes. buf is
 * copied. name labels messages (NULL: "(buffer)"); expect_size as for load_sized. */
cdcd_tokenizer *cdcd_tok_load_from_buffer(const void *buf, size_t len, const char *name,
                                          int expect_size, char *err, size_t errlen);
void cdcd_tok_free(cdcd_tokenizer *t);

int cdcd_tok_vocab_size(const cdcd_tokenizer *t);
const cdcd_tok_special *cdcd_tok_specials(const cdcd_tokenizer *t);
/* 64-bit FNV-1a over the tokens, each followed by '\n' (independent of the file's final
 * newline). Token files record it so a file made with another vocabulary is refused. */
uint64_t cdcd_tok_checksum(const cdcd_tokenizer *t);
/* Id of an exact vocabulary entry ("the", "##s", "[SEP]"), or -1. */
int32_t cdcd_tok_lookup(const cdcd_tokenizer *t, const char *piece);
/* The vocabulary entry for an id (NUL-terminated), or NULL when out of range. */
const char *cdcd_tok_piece(const cdcd_tokenizer *t, int32_t id);

/* Output of encode, plus the scratch space the Unicode path needs. Zero-initialise it
 * (= {0} or cdcd_tok_ids_init), reuse it across calls, release it with cdcd_tok_ids_free. */
typedef struct {
    int32_t *ids;
    size_t n, cap;
    uint64_t invalid_bytes; /* invalid UTF-8 bytes skipped, summed over every call */
    /* private scratch */
    int32_t *cp_a, *cp_b, *cp_c;
    size_t cp_a_cap, cp_b_cap, cp_c_cap;
    uint8_t *u8;
    size_t u8_cap;
} cdcd_tok_ids;

void cdcd_tok_ids_init(cdcd_tok_ids *o);
void cdcd_tok_ids_free(cdcd_tok_ids *o);

/* Encodes len bytes of UTF-8 text (NUL bytes inside are dropped like any control
 * character) and APPENDS the ids to out->ids (set out->n = 0 first to start afresh).
 * No [CLS]/[SEP] are added. Returns 0, or -1 with errno ENOMEM. */
int cdcd_tok_encode(const cdcd_tokenizer *t, const char *text, size_t len, cdcd_tok_ids *out);

/* Encode flags. */
#define CDCD_TOK_ENCODE_SPECIALS 1u /* "[MASK]", "[SEP]", ... in the text become their ids */

/* cdcd_tok_encode with flags. CDCD_TOK_ENCODE_SPECIALS: an exact special token name
 * ([PAD] [UNK] [CLS] [SEP] [MASK]) anywhere in the text gives its id, and the text
 * between them is encoded piece by piece, as HF's tokenizer call does with its added
 * tokens (so "un[MASK]able" is un, [MASK], able). For prompts and infill templates. */
int cdcd_tok_encode_ex(const cdcd_tokenizer *t, const char *text, size_t len, unsigned flags,
                       cdcd_tok_ids *out);

/* Decode flags. */
#define CDCD_TOK_DECODE_STOP_AT_SEP 1u /* end at the first [SEP] */
#define CDCD_TOK_DECODE_HF 2u          /* exactly HF's clean_up_tokenization, no more */

/* Ids to text as a person reads a story: [PAD] and [CLS] are skipped, "##" pieces are
 * glued to their word, words are joined by one space, and spaces are tidied: by default
 * HF's clean_up_tokenization rules extended to quotes, brackets and hyphens
 * (see tokenizer.c for the rules); with CDCD_TOK_DECODE_HF exactly HF's rules.
 * Returns a malloc'd NUL-terminated string, or NULL with errno EINVAL (an id out of
 * range) or ENOMEM. */
char *cdcd_tok_decode(const cdcd_tokenizer *t, const int32_t *ids, size_t n, unsigned flags);

#endif
