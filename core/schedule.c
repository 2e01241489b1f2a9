#include "schedule.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "log.h"

/* LAPACK from OpenBLAS. Declared here rather than through lapack.h, which belongs to
 * liblapacke-dev (not a project dependency). The trailing size_t is gfortran's hidden
 * length of the character argument: required by Fortran-compiled LAPACK, ignored by
 * OpenBLAS's own C implementation of dposv. Solves A x = b for symmetric positive
 * definite A (column-major, overwritten by its Cholesky factor; b overwritten by x). */
extern void dposv_(const char *uplo, const int *n, const int *nrhs, double *a, const int *lda,
                   double *b, const int *ldb, int *info, size_t uplo_len);

/* ---- limits and tolerances ---- */

/* F must rise at least this much (nats) over [tmin, tmax], and the losses must spread at
 * least this much, for a fit to count: anything flatter carries no warping information
 * (e.g. at initialisation every sigma gives log V). */
#define SCHED_MIN_RISE 1e-4
/* Below these F cannot be inverted numerically and sampling falls back to log-uniform. */
#define SCHED_DEGENERATE_H 1e-12    /* cauchy: h */
#define SCHED_DEGENERATE_SPAN 1e-12 /* cauchy: atan span over [tmin, tmax], radians; pwl:
                                       rise relative to 1 + |F(tmin)| + |F(tmax)| */
/* Timesteps: neighbours are kept at least (log span) / (n * this) apart in log sigma. */
#define SCHED_TIMESTEP_GAP_DIV 1000.0

/* Levenberg-Marquardt (cauchy). Damping starts small (Gauss-Newton-like near a good warm
 * start), grows by LM_UP on a rejected step and shrinks by LM_DOWN on an accepted one. */
#define LM_MAX_ITER 500
#define LM_LAMBDA_INIT 1e-3
#define LM_LAMBDA_MIN 1e-15
#define LM_LAMBDA_MAX 1e12
#define LM_UP 8.0
#define LM_DOWN 3.0
#define LM_FTOL 1e-12 /* relative cost decrease below which an accepted step ends the fit */
#define LM_XTOL 1e-10 /* relative step length below which an accepted step ends the fit */
#define LM_GTOL 1e-10 /* cosine between residual and every free Jacobian column */
/* When no damping decreases the cost any more, the point is stationary to rounding if the
 * gradient cosine is below this; otherwise the fit did not converge. */
#define LM_GTOL_STALL 1e-6
#define LM_N_PARAMS 4
#define LM_MAX_STARTS 3
/* The data-driven start smooths the sorted losses over this fraction of the samples. */
#define LM_SMOOTH_FRAC 0.1

/* PWL fit. The penalty PWL_INC_RIDGE * (sum of weights) * sum_k d_k^2 on the increments
 * (a first-difference penalty on F) decides the bins without samples: inside a gap it
 * spreads the rise evenly (linear interpolation), beyond the data it keeps F flat. A
 * second-difference penalty would instead extrapolate the edge slope across empty tails,
 * inventing a rise there that the sampler then chases: in a simulated refit loop that
 * produced errors of several nats. Where samples are, the ridge only damps noise: measured
 * on synthetic curves (2048 samples, noise 0.2) it lowered the knot errors from 0.14-0.19
 * (ridge 1e-4) to 0.07-0.16 nats without visible bias at the ends. PWL_RIDGE only keeps the
 * normal matrix definite. */
#define PWL_INC_RIDGE 1e-2
#define PWL_RIDGE 1e-10
/* Every bin keeps an increment of at least PWL_MIN_SLOPE_FRAC of the average one, i.e. at
 * least that fraction of the log-uniform sampling density: a bin with zero slope would never
 * be sampled again, so its loss would never be measured and a later rise there never found.
 * The fit is solved once with increments >= 0 to learn the rise, then again with the floor
 * (at most 1% of the rise moves into flat bins). */
#define PWL_MIN_SLOPE_FRAC 0.01
/* Importance weights 1 / F' use F' floored at PWL_WEIGHT_SLOPE_FRAC of the average slope,
 * so no sample weighs more than 10x one from a bin of average density. The weights make the
 * fit target the MSE uniform in log sigma (as the paper's 1/F' does), but they also add
 * variance: in a simulated refit loop (1024-2048 samples, noise 0.2) uncapped weights
 * doubled the error against unweighted fits, and this cap recovered most of it (mean error
 * 0.09 -> 0.06 nats). */
#define PWL_WEIGHT_SLOPE_FRAC 0.1
/* Initial pwl rise (arbitrary units: only the shape matters before the first fit). */
#define PWL_INIT_RISE 1.0
#define NNLS_MAX_OUTER (3 * CDCD_PWL_KNOTS)
#define NNLS_MAX_INNER (2 * CDCD_PWL_KNOTS)
#define NNLS_TOL 1e-12

#define SCHED_PI 3.14159265358979323846

/* ---- small helpers ---- */

static double clampd(double x, double lo, double hi) { return x < lo ? lo : (x > hi ? hi : x); }

static int range_ok(double tmin, double tmax) {
    return isfinite(tmin) && isfinite(tmax) && tmin > 0 && tmax > tmin;
}

static double log_uniform_quantile(double tmin, double tmax, double p) {
    p = clampd(isfinite(p) ? p : 0.5, 0.0, 1.0);
    double l0 = log(tmin), l1 = log(tmax);
    return clampd(exp(l0 + p * (l1 - l0)), tmin, tmax);
}

static int usable_sample(float sigma, float loss) {
    return isfinite(sigma) && sigma > 0 && isfinite(loss);
}

const char *cdcd_schedule_kind_name(cdcd_schedule_kind kind) {
    switch (kind) {
    case CDCD_SCHEDULE_CAUCHY: return "cauchy";
    case CDCD_SCHEDULE_PWL: return "pwl";
    }
    return "unknown";
}

int cdcd_schedule_parse_kind(const char *name) {
    if (!name) return -1;
    if (strcmp(name, "cauchy") == 0) return CDCD_SCHEDULE_CAUCHY;
    if (strcmp(name, "pwl") == 0) return CDCD_SCHEDULE_PWL;
    return -1;
}

