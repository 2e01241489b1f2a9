/* Tokenizer speed: encodes every story of a TinyStories text file on one thread and
 * prints one JSON line with MB/s (story bytes / median wall time over REPS passes).
 *
 *   bench_tokenizer [VOCAB TEXT]
 * Defaults: $CDCD_SHARED_DATA (else ../shared/data)/bert-base-uncased-vocab.txt and
 * .../tinystories/train.txt. The file is read into memory first, so only encoding is
 * timed; one untimed pass warms the caches. cpu_mb_per_s divides by the thread's CPU
 * time instead, which other processes competing for the cores do not inflate. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "clock.h"
#include "tokenizer.h"

#define REPS 7
#define STORY_SEPARATOR "<|endoftext|>"
#define DEFAULT_DATA "../shared/data"

static double thread_cpu_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    const char *env = getenv("CDCD_SHARED_DATA");
    const char *dir = env && *env ? env : DEFAULT_DATA;
    char vocab[4096], text_path[4096];
    snprintf(vocab, sizeof vocab, "%s", argc > 1 ? argv[1] : "");
    snprintf(text_path, sizeof text_path, "%s", argc > 2 ? argv[2] : "");
    if (argc < 2) snprintf(vocab, sizeof vocab, "%s/bert-base-uncased-vocab.txt", dir);
    if (argc < 3) snprintf(text_path, sizeof text_path, "%s/tinystories/train.txt", dir);

    char err[1536];
    cdcd_tokenizer *tok = cdcd_tok_load(vocab, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "bench_tokenizer: %s\n", err);
        return 1;
    }
    FILE *f = fopen(text_path, "rb");
    if (!f) {
        fprintf(stderr, "bench_tokenizer: cannot open %s\n", text_path);
        cdcd_tok_free(tok);
        return 1;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *text = malloc((size_t)size + 1);
    if (!text || fread(text, 1, (size_t)size, f) != (size_t)size) {
        fprintf(stderr, "bench_tokenizer: cannot read %s\n", text_path);
        fclose(f);
        free(text);
        cdcd_tok_free(tok);
        return 1;
    }
    fclose(f);
    text[size] = '\0';

    /* story boundaries, found once */
    size_t n_stories = 0, cap = 1024, story_bytes = 0;
    size_t *start = malloc(cap * sizeof *start), *len = malloc(cap * sizeof *len);
    for (char *p = text; p < text + size;) {
        char *q = strstr(p, STORY_SEPARATOR);
        size_t l = q ? (size_t)(q - p) : (size_t)(text + size - p);
        if (strspn(p, " \t\r\n") >= l) { /* nothing but the newline after the last one */
            p = q ? q + strlen(STORY_SEPARATOR) : text + size;
            continue;
        }
        if (n_stories == cap) {
            cap *= 2;
            start = realloc(start, cap * sizeof *start);
            len = realloc(len, cap * sizeof *len);
        }
        start[n_stories] = (size_t)(p - text);
        len[n_stories++] = l;
        story_bytes += l;
        p = q ? q + strlen(STORY_SEPARATOR) : text + size;
    }

    cdcd_tok_ids ids;
    cdcd_tok_ids_init(&ids);
    double t[REPS], cpu[REPS];
    size_t tokens = 0;
    for (int rep = -1; rep < REPS; rep++) {
        tokens = 0;
        double t0 = cdcd_now_s(), c0 = thread_cpu_s();
        for (size_t i = 0; i < n_stories; i++) {
            ids.n = 0;
            cdcd_tok_encode(tok, text + start[i], len[i], &ids);
            tokens += ids.n;
        }
        if (rep >= 0) {
            t[rep] = cdcd_now_s() - t0;
            cpu[rep] = thread_cpu_s() - c0;
        }
    }
    qsort(t, REPS, sizeof t[0], cmp_double);
    qsort(cpu, REPS, sizeof cpu[0], cmp_double);
    double median = t[REPS / 2];
    printf("{\"bench\": \"tokenizer\", \"mb_per_s\": %.1f, \"bytes\": %zu, \"stories\": %zu, "
           "\"tokens\": %zu, \"threads\": 1, \"reps\": %d, \"median_s\": %.4f, \"min_s\": %.4f, "
           "\"best_mb_per_s\": %.1f, \"cpu_mb_per_s\": %.1f}\n",
           (double)story_bytes / median / 1e6, story_bytes, n_stories, tokens, REPS, median,
           t[0], (double)story_bytes / t[0] / 1e6, (double)story_bytes / cpu[REPS / 2] / 1e6);
    cdcd_tok_ids_free(&ids);
    free(start);
    free(len);
    free(text);
    cdcd_tok_free(tok);
    return 0;
}
