/* cdcd prep: TinyStories text or JSON Lines -> token file (core/tokfile.h), streaming.
 *
 * Memory is bounded whatever the input size: text is read in READ_BYTES blocks and
 * encoded up to the last whitespace as it arrives (encoding is independent across
 * whitespace, so the ids are the same as for the whole story at once), ids stream into
 * the token file writer, and a JSON line longer than MAX_JSON_LINE_BYTES is skipped with
 * a warning. The only unbounded thing is the output file. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "clock.h"
#include "commands.h"
#include "tokenizer.h"
#include "tokfile.h"
#include "vocab_map.h"

#define READ_BYTES (1u << 20)
#define STORY_SEPARATOR "<|endoftext|>"
#define STORY_SEPARATOR_LEN (sizeof STORY_SEPARATOR - 1)
/* A run this long without whitespace is cut (with a warning) to bound memory; WordPiece
 * would make it [UNK] anyway (a word over 100 characters). */
#define MAX_WORD_BYTES (1u << 20)
#define MAX_JSON_LINE_BYTES (64u << 20)
#define PROGRESS_SECONDS 2.0
#define MAX_WARNINGS_SHOWN 5
#define DEFAULT_VOCAB "data/vocab.txt"
#define ERR_LEN 1536

typedef enum { FMT_AUTO, FMT_TEXT, FMT_JSONL } input_format;

typedef struct {
    const cdcd_tokenizer *tok;
    cdcd_tokfile_writer *w;
    cdcd_tok_ids ids;
    int quiet;
    /* input buffer: unconsumed bytes are buf[beg, end) */
    char *buf;
    size_t beg, end, cap;
    const char *name; /* current input, for messages */
    uint64_t line_no;
    int seg_has_text; /* the current text story has a non-whitespace byte */
    /* counters */
    uint64_t bytes_done, bytes_total;
    uint64_t empty_skipped, bad_lines, cut_words;
    double t0, last_progress;
} prep_ctx;

static void usage(FILE *out) {
    fprintf(out,
            "usage: cdcd prep --vocab FILE --out FILE.tok [--format auto|text|jsonl] [--quiet]"
            " INPUT...\n"
            "       cdcd prep --vocab FILE --check FILE.tok\n\n"
            "Tokenises stories with the bert-base-uncased WordPiece vocabulary into a token\n"
            "file for training. INPUT is TinyStories text (stories separated by a line\n"
            "<|endoftext|>, both the original and the V2-GPT4 files) or JSON Lines with a\n"
            "\"text\" or \"story\" string per line; \"-\" reads stdin. Memory stays bounded\n"
            "whatever the input size; progress goes to stderr every %.0f s.\n\n"
            "  --vocab FILE   vocab.txt, %d lines (default %s)\n"
            "  --out FILE     token file to write (atomically: temp file, fsync, rename)\n"
            "  --format F     auto (default: JSON Lines for .jsonl/.ndjson names or a\n"
            "                 first non-blank '{'), text, or jsonl\n"
            "  --check FILE   verify an existing token file against the vocabulary, then exit\n"
            "  --quiet        no progress lines\n",
            PROGRESS_SECONDS, CDCD_TOK_BERT_VOCAB_SIZE, DEFAULT_VOCAB);
}

static void warn_line(prep_ctx *c, uint64_t count, const char *fmt, ...) {
    if (count > MAX_WARNINGS_SHOWN) return;
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cdcd prep: warning: %s:%llu: ", c->name, (unsigned long long)c->line_no);
    vfprintf(stderr, fmt, ap);
    if (count == MAX_WARNINGS_SHOWN)
        fprintf(stderr, " (further warnings of this kind are only counted)");
    fputc('\n', stderr);
    va_end(ap);
}

static void progress(prep_ctx *c, int final) {
    double now = cdcd_now_s();
    if (!final && (c->quiet || now - c->last_progress < PROGRESS_SECONDS)) return;
    c->last_progress = now;
    double dt = now - c->t0 > 1e-9 ? now - c->t0 : 1e-9;
    double mb = (double)c->bytes_done / 1e6;
    char pct[32] = "";
    if (c->bytes_total)
        snprintf(pct, sizeof pct, "/%.1f MB (%.0f%%)", (double)c->bytes_total / 1e6,
                 100.0 * (double)c->bytes_done / (double)c->bytes_total);
    else
        snprintf(pct, sizeof pct, " MB");
    fprintf(stderr, "prep: %.1f%s, %llu stories, %llu tokens, %.1f MB/s%s\n", mb, pct,
            (unsigned long long)cdcd_tokfile_writer_stories(c->w),
            (unsigned long long)cdcd_tokfile_writer_tokens(c->w), mb / dt,
            final ? " (done)" : "");
}

