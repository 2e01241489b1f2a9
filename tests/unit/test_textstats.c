/* Story statistics (core/textstats.h): figures counted by hand on tiny stories, word and
 * sentence rules, n-grams that must not cross stories, repeated 4-grams, dangling pieces
 * and token entropy on known ids, reference rows (cut, shuffle, seeds), word salad
 * scoring below real text on a synthetic corpus and on TinyStories, and the loaders (text
 * file, token file) and the 2-second reference build budget (skipped under the sanitizers). */
#include <stddef.h>
#include <stdint.h>
#include <time.h>

#include "rng.h"
#include "test.h"
#include "textstats.h"
#include "tokenizer.h"

#define VOCAB_NAME "bert-base-uncased-vocab.txt"
#define TRAIN_TXT_NAME "tinystories/train.txt"
#define VALID_TXT_NAME "tinystories/valid.txt"
#define REF_BUILD_BUDGET_S 2.0 /* the measure is rebuilt per eval: it must stay cheap */
#define TOL 1e-12
#define PATH_LEN 4200
#define ERR_LEN 400
#define SYN_STORIES 400 /* synthetic corpus: the first SYN_REF are the reference */
#define SYN_REF 360
#define SYN_SENTENCES 8
#define SYN_STORY_BYTES 2048
#define REAL_HELD_OUT 32
#define TOKFILE_CHECK_STORIES 20

static cdcd_tokenizer *tok;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

static int file_exists(const char *p) { return access(p, R_OK) == 0; }

/* A path under the repository root ($CDCD_ROOT, else the working directory). */
static const char *root_path(const char *name, char *buf, size_t n) {
    const char *r = getenv("CDCD_ROOT");
    snprintf(buf, n, "%s/%s", r && *r ? r : ".", name);
    return buf;
}

static cdcd_text_stats stats_of(const cdcd_text_ref *ref, const cdcd_tokenizer *t, const char *const *texts,
                                size_t n) {
    cdcd_text_stats st;
    memset(&st, 0xff, sizeof st);
    if (cdcd_text_stats_compute(ref, t, texts, n, &st) != 0) st.n_stories = -1;
    return st;
}

TEST(test_words_sentences_distinct) {
    const char *a[] = {"The cat sat. The dog ran!"};
    cdcd_text_stats st = stats_of(NULL, NULL, a, 1);
    EXPECT(st.n_stories == 1);
    EXPECT_NEAR(st.words_per_story, 6, TOL);
    EXPECT_NEAR(st.sentences_per_story, 2, TOL);
    EXPECT_NEAR(st.words_per_sentence, 3, TOL);
    EXPECT_NEAR(st.distinct1, 5.0 / 6, TOL); /* "the" twice */
    EXPECT_NEAR(st.distinct2, 1, TOL);       /* 5 bigrams, all different */
    EXPECT_NEAR(st.repeat4, 0, TOL);
    EXPECT(isnan(st.bigram_seen) && isnan(st.trigram_seen) && isnan(st.unigram_kl)); /* no ref */
    EXPECT(isnan(st.dangling) && isnan(st.token_entropy));                          /* no tok */

    /* Apostrophes: both kinds are one letter inside a word, dropped at its ends. */
    const char *b[] = {"Don't stop. DON\xE2\x80\x99T stop 'now' friends' ... '"};
    st = stats_of(NULL, NULL, b, 1);
    EXPECT_NEAR(st.words_per_story, 6, TOL);    /* don't stop don't stop now friends */
    EXPECT_NEAR(st.distinct1, 4.0 / 6, TOL);
    EXPECT_NEAR(st.sentences_per_story, 2, TOL); /* "..." is one end, the lone ' no sentence */

    /* Case and accents fold away; a cut story's last words are a sentence. */
    const char *c[] = {"Caf\xC3\xA9 cafe CAF\xC3\x89 cafe\xCC\x81. He ran. She"};
    st = stats_of(NULL, NULL, c, 1);
    EXPECT_NEAR(st.words_per_story, 7, TOL);
    EXPECT_NEAR(st.distinct1, 4.0 / 7, TOL); /* cafe he ran she */
    EXPECT_NEAR(st.sentences_per_story, 3, TOL);

    /* Punctuation only: no words, no sentences; figures without a total are NaN. */
    const char *d[] = {"!!! ... ? -- \"\""};
    st = stats_of(NULL, NULL, d, 1);
    EXPECT_NEAR(st.words_per_story, 0, TOL);
    EXPECT_NEAR(st.sentences_per_story, 0, TOL);
    EXPECT(isnan(st.words_per_sentence) && isnan(st.distinct1) && isnan(st.distinct2) && isnan(st.repeat4));

    /* Digits are word characters, other symbols split words. */
    const char *e[] = {"a-b 3rd x_y"};
    st = stats_of(NULL, NULL, e, 1);
    EXPECT_NEAR(st.words_per_story, 5, TOL);
}

