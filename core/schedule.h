/* Noise-level schedules (time warping, CDCD paper section 3.3 / the seed's Cauchy fit).
 *
 * A schedule is an unnormalised, monotone non-decreasing function F(sigma) fitted to the
 * per-sequence cross-entropy seen at noise level sigma. Training draws sigma = F^-1(u) with
 * u uniform on [F(tmin), F(tmax)], so noise levels where the loss changes fast are visited
 * more often (the entropy rises linearly in u); the sampler spaces its ODE steps uniformly
 * in u the same way. Two kinds share one interface:
 *
 *   cauchy  F(sigma) = h * (atan((sigma - mu) / s) / pi + 1/2) + o        (the seed's)
 *           bounded Levenberg-Marquardt: mu >= 0, s >= CDCD_CAUCHY_S_MIN, h >= 0 and
 *           o >= -h * (atan(-mu / s) / pi + 1/2), i.e. F(0) >= 0.
 *   pwl     monotone piecewise-linear F with CDCD_PWL_BINS bins (the paper's). The knots are
 *           uniform in log sigma over [tmin, tmax] and F is linear in log sigma inside a bin:
 *           the loss changes over decades of sigma, and uniform-in-sigma bins would put 99 of
 *           100 bins above sigma = 2 with tmax = 200. F' below is therefore dF/d(log sigma),
 *           the density (up to a constant) with which log sigma was drawn. Fitted by weighted
 *           least squares with importance weights 1/F' of the schedule that drew the samples
 *           (capped), bounded increments (NNLS, so F stays monotone, and every bin keeps 1%
 *           of the average slope so no noise level is abandoned for good) and a small ridge
 *           on the increments that decides bins without samples (see schedule.c).
 *
 * A refit that fails (too few or invalid samples, flat loss, no convergence, non-finite
 * values) leaves the active parameters untouched and is counted; the fit record then
 * says ok = 0. Sampling never returns NaN: a degenerate F (flat over [tmin, tmax], h ~ 0,
 * non-finite) falls back to log-uniform sigma on [tmin, tmax].
 *
 * Everything here is plain data and pure functions apart from the rng passed in: no
 * allocation outlives a call, no globals, safe to use from any thread on distinct objects. */
#ifndef CDCD_SCHEDULE_H
#define CDCD_SCHEDULE_H

#include <stddef.h>
#include <stdint.h>

#include "rng.h"

/* Default noise range. The model normalises embeddings to norm sqrt(d_emb), so two
 * (near-orthogonal) token embeddings are about sqrt(2 d) apart and the noise margin between
 * them is sqrt(2 d) / (2 sigma): an equal margin needs sigma proportional to sqrt(d). The
 * paper's 1..300 at d = 256 therefore corresponds to about 0.5..150 at the d_emb = 64 of
 * the tiny/small presets.
 *   tmin 0.1: the paper notes smaller d allows t_min around 0.1; five times below the
 *     equivalent above, because learned embeddings cluster (similar tokens end up closer
 *     than random ones) and the vocabulary is 30k tokens; at 0.1 the
 *     margin for random embeddings is ~56 standard deviations, so the cross-entropy is ~0
 *     and the final argmax is exact. The seed's 0.01 adds nothing the warping would visit.
 *   tmax 200: the seed's value, above the 150 equivalent of the paper's 300, so x_T is
 *     indistinguishable from N(0, tmax^2) (signal/noise norm ratio 1/200).
 * Warping makes the ends cheap anyway: where the loss is flat F is flat and few samples go. */
#define CDCD_SCHEDULE_DEFAULT_TMIN 0.1
#define CDCD_SCHEDULE_DEFAULT_TMAX 200.0
/* Samples per refit: at least the seed's 500; 2048 gives the PWL fit ~20 samples per bin and
 * still spans only 64 steps at batch 32, well inside one refit interval, so the window holds
 * the current model's losses and not a mix of old and new. */
#define CDCD_SCHEDULE_DEFAULT_WINDOW 2048
#define CDCD_SCHEDULE_MIN_WINDOW 500
#define CDCD_SCHEDULE_MAX_WINDOW (1 << 20)
/* Steps between refits (the seed refits "every few hundred steps"). */
#define CDCD_SCHEDULE_DEFAULT_REFIT_EVERY 200
/* A refit needs at least this many usable samples (4 Cauchy parameters, with a margin). */
#define CDCD_SCHEDULE_MIN_FIT_SAMPLES 8
/* Most timesteps cdcd_schedule_timesteps accepts (keeps their log-spacing far above
 * rounding). */
#define CDCD_SCHEDULE_MAX_STEPS 100000

/* Cauchy: the seed's initial values, and the floor on the scale s (a step sharper than this
 * has no meaning at sigma >= 0.01 and would make F^-1 constant). */
