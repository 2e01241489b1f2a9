/* cdcd eval --checkpoint C --data valid.tok [--batches N] [--batch B] [--sigmas a,b,...]
 *           [--threads N] [--seed S] [--no-ema] [--json]
 * Validation cross-entropy at fixed noise levels (the entropy-vs-sigma curve on held-out
 * data), the mean under the checkpoint's schedule, and the data's unigram entropy (what the
 * curve should approach at large sigma, where the input says nothing about the token).
 *
 * cdcd eval --samples FILE [--train PATH] [--valid PATH] [--vocab PATH] [--seed S] [--json]
 * Story statistics (core/textstats.h) of generated stories against the training text, with
 * two reference rows: as many held-out stories, each cut to its sample's WordPiece length
 * ("real"), and the same with their words shuffled ("shuffled"). FILE is `cdcd sample
 * --json` output, JSON Lines with a "text" field (and optionally "ids", which the dangling
 * figure then reads), or plain text with one story per line; the first non-empty line
 * decides which. No checkpoint is needed. */
#include <cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "batch.h"
#include "commands.h"
#include "model.h"
#include "rng.h"
#include "schedule.h"
#include "textstats.h"
#include "tokenizer.h"
#include "tokfile.h"
#include "train.h"
#include "vocab_map.h"

#define EVAL_MAX_SIGMAS 64
#define EVAL_DEFAULT_BATCHES 8
#define EVAL_DEFAULT_BATCH 16
#define EVAL_DEFAULT_TRAIN "data/train.tok"
#define EVAL_DEFAULT_VALID "data/valid.tok"
#define EVAL_DEFAULT_VOCAB "data/vocab.txt"
#define EVAL_MAX_SAMPLES_BYTES (1ull << 30) /* a samples file is read whole */
#define EVAL_MAX_SAMPLES (1u << 20)
#define EVAL_ROW_LABEL_WIDTH 9
#define EVAL_MIN_COLUMN_WIDTH 8
#define EVAL_ERR_LEN 1536
static const double eval_default_sigmas[] = {0.5, 1, 2, 5, 10, 20, 50, 100};

static void usage(FILE *out) {
    fprintf(out, "usage: cdcd eval --checkpoint C --data valid.tok [--batches N] [--batch B] [--device D]\n"
                 "                 [--sigmas 0.5,1,2,...] [--threads N] [--seed S] [--no-ema] [--self-cond] [--json]\n"
                 "       cdcd eval --samples FILE [--train PATH] [--valid PATH] [--vocab PATH] [--seed S] [--json]\n"
                 "  --self-cond  first a pass without it, then the loss with that x-hat-0 as the\n"
                 "               self-conditioning input (as the sampler uses it)\n"
                 "  --samples    story statistics of FILE (cdcd sample --json output, JSON Lines with\n"
                 "               a \"text\" field, or one story per line) against the training text,\n"
                 "               with real and word-shuffled held-out rows; no checkpoint needed\n"
                 "  --train      reference stories, TinyStories .txt or .tok (default " EVAL_DEFAULT_TRAIN ")\n"
                 "  --valid      held-out stories for the reference rows (default " EVAL_DEFAULT_VALID ")\n"
                 "  --vocab      WordPiece vocabulary (default " EVAL_DEFAULT_VOCAB ")\n");
}

/* ------------------------------------------------------------------ --samples */

/* The stories of a samples file: texts and, where the file had them, the sampler's ids. */
typedef struct {
    char **texts;
    int32_t **ids; /* ids[i] NULL: none given */
    size_t *n_ids;
    size_t n, cap;
    int any_ids;
} sample_set;

static void sample_set_free(sample_set *s) {
    for (size_t i = 0; i < s->n; i++) {
        free(s->texts[i]);
        free(s->ids[i]);
    }
    free(s->texts);
    free(s->ids);
    free(s->n_ids);
    memset(s, 0, sizeof *s);
}

