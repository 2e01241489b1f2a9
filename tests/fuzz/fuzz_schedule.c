/* Fuzz target: the schedule deserialiser (core/schedule.c cdcd_schedule_deserialise), the
 * way a checkpoint load restores a schedule (the "schedule" section: CDCD_SCHEDULE_SERIAL_LEN
 * doubles), and everything training and sampling then do with what it accepted.
 *
 * Input: the doubles, little-endian (zero-padded or cut to the serial length). They are
 * restored as they are, then again with the fields the validator checks first made
 * plausible (version, kind from the input, integer fields floored and made non-negative),
 * so that mutations reach the parameter checks and the code behind them.
 * Invariants for an accepted schedule: serialise gives back the same doubles; eval,
 * inverse and quantile are finite and inverse/quantile stay in [tmin, tmax]; sampled
 * sigmas are in [tmin, tmax] and never NaN; timesteps run from tmax down to tmin exactly
 * and never increase (strictly decreasing in a run config's range); a refit on a few
 * samples keeps these true. */
#include <math.h>

#include "fuzz.h"
#include "rng.h"
#include "schedule.h"

#define LEN CDCD_SCHEDULE_SERIAL_LEN

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static void check_schedule(const cdcd_schedule *s) {
    double lo = s->tmin, hi = s->tmax;
    for (int k = 0; k <= 8; k++) {
        double p = k / 8.0;
        double q = cdcd_schedule_quantile(s, p);
        FUZZ_ASSERT(q >= lo && q <= hi);
        double g = cdcd_schedule_grid_sigma(s, k * CDCD_PWL_BINS / 8);
        FUZZ_ASSERT(isfinite(g));
        double f = cdcd_schedule_eval(s, g);
        if (isfinite(f)) {
            double x = cdcd_schedule_inverse(s, f);
            FUZZ_ASSERT(x >= lo && x <= hi);
        }
    }
    (void)cdcd_schedule_degenerate(s);
    cdcd_rng rng;
    cdcd_rng_init(&rng, 1, 2);
    float sig[16];
    cdcd_schedule_sample_sigmas(s, &rng, 16, sig);
    for (int i = 0; i < 16; i++) FUZZ_ASSERT(sig[i] >= (float)lo && sig[i] <= (float)hi);
    enum { N = 16 };
    double ts[N + 1];
    FUZZ_ASSERT(cdcd_schedule_timesteps(s, N, ts) == 0);
    FUZZ_ASSERT(ts[0] == hi && ts[N] == lo);
    /* strictly decreasing inside the ranges a run config can give (1e-4 <= tmin < tmax <= 1e5,
     * floats, so at least a float's spacing apart); a crafted range of subnormals, or one a
     * few ulps wide, may not hold 17 distinct doubles */
    int strict = lo >= 1e-4 && hi <= 1e5 && hi / lo > 1 + 1e-9;
    for (int k = 1; k <= N; k++) {
        FUZZ_ASSERT(ts[k] >= lo && ts[k] <= hi);
        FUZZ_ASSERT(strict ? ts[k] < ts[k - 1] : ts[k] <= ts[k - 1]);
    }
}

static void restore(const double *in, const uint8_t *extra, size_t extra_len) {
    cdcd_schedule s;
    memset(&s, 0xa5, sizeof s);
    if (cdcd_schedule_deserialise(&s, in, LEN) != 0) return;
    double out[LEN];
    cdcd_schedule_serialise(&s, out);
    for (int i = 0; i < LEN; i++) FUZZ_ASSERT(out[i] == in[i]); /* == : -0.0 may come back 0.0 */
    check_schedule(&s);
    /* a refit from the restored state, on samples drawn from the input's bytes */
    enum { M = 24 };
    float sigma[M], loss[M];
    for (int i = 0; i < M; i++) {
        uint8_t a = extra_len ? extra[(2 * i) % extra_len] : (uint8_t)i;
        uint8_t b = extra_len ? extra[(2 * i + 1) % extra_len] : (uint8_t)(3 * i);
        sigma[i] = (float)(s.tmin * pow(s.tmax / s.tmin, a / 255.0));
        loss[i] = (float)(b / 16.0);
    }
    (void)cdcd_schedule_refit(&s, sigma, loss, M, 1);
    check_schedule(&s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    double in[LEN];
    memset(in, 0, sizeof in);
    memcpy(in, data, size < sizeof in ? size : sizeof in);
    /* a section of another length is refused */
    cdcd_schedule s;
    if (size / sizeof(double) != LEN) FUZZ_ASSERT(cdcd_schedule_deserialise(&s, in, size / sizeof(double)) == -1);
    restore(in, data, size);
    /* plausible header fields */
    in[0] = CDCD_SCHEDULE_SERIAL_VERSION;
    in[1] = size ? data[0] & 1 : 0;
    static const int ints[] = {8, 9, 10, 11, 12, 13, 14, 20, 21, 22};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++) {
        double v = in[ints[i]];
        in[ints[i]] = isfinite(v) ? fmin(fabs(floor(v)), 1000.0) : 0.0;
    }
    in[9] = fmin(in[9], in[8]);
    in[10] = fmin(in[10], 1);
    in[12] = fmin(in[12], 1);
    in[13] = fmin(in[13], CDCD_FIT_NOMEM);
    in[14] = fmin(in[14], 1);
    restore(in, data, size);
    return 0;
}
