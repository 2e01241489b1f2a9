/* A distributed run under mpirun, followed on the trainer thread: see trainer_mpi.h. */
#include "trainer_mpi.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "clock.h"
#include "log.h"
#include "schedule_json.h"

#define PIDFILE "mpirun.pid"
#define LOGFILE "mpirun.log"
#define LAUNCH_CONFIG "launch.json"
#define STEP_WINDOW 32 /* step intervals kept for the median */

/* ------------------------------------------------------------------ paths */

/* The named program on PATH (or name itself when it has a slash). 0 or -1. */
static int find_on_path(const char *name, char *out, size_t cap) {
    if (strchr(name, '/')) {
        snprintf(out, cap, "%s", name);
        return access(out, X_OK);
    }
    const char *path = getenv("PATH");
    if (!path) path = "/usr/bin:/bin";
    for (const char *p = path; *p;) {
        const char *e = strchr(p, ':');
        size_t n = e ? (size_t)(e - p) : strlen(p);
        if (n > 0 && (size_t)snprintf(out, cap, "%.*s/%s", (int)n, p, name) < cap && access(out, X_OK) == 0) return 0;
        p += n + (e ? 1 : 0);
    }
    return -1;
}

/* bin/cdcd beside the running cdcdd: the same build, so the same checkpoint format. */
static int cdcd_binary(char *out, size_t cap) {
    char self[1024];
    ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return -1;
    self[n] = '\0';
    char *slash = strrchr(self, '/');
    if (!slash) return -1;
    *slash = '\0';
    if ((size_t)snprintf(out, cap, "%s/cdcd", self) >= cap) return -1;
    return access(out, X_OK);
}

/* The hostfile, confined to the state directory by realpath. 0 or -1 with err. */
static int resolve_hostfile(const char *state_dir, const char *name, char *out, size_t cap, char *err, size_t errlen) {
    char joined[2200], root[PATH_MAX], real[PATH_MAX];
    snprintf(joined, sizeof joined, "%.1100s/%.1000s", state_dir, name);
    size_t rl = realpath(state_dir, root) ? strlen(root) : 0;
    if (!rl || !realpath(joined, real) || strncmp(real, root, rl) != 0 || real[rl] != '/' ||
        access(real, R_OK) != 0) {
        snprintf(err, errlen, "hostfile %.300s: not a readable file inside the state directory", name);
        return -1;
    }
    snprintf(out, cap, "%s", real);
    return 0;
}

int cdcdd_mpi_check(const cdcd_run_config *cfg, const char *state_dir, const char **field, char *err,
                    size_t errlen) {
    char path[PATH_MAX];
    *field = "distributed.ranks";
    if (cfg->distributed.ranks < 2) return 0;
    if (find_on_path("mpirun", path, sizeof path) != 0) {
        snprintf(err, errlen, "mpirun is not installed (scripts/deps.sh installs openmpi-bin)");
        return -1;
    }
    if (cdcd_binary(path, sizeof path) != 0) {
        snprintf(err, errlen, "the cdcd binary is not beside cdcdd (install both: make install)");
        return -1;
    }
    if (cfg->distributed.hostfile[0]) {
        *field = "distributed.hostfile";
        return resolve_hostfile(state_dir, cfg->distributed.hostfile, path, sizeof path, err, errlen);
    }
    return 0;
}

/* ------------------------------------------------------------------ leftovers */

/* 1 when /proc/PID belongs to process group pgid and runs an MPI launcher or cdcd. */
static int is_job_process(long pid, long pgid) {
    char p[64], buf[512];
    snprintf(p, sizeof p, "/proc/%ld/stat", pid);
    FILE *f = fopen(p, "r");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *open = strchr(buf, '('), *close = strrchr(buf, ')');
    if (!open || !close) return 0;
    char comm[64];
    snprintf(comm, sizeof comm, "%.*s", (int)(close - open - 1), open + 1);
    long ppid = 0, grp = 0;
    char state;
    if (sscanf(close + 1, " %c %ld %ld", &state, &ppid, &grp) != 3 || grp != pgid) return 0;
    return strcmp(comm, "mpirun") == 0 || strcmp(comm, "orterun") == 0 || strcmp(comm, "orted") == 0 ||
           strcmp(comm, "prted") == 0 || strcmp(comm, "cdcd") == 0;
}

