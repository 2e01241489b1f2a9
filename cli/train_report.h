/* cdcd train --report: rank 0's account of the run as JSON lines on stdout, one object per
 * line with a "type", flushed at once. cdcdd launches distributed runs under mpirun and
 * reads these (mpirun forwards rank 0's stdout): it stores them as it stores a local
 * trainer's reports (daemon/trainer_mpi.c). Types and fields:
 *   started     step (the step training continues after), ranks
 *   step        step loss lr grad_norm tokens_per_s tokens step_ms nonfinite
 *   entropy     step sigma[] loss[]      (one pair per sequence of the step's batch)
 *   fit         step ok mu s h o rmse n kind knots[] (knots absent when unknown)
 *   valid       step loss
 *   checkpoint  step path bytes sha256
 *   refit       step schedule[]          (--fits-from-stdin: a request; train_control.h)
 * Numbers are printed with enough digits to read back the same double ("%.17g") or float
 * ("%.9g"). */
#ifndef CDCD_TRAIN_REPORT_H
#define CDCD_TRAIN_REPORT_H

#include <stdint.h>
#include <stdio.h>

#include "train.h"

void cdcd_report_started(FILE *out, int64_t step, int ranks);
void cdcd_report_step(FILE *out, const cdcd_step_report *r);
void cdcd_report_entropy(FILE *out, int64_t step, int n, const float *sigma, const float *loss);
/* knots: CDCD_PWL_KNOTS values, or NULL */
void cdcd_report_fit(FILE *out, const cdcd_fit_report *f, const double *knots, int n_knots);
void cdcd_report_valid(FILE *out, int64_t step, double loss);
void cdcd_report_checkpoint(FILE *out, int64_t step, const char *path, uint64_t bytes, const char *sha256_hex);

#endif
