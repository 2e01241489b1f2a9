#include "runconfig.h"
#include "json_strict.h"

#include <cJSON.h>
#include <ctype.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <errno.h>

#include "model.h"
#include "schedule.h"

/* Defaults: the whole product must work from {"preset":"tiny"}: conditioning masks on, so
 * stories can be prompted; the seed's "noise on every token" is p_cond = 0. */
#define RUN_DEFAULT_SEED 1
#define RUN_DEFAULT_SEQ_LEN 128
#define RUN_DEFAULT_BATCH 32
#define RUN_DEFAULT_MAX_STEPS 20000
#define RUN_DEFAULT_THREADS 2
#define RUN_DEFAULT_CHECKPOINT_EVERY 250
#define RUN_DEFAULT_VALID_EVERY 250
#define RUN_DEFAULT_VALID_BATCHES 4
#define RUN_DEFAULT_KEEP_CHECKPOINTS 3
#define RUN_DEFAULT_LR 1e-3f
#define RUN_DEFAULT_BETA1 0.9f
#define RUN_DEFAULT_BETA2 0.99f
#define RUN_DEFAULT_EPS 1e-8f
#define RUN_DEFAULT_WEIGHT_DECAY 0.01f
#define RUN_DEFAULT_CLIP 1.0f
#define RUN_DEFAULT_WARMUP 200
#define RUN_DEFAULT_MIN_LR_RATIO 0.1f
#define RUN_DEFAULT_P_COND 0.5f
#define RUN_DEFAULT_P_PREFIX 0.5f
#define RUN_DEFAULT_P_DROP 0.1f
#define RUN_DEFAULT_P_SELF_COND 0.5f /* used only when model.self_cond is on */
/* The sample-quality levers, as measured in docs/quality.md: the corpus vocabulary trains
 * as well per step as the full one and 1.6x faster. Self-conditioning won the 60-minute run
 * on every word figure (trigrams seen 0.36 -> 0.49, bigrams 0.77 -> 0.85, issue measure) for
 * about 15% more time per step, so it is on. The EMA (0.999) lost: after the default
 * 60-minute run, whose learning rate decays to its floor, the live weights wrote better
 * stories on every figure, so it is off. The output prior stays opt-in: it was not measured
 * to win at a real budget. */
#define RUN_DEFAULT_VOCAB CDCD_VOCAB_CORPUS
#define RUN_DEFAULT_OUTPUT_PRIOR 0
#define RUN_DEFAULT_SELF_COND 1
#define RUN_DEFAULT_EMA 0.0f
/* Periodic stories during a daemon run: 4 stories of 100 steps every 500 steps costs
 * about 1-2% of tiny's training time (docs/quality.md has the measurement). */
#define RUN_DEFAULT_SAMPLE_EVERY 500
#define RUN_DEFAULT_SAMPLE_N 4
#define RUN_DEFAULT_SAMPLE_STEPS 100
/* The tiny preset is the one-hour recipe of this 2-core machine (docs/quality.md): it trains for
 * 60 minutes of training time and its learning rate ends decayed there, so POST /runs
 * {"preset":"tiny"} is the same run as `cdcd train --time-limit 60`. Other presets have no
 * time budget (max_steps alone); "train": {"minutes": 0} removes it. */
#define RUN_TINY_DEFAULT_MINUTES 60.0f
#define RUN_MAX_SAMPLE_N 64
#define RUN_MAX_SAMPLE_STEPS 10000

/* Limits on what a config may ask for (named so tests and docs can refer to them). */
#define RUN_MAX_BATCH 4096
#define RUN_MAX_STEPS 1000000000LL
#define RUN_MAX_MINUTES 5256000.0 /* ten years of training time */
#define RUN_MAX_THREADS 256
#define RUN_MAX_DIM 16384
#define RUN_MAX_LAYERS 256
#define RUN_MAX_SEQ 4096
#define RUN_MAX_VOCAB 65535 /* token files store uint16 ids */
#define RUN_MIN_SCHEDULE_WINDOW 16 /* below CDCD_SCHEDULE_MIN_WINDOW: allowed for tests */
#define RUN_MAX_SCHEDULE_WINDOW 1000000