void cdcdd_mpi_kill_leftovers(const char *run_dir) {
    char path[1400];
    snprintf(path, sizeof path, "%.1200s/%s", run_dir, PIDFILE);
    FILE *f = fopen(path, "r");
    if (!f) return;
    long pgid = 0;
    int ok = fscanf(f, "%ld", &pgid) == 1 && pgid > 1;
    fclose(f);
    DIR *d = ok ? opendir("/proc") : NULL;
    int killed = 0;
    for (struct dirent *e; d && (e = readdir(d)) != NULL;) {
        char *end;
        long pid = strtol(e->d_name, &end, 10);
        if (*end || pid <= 1 || !is_job_process(pid, pgid)) continue;
        killed += kill((pid_t)pid, SIGKILL) == 0;
    }
    if (d) closedir(d);
    if (killed) cdcd_warn("%s: killed %d processes left from an earlier daemon's mpirun (group %ld)", run_dir, killed, pgid);
    unlink(path);
}

/* ------------------------------------------------------------------ launch */

/* RUN_DIR/launch.json: the run's config with each rank's share of the threads. */
static int write_launch_config(const cdcdd_mpi_job *j, char *path, size_t cap, char *err, size_t errlen) {
    cdcd_run_config c = *j->cfg;
    c.train.threads = c.train.threads / c.distributed.ranks;
    if (c.train.threads < 1) c.train.threads = 1;
    char *json = cdcd_run_config_to_json(&c);
    snprintf(path, cap, "%.1200s/%s", j->run_dir, LAUNCH_CONFIG);
    FILE *f = json ? fopen(path, "w") : NULL;
    int ok = f && fputs(json, f) >= 0;
    if (f && fclose(f) != 0) ok = 0;
    free(json);
    if (!ok) snprintf(err, errlen, "cannot write %s: %s", LAUNCH_CONFIG, strerror(errno));
    return ok ? 0 : -1;
}

typedef struct {
    pid_t pid;   /* mpirun; also its process group */
    int out_fd;  /* rank 0's report lines */
    int in_fd;   /* mpirun's stdin, forwarded to rank 0: the control channel (a socket, so a
                    write after mpirun died is EPIPE, never a SIGPIPE to the daemon) */
} child;

/* Between fork and exec: async-signal-safe calls only. The child gets a clean signal state
 * (the trainer thread blocks signals the loop handles; a blocked SIGUSR2 would never reach
 * mpirun) and none of the daemon's descriptors (its listening socket, the database). */
static void child_exec(char *const argv[], int in_fd, int out_fd, int log_fd, pid_t daemon_pid) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL); /* the trainer thread that started it is gone: so is it */
    if (getppid() != daemon_pid) _exit(126); /* it was gone before the line above */
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    const int reset[] = {SIGPIPE, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2, SIGCHLD};
    for (size_t i = 0; i < sizeof reset / sizeof reset[0]; i++) signal(reset[i], SIG_DFL);
    dup2(in_fd, STDIN_FILENO);
    dup2(out_fd, STDOUT_FILENO);
    dup2(log_fd, STDERR_FILENO);
    if (syscall(SYS_close_range, 3u, ~0u, 0u) != 0)
        for (int fd = 3; fd < 65536; fd++) close(fd);
    execv(argv[0], argv);
    _exit(127);
}