/* Encodes text into the open story. 0, or -1 with a message printed. */
static int encode_append(prep_ctx *c, const char *text, size_t len) {
    c->ids.n = 0;
    if (cdcd_tok_encode(c->tok, text, len, &c->ids)) {
        fprintf(stderr, "cdcd prep: %s: encoding failed: %s\n", c->name, strerror(errno));
        return -1;
    }
    if (cdcd_tokfile_writer_append(c->w, c->ids.ids, c->ids.n)) {
        fprintf(stderr, "cdcd prep: %s\n", cdcd_tokfile_writer_error(c->w));
        return -1;
    }
    return 0;
}

static int end_story(prep_ctx *c, int counts_if_empty) {
    int r = cdcd_tokfile_writer_end_story(c->w);
    if (r < 0) {
        fprintf(stderr, "cdcd prep: %s\n", cdcd_tokfile_writer_error(c->w));
        return -1;
    }
    if (r == 0 && counts_if_empty) {
        c->empty_skipped++;
        warn_line(c, c->empty_skipped, "empty story skipped");
    }
    return 0;
}

static void note_text(prep_ctx *c, const char *s, size_t n) {
    for (size_t i = 0; i < n && !c->seg_has_text; i++)
        if (s[i] != ' ' && s[i] != '\n' && s[i] != '\t' && s[i] != '\r') c->seg_has_text = 1;
}

static void count_lines(prep_ctx *c, const char *s, size_t n) {
    for (const char *p = s; (p = memchr(p, '\n', (size_t)(s + n - p))); p++) c->line_no++;
}

/* Text format: consumes what can be encoded now from buf[beg, end). At eof everything. */
static int text_step(prep_ctx *c, int eof) {
    for (;;) {
        char *s = c->buf + c->beg;
        size_t n = c->end - c->beg;
        char *sep = memmem(s, n, STORY_SEPARATOR, STORY_SEPARATOR_LEN);
        if (sep) {
            size_t k = (size_t)(sep - s);
            note_text(c, s, k);
            if (encode_append(c, s, k) || end_story(c, 1)) return -1;
            count_lines(c, s, k + STORY_SEPARATOR_LEN);
            c->beg += k + STORY_SEPARATOR_LEN;
            c->seg_has_text = 0;
            continue;
        }
        if (eof) {
            note_text(c, s, n);
            if (encode_append(c, s, n) || end_story(c, c->seg_has_text)) return -1;
            count_lines(c, s, n);
            c->beg = c->end;
            return 0;
        }
        /* Keep a possible partial separator at the end; encode up to the last whitespace
         * before it, so no word is split. */
        size_t limit = n > STORY_SEPARATOR_LEN - 1 ? n - (STORY_SEPARATOR_LEN - 1) : 0;
        size_t k = limit;
        while (k > 0 && s[k - 1] != ' ' && s[k - 1] != '\n' && s[k - 1] != '\t' &&
               s[k - 1] != '\r')
            k--;
        if (k == 0 && limit > MAX_WORD_BYTES) {
            k = limit;
            while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--; /* whole characters */
            c->cut_words++;
            warn_line(c, c->cut_words, "more than %u bytes without whitespace: cut",
                      MAX_WORD_BYTES);
        }
        if (k > 0) {
            note_text(c, s, k);
            if (encode_append(c, s, k)) return -1;
            count_lines(c, s, k);
            c->beg += k;
        }
        return 0;
    }
}

static int jsonl_line(prep_ctx *c, const char *s, size_t n) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) i++;
    if (i == n) return 0; /* blank line */
    cJSON *j = cJSON_ParseWithLength(s, n);
    const cJSON *field = NULL;
    if (j && cJSON_IsObject(j)) {
        field = cJSON_GetObjectItemCaseSensitive(j, "text");
        if (!cJSON_IsString(field)) field = cJSON_GetObjectItemCaseSensitive(j, "story");
    }
    if (!cJSON_IsString(field)) {
        c->bad_lines++;
        warn_line(c, c->bad_lines, j ? "no \"text\" or \"story\" string: line skipped"
                                     : "not valid JSON: line skipped");
        cJSON_Delete(j);
        return 0;
    }
    int rc = encode_append(c, field->valuestring, strlen(field->valuestring));
    if (!rc) rc = end_story(c, 1);
    cJSON_Delete(j);
    return rc;
}