/* Appends a copy of text[0, len) and of the ids array (a cJSON array, or NULL). 0, 1 on
 * out of memory, 2 on bad input (message printed; where = "FILE:LINE"). */
static int sample_set_add(sample_set *s, const char *text, size_t len, const cJSON *ids, int V,
                          const char *where) {
    if (memchr(text, '\0', len)) {
        fprintf(stderr, "cdcd eval: %s: a NUL byte in the story\n", where);
        return 2;
    }
    if (s->n >= EVAL_MAX_SAMPLES) {
        fprintf(stderr, "cdcd eval: %s: more than %u stories\n", where, EVAL_MAX_SAMPLES);
        return 2;
    }
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        char **t = realloc(s->texts, cap * sizeof *t);
        if (t) s->texts = t;
        int32_t **d = realloc(s->ids, cap * sizeof *d);
        if (d) s->ids = d;
        size_t *k = realloc(s->n_ids, cap * sizeof *k);
        if (k) s->n_ids = k;
        if (!t || !d || !k) return 1;
        s->cap = cap;
    }
    int32_t *v = NULL;
    size_t nv = 0;
    if (ids) {
        if (!cJSON_IsArray(ids)) {
            fprintf(stderr, "cdcd eval: %s: \"ids\" is not an array\n", where);
            return 2;
        }
        nv = (size_t)cJSON_GetArraySize(ids);
        v = malloc((nv ? nv : 1) * sizeof *v);
        if (!v) return 1;
        size_t j = 0;
        const cJSON *e;
        cJSON_ArrayForEach(e, ids) {
            double x = cJSON_IsNumber(e) ? e->valuedouble : -1;
            if (!(x >= 0 && x < V && x == floor(x))) {
                fprintf(stderr, "cdcd eval: %s: \"ids\"[%zu] is not a token id of the vocabulary\n", where, j);
                free(v);
                return 2;
            }
            v[j++] = (int32_t)x;
        }
    }
    char *c = malloc(len + 1);
    if (!c) {
        free(v);
        return 1;
    }
    memcpy(c, text, len);
    c[len] = '\0';
    s->texts[s->n] = c;
    s->ids[s->n] = v;
    s->n_ids[s->n] = nv;
    s->n++;
    s->any_ids |= v != NULL;
    return 0;
}

/* One story object {"text": ..., "ids": [...]?}. 0, 1 or 2 as sample_set_add. */
static int add_story_object(sample_set *s, const cJSON *o, int V, const char *where) {
    const cJSON *text = cJSON_IsObject(o) ? cJSON_GetObjectItemCaseSensitive(o, "text") : NULL;
    if (!text) {
        fprintf(stderr, "cdcd eval: %s: no \"text\" field\n", where);
        return 2;
    }
    if (!cJSON_IsString(text)) {
        fprintf(stderr, "cdcd eval: %s: \"text\" is not a string\n", where);
        return 2;
    }
    return sample_set_add(s, text->valuestring, strlen(text->valuestring),
                          cJSON_GetObjectItemCaseSensitive(o, "ids"), V, where);
}

/* A JSON document: a `cdcd sample --json` object (its "samples" array) or one story. */
static int add_json_document(sample_set *s, const cJSON *o, int V, const char *where) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(o, "samples");
    if (!arr) return add_story_object(s, o, V, where);
    if (!cJSON_IsArray(arr)) {
        fprintf(stderr, "cdcd eval: %s: \"samples\" is not an array\n", where);
        return 2;
    }
    const cJSON *e;
    int k = 0;
    cJSON_ArrayForEach(e, arr) {
        char w[EVAL_ERR_LEN];
        snprintf(w, sizeof w, "%s: samples[%d]", where, k++);
        int rc = add_story_object(s, e, V, w);
        if (rc) return rc;
    }
    return 0;
}

/* b[0, n) parsed as exactly one JSON object (nothing but whitespace after it), or NULL. */
static cJSON *parse_object(const char *b, size_t n) {
    const char *end = NULL;
    cJSON *o = cJSON_ParseWithLengthOpts(b, n, &end, 0);
    if (!o) return NULL;
    while (end && end < b + n && (*end == ' ' || *end == '\t' || *end == '\r' || *end == '\n')) end++;
    if (!cJSON_IsObject(o) || (end && end < b + n && *end)) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}