typedef enum { F_INT, F_INT64, F_UINT64, F_FLOAT, F_BOOL, F_STRING, F_ENUM } field_type;

typedef struct {
    const char *section; /* NULL = top level */
    const char *key;
    field_type type;
    size_t offset;
    double min, max;        /* inclusive numeric range */
    size_t str_cap;         /* F_STRING: buffer size */
    const char *const *enum_names; /* F_ENUM: NULL-terminated; value = index */
} field_spec;

static const char *const head_names[] = {"logits", "embedding", NULL};
static const char *const decay_names[] = {"cosine", "exp", "none", NULL};
static const char *const mode_names[] = {"window", "truncate", NULL};
static const char *const sched_names[] = {"cauchy", "pwl", NULL};
static const char *const vocab_names[] = {"full", "corpus", NULL};

/* F_ENUM fields are stored through an int pointer. */
_Static_assert(sizeof(cdcd_head_mode) == sizeof(int) && sizeof(cdcd_lr_decay) == sizeof(int) &&
                   sizeof(cdcd_data_mode) == sizeof(int) && sizeof(cdcd_vocab_kind) == sizeof(int),
               "enum fields must be int-sized");

#define OFF(member) offsetof(cdcd_run_config, member)
static const field_spec fields[] = {
    {NULL, "name", F_STRING, OFF(name), 0, 0, CDCD_RUN_NAME_MAX, NULL},
    {NULL, "seed", F_UINT64, OFF(seed), 0, 9007199254740991.0, 0, NULL},
    {NULL, "device", F_STRING, OFF(device), 0, 0, CDCD_DEVICE_SPEC_MAX, NULL},
    {"model", "vocab_size", F_INT, OFF(model.vocab_size), 8, RUN_MAX_VOCAB, 0, NULL},
    {"model", "d_emb", F_INT, OFF(model.d_emb), 2, RUN_MAX_DIM, 0, NULL},
    {"model", "d_model", F_INT, OFF(model.d_model), 2, RUN_MAX_DIM, 0, NULL},
    {"model", "n_heads", F_INT, OFF(model.n_heads), 1, 1024, 0, NULL},
    {"model", "n_layers", F_INT, OFF(model.n_layers), 1, RUN_MAX_LAYERS, 0, NULL},
    {"model", "cond_dim", F_INT, OFF(model.cond_dim), 2, RUN_MAX_DIM, 0, NULL},
    {"model", "max_seq_len", F_INT, OFF(model.max_seq_len), 4, RUN_MAX_SEQ, 0, NULL},
    {"model", "head", F_ENUM, OFF(model.head), 0, 0, 0, head_names},
    {"model", "cond_channels", F_BOOL, OFF(model.cond_channels), 0, 1, 0, NULL},
    {"model", "self_cond", F_BOOL, OFF(model.self_cond), 0, 1, 0, NULL},
    {"model", "output_prior", F_BOOL, OFF(model.output_prior), 0, 1, 0, NULL},
    {"model", "emb_init_std", F_FLOAT, OFF(model.emb_init_std), 1e-8, 10, 0, NULL},
    {"model", "init_std", F_FLOAT, OFF(model.init_std), 1e-8, 10, 0, NULL},
    {"data", "train", F_STRING, OFF(data.train), 0, 0, CDCD_RUN_PATH_MAX, NULL},
    {"data", "valid", F_STRING, OFF(data.valid), 0, 0, CDCD_RUN_PATH_MAX, NULL},
    {"data", "vocab_file", F_STRING, OFF(data.vocab_file), 0, 0, CDCD_RUN_PATH_MAX, NULL},
    {"data", "seq_len", F_INT, OFF(data.seq_len), 4, RUN_MAX_SEQ, 0, NULL},
    {"data", "mode", F_ENUM, OFF(data.mode), 0, 0, 0, mode_names},
    {"data", "vocab", F_ENUM, OFF(data.vocab), 0, 0, 0, vocab_names},
    {"train", "batch_size", F_INT, OFF(train.batch_size), 1, RUN_MAX_BATCH, 0, NULL},
    {"train", "grad_accum", F_INT, OFF(train.grad_accum), 1, RUN_MAX_BATCH, 0, NULL},
    {"train", "max_steps", F_INT64, OFF(train.max_steps), 1, (double)RUN_MAX_STEPS, 0, NULL},
    {"train", "minutes", F_FLOAT, OFF(train.minutes), 0, RUN_MAX_MINUTES, 0, NULL},
    {"train", "threads", F_INT, OFF(train.threads), 1, RUN_MAX_THREADS, 0, NULL},
    {"train", "checkpoint_every", F_INT, OFF(train.checkpoint_every), 0, 1e9, 0, NULL},
    {"train", "valid_every", F_INT, OFF(train.valid_every), 0, 1e9, 0, NULL},
    {"train", "valid_batches", F_INT, OFF(train.valid_batches), 1, 100000, 0, NULL},
    {"train", "keep_checkpoints", F_INT, OFF(train.keep_checkpoints), 0, 100000, 0, NULL},
    {"train", "sample_every", F_INT, OFF(train.sample_every), 0, 1e9, 0, NULL},
    {"train", "sample_n", F_INT, OFF(train.sample_n), 1, RUN_MAX_SAMPLE_N, 0, NULL},
    {"train", "sample_steps", F_INT, OFF(train.sample_steps), 1, RUN_MAX_SAMPLE_STEPS, 0, NULL},
    {"optim", "lr", F_FLOAT, OFF(optim.lr), 1e-9, 1.0, 0, NULL},
    {"optim", "beta1", F_FLOAT, OFF(optim.beta1), 0, 0.999999, 0, NULL},
    {"optim", "beta2", F_FLOAT, OFF(optim.beta2), 0, 0.9999999, 0, NULL},
    {"optim", "eps", F_FLOAT, OFF(optim.eps), 1e-30, 1.0, 0, NULL},
    {"optim", "weight_decay", F_FLOAT, OFF(optim.weight_decay), 0, 10, 0, NULL},
    {"optim", "clip", F_FLOAT, OFF(optim.clip), 0, 1e6, 0, NULL},
    {"optim", "warmup_steps", F_INT, OFF(optim.warmup_steps), 0, 1e9, 0, NULL},
    {"optim", "decay", F_ENUM, OFF(optim.decay), 0, 0, 0, decay_names},
    {"optim", "min_lr_ratio", F_FLOAT, OFF(optim.min_lr_ratio), 0, 1, 0, NULL},
    {"optim", "ema", F_FLOAT, OFF(optim.ema), 0, 0.999999, 0, NULL},
    {"schedule", "kind", F_ENUM, OFF(schedule.kind), 0, 0, 0, sched_names},
    {"schedule", "tmin", F_FLOAT, OFF(schedule.tmin), 1e-4, 1e4, 0, NULL},
    {"schedule", "tmax", F_FLOAT, OFF(schedule.tmax), 1e-3, 1e5, 0, NULL},
    {"schedule", "window", F_INT, OFF(schedule.window), RUN_MIN_SCHEDULE_WINDOW, RUN_MAX_SCHEDULE_WINDOW, 0, NULL},
    {"schedule", "refit_every", F_INT, OFF(schedule.refit_every), 1, 1e9, 0, NULL},
    {"cond", "p_cond", F_FLOAT, OFF(cond.p_cond), 0, 1, 0, NULL},
    {"cond", "p_prefix", F_FLOAT, OFF(cond.p_prefix), 0, 1, 0, NULL},
    {"cond", "p_drop", F_FLOAT, OFF(cond.p_drop), 0, 1, 0, NULL},
    {"cond", "p_self_cond", F_FLOAT, OFF(cond.p_self_cond), 0, 1, 0, NULL},
    {"distributed", "ranks", F_INT, OFF(distributed.ranks), 1, CDCD_RUN_MAX_RANKS, 0, NULL},
    {"distributed", "hostfile", F_STRING, OFF(distributed.hostfile), 0, 0, CDCD_RUN_HOSTFILE_MAX, NULL},
    {"distributed", "max_restarts", F_INT, OFF(distributed.max_restarts), 0, CDCD_RUN_MAX_RESTARTS, 0, NULL},
    {"distributed", "overlap", F_BOOL, OFF(distributed.overlap), 0, 1, 0, NULL},
    {"distributed", "hang_min_s", F_INT, OFF(distributed.hang_min_s), 1, CDCD_RUN_HANG_MIN_S_MAX, 0, NULL},
};
#undef OFF