const char *cdcd_fit_status_name(cdcd_fit_status status) {
    switch (status) {
    case CDCD_FIT_OK: return "ok";
    case CDCD_FIT_TOO_FEW: return "too_few";
    case CDCD_FIT_BAD_DATA: return "bad_data";
    case CDCD_FIT_FLAT: return "flat";
    case CDCD_FIT_NO_CONVERGE: return "no_converge";
    case CDCD_FIT_NONFINITE: return "nonfinite";
    case CDCD_FIT_SOLVER: return "solver";
    case CDCD_FIT_NOMEM: return "nomem";
    }
    return "unknown";
}

/* ======================================================================================
 * Cauchy F and its bounded least-squares fit
 *
 * The constraint F(0) >= 0 couples o with (mu, s, h). The fit therefore works in
 * theta = (mu, s, h, q) with q = F(0) = o + h * g(0), g(x) = atan((x - mu) / s) / pi + 1/2:
 *   F(x) = h * (atan(z) - atan(z0)) / pi + q,   z = (x - mu) / s,  z0 = -mu / s,
 * where every bound is a plain box (mu >= 0, s >= S_MIN, h >= 0, q >= 0), handled by an
 * active set (a variable at its bound whose gradient points outward is held) and by
 * projecting each trial point onto the box.
 * ====================================================================================== */

static const double lm_lower[LM_N_PARAMS] = {0.0, CDCD_CAUCHY_S_MIN, 0.0, 0.0};

double cdcd_cauchy_eval(const cdcd_cauchy_params *p, double sigma) {
    return p->h * (atan((sigma - p->mu) / p->s) / SCHED_PI + 0.5) + p->o;
}

static void theta_from_params(const cdcd_cauchy_params *p, double th[LM_N_PARAMS]) {
    th[0] = p->mu;
    th[1] = p->s;
    th[2] = p->h;
    for (int j = 0; j < 3; j++) th[j] = fmax(th[j], lm_lower[j]);
    th[3] = p->o + th[2] * (atan(-th[0] / th[1]) / SCHED_PI + 0.5);
    th[3] = fmax(th[3], lm_lower[3]);
}

static cdcd_cauchy_params params_from_theta(const double th[LM_N_PARAMS]) {
    cdcd_cauchy_params p = {th[0], th[1], th[2], 0.0};
    p.o = th[3] - th[2] * (atan(-th[0] / th[1]) / SCHED_PI + 0.5);
    return p;
}

/* Half the sum of squared residuals. */
static double lm_cost(const double *x, const double *y, int n, const double th[LM_N_PARAMS]) {
    double mu = th[0], s = th[1], h = th[2], q = th[3];
    double a0 = atan(-mu / s), c = 0.0;
    for (int i = 0; i < n; i++) {
        double r = h * (atan((x[i] - mu) / s) - a0) / SCHED_PI + q - y[i];
        c += r * r;
    }
    return 0.5 * c;
}

/* A = J^T J (row-major 4x4) and g = J^T r at theta. */
static void lm_normal(const double *x, const double *y, int n, const double th[LM_N_PARAMS],
                      double A[LM_N_PARAMS * LM_N_PARAMS], double g[LM_N_PARAMS]) {
    double mu = th[0], s = th[1], h = th[2], q = th[3];
    double z0 = -mu / s, a0 = atan(z0);
    double k0 = 1.0 / (s * (1.0 + z0 * z0));
    memset(A, 0, sizeof(double) * LM_N_PARAMS * LM_N_PARAMS);
    memset(g, 0, sizeof(double) * LM_N_PARAMS);
    for (int i = 0; i < n; i++) {
        double z = (x[i] - mu) / s, a = atan(z);
        double k = 1.0 / (s * (1.0 + z * z));
        double r = h * (a - a0) / SCHED_PI + q - y[i];
        double J[LM_N_PARAMS] = {
            h / SCHED_PI * (k0 - k),         /* dF/dmu */
            h / SCHED_PI * (z0 * k0 - z * k), /* dF/ds */
            (a - a0) / SCHED_PI,              /* dF/dh */
            1.0,                              /* dF/dq */
        };
        for (int a_ = 0; a_ < LM_N_PARAMS; a_++) {
            g[a_] += J[a_] * r;
            for (int b = a_; b < LM_N_PARAMS; b++) A[a_ * LM_N_PARAMS + b] += J[a_] * J[b];
        }
    }
    for (int a_ = 0; a_ < LM_N_PARAMS; a_++)
        for (int b = 0; b < a_; b++) A[a_ * LM_N_PARAMS + b] = A[b * LM_N_PARAMS + a_];
}

/* Largest cosine between the residual and a free Jacobian column (MINPACK's gtol test). */
static double lm_grad_cosine(const double A[LM_N_PARAMS * LM_N_PARAMS], const double g[LM_N_PARAMS],
                             const int free_[LM_N_PARAMS], double cost) {
    double worst = 0.0;
    if (!(cost > 0)) return 0.0;
    for (int j = 0; j < LM_N_PARAMS; j++) {
        if (!free_[j]) continue;
        double d = A[j * LM_N_PARAMS + j];
        if (d > 0) worst = fmax(worst, fabs(g[j]) / sqrt(d * 2.0 * cost));
    }
    return worst;
}

typedef struct {
    double th[LM_N_PARAMS];
    double cost;
    int iterations;
    int converged;
    int solver_failed;
} lm_run;

/* Projected Levenberg-Marquardt from th0 with Marquardt's diagonal scaling (the running
 * maximum of diag(J^T J), as MINPACK does, so that a column that vanishes at the start
 * (e.g. dF/dmu at h = 0) still gets damping). */
