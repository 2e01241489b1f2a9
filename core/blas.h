/* OpenBLAS set-up shared by every binary.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its kernels from the CPU model. Under some
 * hypervisors it cannot identify the CPU and falls back to the generic "Prescott" SSE3
 * kernels: sgemm then runs at a quarter of the machine's rate (measured here: 35 against
 * 141 GFLOP/s with 2 threads). OpenBLAS reads OPENBLAS_CORETYPE only when it is loaded, so
 * cdcd_blas_ensure_kernel() re-executes the program once with OPENBLAS_CORETYPE=Haswell
 * when the CPU has AVX2+FMA and OpenBLAS chose a generic core. Haswell (AVX2) rather than
 * SkylakeX (AVX-512): the AVX-512 kernels of older OpenBLAS builds are known to compute
 * wrong results on some processors, and Haswell is what the project's figures assume.
 * A user's own OPENBLAS_CORETYPE is never overridden; CDCD_BLAS_NO_REEXEC=1 disables this. */
#ifndef CDCD_BLAS_H
#define CDCD_BLAS_H

/* Call first thing in main(). Returns only when no re-exec was needed or it failed. */
void cdcd_blas_ensure_kernel(int argc, char **argv);
/* The kernel family OpenBLAS is using, e.g. "Haswell". */
const char *cdcd_blas_core_name(void);
/* Sets the BLAS thread count (global to the process in OpenBLAS). */
void cdcd_blas_set_threads(int n);

#endif
