/* Word statistics of generated stories against the training text: how much of what a
 * model writes is made of word n-grams that real stories use, how varied it is, and how
 * far its word distribution is from the training text's. One measure, used by
 * `cdcd eval --samples`, the ablation harness and the daemon's periodic samples, so a
 * figure means the same thing everywhere. Reference rows (real held-out stories cut to
 * the samples' length, and the same stories with their words shuffled) are computed by
 * the same function, so every figure reads against "real" and "word salad".
 *
 * Words: the text is lower-cased; a word is a maximal run of letters, digits and
 * apostrophes; punctuation marks other than apostrophes are not words (but . ! ? end a
 * sentence). N-grams do not cross story boundaries.
 *
 * Details of the word rule: letters and digits are the Unicode L* and N* code points
 * (M* marks continue a word); ' and U+2019 are both the apostrophe; apostrophes at the
 * start or end of a run are not part of the word ('hi' is "hi", friends' is "friends", a
 * lone ' is no word); a word is compared after case folding and accent stripping
 * (NFD, marks dropped), as the WordPiece tokenizer does, so a reference read from the
 * raw text and one decoded from a token file agree. A sentence is a stretch of words
 * ended by a run of . ! ? or by the end of the story (a cut story's last words are one
 * sentence); a stretch without words is no sentence. N-grams do cross sentences. */
#ifndef CDCD_TEXTSTATS_H
#define CDCD_TEXTSTATS_H

#include <stddef.h>
#include <stdint.h>

struct cdcd_tokenizer;

#define CDCD_TEXT_STORY_SEPARATOR "<|endoftext|>"
#define CDCD_TEXT_MAX_FILE_BYTES (16ull << 30) /* text files are mapped, not read */

/* The reference: every word unigram, bigram and trigram of the training stories (hashed,
 * 64-bit), with unigram counts for the KL divergence. Built once, read-only after. */
typedef struct cdcd_text_ref cdcd_text_ref;

/* Builds the reference from n stories. NULL on out of memory. */
cdcd_text_ref *cdcd_text_ref_build(const char *const *stories, size_t n);
/* The same from a TinyStories text file (stories separated by <|endoftext|> lines), or
 * NULL with a message in err. */
cdcd_text_ref *cdcd_text_ref_load(const char *path, char *err, size_t errlen);
/* The same from a token file (cdcd prep output), each story decoded with tok: a daemon
 * that only has token files can still measure. NULL with a message in err. */
cdcd_text_ref *cdcd_text_ref_from_tokfile(const char *tok_path, const struct cdcd_tokenizer *tok,
                                          char *err, size_t errlen);
/* Either of the two, by the file's first bytes (a token file starts with its magic). */
cdcd_text_ref *cdcd_text_ref_open(const char *path, const struct cdcd_tokenizer *tok,
                                  char *err, size_t errlen);
void cdcd_text_ref_free(cdcd_text_ref *r);
/* Stories and words the reference was built from. */
size_t cdcd_text_ref_stories(const cdcd_text_ref *r);
uint64_t cdcd_text_ref_words(const cdcd_text_ref *r);

/* The first max_n stories of a token file, decoded (malloc'd array of malloc'd strings in
 * *out, count in *n). 0, or -1 with a message in err. */
int cdcd_text_stories_from_tokfile(const char *tok_path, const struct cdcd_tokenizer *tok,
                                   size_t max_n, char ***out, size_t *n, char *err, size_t errlen);
/* The same from a TinyStories text file (each story trimmed of surrounding whitespace,
 * empty ones skipped), and from either kind of file by its first bytes. max_n 0 = all. */
int cdcd_text_stories_load(const char *path, size_t max_n, char ***out, size_t *n, char *err,
                           size_t errlen);
int cdcd_text_stories_open(const char *path, const struct cdcd_tokenizer *tok, size_t max_n,
                           char ***out, size_t *n, char *err, size_t errlen);
void cdcd_text_stories_free(char **stories, size_t n);