TEST(test_ngram_seen_by_hand) {
    const char *refs[] = {"The cat sat on the mat.", "A dog ran to the park."};
    cdcd_text_ref *ref = cdcd_text_ref_build(refs, 2);
    ASSERT(ref);
    EXPECT(cdcd_text_ref_stories(ref) == 2);
    EXPECT(cdcd_text_ref_words(ref) == 12);
    /* the cat | cat ran | ran to | to the | the mat: 4 of 5 in the reference;
     * the cat ran | cat ran to | ran to the | to the mat: only "ran to the". */
    const char *s[] = {"the cat ran to the mat."};
    cdcd_text_stats st = stats_of(ref, NULL, s, 1);
    EXPECT_NEAR(st.bigram_seen, 4.0 / 5, TOL);
    EXPECT_NEAR(st.trigram_seen, 1.0 / 4, TOL);
    /* With "." as a word: + "mat ." (seen) = 5 of 6 bigrams; trigrams + "the mat ." (seen) =
     * 2 of 5 ("ran to the", "the mat ."). */
    EXPECT_NEAR(st.bigram_seen_punct, 5.0 / 6, TOL);
    EXPECT_NEAR(st.trigram_seen_punct, 2.0 / 5, TOL);
    /* KL with add-one smoothing over the union vocabulary: reference counts the 3, others 1
     * (12 words, 10 distinct), every sample word is known, so Q(w) = (c + 1) / 22. */
    double kl = 2.0 / 6 * log((2.0 / 6) / (4.0 / 22)) + 4 * (1.0 / 6 * log((1.0 / 6) / (2.0 / 22)));
    EXPECT_NEAR(st.unigram_kl, kl, 1e-12);

    /* An unknown word grows the union vocabulary: "zebra" has Q = 1 / 23. */
    const char *u[] = {"the zebra"};
    st = stats_of(ref, NULL, u, 1);
    double kl2 = 0.5 * log(0.5 / (4.0 / 23)) + 0.5 * log(0.5 / (1.0 / 23));
    EXPECT_NEAR(st.unigram_kl, kl2, 1e-12);
    EXPECT_NEAR(st.bigram_seen, 0, TOL);
    EXPECT(isnan(st.trigram_seen)); /* a story of two words has no trigram */

    /* Samples that are reference stories: everything seen. */
    st = stats_of(ref, NULL, refs, 2);
    EXPECT_NEAR(st.bigram_seen, 1, TOL);
    EXPECT_NEAR(st.trigram_seen, 1, TOL);
    cdcd_text_ref_free(ref);
}

TEST(test_ngrams_do_not_cross_stories) {
    const char *refs[] = {"the cat sat on the mat", "a dog ran to the park"};
    cdcd_text_ref *ref = cdcd_text_ref_build(refs, 2);
    ASSERT(ref);
    /* "mat a" only exists across the reference's story boundary. */
    const char *s[] = {"the mat a dog"};
    cdcd_text_stats st = stats_of(ref, NULL, s, 1);
    EXPECT_NEAR(st.bigram_seen, 2.0 / 3, TOL);
    EXPECT_NEAR(st.trigram_seen, 0, TOL);
    /* Nor across the samples' boundaries: 2 bigrams, not 3 ("cat sat" would be seen too). */
    const char *t[] = {"the cat", "sat on"};
    st = stats_of(ref, NULL, t, 2);
    EXPECT_NEAR(st.bigram_seen, 1, TOL);
    EXPECT_NEAR(st.distinct2, 1, TOL);
    EXPECT_NEAR(st.words_per_story, 2, TOL);
    EXPECT(isnan(st.trigram_seen));
    cdcd_text_ref_free(ref);
}

