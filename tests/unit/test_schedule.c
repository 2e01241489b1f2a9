/* Noise-level schedules: Cauchy fit (recovery, bounds, bad data), PWL fit (recovery,
 * monotonicity, importance weights), inverse sampling (KS against an independent CDF,
 * stratification), sampler timesteps, serialisation. Reference CDFs are computed here from
 * the formulas, not through the library, so a wrong inverse shows up. */
#include <stdint.h>

#include "check.h"
#include "log.h"
#include "rng.h"
#include "schedule.h"
#include "test.h"

#define TMIN CDCD_SCHEDULE_DEFAULT_TMIN
#define TMAX CDCD_SCHEDULE_DEFAULT_TMAX
#define PI_ 3.14159265358979323846

/* ---- references ---- */

static double cauchy_F(double mu, double s, double h, double o, double x) {
    return h * (atan((x - mu) / s) / PI_ + 0.5) + o;
}

/* The normalised CDF the sampler should follow: (F(x) - F(tmin)) / (F(tmax) - F(tmin)). */
static double cauchy_cdf(double mu, double s, double x) {
    double a0 = atan((TMIN - mu) / s), a1 = atan((TMAX - mu) / s);
    double p = (atan((x - mu) / s) - a0) / (a1 - a0);
    return p < 0 ? 0 : (p > 1 ? 1 : p);
}

/* PWL reference: linear interpolation of knots in log sigma on the uniform log grid. */
static double pwl_ref_F(const double *knots, double x) {
    double pos = (log(x) - log(TMIN)) / ((log(TMAX) - log(TMIN)) / CDCD_PWL_BINS);
    if (pos <= 0) return knots[0];
    if (pos >= CDCD_PWL_BINS) return knots[CDCD_PWL_BINS];
    int b = (int)pos;
    return knots[b] + (pos - b) * (knots[b + 1] - knots[b]);
}

static double log_uniform(cdcd_rng *r) {
    return exp(log(TMIN) + cdcd_rng_uniform(r) * (log(TMAX) - log(TMIN)));
}

static int cmp_double(const void *a, const void *b) {
    double u = *(const double *)a, v = *(const double *)b;
    return (u > v) - (u < v);
}

/* Kolmogorov-Smirnov distance of n values against a CDF given by a callback. Sorts x. */
typedef double (*cdf_fn)(const void *ctx, double x);
static double ks_distance(double *x, int n, cdf_fn cdf, const void *ctx) {
    qsort(x, (size_t)n, sizeof *x, cmp_double);
    double d = 0;
    for (int i = 0; i < n; i++) {
        double c = cdf(ctx, x[i]);
        d = fmax(d, fmax(fabs(c - (double)i / n), fabs((double)(i + 1) / n - c)));
    }
    return d;
}

typedef struct {
    double mu, s;
} cauchy_ctx;
static double cdf_cauchy_cb(const void *ctx, double x) {
    const cauchy_ctx *c = ctx;
    return cauchy_cdf(c->mu, c->s, x);
}
static double cdf_pwl_cb(const void *ctx, double x) {
    const double *k = ctx;
    double p = (pwl_ref_F(k, x) - k[0]) / (k[CDCD_PWL_BINS] - k[0]);
    return p < 0 ? 0 : (p > 1 ? 1 : p);
}
static double cdf_loguniform_cb(const void *ctx, double x) {
    (void)ctx;
    double p = log(x / TMIN) / log(TMAX / TMIN);
    return p < 0 ? 0 : (p > 1 ? 1 : p);
}

/* Synthetic (sigma, loss): sigma log-uniform on [TMIN, TMAX], loss = F(sigma) + N(0, sd). */
static void make_cauchy_data(cdcd_rng *r, int n, double mu, double s, double h, double o,
                             double sd, float *sig, float *loss) {
    for (int i = 0; i < n; i++) {
        sig[i] = (float)log_uniform(r);
        loss[i] = (float)(cauchy_F(mu, s, h, o, sig[i]) + sd * cdcd_rng_normal(r));
    }
}

/* ---- Cauchy fit ---- */

#define N_FIT 2000

TEST(test_cauchy_noiseless_exact) {
    static float sig[N_FIT], loss[N_FIT];
    cdcd_rng r;
    cdcd_rng_init(&r, 11, 0);
    make_cauchy_data(&r, N_FIT, 5.0, 3.0, 7.0, -1.0, 0.0, sig, loss);
    cdcd_cauchy_fit_result res;
    cdcd_fit_status st = cdcd_cauchy_fit(sig, loss, N_FIT, NULL, TMIN, TMAX, &res);
    ASSERT(st == CDCD_FIT_OK);
    /* Only float rounding of the samples (~1e-7 relative) separates data and model. */
    EXPECT_NEAR(res.p.mu, 5.0, 1e-3);
    EXPECT_NEAR(res.p.s, 3.0, 1e-3);
    EXPECT_NEAR(res.p.h, 7.0, 1e-3);
    EXPECT_NEAR(res.p.o, -1.0, 1e-3);
    EXPECT(res.rmse < 1e-5);
    EXPECT(res.n == N_FIT && res.n_dropped == 0);
}

/* Known parameters, noisy losses: several parameter sets (including one far from the
 * seed's initial values, and one with mu near its bound) and seeds. Each tolerance is about
 * 3-5 times the largest error measured over 6 seeds (printed per case); the estimates are
 * deterministic for a given seed, so a pass is not luck. */