static int spawn(const cdcdd_mpi_job *j, child *c, char *err, size_t errlen) {
    char mpirun[PATH_MAX], cdcd[PATH_MAX], hostfile[PATH_MAX], config[1400], np[16], logp[1400];
    if (find_on_path("mpirun", mpirun, sizeof mpirun) != 0 || cdcd_binary(cdcd, sizeof cdcd) != 0) {
        snprintf(err, errlen, "mpirun or the cdcd binary is missing (mpirun on PATH, cdcd beside cdcdd)");
        return -1;
    }
    if (j->cfg->distributed.hostfile[0] &&
        resolve_hostfile(j->state_dir, j->cfg->distributed.hostfile, hostfile, sizeof hostfile, err, errlen) != 0)
        return -1;
    if (!j->resume && write_launch_config(j, config, sizeof config, err, errlen) != 0) return -1;
    snprintf(np, sizeof np, "%d", j->cfg->distributed.ranks);
    char *argv[24];
    int n = 0;
    argv[n++] = mpirun, argv[n++] = "-np", argv[n++] = np, argv[n++] = "--bind-to", argv[n++] = "none";
    if (geteuid() == 0) argv[n++] = "--allow-run-as-root";
    if (j->cfg->distributed.hostfile[0]) argv[n++] = "--hostfile", argv[n++] = hostfile;
    argv[n++] = cdcd, argv[n++] = "train", argv[n++] = "--out", argv[n++] = (char *)j->run_dir;
    argv[n++] = "--quiet", argv[n++] = "--report", argv[n++] = "--fits-from-stdin";
    if (j->resume) argv[n++] = "--resume", argv[n++] = (char *)j->resume;
    else argv[n++] = "--config", argv[n++] = config;
    argv[n] = NULL;
    snprintf(logp, sizeof logp, "%.1200s/%s", j->run_dir, LOGFILE);
    int pfd[2] = {-1, -1}, sfd[2] = {-1, -1};
    int log_fd = open(logp, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
    if (log_fd < 0 || pipe2(pfd, O_CLOEXEC) != 0 || socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sfd) != 0) {
        snprintf(err, errlen, "cannot set up mpirun's input and output: %s", strerror(errno));
        int fds[] = {log_fd, pfd[0], pfd[1]};
        for (int i = 0; i < 3; i++)
            if (fds[i] >= 0) close(fds[i]);
        return -1;
    }
    pid_t self = getpid(), pid = fork();
    if (pid == 0) child_exec(argv, sfd[1], pfd[1], log_fd, self); /* dup2 clears CLOEXEC on 0-2 */
    int fork_errno = errno;
    close(pfd[1]);
    close(sfd[1]);
    close(log_fd);
    if (pid < 0) {
        close(pfd[0]);
        close(sfd[0]);
        snprintf(err, errlen, "cannot start mpirun: %s", strerror(fork_errno));
        return -1;
    }
    setpgid(pid, pid); /* also here: no race with a signal to the group */
    c->pid = pid;
    c->out_fd = pfd[0];
    c->in_fd = sfd[0];
    char pidp[1400];
    snprintf(pidp, sizeof pidp, "%.1200s/%s", j->run_dir, PIDFILE);
    FILE *f = fopen(pidp, "w");
    if (f) {
        fprintf(f, "%ld\n", (long)pid);
        fclose(f);
    }
    cdcd_info("%s: mpirun -np %s started (pid %ld)%s", j->run_dir, np, (long)pid, j->resume ? ", resuming" : "");
    return 0;
}

/* ------------------------------------------------------------------ reports */

static double num(const cJSON *o, const char *k) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, k);
    return cJSON_IsNumber(v) ? v->valuedouble : NAN;
}

static int64_t i64(const cJSON *o, const char *k) {
    double v = num(o, k);
    return isfinite(v) ? (int64_t)v : 0;
}

/* The two float arrays of an entropy line, as the trainer reports them. -1 when malformed. */
static int entropy_line(const cdcdd_mpi_job *j, const cJSON *o) {
    const cJSON *s = cJSON_GetObjectItemCaseSensitive(o, "sigma"), *l = cJSON_GetObjectItemCaseSensitive(o, "loss");
    int n = cJSON_GetArraySize(s);
    if (!cJSON_IsArray(s) || !cJSON_IsArray(l) || n != cJSON_GetArraySize(l) || n <= 0) return -1;
    float *sig = malloc(sizeof(float) * (size_t)n * 2);
    if (!sig) return -1;
    float *loss = sig + n;
    int i = 0;
    for (const cJSON *a = s->child, *b = l->child; a && b; a = a->next, b = b->next, i++) {
        sig[i] = cJSON_IsNumber(a) ? (float)a->valuedouble : NAN;
        loss[i] = cJSON_IsNumber(b) ? (float)b->valuedouble : NAN;
    }
    if (j->sink->on_entropy) j->sink->on_entropy(j->sink->ctx, i64(o, "step"), n, sig, loss);
    free(sig);
    return 0;
}