TEST(test_repeat4) {
    const char *a[] = {"a b c d a b c d"}; /* 5 four-grams, the last repeats the first */
    cdcd_text_stats st = stats_of(NULL, NULL, a, 1);
    EXPECT_NEAR(st.repeat4, 1.0 / 5, TOL);
    const char *b[] = {"a b c d", "a b c d"}; /* the same 4-gram in two stories: no repeat */
    st = stats_of(NULL, NULL, b, 2);
    EXPECT_NEAR(st.repeat4, 0, TOL);
    EXPECT_NEAR(st.distinct2, 3.0 / 6, TOL); /* distinct2 pools across stories */
    const char *c[] = {"x y z w. X y z w! x Y z w"}; /* 9 four-grams, the last 5 repeats */
    st = stats_of(NULL, NULL, c, 1);
    EXPECT_NEAR(st.repeat4, 5.0 / 9, TOL);
    const char *d[] = {"one two three"}; /* no 4-gram at all */
    st = stats_of(NULL, NULL, d, 1);
    EXPECT(isnan(st.repeat4));
    /* A long story (the per-story set grows). */
    static char big[200000];
    size_t o = 0;
    for (int i = 0; i < 10000; i++) o += (size_t)snprintf(big + o, sizeof big - o, "w%d ", i % 5000);
    const char *e[] = {big};
    st = stats_of(NULL, NULL, e, 1);
    EXPECT_NEAR(st.repeat4, 4997.0 / 9997, 1e-12); /* every 4-gram inside the second lap repeats */
}

static int32_t id_of(const char *piece) {
    int32_t id = cdcd_tok_lookup(tok, piece);
    if (id < 0) printf("  no vocabulary entry %s\n", piece);
    return id;
}

TEST(test_dangling_and_entropy) {
    if (!tok) SKIP("no vocabulary (%s)", test_data_path(VOCAB_NAME));
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    /* [CLS] ##ing the ##s . ##ing ##s cat [UNK] ##s [SEP] ##ing [PAD]:
     * 9 tokens before [SEP]; dangling: ##ing (start), ##ing ##s (after "."), [UNK], ##s
     * (after [UNK]) = 5. */
    int32_t ids[] = {sp->cls,        id_of("##ing"), id_of("the"), id_of("##s"), id_of("."),
                     id_of("##ing"), id_of("##s"),   id_of("cat"), sp->unk,      id_of("##s"),
                     sp->sep,        id_of("##ing"), sp->pad};
    size_t nid = sizeof ids / sizeof ids[0];
    for (size_t i = 0; i < nid; i++) ASSERT(ids[i] >= 0);
    const char *text[] = {"x"};
    const int32_t *idv[] = {ids};
    cdcd_text_stats st;
    ASSERT(cdcd_text_stats_compute_ids(NULL, tok, text, idv, &nid, 1, &st) == 0);
    EXPECT_NEAR(st.dangling, 5.0 / 9, TOL);
    /* Without ids the text is re-encoded: a real story dangles nowhere; an overlong word
     * is [UNK]. */
    static char unk[300];
    snprintf(unk, sizeof unk, "hello %0150d", 0);
    const char *u[] = {"The dog's ball rolled away.", unk};
    st = stats_of(NULL, tok, u, 1);
    EXPECT_NEAR(st.dangling, 0, TOL);
    st = stats_of(NULL, tok, u + 1, 1);
    EXPECT_NEAR(st.dangling, 1.0 / 2, TOL); /* hello [UNK] */
    /* Entropy of the pooled tokens: two tokens, two each. */
    const char *e[] = {"a b", "b a"};
    st = stats_of(NULL, tok, e, 2);
    EXPECT_NEAR(st.token_entropy, log(2.0), 1e-12);
    const char *f[] = {"a a a a"};
    st = stats_of(NULL, tok, f, 1);
    EXPECT_NEAR(st.token_entropy, 0, TOL);
    /* An id outside the vocabulary is refused, not read. */
    int32_t bad[] = {5, 1 << 20};
    size_t nbad = 2;
    const int32_t *badv[] = {bad};
    EXPECT(cdcd_text_stats_compute_ids(NULL, tok, text, badv, &nbad, 1, &st) == -1);
}

/* The text of s with every letter, digit and apostrophe removed (what shuffling keeps). */
static void skeleton(const char *s, char *out, size_t n) {
    size_t o = 0;
    for (; *s && o + 1 < n; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '\''))
            out[o++] = *s;
    out[o] = '\0';
}

