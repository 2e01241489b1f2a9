/* Device specs: see device.h. */
#include "device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "model.h"

/* -1 auto, -2 cpu, -3 cuda (no index), N >= 0 cuda:N; -4 not a spec. */
static int parse(const char *spec) {
    if (!spec || !*spec || strcmp(spec, "auto") == 0) return -1;
    if (strcmp(spec, "cpu") == 0) return -2;
    if (strcmp(spec, "cuda") == 0) return -3;
    if (strncmp(spec, "cuda:", 5) != 0 || !spec[5]) return -4;
    char *end;
    long n = strtol(spec + 5, &end, 10);
    if (*end || n < 0 || n >= CDCD_CUDA_MAX_DEVICES || spec[5] == '+' || spec[5] == '-' || spec[5] == ' ') return -4;
    return (int)n;
}

int cdcd_device_check(const char *spec, char *err, size_t errlen) {
    if (parse(spec) != -4) return 0;
    snprintf(err, errlen, "must be \"auto\", \"cpu\", \"cuda\" or \"cuda:N\" (N from 0 to %d)", CDCD_CUDA_MAX_DEVICES - 1);
    return -1;
}

int cdcd_device_resolve(const char *spec, int local_rank, char *err, size_t errlen) {
    int p = parse(spec);
    if (p == -4) {
        cdcd_device_check(spec, err, errlen);
        return -2;
    }
    if (p == -2) return CDCD_DEVICE_CPU;
    int n = cdcd_cuda_device_count();
    if (p == -1 && n == 0) return CDCD_DEVICE_CPU;
    if (n == 0) {
        snprintf(err, errlen, "device \"%s\": %s", spec,
                 cdcd_cuda_built() ? "no GPU is visible (no driver or device, or CUDA_VISIBLE_DEVICES hides them)"
                                   : "this build has no CUDA backend (nvcc was not found at build time)");
        return -2;
    }
    if (p >= 0) {
        if (p < n) return p;
        snprintf(err, errlen, "device \"%s\": only %d GPU%s visible", spec, n, n == 1 ? " is" : "s are");
        return -2;
    }
    return (local_rank > 0 ? local_rank : 0) % n; /* auto or cuda: one GPU per rank of the host */
}