static void fit_line(const cdcdd_mpi_job *j, const cJSON *o) {
    cdcd_fit_report f = {.step = i64(o, "step"), .ok = (int)i64(o, "ok"), .mu = num(o, "mu"), .s = num(o, "s"),
                         .h = num(o, "h"), .o = num(o, "o"), .rmse = num(o, "rmse"), .n = (int)i64(o, "n"),
                         .kind = (int)i64(o, "kind")};
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(o, "knots");
    double knots[CDCD_PWL_KNOTS];
    int n = 0;
    for (const cJSON *e = cJSON_IsArray(k) ? k->child : NULL; e && n < CDCD_PWL_KNOTS; e = e->next)
        knots[n++] = cJSON_IsNumber(e) ? e->valuedouble : NAN;
    if (j->on_fit) j->on_fit(j->ctx, &f, n == CDCD_PWL_KNOTS ? knots : NULL);
}

/* The whole of buf on the control channel. 0 or -1 (mpirun is gone: the watch ends). */
static int send_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return -1;
        buf += n, len -= (size_t)n;
    }
    return 0;
}

/* Rank 0 asks for a refit: the daemon fits its store's samples to the schedule the request
 * carries and sends the result back (cli/train_control.h has the reply's form). */
static void answer_refit(const cdcdd_mpi_job *j, const child *c, const cJSON *o) {
    int64_t step = i64(o, "step");
    cdcd_schedule s;
    const char *why = NULL;
    char *sched = NULL, *line = NULL;
    if (cdcd_schedule_from_json(&s, cJSON_GetObjectItemCaseSensitive(o, "schedule")) != 0)
        why = "the request's schedule is malformed";
    else if (!j->refit || j->refit(j->ctx, &s, step) != 1)
        why = "the store could not give the recent samples";
    else if (!(sched = cdcd_schedule_to_json(&s)))
        why = "out of memory";
    size_t cap = (sched ? strlen(sched) : 0) + 128;
    if ((line = malloc(cap)) != NULL) {
        int n = sched ? snprintf(line, cap, "{\"type\":\"schedule\",\"step\":%lld,\"schedule\":%s}\n", (long long)step, sched)
                      : snprintf(line, cap, "{\"type\":\"schedule\",\"step\":%lld,\"error\":\"%s\"}\n", (long long)step, why);
        if (send_all(c->in_fd, line, (size_t)n) != 0)
            cdcd_warn("%s: cannot send the refit of step %lld to rank 0: %s", j->run_dir, (long long)step, strerror(errno));
    }
    if (why) cdcd_warn("%s: refit at step %lld: %s; rank 0 keeps its schedule", j->run_dir, (long long)step, why);
    free(line);
    free(sched);
}

/* One report line into the sink. The step's number, or 0 for other lines; -1 when the line
 * is not a report (mpirun's own output is logged and skipped); -2 for "started". */
static int64_t dispatch(const cdcdd_mpi_job *j, const child *c, const char *line, size_t len) {
    cJSON *o = cJSON_ParseWithLength(line, len);
    const cJSON *t = o ? cJSON_GetObjectItemCaseSensitive(o, "type") : NULL;
    int64_t rc = 0;
    const cdcd_train_sink *s = j->sink;
    if (!cJSON_IsString(t)) {
        cdcd_debug("%s: mpirun: %.*s", j->run_dir, (int)(len > 300 ? 300 : len), line);
        rc = -1;
    } else if (strcmp(t->valuestring, "started") == 0) {
        rc = -2;
    } else if (strcmp(t->valuestring, "step") == 0) {
        cdcd_step_report r = {.step = i64(o, "step"), .loss = num(o, "loss"), .lr = num(o, "lr"),
                              .grad_norm = num(o, "grad_norm"), .tokens_per_s = num(o, "tokens_per_s"),
                              .tokens = i64(o, "tokens"), .step_ms = num(o, "step_ms"),
                              .nonfinite = (int)i64(o, "nonfinite")};
        if (s->on_step) s->on_step(s->ctx, &r);
        rc = r.step > 0 ? r.step : 0;
    } else if (strcmp(t->valuestring, "entropy") == 0) {
        if (entropy_line(j, o) != 0) cdcd_warn("%s: a malformed entropy report was skipped", j->run_dir);
    } else if (strcmp(t->valuestring, "fit") == 0) {
        fit_line(j, o);
    } else if (strcmp(t->valuestring, "refit") == 0) {
        answer_refit(j, c, o);
    } else if (strcmp(t->valuestring, "valid") == 0) {
        if (s->on_valid) s->on_valid(s->ctx, i64(o, "step"), num(o, "loss"));
    } else if (strcmp(t->valuestring, "checkpoint") == 0) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, "path"), *h = cJSON_GetObjectItemCaseSensitive(o, "sha256");
        if (s->on_checkpoint && cJSON_IsString(p))
            s->on_checkpoint(s->ctx, i64(o, "step"), p->valuestring, (uint64_t)i64(o, "bytes"),
                             cJSON_IsString(h) ? h->valuestring : "");
    }
    cJSON_Delete(o);
    return rc;
}

