/* The trainer thread: see trainer.h. */
#include "trainer.h"

#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt.h"
#include "clock.h"
#include "log.h"
#include "model.h"
#include "notify.h"
#include "run_store.h"
#include "runconfig.h"
#include "schedule.h"
#include "stories.h"
#include "trainer_mpi.h"

struct cdcdd_trainer_ctl {
    cdcdd_trainer_params p;
    char run_dir[CDCDD_RUN_DIR_MAX];
    cdcd_run_config *cfg;       /* owned: the config for a fresh start */
    uv_thread_t thread;
    pthread_mutex_t mu;
    cdcdd_trainer_cmd cmd;      /* under mu */
    cdcdd_taskq tasks;
    cdcdd_trainer_event *exit_ev; /* allocated with the block: the exit always arrives */
    /* trainer thread only */
    cdcd_trainer *t;
    int hb;
    int64_t last_ckpt_step;
    int64_t tokens;
    uint64_t store_errors; /* the store's failed transactions when this trainer began */
    int mpi;                   /* 1: a distributed run, trained by mpirun's ranks (trainer_mpi.h) */
    char resume_path[CDCDD_RUN_DIR_MAX + 64]; /* mpi: the checkpoint the ranks resume from */
    int64_t mpi_step;          /* mpi: the last step reported */
    cdcdd_stories *mpi_stories; /* mpi: periodic stories, sampled from the ranks' checkpoints */
};

/* ------------------------------------------------------------------ events */

void cdcdd_trainer_event_free(cdcdd_trainer_event *ev) {
    if (!ev) return;
    free(ev->path);
    free(ev->json);
    free(ev);
}

static void deliver(cdcdd_loop_msg *m) {
    cdcdd_trainer_event *ev = (cdcdd_trainer_event *)m;
    ev->ctl->p.on_event(ev);
}

static void post(cdcdd_trainer_ctl *ctl, cdcdd_trainer_event *ev) {
    ev->ctl = ctl;
    cdcdd_loopq_post(ctl->p.loopq, &ev->msg, deliver);
}

/* NULL when out of memory: the event (a figure the store already has) is skipped. */
static cdcdd_trainer_event *event_new(cdcdd_trainer_event_kind kind) {
    cdcdd_trainer_event *ev = calloc(1, sizeof *ev);
    if (ev) ev->kind = kind;
    return ev;
}

/* ---------------------------------------------------------------- the sink */

static void sink_on_step(void *ctx, const cdcd_step_report *rep) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    ctl->tokens = rep->tokens;
    cdcdd_run_store_step(ctl->p.store, ctl->p.run_id, rep);
    cdcdd_trainer_event *ev = event_new(CDCDD_TEV_STEP);
    if (!ev) return;
    ev->step = *rep;
    post(ctl, ev);
}

/* The live scatter of the dashboard: {"run","step","sigma":[..],"loss":[..]}. */
static char *entropy_json(int64_t run, int64_t step, int n, const float *sigma, const float *loss, size_t *len) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"run\":%lld,\"step\":%lld,\"sigma\":[", (long long)run, (long long)step);
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_json_num(&b, sigma[i]);
    }
    cdcdd_buf_puts(&b, "],\"loss\":[");
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_json_num(&b, loss[i]);
    }
    cdcdd_buf_puts(&b, "]}");
    return cdcdd_buf_take(&b, len);
}

static void sink_on_entropy(void *ctx, int64_t step, int n, const float *sigma, const float *loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_run_store_entropy(ctl->p.store, ctl->p.run_id, step, n, sigma, loss);
    cdcdd_trainer_event *ev = event_new(CDCDD_TEV_ENTROPY);
    if (!ev) return;
    ev->json = entropy_json(ctl->p.run_id, step, n, sigma, loss, &ev->json_len);
    if (!ev->json) {
        free(ev);
        return;
    }
    post(ctl, ev);
}

/* Knots (CDCD_PWL_KNOTS) as a JSON array, each read back to the same double; NULL for none. */
static char *knots_json(const double *knots) {
    if (!knots) return NULL;
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_putc(&b, '[');
    for (int i = 0; i < CDCD_PWL_KNOTS; i++) {
        if (i) cdcdd_buf_putc(&b, ',');
        cdcdd_buf_json_num17(&b, knots[i]);
    }
    cdcdd_buf_putc(&b, ']');
    return cdcdd_buf_take(&b, NULL);
}