TEST(test_cauchy_recovers_known_params) {
    static float sig[N_FIT], loss[N_FIT];
    const struct {
        double mu, s, h, o, sd;
        double tol_mu, tol_s, tol_h, tol_o;
    } cases[] = {
        {5.0, 3.0, 7.0, -1.0, 0.1, 0.12, 0.12, 0.12, 0.1},
        {1.5, 0.8, 5.5, -0.3, 0.2, 0.12, 0.1, 0.15, 0.12},
        {30.0, 12.0, 4.0, -0.2, 0.1, 1.0, 0.8, 0.1, 0.1},
        {0.5, 2.0, 6.0, -0.5, 0.3, 0.6, 0.2, 1.0, 1.0},
    };
    int seeds = test_fast_mode() ? 2 : 6;
    double worst[4] = {0};
    for (size_t c = 0; c < CDCD_ARRAY_LEN(cases); c++) {
        double case_err[4] = {0};
        for (int seed = 0; seed < seeds; seed++) {
            cdcd_rng r;
            cdcd_rng_init(&r, 100 + seed, c);
            make_cauchy_data(&r, N_FIT, cases[c].mu, cases[c].s, cases[c].h, cases[c].o,
                             cases[c].sd, sig, loss);
            cdcd_cauchy_fit_result res;
            cdcd_fit_status st = cdcd_cauchy_fit(sig, loss, N_FIT, NULL, TMIN, TMAX, &res);
            EXPECTF(st == CDCD_FIT_OK, "case %zu seed %d: %s", c, seed, cdcd_fit_status_name(st));
            if (st != CDCD_FIT_OK) continue;
            double e[4] = {fabs(res.p.mu - cases[c].mu), fabs(res.p.s - cases[c].s),
                           fabs(res.p.h - cases[c].h), fabs(res.p.o - cases[c].o)};
            double tol[4] = {cases[c].tol_mu, cases[c].tol_s, cases[c].tol_h, cases[c].tol_o};
            for (int k = 0; k < 4; k++) {
                EXPECTF(e[k] <= tol[k], "case %zu seed %d param %d: error %.4f > %.4f", c, seed, k,
                        e[k], tol[k]);
                worst[k] = fmax(worst[k], e[k] / tol[k]);
                case_err[k] = fmax(case_err[k], e[k]);
            }
            /* The residual is the noise: rmse within 10% of its standard deviation. */
            EXPECTF(fabs(res.rmse - cases[c].sd) < 0.1 * cases[c].sd, "case %zu rmse %.4f sd %.3f",
                    c, res.rmse, cases[c].sd);
        }
        printf("  case mu %.1f s %.1f h %.1f o %.1f noise %.1f: max |error| over %d seeds "
               "mu %.3f s %.3f h %.3f o %.3f\n", cases[c].mu, cases[c].s, cases[c].h, cases[c].o,
               cases[c].sd, seeds, case_err[0], case_err[1], case_err[2], case_err[3]);
    }
    printf("  cauchy recovery: worst error / tolerance mu %.2f s %.2f h %.2f o %.2f\n", worst[0],
           worst[1], worst[2], worst[3]);
}

TEST(test_cauchy_warm_start_matches_cold) {
    static float sig[N_FIT], loss[N_FIT];
    cdcd_rng r;
    cdcd_rng_init(&r, 7, 1);
    make_cauchy_data(&r, N_FIT, 8.0, 4.0, 6.0, -0.8, 0.15, sig, loss);
    cdcd_cauchy_fit_result cold, warm;
    ASSERT(cdcd_cauchy_fit(sig, loss, N_FIT, NULL, TMIN, TMAX, &cold) == CDCD_FIT_OK);
    cdcd_cauchy_params near = {cold.p.mu * 1.1, cold.p.s * 0.9, cold.p.h, cold.p.o};
    ASSERT(cdcd_cauchy_fit(sig, loss, N_FIT, &near, TMIN, TMAX, &warm) == CDCD_FIT_OK);
    EXPECT_NEAR(warm.rmse, cold.rmse, 1e-6);
    EXPECT_NEAR(warm.p.mu, cold.p.mu, 1e-3);
    EXPECT_NEAR(warm.p.s, cold.p.s, 1e-3);
}

/* Data whose unconstrained best fit violates the bounds: the fit must sit on them. */
TEST(test_cauchy_bounds_hold) {
    static float sig[N_FIT], loss[N_FIT];
    cdcd_rng r;
    cdcd_rng_init(&r, 21, 0);
    /* Shifted down: F(0) of the truth is about -1.8, so F(0) >= 0 must bind. */
    make_cauchy_data(&r, N_FIT, 5.0, 3.0, 7.0, -3.0, 0.05, sig, loss);
    cdcd_cauchy_fit_result res;
    ASSERT(cdcd_cauchy_fit(sig, loss, N_FIT, NULL, TMIN, TMAX, &res) == CDCD_FIT_OK);
    double f0 = cauchy_F(res.p.mu, res.p.s, res.p.h, res.p.o, 0.0);
    EXPECTF(f0 >= -1e-9, "F(0) = %g", f0);
    EXPECT(f0 < 1e-3); /* active */
    EXPECT(res.p.mu >= 0 && res.p.s >= CDCD_CAUCHY_S_MIN && res.p.h >= 0);
    /* Truth with a negative location: mu >= 0 must bind. */
    make_cauchy_data(&r, N_FIT, -20.0, 10.0, 6.0, 0.0, 0.05, sig, loss);
    ASSERT(cdcd_cauchy_fit(sig, loss, N_FIT, NULL, TMIN, TMAX, &res) == CDCD_FIT_OK);
    EXPECTF(res.p.mu >= 0 && res.p.mu < 1e-6, "mu = %g", res.p.mu);
    f0 = cauchy_F(res.p.mu, res.p.s, res.p.h, res.p.o, 0.0);
    EXPECTF(f0 >= -1e-9, "F(0) = %g", f0);
}

static void expect_sane_sampling(const cdcd_schedule *s, uint64_t seed) {
    float out[256];
    cdcd_rng r;
    cdcd_rng_init(&r, seed, 9);
    cdcd_schedule_sample_sigmas(s, &r, 256, out);
    int bad = 0;
    for (int i = 0; i < 256; i++) bad += !(isfinite(out[i]) && out[i] >= (float)TMIN && out[i] <= (float)TMAX);
    EXPECTF(bad == 0, "%d bad sigmas", bad);
    double ts[51];
    EXPECT(cdcd_schedule_timesteps(s, 50, ts) == 0);
    for (int k = 1; k <= 50; k++) EXPECT(isfinite(ts[k]) && ts[k] < ts[k - 1]);
}

