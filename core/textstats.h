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
 * sentence). N-grams do not cross story boundaries. */
#ifndef CDCD_TEXTSTATS_H
#define CDCD_TEXTSTATS_H

#include <stddef.h>
#include <stdint.h>

struct cdcd_tokenizer;

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
void cdcd_text_ref_free(cdcd_text_ref *r);

/* The first max_n stories of a token file, decoded (malloc'd array of malloc'd strings in
 * *out, count in *n). 0, or -1 with a message in err. */
int cdcd_text_stories_from_tokfile(const char *tok_path, const struct cdcd_tokenizer *tok,
                                   size_t max_n, char ***out, size_t *n, char *err, size_t errlen);
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
} cdcd_text_stats;

/* Statistics of n texts. tok may be NULL (dangling and token_entropy are then NaN).
 * 0, or -1 on out of memory. */
int cdcd_text_stats_compute(const cdcd_text_ref *ref, const struct cdcd_tokenizer *tok,
                            const char *const *texts, size_t n, cdcd_text_stats *out);

/* Reference rows: the first n stories of `stories` (held-out), each cut to the number of
 * WordPiece tokens of the matching sample (lengths[i]; 0 = uncut), as malloc'd texts in
 * out_real (n); out_shuffled (n) gets the same texts with their words shuffled within
 * each story (seeded: the same seed gives the same rows). 0 or -1. */
int cdcd_text_reference_rows(const struct cdcd_tokenizer *tok, const char *const *stories, size_t n,
                             const int *lengths, uint64_t seed, char **out_real, char **out_shuffled);

#endif