/* ------------------------------------------------------------------ the watch */

typedef struct {
    double last_line_s, last_step_s, intervals[STEP_WINDOW];
    int n_intervals;
    int64_t last_step;
    int started; /* rank 0 reported "started": every rank has its signal handlers */
    double min_s; /* the run's distributed.hang_min_s */
} progress;

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Seconds without a step after which the job counts as hung. */
static double hang_limit(const progress *p) {
    if (p->n_intervals == 0) return CDCDD_MPI_START_TIMEOUT_S;
    double v[STEP_WINDOW];
    int n = p->n_intervals < STEP_WINDOW ? p->n_intervals : STEP_WINDOW;
    memcpy(v, p->intervals, sizeof(double) * (size_t)n);
    qsort(v, (size_t)n, sizeof v[0], cmp_double);
    double lim = CDCDD_MPI_HANG_FACTOR * v[n / 2];
    return lim > p->min_s ? lim : p->min_s;
}

static void saw_step(progress *p, int64_t step, double now) {
    if (p->last_step > 0) p->intervals[p->n_intervals++ % STEP_WINDOW] = now - p->last_step_s;
    p->last_step_s = now;
    p->last_step = step;
}

/* Reads what is there; dispatches whole lines. 1 at end of file, 0 otherwise, -1 on a line
 * too long (err set). */
static int read_lines(const cdcdd_mpi_job *j, const child *c, char **buf, size_t *len, size_t *cap, progress *p,
                      char *err, size_t errlen) {
    if (*cap - *len < 65536) {
        size_t nc = *cap ? *cap * 2 : 131072;
        char *nb = nc <= CDCDD_MPI_LINE_MAX * 2 ? realloc(*buf, nc) : NULL;
        if (!nb) {
            snprintf(err, errlen, "a report line from rank 0 is longer than %u bytes", CDCDD_MPI_LINE_MAX);
            return -1;
        }
        *buf = nb, *cap = nc;
    }
    ssize_t got = read(c->out_fd, *buf + *len, *cap - *len);
    if (got == 0) return 1;
    if (got < 0) return errno == EINTR || errno == EAGAIN ? 0 : 1;
    *len += (size_t)got;
    double now = cdcd_now_s();
    p->last_line_s = now;
    char *start = *buf, *nl;
    while ((nl = memchr(start, '\n', (size_t)(*buf + *len - start))) != NULL) {
        int64_t step = dispatch(j, c, start, (size_t)(nl - start));
        if (step > 0) saw_step(p, step, now);
        if (step == -2) p->started = 1;
        if (j->beat) j->beat(j->ctx);
        start = nl + 1;
    }
    *len = (size_t)(*buf + *len - start);
    memmove(*buf, start, *len);
    return 0;
}

/* The end of mpirun.log on one line ("a | b | c"), for a failed run's error. */
static void log_tail(const char *run_dir, char *out, size_t cap) {
    char path[1400], buf[CDCDD_MPI_LOG_TAIL + 1];
    snprintf(path, sizeof path, "%.1200s/%s", run_dir, LOGFILE);
    out[0] = '\0';
    FILE *f = fopen(path, "r");
    if (!f) return;
    long size = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : 0;
    long from = size > CDCDD_MPI_LOG_TAIL ? size - CDCDD_MPI_LOG_TAIL : 0;
    size_t n = fseek(f, from, SEEK_SET) == 0 ? fread(buf, 1, CDCDD_MPI_LOG_TAIL, f) : 0;
    fclose(f);
    buf[n] = '\0';
    char *p = buf;
    if (from > 0 && (p = strchr(buf, '\n')) != NULL) p++;
    else p = buf;
    size_t o = 0;
    for (char *line = strtok(p, "\n"); line && o + 4 < cap; line = strtok(NULL, "\n")) {
        if (!*line || strspn(line, "-* \t") == strlen(line)) continue; /* mpirun's rulers */
        o += (size_t)snprintf(out + o, cap - o, "%s%s", o ? " | " : "", line);
    }
}

