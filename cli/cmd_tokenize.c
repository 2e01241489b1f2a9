/* cdcd tokenize / cdcd detokenize: JSON Lines filters for people and scripts.
 *
 *   tokenize:   {"text": "..."} per line on stdin  ->  {"ids": [...]} per line on stdout
 *   detokenize: {"ids": [...]}  per line on stdin  ->  {"text": "..."} per line on stdout
 *
 * Every non-blank input line gives exactly one output line, so outputs stay aligned with
 * inputs: a line that cannot be handled gives {"error": "line N: ..."} and the command
 * exits with status 1 after the whole input. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "commands.h"
#include "tokenizer.h"

#define DEFAULT_VOCAB "data/vocab.txt"
#define ERR_LEN 1536
#define ID_TEXT_MAX 16 /* ", -2147483648" */

typedef enum { MODE_TOKENIZE, MODE_DETOKENIZE } filter_mode;

typedef struct {
    filter_mode mode;
    const char *vocab;
    int special;       /* tokenize: wrap in [CLS] ... [SEP] */
    unsigned flags;    /* detokenize: CDCD_TOK_DECODE_* */
} filter_opts;

static void usage(FILE *out, filter_mode mode) {
    if (mode == MODE_TOKENIZE)
        fprintf(out,
                "usage: cdcd tokenize [--vocab FILE] [--special] < in.jsonl > out.jsonl\n\n"
                "Reads JSON Lines with a \"text\" (or \"story\") string, writes one\n"
                "{\"ids\": [...]} line per input line: bert-base-uncased WordPiece, exactly as\n"
                "Hugging Face's BertTokenizer. A bad line gives {\"error\": ...} and exit\n"
                "status 1.\n\n"
                "  --vocab FILE   vocab.txt (default %s)\n"
                "  --special      add [CLS] before and [SEP] after the ids\n",
                DEFAULT_VOCAB);
    else
        fprintf(out,
                "usage: cdcd detokenize [--vocab FILE] [--stop-at-sep] [--hf] < in.jsonl\n\n"
                "Reads JSON Lines with an \"ids\" array, writes one {\"text\": \"...\"} line per\n"
                "input line: [PAD] and [CLS] skipped, ## pieces glued, spaces tidied.\n\n"
                "  --vocab FILE    vocab.txt (default %s)\n"
                "  --stop-at-sep   end each text at its first [SEP]\n"
                "  --hf            tidy spaces exactly as HF clean_up_tokenization (no quote,\n"
                "                  bracket or hyphen rules)\n",
                DEFAULT_VOCAB);
}

static void put_error(unsigned long line, const char *msg) {
    cJSON *o = cJSON_CreateObject();
    char buf[256];
    snprintf(buf, sizeof buf, "line %lu: %s", line, msg);
    char *s = o && cJSON_AddStringToObject(o, "error", buf) ? cJSON_PrintUnformatted(o) : NULL;
    if (s) printf("%s\n", s);
    else printf("{\"error\": \"line %lu: out of memory\"}\n", line);
    free(s);
    cJSON_Delete(o);
    fprintf(stderr, "cdcd: line %lu: %s\n", line, msg);
}

/* One input line; returns 0, or 1 when it produced an error line, -1 on a fatal error. */
static int tokenize_line(const cdcd_tokenizer *tok, const filter_opts *o, const cJSON *j,
                         unsigned long line, cdcd_tok_ids *ids, char **out, size_t *out_cap) {
    const cJSON *text = cJSON_GetObjectItemCaseSensitive(j, "text");
    if (!cJSON_IsString(text)) text = cJSON_GetObjectItemCaseSensitive(j, "story");
    if (!cJSON_IsString(text)) {
        put_error(line, "no \"text\" string");
        return 1;
    }
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    ids->n = 0;
    uint64_t bad0 = ids->invalid_bytes;
    if (cdcd_tok_encode(tok, text->valuestring, strlen(text->valuestring), ids)) return -1;
    if (ids->invalid_bytes != bad0)
        fprintf(stderr, "cdcd tokenize: line %lu: %llu invalid UTF-8 bytes skipped\n", line,
                (unsigned long long)(ids->invalid_bytes - bad0));
    size_t need = 16 + (ids->n + 2) * ID_TEXT_MAX;
    if (need > *out_cap) {
        char *p = realloc(*out, need);
        if (!p) return -1;
        *out = p;
        *out_cap = need;
    }
    char *s = *out;
    size_t k = (size_t)sprintf(s, "{\"ids\": [");
    size_t n_total = ids->n + (o->special ? 2 : 0);
    for (size_t i = 0; i < n_total; i++) {
        int32_t id = !o->special ? ids->ids[i]
                     : i == 0 ? sp->cls
                     : i == n_total - 1 ? sp->sep
                     : ids->ids[i - 1];
        k += (size_t)sprintf(s + k, i ? ", %d" : "%d", id);
    }
    k += (size_t)sprintf(s + k, "]}\n");
    fwrite(s, 1, k, stdout);
    return 0;
}