/* Stores a fit and posts it with its knots (owned: freed with the event). */
static void store_fit(cdcdd_trainer_ctl *ctl, const cdcd_fit_report *fit, char *knots) {
    cdcdd_run_store_fit(ctl->p.store, ctl->p.run_id, fit, knots);
    cdcdd_trainer_event *ev = event_new(CDCDD_TEV_FIT);
    if (!ev) {
        free(knots);
        return;
    }
    ev->fit = *fit;
    ev->json = knots; /* the knots travel along for the SSE event */
    post(ctl, ev);
}

static void sink_on_fit(void *ctx, const cdcd_fit_report *fit) {
    cdcdd_trainer_ctl *ctl = ctx;
    const struct cdcd_schedule *s = ctl->t ? cdcd_trainer_schedule(ctl->t) : NULL;
    store_fit(ctl, fit, knots_json(s ? s->last.knots : NULL));
}

/* A distributed run's fit: the knots come with rank 0's report. */
static void mpi_on_fit(void *ctx, const cdcd_fit_report *fit, const double *knots) {
    store_fit(ctx, fit, knots_json(knots));
}

static void sink_on_valid(void *ctx, int64_t step, double valid_loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    cdcdd_run_store_valid(ctl->p.store, ctl->p.run_id, step, valid_loss);
    cdcdd_trainer_event *ev = event_new(CDCDD_TEV_VALID);
    if (!ev) return;
    ev->at_step = step;
    ev->value = valid_loss;
    post(ctl, ev);
}

static void sink_on_checkpoint(void *ctx, int64_t step, const char *path, uint64_t bytes, const char *sha256_hex) {
    cdcdd_trainer_ctl *ctl = ctx;
    cdcdd_notify_heartbeat_beat(ctl->hb);
    ctl->last_ckpt_step = step;
    cdcdd_run_store_checkpoint(ctl->p.store, ctl->p.run_id, step, path, bytes, sha256_hex, ctl->tokens);
    /* committed before returning: core prunes older checkpoint files right after this call,
     * and a crash in between must leave a row that names a file still on disk */
    cdcdd_store_sync(ctl->p.store);
    cdcdd_trainer_event *ev = event_new(CDCDD_TEV_CHECKPOINT);
    if (!ev) return;
    ev->at_step = step;
    ev->bytes = bytes;
    snprintf(ev->sha, sizeof ev->sha, "%s", sha256_hex ? sha256_hex : "");
    ev->path = path ? strdup(path) : NULL;
    post(ctl, ev);
    /* a distributed run's weights are in its ranks: its stories come from their checkpoints */
    if (ctl->mpi_stories && path) cdcdd_stories_at_checkpoint(ctl->mpi_stories, path, step, 0);
}

/* The refit's window comes from the store, as the design says. */
static int sink_recent_samples(void *ctx, int n, float *sigma, float *loss) {
    cdcdd_trainer_ctl *ctl = ctx;
    return cdcdd_run_store_recent_samples(ctl->p.store, ctl->p.run_id, n, sigma, loss);
}

/* ------------------------------------------------------------------ opening */

static int mkdir_p(const char *path) {
    char tmp[CDCDD_RUN_DIR_MAX];
    snprintf(tmp, sizeof tmp, "%s", path);
    for (char *p = tmp + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(tmp, 0750) != 0 && errno != EEXIST) return -1;
        *p = '/';
    }
    if (mkdir(tmp, 0750) != 0 && errno != EEXIST) return -1;
    struct stat st;
    if (stat(tmp, &st) != 0) return -1;
    if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
    }
    return 0;
}

/* Adds the checkpoint files of the run directory that have no row (a crash between the
 * file's rename and its row's commit) to cands, newest first overall. */
static int add_unlisted_files(const char *run_dir, cdcdd_ckpt_row *cands, int n, int cap) {
    DIR *d = opendir(run_dir);
    if (!d) return n;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && n < cap) {
        long long step = 0;
        int len = 0;
        if (sscanf(e->d_name, "step-%lld.ckpt%n", &step, &len) != 1 || e->d_name[len] != '\0' || step <= 0) continue;
        int listed = 0;
        for (int i = 0; i < n && !listed; i++) listed = cands[i].step == step;
        if (listed) continue;
        cands[n].step = step;
        snprintf(cands[n].path, sizeof cands[n].path, "%.800s/%.255s", run_dir, e->d_name);
        n++;
    }
    closedir(d);
    for (int i = 1; i < n; i++) /* insertion sort, newest first */
        for (int j = i; j > 0 && cands[j].step > cands[j - 1].step; j--) {
            cdcdd_ckpt_row t = cands[j];
            cands[j] = cands[j - 1];
            cands[j - 1] = t;
        }
    return n;
}