/* JSON Lines: one story per line of buf[beg, end); *skipping: inside a line too long to
 * keep, dropped up to its newline. */
static int jsonl_step(prep_ctx *c, int eof, int *skipping) {
    for (;;) {
        char *s = c->buf + c->beg;
        size_t n = c->end - c->beg;
        char *nl = memchr(s, '\n', n);
        if (!nl && !eof) {
            if (n > MAX_JSON_LINE_BYTES || *skipping) {
                if (!*skipping) {
                    c->bad_lines++;
                    warn_line(c, c->bad_lines, "line longer than %u bytes: skipped",
                              MAX_JSON_LINE_BYTES);
                }
                *skipping = 1;
                c->beg = c->end;
            }
            return 0; /* wait for the rest of the line */
        }
        size_t k = nl ? (size_t)(nl - s) : n;
        c->beg += nl ? k + 1 : k;
        if (*skipping) *skipping = 0;
        else if (k && jsonl_line(c, s, k)) return -1;
        c->line_no++;
        if (!nl) return 0; /* end of input */
    }
}

static int has_suffix(const char *s, const char *suf) {
    size_t a = strlen(s), b = strlen(suf);
    return a >= b && strcmp(s + a - b, suf) == 0;
}

static int process_input(prep_ctx *c, const char *path, input_format fmt) {
    int fd = strcmp(path, "-") == 0 ? STDIN_FILENO : open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fprintf(stderr, "cdcd prep: cannot open %s: %s\n", path, strerror(errno));
        return -1;
    }
    c->name = strcmp(path, "-") == 0 ? "(stdin)" : path;
    c->beg = c->end = 0;
    c->line_no = 1;
    c->seg_has_text = 0;
    if (fmt == FMT_AUTO && (has_suffix(path, ".jsonl") || has_suffix(path, ".ndjson")))
        fmt = FMT_JSONL;
    int skipping = 0, rc = -1;
    for (;;) {
        if (c->beg > 0) { /* compact */
            memmove(c->buf, c->buf + c->beg, c->end - c->beg);
            c->end -= c->beg;
            c->beg = 0;
        }
        if (c->cap - c->end < READ_BYTES) {
            size_t cap = c->cap ? c->cap * 2 : 2 * READ_BYTES;
            while (cap - c->end < READ_BYTES) cap *= 2;
            char *p = realloc(c->buf, cap);
            if (!p) {
                fprintf(stderr, "cdcd prep: out of memory\n");
                goto done;
            }
            c->buf = p;
            c->cap = cap;
        }
        ssize_t r = read(fd, c->buf + c->end, READ_BYTES);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            fprintf(stderr, "cdcd prep: read %s: %s\n", c->name, strerror(errno));
            goto done;
        }
        c->end += (size_t)r;
        c->bytes_done += (uint64_t)r;
        int eof = r == 0;
        if (fmt == FMT_AUTO) {
            size_t i = 0;
            while (i < c->end && (c->buf[i] == ' ' || c->buf[i] == '\t' || c->buf[i] == '\r' ||
                                  c->buf[i] == '\n'))
                i++;
            if (i == c->end && !eof) continue; /* nothing but blanks yet */
            fmt = i < c->end && c->buf[i] == '{' ? FMT_JSONL : FMT_TEXT;
        }
        if ((fmt == FMT_JSONL ? jsonl_step(c, eof, &skipping) : text_step(c, eof))) goto done;
        progress(c, 0);
        if (eof) break;
    }
    rc = 0;
done:
    if (fd != STDIN_FILENO) close(fd);
    return rc;
}

static int check_file(const char *vocab, const char *path) {
    char err[ERR_LEN];
    int rc = 1;
    cdcd_tokfile *f = NULL;
    cdcd_tokenizer *tok = cdcd_tok_load(vocab, err, sizeof err);
    if (!tok) goto fail;
    f = cdcd_tokfile_open(path, tok, err, sizeof err);
    if (!f || cdcd_tokfile_verify(f, err, sizeof err)) goto fail;
    fprintf(stderr, "%s: ok, %llu stories, %llu tokens\n", path,
            (unsigned long long)f->h.n_stories, (unsigned long long)f->h.n_tokens);
    rc = 0;
    goto done;
fail:
    fprintf(stderr, "cdcd prep: %s\n", err);
done:
    cdcd_tokfile_close(f);
    cdcd_tok_free(tok);
    return rc;
}