static lm_run lm_solve(const double *x, const double *y, int n, const double th0[LM_N_PARAMS]) {
    lm_run run;
    memset(&run, 0, sizeof run);
    memcpy(run.th, th0, sizeof run.th);
    for (int j = 0; j < LM_N_PARAMS; j++) run.th[j] = fmax(run.th[j], lm_lower[j]);
    run.cost = lm_cost(x, y, n, run.th);
    if (!isfinite(run.cost)) return run;
    double lambda = LM_LAMBDA_INIT, D[LM_N_PARAMS] = {0};
    double A[LM_N_PARAMS * LM_N_PARAMS], g[LM_N_PARAMS];
    for (int it = 0; it < LM_MAX_ITER; it++) {
        run.iterations = it + 1;
        lm_normal(x, y, n, run.th, A, g);
        int free_[LM_N_PARAMS], idx[LM_N_PARAMS], nf = 0;
        double dmax = 0.0;
        for (int j = 0; j < LM_N_PARAMS; j++) {
            D[j] = fmax(D[j], A[j * LM_N_PARAMS + j]);
            dmax = fmax(dmax, D[j]);
            /* At the bound with the gradient pointing out of the box: held this iteration. */
            free_[j] = !(run.th[j] <= lm_lower[j] && g[j] > 0);
            if (free_[j]) idx[nf++] = j;
        }
        double cosine = lm_grad_cosine(A, g, free_, run.cost);
        if (run.cost == 0.0 || nf == 0 || cosine <= LM_GTOL) {
            run.converged = 1;
            return run;
        }
        int accepted = 0;
        while (lambda <= LM_LAMBDA_MAX) {
            double M[LM_N_PARAMS * LM_N_PARAMS], step[LM_N_PARAMS];
            for (int a = 0; a < nf; a++) {
                for (int b = 0; b < nf; b++) M[a * nf + b] = A[idx[a] * LM_N_PARAMS + idx[b]];
                /* Floor the scaling so a column that has always been zero is still damped. */
                M[a * nf + a] += lambda * fmax(D[idx[a]], 1e-12 * (dmax > 0 ? dmax : 1.0));
                step[a] = -g[idx[a]];
            }
            int nn = nf, one = 1, info = 0;
            dposv_("U", &nn, &one, M, &nn, step, &nn, &info, 1);
            if (info != 0) {
                run.solver_failed = 1;
                lambda *= LM_UP;
                continue;
            }
            double trial[LM_N_PARAMS], dx2 = 0.0, x2 = 0.0;
            memcpy(trial, run.th, sizeof trial);
            for (int a = 0; a < nf; a++) trial[idx[a]] += step[a];
            for (int j = 0; j < LM_N_PARAMS; j++) {
                trial[j] = fmax(trial[j], lm_lower[j]);
                dx2 += (trial[j] - run.th[j]) * (trial[j] - run.th[j]);
                x2 += run.th[j] * run.th[j];
            }
            double c = lm_cost(x, y, n, trial);
            if (isfinite(c) && c < run.cost) {
                double rel = (run.cost - c) / run.cost;
                memcpy(run.th, trial, sizeof trial);
                run.cost = c;
                lambda = fmax(lambda / LM_DOWN, LM_LAMBDA_MIN);
                accepted = 1;
                if (rel <= LM_FTOL || sqrt(dx2) <= LM_XTOL * (sqrt(x2) + LM_XTOL)) {
                    run.converged = 1;
                    return run;
                }
                break;
            }
            lambda *= LM_UP;
        }
        if (!accepted) {
            /* No damping decreases the cost: stationary up to rounding, or stuck. */
            run.converged = cosine <= LM_GTOL_STALL;
            return run;
        }
    }
    return run;
}

typedef struct {
    double x, y;
} xy_pair;

static int cmp_xy(const void *a, const void *b) {
    double u = ((const xy_pair *)a)->x, v = ((const xy_pair *)b)->x;
    return (u > v) - (u < v);
}

/* A start read off the data: sort by sigma, smooth the losses with a moving average, and
 * take mu at the half-rise crossing and s as half the distance between the quarter- and
 * three-quarter-rise crossings (where a Cauchy CDF is at 1/4 and 3/4, sigma = mu -/+ s).
 * Returns 0, or -1 when the smoothed losses do not rise. */
static int data_start(const double *x, const double *y, int n, cdcd_cauchy_params *out) {
    xy_pair *pr = NULL;
    double *cs = NULL, *sm = NULL;
    int rc = -1;
    CDCD_ALLOC(pr, n);
    CDCD_ALLOC(cs, n + 1);
    CDCD_ALLOC(sm, n);
    for (int i = 0; i < n; i++) pr[i] = (xy_pair){x[i], y[i]};
    qsort(pr, (size_t)n, sizeof *pr, cmp_xy);
    cs[0] = 0.0;
    for (int i = 0; i < n; i++) cs[i + 1] = cs[i] + pr[i].y;
    int half = (int)(LM_SMOOTH_FRAC * n / 2);
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++) {
        int a = i - half < 0 ? 0 : i - half, b = i + half + 1 > n ? n : i + half + 1;
        sm[i] = (cs[b] - cs[a]) / (b - a);
        lo = fmin(lo, sm[i]);
        hi = fmax(hi, sm[i]);
    }
    if (!(hi - lo > SCHED_MIN_RISE)) goto fail;
    double cross[3];
    const double frac[3] = {0.25, 0.5, 0.75};
    for (int k = 0; k < 3; k++) {
        double level = lo + frac[k] * (hi - lo);
        int i = 0;
        while (i < n - 1 && sm[i] < level) i++;
        cross[k] = pr[i].x;
    }
    out->mu = fmax(cross[1], 0.0);
    out->s = fmax(0.5 * (cross[2] - cross[0]), 10 * CDCD_CAUCHY_S_MIN);
    double ga = atan((pr[0].x - out->mu) / out->s), gb = atan((pr[n - 1].x - out->mu) / out->s);
    double span = fmax((gb - ga) / SCHED_PI, 0.05);
    out->h = (hi - lo) / span;
    out->o = lo - out->h * (ga / SCHED_PI + 0.5);
    rc = 0;
fail:
    free(pr);
    free(cs);
    free(sm);
    return rc;
}

static int cauchy_params_finite(const cdcd_cauchy_params *p) {
    return isfinite(p->mu) && isfinite(p->s) && isfinite(p->h) && isfinite(p->o) && p->s > 0;
}

