/* OpenBLAS set-up shared by every binary.
 *
 * Debian's OpenBLAS 0.3.21 (DYNAMIC_ARCH) picks its kernels from the CPU model. It does not
 * know newer models (this project's Sapphire Rapids VM among them) and falls back to the
 * generic "Prescott" SSE3 kernels: sgemm then runs at a fifth of the machine's rate
 * (measured here with 2 threads: 35 GFLOP/s against 107 with the AVX2 "Haswell" kernels
 * and 188 with the AVX-512 "SkylakeX" ones). OpenBLAS reads OPENBLAS_CORETYPE only when it
 * is loaded, so cdcd_blas_ensure_kernel() re-executes the program once with the best core
 * the CPU supports (SkylakeX with AVX-512 F/BW/DQ/VL/CD, else Haswell with AVX2+FMA) when
 * OpenBLAS chose a generic one. The re-executed program checks the kernels against a
 * double-precision loop first (cdcd_blas_selftest) and falls back to Haswell if they
 * disagree, since AVX-512 kernels of some older OpenBLAS releases had wrong-result bugs.
 * A user's own OPENBLAS_CORETYPE is never overridden; CDCD_BLAS_NO_REEXEC=1 disables all
 * of this. */
#ifndef CDCD_BLAS_H
#define CDCD_BLAS_H

/* Call first thing in main(). Returns only when no re-exec was needed or it failed. */
void cdcd_blas_ensure_kernel(int argc, char **argv);
/* The kernel family OpenBLAS is using, e.g. "Haswell". */
const char *cdcd_blas_core_name(void);
/* Worst relative error of a few odd-shaped sgemm calls (1 and 2 threads) against a
 * double-precision loop; ~1e-7 when the kernels are right. Leaves BLAS at 1 thread. */
double cdcd_blas_selftest(void);
/* Sets the BLAS thread count (global to the process in OpenBLAS). */
void cdcd_blas_set_threads(int n);

#endif
