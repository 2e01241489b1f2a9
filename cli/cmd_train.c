/* cdcd train --config run.json --out DIR [--resume CKPT] [--quiet] [--report [--fits-from-stdin]]
 *
 * DIR receives: checkpoints (step-NNNNNNNN.ckpt), metrics.csv (one row per step),
 * entropy.csv (one (step, sigma, loss) row per sequence: the samples the schedule is fitted
 * to), fits.csv (every schedule refit), valid.csv, config.json (the normalised config) and
 * train.log. SIGINT/SIGTERM stop after the current step with a final checkpoint.
 *
 * Under mpirun (`mpirun -np N bin/cdcd train ...`) each rank trains its share of every batch
 * (core/dist.h); rank 0 writes DIR's files. SIGUSR1 checkpoints at the next step, SIGUSR2
 * checkpoints and exits; a signal reaching any rank counts for all, since the ranks agree on
 * the flags at every step boundary and act on the same step. With --report, rank 0 also
 * writes its account of the run to stdout as JSON lines (train_report.h): how cdcdd follows
 * a run it launched under mpirun; with --fits-from-stdin the daemon also does the
 * schedule refits, from its store (train_control.h). */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "clock.h"
#include "commands.h"
#include "dist.h"
#include "log.h"
#include "runconfig.h"
#include "schedule.h"
#include "train.h"
#include "train_control.h"
#include "train_report.h"

static volatile sig_atomic_t stop_requested, checkpoint_requested;
static void on_signal(int sig) {
    if (sig == SIGUSR1) checkpoint_requested = 1;
    else stop_requested = 1; /* SIGINT, SIGTERM, SIGUSR2: checkpoint and exit */
}

/* The ranks' agreement on the signal flags at a step boundary: any rank's flag counts. */
static int agree_flags(cdcd_dist *d, int64_t *stop, int64_t *ckpt, char *err, size_t errlen) {
    *stop = stop_requested;
    *ckpt = checkpoint_requested;
    if (d->size == 1) return 0;
    return d->ops->allreduce_max_i64(d, stop, err, errlen) || d->ops->allreduce_max_i64(d, ckpt, err, errlen) ? -1 : 0;
}

/* Steps until the budget is spent (1), a stop is agreed (0) or an error (-1, err set). */
static int train_loop(cdcd_trainer *t, cdcd_dist *d, char *err, size_t errlen) {
    for (;;) {
        int64_t stop, ckpt;
        if (agree_flags(d, &stop, &ckpt, err, errlen) != 0) return -1;
        if (stop) return 0;
        if (ckpt) {
            checkpoint_requested = 0;
            if (cdcd_trainer_checkpoint(t) != 0) {
                snprintf(err, errlen, "%s", cdcd_trainer_error(t));
                return -1;
            }
        }
        int st = cdcd_trainer_step(t);
        if (st < 0) snprintf(err, errlen, "%s", cdcd_trainer_error(t));
        if (st != 0) return st;
    }
}

typedef struct {
    FILE *metrics, *entropy, *fits, *valid;
    int64_t max_steps;
    int64_t start_step;
    double t0;
    double budget_left_s; /* train.minutes still to go at start (0 = no time budget) */
    int quiet, tty;
    double last_print;
    FILE *report;    /* --report: JSON lines (rank 0), else NULL */
    cdcd_trainer *t; /* for the fitted schedule's knots in the report */
    cdcd_control control; /* --fits-from-stdin */
} train_cli;

static void sink_step(void *ctx, const cdcd_step_report *r) {
    train_cli *c = ctx;
    fprintf(c->metrics, "%lld,%.6f,%.6g,%.6f,%.1f,%lld,%.2f,%d\n", (long long)r->step, r->loss, r->lr,
            r->grad_norm, r->tokens_per_s, (long long)r->tokens, r->step_ms, r->nonfinite);
    if (c->report) cdcd_report_step(c->report, r);
    if (c->quiet) return;
    double now = cdcd_now_s();
    if (!c->tty && now - c->last_print < 10.0 && r->step != c->max_steps) return;
    c->last_print = now;
    double elapsed = now - c->t0;
    double per_step = elapsed / (double)(r->step - c->start_step > 0 ? r->step - c->start_step : 1);
    double eta = per_step * (double)(c->max_steps - r->step);
    if (c->budget_left_s > 0 && c->budget_left_s - elapsed < eta) eta = c->budget_left_s - elapsed;
    if (eta < 0) eta = 0;
    fprintf(stderr, "%sstep %lld/%lld  loss %.4f  lr %.2e  gnorm %.3f  %.0f tok/s  ETA %02d:%02d:%02d%s",
            c->tty ? "\r" : "", (long long)r->step, (long long)c->max_steps, r->loss, r->lr, r->grad_norm,
            r->tokens_per_s, (int)(eta / 3600), (int)fmod(eta / 60, 60), (int)fmod(eta, 60),
            c->tty ? "   " : "\n");
}