#define CDCD_CAUCHY_INIT_MU 3.0
#define CDCD_CAUCHY_INIT_S 2.0
#define CDCD_CAUCHY_INIT_H 6.0
#define CDCD_CAUCHY_INIT_O (-1.0)
#define CDCD_CAUCHY_S_MIN 1e-4

#define CDCD_PWL_BINS 100
#define CDCD_PWL_KNOTS (CDCD_PWL_BINS + 1)

typedef enum { CDCD_SCHEDULE_CAUCHY = 0, CDCD_SCHEDULE_PWL = 1 } cdcd_schedule_kind;

typedef enum {
    CDCD_FIT_OK = 0,
    CDCD_FIT_TOO_FEW = 1,      /* fewer than CDCD_SCHEDULE_MIN_FIT_SAMPLES usable samples */
    CDCD_FIT_BAD_DATA = 2,     /* all sigmas equal, or bad arguments */
    CDCD_FIT_FLAT = 3,         /* the loss, or the fitted F, does not rise over [tmin, tmax] */
    CDCD_FIT_NO_CONVERGE = 4,  /* iteration limit reached from every start */
    CDCD_FIT_NONFINITE = 5,    /* the solution or its residual is not finite */
    CDCD_FIT_SOLVER = 6,       /* LAPACK refused the linear system */
    CDCD_FIT_NOMEM = 7
} cdcd_fit_status;

/* One refit, as stored by the daemon (SQLite) or the CLI. For cauchy mu, s, h, o are the
 * fitted parameters. For pwl: h = F(tmax) - F(tmin) (the rise), o = F(tmin), and mu, s are
 * the median and half the interquartile range of the warped sigma distribution (for a
 * Cauchy F covering its whole support these are exactly its mu and s), so the two kinds plot
 * on the same axes. knots holds F at the 101 log-spaced grid points for both kinds (for pwl
 * these are the parameters). After a failed fit (ok = 0) the parameters are the ones kept,
 * and rmse is theirs on the usable samples (0 when there are none). */
typedef struct {
    int64_t step;
    int ok;
    int status;     /* cdcd_fit_status */
    int kind;       /* cdcd_schedule_kind */
    double mu, s, h, o;
    double rmse;    /* root mean squared residual of F against the losses (unweighted) */
    int n;          /* usable samples */
    int n_dropped;  /* samples skipped: non-finite loss, non-finite or non-positive sigma */
    int iterations; /* LM iterations (best start) or NNLS active-set iterations */
    double knots[CDCD_PWL_KNOTS];
} cdcd_schedule_fit;

typedef struct cdcd_schedule {
    cdcd_schedule_kind kind;
    double tmin, tmax;
    double mu, s, h, o;             /* cauchy parameters */
    double knots[CDCD_PWL_KNOTS];   /* pwl: F at exp(log tmin + k (log tmax - log tmin) / 100) */
    int64_t n_fits;                 /* refits attempted */
    int64_t n_failures;             /* of which failed (parameters kept) */
    int has_fit;                    /* at least one refit succeeded */
    cdcd_schedule_fit last;         /* the latest refit (valid when n_fits > 0) */
} cdcd_schedule;

/* ---- the generic interface ---- */

/* Initial parameters: cauchy the seed's (mu 3, s 2, h 6, o -1); pwl linear in log sigma
 * (log-uniform sampling: before any fit nothing is known, so every decade gets equal
 * weight). Returns 0, or -1 when tmin <= 0, tmax <= tmin, either is not finite, or kind is
 * unknown (s is then zeroed and must not be used). */
int cdcd_schedule_init(cdcd_schedule *s, cdcd_schedule_kind kind, double tmin, double tmax);

/* Fits F to n (sigma, loss) samples (the most recent window, any order). Samples with a
 * non-finite loss or a non-finite / non-positive sigma are skipped and counted. Sigmas
 * outside [tmin, tmax] are used as they are by cauchy and clamped to the range by pwl.
 * On success the new parameters are active; on failure the old ones stay. Either way
 * n_fits grows, s->last records the attempt, and the status is returned. The cauchy fit
 * warm-starts from the active parameters (and also tries the seed's values and a start
 * estimated from the data, keeping the best). The pwl importance weights use the active
 * F, i.e. assume it drew the window's samples: true when the window is shorter than the
 * refit interval in samples, as the defaults arrange. Allocates O(n) scratch for the call. */
cdcd_fit_status cdcd_schedule_refit(cdcd_schedule *s, const float *sigma, const float *loss,
                                    int n, int64_t step);

/* Draws B noise levels for a training batch. Stratified: one offset r ~ U[0,1) per batch,
 * u_i = (i + r) / B for i = 0..B-1 (each of the B equal-probability strata of the warped
 * distribution gets exactly one sample, the low-discrepancy scheme of the paper and of
 * VDM), mapped into [F(tmin), F(tmax)] and through F^-1, then shuffled so that a sequence's
 * position in the batch says nothing about its noise level. Results are clamped to
 * [tmin, tmax] (as floats) and are never NaN (a schedule that was never initialised gets
 * log-uniform draws on the default range and an error line). Uses 1 + (B - 1) rng draws. */