cdcd_fit_status cdcd_cauchy_fit(const float *sigma, const float *loss, int n,
                                const cdcd_cauchy_params *warm, double tmin, double tmax,
                                cdcd_cauchy_fit_result *out) {
    double *x = NULL, *y = NULL;
    cdcd_fit_status st = CDCD_FIT_BAD_DATA;
    memset(out, 0, sizeof *out);
    out->p = (cdcd_cauchy_params){CDCD_CAUCHY_INIT_MU, CDCD_CAUCHY_INIT_S, CDCD_CAUCHY_INIT_H,
                                  CDCD_CAUCHY_INIT_O};
    if (n < 0 || (n > 0 && (!sigma || !loss)) || !range_ok(tmin, tmax)) goto done;
    int nv = 0;
    for (int i = 0; i < n; i++) nv += usable_sample(sigma[i], loss[i]);
    out->n = nv;
    out->n_dropped = n - nv;
    if (nv < CDCD_SCHEDULE_MIN_FIT_SAMPLES) {
        st = CDCD_FIT_TOO_FEW;
        goto done;
    }
    st = CDCD_FIT_NOMEM;
    x = malloc(sizeof *x * (size_t)nv);
    y = malloc(sizeof *y * (size_t)nv);
    if (!x || !y) goto done;
    double xlo = INFINITY, xhi = -INFINITY, ylo = INFINITY, yhi = -INFINITY;
    for (int i = 0, j = 0; i < n; i++) {
        if (!usable_sample(sigma[i], loss[i])) continue;
        x[j] = sigma[i];
        y[j] = loss[i];
        xlo = fmin(xlo, x[j]);
        xhi = fmax(xhi, x[j]);
        ylo = fmin(ylo, y[j]);
        yhi = fmax(yhi, y[j]);
        j++;
    }
    if (!(xhi > xlo)) {
        st = CDCD_FIT_BAD_DATA; /* one sigma only: the shape cannot be identified */
        goto done;
    }
    if (!(yhi - ylo > SCHED_MIN_RISE)) {
        st = CDCD_FIT_FLAT;
        goto done;
    }

    /* Starts: the warm start (previous fit), the seed's values, and one read off the data.
     * Each runs to convergence; the lowest cost wins. */
    cdcd_cauchy_params starts[LM_MAX_STARTS];
    int n_starts = 0;
    if (warm && cauchy_params_finite(warm)) starts[n_starts++] = *warm;
    starts[n_starts++] = (cdcd_cauchy_params){CDCD_CAUCHY_INIT_MU, CDCD_CAUCHY_INIT_S,
                                              CDCD_CAUCHY_INIT_H, CDCD_CAUCHY_INIT_O};
    if (data_start(x, y, nv, &starts[n_starts]) == 0) n_starts++;
    lm_run best;
    memset(&best, 0, sizeof best);
    int have_best = 0, any_solver_failure = 0, any_run = 0;
    for (int k = 0; k < n_starts; k++) {
        double th0[LM_N_PARAMS];
        theta_from_params(&starts[k], th0);
        lm_run r = lm_solve(x, y, nv, th0);
        any_run = 1;
        any_solver_failure |= r.solver_failed && !r.converged;
        if (!r.converged || !isfinite(r.cost)) continue;
        if (!have_best || r.cost < best.cost) {
            best = r;
            have_best = 1;
        }
    }
    if (!have_best) {
        st = any_run && any_solver_failure ? CDCD_FIT_SOLVER : CDCD_FIT_NO_CONVERGE;
        goto done;
    }
    cdcd_cauchy_params p = params_from_theta(best.th);
    out->iterations = best.iterations;
    out->rmse = sqrt(2.0 * best.cost / nv);
    if (!cauchy_params_finite(&p) || !isfinite(out->rmse)) {
        st = CDCD_FIT_NONFINITE;
        goto done;
    }
    out->p = p;
    double rise = cdcd_cauchy_eval(&p, tmax) - cdcd_cauchy_eval(&p, tmin);
    st = rise >= SCHED_MIN_RISE ? CDCD_FIT_OK : CDCD_FIT_FLAT;
done:
    free(x);
    free(y);
    out->status = st;
    return st;
}

/* ======================================================================================
 * PWL F on the log grid, and its monotone least-squares fit
 * ====================================================================================== */

typedef struct {
    double l0, dl; /* log tmin and the bin width in log sigma */
} log_grid;

static log_grid grid_of(double tmin, double tmax) {
    log_grid g = {log(tmin), (log(tmax) - log(tmin)) / CDCD_PWL_BINS};
    return g;
}

/* Bin index and position inside it of sigma (clamped to the grid). */
static int grid_locate(const log_grid *g, double sigma, double *frac) {
    double pos = sigma > 0 ? (log(sigma) - g->l0) / g->dl : 0.0;
    pos = clampd(isfinite(pos) ? pos : 0.0, 0.0, (double)CDCD_PWL_BINS);
    int b = (int)pos;
    if (b >= CDCD_PWL_BINS) b = CDCD_PWL_BINS - 1;
    *frac = pos - b;
    return b;
}

static double pwl_eval(const double *knots, const log_grid *g, double sigma) {
    double t;
    int b = grid_locate(g, sigma, &t);
    return knots[b] + t * (knots[b + 1] - knots[b]);
}

/* log sigma where the pwl F reaches u (clamped to the knot range). The first knot >= u
 * bounds a bin whose increment is positive, so there is no division by zero. */
static double pwl_inverse_log(const double *knots, const log_grid *g, double u) {
    u = clampd(u, knots[0], knots[CDCD_PWL_BINS]);
    int lo = 0, hi = CDCD_PWL_BINS; /* lower_bound: first k with knots[k] >= u */
    while (lo < hi) {
        int mid = (lo + hi) / 2;
        if (knots[mid] >= u) hi = mid;
        else lo = mid + 1;
    }
    if (lo == 0) return g->l0;
    int b = lo - 1;
    double t = (u - knots[b]) / (knots[lo] - knots[b]);
    return g->l0 + (b + clampd(t, 0.0, 1.0)) * g->dl;
}

static int pwl_degenerate(const double *knots) {
    for (int k = 0; k <= CDCD_PWL_BINS; k++)
        if (!isfinite(knots[k])) return 1;
    double rise = knots[CDCD_PWL_BINS] - knots[0];
    return !(rise > SCHED_DEGENERATE_SPAN * (1.0 + fabs(knots[0]) + fabs(knots[CDCD_PWL_BINS])));
}

/* Lawson-Hanson active-set solution of  min 1/2 x^T M x - b^T x  subject to x_j >= 0 for
 * every j with constrained[j] (the others are free). M (P x P, symmetric positive definite,
 * row-major) is not modified. x receives the solution. work needs P*P + 3P doubles.
 * Returns 0, -1 when LAPACK refuses a subsystem, -2 when the iteration limits are hit. */
