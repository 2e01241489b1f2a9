/* Data-parallel training across processes: the ranks of one MPI job (Open MPI), or a world
 * of one. A table of collectives, so core/train.c names no MPI symbol: only a program that
 * calls cdcd_dist_mpi_init (bin/cdcd) links libmpi; the daemon launches mpirun instead.
 * Every call is collective (all ranks make it, in the same order) and returns 0, or -1
 * with the error text in err. The trainer thread is the only caller, except while the
 * gradient overlap's thread sums (core/grad_overlap.h), when the trainer makes no call. */
#ifndef CDCD_DIST_H
#define CDCD_DIST_H

#include <stddef.h>
#include <stdint.h>

typedef struct cdcd_dist cdcd_dist;

typedef struct {
    /* buf (n) = the element-wise sum over ranks, on every rank. With two ranks each element
     * is a + b, one rounding: what adding two micro-batch gradients computes. */
    int (*allreduce_sum_f32)(cdcd_dist *d, float *buf, size_t n, char *err, size_t errlen);
    int (*allreduce_sum_f64)(cdcd_dist *d, double *buf, size_t n, char *err, size_t errlen);
    /* *v = the largest value over ranks (flags: any rank's 1 wins) */
    int (*allreduce_max_i64)(cdcd_dist *d, int64_t *v, char *err, size_t errlen);
    /* all (size * n) = every rank's mine (n), in rank order */
    int (*allgather_f32)(cdcd_dist *d, const float *mine, size_t n, float *all, char *err, size_t errlen);
    int (*allgather_u64)(cdcd_dist *d, uint64_t v, uint64_t *all, char *err, size_t errlen);
    /* buf (bytes) = rank root's buf, on every rank */
    int (*bcast)(cdcd_dist *d, void *buf, size_t bytes, int root, char *err, size_t errlen);
    int (*barrier)(cdcd_dist *d, char *err, size_t errlen);
    void (*finalize)(cdcd_dist *d);
} cdcd_dist_ops;

struct cdcd_dist {
    const cdcd_dist_ops *ops;
    int rank, size, local_rank; /* local_rank: the rank on this host (one GPU each, later) */
    int threads_serialized;     /* 1: calls may come from a second thread, one at a time
                                   (MPI_THREAD_SERIALIZED: the overlap's communication thread) */
};

/* A world of one, where every collective is the identity (a sum over one rank is the value
 * itself): what a trainer without a job uses. Static; never finalised. */
cdcd_dist *cdcd_dist_single(void);

/* 1 when mpirun started this process as one of several ranks (OMPI_COMM_WORLD_SIZE > 1). */
int cdcd_dist_launched(void);
/* 1 when this build has MPI (Open MPI found by pkg-config ompi-c at build time). */
int cdcd_dist_mpi_available(void);
/* Joins the MPI job mpirun started (MPI_Init_thread, serialized; errors returned, not
 * aborted), or, when not launched, gives cdcd_dist_single(). NULL with err when launched
 * but the build has no MPI, or MPI fails. */
cdcd_dist *cdcd_dist_mpi_init(char *err, size_t errlen);
/* Ends every rank of the job with status code (a rank that cannot go on must not leave the
 * others waiting in a collective). */
void cdcd_dist_abort(cdcd_dist *d, int code);

static inline void cdcd_dist_finalize(cdcd_dist *d) {
    if (d && d->ops->finalize) d->ops->finalize(d);
}

#endif