TEST(test_cauchy_bad_data_keeps_params) {
    enum { N = 600 };
    static float sig[N], loss[N];
    cdcd_rng r;
    cdcd_rng_init(&r, 31, 0);
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    make_cauchy_data(&r, N, 4.0, 2.5, 6.5, -0.7, 0.1, sig, loss);
    ASSERT(cdcd_schedule_refit(&s, sig, loss, N, 200) == CDCD_FIT_OK);
    EXPECT(s.last.ok == 1 && s.last.step == 200 && s.n_fits == 1 && s.n_failures == 0);
    const cdcd_schedule good = s;

    struct {
        const char *what;
        cdcd_fit_status want;
    } cases[] = {
        {"all NaN loss", CDCD_FIT_TOO_FEW},   {"n = 3", CDCD_FIT_TOO_FEW},
        {"constant loss", CDCD_FIT_FLAT},     {"negative sigma", CDCD_FIT_TOO_FEW},
        {"inf sigma", CDCD_FIT_TOO_FEW},      {"inf loss", CDCD_FIT_TOO_FEW},
        {"one sigma", CDCD_FIT_BAD_DATA},     {"n = 0, NULL", CDCD_FIT_TOO_FEW},
        {"decreasing loss", CDCD_FIT_FLAT},
    };
    for (size_t c = 0; c < CDCD_ARRAY_LEN(cases); c++) {
        make_cauchy_data(&r, N, 4.0, 2.5, 6.5, -0.7, 0.1, sig, loss);
        int n = N;
        const float *ps = sig, *pl = loss;
        for (int i = 0; i < N; i++) {
            switch (c) {
            case 0: loss[i] = NAN; break;
            case 1: n = 3; break;
            case 2: loss[i] = 3.25f; break;
            case 3: sig[i] = -sig[i]; break;
            case 4: sig[i] = INFINITY; break;
            case 5: loss[i] = i % 2 ? INFINITY : -INFINITY; break;
            case 6: sig[i] = 2.0f; break;
            case 7: n = 0; ps = pl = NULL; break;
            case 8: loss[i] = (float)(10.0 - log(sig[i])); break; /* F is monotone: best is flat */
            }
        }
        int64_t fails = s.n_failures;
        cdcd_fit_status st = cdcd_schedule_refit(&s, ps, pl, n, 400 + (int64_t)c);
        EXPECTF(st == cases[c].want, "%s: status %s, want %s", cases[c].what,
                cdcd_fit_status_name(st), cdcd_fit_status_name(cases[c].want));
        EXPECTF(st != CDCD_FIT_OK, "%s accepted", cases[c].what);
        EXPECT(s.n_failures == fails + 1);
        EXPECT(s.last.ok == 0 && s.last.status == (int)st && s.last.step == 400 + (int64_t)c);
        EXPECTF(s.mu == good.mu && s.s == good.s && s.h == good.h && s.o == good.o,
                "%s: parameters changed", cases[c].what);
        /* The record carries the kept parameters and a finite rmse. */
        EXPECT(s.last.mu == good.mu && s.last.h == good.h && isfinite(s.last.rmse));
        expect_sane_sampling(&s, 40 + c);
    }
    EXPECT(s.n_fits == 1 + (int64_t)CDCD_ARRAY_LEN(cases));
}

TEST(test_cauchy_some_bad_samples_dropped) {
    enum { N = 1000 };
    static float sig[N], loss[N];
    cdcd_rng r;
    cdcd_rng_init(&r, 41, 0);
    make_cauchy_data(&r, N, 4.0, 2.5, 6.5, -0.7, 0.1, sig, loss);
    for (int i = 0; i < 50; i++) {
        loss[i * 7] = NAN;
        sig[i * 11 + 3] = -1.0f;
    }
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    ASSERT(cdcd_schedule_refit(&s, sig, loss, N, 1) == CDCD_FIT_OK);
    EXPECTF(s.last.n_dropped == 100 - 5 && s.last.n == N - 95, "dropped %d used %d",
            s.last.n_dropped, s.last.n); /* 5 indices are hit by both patterns */
    EXPECT_NEAR(s.mu, 4.0, 0.3);
    EXPECT_NEAR(s.s, 2.5, 0.3);
}

/* ---- sampling ---- */

#define KS_B 64
#define KS_BATCHES 300

