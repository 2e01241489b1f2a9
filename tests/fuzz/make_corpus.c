/* Writes the binary seeds of the fuzz corpus (token files, checkpoints, schedules) with the
 * project's own writers, so the seeds are exactly what the code writes. The text seeds
 * (configs, JSON, paths, text) are plain files in tests/fuzz/corpus/ written by hand.
 *
 *   make fuzz-bins   # builds this too: build-fuzz/fuzz/make_corpus
 *   build-fuzz/fuzz/make_corpus tests/fuzz/corpus
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "log.h"
#include "runconfig.h"
#include "schedule.h"
#include "tokenizer.h"
#include "tokfile.h"
#include "vocab_map.h"

static const char small_vocab[] =
    "[PAD]\n[unused0]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n!\n\"\n'\n(\n)\n,\n-\n.\n:\n?\na\nb\nc\nd\ne\n"
    "f\ng\nh\ni\nj\nk\nl\nm\nn\no\np\nq\nr\ns\nt\nu\nv\nw\nx\ny\nz\nthe\nonce\nupon\ntime\n"
    "##s\n##ed\n##ing\n##a\n##e\n##n\n##t\nun\n##able\né\n##é\n中\n";

static void die(const char *what, const char *err) {
    fprintf(stderr, "make_corpus: %s: %s\n", what, err ? err : "");
    exit(1);
}

static void put(const char *dir, const char *name, const void *data, size_t n) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f || fwrite(data, 1, n, f) != n || fclose(f) != 0) die("write", path);
}

static void *slurp(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) die("read", path);
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    void *buf = malloc((size_t)len + 1);
    if (!buf || fread(buf, 1, (size_t)len, f) != (size_t)len) die("read", path);
    fclose(f);
    *n = (size_t)len;
    return buf;
}

/* A token file of the given stories (ids separated by -1) into dir/name; returns its path. */
static void tokfile(const cdcd_tokenizer *tok, const char *dir, const char *name, const int32_t *ids,
                    size_t n, char *path, size_t pathlen) {
    char err[512];
    snprintf(path, pathlen, "%s/%s", dir, name);
    cdcd_tokfile_writer *w = cdcd_tokfile_writer_open(path, tok, err, sizeof err);
    if (!w) die("tokfile", err);
    for (size_t i = 0; i < n; i++) {
        if (ids[i] < 0) {
            if (cdcd_tokfile_writer_end_story(w) < 0) die("tokfile", "end story");
        } else if (cdcd_tokfile_writer_append(w, &ids[i], 1) != 0) {
            die("tokfile", "append");
        }
    }
    if (cdcd_tokfile_writer_finish(w, err, sizeof err) != 0) die("tokfile", err);
}

static void schedules(const char *dir, double cauchy[CDCD_SCHEDULE_SERIAL_LEN],
                      double pwl[CDCD_SCHEDULE_SERIAL_LEN]) {
    cdcd_schedule s;
    double blob[CDCD_SCHEDULE_SERIAL_LEN];
    cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 0.1, 200);
    cdcd_schedule_serialise(&s, cauchy);
    put(dir, "cauchy-init", cauchy, sizeof blob);
    cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, 0.1, 200);
    cdcd_schedule_serialise(&s, pwl);
    put(dir, "pwl-init", pwl, sizeof blob);
    /* fitted: a loss rising like a Cauchy CDF in sigma */
    enum { N = 600 };
    float sigma[N], loss[N];
    for (int i = 0; i < N; i++) {
        sigma[i] = (float)(0.1 * pow(2000.0, (i + 0.5) / N));
        loss[i] = (float)(6.0 * (atan((sigma[i] - 3.0) / 2.0) / M_PI + 0.5) - 1.0 + 0.01 * ((i * 7) % 5));
    }
    for (int kind = 0; kind < 2; kind++) {
        cdcd_schedule_init(&s, kind, 0.1, 200);
        cdcd_schedule_refit(&s, sigma, loss, N, 200);
        cdcd_schedule_refit(&s, sigma, loss, 4, 400); /* a failed refit too */
        cdcd_schedule_serialise(&s, blob);
        put(dir, kind ? "pwl-fitted" : "cauchy-fitted", blob, sizeof blob);
    }
    cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 1, 1.5); /* a narrow range */
    cdcd_schedule_serialise(&s, blob);
    put(dir, "cauchy-narrow", blob, sizeof blob);
    put(dir, "short", blob, 8 * 11); /* a section cut short */
}

