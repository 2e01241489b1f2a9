/* A run's whole configuration: one JSON document, shared by `cdcd train` and the
 * daemon's POST /runs. Parsing fills every default, validates types, ranges, unknown
 * keys and dimension divisibility, and estimates memory so an oversize run is refused
 * before anything is allocated. */
#ifndef CDCD_RUNCONFIG_H
#define CDCD_RUNCONFIG_H

#include <stddef.h>
#include <stdint.h>

#include "device.h"
#include "model.h"

#define CDCD_RUN_NAME_MAX 64
#define CDCD_RUN_PATH_MAX 1024
#define CDCD_RUN_MAX_RANKS 256   /* distributed.ranks */
#define CDCD_RUN_HOSTFILE_MAX 256
#define CDCD_RUN_MAX_RESTARTS 100        /* distributed.max_restarts */
#define CDCD_RUN_HANG_MIN_S_DEFAULT 60   /* distributed.hang_min_s */
#define CDCD_RUN_HANG_MIN_S_MAX 86400

typedef enum { CDCD_DECAY_COSINE = 0, CDCD_DECAY_EXP = 1, CDCD_DECAY_NONE = 2 } cdcd_lr_decay;
typedef enum { CDCD_DATA_WINDOW = 0, CDCD_DATA_TRUNCATE = 1 } cdcd_data_mode;
/* The model's output vocabulary: every tokenizer id, or only the ids that occur in the
 * training file plus the specials (core/vocab_map.h); unseen ids become [UNK]. */
typedef enum { CDCD_VOCAB_FULL = 0, CDCD_VOCAB_CORPUS = 1 } cdcd_vocab_kind;

typedef struct cdcd_run_config {
    char name[CDCD_RUN_NAME_MAX];
    char preset[16];
    char device[CDCD_DEVICE_SPEC_MAX]; /* "auto" (default), "cpu", "cuda", "cuda:N" (device.h) */
    uint64_t seed;
    cdcd_model_config model; /* the "model" section, as core/model.h takes it */
    struct {
        char train[CDCD_RUN_PATH_MAX], valid[CDCD_RUN_PATH_MAX]; /* resolved paths */
        /* The vocab.txt the token files were made with (resolved), or "" for vocab.txt
         * beside data.train when there is one. The trainer embeds it in every checkpoint
         * (section "vocab") so sampling needs nothing but the checkpoint. */
        char vocab_file[CDCD_RUN_PATH_MAX];
        int seq_len;
        cdcd_data_mode mode;
        cdcd_vocab_kind vocab;
    } data;
    struct {
        int batch_size;       /* the global batch: sequences per optimiser step */
        int grad_accum;       /* micro-steps per optimiser step (batch_size / grad_accum rows each) */
        int64_t max_steps;
        float minutes;        /* training-time budget: stop, and end the lr schedule, there (0 = none) */
        int threads;
        int checkpoint_every; /* steps; 0 = only at the end */
        int valid_every;      /* steps; 0 = never */
        int valid_batches;
        int keep_checkpoints; /* newest N kept on disk; 0 = all */
        int sample_every;     /* daemon: stories sampled every N steps (0 = never) */
        int sample_n;         /* stories per periodic batch (the last one prompted) */
        int sample_steps;     /* ODE steps of a periodic batch */
    } train;
    struct {
        float lr, beta1, beta2, eps, weight_decay, clip;
        int warmup_steps;
        cdcd_lr_decay decay;
        float min_lr_ratio; /* final lr = lr * min_lr_ratio */
        float ema;          /* EMA decay of the weights; 0 = off */
    } optim;
    struct {
        int kind; /* CDCD_SCHEDULE_CAUCHY (0) or CDCD_SCHEDULE_PWL (1) */
        float tmin, tmax;
        int window;      /* last N (sigma, loss) samples used by a refit */
        int refit_every; /* steps */
    } schedule;
    struct {
        float p_cond;      /* probability that an example gets a conditioning mask */
        float p_prefix;    /* among those, the share of prefix masks (the rest: random subsets) */
        float p_drop;      /* conditioning dropped (for classifier-free guidance) */
        float p_self_cond; /* share of the batch trained with self-conditioning */
    } cond;
    struct {
        int ranks;   /* MPI ranks the daemon launches the run on (1 = a trainer thread in cdcdd) */
        char hostfile[CDCD_RUN_HOSTFILE_MAX]; /* Open MPI hostfile, relative to cdcdd's state
                                                 directory; "" = every rank on this machine */
        int max_restarts; /* a failed job is relaunched from its last DONE checkpoint this often */
        int hang_min_s;   /* no step for max(10 x the median step, this many s): hung */
        int overlap;      /* 1: the gradient all-reduce overlaps the backward pass, layer by
                             layer, on a communication thread (core/grad_overlap.h) */
    } distributed;
} cdcd_run_config;

typedef struct {
    char field[128];   /* JSON path of the offending key, e.g. "train.batch_size" ("" when global) */
    char message[256]; /* human-readable reason */
} cdcd_config_error;

typedef struct {
    const char *data_dir;      /* relative data paths resolve here; NULL = current directory */
    int confine_to_data_dir;   /* 1 (daemon): absolute paths and ".." escapes are refused */
    uint64_t max_memory_bytes; /* 0 = no limit; otherwise refuse configs whose estimate is above */
    int skip_file_checks;      /* 1: do not require the token files to exist (checkpoint reload) */
} cdcd_config_env;

/* Parses and validates; returns NULL with err filled on any problem. */
cdcd_run_config *cdcd_run_config_parse(const char *json, size_t len, const cdcd_config_env *env,
                                       cdcd_config_error *err);
/* The normalised config (every default filled) as a malloc'd JSON string, or NULL. */
char *cdcd_run_config_to_json(const cdcd_run_config *cfg);
void cdcd_run_config_free(cdcd_run_config *cfg);

/* Accessors the daemon needs without seeing the struct. */
int64_t cdcd_run_config_max_steps(const cdcd_run_config *cfg);
uint64_t cdcd_run_config_memory_estimate(const cdcd_run_config *cfg);

#endif