void cdcd_schedule_sample_sigmas(const cdcd_schedule *s, cdcd_rng *rng, int B, float *out);

/* n_steps + 1 sampler timesteps from tmax down to tmin, uniform in u between F(tmax) and
 * F(tmin) and mapped through F^-1: out[0] = tmax and out[n_steps] = tmin exactly, strictly
 * decreasing (where F is so steep that neighbours would coincide, they are pushed apart by
 * a small fraction of the mean log spacing). Returns 0, or -1 for n_steps outside
 * [1, CDCD_SCHEDULE_MAX_STEPS] or a schedule without a valid range. */
int cdcd_schedule_timesteps(const cdcd_schedule *s, int n_steps, double *out);

/* F(sigma), unnormalised. pwl is constant outside [tmin, tmax]. */
double cdcd_schedule_eval(const cdcd_schedule *s, double sigma);
/* F^-1(u) for u in F units, u clamped to [F(tmin), F(tmax)]; the result is in
 * [tmin, tmax]. Degenerate F: the log-uniform quantile of the clamped position. */
double cdcd_schedule_inverse(const cdcd_schedule *s, double u);
/* The quantile function of the distribution sampling draws from, whose cdf is
 * (F(sigma) - F(tmin)) / (F(tmax) - F(tmin)) (log-uniform for a degenerate F):
 * p in [0, 1] -> sigma in [tmin, tmax]. */
double cdcd_schedule_quantile(const cdcd_schedule *s, double p);
/* 1 when F cannot be inverted over [tmin, tmax] (flat, h ~ 0, non-finite): sampling and
 * timesteps then use log-uniform sigma. */
int cdcd_schedule_degenerate(const cdcd_schedule *s);
/* The log-spaced grid point k in [0, CDCD_PWL_BINS] of the schedule's range. */
double cdcd_schedule_grid_sigma(const cdcd_schedule *s, int k);

/* ---- checkpoints ---- */

/* A schedule as a flat array of CDCD_SCHEDULE_SERIAL_LEN doubles (integers are exact up
 * to 2^53): version, kind, tmin, tmax, mu, s, h, o, n_fits, n_failures, has_fit, the last
 * fit record (12 scalars), the 101 knots, the last fit's 101 knots. */
#define CDCD_SCHEDULE_SERIAL_VERSION 1
#define CDCD_SCHEDULE_SERIAL_LEN (11 + 12 + 2 * CDCD_PWL_KNOTS)
void cdcd_schedule_serialise(const cdcd_schedule *s, double out[CDCD_SCHEDULE_SERIAL_LEN]);
/* Restores what serialise wrote. Returns 0, or -1 (s untouched) on a wrong length or
 * version, an unknown kind, a bad range, non-finite or out-of-bound parameters, or pwl
 * knots that decrease. */
int cdcd_schedule_deserialise(cdcd_schedule *s, const double *in, size_t n);

/* ---- names ---- */
const char *cdcd_schedule_kind_name(cdcd_schedule_kind kind);        /* "cauchy" | "pwl" */
int cdcd_schedule_parse_kind(const char *name);                      /* kind, or -1 */
const char *cdcd_fit_status_name(cdcd_fit_status status);            /* "ok", "too_few"... */

/* ---- the fits on their own (used by refit; exposed for tests and tools) ---- */

typedef struct {
    double mu, s, h, o;
} cdcd_cauchy_params;

typedef struct {
    cdcd_cauchy_params p;
    double rmse;
    int n, n_dropped, iterations;
    cdcd_fit_status status;
} cdcd_cauchy_fit_result;

double cdcd_cauchy_eval(const cdcd_cauchy_params *p, double sigma);
/* Bounded nonlinear least squares of the Cauchy F on the usable samples. warm may be NULL.
 * [tmin, tmax] is only used to refuse a fit that is flat over the sampling range. The
 * result's parameters are only meaningful when status is CDCD_FIT_OK. */
cdcd_fit_status cdcd_cauchy_fit(const float *sigma, const float *loss, int n,
                                const cdcd_cauchy_params *warm, double tmin, double tmax,
                                cdcd_cauchy_fit_result *out);

/* Monotone PWL least squares on the log grid of [tmin, tmax]. weight_knots, when not NULL,
 * is the F (CDCD_PWL_KNOTS values) that drew the samples: each sample is weighted by
 * 1 / F'(log sigma) of its bin (floored, see schedule.c); NULL means unweighted (log-uniform
 * sampling). knots_out receives the fitted F at the grid points. iterations and rmse may be
 * NULL. */
cdcd_fit_status cdcd_pwl_fit(const float *sigma, const float *loss, int n, double tmin,
                             double tmax, const double *weight_knots, double *knots_out,
                             double *rmse, int *n_used, int *n_dropped, int *iterations);

#endif