int main(int argc, char **argv) {
    if (argc != 2) die("usage", "make_corpus CORPUS_DIR");
    cdcd_log_set_level(CDCD_LOG_WARN + 1);
    const char *root = argv[1];
    char d_tok[4096], d_ckpt[4096], d_sched[4096], tmp[4096], path[4096], err[512];
    snprintf(d_tok, sizeof d_tok, "%s/fuzz_tokfile", root);
    snprintf(d_ckpt, sizeof d_ckpt, "%s/fuzz_ckpt", root);
    snprintf(d_sched, sizeof d_sched, "%s/fuzz_schedule", root);
    snprintf(tmp, sizeof tmp, "/tmp/cdcd-make-corpus-%d", (int)getpid());
    mkdir(d_tok, 0755);
    mkdir(d_ckpt, 0755);
    mkdir(d_sched, 0755);
    mkdir(tmp, 0700);

    cdcd_tokenizer *tok = cdcd_tok_load_from_buffer(small_vocab, sizeof small_vocab - 1, "small", 0,
                                                    err, sizeof err);
    if (!tok) die("vocab", err);

    /* token files: three stories; one story of one token; one long story (windows) */
    size_t n;
    void *buf;
    const int32_t three[] = {42, 43, 44, 45, 13, -1, 16, 47, -1, 5, 2, 30, 31, 32, 33, -1};
    tokfile(tok, tmp, "three.tok", three, sizeof three / sizeof three[0], path, sizeof path);
    buf = slurp(path, &n);
    put(d_tok, "three-stories", buf, n);
    cdcd_tokfile *tf = cdcd_tokfile_open(path, tok, err, sizeof err);
    if (!tf) die("reopen", err);
    cdcd_vocab_map *vm = cdcd_vmap_from_tokfile(tf, err, sizeof err);
    if (!vm) die("vmap", err);
    void *vm_blob;
    size_t vm_len;
    if (cdcd_vmap_serialise(vm, &vm_blob, &vm_len) != 0) die("vmap", "serialise");
    cdcd_tokfile_close(tf);
    put(d_tok, "truncated", buf, n - 8);
    free(buf);
    const int32_t one[] = {16, -1};
    tokfile(tok, tmp, "one.tok", one, 2, path, sizeof path);
    buf = slurp(path, &n);
    put(d_tok, "one-token", buf, n);
    free(buf);
    int32_t longs[80];
    for (int i = 0; i < 79; i++) longs[i] = 6 + (i * 13) % 50;
    longs[79] = -1;
    tokfile(tok, tmp, "long.tok", longs, 80, path, sizeof path);
    buf = slurp(path, &n);
    put(d_tok, "long-story", buf, n);
    free(buf);
    tokfile(tok, tmp, "empty.tok", NULL, 0, path, sizeof path);
    buf = slurp(path, &n);
    put(d_tok, "no-stories", buf, n);
    free(buf);

    /* schedules */
    double cauchy[CDCD_SCHEDULE_SERIAL_LEN], pwl[CDCD_SCHEDULE_SERIAL_LEN];
    schedules(d_sched, cauchy, pwl);

    /* checkpoints: the sections a training run writes, small; a minimal one; an empty one */
    cdcd_config_env env = {.skip_file_checks = 1};
    cdcd_config_error cerr;
    static const char cfg_text[] =
        "{\"preset\":\"tiny\",\"model\":{\"d_model\":64,\"n_layers\":1,\"max_seq_len\":16},"
        "\"data\":{\"seq_len\":8,\"vocab\":\"corpus\"},\"schedule\":{\"kind\":\"pwl\"}}";
    cdcd_run_config *cfg = cdcd_run_config_parse(cfg_text, strlen(cfg_text), &env, &cerr);
    if (!cfg) die("config", cerr.message);
    char *json = cdcd_run_config_to_json(cfg);
    unsigned char state[64] = {1, 2, 3, 4}, rng[64] = {9, 8, 7}, params[256] = {0};
    float ring[8] = {0.5f, 1, 2, 4, 8, 16, 32, 64};
    struct {
        const char *file;
        int full;
        const double *sched;
    } ck[] = {{"full-pwl", 1, pwl}, {"minimal-cauchy", 0, cauchy}};
    for (size_t i = 0; i < sizeof ck / sizeof ck[0]; i++) {
        snprintf(path, sizeof path, "%s/c.ckpt", tmp);
        cdcd_ckpt_writer *w = cdcd_ckpt_writer_new(path);
        if (!w) die("ckpt", "new");
        int rc = cdcd_ckpt_add(w, "config", json, strlen(json));
        rc |= cdcd_ckpt_add(w, "schedule", ck[i].sched, sizeof cauchy);
        if (ck[i].full) {
            rc |= cdcd_ckpt_add(w, "state", state, sizeof state);
            rc |= cdcd_ckpt_add(w, "params", params, sizeof params);
            rc |= cdcd_ckpt_add(w, "rng", rng, sizeof rng);
            rc |= cdcd_ckpt_add(w, "ring_sigma", ring, sizeof ring);
            rc |= cdcd_ckpt_add(w, "vocab_map", vm_blob, vm_len);
            rc |= cdcd_ckpt_add(w, "vocab", small_vocab, sizeof small_vocab - 1);
        }
        if (rc) die("ckpt", "add");
        if (cdcd_ckpt_commit(w, NULL, NULL, err, sizeof err) != 0) die("ckpt", err);
        buf = slurp(path, &n);
        put(d_ckpt, ck[i].file, buf, n);
        if (i == 0) {
            ((unsigned char *)buf)[100] ^= 1; /* a flipped bit: the hash refuses it */
            put(d_ckpt, "bad-hash", buf, n);
        }
        free(buf);
    }
    snprintf(path, sizeof path, "%s/e.ckpt", tmp);
    cdcd_ckpt_writer *w = cdcd_ckpt_writer_new(path);
    if (!w || cdcd_ckpt_commit(w, NULL, NULL, err, sizeof err) != 0) die("ckpt", err);
    buf = slurp(path, &n);
    put(d_ckpt, "no-sections", buf, n);
    free(buf);

    free(json);
    cdcd_run_config_free(cfg);
    free(vm_blob);
    cdcd_vmap_free(vm);
    cdcd_tok_free(tok);
    static const char *const made[] = {"three.tok", "one.tok", "long.tok", "empty.tok", "c.ckpt",
                                       "e.ckpt"};
    for (size_t i = 0; i < sizeof made / sizeof made[0]; i++) {
        snprintf(path, sizeof path, "%s/%s", tmp, made[i]);
        unlink(path);
    }
    rmdir(tmp);
    return 0;
}