/* A checkpoint found on disk without its row: the row is written (durably) as the
 * trainer's own checkpoints are, so the run's record points at it again. */
static void record_found_checkpoint(cdcdd_trainer_ctl *ctl, const char *path, int64_t step) {
    FILE *f = fopen(path, "rb");
    if (!f) return;
    char sha[65] = "";
    uint64_t bytes = 0;
    if (fseek(f, 0, SEEK_END) == 0) {
        long n = ftell(f);
        void *buf = n > 0 ? malloc((size_t)n) : NULL;
        if (buf && fseek(f, 0, SEEK_SET) == 0 && fread(buf, 1, (size_t)n, f) == (size_t)n) {
            cdcd_sha256_hex(buf, (size_t)n, sha);
            bytes = (uint64_t)n;
        }
        free(buf);
    }
    fclose(f);
    if (bytes) sink_on_checkpoint(ctl, step, path, bytes, sha);
}

/* 1 when the checkpoint file opens, its checksum holds and, when several ranks wrote it, its
 * DONE marker is there (what a distributed run checks before its ranks resume from it; they
 * load it themselves), else 0 with e set. */
static int checkpoint_readable(const char *path, char *e, size_t elen) {
    return cdcd_checkpoint_complete(path, e, elen) == 0;
}

/* Resumes from the newest checkpoint that loads, then drops the rows logged after it (never
 * before: a resume that fails deletes nothing). 1 resumed, 0 no checkpoint ever existed,
 * -1 with err: the store cannot say, or checkpoints exist and none loads (the run keeps its
 * whole history and can be resumed once a file is back). */
static int trainer_resume(cdcdd_trainer_ctl *ctl, const cdcd_train_sink *sink, int64_t *from_step, char *err,
                          size_t errlen) {
    cdcdd_store *store = ctl->p.store;
    int64_t run = ctl->p.run_id;
    cdcdd_ckpt_row cands[CDCDD_RESUME_CANDIDATES];
    int listed = cdcdd_run_store_checkpoints(store, run, cands, CDCDD_RESUME_CANDIDATES);
    if (listed < 0) {
        snprintf(err, errlen, "cannot read the run's checkpoints from the database");
        return -1;
    }
    int n = add_unlisted_files(ctl->run_dir, cands, listed, CDCDD_RESUME_CANDIDATES);
    char why[512] = "";
    for (int i = 0; i < n; i++) {
        char e[512] = "";
        int usable = 0;
        if (access(cands[i].path, R_OK) != 0) snprintf(e, sizeof e, "%s", strerror(errno));
        else if (ctl->mpi) usable = checkpoint_readable(cands[i].path, e, sizeof e);
        else usable = (ctl->t = cdcd_trainer_resume(cands[i].path, ctl->run_dir, sink, e, sizeof e)) != NULL;
        if (usable) {
            *from_step = ctl->t ? cdcd_trainer_step_count(ctl->t) : cands[i].step;
            if (ctl->mpi) snprintf(ctl->resume_path, sizeof ctl->resume_path, "%s", cands[i].path);
            ctl->last_ckpt_step = *from_step;
            cdcdd_run_store_truncate_after(store, run, cands[i].step);
            cdcdd_store_sync(store);
            int found = 1;
            for (int k = 0; k < listed; k++) found &= cands[k].step != cands[i].step;
            if (found) record_found_checkpoint(ctl, cands[i].path, cands[i].step);
            cdcd_info("run %lld: resumed from %s (step %lld)%s", (long long)run, cands[i].path, (long long)*from_step,
                      found ? ", a checkpoint found on disk without its row" : "");
            return 1;
        }
        cdcd_warn("run %lld: cannot resume from %s: %s", (long long)run, cands[i].path, e);
        if (!why[0]) snprintf(why, sizeof why, "step %lld: %.300s", (long long)cands[i].step, e);
    }
    if (n == 0) return 0;
    snprintf(err, errlen,
             "none of its %d checkpoints can be loaded (newest, %s); its history is kept: put the file back and "
             "resume the run",
             n, why);
    return -1;
}