int cdcd_cmd_prep(int argc, char **argv) {
    const char *vocab = DEFAULT_VOCAB, *out = NULL, *check = NULL;
    input_format fmt = FMT_AUTO;
    int quiet = 0;
    static const struct option opts[] = {
        {"vocab", required_argument, 0, 'v'}, {"out", required_argument, 0, 'o'},
        {"format", required_argument, 0, 'f'}, {"check", required_argument, 0, 'c'},
        {"quiet", no_argument, 0, 'q'},        {"help", no_argument, 0, 'h'},
        {0, 0, 0, 0}};
    optind = 1;
    int o;
    while ((o = getopt_long(argc, argv, "v:o:f:c:qh", opts, NULL)) != -1) {
        switch (o) {
        case 'v': vocab = optarg; break;
        case 'o': out = optarg; break;
        case 'c': check = optarg; break;
        case 'q': quiet = 1; break;
        case 'f':
            if (strcmp(optarg, "auto") == 0) fmt = FMT_AUTO;
            else if (strcmp(optarg, "text") == 0) fmt = FMT_TEXT;
            else if (strcmp(optarg, "jsonl") == 0) fmt = FMT_JSONL;
            else {
                fprintf(stderr, "cdcd prep: --format must be auto, text or jsonl\n");
                return 2;
            }
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (check) return check_file(vocab, check);
    if (!out || optind >= argc) {
        fprintf(stderr, "cdcd prep: %s\n", !out ? "--out is required" : "no INPUT given");
        usage(stderr);
        return 2;
    }

    char err[ERR_LEN];
    int rc = 1;
    prep_ctx c;
    memset(&c, 0, sizeof c);
    c.quiet = quiet;
    cdcd_tokenizer *tok = cdcd_tok_load(vocab, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "cdcd prep: %s\n", err);
        return 1;
    }
    c.tok = tok;
    for (int i = optind; i < argc; i++) { /* fail early on a missing input */
        struct stat st;
        if (strcmp(argv[i], "-") == 0) continue;
        if (stat(argv[i], &st) < 0) {
            fprintf(stderr, "cdcd prep: cannot open %s: %s\n", argv[i], strerror(errno));
            goto done;
        }
        if (S_ISREG(st.st_mode)) c.bytes_total += (uint64_t)st.st_size;
    }
    c.w = cdcd_tokfile_writer_open(out, tok, err, sizeof err);
    if (!c.w) {
        fprintf(stderr, "cdcd prep: %s\n", err);
        goto done;
    }
    c.t0 = c.last_progress = cdcd_now_s();
    for (int i = optind; i < argc; i++)
        if (process_input(&c, argv[i], fmt)) goto done;
    uint64_t stories = cdcd_tokfile_writer_stories(c.w);
    uint64_t tokens = cdcd_tokfile_writer_tokens(c.w);
    if (stories == 0) {
        fprintf(stderr, "cdcd prep: no stories found in the input: nothing written\n");
        goto done;
    }
    if (!quiet) progress(&c, 1);
    int fin = cdcd_tokfile_writer_finish(c.w, err, sizeof err);
    c.w = NULL;
    if (fin) {
        fprintf(stderr, "cdcd prep: %s\n", err);
        goto done;
    }
    fprintf(stderr,
            "prep: wrote %s: %llu stories, %llu tokens (%.1f per story); skipped %llu empty "
            "stories, %llu bad lines, %llu invalid UTF-8 bytes; %llu overlong runs cut; %.1f s\n",
            out, (unsigned long long)stories, (unsigned long long)tokens,
            (double)tokens / (double)stories, (unsigned long long)c.empty_skipped,
            (unsigned long long)c.bad_lines, (unsigned long long)c.ids.invalid_bytes,
            (unsigned long long)c.cut_words, cdcd_now_s() - c.t0);
    /* How many ids a corpus vocabulary (data.vocab = "corpus") would give the model. */
    cdcd_tokfile *tf = cdcd_tokfile_open(out, NULL, err, sizeof err);
    cdcd_vocab_map *vm = tf ? cdcd_vmap_from_tokfile(tf, err, sizeof err) : NULL;
    if (vm)
        fprintf(stderr, "prep: the corpus uses %d of the %d ids (specials included): the output vocabulary "
                        "of a model trained on it with data.vocab = \"corpus\"\n", vm->n_model, vm->n_tokens);
    else
        fprintf(stderr, "cdcd prep: cannot count the ids of %s: %s\n", out, err);
    cdcd_vmap_free(vm);
    cdcd_tokfile_close(tf);
    rc = 0;
done:
    cdcd_tokfile_writer_abort(c.w);
    cdcd_tok_ids_free(&c.ids);
    free(c.buf);
    cdcd_tok_free(tok);
    return rc;
}