TEST(test_reference_rows) {
    const char *stories[] = {
        "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun. "
        "One day, she saw a big red ball in the park! \"Can I play?\" she asked.",
        "Tom had a dog. The dog liked to run, jump and bark at the birds in the tall green trees.",
    };
    char *r1[2], *s1[2], *r2[2], *s2[2], *r3[2], *s3[2], *r4[1], *s4[1];
    ASSERT(cdcd_text_reference_rows(NULL, stories, 2, NULL, 7, r1, s1) == 0);
    ASSERT(cdcd_text_reference_rows(NULL, stories, 2, NULL, 7, r2, s2) == 0);
    ASSERT(cdcd_text_reference_rows(NULL, stories, 2, NULL, 8, r3, s3) == 0);
    for (int i = 0; i < 2; i++) {
        EXPECT_STREQ(r1[i], stories[i]); /* uncut: a copy */
        EXPECT_STREQ(s1[i], s2[i]);      /* same seed, same rows */
        EXPECT(strcmp(s1[i], r1[i]) != 0);
        EXPECT(strcmp(s1[i], s3[i]) != 0); /* another seed, another order */
        char k1[1024], k2[1024];
        skeleton(r1[i], k1, sizeof k1);
        skeleton(s1[i], k2, sizeof k2);
        EXPECT_STREQ(k1, k2); /* punctuation and spaces stay in place */
        const char *a[] = {r1[i]}, *b[] = {s1[i]};
        cdcd_text_stats sa = stats_of(NULL, NULL, a, 1), sb = stats_of(NULL, NULL, b, 1);
        EXPECT_NEAR(sa.words_per_story, sb.words_per_story, TOL);
        EXPECT_NEAR(sa.sentences_per_story, sb.sentences_per_story, TOL);
        EXPECT_NEAR(sa.distinct1, sb.distinct1, TOL); /* the same words */
    }
    /* Row i depends on (seed, i) only, not on how many rows there are. */
    ASSERT(cdcd_text_reference_rows(NULL, stories, 1, NULL, 7, r4, s4) == 0);
    EXPECT_STREQ(s4[0], s1[0]);
    free(r4[0]);
    free(s4[0]);
    for (int i = 0; i < 2; i++) {
        free(r1[i]);
        free(s1[i]);
        free(r2[i]);
        free(s2[i]);
        free(r3[i]);
        free(s3[i]);
    }
    /* Cutting needs the tokenizer; without one the call fails and leaves nothing. */
    int lengths[] = {5, 0};
    char *r5[2] = {(char *)1, (char *)1}, *s5[2];
    EXPECT(cdcd_text_reference_rows(NULL, stories, 2, lengths, 1, r5, s5) == -1);
    EXPECT(r5[0] == NULL && r5[1] == NULL && s5[0] == NULL && s5[1] == NULL);
}

TEST(test_reference_rows_cut) {
    if (!tok) SKIP("no vocabulary (%s)", test_data_path(VOCAB_NAME));
    const char *stories[] = {
        "Once upon a time, there was a little girl named Lily. She loved to play outside.",
        "Tom had a dog.",
    };
    int lengths[] = {5, 0};
    char *r5[2];
    ASSERT(cdcd_text_reference_rows(tok, stories, 2, lengths, 1, r5, NULL) == 0);
    cdcd_tok_ids ids;
    cdcd_tok_ids_init(&ids);
    ASSERT(cdcd_tok_encode(tok, r5[0], strlen(r5[0]), &ids) == 0);
    EXPECT(ids.n == 5);
    EXPECT_STREQ(r5[0], "once upon a time,");
    EXPECT_STREQ(r5[1], stories[1]);
    cdcd_tok_ids_free(&ids);
    free(r5[0]);
    free(r5[1]);
}

/* Synthetic stories from a small grammar: regular word order, so real text shares most
 * trigrams with the reference and shuffled text does not. */