static const char *const sections[] = {"model", "data", "train", "optim", "schedule", "cond", "distributed", NULL};

static int set_error(cdcd_config_error *err, const char *section, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_error(cdcd_config_error *err, const char *section, const char *key, const char *fmt, ...) {
    if (err) {
        if (section && key)
            snprintf(err->field, sizeof err->field, "%s.%s", section, key);
        else
            snprintf(err->field, sizeof err->field, "%s", section ? section : key ? key : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof err->message, fmt, ap);
        va_end(ap);
    }
    return -1;
}

static void apply_defaults(cdcd_run_config *c) {
    memset(c, 0, sizeof *c);
    snprintf(c->preset, sizeof c->preset, "tiny");
    c->seed = RUN_DEFAULT_SEED;
    c->data.seq_len = RUN_DEFAULT_SEQ_LEN;
    c->data.mode = CDCD_DATA_WINDOW;
    c->train.batch_size = RUN_DEFAULT_BATCH;
    c->train.grad_accum = 1;
    c->distributed.ranks = 1;
    snprintf(c->device, sizeof c->device, "auto");
    c->distributed.hang_min_s = CDCD_RUN_HANG_MIN_S_DEFAULT;
    c->train.max_steps = RUN_DEFAULT_MAX_STEPS;
    c->train.threads = RUN_DEFAULT_THREADS;
    c->train.checkpoint_every = RUN_DEFAULT_CHECKPOINT_EVERY;
    c->train.valid_every = RUN_DEFAULT_VALID_EVERY;
    c->train.valid_batches = RUN_DEFAULT_VALID_BATCHES;
    c->train.keep_checkpoints = RUN_DEFAULT_KEEP_CHECKPOINTS;
    c->train.sample_every = RUN_DEFAULT_SAMPLE_EVERY;
    c->train.sample_n = RUN_DEFAULT_SAMPLE_N;
    c->train.sample_steps = RUN_DEFAULT_SAMPLE_STEPS;
    c->optim.lr = RUN_DEFAULT_LR;
    c->optim.beta1 = RUN_DEFAULT_BETA1;
    c->optim.beta2 = RUN_DEFAULT_BETA2;
    c->optim.eps = RUN_DEFAULT_EPS;
    c->optim.weight_decay = RUN_DEFAULT_WEIGHT_DECAY;
    c->optim.clip = RUN_DEFAULT_CLIP;
    c->optim.warmup_steps = RUN_DEFAULT_WARMUP;
    c->optim.decay = CDCD_DECAY_COSINE;
    c->optim.min_lr_ratio = RUN_DEFAULT_MIN_LR_RATIO;
    c->optim.ema = RUN_DEFAULT_EMA;
    c->data.vocab = RUN_DEFAULT_VOCAB;
    c->schedule.kind = CDCD_SCHEDULE_CAUCHY;
    c->schedule.tmin = CDCD_SCHEDULE_DEFAULT_TMIN;
    c->schedule.tmax = CDCD_SCHEDULE_DEFAULT_TMAX;
    c->schedule.window = CDCD_SCHEDULE_DEFAULT_WINDOW;
    c->schedule.refit_every = CDCD_SCHEDULE_DEFAULT_REFIT_EVERY;
    c->cond.p_cond = RUN_DEFAULT_P_COND;
    c->cond.p_prefix = RUN_DEFAULT_P_PREFIX;
    c->cond.p_drop = RUN_DEFAULT_P_DROP;
    c->cond.p_self_cond = 0.0f;
}

static const field_spec *find_field(const char *section, const char *key) {
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const field_spec *f = &fields[i];
        if ((section == NULL) != (f->section == NULL)) continue;
        if (section && strcmp(section, f->section) != 0) continue;
        if (strcmp(key, f->key) == 0) return f;
    }
    return NULL;
}

