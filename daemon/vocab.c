/* The daemon's tokenizer: see vocab.h. */
#include "vocab.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "tokenizer.h"

#define CDCDD_VOCAB_FILE "vocab.txt"

struct cdcdd_vocab {
    cdcd_tokenizer *tok;
    char path[1100];
    char error[256];
};

cdcdd_vocab *cdcdd_vocab_new(const char *data_dir) {
    cdcdd_vocab *v = calloc(1, sizeof *v);
    if (!v) return NULL;
    snprintf(v->path, sizeof v->path, "%.1024s/%s", data_dir, CDCDD_VOCAB_FILE);
    snprintf(v->error, sizeof v->error, "the tokenizer is not loaded");
    return v;
}

void cdcdd_vocab_free(cdcdd_vocab *v) {
    if (!v) return;
    if (v->tok) cdcd_tok_free(v->tok);
    free(v);
}

void cdcdd_vocab_load(cdcdd_vocab *v) {
    if (v->tok) return;
    char err[200] = "";
    cdcd_tokenizer *tok = cdcd_tok_load(v->path, err, sizeof err);
    if (!tok) {
        snprintf(v->error, sizeof v->error, "cannot load the vocabulary %.100s: %.100s", v->path, err);
        cdcd_warn("%s; sampling is unavailable until it is there (then send SIGHUP)", v->error);
        return;
    }
    __atomic_store_n(&v->tok, tok, __ATOMIC_RELEASE);
    cdcd_info("tokenizer: %s (%d pieces)", v->path, cdcd_tok_vocab_size(tok));
}

const struct cdcd_tokenizer *cdcdd_vocab_get(cdcdd_vocab *v, const char **why) {
    const cdcd_tokenizer *tok = v ? __atomic_load_n(&v->tok, __ATOMIC_ACQUIRE) : NULL;
    if (!tok && why) *why = v ? v->error : "no tokenizer";
    return tok;
}