/* Creates or resumes the trainer. On success ctl->t is set and *from_step is the step it
 * starts after. On failure err holds why. Runs on the trainer thread (blocking is fine). */
static int trainer_open(cdcdd_trainer_ctl *ctl, const cdcd_train_sink *sink, int64_t *from_step, char *err,
                        size_t errlen) {
    if (mkdir_p(ctl->run_dir) != 0) {
        snprintf(err, errlen, "cannot create the run directory %.400s: %s", ctl->run_dir, strerror(errno));
        return -1;
    }
    int resumed = trainer_resume(ctl, sink, from_step, err, errlen);
    if (resumed < 0) return -1;
    if (resumed) return 0;
    /* no usable checkpoint: start from scratch, dropping whatever was logged */
    cdcdd_run_store_truncate_after(ctl->p.store, ctl->p.run_id, 0);
    cdcdd_store_sync(ctl->p.store);
    *from_step = 0;
    ctl->last_ckpt_step = -1;
    if (ctl->mpi) return 0; /* the ranks create the model */
    ctl->t = cdcd_trainer_create(ctl->cfg, ctl->run_dir, sink, err, errlen);
    if (!ctl->t) return -1;
    *from_step = 0;
    ctl->last_ckpt_step = -1;
    return 0;
}

/* ------------------------------------------------------------------ the loop */

static cdcdd_trainer_cmd read_cmd(cdcdd_trainer_ctl *ctl) {
    pthread_mutex_lock(&ctl->mu);
    cdcdd_trainer_cmd c = ctl->cmd;
    pthread_mutex_unlock(&ctl->mu);
    return c;
}

/* The periodic stories stop when the trainer is asked to wind down. */
static int winding_down(void *ctx) { return read_cmd(ctx) != CDCDD_TRAINER_CMD_NONE; }

/* Checkpoints unless the last checkpoint is of this step. 0 or -1 with err. */
static int checkpoint_now(cdcdd_trainer_ctl *ctl, const char *what, char *err, size_t errlen) {
    int64_t step = cdcd_trainer_step_count(ctl->t);
    if (step == ctl->last_ckpt_step || step <= 0 || cdcd_trainer_checkpoint(ctl->t) == 0) return 0;
    snprintf(err, errlen, "%s failed: %s", what, cdcd_trainer_error(ctl->t));
    return -1;
}

/* 1 (err set) when a store transaction failed since the trainer began (a full disk, an I/O
 * error): this run's rows may be lost, so it stops rather than train on with holes in its
 * record. Its last checkpoint stays; it resumes from there once the store writes again. */
static int rows_lost(cdcdd_trainer_ctl *ctl, char *err, size_t errlen) {
    cdcdd_store_stats st;
    cdcdd_store_get_stats(ctl->p.store, &st);
    if (st.commit_errors == ctl->store_errors) return 0;
    snprintf(err, errlen, "the database could not store this run's rows (%.300s); resume the run once it can", st.last_error);
    cdcd_error("run %lld: %s", (long long)ctl->p.run_id, err);
    return 1;
}

/* How a trainer told `cmd` ends. */
static cdcdd_trainer_exit exit_for(cdcdd_trainer_cmd cmd) {
    return cmd == CDCDD_TRAINER_PAUSE  ? CDCDD_TRAINER_PAUSED
           : cmd == CDCDD_TRAINER_STOP ? CDCDD_TRAINER_STOPPED
                                       : CDCDD_TRAINER_SHUT_DOWN;
}