static int set_field(cdcd_run_config *c, const field_spec *f, const cJSON *v, cdcd_config_error *err) {
    char *base = (char *)c + f->offset;
    switch (f->type) {
    case F_BOOL:
        if (!cJSON_IsBool(v)) return set_error(err, f->section, f->key, "must be true or false");
        *(int *)base = cJSON_IsTrue(v);
        return 0;
    case F_STRING:
        if (!cJSON_IsString(v)) return set_error(err, f->section, f->key, "must be a string");
        if (strlen(v->valuestring) >= f->str_cap)
            return set_error(err, f->section, f->key, "is longer than %zu bytes", f->str_cap - 1);
        snprintf(base, f->str_cap, "%s", v->valuestring);
        return 0;
    case F_ENUM: {
        if (!cJSON_IsString(v)) return set_error(err, f->section, f->key, "must be a string");
        for (int i = 0; f->enum_names[i]; i++) {
            if (strcmp(v->valuestring, f->enum_names[i]) == 0) {
                *(int *)base = i;
                return 0;
            }
        }
        char allowed[128] = "";
        for (int i = 0; f->enum_names[i]; i++) {
            strncat(allowed, i ? ", " : "", sizeof allowed - strlen(allowed) - 1);
            strncat(allowed, f->enum_names[i], sizeof allowed - strlen(allowed) - 1);
        }
        return set_error(err, f->section, f->key, "must be one of: %s", allowed);
    }
    default:
        break;
    }
    if (!cJSON_IsNumber(v)) return set_error(err, f->section, f->key, "must be a number");
    double d = v->valuedouble;
    if (!isfinite(d)) return set_error(err, f->section, f->key, "must be finite");
    if (f->type != F_FLOAT && d != floor(d)) return set_error(err, f->section, f->key, "must be an integer");
    if (d < f->min || d > f->max)
        return set_error(err, f->section, f->key, "must be between %g and %g (got %g)", f->min, f->max, d);
    switch (f->type) {
    case F_INT: *(int *)base = (int)d; break;
    case F_INT64: *(int64_t *)base = (int64_t)d; break;
    case F_UINT64: *(uint64_t *)base = (uint64_t)d; break;
    case F_FLOAT: *(float *)base = (float)d; break;
    default: break;
    }
    return 0;
}