/* Reads a samples file into s. 0, 1 (runtime error) or 2 (bad input), message printed. */
static int read_samples(const char *path, int V, sample_set *s) {
    int rc = 2;
    char *buf = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cdcd eval: --samples %s: %s\n", path, strerror(errno));
        return 2;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode) || fseek(f, 0, SEEK_END) != 0) {
        fprintf(stderr, "cdcd eval: --samples %s: not a regular file\n", path);
        goto done;
    }
    long size = ftell(f);
    if (size < 0 || (unsigned long long)size > EVAL_MAX_SAMPLES_BYTES) {
        fprintf(stderr, "cdcd eval: --samples %s: %s\n", path, size < 0 ? "cannot tell its size" : "larger than 1 GiB");
        goto done;
    }
    rewind(f);
    buf = malloc((size_t)size + 1);
    if (!buf) {
        fprintf(stderr, "cdcd eval: out of memory\n");
        rc = 1;
        goto done;
    }
    if (fread(buf, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "cdcd eval: --samples %s: read error\n", path);
        goto done;
    }
    buf[size] = '\0';
    size_t len = (size_t)size;
    /* A pretty-printed document spans lines: try the whole file as one object first. */
    size_t first = 0;
    while (first < len && isspace((unsigned char)buf[first])) first++;
    if (first < len && buf[first] == '{') {
        const char *nl = memchr(buf + first, '\n', len - first);
        cJSON *line = parse_object(buf + first, nl ? (size_t)(nl - buf - first) : len - first);
        cJSON *whole = line ? NULL : parse_object(buf + first, len - first);
        cJSON_Delete(line);
        if (whole) {
            char where[EVAL_ERR_LEN];
            snprintf(where, sizeof where, "%s", path);
            rc = add_json_document(s, whole, V, where);
            cJSON_Delete(whole);
            if (rc == 1) fprintf(stderr, "cdcd eval: out of memory\n");
            goto check;
        }
    }
    int mode = 0; /* 0 undecided, 1 JSON Lines, 2 plain text */
    size_t line_no = 0;
    for (size_t at = 0; at < len;) {
        const char *nl = memchr(buf + at, '\n', len - at);
        size_t b = at, e = nl ? (size_t)(nl - buf) : len;
        at = e + 1;
        line_no++;
        while (b < e && isspace((unsigned char)buf[b])) b++;
        while (e > b && isspace((unsigned char)buf[e - 1])) e--;
        if (e == b) continue;
        char where[EVAL_ERR_LEN];
        snprintf(where, sizeof where, "%s:%zu", path, line_no);
        cJSON *o = NULL;
        if (mode != 2 && buf[b] == '{') o = parse_object(buf + b, e - b);
        if (mode == 0) mode = o ? 1 : 2;
        if (mode == 1 && !o) {
            fprintf(stderr, "cdcd eval: %s: not a JSON object (the file's first story line was JSON)\n", where);
            rc = 2;
            goto done;
        }
        rc = mode == 1 ? add_json_document(s, o, V, where) : sample_set_add(s, buf + b, e - b, NULL, V, where);
        cJSON_Delete(o);
        if (rc == 1) fprintf(stderr, "cdcd eval: out of memory\n");
        if (rc) goto done;
    }
    rc = 0;
check:
    if (rc == 0 && s->n == 0) {
        fprintf(stderr, "cdcd eval: --samples %s: no stories in the file\n", path);
        rc = 2;
    }
done:
    free(buf);
    fclose(f);
    return rc;
}