static char *synthetic_story(cdcd_rng *r) {
    static const char *names[] = {"Lily", "Tom", "Sue", "Max", "Ben", "Mia"};
    static const char *adjs[] = {"big", "little", "red", "happy", "shiny", "soft", "old"};
    static const char *nouns[] = {"ball", "dog", "cat", "tree", "box", "car", "bird", "cake"};
    static const char *verbs[] = {"found", "saw", "liked", "wanted", "took", "made"};
    static const char *places[] = {"park", "garden", "house", "school", "forest"};
#define PICK(a) a[cdcd_rng_below(r, sizeof a / sizeof a[0])]
    char *s = malloc(SYN_STORY_BYTES);
    if (!s) return NULL;
    size_t o = 0;
    const char *name = PICK(names);
    o += (size_t)snprintf(s + o, SYN_STORY_BYTES - o, "Once upon a time, there was a %s named %s.", PICK(adjs),
                          name);
    for (int k = 0; k < SYN_SENTENCES; k++) {
        if (cdcd_rng_below(r, 2))
            o += (size_t)snprintf(s + o, SYN_STORY_BYTES - o, " %s %s a %s %s in the %s.", name, PICK(verbs),
                                  PICK(adjs), PICK(nouns), PICK(places));
        else
            o += (size_t)snprintf(s + o, SYN_STORY_BYTES - o, " The %s was very %s and %s was happy.",
                                  PICK(nouns), PICK(adjs), name);
    }
#undef PICK
    return s;
}

TEST(test_shuffled_below_real_synthetic) {
    char *stories[SYN_STORIES] = {0}, *real[SYN_STORIES - SYN_REF], *shuf[SYN_STORIES - SYN_REF];
    const size_t nh = SYN_STORIES - SYN_REF;
    cdcd_rng r;
    cdcd_rng_init(&r, 42, 0);
    for (int i = 0; i < SYN_STORIES; i++) ASSERT((stories[i] = synthetic_story(&r)) != NULL);
    cdcd_text_ref *ref = cdcd_text_ref_build((const char *const *)stories, SYN_REF);
    ASSERT(ref);
    ASSERT(cdcd_text_reference_rows(NULL, (const char *const *)stories + SYN_REF, nh, NULL, 3, real, shuf) == 0);
    cdcd_text_stats sr = stats_of(ref, NULL, (const char *const *)real, nh);
    cdcd_text_stats ss = stats_of(ref, NULL, (const char *const *)shuf, nh);
    EXPECTF(sr.trigram_seen > 0.95, "real trigram_seen %.3f", sr.trigram_seen);
    EXPECTF(ss.trigram_seen < sr.trigram_seen - 0.3, "shuffled %.3f vs real %.3f", ss.trigram_seen, sr.trigram_seen);
    EXPECTF(ss.bigram_seen < sr.bigram_seen - 0.2, "shuffled %.3f vs real %.3f", ss.bigram_seen, sr.bigram_seen);
    EXPECTF(ss.repeat4 < sr.repeat4, "repeat4: shuffled %.3f vs real %.3f", ss.repeat4, sr.repeat4);
    EXPECT_NEAR(ss.unigram_kl, sr.unigram_kl, 1e-12); /* the same words */
    EXPECT_NEAR(ss.distinct1, sr.distinct1, TOL);
    for (size_t i = 0; i < nh; i++) {
        free(real[i]);
        free(shuf[i]);
    }
    for (int i = 0; i < SYN_STORIES; i++) free(stories[i]);
    cdcd_text_ref_free(ref);
}