/* 1 when path, with every symlink resolved, lies inside dir (also resolved). */
static int inside_dir(const char *path, const char *dir) {
    char *real_path = realpath(path, NULL), *real_dir = realpath(dir, NULL);
    int ok = 0;
    if (real_path && real_dir) {
        size_t n = strlen(real_dir);
        ok = strncmp(real_path, real_dir, n) == 0 && (real_path[n] == '/' || (n == 1 && real_dir[0] == '/'));
    }
    free(real_path);
    free(real_dir);
    return ok;
}

/* Resolves a data path. In confined mode (an HTTP client names the file) only relative
 * paths without ".." components are accepted, the file must resolve, symlinks included,
 * inside the data dir, and the error names the path as given: a missing file, an
 * unreadable one and a symlink out of the directory get the same answer, so the API is
 * no oracle for what exists outside it and never shows where the data dir lives. */
static int resolve_data_path(char *path, size_t cap, const char *key, const char *what,
                             const cdcd_config_env *env, cdcd_config_error *err) {
    int confined = env && env->confine_to_data_dir && !env->skip_file_checks;
    char given[CDCD_RUN_PATH_MAX];
    snprintf(given, sizeof given, "%s", path);
    if (confined) {
        if (path[0] == '/') return set_error(err, "data", key, "must be a path relative to the data directory");
        const char *p = path;
        while (*p) {
            const char *slash = strchr(p, '/');
            size_t n = slash ? (size_t)(slash - p) : strlen(p);
            if (n == 2 && p[0] == '.' && p[1] == '.')
                return set_error(err, "data", key, "must not contain '..'");
            p += n;
            if (*p == '/') p++;
        }
    }
    if (path[0] != '/' && env && env->data_dir && env->data_dir[0] && !env->skip_file_checks) {
        char joined[CDCD_RUN_PATH_MAX];
        if (snprintf(joined, sizeof joined, "%s/%s", env->data_dir, path) >= (int)sizeof joined)
            return set_error(err, "data", key, "path is too long");
        snprintf(path, cap, "%s", joined);
    }
    if (env && env->skip_file_checks) return 0;
    if (confined) {
        if (!(env->data_dir && env->data_dir[0] && inside_dir(path, env->data_dir)) || access(path, R_OK) != 0)
            return set_error(err, "data", key, "no readable %s '%s' in the data directory (run `make data` or `cdcd prep`)",
                             what, given);
        return 0;
    }
    if (access(path, R_OK) != 0)
        return set_error(err, "data", key, "cannot read %s %s: %s (run `make data` or `cdcd prep`)",
                         what, path, strerror(errno));
    return 0;
}