typedef struct {
    int n_stories;
    double words_per_story;
    double bigram_seen;     /* share of word bigram occurrences that occur in the reference */
    double trigram_seen;    /* the same for trigrams */
    double distinct1;       /* distinct words / words, pooled over the stories */
    double distinct2;       /* distinct bigrams / bigrams, pooled */
    double repeat4;         /* share of word 4-grams that repeat an earlier 4-gram of the same story */
    double dangling;        /* share of WordPiece tokens that are "##" pieces not glued to a
                               word, or [UNK] (NaN without a tokenizer) */
    double sentences_per_story;
    double words_per_sentence;
    double unigram_kl;      /* KL(samples || reference) of word unigrams, nats (add-one smoothing
                               of the reference over the union vocabulary) */
    double token_entropy;   /* entropy (nats) of the pooled WordPiece token distribution of
                               the stories (NaN without a tokenizer) */
    /* bigram_seen and trigram_seen with every punctuation mark but the apostrophe counted as
     * a word of its own (the measure the quality issue's figures were made with: real
     * stories 0.93 / 0.74 there) */
    double bigram_seen_punct;
    double trigram_seen_punct;
} cdcd_text_stats;

/* The double-valued figures by name (the struct field names; JSON keys and table
 * columns everywhere), in struct order. n_stories is the int before them. */
typedef struct {
    const char *name;
    size_t offset; /* offsetof(cdcd_text_stats, name) */
} cdcd_text_stats_field;
extern const cdcd_text_stats_field cdcd_text_stats_fields[];
extern const size_t cdcd_text_stats_n_fields;

/* Statistics of n texts. tok may be NULL (dangling and token_entropy are then NaN).
 * 0, or -1 on out of memory (or, for _ids, an id outside the vocabulary: errno EINVAL).
 * Pooled: every share is (sum of counts over the stories) / (sum of totals), not a mean of
 * per-story shares; a figure whose total is 0 (no bigrams, no sentences, ...) is NaN, and
 * so are bigram_seen, trigram_seen and unigram_kl when ref is NULL. Tokens are the text
 * re-encoded with tok, so the figures of decoded samples, real stories and shuffled ones
 * are computed the same way. */
int cdcd_text_stats_compute(const cdcd_text_ref *ref, const struct cdcd_tokenizer *tok,
                            const char *const *texts, size_t n, cdcd_text_stats *out);
/* The same, with the token ids a sampler produced for each story (ids[i], n_ids[i]; ids
 * NULL, or ids[i] NULL for a story, = re-encode its text). Re-encoding a decoded text
 * cannot show a dangling piece (decode glues "##ing" after "." into ".ing", which encodes
 * as "." "ing"), so where ids are given `dangling` is counted on them: [PAD] and [CLS]
 * are skipped, the story ends at the first [SEP], and a "##" piece is dangling when the
 * token before it is the story's start, a lone punctuation mark, a special token or
 * another dangling piece. Every other figure still comes from the text. */
int cdcd_text_stats_compute_ids(const cdcd_text_ref *ref, const struct cdcd_tokenizer *tok,
                                const char *const *texts, const int32_t *const *ids,
                                const size_t *n_ids, size_t n, cdcd_text_stats *out);

/* Reference rows: the first n stories of `stories` (held-out), each cut to the number of
 * WordPiece tokens of the matching sample (lengths[i]; 0 = uncut), as malloc'd texts in
 * out_real (n); out_shuffled (n) gets the same texts with their words shuffled within
 * each story (seeded: the same seed gives the same rows). 0 or -1.
 * A cut story is its first lengths[i] tokens decoded; an uncut one (lengths NULL, 0, or
 * not shorter than the story) is copied as is; tok may be NULL only when nothing is cut.
 * Shuffling permutes the words only: the text between them (spaces, punctuation) stays
 * where it was, so sentence counts, word counts and the word multiset are those of the
 * real row and only the order-dependent figures move. Story i uses its own random stream
 * (seed, i), so a row does not depend on n. out_shuffled may be NULL. On failure nothing
 * is left allocated. */
int cdcd_text_reference_rows(const struct cdcd_tokenizer *tok, const char *const *stories, size_t n,
                             const int *lengths, uint64_t seed, char **out_real, char **out_shuffled);

#endif