TEST(test_sampling_cauchy_ks_and_strata) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    s.mu = 6.0;
    s.s = 2.5;
    s.h = 7.0;
    s.o = -1.2;
    cauchy_ctx ctx = {s.mu, s.s};
    static double all[KS_B * KS_BATCHES];
    float out[KS_B];
    double batch[KS_B];
    cdcd_rng r;
    cdcd_rng_init(&r, 51, 0);
    int sorted_batches = 0;
    double worst_batch = 0, worst_offset = 0;
    for (int m = 0; m < KS_BATCHES; m++) {
        cdcd_schedule_sample_sigmas(&s, &r, KS_B, out);
        int sorted = 1;
        for (int i = 0; i < KS_B; i++) {
            ASSERT(isfinite(out[i]) && out[i] >= (float)TMIN && out[i] <= (float)TMAX);
            batch[i] = all[m * KS_B + i] = out[i];
            if (i && out[i] < out[i - 1]) sorted = 0;
        }
        sorted_batches += sorted;
        /* Stratified: one stratum each, so a single batch is within 1/B of the CDF (plus
         * float rounding of sigma)... */
        worst_batch = fmax(worst_batch, ks_distance(batch, KS_B, cdf_cauchy_cb, &ctx));
        /* ...and the sorted values sit at (i + r) / B with one common offset r. */
        double r0 = cauchy_cdf(ctx.mu, ctx.s, batch[0]) * KS_B;
        for (int i = 0; i < KS_B; i++) {
            double off = cauchy_cdf(ctx.mu, ctx.s, batch[i]) * KS_B - i;
            worst_offset = fmax(worst_offset, fabs(off - r0));
        }
    }
    EXPECTF(worst_batch <= 1.0 / KS_B + 1e-5, "per-batch KS %.5f > 1/B", worst_batch);
    EXPECTF(worst_offset < 1e-3, "strata offsets differ by %.3g", worst_offset);
    EXPECT(sorted_batches == 0); /* positions are shuffled */
    double ks = ks_distance(all, KS_B * KS_BATCHES, cdf_cauchy_cb, &ctx);
    /* 1.63/sqrt(n) is the 1% critical value for iid samples; stratified ones do far better. */
    double crit = 1.63 / sqrt((double)KS_B * KS_BATCHES);
    printf("  cauchy sampling: pooled KS %.5f (iid 1%% critical %.5f), worst batch %.5f\n", ks,
           crit, worst_batch);
    EXPECT(ks < crit);
    /* A wrong mapping is caught: the same samples against a shifted F fail. */
    cauchy_ctx wrong = {ctx.mu * 1.3, ctx.s};
    EXPECT(ks_distance(all, KS_B * KS_BATCHES, cdf_cauchy_cb, &wrong) > 5 * crit);
}

TEST(test_sampling_degenerate_falls_back_to_log_uniform) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    const double bad[][4] = {
        {3.0, 2.0, 0.0, 1.0},          /* h = 0: flat */
        {1e9, 1e-4, 6.0, -1.0},        /* the rise lies far beyond tmax */
        {NAN, 2.0, 6.0, -1.0},         /* non-finite (never produced by a fit) */
        {3.0, 2.0, INFINITY, -1.0},
    };
    for (size_t c = 0; c < CDCD_ARRAY_LEN(bad); c++) {
        s.mu = bad[c][0];
        s.s = bad[c][1];
        s.h = bad[c][2];
        s.o = bad[c][3];
        EXPECT(cdcd_schedule_degenerate(&s));
        static double all[KS_B * 50];
        float out[KS_B];
        cdcd_rng r;
        cdcd_rng_init(&r, 61, c);
        for (int m = 0; m < 50; m++) {
            cdcd_schedule_sample_sigmas(&s, &r, KS_B, out);
            for (int i = 0; i < KS_B; i++) {
                EXPECT(isfinite(out[i]) && out[i] >= (float)TMIN && out[i] <= (float)TMAX);
                all[m * KS_B + i] = out[i];
            }
        }
        double ks = ks_distance(all, KS_B * 50, cdf_loguniform_cb, NULL);
        EXPECTF(ks <= 1.0 / KS_B + 1e-5, "case %zu: KS vs log-uniform %.4f", c, ks);
        double ts[101];
        ASSERT(cdcd_schedule_timesteps(&s, 100, ts) == 0);
        for (int k = 0; k <= 100; k++) /* geometric spacing */
            EXPECT_NEAR(log(ts[k]), log(TMAX) - k / 100.0 * log(TMAX / TMIN), 1e-9);
    }
}

TEST(test_timesteps_cauchy) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    s.mu = 6.0;
    s.s = 2.5;
    s.h = 7.0;
    s.o = -1.2;
    enum { N = 200 };
    static double t[N + 1];
    ASSERT(cdcd_schedule_timesteps(&s, N, t) == 0);
    EXPECT(t[0] == TMAX && t[N] == TMIN);
    int mono = 1;
    double worst = 0;
    for (int k = 1; k <= N; k++) {
        mono &= t[k] < t[k - 1];
        /* Uniform in u: the normalised F of step k is 1 - k/N. */
        worst = fmax(worst, fabs(cauchy_cdf(s.mu, s.s, t[k]) - (1.0 - (double)k / N)));
    }
    EXPECT(mono);
    EXPECTF(worst < 1e-9, "timesteps off uniform-in-u by %.3g", worst);
    EXPECT(cdcd_schedule_timesteps(&s, 0, t) == -1);
    EXPECT(cdcd_schedule_timesteps(&s, CDCD_SCHEDULE_MAX_STEPS + 1, t) == -1);

    /* A near-step F: almost every u maps to sigma ~ 10; still strictly decreasing. */
    s.mu = 10.0;
    s.s = CDCD_CAUCHY_S_MIN;
    enum { N2 = 2000 };
    static double t2[N2 + 1];
    ASSERT(cdcd_schedule_timesteps(&s, N2, t2) == 0);
    EXPECT(t2[0] == TMAX && t2[N2] == TMIN);
    mono = 1;
    for (int k = 1; k <= N2; k++) mono &= t2[k] < t2[k - 1] && isfinite(t2[k]);
    EXPECT(mono);
    /* The middle step sits on the step, moved at most n * gap (span / 1000) in log sigma by
     * the de-duplication. */
    EXPECTF(fabs(log(t2[N2 / 2] / 10.0)) <= log(TMAX / TMIN) / 1000, "middle step %.5f", t2[N2 / 2]);
    /* Sharper than any fit produces (a deserialised state may hold it): F^-1 returns
     * exactly 10 for most u, so neighbours coincide until they are pushed apart. */
    s.s = 1e-13;
    ASSERT(cdcd_schedule_timesteps(&s, N2, t2) == 0);
    EXPECT(t2[0] == TMAX && t2[N2] == TMIN);
    mono = 1;
    for (int k = 1; k <= N2; k++) mono &= t2[k] < t2[k - 1] && isfinite(t2[k]);
    EXPECT(mono);
    EXPECTF(fabs(log(t2[N2 / 2] / 10.0)) <= log(TMAX / TMIN) / 1000, "middle step %.5f", t2[N2 / 2]);
    /* n = 1: just the endpoints. */
    double t1[2];
    ASSERT(cdcd_schedule_timesteps(&s, 1, t1) == 0);
    EXPECT(t1[0] == TMAX && t1[1] == TMIN);
}