static int validate(cdcd_run_config *c, int self_cond_given, int prior_given, const cdcd_config_env *env,
                    cdcd_config_error *err) {
    /* The output prior is a default of the logits head: a config that picks the embedding
     * head without naming output_prior gets none (naming both is an error below). */
    if (!prior_given && c->model.head != CDCD_HEAD_LOGITS) c->model.output_prior = 0;
    const cdcd_model_config *m = &c->model;
    if (m->d_model % m->n_heads != 0)
        return set_error(err, "model", "n_heads", "d_model (%d) must be divisible by n_heads (%d)", m->d_model, m->n_heads);
    if ((m->d_model / m->n_heads) % 2 != 0)
        return set_error(err, "model", "n_heads", "the head size d_model/n_heads (%d) must be even for RoPE", m->d_model / m->n_heads);
    if (m->cond_dim % 2 != 0)
        return set_error(err, "model", "cond_dim", "must be even (sin/cos Fourier pairs)");
    const char *bad = NULL;
    char msg[256];
    if (cdcd_model_config_validate(m, &bad, msg, sizeof msg) != 0)
        return set_error(err, "model", bad ? bad : "", "%s", msg);
    if (c->data.seq_len > m->max_seq_len)
        return set_error(err, "data", "seq_len", "(%d) exceeds model.max_seq_len (%d)", c->data.seq_len, m->max_seq_len);
    if (c->train.batch_size % c->train.grad_accum != 0)
        return set_error(err, "train", "grad_accum", "must divide train.batch_size (%d)", c->train.batch_size);
    if (c->train.batch_size % (c->distributed.ranks * c->train.grad_accum) != 0)
        return set_error(err, "distributed", "ranks", "ranks x train.grad_accum (%d x %d) must divide train.batch_size (%d)",
                         c->distributed.ranks, c->train.grad_accum, c->train.batch_size);
    const char *hf = c->distributed.hostfile;
    if (hf[0] && (hf[0] == '/' || strcmp(hf, "..") == 0 || strncmp(hf, "../", 3) == 0 || strstr(hf, "/../") ||
                  (strlen(hf) >= 3 && strcmp(hf + strlen(hf) - 3, "/..") == 0)))
        return set_error(err, "distributed", "hostfile", "must be a path inside the state directory (no leading / and no ..)");
    if (hf[0] && c->distributed.ranks < 2)
        return set_error(err, "distributed", "hostfile", "needs distributed.ranks of 2 or more");
    char derr[128];
    if (cdcd_device_check(c->device, derr, sizeof derr) != 0) return set_error(err, NULL, "device", "%s", derr);
    if (c->schedule.tmax <= c->schedule.tmin)
        return set_error(err, "schedule", "tmax", "must be greater than schedule.tmin");
    if (m->output_prior && m->head != CDCD_HEAD_LOGITS)
        return set_error(err, "model", "output_prior", "needs model.head = \"logits\"");
    if (c->cond.p_cond > 0 && !m->cond_channels)
        return set_error(err, "cond", "p_cond", "needs model.cond_channels = true (or set p_cond to 0)");
    if (m->self_cond && !self_cond_given) c->cond.p_self_cond = RUN_DEFAULT_P_SELF_COND;
    if (c->cond.p_self_cond > 0 && !m->self_cond)
        return set_error(err, "cond", "p_self_cond", "needs model.self_cond = true");
    if (!c->data.train[0]) snprintf(c->data.train, sizeof c->data.train, "train.tok");
    if (!c->data.valid[0]) snprintf(c->data.valid, sizeof c->data.valid, "valid.tok");
    if (resolve_data_path(c->data.train, sizeof c->data.train, "train", "token file", env, err) < 0) return -1;
    if (resolve_data_path(c->data.valid, sizeof c->data.valid, "valid", "token file", env, err) < 0) return -1;
    if (c->data.vocab_file[0] &&
        resolve_data_path(c->data.vocab_file, sizeof c->data.vocab_file, "vocab_file", "vocabulary", env, err) < 0)
        return -1;
    if (env && env->max_memory_bytes) {
        uint64_t need = cdcd_run_config_memory_estimate(c);
        if (need > env->max_memory_bytes)
            return set_error(err, "train", "batch_size",
                             "the run needs about %.1f MiB, above the limit of %.1f MiB",
                             (double)need / 1048576.0, (double)env->max_memory_bytes / 1048576.0);
    }
    return 0;
}

