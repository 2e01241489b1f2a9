/* The CUDA backend (core/cuda/): device memory on one GPU, cuBLASLt GEMMs (TF32) and one
 * kernel family per file, behind the table of backend.h. Built when the Makefile finds nvcc
 * (CUDA_HOME, default /usr/local/cuda; CUDA=0 turns it off); without it these calls say so.
 * The device is chosen by the run config's "device" ("auto", "cpu", "cuda", "cuda:N"),
 * CUDA_VISIBLE_DEVICES honoured (cdcd_device_resolve). */
#ifndef CDCD_BACKEND_CUDA_H
#define CDCD_BACKEND_CUDA_H

#include <stddef.h>

#include "backend.h"

#define CDCD_CUDA_NAME_MAX 256
#define CDCD_CUDA_MAX_DEVICES 64

/* 1 when this build has the CUDA backend. */
int cdcd_cuda_built(void);
/* GPUs usable by this process (0 without the backend, a driver or a device). */
int cdcd_cuda_device_count(void);

typedef struct {
    char name[CDCD_CUDA_NAME_MAX];
    size_t total_bytes, free_bytes;
    int major, minor; /* compute capability */
} cdcd_cuda_device_info;
/* 0, or -1 when there is no such device. */
int cdcd_cuda_device_query(int device, cdcd_cuda_device_info *out);

/* A backend on GPU `device` (its own stream and cuBLASLt handle). NULL with err when the
 * build has no CUDA, there is no such device, or it cannot be initialised. */
cdcd_backend *cdcd_backend_cuda_create(int device, int max_segments, char *err, size_t errlen);

#endif