static void sink_entropy(void *ctx, int64_t step, int n, const float *sigma, const float *loss) {
    train_cli *c = ctx;
    for (int i = 0; i < n; i++) fprintf(c->entropy, "%lld,%.6g,%.6f\n", (long long)step, sigma[i], loss[i]);
    if (c->report) cdcd_report_entropy(c->report, step, n, sigma, loss);
}

static void sink_fit(void *ctx, const cdcd_fit_report *f) {
    train_cli *c = ctx;
    fprintf(c->fits, "%lld,%d,%.6g,%.6g,%.6g,%.6g,%.6g,%d\n", (long long)f->step, f->ok, f->mu, f->s, f->h,
            f->o, f->rmse, f->n);
    fflush(c->fits);
    if (c->report) {
        const struct cdcd_schedule *sc = c->t ? cdcd_trainer_schedule(c->t) : NULL;
        cdcd_report_fit(c->report, f, sc ? sc->last.knots : NULL, CDCD_PWL_KNOTS);
    }
}

static int sink_refit(void *ctx, cdcd_schedule *s, int64_t step, char *err, size_t errlen) {
    return cdcd_control_refit(&((train_cli *)ctx)->control, s, step, err, errlen);
}

static void sink_valid(void *ctx, int64_t step, double loss) {
    train_cli *c = ctx;
    fprintf(c->valid, "%lld,%.6f\n", (long long)step, loss);
    fflush(c->valid);
    if (c->report) cdcd_report_valid(c->report, step, loss);
    if (!c->quiet) fprintf(stderr, "%sstep %lld  valid loss %.4f\n", c->tty ? "\n" : "", (long long)step, loss);
}

static void sink_checkpoint(void *ctx, int64_t step, const char *path, uint64_t bytes, const char *sha) {
    train_cli *c = ctx;
    fflush(c->metrics);
    fflush(c->entropy);
    cdcd_info("checkpoint step %lld: %s (%llu bytes, sha256 %.12s)", (long long)step, path,
              (unsigned long long)bytes, sha);
    if (c->report) cdcd_report_checkpoint(c->report, step, path, bytes, sha);
}

static FILE *open_csv(const char *dir, const char *name, const char *header, int append) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int exists = access(path, F_OK) == 0;
    FILE *f = fopen(path, append ? "a" : "w");
    if (!f) {
        fprintf(stderr, "cdcd train: cannot open %s: %s\n", path, strerror(errno));
        return NULL;
    }
    if (!append || !exists) fprintf(f, "%s\n", header);
    return f;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t cap = 0, n = 0;
    for (;;) {
        if (n + 4096 > cap) {
            cap = cap ? cap * 2 : 8192;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t got = fread(buf + n, 1, cap - n - 1, f);
        n += got;
        if (got == 0) break;
    }
    fclose(f);
    buf[n] = 0;
    *len = n;
    return buf;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: cdcd train --config run.json --out DIR [--resume CKPT] [--quiet]\n"
            "  --config FILE   run config JSON (see README \"Run config\"); data paths relative to\n"
            "                  --data-dir (default: the current directory)\n"
            "  --data-dir DIR  where relative data paths resolve\n"
            "  --out DIR       checkpoints, CSV logs and train.log go here (created)\n"
            "  --resume CKPT   continue from a checkpoint (the config comes from it)\n"
            "  --max-steps N   override train.max_steps (also when resuming)\n"
            "  --time-limit M  train for M minutes (train.minutes: the lr schedule ends there,\n"
            "                  then the final checkpoint)\n"
            "  --device D      auto (the GPU when there is one; under mpirun the host's GPU\n"
            "                  local-rank mod count), cpu, cuda or cuda:N; overrides \"device\"\n"
            "  --quiet         no progress line\n"
            "  --report        rank 0 writes the run's steps, samples, fits, validation and\n"
            "                  checkpoints to stdout as JSON lines (what cdcdd reads)\n"
            "  --fits-from-stdin  with --report: rank 0 asks for each schedule refit on stdout\n"
            "                  and reads the refitted schedule from stdin (cdcdd fits it from\n"
            "                  its store)\n");
}