/* Steps until the run ends or is told to wind down; tasks run between steps. */
static cdcdd_trainer_exit train_loop(cdcdd_trainer_ctl *ctl, cdcdd_stories *stories, char *err, size_t errlen) {
    for (;;) {
        cdcdd_task *task;
        while ((task = cdcdd_taskq_pop(&ctl->tasks)) != NULL) {
            task->run(task, ctl->t);
            cdcdd_notify_heartbeat_beat(ctl->hb);
        }
        cdcdd_trainer_cmd cmd = read_cmd(ctl);
        if (cmd != CDCDD_TRAINER_CMD_NONE) {
            if (checkpoint_now(ctl, "checkpoint", err, errlen) != 0) return CDCDD_TRAINER_FAILED;
            return exit_for(cmd);
        }
        int rc = cdcd_trainer_step(ctl->t);
        cdcdd_notify_heartbeat_beat(ctl->hb);
        if (rows_lost(ctl, err, errlen)) return CDCDD_TRAINER_FAILED;
        if (rc >= 0) cdcdd_stories_after_step(stories, ctl->t, 0);
        if (rc == 1) {
            if (checkpoint_now(ctl, "final checkpoint", err, errlen) != 0) return CDCDD_TRAINER_FAILED;
            return CDCDD_TRAINER_FINISHED;
        }
        if (rc < 0) {
            const char *e = cdcd_trainer_error(ctl->t);
            snprintf(err, errlen, "%s", e && *e ? e : "training step failed");
            cdcd_error("run %lld: %s", (long long)ctl->p.run_id, err);
            return CDCDD_TRAINER_FAILED;
        }
    }
}

/* Rank 0's refit request: the window comes from the store, as a local run's does. */
static int mpi_refit(void *ctx, cdcd_schedule *sched, int64_t step) {
    cdcdd_trainer_ctl *ctl = ctx;
    int window = ctl->cfg->schedule.window;
    float *sigma = malloc(sizeof(float) * (size_t)(window > 0 ? window : 1) * 2);
    int n = sigma ? cdcdd_run_store_recent_samples(ctl->p.store, ctl->p.run_id, window, sigma, sigma + window) : -1;
    if (n >= 0) cdcd_schedule_refit(sched, sigma, sigma + window, n, step);
    free(sigma);
    return n >= 0;
}

static int mpi_command(void *ctx) { return read_cmd(ctx) != CDCDD_TRAINER_CMD_NONE; }
static void mpi_beat(void *ctx) { cdcdd_notify_heartbeat_beat(((cdcdd_trainer_ctl *)ctx)->hb); }

/* A distributed run: mpirun's ranks train; their reports go through the same sink. A job
 * that fails is relaunched, up to distributed.max_restarts times, from the newest
 * checkpoint with its DONE marker (the rows logged after it are dropped, as on any resume;
 * the old job's group is gone before the new one starts). */
static cdcdd_trainer_exit mpi_loop(cdcdd_trainer_ctl *ctl, const cdcd_train_sink *sink, int64_t from, char *err,
                                   size_t errlen) {
    for (int restarts = 0;; restarts++) {
        cdcdd_mpi_job j = {.run_dir = ctl->run_dir, .state_dir = ctl->p.state_dir, .cfg = ctl->cfg,
                           .resume = ctl->resume_path[0] ? ctl->resume_path : NULL, .sink = sink,
                           .on_fit = mpi_on_fit, .refit = mpi_refit, .command = mpi_command, .beat = mpi_beat,
                           .ctx = ctl};
        int64_t last = 0;
        cdcdd_mpi_result r = cdcdd_mpi_job_run(&j, &last, err, errlen);
        ctl->mpi_step = last > from ? last : from;
        if (rows_lost(ctl, err, errlen)) return CDCDD_TRAINER_FAILED;
        if (r == CDCDD_MPI_FINISHED) return CDCDD_TRAINER_FINISHED;
        if (r == CDCDD_MPI_WOUND_DOWN) return exit_for(read_cmd(ctl));
        int max = ctl->cfg->distributed.max_restarts;
        if (restarts >= max || read_cmd(ctl) != CDCDD_TRAINER_CMD_NONE) {
            if (restarts > 0) {
                size_t n = strlen(err);
                snprintf(err + n, errlen - n, " (after %d restart%s)", restarts, restarts == 1 ? "" : "s");
            }
            cdcd_error("run %lld: %s", (long long)ctl->p.run_id, err);
            return CDCDD_TRAINER_FAILED;
        }
        cdcd_warn("run %lld: %s; relaunching the job (restart %d of %d)", (long long)ctl->p.run_id, err, restarts + 1,
                  max);
        char why[CDCDD_RUN_ERROR_MAX];
        ctl->resume_path[0] = '\0';
        if (trainer_open(ctl, sink, &from, why, sizeof why) != 0) {
            size_t n = strlen(err);
            snprintf(err + n, errlen - n, "; the relaunch failed: %.300s", why);
            cdcd_error("run %lld: %s", (long long)ctl->p.run_id, err);
            return CDCDD_TRAINER_FAILED;
        }
        err[0] = '\0';
    }
}

