/* Fuzz target: the checkpoint reader (core/ckpt.c cdcd_ckpt_open, cdcd_ckpt_get,
 * cdcd_ckpt_read_exact) and the parsers of the sections a checkpoint load reads as
 * core/train.c does: "config" (the run config, no file checks), "vocab_map", "vocab"
 * (vocab.txt's bytes) and "schedule".
 *
 * The input is the file, written to an in-memory file (the reader takes a path). The
 * reader verifies a SHA-256 trailer first, so each input is read twice: as it is, and with
 * the trailer recomputed over the bytes before it, so that mutations reach the table of
 * contents and the section parsers behind the hash.
 * Invariants: every section found lies inside the file; read_exact succeeds exactly when
 * the size matches. */
#include <openssl/evp.h>

#include "ckpt.h"
#include "fuzz.h"
#include "runconfig.h"
#include "schedule.h"
#include "tokenizer.h"
#include "vocab_map.h"

#define TRAILER_BYTES 40 /* SHA-256, then "CKPTEND\0" */

static fuzz_file file;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    fuzz_file_open(&file, "fuzz.ckpt");
    return 0;
}

static void sections(const cdcd_ckpt_reader *r, size_t file_size) {
    static const char *const names[] = {"config", "state",      "params",    "adam_m", "adam_v",
                                        "ema",    "schedule",   "rng",       "data",   "ring_sigma",
                                        "ring_loss", "vocab_map", "vocab",   "",       NULL};
    for (int i = 0; names[i]; i++) {
        const void *p;
        size_t n;
        if (cdcd_ckpt_get(r, names[i], &p, &n) != 0) continue;
        FUZZ_ASSERT(n <= file_size);
        if (n) {
            /* touch both ends: ASan reports a section outside the buffer */
            volatile unsigned char a = ((const unsigned char *)p)[0];
            volatile unsigned char z = ((const unsigned char *)p)[n - 1];
            (void)a;
            (void)z;
        }
        unsigned char small[16];
        int rc = cdcd_ckpt_read_exact(r, names[i], small, sizeof small);
        FUZZ_ASSERT((rc == 0) == (n == sizeof small));
    }
    const void *p;
    size_t n;
    char err[512];
    if (cdcd_ckpt_get(r, "config", &p, &n) == 0) {
        cdcd_config_env env = {.skip_file_checks = 1};
        cdcd_config_error cerr;
        cdcd_run_config *cfg = cdcd_run_config_parse(p, n, &env, &cerr);
        cdcd_run_config_free(cfg);
    }
    if (cdcd_ckpt_get(r, "vocab_map", &p, &n) == 0) {
        cdcd_vocab_map *m = cdcd_vmap_deserialise(p, n, err, sizeof err);
        if (m) {
            for (int i = 0; i < m->n_model; i++) {
                int32_t t = cdcd_vmap_to_token(m, i);
                FUZZ_ASSERT(t >= 0 && t < m->n_tokens);
                FUZZ_ASSERT(cdcd_vmap_to_model(m, t) == i);
            }
            FUZZ_ASSERT(m->unk_model >= 0 && m->unk_model < m->n_model);
            cdcd_vmap_free(m);
        }
    }
    if (cdcd_ckpt_get(r, "vocab", &p, &n) == 0) {
        cdcd_tokenizer *t = cdcd_tok_load_from_buffer(p, n, "checkpoint", 0, err, sizeof err);
        cdcd_tok_free(t);
    }
    double blob[CDCD_SCHEDULE_SERIAL_LEN];
    if (cdcd_ckpt_read_exact(r, "schedule", blob, sizeof blob) == 0) {
        cdcd_schedule s;
        if (cdcd_schedule_deserialise(&s, blob, CDCD_SCHEDULE_SERIAL_LEN) == 0) {
            double ts[9];
            (void)cdcd_schedule_timesteps(&s, 8, ts);
        }
    }
}

static void read_file(const uint8_t *data, size_t size) {
    fuzz_file_write(&file, data, size);
    char err[512];
    cdcd_ckpt_reader *r = cdcd_ckpt_open(file.path, err, sizeof err);
    if (!r) {
        FUZZ_ASSERT(memchr(err, 0, sizeof err));
        return;
    }
    sections(r, size);
    cdcd_ckpt_close(r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    read_file(data, size);
    if (size < TRAILER_BYTES) return 0;
    uint8_t *fixed = malloc(size);
    if (!fixed) abort();
    memcpy(fixed, data, size);
    unsigned int dl = 0;
    EVP_Digest(fixed, size - TRAILER_BYTES, fixed + size - TRAILER_BYTES, &dl, EVP_sha256(), NULL);
    memcpy(fixed + size - 8, "CKPTEND", 8);
    read_file(fixed, size);
    free(fixed);
    return 0;
}
