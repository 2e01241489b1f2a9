/* Gradient all-reduce overlapped with the backward pass: a communication thread sums each
 * range of the gradient over the ranks as soon as backward has finished it (the model's
 * grad-ready calls, core/model.h), layer by layer, while the trainer thread computes the
 * layers below. Open MPI has no asynchronous progress for MPI_Iallreduce, so the sums are
 * blocking calls on a thread of their own (MPI_THREAD_SERIALIZED: the trainer thread makes
 * no MPI call between begin and finish). Every rank hands over the same ranges in the same
 * order, so the ranks' calls match; each element is summed as one big all-reduce sums it.
 *
 * Use, per optimiser step: begin; post the ranges (from the grad-ready callback); finish,
 * which waits for the last sum. The trainer thread is the only caller. */
#ifndef CDCD_GRAD_OVERLAP_H
#define CDCD_GRAD_OVERLAP_H

#include <stddef.h>

#include "dist.h"

#define CDCD_GRAD_OVERLAP_MAX_RANGES 4096 /* ranges per step (one per block, plus two) */

typedef struct cdcd_grad_overlap cdcd_grad_overlap;

/* Starts the thread. NULL with err when the job's MPI allows calls from one thread only, or
 * the thread cannot start. */
cdcd_grad_overlap *cdcd_grad_overlap_create(cdcd_dist *d, char *err, size_t errlen);
/* A new step whose gradient lives at grads (host memory). */
void cdcd_grad_overlap_begin(cdcd_grad_overlap *o, float *grads);
/* grads[offset, offset + n) is final: sum it over the ranks (queued; returns at once). The
 * signature of cdcd_grad_ready_fn. */
void cdcd_grad_overlap_post(void *o, size_t offset, size_t n);
/* Waits for every posted range. 0, or -1 with the first failure's text in err. *busy_s: the
 * seconds the thread spent in all-reduce this step (hidden or not). */
int cdcd_grad_overlap_finish(cdcd_grad_overlap *o, double *busy_s, char *err, size_t errlen);
void cdcd_grad_overlap_free(cdcd_grad_overlap *o);

#endif
