#include "blas.h"

#include <cblas.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

#define BLAS_REEXEC_MARK "CDCD_BLAS_REEXEC"
#define BLAS_FALLBACK_CORE "Haswell"

const char *cdcd_blas_core_name(void) { return openblas_get_corename(); }

void cdcd_blas_set_threads(int n) { openblas_set_num_threads(n > 0 ? n : 1); }

static int generic_core(const char *name) {
    static const char *const generic[] = {"Prescott", "Core2", "Penryn", "Dunnington", "Nehalem",
                                          "Atom", "Katmai", "Coppermine", "Northwood", "Banias"};
    for (size_t i = 0; i < sizeof generic / sizeof generic[0]; i++)
        if (name && strcmp(name, generic[i]) == 0) return 1;
    return 0;
}

void cdcd_blas_ensure_kernel(int argc, char **argv) {
    (void)argc;
    if (getenv("OPENBLAS_CORETYPE") || getenv(BLAS_REEXEC_MARK)) return;
    const char *off = getenv("CDCD_BLAS_NO_REEXEC");
    if (off && *off && strcmp(off, "0") != 0) return;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    if (!generic_core(openblas_get_corename())) return;
    setenv("OPENBLAS_CORETYPE", BLAS_FALLBACK_CORE, 1);
    setenv(BLAS_REEXEC_MARK, "1", 1);
    execv("/proc/self/exe", argv);
    /* exec failed: go on with the slow kernels rather than not at all. */
    cdcd_warn("OpenBLAS uses generic kernels and re-exec with OPENBLAS_CORETYPE=%s failed; "
              "set it yourself for ~4x faster matrix products", BLAS_FALLBACK_CORE);
    unsetenv(BLAS_REEXEC_MARK);
}