TEST(test_shuffled_below_real_tinystories) {
    char train[PATH_LEN], valid[PATH_LEN], err[ERR_LEN];
    snprintf(train, sizeof train, "%s", test_data_path(TRAIN_TXT_NAME));
    snprintf(valid, sizeof valid, "%s", test_data_path(VALID_TXT_NAME));
    if (!file_exists(train) || !file_exists(valid)) SKIP("no %.200s or %.200s", train, valid);
    cdcd_text_ref *ref = cdcd_text_ref_load(train, err, sizeof err);
    ASSERT(ref);
    char **held = NULL, *real[REAL_HELD_OUT], *shuf[REAL_HELD_OUT];
    size_t n = 0;
    ASSERT(cdcd_text_stories_load(valid, REAL_HELD_OUT, &held, &n, err, sizeof err) == 0);
    ASSERT(n == REAL_HELD_OUT);
    ASSERT(cdcd_text_reference_rows(NULL, (const char *const *)held, n, NULL, 1, real, shuf) == 0);
    cdcd_text_stats sr = stats_of(ref, tok, (const char *const *)real, n);
    cdcd_text_stats ss = stats_of(ref, tok, (const char *const *)shuf, n);
    EXPECTF(sr.bigram_seen > 0.85 && sr.trigram_seen > 0.5, "real: bigram %.3f trigram %.3f", sr.bigram_seen,
            sr.trigram_seen);
    EXPECTF(ss.trigram_seen < sr.trigram_seen - 0.3, "trigram: shuffled %.3f vs real %.3f", ss.trigram_seen,
            sr.trigram_seen);
    EXPECTF(ss.bigram_seen < sr.bigram_seen - 0.2, "bigram: shuffled %.3f vs real %.3f", ss.bigram_seen,
            sr.bigram_seen);
    EXPECTF(sr.words_per_sentence > 5 && sr.words_per_sentence < 20, "words/sentence %.2f", sr.words_per_sentence);
    if (tok) {
        EXPECT_NEAR(sr.dangling, 0, 1e-3); /* real text: no dangling pieces, [UNK] rare */
        EXPECT_NEAR(ss.token_entropy, sr.token_entropy, 1e-9);
    }
    for (size_t i = 0; i < n; i++) {
        free(real[i]);
        free(shuf[i]);
    }
    cdcd_text_stories_free(held, n);
    cdcd_text_ref_free(ref);
}

TEST(test_text_loader) {
    char path[PATH_LEN], empty[PATH_LEN], err[ERR_LEN];
    snprintf(path, sizeof path, "%s/stories.txt", test_tmpdir());
    snprintf(empty, sizeof empty, "%s/empty.txt", test_tmpdir());
    FILE *f = fopen(path, "w");
    ASSERT(f);
    fputs("  The cat sat.\n<|endoftext|>\n \n<|endoftext|>\nThe dog ran!\n<|endoftext|>", f);
    fclose(f);
    f = fopen(empty, "w");
    ASSERT(f);
    fclose(f);
    char **v = NULL;
    size_t n = 0;
    ASSERT(cdcd_text_stories_load(path, 0, &v, &n, err, sizeof err) == 0);
    ASSERT(n == 2);
    EXPECT_STREQ(v[0], "The cat sat."); /* trimmed, the empty story skipped */
    EXPECT_STREQ(v[1], "The dog ran!");
    cdcd_text_ref *a = cdcd_text_ref_load(path, err, sizeof err);
    cdcd_text_ref *b = cdcd_text_ref_build((const char *const *)v, n);
    ASSERT(a && b);
    EXPECT(cdcd_text_ref_stories(a) == 2 && cdcd_text_ref_words(a) == 6);
    EXPECT(cdcd_text_ref_words(a) == cdcd_text_ref_words(b));
    const char *s[] = {"the cat sat the dog"};
    cdcd_text_stats sa = stats_of(a, NULL, s, 1), sb = stats_of(b, NULL, s, 1);
    EXPECT_NEAR(sa.bigram_seen, 3.0 / 4, TOL); /* "sat the" crosses the stories */
    EXPECT_NEAR(sa.bigram_seen, sb.bigram_seen, TOL);
    EXPECT_NEAR(sa.unigram_kl, sb.unigram_kl, TOL);
    cdcd_text_ref_free(a);
    cdcd_text_ref_free(b);
    cdcd_text_stories_free(v, n);
    ASSERT(cdcd_text_stories_load(path, 1, &v, &n, err, sizeof err) == 0);
    EXPECT(n == 1);
    cdcd_text_stories_free(v, n);
    /* By the first bytes: a text file is read as text, whatever its name. */
    ASSERT(cdcd_text_stories_open(path, NULL, 0, &v, &n, err, sizeof err) == 0);
    EXPECT(n == 2);
    cdcd_text_stories_free(v, n);
    /* Errors name the file. */
    char missing[PATH_LEN];
    snprintf(missing, sizeof missing, "%s/nope.txt", test_tmpdir());
    err[0] = '\0';
    EXPECT(cdcd_text_ref_load(missing, err, sizeof err) == NULL && strstr(err, "nope.txt"));
    err[0] = '\0';
    EXPECT(cdcd_text_ref_open(missing, tok, err, sizeof err) == NULL && strstr(err, "nope.txt"));
    err[0] = '\0';
    EXPECT(cdcd_text_ref_load(empty, err, sizeof err) == NULL && strstr(err, "no stories"));
    err[0] = '\0';
    EXPECT(cdcd_text_ref_load(test_tmpdir(), err, sizeof err) == NULL && strstr(err, "directory"));
    EXPECT(cdcd_text_stories_load(missing, 0, &v, &n, err, sizeof err) == -1 && v == NULL && n == 0);
    /* A text file is no token file. */
    err[0] = '\0';
    EXPECT(cdcd_text_ref_from_tokfile(path, tok, err, sizeof err) == NULL && err[0]);
    err[0] = '\0';
    EXPECT(cdcd_text_ref_from_tokfile(path, NULL, err, sizeof err) == NULL && strstr(err, "vocabulary"));
}