static int nnls_qp(int P, const double *M, const double *b, const unsigned char *constrained,
                   double *x, double *work, int *iterations) {
    double *S = work, *z = S + (size_t)P * P, *w = z + P, *rhs = w + P;
    unsigned char passive[CDCD_PWL_KNOTS + 1], tried[CDCD_PWL_KNOTS + 1];
    int idx[CDCD_PWL_KNOTS + 1];
    if (P > CDCD_PWL_KNOTS + 1) return -1;
    double bscale = 0.0;
    for (int j = 0; j < P; j++) bscale = fmax(bscale, fabs(b[j]));
    double tol = NNLS_TOL * (1.0 + bscale);
    for (int j = 0; j < P; j++) {
        x[j] = 0.0;
        passive[j] = !constrained[j];
        tried[j] = 0;
    }
    int outer = 0;
    /* Solves M_PP z_P = b_P on the passive set; z is zero elsewhere. */
#define NNLS_SOLVE_PASSIVE()                                                                \
    do {                                                                                    \
        int np_ = 0;                                                                        \
        for (int j_ = 0; j_ < P; j_++)                                                      \
            if (passive[j_]) idx[np_++] = j_;                                               \
        for (int a_ = 0; a_ < np_; a_++) {                                                  \
            for (int c_ = 0; c_ < np_; c_++) S[a_ * np_ + c_] = M[idx[a_] * P + idx[c_]];   \
            rhs[a_] = b[idx[a_]];                                                           \
        }                                                                                   \
        int one_ = 1, info_ = 0;                                                            \
        if (np_ > 0) dposv_("U", &np_, &one_, S, &np_, rhs, &np_, &info_, 1);               \
        if (info_ != 0) return -1;                                                          \
        for (int j_ = 0; j_ < P; j_++) z[j_] = 0.0;                                         \
        for (int a_ = 0; a_ < np_; a_++) z[idx[a_]] = rhs[a_];                              \
    } while (0)

    NNLS_SOLVE_PASSIVE();
    for (int j = 0; j < P; j++) x[j] = z[j]; /* only free variables are passive: feasible */
    for (outer = 0; outer < NNLS_MAX_OUTER; outer++) {
        /* Negative gradient; the most violated held variable joins the passive set. */
        int jmax = -1;
        double wmax = tol;
        for (int j = 0; j < P; j++) {
            double s = b[j];
            for (int k = 0; k < P; k++) s -= M[j * P + k] * x[k];
            w[j] = s;
            if (constrained[j] && !passive[j] && !tried[j] && s > wmax) {
                wmax = s;
                jmax = j;
            }
        }
        if (jmax < 0) break;
        passive[jmax] = 1;
        int inner;
        for (inner = 0; inner < NNLS_MAX_INNER; inner++) {
            NNLS_SOLVE_PASSIVE();
            if (inner == 0 && !(z[jmax] > 0)) {
                /* Rounding: the variable would not move into the interior. Hold it and
                 * do not pick it again until x changes. */
                passive[jmax] = 0;
                tried[jmax] = 1;
                break;
            }
            double alpha = 2.0;
            for (int j = 0; j < P; j++)
                if (constrained[j] && passive[j] && z[j] <= 0) {
                    double a = x[j] / (x[j] - z[j]);
                    if (a < alpha) alpha = a;
                }
            if (alpha > 1.0) { /* z is feasible */
                for (int j = 0; j < P; j++) x[j] = z[j];
                memset(tried, 0, sizeof tried);
                break;
            }
            for (int j = 0; j < P; j++) {
                x[j] += alpha * (z[j] - x[j]);
                if (constrained[j] && passive[j] && x[j] <= 0) {
                    x[j] = 0.0;
                    passive[j] = 0;
                }
            }
            memset(tried, 0, sizeof tried);
        }
        if (inner == NNLS_MAX_INNER) return -2;
    }
#undef NNLS_SOLVE_PASSIVE
    if (iterations) *iterations = outer;
    if (outer == NNLS_MAX_OUTER) return -2;
    for (int j = 0; j < P; j++)
        if (constrained[j] && x[j] < 0) x[j] = 0.0;
    return 0;
}