static void trainer_main(void *arg) {
    cdcdd_trainer_ctl *ctl = arg;
    char name[CDCDD_HEARTBEAT_NAME_MAX];
    snprintf(name, sizeof name, "run %lld", (long long)ctl->p.run_id);
    ctl->hb = cdcdd_notify_heartbeat_register(name);
    cdcd_train_sink sink = {.ctx = ctl,
                            .on_step = sink_on_step,
                            .on_entropy = sink_on_entropy,
                            .on_fit = sink_on_fit,
                            .on_valid = sink_on_valid,
                            .on_checkpoint = sink_on_checkpoint,
                            .recent_samples = sink_recent_samples};
    cdcdd_stories *stories = NULL;
    char err[CDCDD_RUN_ERROR_MAX] = "";
    cdcdd_trainer_exit reason = CDCDD_TRAINER_FAILED;
    int64_t from = 0;
    /* opening reads the token files and maybe a checkpoint: not a stall for the watchdog */
    cdcdd_store_stats st;
    cdcdd_store_get_stats(ctl->p.store, &st);
    ctl->store_errors = st.commit_errors;
    cdcdd_notify_heartbeat_idle(ctl->hb, 1);
    int open_rc = trainer_open(ctl, &sink, &from, err, sizeof err);
    cdcdd_notify_heartbeat_idle(ctl->hb, 0);
    if (open_rc != 0) {
        cdcd_error("run %lld: %s", (long long)ctl->p.run_id, err);
    } else {
        cdcdd_trainer_event *ev = event_new(CDCDD_TEV_STARTED);
        if (ev) {
            ev->at_step = from;
            post(ctl, ev);
        }
    }
    if (open_rc == 0 && ctl->mpi) {
        int share = ctl->cfg->train.threads / ctl->cfg->distributed.ranks;
        cdcdd_stories_params sp = {.store = ctl->p.store, .vocab = ctl->p.vocab, .loopq = ctl->p.loopq,
                                   .hub = ctl->p.hub, .run_id = ctl->p.run_id, .cfg = ctl->cfg, .from_step = from,
                                   .hb = ctl->hb, .cancelled = winding_down, .cancel_ctx = ctl,
                                   .threads = share > 0 ? share : 1};
        ctl->mpi_stories = cdcdd_stories_new(&sp);
        /* a restart at a sampling step: the batch the interruption lost (none when stored) */
        if (ctl->resume_path[0]) cdcdd_stories_at_checkpoint(ctl->mpi_stories, ctl->resume_path, from, 1);
        reason = mpi_loop(ctl, &sink, from, err, sizeof err);
        cdcdd_stories_free(ctl->mpi_stories);
        ctl->mpi_stories = NULL;
    } else if (open_rc == 0) {
        cdcd_info("run %lld: the model is on %s (device \"%s\")", (long long)ctl->p.run_id,
                  cdcd_model_backend_name(cdcd_trainer_model(ctl->t)), ctl->cfg->device);
        cdcdd_stories_params sp = {.store = ctl->p.store, .vocab = ctl->p.vocab, .loopq = ctl->p.loopq,
                                   .hub = ctl->p.hub, .run_id = ctl->p.run_id, .cfg = ctl->cfg, .from_step = from,
                                   .hb = ctl->hb, .cancelled = winding_down, .cancel_ctx = ctl};
        stories = cdcdd_stories_new(&sp);
        /* a restart at a sampling step: the batch the interruption lost (none when stored) */
        cdcdd_stories_after_step(stories, ctl->t, 1);
        reason = train_loop(ctl, stories, err, sizeof err);
    }
    cdcdd_trainer_event *exit_ev = ctl->exit_ev;
    exit_ev->leftover = cdcdd_taskq_close(&ctl->tasks); /* no more tasks; the loop cancels these */
    exit_ev->at_step = ctl->t ? cdcd_trainer_step_count(ctl->t) : ctl->mpi ? ctl->mpi_step : from;
    cdcdd_stories_free(stories);
    if (ctl->t) {
        cdcd_trainer_free(ctl->t);
        ctl->t = NULL;
    }
    cdcdd_notify_heartbeat_unregister(ctl->hb);
    ctl->hb = -1;
    /* everything this run logged is committed before anyone sees its new state */
    cdcdd_store_sync(ctl->p.store);
    exit_ev->reason = reason;
    snprintf(exit_ev->error, sizeof exit_ev->error, "%s", reason == CDCDD_TRAINER_FAILED ? err : "");
    post(ctl, exit_ev);
}

