/* Where a model runs: the run config's "device" and the --device flags. "auto" (the
 * default) is the GPU when this build has the CUDA backend and a GPU is visible, else the
 * CPU; "cpu"; "cuda" (the first GPU, or for rank r of a distributed job on this host the GPU
 * r mod count); "cuda:N" (GPU N). GPU numbers count the GPUs CUDA_VISIBLE_DEVICES leaves. */
#ifndef CDCD_DEVICE_H
#define CDCD_DEVICE_H

#include <stddef.h>

#define CDCD_DEVICE_SPEC_MAX 24 /* "cuda:63", and room for any int after "cuda:" */

/* 0 when spec is one of the forms above (N in [0, CDCD_CUDA_MAX_DEVICES)), else -1 with err.
 * Syntax only: no device is looked for. */
int cdcd_device_check(const char *spec, char *err, size_t errlen);

/* The device index for cdcd_model_create_on: CDCD_DEVICE_CPU (-1) or a GPU. local_rank: this
 * process's rank on its host (0 alone). -1 is returned for "cpu" and for "auto" without a GPU;
 * a GPU spec that names no visible GPU fails: -2 with err. */
int cdcd_device_resolve(const char *spec, int local_rank, char *err, size_t errlen);

#endif