int cdcd_cmd_train(int argc, char **argv) {
    const char *config_path = NULL, *out_dir = NULL, *resume = NULL, *data_dir = NULL, *device = NULL;
    int quiet = 0, report = 0, fits_from_stdin = 0;
    long long max_steps_override = 0;
    double time_limit_min = 0;
    static const struct option opts[] = {{"config", required_argument, 0, 'c'},
                                         {"out", required_argument, 0, 'o'},
                                         {"resume", required_argument, 0, 'r'},
                                         {"data-dir", required_argument, 0, 'd'},
                                         {"max-steps", required_argument, 0, 'm'},
                                         {"quiet", no_argument, 0, 'q'},
                                         {"time-limit", required_argument, 0, 'T'},
                                         {"report", no_argument, 0, 'R'},
                                         {"fits-from-stdin", no_argument, 0, 'F'},
                                         {"device", required_argument, 0, 'D'},
                                         {"help", no_argument, 0, 'h'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:o:r:d:m:qT:RFD:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': config_path = optarg; break;
        case 'o': out_dir = optarg; break;
        case 'r': resume = optarg; break;
        case 'd': data_dir = optarg; break;
        case 'm': max_steps_override = atoll(optarg); break;
        case 'q': quiet = 1; break;
        case 'T': time_limit_min = atof(optarg); break;
        case 'R': report = 1; break;
        case 'F': fits_from_stdin = 1; break;
        case 'D': device = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if ((!config_path && !resume) || !out_dir) {
        usage(stderr);
        return 2;
    }
    if (fits_from_stdin && !report) {
        fprintf(stderr, "cdcd train: --fits-from-stdin needs --report (the refit requests go there)\n");
        return 2;
    }
    if (mkdir(out_dir, 0755) < 0 && errno != EEXIST) {
        fprintf(stderr, "cdcd train: cannot create %s: %s\n", out_dir, strerror(errno));
        return 1;
    }
    char log_path[4096];
    snprintf(log_path, sizeof log_path, "%s/train.log", out_dir);
    /* from here on a signal is a request (a pause that arrives while the data loads is
     * acted on at the first step boundary), never the default termination */
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    char derr[512] = "";
    cdcd_dist *dist = cdcd_dist_mpi_init(derr, sizeof derr);
    if (!dist) {
        fprintf(stderr, "cdcd train: %s\n", derr);
        return 1;
    }
    int lead = dist->rank == 0; /* writes the files and prints */
    if (!lead) quiet = 1;

    int rc = 1;
    cdcd_run_config *cfg = NULL;
    cdcd_trainer *t = NULL;
    train_cli c = {0};
    char err[512] = "";
    if (!resume) {
        size_t len = 0;
        char *json = read_file(config_path, &len);
        if (!json) {
            fprintf(stderr, "cdcd train: cannot read %s: %s\n", config_path, strerror(errno));
            return 1;
        }
        cdcd_config_env env = {.data_dir = data_dir, .confine_to_data_dir = 0, .max_memory_bytes = 0};
        cdcd_config_error cerr;
        cfg = cdcd_run_config_parse(json, len, &env, &cerr);
        free(json);
        if (!cfg) {
            fprintf(stderr, "cdcd train: %s: %s%s%s\n", config_path, cerr.field, cerr.field[0] ? ": " : "",
                    cerr.message);
            return 2;
        }
        if (max_steps_override > 0) cfg->train.max_steps = max_steps_override;
        if (device) {
            char derr[160];
            if (cdcd_device_check(device, derr, sizeof derr) != 0) {
                fprintf(stderr, "cdcd train: --device: %s\n", derr);
                cdcd_run_config_free(cfg);
                return 2;
            }
            snprintf(cfg->device, sizeof cfg->device, "%s", device);
        }
        if (time_limit_min > 0) cfg->train.minutes = (float)time_limit_min;
    }
    int append = resume != NULL;
    if (lead) {
        c.metrics = open_csv(out_dir, "metrics.csv", "step,loss,lr,grad_norm,tokens_per_s,tokens,step_ms,nonfinite",
                             append);
        c.entropy = open_csv(out_dir, "entropy.csv", "step,sigma,loss", append);
        c.fits = open_csv(out_dir, "fits.csv", "step,ok,mu,s,h,o,rmse,n", append);
        c.valid = open_csv(out_dir, "valid.csv", "step,valid_loss", append);
        if (!c.metrics || !c.entropy || !c.fits || !c.valid) goto done;
    }
    c.quiet = quiet;
    c.tty = isatty(STDERR_FILENO);
    c.report = report && lead ? stdout : NULL;
    c.control = (cdcd_control){.report = stdout, .in_fd = STDIN_FILENO, .timeout_s = CDCD_CONTROL_TIMEOUT_S};
    cdcd_train_sink sink = {.ctx = &c,
                            .on_step = sink_step,
                            .on_entropy = sink_entropy,
                            .on_fit = sink_fit,
                            .on_valid = sink_valid,
                            .on_checkpoint = sink_checkpoint,
                            .recent_samples = NULL,
                            .refit_schedule = fits_from_stdin ? sink_refit : NULL};
    const cdcd_train_sink *sk = lead ? &sink : NULL;
    t = resume ? cdcd_trainer_resume_on(resume, out_dir, sk, dist, device, err, sizeof err)
               : cdcd_trainer_create_dist(cfg, out_dir, sk, dist, err, sizeof err);
    if (!t) {
        fprintf(stderr, "cdcd train: %s\n", err);
        goto done;
    }
    c.t = t;
    if (lead && strcmp(cdcd_model_backend_name(cdcd_trainer_model(t)), "cpu") != 0)
        fprintf(stderr, "cdcd train: the model is on %s (device \"%s\")\n", cdcd_model_backend_name(cdcd_trainer_model(t)),
                cdcd_trainer_config(t)->device);    if (c.report) cdcd_report_started(c.report, cdcd_trainer_step_count(t), dist->size);
    if (lead && dist->size > 1)
        fprintf(stderr, "cdcd train: %d ranks, %d sequences each per step\n", dist->size,
                cdcd_trainer_config(t)->train.batch_size / dist->size);
    if (resume && max_steps_override > 0) cdcd_trainer_set_max_steps(t, max_steps_override);
    /* On resume a time limit is more training time on top of what the run has had. */
    if (resume && time_limit_min > 0)
        cdcd_trainer_set_minutes(t, cdcd_trainer_train_seconds(t) / 60.0 + time_limit_min);
    /* The trainer's config: what the run really is (a corpus vocabulary's size included). */
    char *norm = lead ? cdcd_run_config_to_json(cdcd_trainer_config(t)) : NULL;
    if (norm) {
        char p[4096];
        snprintf(p, sizeof p, "%s/config.json", out_dir);
        FILE *f = fopen(p, "w");
        if (f) {
            fprintf(f, "%s\n", norm);
            fclose(f);
        }
        free(norm);
    }
    c.max_steps = cdcd_run_config_max_steps(cdcd_trainer_config(t));
    c.start_step = cdcd_trainer_step_count(t);
    c.t0 = cdcd_now_s();
    if (cdcd_trainer_config(t)->train.minutes > 0)
        c.budget_left_s = 60.0 * cdcd_trainer_config(t)->train.minutes - cdcd_trainer_train_seconds(t);
    int st = train_loop(t, dist, err, sizeof err);
    if (!quiet && c.tty) fputc('\n', stderr);
    float minutes = cdcd_trainer_config(t)->train.minutes;
    if (lead && st == 1 && minutes > 0 && cdcd_trainer_step_count(t) < cdcd_run_config_max_steps(cdcd_trainer_config(t)))
        fprintf(stderr, "cdcd train: time budget of %g minutes spent at step %lld\n", (double)minutes,
                (long long)cdcd_trainer_step_count(t));
    if (st < 0) {
        fprintf(stderr, "cdcd train: %s\n", err);
        if (dist->size > 1) cdcd_dist_abort(dist, 1); /* the other ranks may wait in a collective */
        cdcd_trainer_checkpoint(t);
        goto done;
    }
    if (cdcd_trainer_checkpoint(t) < 0) {
        fprintf(stderr, "cdcd train: final checkpoint failed: %s\n", cdcd_trainer_error(t));
        goto done;
    }
    if (lead && dist->size > 1) {
        double comm, total;
        cdcd_trainer_comm_time(t, &comm, &total);
        int64_t steps = cdcd_trainer_step_count(t) - c.start_step;
        double busy = cdcd_trainer_comm_busy_time(t);
        if (steps > 0 && total > 0 && busy < 0)
            fprintf(stderr, "cdcd train: %d ranks, %lld steps: %.1f ms per step, of which %.1f ms all-reduce (%.1f%%)\n",
                    dist->size, (long long)steps, 1e3 * total / (double)steps, 1e3 * comm / (double)steps,
                    100.0 * comm / total);
        else if (steps > 0 && total > 0) /* the overlap: the sums ran during backward; the wait is what shows */
            fprintf(stderr, "cdcd train: %d ranks, %lld steps: %.1f ms per step, of which %.1f ms waiting for the "
                    "all-reduce (%.1f%%); the overlapped gradient sums took %.1f ms per step\n",
                    dist->size, (long long)steps, 1e3 * total / (double)steps, 1e3 * comm / (double)steps,
                    100.0 * comm / total, 1e3 * busy / (double)steps);
    }
    if (lead && stop_requested) fprintf(stderr, "cdcd train: interrupted at step %lld; checkpoint written\n",
                                (long long)cdcd_trainer_step_count(t));
    rc = 0;
done:
    cdcd_trainer_free(t);
    cdcd_run_config_free(cfg);
    if (c.metrics) fclose(c.metrics);
    if (c.entropy) fclose(c.entropy);
    if (c.fits) fclose(c.fits);
    if (c.valid) fclose(c.valid);
    cdcd_dist_finalize(dist);
    return rc;
}
