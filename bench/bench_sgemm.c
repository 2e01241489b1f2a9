/* sgemm probe: the machine's achievable single-precision GEMM rate with OpenBLAS.
 * usage: bench_sgemm [threads] [rows]   prints one JSON line {"threads","gflops",...}.
 * Shapes close to the model's (M = batch*seq rows, K, N = d_model multiples) so the
 * ceiling it gives is the one the training step can actually reach. rows defaults to
 * 4,096 (a 32 x 128 training batch); 128 gives the rate of one story's products at
 * sampling time, where OpenBLAS's fixed costs (packing, thread hand-off) weigh more. */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>

#include "blas.h"
#include "clock.h"

#define PROBE_REPS 7
#define PROBE_MIN_FLOP 2e9 /* per timed repetition: small products are repeated */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    cdcd_blas_ensure_kernel(argc, argv);
    int threads = argc > 1 ? atoi(argv[1]) : 2;
    int m = argc > 2 ? atoi(argv[2]) : 4096;
    if (threads < 1 || m < 1) {
        fprintf(stderr, "usage: bench_sgemm [threads >= 1] [rows >= 1]\n");
        return 2;
    }
    int shapes[][2] = {{256, 768}, {512, 2048}, {1024, 1024}, {256, 30522 / 4}};
    openblas_set_num_threads(threads);
    printf("{\"threads\":%d,\"rows\":%d,\"kernel\":\"%s\",\"shapes\":[", threads, m, cdcd_blas_core_name());
    double best_total = 0;
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int k = shapes[s][0], n = shapes[s][1];
        float *a = malloc(sizeof(float) * (size_t)m * k);
        float *b = malloc(sizeof(float) * (size_t)k * n);
        float *c = malloc(sizeof(float) * (size_t)m * n);
        for (size_t i = 0; i < (size_t)m * k; i++) a[i] = (float)(i % 7) * 0.01f;
        for (size_t i = 0; i < (size_t)k * n; i++) b[i] = (float)(i % 5) * 0.01f;
        double rates[PROBE_REPS];
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a, k, b, n, 0.f, c, n);
        double flop = 2.0 * m * n * k;
        int inner = flop >= PROBE_MIN_FLOP ? 1 : (int)(PROBE_MIN_FLOP / flop) + 1;
        for (int r = 0; r < PROBE_REPS; r++) {
            double t0 = cdcd_now_s();
            for (int i = 0; i < inner; i++)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.f, a, k, b, n, 0.f, c, n);
            double dt = cdcd_now_s() - t0;
            rates[r] = flop * inner / dt * 1e-9;
        }
        qsort(rates, PROBE_REPS, sizeof rates[0], cmp_double);
        double med = rates[PROBE_REPS / 2];
        best_total += med;
        printf("%s{\"m\":%d,\"k\":%d,\"n\":%d,\"gflops\":%.1f}", s ? "," : "", m, k, n, med);
        free(a);
        free(b);
        free(c);
    }
    printf("],\"gflops\":%.1f}\n", best_total / (double)(sizeof shapes / sizeof shapes[0]));
    return 0;
}
