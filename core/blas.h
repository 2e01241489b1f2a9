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
/* Sets the BLAS thread count (global to the process in OpenBLAS). Only for programs that
 * drive BLAS themselves (benchmarks, self-tests): models go through the policy below. */
void cdcd_blas_set_threads(int n);
/* The BLAS thread count now in force (process-global). */
int cdcd_blas_threads(void);

/* The process-wide thread policy models use. OpenBLAS 0.3.21 (Debian 12) has one thread
 * count for the whole process (openblas_set_num_threads; no per-call or per-thread
 * control), so a model must never set it to what only it wants: a model that lowered it
 * (inference "split mode" wants 1: its products are tiled on the model's own pool) would
 * silently drop a model that trains in another thread of the same process (cdcdd) to one
 * BLAS thread.
 *
 * Policy: every live model registers a demand. The global count is the largest demand
 * over the live models, so it is never lowered below what any model asked for. A model's
 * demand is its thread count while it may call untiled (BLAS-threaded) products, i.e. a
 * trainable model outside split mode; 1 otherwise (an inference-only model only calls BLAS
 * in split mode, one thread per pool task). Split mode therefore gets one BLAS thread
 * only when no other live model needs more; otherwise its tiles run with the higher
 * count, which is slower (OpenBLAS serialises concurrent threaded calls) but gives the
 * same results (each output element is summed in the same order whatever the tiling and
 * the thread count) and leaves the other model's speed alone. The price: a model asking for
 * fewer threads than another live one gets the larger count for its untiled products.
 * Rejected alternatives: pinning BLAS to 1 thread and tiling every training product on the
 * pools (costs the shared packed panels of OpenBLAS's own threading in the large training
 * products), and a second, single-threaded BLAS instance (dlmopen; fragile).
 * tests/unit/test_model_threads.c drives a trainer and a sampler from two threads. */
typedef struct cdcd_blas_user cdcd_blas_user;
/* Registers a model wanting `threads` (>= 1) BLAS threads; `demand` is its demand now
 * (threads, or 1). NULL when out of memory (the policy then ignores this model). */
cdcd_blas_user *cdcd_blas_user_add(int demand);
/* Changes a user's demand (entering / leaving split mode). NULL is a no-op. */
void cdcd_blas_user_demand(cdcd_blas_user *u, int demand);
/* Unregisters (the global count is recomputed). NULL is a no-op. */
void cdcd_blas_user_remove(cdcd_blas_user *u);

#endif