/* ---- PWL ---- */

/* A monotone loss curve, logistic in log sigma (the shape of the paper's Figure 2). */
static double pwl_truth(double x) { return 0.2 + 5.0 / (1.0 + exp(-1.5 * (log(x) - log(4.0)))); }

#define N_PWL 4000

TEST(test_pwl_fits_known_curve) {
    static float sig[N_PWL], loss[N_PWL];
    cdcd_rng r;
    cdcd_rng_init(&r, 71, 0);
    for (int i = 0; i < N_PWL; i++) {
        sig[i] = (float)log_uniform(&r);
        loss[i] = (float)(pwl_truth(sig[i]) + 0.1 * cdcd_rng_normal(&r));
    }
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    ASSERT(cdcd_schedule_refit(&s, sig, loss, N_PWL, 200) == CDCD_FIT_OK);
    double worst = 0, mean = 0;
    for (int k = 0; k <= CDCD_PWL_BINS; k++) {
        double x = cdcd_schedule_grid_sigma(&s, k);
        double e = fabs(s.knots[k] - pwl_truth(x));
        worst = fmax(worst, e);
        mean += e / CDCD_PWL_KNOTS;
        if (k) EXPECT(s.knots[k] >= s.knots[k - 1]);
    }
    printf("  pwl recovery (n %d, noise 0.1, 100 bins): max knot error %.4f, mean %.4f, rmse %.4f\n",
           N_PWL, worst, mean, s.last.rmse);
    /* ~40 samples per bin at sd 0.1; measured max 0.014, mean 0.005. */
    EXPECTF(worst < 0.05, "max knot error %.4f", worst);
    EXPECTF(mean < 0.015, "mean knot error %.4f", mean);
    EXPECT(fabs(s.last.rmse - 0.1) < 0.01);
    /* The record: rise, F(tmin), and the median of the warped distribution near the
     * logistic's midpoint (sigma 4). */
    EXPECT_NEAR(s.last.h, s.knots[CDCD_PWL_BINS] - s.knots[0], 1e-12);
    EXPECT_NEAR(s.last.o, s.knots[0], 1e-12);
    EXPECTF(fabs(log(s.last.mu / 4.0)) < 0.1, "median %.3f", s.last.mu);
}

TEST(test_pwl_monotone_on_noisy_data) {
    static float sig[N_PWL], loss[N_PWL];
    cdcd_rng r;
    cdcd_rng_init(&r, 72, 0);
    for (int i = 0; i < N_PWL; i++) {
        sig[i] = (float)log_uniform(&r);
        /* Non-monotone truth (a dip around sigma 20) under heavy noise. */
        double l = log(sig[i]);
        loss[i] = (float)(pwl_truth(sig[i]) - 3.0 * exp(-(l - 3.0) * (l - 3.0)) +
                          1.0 * cdcd_rng_normal(&r));
    }
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    ASSERT(cdcd_schedule_refit(&s, sig, loss, N_PWL, 1) == CDCD_FIT_OK);
    int decreasing = 0;
    for (int k = 1; k <= CDCD_PWL_BINS; k++) decreasing += s.knots[k] < s.knots[k - 1];
    EXPECT(decreasing == 0);
    /* Monotone over a fine sweep too (not only at the knots). */
    double prev = -INFINITY;
    for (int i = 0; i <= 5000; i++) {
        double x = exp(log(TMIN) + i / 5000.0 * log(TMAX / TMIN));
        double f = cdcd_schedule_eval(&s, x);
        EXPECT(f >= prev);
        prev = f;
    }
    expect_sane_sampling(&s, 5);
}

TEST(test_pwl_inverse_consistent) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    /* A curve with flat stretches (zero increments) to exercise the inverse's bin search. */
    for (int k = 0; k <= CDCD_PWL_BINS; k++) {
        double x = cdcd_schedule_grid_sigma(&s, k);
        s.knots[k] = (k < 20 ? 0.0 : pwl_truth(x)) + (k > 80 ? 0.0 : 0.0);
        if (k > 85) s.knots[k] = s.knots[85];
    }
    double f0 = s.knots[0], f1 = s.knots[CDCD_PWL_BINS], worst_u = 0, worst_x = 0;
    for (int i = 0; i <= 10000; i++) {
        double u = f0 + (f1 - f0) * i / 10000.0;
        double x = cdcd_schedule_inverse(&s, u);
        EXPECT(x >= TMIN && x <= TMAX);
        worst_u = fmax(worst_u, fabs(cdcd_schedule_eval(&s, x) - u));
    }
    for (int i = 0; i <= 10000; i++) {
        double x = exp(log(TMIN) + i / 10000.0 * log(TMAX / TMIN));
        double pos = i / 10000.0 * CDCD_PWL_BINS;
        if (pos <= 20.0 || pos >= 85.0) continue; /* flat: F^-1(F(x)) is the bin's start */
        worst_x = fmax(worst_x, fabs(log(cdcd_schedule_inverse(&s, cdcd_schedule_eval(&s, x)) / x)));
    }
    EXPECTF(worst_u < 1e-12 * (1 + fabs(f1)), "F(F^-1(u)) off by %.3g", worst_u);
    EXPECTF(worst_x < 1e-9, "F^-1(F(x)) off by %.3g (log)", worst_x);
    /* Out-of-range u clamps to the ends. */
    EXPECT(cdcd_schedule_inverse(&s, f0 - 5) == TMIN);
    EXPECT(cdcd_schedule_inverse(&s, f1 + 5) == TMAX);
    EXPECT(isfinite(cdcd_schedule_inverse(&s, NAN)));
}