static void print_stats_row(const char *label, const cdcd_text_stats *st) {
    printf("%-*s %*d", EVAL_ROW_LABEL_WIDTH, label, (int)strlen("n_stories"), st->n_stories);
    for (size_t k = 0; k < cdcd_text_stats_n_fields; k++) {
        int w = (int)strlen(cdcd_text_stats_fields[k].name);
        if (w < EVAL_MIN_COLUMN_WIDTH) w = EVAL_MIN_COLUMN_WIDTH;
        double v = *(const double *)((const char *)st + cdcd_text_stats_fields[k].offset);
        if (isnan(v)) printf("  %*s", w, "-");
        else printf("  %*.4f", w, v);
    }
    printf("\n");
}

static cJSON *stats_json(const cdcd_text_stats *st) {
    cJSON *o = cJSON_CreateObject();
    if (!o) return NULL;
    cJSON_AddNumberToObject(o, "n_stories", st->n_stories);
    for (size_t k = 0; k < cdcd_text_stats_n_fields; k++) /* NaN prints as null */
        cJSON_AddNumberToObject(o, cdcd_text_stats_fields[k].name,
                                *(const double *)((const char *)st + cdcd_text_stats_fields[k].offset));
    return o;
}

/* cdcd eval --samples: the three rows (see the top of this file). */
static int eval_samples(const char *samples_path, const char *train_path, const char *valid_path,
                        const char *vocab_path, uint64_t seed, int json) {
    int rc = 2;
    char err[EVAL_ERR_LEN];
    sample_set s = {0};
    cdcd_text_ref *ref = NULL;
    char **held = NULL, **real = NULL, **shuf = NULL;
    size_t n_held = 0, m = 0;
    int *lengths = NULL;
    cdcd_tok_ids enc;
    cdcd_tok_ids_init(&enc);
    cdcd_tokenizer *tok = cdcd_tok_load(vocab_path, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "cdcd eval: --vocab: %s\n", err);
        goto done;
    }
    if ((rc = read_samples(samples_path, cdcd_tok_vocab_size(tok), &s)) != 0) goto done;
    rc = 1;
    if (!(lengths = calloc(s.n, sizeof *lengths))) goto oom;
    /* Each real row is cut to its sample's length (an empty sample: one token, as 0 would
     * mean uncut). */
    for (size_t i = 0; i < s.n; i++) {
        enc.n = 0;
        if (cdcd_tok_encode(tok, s.texts[i], strlen(s.texts[i]), &enc)) goto oom;
        lengths[i] = enc.n ? (int)(enc.n > INT32_MAX ? INT32_MAX : enc.n) : 1;
    }
    ref = cdcd_text_ref_open(train_path, tok, err, sizeof err);
    if (!ref) {
        fprintf(stderr, "cdcd eval: --train: %s\n", err);
        rc = 2;
        goto done;
    }
    if (cdcd_text_stories_open(valid_path, tok, s.n, &held, &n_held, err, sizeof err)) {
        fprintf(stderr, "cdcd eval: --valid: %s\n", err);
        rc = 2;
        goto done;
    }
    if (n_held == 0) {
        fprintf(stderr, "cdcd eval: --valid %s: no stories\n", valid_path);
        rc = 2;
        goto done;
    }
    m = n_held;
    if (m < s.n)
        fprintf(stderr, "cdcd eval: warning: %s holds %zu stories, so the reference rows have %zu, not %zu\n",
                valid_path, m, m, s.n);
    real = calloc(m, sizeof *real);
    shuf = calloc(m, sizeof *shuf);
    if (!real || !shuf) goto oom;
    if (cdcd_text_reference_rows(tok, (const char *const *)held, m, lengths, seed, real, shuf)) goto oom;
    cdcd_text_stats st_s, st_r, st_x;
    if (cdcd_text_stats_compute_ids(ref, tok, (const char *const *)s.texts,
                                    s.any_ids ? (const int32_t *const *)s.ids : NULL, s.n_ids, s.n, &st_s) ||
        cdcd_text_stats_compute(ref, tok, (const char *const *)real, m, &st_r) ||
        cdcd_text_stats_compute(ref, tok, (const char *const *)shuf, m, &st_x))
        goto oom;
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *a = stats_json(&st_s), *b = stats_json(&st_r), *c = stats_json(&st_x);
        char *out = NULL;
        if (root && a && b && c) {
            cJSON_AddItemToObject(root, "samples", a);
            cJSON_AddItemToObject(root, "real", b);
            cJSON_AddItemToObject(root, "shuffled", c);
            a = b = c = NULL;
            out = cJSON_PrintUnformatted(root);
        }
        cJSON_Delete(a);
        cJSON_Delete(b);
        cJSON_Delete(c);
        cJSON_Delete(root);
        if (!out) goto oom;
        puts(out);
        free(out);
    } else {
        printf("reference %s: %zu stories, %llu words; real rows: %s\n", train_path, cdcd_text_ref_stories(ref),
               (unsigned long long)cdcd_text_ref_words(ref), valid_path);
        printf("%-*s %s", EVAL_ROW_LABEL_WIDTH, "", "n_stories");
        for (size_t k = 0; k < cdcd_text_stats_n_fields; k++) {
            int w = (int)strlen(cdcd_text_stats_fields[k].name);
            printf("  %*s", w < EVAL_MIN_COLUMN_WIDTH ? EVAL_MIN_COLUMN_WIDTH : w, cdcd_text_stats_fields[k].name);
        }
        printf("\n");
        print_stats_row("samples", &st_s);
        print_stats_row("real", &st_r);
        print_stats_row("shuffled", &st_x);
    }
    rc = 0;
    goto done;