cdcd_fit_status cdcd_pwl_fit(const float *sigma, const float *loss, int n, double tmin,
                             double tmax, const double *weight_knots, double *knots_out,
                             double *rmse, int *n_used, int *n_dropped, int *iterations) {
    enum { P = CDCD_PWL_KNOTS }; /* unknowns: F(tmin), then the 100 bin increments */
    cdcd_fit_status st = CDCD_FIT_BAD_DATA;
    double *M = NULL, *rhs = NULL, *xs = NULL, *work = NULL, *wt = NULL;
    int *bin = NULL;
    double *frac = NULL, *yv = NULL;
    int nv = 0;
    if (rmse) *rmse = 0.0;
    if (iterations) *iterations = 0;
    if (n < 0 || (n > 0 && (!sigma || !loss)) || !range_ok(tmin, tmax) || !knots_out) goto done;
    for (int i = 0; i < n; i++) nv += usable_sample(sigma[i], loss[i]);
    if (nv < CDCD_SCHEDULE_MIN_FIT_SAMPLES) {
        st = CDCD_FIT_TOO_FEW;
        goto done;
    }
    st = CDCD_FIT_NOMEM;
    M = calloc((size_t)P * P, sizeof *M);
    rhs = calloc(P, sizeof *rhs);
    xs = calloc(P, sizeof *xs);
    work = calloc((size_t)P * P + 5 * P, sizeof *work); /* nnls + b2, x2 */
    wt = calloc((size_t)nv, sizeof *wt);
    bin = calloc((size_t)nv, sizeof *bin);
    frac = calloc((size_t)nv, sizeof *frac);
    yv = calloc((size_t)nv, sizeof *yv);
    if (!M || !rhs || !xs || !work || !wt || !bin || !frac || !yv) goto done;

    log_grid g = grid_of(tmin, tmax);
    double ylo = INFINITY, yhi = -INFINITY, plo = INFINITY, phi = -INFINITY;
    for (int i = 0, j = 0; i < n; i++) {
        if (!usable_sample(sigma[i], loss[i])) continue;
        bin[j] = grid_locate(&g, sigma[i], &frac[j]);
        yv[j] = loss[i];
        ylo = fmin(ylo, yv[j]);
        yhi = fmax(yhi, yv[j]);
        plo = fmin(plo, bin[j] + frac[j]);
        phi = fmax(phi, bin[j] + frac[j]);
        j++;
    }
    if (!(phi > plo)) {
        st = CDCD_FIT_BAD_DATA; /* every sample at one grid position */
        goto done;
    }
    if (!(yhi - ylo > SCHED_MIN_RISE)) {
        st = CDCD_FIT_FLAT;
        goto done;
    }

    /* Importance weights 1 / F'(log sigma) of the schedule that drew the samples (F' is
     * constant per bin), normalised to mean 1 so the penalties scale with the data. */
    int weighted = weight_knots && !pwl_degenerate(weight_knots);
    double wsum = 0.0;
    for (int j = 0; j < nv; j++) {
        double w = 1.0;
        if (weighted) {
            double rise = weight_knots[CDCD_PWL_BINS] - weight_knots[0];
            double floor_ = PWL_WEIGHT_SLOPE_FRAC * rise / CDCD_PWL_BINS;
            w = 1.0 / fmax(weight_knots[bin[j] + 1] - weight_knots[bin[j]], floor_);
        }
        wt[j] = w;
        wsum += w;
    }
    for (int j = 0; j < nv; j++) wt[j] *= nv / wsum;

    /* Normal equations. A sample in bin b at fraction t has the design row
     * [1, 1 (x b increments below), t, 0...]: F = F(tmin) + sum_{k<b} d_k + t d_b. */
    for (int j = 0; j < nv; j++) {
        int b = bin[j], last = b + 1; /* nonzeros: columns 0..b+1 */
        double w = wt[j], t = frac[j];
        for (int a = 0; a <= last; a++) {
            double va = a == last ? t : 1.0;
            rhs[a] += w * va * yv[j];
            for (int c = a; c <= last; c++) {
                double vc = c == last ? t : 1.0;
                M[a * P + c] += w * va * vc;
            }
        }
    }
    for (int a = 0; a < P; a++)
        for (int c = 0; c < a; c++) M[a * P + c] = M[c * P + a];
    for (int k = 1; k < P; k++) M[k * P + k] += PWL_INC_RIDGE * nv;
    for (int a = 0; a < P; a++) M[a * P + a] += PWL_RIDGE * nv;

    unsigned char constrained[P];
    constrained[0] = 0; /* F(tmin) is free; increments are bounded below (monotone F) */
    for (int a = 1; a < P; a++) constrained[a] = 1;
    int it1 = 0, it2 = 0;
    int rc = nnls_qp(P, M, rhs, constrained, xs, work, &it1);
    if (rc == 0) {
        /* Second pass with the floor: d = floor + d', d' >= 0, i.e. the same problem in d'
         * with b' = b - M x_floor. */
        double rise1 = 0.0;
        for (int k = 1; k < P; k++) rise1 += xs[k];
        double fl = PWL_MIN_SLOPE_FRAC * rise1 / CDCD_PWL_BINS;
        if (fl > 0 && isfinite(fl)) {
            double *b2 = work + (size_t)P * P + 3 * P; /* spare tail of work, see alloc */
            double *x2 = b2 + P;
            for (int a = 0; a < P; a++) {
                double s_ = rhs[a];
                for (int k = 1; k < P; k++) s_ -= M[a * P + k] * fl;
                b2[a] = s_;
            }
            rc = nnls_qp(P, M, b2, constrained, x2, work, &it2);
            if (rc == 0)
                for (int k = 0; k < P; k++) xs[k] = x2[k] + (k ? fl : 0.0);
        }
    }
    if (iterations) *iterations = it1 + it2;
    if (rc == -1) {
        st = CDCD_FIT_SOLVER;
        goto done;
    }
    if (rc == -2) {
        st = CDCD_FIT_NO_CONVERGE;
        goto done;
    }
    double knots[CDCD_PWL_KNOTS];
    knots[0] = xs[0];
    for (int k = 1; k <= CDCD_PWL_BINS; k++) knots[k] = knots[k - 1] + xs[k];
    double sse = 0.0;
    for (int j = 0; j < nv; j++) {
        double r = knots[bin[j]] + frac[j] * xs[bin[j] + 1] - yv[j];
        sse += r * r;
    }
    st = CDCD_FIT_NONFINITE;
    for (int k = 0; k <= CDCD_PWL_BINS; k++)
        if (!isfinite(knots[k])) goto done;
    if (!isfinite(sse)) goto done;
    memcpy(knots_out, knots, sizeof knots);
    if (rmse) *rmse = sqrt(sse / nv);
    st = knots[CDCD_PWL_BINS] - knots[0] >= SCHED_MIN_RISE ? CDCD_FIT_OK : CDCD_FIT_FLAT;
done:
    if (n_used) *n_used = nv;
    if (n_dropped) *n_dropped = n > nv ? n - nv : 0;
    free(M);
    free(rhs);
    free(xs);
    free(work);
    free(wt);
    free(bin);
    free(frac);
    free(yv);
    return st;
}

/* ======================================================================================
 * The generic schedule
 * ====================================================================================== */

static cdcd_cauchy_params cauchy_of(const cdcd_schedule *s) {
    return (cdcd_cauchy_params){s->mu, s->s, s->h, s->o};
}

int cdcd_schedule_degenerate(const cdcd_schedule *s) {
    if (!range_ok(s->tmin, s->tmax)) return 1;
    if (s->kind == CDCD_SCHEDULE_PWL) return pwl_degenerate(s->knots);
    if (!isfinite(s->mu) || !isfinite(s->s) || !isfinite(s->h) || !isfinite(s->o)) return 1;
    if (!(s->s > 0) || !(s->h > SCHED_DEGENERATE_H)) return 1;
    double a0 = atan((s->tmin - s->mu) / s->s), a1 = atan((s->tmax - s->mu) / s->s);
    return !(a1 - a0 > SCHED_DEGENERATE_SPAN);
}

double cdcd_schedule_grid_sigma(const cdcd_schedule *s, int k) {
    if (k <= 0) return s->tmin;
    if (k >= CDCD_PWL_BINS) return s->tmax;
    log_grid g = grid_of(s->tmin, s->tmax);
    return exp(g.l0 + k * g.dl);
}

double cdcd_schedule_eval(const cdcd_schedule *s, double sigma) {
    if (s->kind == CDCD_SCHEDULE_PWL) {
        log_grid g = grid_of(s->tmin, s->tmax);
        return pwl_eval(s->knots, &g, sigma);
    }
    cdcd_cauchy_params p = cauchy_of(s);
    return cdcd_cauchy_eval(&p, sigma);
}