TEST(test_pwl_sampling_ks_and_timesteps) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    for (int k = 0; k <= CDCD_PWL_BINS; k++) s.knots[k] = pwl_truth(cdcd_schedule_grid_sigma(&s, k));
    static double all[KS_B * KS_BATCHES];
    double batch[KS_B];
    float out[KS_B];
    cdcd_rng r;
    cdcd_rng_init(&r, 81, 0);
    double worst_batch = 0;
    for (int m = 0; m < KS_BATCHES; m++) {
        cdcd_schedule_sample_sigmas(&s, &r, KS_B, out);
        for (int i = 0; i < KS_B; i++) batch[i] = all[m * KS_B + i] = out[i];
        worst_batch = fmax(worst_batch, ks_distance(batch, KS_B, cdf_pwl_cb, s.knots));
    }
    double ks = ks_distance(all, KS_B * KS_BATCHES, cdf_pwl_cb, s.knots);
    double crit = 1.63 / sqrt((double)KS_B * KS_BATCHES);
    printf("  pwl sampling: pooled KS %.5f (iid 1%% critical %.5f), worst batch %.5f\n", ks, crit,
           worst_batch);
    EXPECT(ks < crit);
    EXPECTF(worst_batch <= 1.0 / KS_B + 1e-5, "per-batch KS %.5f", worst_batch);
    /* Against the log-uniform CDF the same samples must fail (the warping is real). */
    EXPECT(ks_distance(all, KS_B * KS_BATCHES, cdf_loguniform_cb, NULL) > 5 * crit);

    enum { N = 200 };
    double t[N + 1];
    ASSERT(cdcd_schedule_timesteps(&s, N, t) == 0);
    EXPECT(t[0] == TMAX && t[N] == TMIN);
    double worst = 0;
    for (int k = 1; k <= N; k++) {
        EXPECT(t[k] < t[k - 1]);
        worst = fmax(worst, fabs(cdf_pwl_cb(s.knots, t[k]) - (1.0 - (double)k / N)));
    }
    EXPECTF(worst < 1e-9, "pwl timesteps off uniform-in-u by %.3g", worst);
}

/* Samples drawn from a warped schedule, then refitted: the importance weights undo the
 * sampling density, so the curve is recovered where samples exist. */
TEST(test_pwl_refit_from_warped_samples) {
    cdcd_schedule s;
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    for (int k = 0; k <= CDCD_PWL_BINS; k++) s.knots[k] = pwl_truth(cdcd_schedule_grid_sigma(&s, k));
    static float sig[N_PWL], loss[N_PWL];
    cdcd_rng r;
    cdcd_rng_init(&r, 91, 0);
    for (int m = 0; m < N_PWL / 50; m++) cdcd_schedule_sample_sigmas(&s, &r, 50, sig + m * 50);
    for (int i = 0; i < N_PWL; i++) loss[i] = (float)(pwl_truth(sig[i]) + 0.1 * cdcd_rng_normal(&r));
    ASSERT(cdcd_schedule_refit(&s, sig, loss, N_PWL, 400) == CDCD_FIT_OK);
    /* Check the knots between the 2% and 98% quantiles (where the warped density puts
     * samples; the flat tails get few and are set by the smoothness penalty). */
    double lo = cdcd_schedule_quantile(&s, 0.02), hi = cdcd_schedule_quantile(&s, 0.98), worst = 0;
    for (int k = 0; k <= CDCD_PWL_BINS; k++) {
        double x = cdcd_schedule_grid_sigma(&s, k);
        if (x < lo || x > hi) continue;
        worst = fmax(worst, fabs(s.knots[k] - pwl_truth(x)));
    }
    printf("  pwl refit from warped samples: max knot error %.4f on [%.2f, %.2f]\n", worst, lo, hi);
    EXPECTF(worst < 0.08, "max knot error %.4f", worst); /* measured 0.023 */
}

/* The weights decide a compromise: losses 0 in bin 50 and 1 in bin 51 cannot both be met by
 * a continuous PWL (they share knot 51); for least squares the level at knot 51 is the
 * weighted mean of the two groups, 1/2 unweighted and 1/11 when bin 50 weighs 10 times more
 * (its F' ten times smaller). The increment penalty pulls the weighted cases part of the way
 * back towards 1/2, so the test asks for the right side, a clear shift, and symmetry. */
TEST(test_pwl_importance_weights_applied) {
    enum { N = 400 };
    float sig[N], loss[N];
    double l0 = log(TMIN), dl = (log(TMAX) - l0) / CDCD_PWL_BINS;
    for (int i = 0; i < N; i++) {
        int group = i % 4;
        int bin = group == 0 ? 10 : group == 1 ? 50 : group == 2 ? 51 : 90;
        double fr = ((i / 4) + 0.5) / (N / 4);
        sig[i] = (float)exp(l0 + (bin + fr) * dl);
        loss[i] = group == 0 ? -1.0f : group == 1 ? 0.0f : group == 2 ? 1.0f : 2.0f;
    }
    double wk[CDCD_PWL_KNOTS], out[CDCD_PWL_KNOTS], level[3];
    for (int dir = 0; dir < 3; dir++) {
        double f = 0;
        for (int k = 0; k <= CDCD_PWL_BINS; k++) {
            wk[k] = f;
            double slope = 1.0;
            if (dir == 1 && k == 50) slope = 0.1; /* bin 50 drawn 10x less: weight 10x */
            if (dir == 2 && k == 51) slope = 0.1;
            f += slope;
        }
        ASSERT(cdcd_pwl_fit(sig, loss, N, TMIN, TMAX, dir ? wk : NULL, out, NULL, NULL, NULL, NULL) ==
               CDCD_FIT_OK);
        level[dir] = out[51];
    }
    printf("  pwl weights: F at the shared knot, unweighted %.4f, bin 50 x10 %.4f, bin 51 x10 %.4f "
           "(pure least squares: 0.5, 0.0909, 0.9091)\n", level[0], level[1], level[2]);
    EXPECT_NEAR(level[0], 0.5, 0.02);
    EXPECTF(level[1] < 0.2, "bin 50 weighted: %.4f", level[1]);
    EXPECTF(level[2] > 0.8, "bin 51 weighted: %.4f", level[2]);
    EXPECT_NEAR(level[1] + level[2], 1.0, 0.02);
}

