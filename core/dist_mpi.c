/* The ranks of an Open MPI job: see dist.h. With CDCD_HAVE_MPI (the Makefile defines it
 * when pkg-config finds ompi-c) this joins the job; without, it refuses a launched process
 * and gives the world of one otherwise. Calls come from the trainer thread, or from the
 * gradient overlap's thread while the trainer waits: MPI_THREAD_SERIALIZED. Counts above INT_MAX go in pieces: MPI counts are int. */
#include "dist.h"

#include <stdio.h>
#include <stdlib.h>

#ifdef CDCD_HAVE_MPI

#include <limits.h>
#include <mpi.h>

#define DIST_CHUNK ((size_t)1 << 28) /* elements per MPI call: below INT_MAX */

typedef struct {
    cdcd_dist base;
    int finalize; /* 1: this process called MPI_Init */
} mpi_dist;

static int mpi_fail(int rc, const char *what, char *err, size_t errlen) {
    if (rc == MPI_SUCCESS) return 0;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    if (MPI_Error_string(rc, msg, &len) != MPI_SUCCESS) snprintf(msg, sizeof msg, "code %d", rc);
    snprintf(err, errlen, "MPI %s: %s", what, msg);
    return -1;
}

static int allreduce(void *buf, size_t n, size_t elem, MPI_Datatype t, MPI_Op op, char *err, size_t errlen) {
    for (size_t at = 0; at < n; at += DIST_CHUNK) {
        size_t k = n - at < DIST_CHUNK ? n - at : DIST_CHUNK;
        int rc = MPI_Allreduce(MPI_IN_PLACE, (char *)buf + at * elem, (int)k, t, op, MPI_COMM_WORLD);
        if (mpi_fail(rc, "allreduce", err, errlen) != 0) return -1;
    }
    return 0;
}

static int m_sum_f32(cdcd_dist *d, float *buf, size_t n, char *err, size_t errlen) {
    (void)d;
    return allreduce(buf, n, sizeof *buf, MPI_FLOAT, MPI_SUM, err, errlen);
}
static int m_sum_f64(cdcd_dist *d, double *buf, size_t n, char *err, size_t errlen) {
    (void)d;
    return allreduce(buf, n, sizeof *buf, MPI_DOUBLE, MPI_SUM, err, errlen);
}
static int m_max_i64(cdcd_dist *d, int64_t *v, char *err, size_t errlen) {
    (void)d;
    return allreduce(v, 1, sizeof *v, MPI_INT64_T, MPI_MAX, err, errlen);
}
static int m_gather_f32(cdcd_dist *d, const float *mine, size_t n, float *all, char *err, size_t errlen) {
    (void)d;
    if (n > (size_t)INT_MAX) {
        snprintf(err, errlen, "allgather of %zu floats per rank: more than an MPI count holds", n);
        return -1;
    }
    return mpi_fail(MPI_Allgather(mine, (int)n, MPI_FLOAT, all, (int)n, MPI_FLOAT, MPI_COMM_WORLD), "allgather",
                    err, errlen);
}
static int m_gather_u64(cdcd_dist *d, uint64_t v, uint64_t *all, char *err, size_t errlen) {
    (void)d;
    return mpi_fail(MPI_Allgather(&v, 1, MPI_UINT64_T, all, 1, MPI_UINT64_T, MPI_COMM_WORLD), "allgather", err,
                    errlen);
}
static int m_bcast(cdcd_dist *d, void *buf, size_t bytes, int root, char *err, size_t errlen) {
    (void)d;
    for (size_t at = 0; at < bytes; at += DIST_CHUNK) {
        size_t k = bytes - at < DIST_CHUNK ? bytes - at : DIST_CHUNK;
        int rc = MPI_Bcast((char *)buf + at, (int)k, MPI_BYTE, root, MPI_COMM_WORLD);
        if (mpi_fail(rc, "broadcast", err, errlen) != 0) return -1;
    }
    return 0;
}
static int m_barrier(cdcd_dist *d, char *err, size_t errlen) {
    (void)d;
    return mpi_fail(MPI_Barrier(MPI_COMM_WORLD), "barrier", err, errlen);
}
static void m_finalize(cdcd_dist *d) {
    mpi_dist *m = (mpi_dist *)d;
    if (m->finalize) MPI_Finalize();
    free(m);
}

static const cdcd_dist_ops MPI_OPS = {m_sum_f32, m_sum_f64, m_max_i64, m_gather_f32,
                                      m_gather_u64, m_bcast, m_barrier, m_finalize};

int cdcd_dist_mpi_available(void) { return 1; }

cdcd_dist *cdcd_dist_mpi_init(char *err, size_t errlen) {
    if (!cdcd_dist_launched()) return cdcd_dist_single();
    mpi_dist *m = calloc(1, sizeof *m);
    if (!m) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    int provided = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        if (mpi_fail(MPI_Init_thread(NULL, NULL, MPI_THREAD_SERIALIZED, &provided), "init", err, errlen) != 0) {
            free(m);
            return NULL;
        }
        m->finalize = 1;
    } else {
        MPI_Query_thread(&provided);
    }
    m->base.threads_serialized = provided >= MPI_THREAD_SERIALIZED;
    /* errors come back as codes (the trainer reports them), not as an abort inside MPI */
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    m->base.ops = &MPI_OPS;
    MPI_Comm_rank(MPI_COMM_WORLD, &m->base.rank);
    MPI_Comm_size(MPI_COMM_WORLD, &m->base.size);
    const char *lr = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    m->base.local_rank = lr ? atoi(lr) : 0;
    return &m->base;
}

void cdcd_dist_abort(cdcd_dist *d, int code) {
    if (d && d->size > 1) MPI_Abort(MPI_COMM_WORLD, code);
    exit(code);
}

#else

int cdcd_dist_mpi_available(void) { return 0; }

cdcd_dist *cdcd_dist_mpi_init(char *err, size_t errlen) {
    if (!cdcd_dist_launched()) return cdcd_dist_single();
    snprintf(err, errlen, "started by mpirun with %s ranks, but this build has no MPI (install libopenmpi-dev "
             "with scripts/deps.sh and rebuild)", getenv("OMPI_COMM_WORLD_SIZE"));
    return NULL;
}

void cdcd_dist_abort(cdcd_dist *d, int code) {
    (void)d;
    exit(code);
}

#endif
