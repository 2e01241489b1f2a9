/* backend_cuda.h for a build without the CUDA backend (the Makefile found no nvcc, or
 * CUDA=0): there is no GPU to offer, and asking for one says why. With the backend, the
 * same functions live in core/cuda/backend_cuda.cu and this file compiles to nothing. */
#ifndef CDCD_HAVE_CUDA

#include <stdio.h>
#include <string.h>

#include "backend_cuda.h"

int cdcd_cuda_built(void) { return 0; }

int cdcd_cuda_device_count(void) { return 0; }

int cdcd_cuda_device_query(int device, cdcd_cuda_device_info *out) {
    (void)device;
    memset(out, 0, sizeof *out);
    return -1;
}

cdcd_backend *cdcd_backend_cuda_create(int device, int max_segments, char *err, size_t errlen) {
    (void)device, (void)max_segments;
    snprintf(err, errlen, "this build has no CUDA backend (nvcc was not found at build time: install the CUDA "
             "toolkit, or set CUDA_HOME, and rebuild)");
    return NULL;
}

#else
typedef int cdcd_backend_cuda_none_unused; /* ISO C: a translation unit is never empty */
#endif