double cdcd_schedule_quantile(const cdcd_schedule *s, double p) {
    p = isfinite(p) ? p : 0.5;
    /* The ends are exact (and for a pwl F with flat end bins this picks the range's ends
     * rather than the first or last point where F reaches them). */
    if (p <= 0.0) return s->tmin;
    if (p >= 1.0) return s->tmax;
    if (cdcd_schedule_degenerate(s)) return log_uniform_quantile(s->tmin, s->tmax, p);
    double sigma;
    if (s->kind == CDCD_SCHEDULE_PWL) {
        log_grid g = grid_of(s->tmin, s->tmax);
        double u = s->knots[0] + p * (s->knots[CDCD_PWL_BINS] - s->knots[0]);
        sigma = exp(pwl_inverse_log(s->knots, &g, u));
    } else {
        /* F is affine in atan((sigma - mu) / s), so uniform u is uniform in that angle:
         * h and o cancel, and working with the angle avoids the 1/2 and pi round trips. */
        double a0 = atan((s->tmin - s->mu) / s->s), a1 = atan((s->tmax - s->mu) / s->s);
        sigma = s->mu + s->s * tan(a0 + p * (a1 - a0));
    }
    if (!isfinite(sigma)) return log_uniform_quantile(s->tmin, s->tmax, p);
    return clampd(sigma, s->tmin, s->tmax);
}

double cdcd_schedule_inverse(const cdcd_schedule *s, double u) {
    double fa = cdcd_schedule_eval(s, s->tmin), fb = cdcd_schedule_eval(s, s->tmax);
    double p = fb > fa ? (u - fa) / (fb - fa) : 0.5;
    if (isnan(u)) p = 0.5;
    return cdcd_schedule_quantile(s, p);
}

void cdcd_schedule_sample_sigmas(const cdcd_schedule *s, cdcd_rng *rng, int B, float *out) {
    if (B <= 0) return;
    double r = cdcd_rng_uniform(rng);
    double tmin = s->tmin, tmax = s->tmax;
    if (!range_ok(tmin, tmax)) {
        /* Only a schedule that was never initialised gets here: a bug, but training must
         * still not see NaN, so draw from the default range and say so. */
        cdcd_error("noise schedule has no valid range (%g, %g); using the defaults", tmin, tmax);
        tmin = CDCD_SCHEDULE_DEFAULT_TMIN;
        tmax = CDCD_SCHEDULE_DEFAULT_TMAX;
    }
    float lo = (float)tmin, hi = (float)tmax;
    for (int i = 0; i < B; i++) {
        double p = (i + r) / B;
        float v = (float)(tmin == s->tmin ? cdcd_schedule_quantile(s, p)
                                          : log_uniform_quantile(tmin, tmax, p));
        if (!isfinite(v)) v = (float)log_uniform_quantile(tmin, tmax, p);
        out[i] = v < lo ? lo : (v > hi ? hi : v);
    }
    /* Fisher-Yates: strata in random batch positions. */
    for (int i = B - 1; i > 0; i--) {
        int j = (int)cdcd_rng_below(rng, (uint64_t)i + 1);
        float t = out[i];
        out[i] = out[j];
        out[j] = t;
    }
}

int cdcd_schedule_timesteps(const cdcd_schedule *s, int n_steps, double *out) {
    if (n_steps < 1 || n_steps > CDCD_SCHEDULE_MAX_STEPS || !out) return -1;
    if (!range_ok(s->tmin, s->tmax)) return -1;
    int n = n_steps;
    double l_hi = log(s->tmax), l_lo = log(s->tmin);
    double gap = (l_hi - l_lo) / (n * SCHED_TIMESTEP_GAP_DIV);
    out[0] = l_hi;
    out[n] = l_lo;
    for (int k = 1; k < n; k++) out[k] = log(cdcd_schedule_quantile(s, 1.0 - (double)k / n));
    /* Strictly decreasing in log sigma with at least `gap` between neighbours: cap from
     * above going down, then lift from below going up (n * gap is far below the span, so
     * the second pass cannot undo the first). */
    for (int k = 1; k < n; k++) out[k] = fmin(out[k], out[k - 1] - gap);
    for (int k = n - 1; k >= 1; k--) out[k] = fmax(out[k], l_lo + (n - k) * gap);
    /* exp(log(x)) is off by a few ulps: in a range narrower than that, clamp (monotone) */
    for (int k = 1; k < n; k++) out[k] = clampd(exp(out[k]), s->tmin, s->tmax);
    out[0] = s->tmax;
    out[n] = s->tmin;
    return 0;
}

int cdcd_schedule_init(cdcd_schedule *s, cdcd_schedule_kind kind, double tmin, double tmax) {
    memset(s, 0, sizeof *s);
    if (!range_ok(tmin, tmax)) return -1;
    if (kind != CDCD_SCHEDULE_CAUCHY && kind != CDCD_SCHEDULE_PWL) return -1;
    s->kind = kind;
    s->tmin = tmin;
    s->tmax = tmax;
    s->mu = CDCD_CAUCHY_INIT_MU;
    s->s = CDCD_CAUCHY_INIT_S;
    s->h = CDCD_CAUCHY_INIT_H;
    s->o = CDCD_CAUCHY_INIT_O;
    if (kind == CDCD_SCHEDULE_PWL) {
        for (int k = 0; k <= CDCD_PWL_BINS; k++)
            s->knots[k] = PWL_INIT_RISE * k / CDCD_PWL_BINS;
        s->mu = s->s = s->h = s->o = 0.0; /* unused by pwl */
    }
    return 0;
}

/* Fills the record's parameter fields from the active parameters. */
static void record_params(const cdcd_schedule *s, cdcd_schedule_fit *f) {
    if (s->kind == CDCD_SCHEDULE_CAUCHY) {
        for (int k = 0; k <= CDCD_PWL_BINS; k++)
            f->knots[k] = cdcd_schedule_eval(s, cdcd_schedule_grid_sigma(s, k));
        f->mu = s->mu;
        f->s = s->s;
        f->h = s->h;
        f->o = s->o;
    } else {
        memcpy(f->knots, s->knots, sizeof f->knots);
        f->mu = cdcd_schedule_quantile(s, 0.5);
        f->s = 0.5 * (cdcd_schedule_quantile(s, 0.75) - cdcd_schedule_quantile(s, 0.25));
        f->h = s->knots[CDCD_PWL_BINS] - s->knots[0];
        f->o = s->knots[0];
    }
}

/* RMSE of the active F on the usable samples (0 when none). */
static double active_rmse(const cdcd_schedule *s, const float *sigma, const float *loss, int n) {
    double sse = 0.0;
    int nv = 0;
    for (int i = 0; sigma && loss && i < n; i++) {
        if (!usable_sample(sigma[i], loss[i])) continue;
        double r = cdcd_schedule_eval(s, sigma[i]) - loss[i];
        sse += r * r;
        nv++;
    }
    double v = nv ? sqrt(sse / nv) : 0.0;
    return isfinite(v) ? v : 0.0;
}