static int is_section(const char *k) {
    for (int i = 0; sections[i]; i++)
        if (strcmp(k, sections[i]) == 0) return 1;
    return 0;
}

cdcd_run_config *cdcd_run_config_parse(const char *json, size_t len, const cdcd_config_env *env,
                                       cdcd_config_error *err) {
    cJSON *root = NULL;
    cdcd_run_config *c = NULL;
    const char *end = NULL;
    int self_cond_given = 0, prior_given = 0;
    if (err) err->field[0] = err->message[0] = 0;
    root = cJSON_ParseWithLengthOpts(json, len, &end, 0);
    if (!root) {
        set_error(err, NULL, NULL, "invalid JSON near byte %ld", end ? (long)(end - json) : 0L);
        goto fail;
    }
    if (!cJSON_IsObject(root)) {
        set_error(err, NULL, NULL, "the run config must be a JSON object");
        goto fail;
    }
    size_t nul_at = 0;
    char dup[CDCD_JSON_KEY_PATH_MAX];
    if (cdcd_json_strict_text(json, len, &nul_at) != CDCD_JSON_STRICT_OK) {
        set_error(err, NULL, NULL, "the string at byte %zu contains a NUL character", nul_at);
        goto fail;
    }
    if (cdcd_json_strict_tree(root, dup, sizeof dup) != CDCD_JSON_STRICT_OK) {
        set_error(err, NULL, dup, "the key appears twice");
        goto fail;
    }
    c = calloc(1, sizeof *c);
    if (!c) {
        set_error(err, NULL, NULL, "out of memory");
        goto fail;
    }
    apply_defaults(c);
    const cJSON *preset = cJSON_GetObjectItemCaseSensitive(root, "preset");
    if (preset) {
        if (!cJSON_IsString(preset) || strlen(preset->valuestring) >= sizeof c->preset) {
            set_error(err, NULL, "preset", "must be one of: tiny, small, base, seed100m");
            goto fail;
        }
        snprintf(c->preset, sizeof c->preset, "%s", preset->valuestring);
    }
    cdcd_model_config mc;
    if (cdcd_model_preset(c->preset, &mc) != 0) {
        set_error(err, NULL, "preset", "unknown preset '%s' (tiny, small, base, seed100m)", c->preset);
        goto fail;
    }
    if (strcmp(c->preset, "tiny") == 0) c->train.minutes = RUN_TINY_DEFAULT_MINUTES;
    mc.output_prior = RUN_DEFAULT_OUTPUT_PRIOR;
    mc.self_cond = RUN_DEFAULT_SELF_COND;
    c->model = mc;

    const cJSON *item;
    cJSON_ArrayForEach(item, root) {
        const char *k = item->string;
        if (strcmp(k, "preset") == 0) continue;
        if (is_section(k)) {
            if (!cJSON_IsObject(item)) {
                set_error(err, k, NULL, "must be a JSON object");
                goto fail;
            }
            const cJSON *sub;
            cJSON_ArrayForEach(sub, item) {
                const field_spec *f = find_field(k, sub->string);
                if (!f) {
                    set_error(err, k, sub->string, "unknown key");
                    goto fail;
                }
                if (set_field(c, f, sub, err) < 0) goto fail;
                if (strcmp(k, "cond") == 0 && strcmp(sub->string, "p_self_cond") == 0) self_cond_given = 1;
                if (strcmp(k, "model") == 0 && strcmp(sub->string, "output_prior") == 0) prior_given = 1;
            }
            continue;
        }
        const field_spec *f = find_field(NULL, k);
        if (!f) {
            set_error(err, NULL, k, "unknown key");
            goto fail;
        }
        if (set_field(c, f, item, err) < 0) goto fail;
    }
    if (validate(c, self_cond_given, prior_given, env, err) < 0) goto fail;
    if (!c->name[0]) snprintf(c->name, sizeof c->name, "%s-seed%llu", c->preset, (unsigned long long)c->seed);
    cJSON_Delete(root);
    return c;
fail:
    cJSON_Delete(root);
    free(c);
    return NULL;
}