/* ---- generic state, serialisation, names ---- */

TEST(test_serialise_round_trip_and_corruption) {
    static float sig[N_FIT], loss[N_FIT];
    cdcd_rng r;
    cdcd_rng_init(&r, 101, 0);
    make_cauchy_data(&r, N_FIT, 5.0, 3.0, 7.0, -1.0, 0.1, sig, loss);
    for (int kind = 0; kind < 2; kind++) {
        cdcd_schedule s, t;
        ASSERT(cdcd_schedule_init(&s, (cdcd_schedule_kind)kind, TMIN, TMAX) == 0);
        ASSERT(cdcd_schedule_refit(&s, sig, loss, N_FIT, 1200) == CDCD_FIT_OK);
        float nan_loss[16];
        for (int i = 0; i < 16; i++) nan_loss[i] = NAN;
        EXPECT(cdcd_schedule_refit(&s, sig, nan_loss, 16, 1400) != CDCD_FIT_OK);
        double a[CDCD_SCHEDULE_SERIAL_LEN], b[CDCD_SCHEDULE_SERIAL_LEN];
        cdcd_schedule_serialise(&s, a);
        ASSERT(cdcd_schedule_deserialise(&t, a, CDCD_SCHEDULE_SERIAL_LEN) == 0);
        cdcd_schedule_serialise(&t, b);
        EXPECT(memcmp(a, b, sizeof a) == 0);
        EXPECT(t.kind == s.kind && t.n_fits == 2 && t.n_failures == 1 && t.has_fit == 1);
        EXPECT(t.last.step == 1400 && t.last.ok == 0 && t.last.n == 0);
        for (int i = 1; i < 50; i++) {
            double x = TMIN * pow(TMAX / TMIN, i / 50.0);
            EXPECT(cdcd_schedule_eval(&t, x) == cdcd_schedule_eval(&s, x));
        }
        /* Same rng -> same sigmas. */
        float o1[32], o2[32];
        cdcd_rng r1, r2;
        cdcd_rng_init(&r1, 5, 5);
        cdcd_rng_init(&r2, 5, 5);
        cdcd_schedule_sample_sigmas(&s, &r1, 32, o1);
        cdcd_schedule_sample_sigmas(&t, &r2, 32, o2);
        EXPECT(memcmp(o1, o2, sizeof o1) == 0);

        /* Each corruption is refused and leaves the target untouched. */
        const cdcd_schedule before = t;
        for (int c = 0; c < 8; c++) {
            memcpy(b, a, sizeof a);
            size_t n = CDCD_SCHEDULE_SERIAL_LEN;
            switch (c) {
            case 0: n--; break;
            case 1: b[0] = 2; break;                /* version */
            case 2: b[1] = 7; break;                /* kind */
            case 3: b[2] = -1; break;               /* tmin */
            case 4: b[3] = b[2]; break;             /* tmax <= tmin */
            case 5: b[5] = NAN; break;              /* non-finite */
            case 6: b[9] = b[8] + 1; break;         /* more failures than fits */
            case 7:                                  /* pwl: decreasing knots; cauchy: s <= 0 */
                if (kind == CDCD_SCHEDULE_PWL) b[11 + 12 + 40] = b[11 + 12 + 39] - 1;
                else b[5] = 0;
                break;
            }
            EXPECTF(cdcd_schedule_deserialise(&t, b, n) == -1, "kind %d corruption %d accepted", kind,
                    c);
            EXPECT(memcmp(&t, &before, sizeof t) == 0);
        }
    }
}

/* Found by tests/fuzz/fuzz_schedule.c: a (checkpoint) schedule whose range is narrower than
 * the rounding of exp(log(sigma)) gave interior timesteps outside [tmin, tmax]. */
TEST(test_timesteps_stay_in_a_tiny_range) {
    const double ranges[][2] = {{1.7669274407116413e-284, 1.766927440712025e-284},
                                {1e300, 1.0000000000001e300},
                                {1.0, 1.0 + 1e-15}};
    for (int kind = 0; kind < 2; kind++)
        for (size_t r = 0; r < sizeof ranges / sizeof ranges[0]; r++) {
            cdcd_schedule s;
            ASSERT(cdcd_schedule_init(&s, kind, ranges[r][0], ranges[r][1]) == 0);
            enum { N = 16 };
            double ts[N + 1];
            ASSERT(cdcd_schedule_timesteps(&s, N, ts) == 0);
            EXPECT(ts[0] == s.tmax && ts[N] == s.tmin);
            for (int k = 1; k <= N; k++) {
                EXPECT(ts[k] >= s.tmin && ts[k] <= s.tmax);
                EXPECT(ts[k] <= ts[k - 1]);
            }
        }
}