TEST(test_tokfile_loader) {
    char tokpath[PATH_LEN], err[ERR_LEN];
    root_path("data/train.tok", tokpath, sizeof tokpath);
    if (!file_exists(tokpath)) SKIP("no %.200s (make data)", tokpath);
    if (!tok) SKIP("no vocabulary (%s)", test_data_path(VOCAB_NAME));
    cdcd_text_ref *ref = cdcd_text_ref_from_tokfile(tokpath, tok, err, sizeof err);
    EXPECTF(ref != NULL, "%s", err);
    ASSERT(ref);
    printf("  %.200s: %zu stories, %llu words\n", tokpath, cdcd_text_ref_stories(ref),
           (unsigned long long)cdcd_text_ref_words(ref));
    EXPECT(cdcd_text_ref_stories(ref) > 0);
    EXPECT(cdcd_text_ref_words(ref) > 100 * cdcd_text_ref_stories(ref) / 2);
    /* Its own stories are all seen. */
    char **v = NULL;
    size_t n = 0;
    ASSERT(cdcd_text_stories_from_tokfile(tokpath, tok, TOKFILE_CHECK_STORIES, &v, &n, err, sizeof err) == 0);
    EXPECT(n == TOKFILE_CHECK_STORIES);
    cdcd_text_stats st = stats_of(ref, tok, (const char *const *)v, n);
    EXPECT_NEAR(st.bigram_seen, 1, TOL);
    EXPECT_NEAR(st.trigram_seen, 1, TOL);
    EXPECT(st.unigram_kl > 0 && st.unigram_kl < 2);
    cdcd_text_stories_free(v, n);
    /* The same stories by magic. */
    ASSERT(cdcd_text_stories_open(tokpath, tok, 1, &v, &n, err, sizeof err) == 0);
    EXPECT(n == 1 && strlen(v[0]) > 0);
    cdcd_text_stories_free(v, n);
    EXPECT(cdcd_text_stories_open(tokpath, NULL, 1, &v, &n, err, sizeof err) == -1);
    cdcd_text_ref_free(ref);
}

/* The raw text of the token file's stories gives nearly the same reference. */
TEST(test_tokfile_matches_raw_text) {
    char tokpath[PATH_LEN], txtpath[PATH_LEN], err[ERR_LEN];
    root_path("data/train.tok", tokpath, sizeof tokpath);
    root_path("data/tinystories/train.txt", txtpath, sizeof txtpath);
    if (!file_exists(tokpath) || !file_exists(txtpath)) SKIP("no %.200s or %.200s (make data)", tokpath, txtpath);
    if (!tok) SKIP("no vocabulary (%s)", test_data_path(VOCAB_NAME));
    cdcd_text_ref *ref = cdcd_text_ref_from_tokfile(tokpath, tok, err, sizeof err);
    EXPECTF(ref != NULL, "%s", err);
    ASSERT(ref);
    cdcd_text_ref *raw = cdcd_text_ref_load(txtpath, err, sizeof err);
    EXPECTF(raw != NULL, "%s", err);
    if (raw) {
        EXPECT(cdcd_text_ref_stories(raw) == cdcd_text_ref_stories(ref));
        double a = (double)cdcd_text_ref_words(raw), b = (double)cdcd_text_ref_words(ref);
        EXPECTF(fabs(a - b) < 0.01 * b, "words: text %.0f, token file %.0f", a, b);
        cdcd_text_ref_free(raw);
    }
    cdcd_text_ref_free(ref);
}

/* The measure's reference is rebuilt per evaluation: building it from the shared training
 * text and from data/train.tok must each stay within REF_BUILD_BUDGET_S. */