char *cdcd_run_config_to_json(const cdcd_run_config *c) {
    cJSON *root = cJSON_CreateObject();
    if (!root) return NULL;
    cJSON_AddStringToObject(root, "preset", c->preset);
    for (int s = -1; s < (int)(sizeof sections / sizeof sections[0]) - 1; s++) {
        const char *sec = s < 0 ? NULL : sections[s];
        cJSON *obj = sec ? cJSON_AddObjectToObject(root, sec) : root;
        for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
            const field_spec *f = &fields[i];
            if ((sec == NULL) != (f->section == NULL)) continue;
            if (sec && strcmp(sec, f->section) != 0) continue;
            const char *base = (const char *)c + f->offset;
            switch (f->type) {
            case F_INT: cJSON_AddNumberToObject(obj, f->key, *(const int *)base); break;
            case F_INT64: cJSON_AddNumberToObject(obj, f->key, (double)*(const int64_t *)base); break;
            case F_UINT64: cJSON_AddNumberToObject(obj, f->key, (double)*(const uint64_t *)base); break;
            case F_FLOAT: {
                /* Print floats with the precision they have, so 0.1f comes back as 0.1. */
                char buf[32];
                float v = *(const float *)base;
                for (int prec = 6; prec <= 9; prec++) { /* shortest text that reads back as v */
                    snprintf(buf, sizeof buf, "%.*g", prec, (double)v);
                    if (strtof(buf, NULL) == v) break;
                }
                cJSON_AddRawToObject(obj, f->key, buf);
                break;
            }
            case F_BOOL: cJSON_AddBoolToObject(obj, f->key, *(const int *)base); break;
            case F_STRING:
                /* data.vocab_file at its default ("") is left out, so builds that predate the
                 * key still read the config (of a checkpoint, say). */
                if (base[0] || f->offset != offsetof(cdcd_run_config, data.vocab_file))
                    cJSON_AddStringToObject(obj, f->key, base);
                break;
            case F_ENUM: cJSON_AddStringToObject(obj, f->key, f->enum_names[*(const int *)base]); break;
            }
        }
    }
    char *out = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return out;
}

void cdcd_run_config_free(cdcd_run_config *c) { free(c); }
int64_t cdcd_run_config_max_steps(const cdcd_run_config *c) { return c->train.max_steps; }

uint64_t cdcd_run_config_memory_estimate(const cdcd_run_config *c) {
    cdcd_model_memory mem;
    int micro = c->train.batch_size / (c->train.grad_accum > 0 ? c->train.grad_accum : 1);
    if (cdcd_model_memory_estimate(&c->model, micro, c->data.seq_len, &mem) != 0) return UINT64_MAX;
    uint64_t total = mem.total;
    if (c->optim.ema > 0) total += mem.params; /* the EMA copy */
    /* Trainer buffers: noise and self-conditioning (micro-batch,T,E) floats; ids and masks
     * of the whole batch. */
    uint64_t bt = (uint64_t)c->train.batch_size * (uint64_t)c->data.seq_len;
    uint64_t mt = (uint64_t)micro * (uint64_t)c->data.seq_len;
    total += mt * (uint64_t)c->model.d_emb * sizeof(float) * 2 + bt * (sizeof(int32_t) + 3);
    return total;
}