TEST(test_init_and_names) {
    cdcd_schedule s;
    EXPECT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 0.0, 1.0) == -1);
    EXPECT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 2.0, 1.0) == -1);
    EXPECT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, 0.1, INFINITY) == -1);
    EXPECT(cdcd_schedule_init(&s, (cdcd_schedule_kind)3, 0.1, 1.0) == -1);
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_CAUCHY, TMIN, TMAX) == 0);
    EXPECT(s.mu == CDCD_CAUCHY_INIT_MU && s.s == CDCD_CAUCHY_INIT_S && s.h == CDCD_CAUCHY_INIT_H &&
           s.o == CDCD_CAUCHY_INIT_O && s.n_fits == 0 && !s.has_fit);
    /* The seed's start satisfies F(0) >= 0. */
    EXPECT(cdcd_schedule_eval(&s, 0.0) >= 0);
    ASSERT(cdcd_schedule_init(&s, CDCD_SCHEDULE_PWL, TMIN, TMAX) == 0);
    EXPECT(!cdcd_schedule_degenerate(&s));
    /* The initial pwl schedule is log-uniform. */
    for (int i = 1; i < 10; i++) EXPECT_NEAR(cdcd_schedule_quantile(&s, i / 10.0), TMIN * pow(TMAX / TMIN, i / 10.0), 1e-9 * TMAX);
    EXPECT_STREQ(cdcd_schedule_kind_name(CDCD_SCHEDULE_PWL), "pwl");
    EXPECT(cdcd_schedule_parse_kind("cauchy") == CDCD_SCHEDULE_CAUCHY);
    EXPECT(cdcd_schedule_parse_kind("pwl") == CDCD_SCHEDULE_PWL);
    EXPECT(cdcd_schedule_parse_kind("linear") == -1 && cdcd_schedule_parse_kind(NULL) == -1);
    EXPECT_STREQ(cdcd_fit_status_name(CDCD_FIT_FLAT), "flat");
    EXPECT(CDCD_SCHEDULE_DEFAULT_WINDOW >= 500 && CDCD_SCHEDULE_DEFAULT_REFIT_EVERY == 200);
    /* A schedule that was never initialised still yields no NaN (and logs an error). */
    cdcd_schedule z;
    memset(&z, 0, sizeof z);
    float out[16];
    cdcd_rng r;
    cdcd_rng_init(&r, 1, 1);
    cdcd_log_level lv = cdcd_log_get_level();
    cdcd_log_set_level(CDCD_LOG_OFF);
    cdcd_schedule_sample_sigmas(&z, &r, 16, out);
    cdcd_log_set_level(lv);
    for (int i = 0; i < 16; i++)
        EXPECT(isfinite(out[i]) && out[i] >= (float)TMIN && out[i] <= (float)TMAX);
    double ts[5];
    EXPECT(cdcd_schedule_timesteps(&z, 4, ts) == -1);
}

/* The trainer's loop in miniature: the schedule drives its own sampling, losses follow a
 * fixed Cauchy curve plus noise, and every refit must stay close to the curve where the
 * schedule samples (its 5..95% quantiles). This catches a fit that is fine on log-uniform
 * data but unstable when fed its own warped samples. */
TEST(test_refit_loop_converges) {
    enum { B = 32, WIN = CDCD_SCHEDULE_DEFAULT_WINDOW };
    static float sig[WIN], loss[WIN];
    /* cauchy, pwl: measured worst 0.09 and 0.095 here; 0.24 for pwl over 80 simulated
     * refits with other seeds. */
    const double tol[2] = {0.15, 0.25};
    for (int kind = 0; kind < 2; kind++) {
        int seeds = test_fast_mode() ? 1 : 3, rounds = 6;
        double worst_all = 0, mean_all = 0;
        for (int seed = 0; seed < seeds; seed++) {
            cdcd_schedule s;
            ASSERT(cdcd_schedule_init(&s, (cdcd_schedule_kind)kind, TMIN, TMAX) == 0);
            cdcd_rng r;
            cdcd_rng_init(&r, 111 + seed, kind);
            for (int round = 0; round < rounds; round++) {
                for (int m = 0; m < WIN / B; m++) cdcd_schedule_sample_sigmas(&s, &r, B, sig + m * B);
                for (int i = 0; i < WIN; i++)
                    loss[i] = (float)(cauchy_F(12.0, 5.0, 6.0, -0.8, sig[i]) + 0.2 * cdcd_rng_normal(&r));
                EXPECT(cdcd_schedule_refit(&s, sig, loss, WIN, (round + 1) * 200) == CDCD_FIT_OK);
                double worst = 0;
                for (int i = 1; i < 20; i++) {
                    double x = cdcd_schedule_quantile(&s, i / 20.0);
                    worst = fmax(worst, fabs(cdcd_schedule_eval(&s, x) - cauchy_F(12.0, 5.0, 6.0, -0.8, x)));
                }
                EXPECTF(worst < tol[kind], "%s seed %d round %d: %.4f", cdcd_schedule_kind_name(s.kind),
                        seed, round, worst);
                worst_all = fmax(worst_all, worst);
                mean_all += worst / (seeds * rounds);
            }
            EXPECT(s.n_failures == 0);
        }
        printf("  %s refit loop (%d samples, noise 0.2): |F - truth| on the 5..95%% quantiles, "
               "worst %.4f, mean of per-refit worst %.4f\n",
               cdcd_schedule_kind_name((cdcd_schedule_kind)kind), WIN, worst_all, mean_all);
    }
}

int main(void) {
    cdcd_log_set_level(CDCD_LOG_ERROR); /* refit failures warn; the tests provoke many */
    RUN(test_cauchy_noiseless_exact);
    RUN(test_cauchy_recovers_known_params);
    RUN(test_cauchy_warm_start_matches_cold);
    RUN(test_cauchy_bounds_hold);
    RUN(test_cauchy_bad_data_keeps_params);
    RUN(test_cauchy_some_bad_samples_dropped);
    RUN(test_sampling_cauchy_ks_and_strata);
    RUN(test_sampling_degenerate_falls_back_to_log_uniform);
    RUN(test_timesteps_cauchy);
    RUN(test_pwl_fits_known_curve);
    RUN(test_pwl_monotone_on_noisy_data);
    RUN(test_pwl_inverse_consistent);
    RUN(test_pwl_sampling_ks_and_timesteps);
    RUN(test_pwl_refit_from_warped_samples);
    RUN(test_pwl_importance_weights_applied);
    RUN(test_serialise_round_trip_and_corruption);
    RUN(test_timesteps_stay_in_a_tiny_range);
    RUN(test_init_and_names);
    RUN(test_refit_loop_converges);
    return test_summary();
}
