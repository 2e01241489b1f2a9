#include "blas.h"

#include <cblas.h>
#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define BLAS_REEXEC_MARK "CDCD_BLAS_REEXEC" /* "1": our choice applied; "2": fell back */
#define BLAS_AVX512_CORE "SkylakeX"
#define BLAS_AVX2_CORE "Haswell"
#define SELFTEST_TOL 1e-4 /* relative to the largest |reference| of each product */

const char *cdcd_blas_core_name(void) { return openblas_get_corename(); }

void cdcd_blas_set_threads(int n) { openblas_set_num_threads(n > 0 ? n : 1); }

int cdcd_blas_threads(void) { return openblas_get_num_threads(); }

/* ---- the thread policy (blas.h): a list of live users and their demands, under a lock */

struct cdcd_blas_user {
    int demand;
    struct cdcd_blas_user *next;
};

static pthread_mutex_t policy_lock = PTHREAD_MUTEX_INITIALIZER;
static cdcd_blas_user *policy_users;

/* Caller holds policy_lock. Sets the global count to the largest demand; with no user
 * left, the count stays where it is (nothing calls BLAS through a model any more). */
static void policy_apply_locked(void) {
    int want = 0;
    for (cdcd_blas_user *u = policy_users; u; u = u->next)
        if (u->demand > want) want = u->demand;
    if (want >= 1 && want != openblas_get_num_threads()) openblas_set_num_threads(want);
}

cdcd_blas_user *cdcd_blas_user_add(int demand) {
    cdcd_blas_user *u = calloc(1, sizeof *u);
    if (!u) return NULL;
    u->demand = demand > 0 ? demand : 1;
    pthread_mutex_lock(&policy_lock);
    u->next = policy_users;
    policy_users = u;
    policy_apply_locked();
    pthread_mutex_unlock(&policy_lock);
    return u;
}

void cdcd_blas_user_demand(cdcd_blas_user *u, int demand) {
    if (!u) return;
    demand = demand > 0 ? demand : 1;
    pthread_mutex_lock(&policy_lock);
    if (u->demand != demand) {
        u->demand = demand;
        policy_apply_locked();
    }
    pthread_mutex_unlock(&policy_lock);
}

void cdcd_blas_user_remove(cdcd_blas_user *u) {
    if (!u) return;
    pthread_mutex_lock(&policy_lock);
    for (cdcd_blas_user **pp = &policy_users; *pp; pp = &(*pp)->next)
        if (*pp == u) {
            *pp = u->next;
            break;
        }
    policy_apply_locked();
    pthread_mutex_unlock(&policy_lock);
    free(u);
}

static int generic_core(const char *name) {
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                          "Atom", "Katmai", "Coppermine", "Northwood", "Banias"};
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (name && strcmp(name, generic[i]) == 0) return 1;
    return 0;
}

/* The AVX-512 kernels need F, BW, DQ, VL and CD (what OpenBLAS itself checks). */
static const char *best_core(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        return BLAS_AVX512_CORE;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return BLAS_AVX2_CORE;
    return NULL;
}

/* One product of the layout the model uses, against a double-precision loop. Shapes are
 * odd on purpose: every kernel edge path runs. Returns the worst relative error. */
static double selftest_case(int M, int N, int K, int trans_b, int threads) {
    float *a = malloc(sizeof(float) * (size_t)M * K), *b = malloc(sizeof(float) * (size_t)N * K);
    float *c = malloc(sizeof(float) * (size_t)M * N);
    double worst = INFINITY;
    if (!a || !b || !c) goto done;
    uint32_t s = 12345u;
    for (int i = 0; i < M * K; i++) s = s * 1664525u + 1013904223u, a[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < N * K; i++) s = s * 1664525u + 1013904223u, b[i] = (float)(s >> 8) / 16777216.0f - 0.5f;
    for (int i = 0; i < M * N; i++) c[i] = 1.0f; /* beta 0 must ignore it */
    openblas_set_num_threads(threads);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N, K, 1.0f, a,
                K, b, trans_b ? K : N, 0.0f, c, N);
    double max_ref = 0.0, max_err = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double r = 0.0;
            for (int k = 0; k < K; k++)
                r += (double)a[(size_t)i * K + k] *
                     (double)(trans_b ? b[(size_t)j * K + k] : b[(size_t)k * N + j]);
            double e = fabs(r - (double)c[(size_t)i * N + j]);
            if (fabs(r) > max_ref) max_ref = fabs(r);
            if (!(e <= max_err)) max_err = e; /* NaN counts as worst */
        }
    worst = max_ref > 0.0 ? max_err / max_ref : max_err;
done:
    free(a);
    free(b);
    free(c);
    return worst;
}

double cdcd_blas_selftest(void) {
    static const int cases[][4] = {{67, 131, 259, 1}, {129, 33, 517, 0}, {5, 977, 64, 1},
                                   {128, 128, 64, 1}, {1, 7, 3, 0},      {97, 70, 1025, 1}};
    double worst = 0.0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
        for (int threads = 1; threads <= 2; threads++) {
            double e = selftest_case(cases[i][0], cases[i][1], cases[i][2], cases[i][3], threads);
            if (!(e <= worst)) worst = e;
        }
    openblas_set_num_threads(1);
    return worst;
}

static void reexec(char **argv, const char *core, const char *mark) {
    setenv("OPENBLAS_CORETYPE", core, 1);
    setenv(BLAS_REEXEC_MARK, mark, 1);
    execv("/proc/self/exe", argv);
}

void cdcd_blas_ensure_kernel(int argc, char **argv) {
    (void)argc;
    const char *mark = getenv(BLAS_REEXEC_MARK);
    if (mark && strcmp(mark, "1") == 0) {
        /* Re-executed with our choice: trust it only after checking it. */
        double err = cdcd_blas_selftest();
        if (err <= SELFTEST_TOL) return;
        const char *core = getenv("OPENBLAS_CORETYPE");
        if (core && strcmp(core, BLAS_AVX2_CORE) != 0) {
            cdcd_warn("OpenBLAS %s kernels failed the start-up check (relative error %.3g); "
                      "using %s", core, err, BLAS_AVX2_CORE);
            reexec(argv, BLAS_AVX2_CORE, "2");
        }
        cdcd_warn("OpenBLAS %s kernels failed the start-up check (relative error %.3g)",
                  core ? core : "?", err);
        return;
    }
    if (getenv("OPENBLAS_CORETYPE") || mark) return;
    const char *off = getenv("CDCD_BLAS_NO_REEXEC");
    if (off && *off && strcmp(off, "0") != 0) return;
    if (!generic_core(openblas_get_corename())) return;
    const char *core = best_core();
    if (!core) return;
    reexec(argv, core, "1");
    /* exec failed: go on with the slow kernels rather than not at all. */
    cdcd_warn("OpenBLAS uses generic kernels and re-exec with OPENBLAS_CORETYPE=%s failed; "
              "set it yourself for 3-5x faster matrix products", core);
    unsetenv(BLAS_REEXEC_MARK);
}