/* Why the job failed, from its exit status and mpirun's last words. */
static void describe_exit(const cdcdd_mpi_job *j, int status, char *err, size_t errlen) {
    char tail[CDCDD_MPI_LOG_TAIL + 64];
    log_tail(j->run_dir, tail, sizeof tail);
    if (WIFEXITED(status))
        snprintf(err, errlen, "mpirun exited with status %d%s%.400s", WEXITSTATUS(status), tail[0] ? ": " : "", tail);
    else
        snprintf(err, errlen, "mpirun was killed by signal %d%s%.400s", WIFSIGNALED(status) ? WTERMSIG(status) : 0,
                 tail[0] ? ": " : "", tail);
}

/* Follows the child until its output ends or it hangs. 1 hung (err set), -1 failed (err
 * set), 0 its output ended. *signalled: a wind-down was sent. */
static int follow(const cdcdd_mpi_job *j, const child *c, progress *p, int *signalled, char *err, size_t errlen) {
    char *buf = NULL;
    size_t len = 0, cap = 0;
    int rc = 0;
    for (;;) {
        /* only once the ranks are up: before its handler is installed a rank would die of
         * SIGUSR2 (the report's "started" comes after the handlers and the model) */
        if (!*signalled && p->started && j->command(j->ctx)) {
            kill(c->pid, SIGUSR2); /* mpirun forwards it to every rank */
            *signalled = 1;
        }
        struct pollfd pf = {.fd = c->out_fd, .events = POLLIN};
        if (poll(&pf, 1, 250) > 0) {
            int e = read_lines(j, c, &buf, &len, &cap, p, err, errlen);
            if (e != 0) {
                rc = e < 0 ? -1 : 0;
                break;
            }
        }
        double quiet_s = cdcd_now_s() - p->last_step_s, lim = hang_limit(p);
        if (quiet_s > lim) {
            snprintf(err, errlen, "no step from the ranks in %.0f s (limit %.0f s: %d x the median step, at least "
                     "distributed.hang_min_s = %.0f s%s); the job was killed", quiet_s, lim, CDCDD_MPI_HANG_FACTOR,
                     p->min_s, p->last_step ? "" : ", or the start-up limit");
            rc = 1;
            break;
        }
        if (j->beat) j->beat(j->ctx);
    }
    free(buf);
    return rc;
}

cdcdd_mpi_result cdcdd_mpi_job_run(const cdcdd_mpi_job *j, int64_t *last_step, char *err, size_t errlen) {
    cdcdd_mpi_kill_leftovers(j->run_dir);
    child c;
    if (spawn(j, &c, err, errlen) != 0) return CDCDD_MPI_FAILED;
    progress p = {.last_step_s = cdcd_now_s(), .min_s = j->cfg->distributed.hang_min_s};
    int signalled = 0;
    int rc = follow(j, &c, &p, &signalled, err, errlen);
    if (rc != 0) kill(-c.pid, SIGKILL);
    close(c.out_fd);
    close(c.in_fd);
    /* mpirun has exited: kill whatever is left of its group while its zombie still holds the
     * group's id (no other group can have it yet), then reap it */
    siginfo_t si;
    while (waitid(P_PID, (id_t)c.pid, &si, WEXITED | WNOWAIT) < 0 && errno == EINTR) {
    }
    kill(-c.pid, SIGKILL);
    int status = 0;
    while (waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
    }
    char pidp[1400];
    snprintf(pidp, sizeof pidp, "%.1200s/%s", j->run_dir, PIDFILE);
    unlink(pidp);
    *last_step = p.last_step;
    if (rc != 0) return CDCDD_MPI_FAILED;
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return signalled ? CDCDD_MPI_WOUND_DOWN : CDCDD_MPI_FINISHED;
    describe_exit(j, status, err, errlen);
    return CDCDD_MPI_FAILED;
}