oom:
    fprintf(stderr, "cdcd eval: out of memory\n");
    rc = 1;
done:
    if (real)
        for (size_t i = 0; i < m; i++) free(real[i]);
    if (shuf)
        for (size_t i = 0; i < m; i++) free(shuf[i]);
    free(real);
    free(shuf);
    free(lengths);
    cdcd_text_stories_free(held, n_held);
    cdcd_text_ref_free(ref);
    sample_set_free(&s);
    cdcd_tok_ids_free(&enc);
    cdcd_tok_free(tok);
    return rc;
}

int cdcd_cmd_eval(int argc, char **argv) {
    const char *device = NULL, *ckpt = NULL, *data = NULL, *samples = NULL, *train_path = NULL, *valid_path = NULL,
               *vocab_path = NULL;
    int batches = EVAL_DEFAULT_BATCHES, B = EVAL_DEFAULT_BATCH, threads = 2, json = 0, use_ema = 1, self_cond = 0;
    unsigned long long seed = 1;
    double sigmas[EVAL_MAX_SIGMAS];
    int n_sigmas = (int)(sizeof eval_default_sigmas / sizeof eval_default_sigmas[0]);
    memcpy(sigmas, eval_default_sigmas, sizeof eval_default_sigmas);
    static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
                                         {"batches", required_argument, 0, 'b'},    {"batch", required_argument, 0, 'B'},
                                         {"sigmas", required_argument, 0, 's'},     {"threads", required_argument, 0, 'j'},
                                         {"seed", required_argument, 0, 'S'},       {"no-ema", no_argument, 0, 'E'},
                                         {"json", no_argument, 0, 'J'},             {"help", no_argument, 0, 'h'},
                                         {"self-cond", no_argument, 0, 'C'},
                                         {"samples", required_argument, 0, 'm'},    {"train", required_argument, 0, 'r'},
                                         {"valid", required_argument, 0, 'V'},      {"vocab", required_argument, 0, 'v'},
                                         {"device", required_argument, 0, 'D'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:b:B:s:j:S:EJCm:r:V:v:D:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': ckpt = optarg; break;
        case 'd': data = optarg; break;
        case 'b': batches = atoi(optarg); break;
        case 'B': B = atoi(optarg); break;
        case 'j': threads = atoi(optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 10); break;
        case 'E': use_ema = 0; break;
        case 'J': json = 1; break;
        case 'C': self_cond = 1; break;
        case 'm': samples = optarg; break;
        case 'r': train_path = optarg; break;
        case 'V': valid_path = optarg; break;
        case 'v': vocab_path = optarg; break;
        case 's': {
            n_sigmas = 0;
            char *s = optarg, *end;
            while (*s && n_sigmas < EVAL_MAX_SIGMAS) {
                double v = strtod(s, &end);
                if (end == s || !(v > 0) || !isfinite(v)) {
                    fprintf(stderr, "cdcd eval: --sigmas: bad value near '%s'\n", s);
                    return 2;
                }
                sigmas[n_sigmas++] = v;
                s = *end == ',' ? end + 1 : end;
                if (*end && *end != ',') {
                    fprintf(stderr, "cdcd eval: --sigmas: expected a comma-separated list\n");
                    return 2;
                }
            }
            break;
        }
        case 'D': device = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (samples) {
        if (optind < argc) {
            fprintf(stderr, "cdcd eval: unexpected argument '%s'\n", argv[optind]);
            return 2;
        }
        if (ckpt || data) {
            fprintf(stderr, "cdcd eval: --samples measures a file of stories; it takes no --checkpoint or --data\n");
            return 2;
        }
        return eval_samples(samples, train_path ? train_path : EVAL_DEFAULT_TRAIN,
                            valid_path ? valid_path : EVAL_DEFAULT_VALID, vocab_path ? vocab_path : EVAL_DEFAULT_VOCAB,
                            seed, json);
    }
    if (train_path || valid_path || vocab_path) {
        fprintf(stderr, "cdcd eval: --train, --valid and --vocab go with --samples\n");
        return 2;
    }
    if (!ckpt || !data || batches < 1 || B < 1 || B > 4096 || threads < 1 || n_sigmas < 1) {
        usage(stderr);
        return 2;
    }
    char err[512];
    cdcd_inference_bundle ib;
    if (cdcd_load_for_inference_on(ckpt, device, threads, B, use_ema, &ib, err, sizeof err) != 0) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        return 1;
    }
    int rc = 1;
    cdcd_tokfile *tf = cdcd_tokfile_open(data, NULL, err, sizeof err);
    cdcd_batcher *it = NULL;
    int T = ib.cfg->data.seq_len, E = ib.cfg->model.d_emb, V = ib.cfg->model.vocab_size;
    size_t bt = (size_t)B * T;
    int32_t *ids = malloc(sizeof(int32_t) * bt * (size_t)batches);
    uint8_t *pad = malloc(bt * (size_t)batches);
    float *noise = malloc(sizeof(float) * bt * (size_t)E), *sig = malloc(sizeof(float) * (size_t)B);
    float *sc = self_cond ? malloc(sizeof(float) * bt * (size_t)E) : NULL;
    double *counts = calloc((size_t)V, sizeof(double));
    double *ce = calloc((size_t)n_sigmas + 1, sizeof(double));
    if (!tf) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        goto done;
    }
    if (self_cond && !ib.cfg->model.self_cond) {
        fprintf(stderr, "cdcd eval: --self-cond: the model was not trained with self-conditioning\n");
        goto done;
    }
    if (self_cond && !sc) {
        fprintf(stderr, "cdcd eval: out of memory\n");
        goto done;
    }
    if (!ids || !pad || !noise || !sig || !counts || !ce) {
        fprintf(stderr, "cdcd eval: out of memory\n");
        goto done;
    }
    cdcd_batch_opts bo;
    cdcd_batch_opts_default(&bo);
    bo.batch_size = B;
    bo.seq_len = T;
    bo.shuffle = 0;
    bo.wrap = 0;
    it = cdcd_batch_create(tf, &bo, err, sizeof err);
    if (!it) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        goto done;
    }
    int nb = 0;
    double n_tokens = 0;
    /* Whole batches only, so every sigma sees the same sequences. */
    for (; nb < batches; nb++)
        if (cdcd_batch_next(it, ids + (size_t)nb * bt, pad + (size_t)nb * bt, NULL) != B) break;
    cdcd_vmap_ids_to_model(ib.vmap, ids, bt * (size_t)nb); /* a corpus-vocabulary model */
    if (nb == 0) {
        fprintf(stderr, "cdcd eval: %s holds no batch\n", data);
        goto done;
    }
    for (size_t i = 0; i < bt * (size_t)nb; i++)
        if (pad[i] && ids[i] >= 0 && ids[i] < V) {
            counts[ids[i]] += 1;
            n_tokens += 1;
        }
    double unigram = 0;
    for (int v = 0; v < V; v++)
        if (counts[v] > 0) unigram -= counts[v] / n_tokens * log(counts[v] / n_tokens);
    /* Column n_sigmas is "sigma drawn from the schedule". */
    for (int k = 0; k <= n_sigmas; k++) {
        cdcd_rng rn, rs;
        cdcd_rng_init(&rn, seed, 1000 + (uint64_t)k);
        cdcd_rng_init(&rs, seed, 2000);
        double sum = 0;
        for (int b = 0; b < nb; b++) {
            if (k < n_sigmas)
                for (int i = 0; i < B; i++) sig[i] = (float)sigmas[k];
            else
                cdcd_schedule_sample_sigmas(ib.sched, &rs, B, sig);
            cdcd_rng_fill_normal(&rn, noise, bt * (size_t)E, 1.0f);
            cdcd_batch batch = {.B = B, .T = T, .ids = ids + (size_t)b * bt, .pad_mask = pad + (size_t)b * bt,
                                .cond_mask = NULL, .loss_mask = pad + (size_t)b * bt, .sigma = sig,
                                .noise = noise, .self_cond = NULL};
            float loss;
            if (sc) {
                if (cdcd_model_forward_x0(ib.model, &batch, sc) != 0) {
                    fprintf(stderr, "cdcd eval: evaluation failed\n");
                    goto done;
                }
                batch.self_cond = sc;
            }
            if (cdcd_model_forward_loss(ib.model, &batch, &loss, NULL) != 0) {
                fprintf(stderr, "cdcd eval: evaluation failed\n");
                goto done;
            }
            sum += loss;
        }
        ce[k] = sum / nb;
    }
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *curve = cJSON_AddArrayToObject(root, "curve");
        for (int k = 0; k < n_sigmas; k++) {
            cJSON *pt = cJSON_CreateObject();
            cJSON_AddNumberToObject(pt, "sigma", sigmas[k]);
            cJSON_AddNumberToObject(pt, "ce", ce[k]);
            cJSON_AddItemToArray(curve, pt);
        }
        cJSON_AddNumberToObject(root, "schedule_mean_ce", ce[n_sigmas]);
        cJSON_AddNumberToObject(root, "unigram_entropy", unigram);
        cJSON_AddNumberToObject(root, "sequences", (double)nb * B);
        cJSON_AddNumberToObject(root, "tokens", n_tokens);
        cJSON_AddNumberToObject(root, "checkpoint_step", (double)ib.step);
        cJSON_AddBoolToObject(root, "ema", ib.used_ema);
        char *s = cJSON_PrintUnformatted(root);
        puts(s);
        free(s);
        cJSON_Delete(root);
    } else {
        printf("checkpoint step %lld%s, %d sequences (%.0f tokens) of %s\n", (long long)ib.step,
               ib.used_ema ? " (EMA weights)" : "", nb * B, n_tokens, data);
        printf("%10s  %8s\n", "sigma", "CE (nats)");
        for (int k = 0; k < n_sigmas; k++) printf("%10g  %8.4f\n", sigmas[k], ce[k]);
        printf("%10s  %8.4f\n", "schedule", ce[n_sigmas]);
        printf("unigram entropy of the data: %.4f nats\n", unigram);
    }
    rc = 0;
done:
    cdcd_batch_free(it);
    cdcd_tokfile_close(tf);
    cdcd_inference_bundle_free(&ib);
    free(ids);
    free(pad);
    free(noise);
    free(sc);
    free(sig);
    free(counts);
    free(ce);
    return rc;
}