TEST(test_ref_build_budget) {
    char train[PATH_LEN], tokpath[PATH_LEN], err[ERR_LEN];
    snprintf(train, sizeof train, "%s", test_data_path(TRAIN_TXT_NAME));
    root_path("data/train.tok", tokpath, sizeof tokpath);
    if (!file_exists(train) || !file_exists(tokpath)) SKIP("no %.200s or %.200s (make data)", train, tokpath);
    if (!tok) SKIP("no vocabulary (%s)", test_data_path(VOCAB_NAME));
    SKIP_IF_FAST("wall-time budgets do not hold under the sanitizers");
    double t0 = now_s();
    cdcd_text_ref *ref = cdcd_text_ref_load(train, err, sizeof err);
    double secs = now_s() - t0;
    EXPECTF(ref != NULL, "%s", err);
    EXPECTF(secs < REF_BUILD_BUDGET_S, "reference from %.200s took %.2f s", train, secs);
    printf("  reference from %.200s: %.3f s\n", train, secs);
    cdcd_text_ref_free(ref);
    t0 = now_s();
    ref = cdcd_text_ref_from_tokfile(tokpath, tok, err, sizeof err);
    secs = now_s() - t0;
    EXPECTF(ref != NULL, "%s", err);
    EXPECTF(secs < REF_BUILD_BUDGET_S, "reference from %.200s took %.2f s", tokpath, secs);
    printf("  reference from %.200s: %.3f s\n", tokpath, secs);
    cdcd_text_ref_free(ref);
}

TEST(test_empty_input) {
    cdcd_text_stats st;
    ASSERT(cdcd_text_stats_compute(NULL, tok, NULL, 0, &st) == 0);
    EXPECT(st.n_stories == 0);
    for (size_t k = 0; k < cdcd_text_stats_n_fields; k++)
        EXPECT(isnan(*(double *)((char *)&st + cdcd_text_stats_fields[k].offset)));
    const char *e[] = {""};
    cdcd_text_ref *ref = cdcd_text_ref_build(e, 1);
    ASSERT(ref);
    st = stats_of(ref, tok, e, 1);
    EXPECT(st.n_stories == 1);
    EXPECT_NEAR(st.words_per_story, 0, TOL);
    EXPECT(isnan(st.distinct1) && isnan(st.bigram_seen) && isnan(st.unigram_kl) && isnan(st.token_entropy));
    cdcd_text_ref_free(ref);
}

TEST(test_field_table) {
    EXPECT(cdcd_text_stats_n_fields == 13);
    EXPECT_STREQ(cdcd_text_stats_fields[0].name, "words_per_story");
    EXPECT(cdcd_text_stats_fields[0].offset == offsetof(cdcd_text_stats, words_per_story));
    EXPECT_STREQ(cdcd_text_stats_fields[10].name, "token_entropy");
    EXPECT(cdcd_text_stats_fields[10].offset == offsetof(cdcd_text_stats, token_entropy));
    EXPECT_STREQ(cdcd_text_stats_fields[12].name, "trigram_seen_punct");
    for (size_t k = 1; k < cdcd_text_stats_n_fields; k++)
        EXPECT(cdcd_text_stats_fields[k].offset == cdcd_text_stats_fields[k - 1].offset + sizeof(double));
}

int main(void) {
    char err[ERR_LEN], alt[PATH_LEN];
    tok = cdcd_tok_load(test_data_path(VOCAB_NAME), err, sizeof err);
    if (!tok) tok = cdcd_tok_load(root_path("data/vocab.txt", alt, sizeof alt), err, sizeof err);
    if (!tok) printf("  cannot load the vocabulary: %s\n", err);
    RUN(test_words_sentences_distinct);
    RUN(test_ngram_seen_by_hand);
    RUN(test_ngrams_do_not_cross_stories);
    RUN(test_repeat4);
    RUN(test_dangling_and_entropy);
    RUN(test_reference_rows);
    RUN(test_reference_rows_cut);
    RUN(test_shuffled_below_real_synthetic);
    RUN(test_shuffled_below_real_tinystories);
    RUN(test_text_loader);
    RUN(test_tokfile_loader);
    RUN(test_tokfile_matches_raw_text);
    RUN(test_ref_build_budget);
    RUN(test_empty_input);
    RUN(test_field_table);
    cdcd_tok_free(tok);
    return test_summary();
}