/* ------------------------------------------------------------------ control */

static void ctl_free(cdcdd_trainer_ctl *ctl) {
    cdcd_run_config_free(ctl->cfg);
    cdcdd_taskq_destroy(&ctl->tasks);
    pthread_mutex_destroy(&ctl->mu);
    free(ctl->exit_ev);
    free(ctl);
}

int cdcdd_trainer_start(const cdcdd_trainer_params *p, cdcdd_trainer_ctl **out, char *err, size_t errlen) {
    *out = NULL;
    cdcdd_trainer_ctl *ctl = calloc(1, sizeof *ctl);
    cdcdd_trainer_event *exit_ev = event_new(CDCDD_TEV_EXIT);
    if (!ctl || !exit_ev) {
        free(ctl);
        free(exit_ev);
        snprintf(err, errlen, "out of memory starting the trainer");
        return -1;
    }
    ctl->p = *p;
    ctl->p.config_json = NULL; /* parsed below, not kept */
    ctl->hb = -1;
    ctl->exit_ev = exit_ev;
    snprintf(ctl->run_dir, sizeof ctl->run_dir, "%.1100s/%lld", p->runs_dir, (long long)p->run_id);
    ctl->p.runs_dir = NULL;
    pthread_mutex_init(&ctl->mu, NULL);
    cdcdd_taskq_init(&ctl->tasks);
    cdcd_config_env env = {0};
    env.skip_file_checks = 1; /* stored paths are resolved; the trainer reports a missing file */
    cdcd_config_error cerr;
    ctl->cfg = cdcd_run_config_parse(p->config_json, strlen(p->config_json), &env, &cerr);
    if (!ctl->cfg) {
        snprintf(err, errlen, "stored config no longer parses: %s%s%s", cerr.field, cerr.field[0] ? ": " : "",
                 cerr.message);
        ctl_free(ctl);
        return -1;
    }
    if (p->threads > 0) ctl->cfg->train.threads = p->threads;
    if (p->device) snprintf(ctl->cfg->device, sizeof ctl->cfg->device, "%s", p->device);
    ctl->p.device = NULL; /* applied, not kept */
    ctl->mpi = ctl->cfg->distributed.ranks > 1;
    uv_thread_options_t topt = {.flags = UV_THREAD_HAS_STACK_SIZE, .stack_size = CDCDD_TRAINER_STACK};
    int rc = uv_thread_create_ex(&ctl->thread, &topt, trainer_main, ctl);
    if (rc != 0) {
        snprintf(err, errlen, "cannot start a trainer thread: %s", uv_strerror(rc));
        ctl_free(ctl);
        return -1;
    }
    *out = ctl;
    return 0;
}

void *cdcdd_trainer_owner(const cdcdd_trainer_ctl *ctl) { return ctl->p.owner; }

void cdcdd_trainer_command(cdcdd_trainer_ctl *ctl, cdcdd_trainer_cmd cmd) {
    pthread_mutex_lock(&ctl->mu);
    if (ctl->cmd == CDCDD_TRAINER_CMD_NONE || cmd == CDCDD_TRAINER_SHUTDOWN) ctl->cmd = cmd;
    pthread_mutex_unlock(&ctl->mu);
}

int cdcdd_trainer_submit(cdcdd_trainer_ctl *ctl, cdcdd_task *task) {
    /* a trainer told to wind down runs no new work: it would hold up the pause; a
     * distributed run's model is in its ranks (jobs sample its checkpoint instead) */
    if (ctl->mpi || read_cmd(ctl) != CDCDD_TRAINER_CMD_NONE) return -1;
    return cdcdd_taskq_push(&ctl->tasks, task);
}

void cdcdd_trainer_join(cdcdd_trainer_ctl *ctl) {
    uv_thread_join(&ctl->thread);
    ctl->exit_ev = NULL; /* delivered: the owner frees it */
    ctl_free(ctl);
}

int64_t cdcdd_trainer_tokens(const cdcdd_trainer_ctl *ctl) { return ctl->tokens; }