static int detokenize_line(const cdcd_tokenizer *tok, const filter_opts *o, const cJSON *j,
                           unsigned long line, cdcd_tok_ids *ids) {
    const cJSON *arr = cJSON_GetObjectItemCaseSensitive(j, "ids");
    if (!cJSON_IsArray(arr)) {
        put_error(line, "no \"ids\" array");
        return 1;
    }
    ids->n = 0;
    int vs = cdcd_tok_vocab_size(tok);
    const cJSON *e;
    cJSON_ArrayForEach(e, arr) {
        if (!cJSON_IsNumber(e) || e->valuedouble != (double)(int64_t)e->valuedouble ||
            e->valuedouble < 0 || e->valuedouble >= vs) {
            char msg[128];
            snprintf(msg, sizeof msg, "ids must be integers in [0, %d)", vs);
            put_error(line, msg);
            return 1;
        }
        if (ids->n == ids->cap) {
            size_t cap = ids->cap ? ids->cap * 2 : 256;
            int32_t *p = realloc(ids->ids, cap * sizeof *p);
            if (!p) return -1;
            ids->ids = p;
            ids->cap = cap;
        }
        ids->ids[ids->n++] = (int32_t)e->valuedouble;
    }
    char *text = cdcd_tok_decode(tok, ids->ids, ids->n, o->flags);
    if (!text) return -1;
    cJSON *out = cJSON_CreateObject();
    char *s = out && cJSON_AddStringToObject(out, "text", text) ? cJSON_PrintUnformatted(out)
                                                                : NULL;
    free(text);
    cJSON_Delete(out);
    if (!s) return -1;
    printf("%s\n", s);
    free(s);
    return 0;
}

static int run_filter(int argc, char **argv, filter_mode mode) {
    filter_opts o = {mode, DEFAULT_VOCAB, 0, 0};
    static const struct option opts[] = {
        {"vocab", required_argument, 0, 'v'}, {"special", no_argument, 0, 's'},
        {"stop-at-sep", no_argument, 0, 'S'}, {"hf", no_argument, 0, 'H'},
        {"help", no_argument, 0, 'h'},        {0, 0, 0, 0}};
    optind = 1;
    int c;
    while ((c = getopt_long(argc, argv, "v:h", opts, NULL)) != -1) {
        if (c == 'v') o.vocab = optarg;
        else if (c == 's' && mode == MODE_TOKENIZE) o.special = 1;
        else if (c == 'S' && mode == MODE_DETOKENIZE) o.flags |= CDCD_TOK_DECODE_STOP_AT_SEP;
        else if (c == 'H' && mode == MODE_DETOKENIZE) o.flags |= CDCD_TOK_DECODE_HF;
        else if (c == 'h') {
            usage(stdout, mode);
            return 0;
        } else {
            usage(stderr, mode);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cdcd: unexpected argument '%s' (input is read from stdin)\n",
                argv[optind]);
        usage(stderr, mode);
        return 2;
    }
    char err[ERR_LEN];
    cdcd_tokenizer *tok = cdcd_tok_load(o.vocab, err, sizeof err);
    if (!tok) {
        fprintf(stderr, "cdcd: %s\n", err);
        return 1;
    }
    cdcd_tok_ids ids;
    cdcd_tok_ids_init(&ids);
    char *line = NULL, *out = NULL;
    size_t line_cap = 0, out_cap = 0;
    unsigned long line_no = 0;
    int errors = 0, fatal = 0;
    ssize_t len;
    while ((len = getline(&line, &line_cap, stdin)) >= 0) {
        line_no++;
        ssize_t i = 0;
        while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r' ||
                           line[i] == '\n'))
            i++;
        if (i == len) continue; /* blank lines give no output */
        cJSON *j = cJSON_ParseWithLength(line, (size_t)len);
        int r;
        if (!j || !cJSON_IsObject(j)) {
            put_error(line_no, "not a JSON object");
            r = 1;
        } else if (mode == MODE_TOKENIZE) {
            r = tokenize_line(tok, &o, j, line_no, &ids, &out, &out_cap);
        } else {
            r = detokenize_line(tok, &o, j, line_no, &ids);
        }
        cJSON_Delete(j);
        if (r < 0) {
            fprintf(stderr, "cdcd: line %lu: %s\n", line_no, strerror(errno ? errno : ENOMEM));
            fatal = 1;
            break;
        }
        errors += r;
    }
    if (fflush(stdout) != 0) {
        fprintf(stderr, "cdcd: writing stdout: %s\n", strerror(errno));
        fatal = 1;
    }
    free(line);
    free(out);
    cdcd_tok_ids_free(&ids);
    cdcd_tok_free(tok);
    if (errors) fprintf(stderr, "cdcd: %d line(s) had errors\n", errors);
    return fatal || errors ? 1 : 0;
}

int cdcd_cmd_tokenize(int argc, char **argv) { return run_filter(argc, argv, MODE_TOKENIZE); }
int cdcd_cmd_detokenize(int argc, char **argv) {
    return run_filter(argc, argv, MODE_DETOKENIZE);
}