cdcd_fit_status cdcd_schedule_refit(cdcd_schedule *s, const float *sigma, const float *loss,
                                    int n, int64_t step) {
    cdcd_schedule_fit f;
    memset(&f, 0, sizeof f);
    f.step = step;
    f.kind = s->kind;
    cdcd_fit_status st;
    double rmse = 0.0;
    if (s->kind == CDCD_SCHEDULE_CAUCHY) {
        cdcd_cauchy_params warm = cauchy_of(s);
        cdcd_cauchy_fit_result res;
        st = cdcd_cauchy_fit(sigma, loss, n, &warm, s->tmin, s->tmax, &res);
        f.n = res.n;
        f.n_dropped = res.n_dropped;
        f.iterations = res.iterations;
        if (st == CDCD_FIT_OK) {
            s->mu = res.p.mu;
            s->s = res.p.s;
            s->h = res.p.h;
            s->o = res.p.o;
            rmse = res.rmse;
        }
    } else {
        double knots[CDCD_PWL_KNOTS];
        const double *wk = pwl_degenerate(s->knots) ? NULL : s->knots;
        st = cdcd_pwl_fit(sigma, loss, n, s->tmin, s->tmax, wk, knots, &rmse, &f.n,
                          &f.n_dropped, &f.iterations);
        if (st == CDCD_FIT_OK) memcpy(s->knots, knots, sizeof knots);
    }
    s->n_fits++;
    f.status = st;
    f.ok = st == CDCD_FIT_OK;
    if (f.ok) {
        s->has_fit = 1;
        f.rmse = rmse;
    } else {
        s->n_failures++;
        f.rmse = active_rmse(s, sigma, loss, n);
        cdcd_warn("schedule refit (%s) at step %lld failed: %s (%d usable, %d dropped); "
                  "keeping the previous parameters (%lld failures so far)",
                  cdcd_schedule_kind_name(s->kind), (long long)step, cdcd_fit_status_name(st),
                  f.n, f.n_dropped, (long long)s->n_failures);
    }
    record_params(s, &f);
    s->last = f;
    return st;
}

/* ---- serialisation ---- */

enum { SER_HEAD = 11, SER_FIT = 12 };

static void fit_to(const cdcd_schedule_fit *f, double *o) {
    o[0] = (double)f->step;
    o[1] = f->ok;
    o[2] = f->status;
    o[3] = f->kind;
    o[4] = f->mu;
    o[5] = f->s;
    o[6] = f->h;
    o[7] = f->o;
    o[8] = f->rmse;
    o[9] = f->n;
    o[10] = f->n_dropped;
    o[11] = f->iterations;
}

void cdcd_schedule_serialise(const cdcd_schedule *s, double out[CDCD_SCHEDULE_SERIAL_LEN]) {
    out[0] = CDCD_SCHEDULE_SERIAL_VERSION;
    out[1] = s->kind;
    out[2] = s->tmin;
    out[3] = s->tmax;
    out[4] = s->mu;
    out[5] = s->s;
    out[6] = s->h;
    out[7] = s->o;
    out[8] = (double)s->n_fits;
    out[9] = (double)s->n_failures;
    out[10] = s->has_fit;
    fit_to(&s->last, out + SER_HEAD);
    memcpy(out + SER_HEAD + SER_FIT, s->knots, sizeof s->knots);
    memcpy(out + SER_HEAD + SER_FIT + CDCD_PWL_KNOTS, s->last.knots, sizeof s->last.knots);
}

/* An integer-valued double in [lo, hi]. */
static int int_in(double v, double lo, double hi) {
    return isfinite(v) && v == floor(v) && v >= lo && v <= hi;
}

int cdcd_schedule_deserialise(cdcd_schedule *s, const double *in, size_t n) {
    if (!in || n != CDCD_SCHEDULE_SERIAL_LEN) return -1;
    for (size_t i = 0; i < n; i++)
        if (!isfinite(in[i])) return -1;
    if (in[0] != CDCD_SCHEDULE_SERIAL_VERSION) return -1;
    if (!int_in(in[1], 0, 1) || !range_ok(in[2], in[3])) return -1;
    const double big = 9007199254740992.0; /* 2^53 */
    if (!int_in(in[8], 0, big) || !int_in(in[9], 0, in[8]) || !int_in(in[10], 0, 1)) return -1;
    const double *f = in + SER_HEAD;
    if (!int_in(f[0], -big, big) || !int_in(f[1], 0, 1) || !int_in(f[2], 0, CDCD_FIT_NOMEM) ||
        !int_in(f[3], 0, 1) || !int_in(f[9], 0, INT32_MAX) || !int_in(f[10], 0, INT32_MAX) ||
        !int_in(f[11], 0, INT32_MAX))
        return -1;
    cdcd_schedule t;
    memset(&t, 0, sizeof t);
    t.kind = (cdcd_schedule_kind)(int)in[1];
    t.tmin = in[2];
    t.tmax = in[3];
    t.mu = in[4];
    t.s = in[5];
    t.h = in[6];
    t.o = in[7];
    t.n_fits = (int64_t)in[8];
    t.n_failures = (int64_t)in[9];
    t.has_fit = (int)in[10];
    memcpy(t.knots, in + SER_HEAD + SER_FIT, sizeof t.knots);
    if (t.kind == CDCD_SCHEDULE_CAUCHY) {
        if (!(t.s > 0) || !(t.h >= 0) || !(t.mu >= 0)) return -1;
    } else {
        for (int k = 0; k < CDCD_PWL_BINS; k++)
            if (t.knots[k + 1] < t.knots[k]) return -1;
    }
    t.last.step = (int64_t)f[0];
    t.last.ok = (int)f[1];
    t.last.status = (int)f[2];
    t.last.kind = (int)f[3];
    t.last.mu = f[4];
    t.last.s = f[5];
    t.last.h = f[6];
    t.last.o = f[7];
    t.last.rmse = f[8];
    t.last.n = (int)f[9];
    t.last.n_dropped = (int)f[10];
    t.last.iterations = (int)f[11];
    memcpy(t.last.knots, in + SER_HEAD + SER_FIT + CDCD_PWL_KNOTS, sizeof t.last.knots);
    *s = t;
    return 0;
}
