/* Per-op parity of the CUDA backend (core/backend_cuda.h) against the CPU backend, through
 * the op table of core/backend.h: every op runs on both backends from the same host inputs
 * (deterministic pseudo-random, core/rng.h), the outputs come back through ->download, and
 * the GPU's are compared with the CPU's under an explicit tolerance. Every test SKIPs,
 * saying why, when the build has no CUDA backend or the machine no GPU; none passes
 * without running.
 *
 * Tolerances. A comparison passes when, element by element,
 *     |gpu - cpu| <= atol + rtol |cpu| + arms rms(cpu) + elem[i]
 * (on the increments gpu - base and cpu - base for an op that adds into a buffer), and a
 * line per comparison prints the worst element (index, both values, its tolerance and the
 * ratio), so a run on a GPU shows the margins.
 *   - Element-wise ops without reductions: a few float ulps (FMA contraction, rsqrt /
 *     division / exp implementations differ): rtol 2e-6 .. 1e-5.
 *   - Reductions (LayerNorm, L2 norms, sums over T or rows): rtol 1e-5 plus an atol at
 *     the scale of the values.
 *   - The linear layers (cuBLASLt, TF32): rtol 3e-3 against the fp32 CPU result plus an
 *     atol of 3e-3 sqrt(K) rms(a) rms(b) (K the inner dimension): ~7 standard deviations
 *     of the TF32 rounding noise of a K-term dot product, whether the inputs are rounded
 *     or truncated to TF32 (the truncation bias is relative to the value: the rtol).
 *   - Attention, the fused cross-entropy and the inference head chain several TF32
 *     products through a softmax; for them each output element gets a worst-case bound
 *     computed on the host in double from the inputs: each TF32 product is off by at most
 *     TF32_PROD = 2^-9 of |a b| (both factors cut to 10 mantissa bits), fp32 sums by
 *     2 (K+2) eps of the sum of |terms| (both backends), a softmax whose logits are off by
 *     at most M is off by a factor within exp(+-2M), propagated to first order through
 *     each product (x 1.25 for the second-order terms).
 *   - attention_backward's dscale, a sum of B H T^2 hd products with heavy cancellation,
 *     gets the linear layers' statistical form instead: 3e-3 sqrt(sum of the squared
 *     first-order error terms) plus rtol 3e-3.
 *   - Integer outputs (argmax, sampled ids) are compared exactly where the decision is not
 *     within that bound of a tie (argmax) or of a CDF boundary (sampling).
 *   - Memory ops, swap and add ("one rounding per element") are compared bit for bit, and
 *     so are a GPU op and its rerun (determinism: backend.h, "reduces in a fixed order"),
 *     and adaln_recompute and adaln_forward on the GPU ("bit-identical to the forward's").
 * The inputs of a backward op that a forward produces (mean/rstd, norms, P, enorm) are the
 * CPU's, uploaded to both, so each op is checked alone. */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "ops.h"
#include "rng.h"
#include "test.h"

#define MAX_SEGS 64
#define TF32_TOL 3e-3            /* linear layers: rtol, and atol per sqrt(K) rms(a) rms(b) */
#define TF32_PROD (1.0 / 512.0)  /* worst relative error of one TF32 product */
#define F32_EPS 1.1920929e-7
#define BOUND_SAFETY 1.25        /* second-order terms of the first-order bounds */

/* ================================================================ backends, buffers */

static cdcd_backend *g_cpu, *g_gpu;
static char g_create_err[256];
static cdcd_rng g_rng;
static uint64_t g_test_no;

/* A buffer in both backends: c (CPU), g (GPU). The zero pbuf is NULL on both sides. */
typedef struct {
    void *c, *g;
    size_t bytes;
} pbuf;

static const pbuf none = {NULL, NULL, 0};

#define MAX_PBUF 2048
#define MAX_HOST 8192
static pbuf g_pbufs[MAX_PBUF];
static int g_npbufs;
static void *g_host[MAX_HOST];
static int g_nhost;

static void fatal(const char *what) {
    printf("  test_backend_cuda: %s\n", what);
    fflush(stdout);
    exit(2);
}

/* Frees every buffer of the current test (host and backend), keeps the backends. */
static void release_all(void) {
    for (int i = 0; i < g_npbufs; i++) {
        if (g_cpu && g_pbufs[i].c) g_cpu->ops->free(g_cpu, g_pbufs[i].c);
        if (g_gpu && g_pbufs[i].g) g_gpu->ops->free(g_gpu, g_pbufs[i].g);
    }
    g_npbufs = 0;
    for (int i = 0; i < g_nhost; i++) free(g_host[i]);
    g_nhost = 0;
}

static void teardown(void) {
    release_all();
    cdcd_backend_free(g_gpu);
    g_gpu = NULL;
    cdcd_backend_free(g_cpu);
    g_cpu = NULL;
}

/* Fresh backends for each test (a sticky GPU error stays in its test); NULL, or why the
 * test cannot run here. */
static const char *gpu_setup(void) {
    teardown();
    cdcd_rng_init(&g_rng, 20250611, ++g_test_no);
    g_create_err[0] = '\0';
    if (!cdcd_cuda_built()) return "this build has no CUDA backend (nvcc not found at build time)";
    if (cdcd_cuda_device_count() <= 0) return "no GPU: cdcd_cuda_device_count() is 0";
    g_cpu = cdcd_backend_cpu_create(1, MAX_SEGS, 1);
    g_gpu = cdcd_backend_cuda_create(0, MAX_SEGS, g_create_err, sizeof g_create_err);
    return NULL;
}

/* Every test starts with this: SKIP without a CUDA build or a GPU, FAIL when a GPU is
 * there but the backend cannot be created. */
#define NEED_GPU()                                                                        \
    do {                                                                                  \
        const char *why_ = gpu_setup();                                                   \
        if (why_) SKIP("%s", why_);                                                       \
        ASSERT(g_cpu != NULL);                                                            \
        if (!g_gpu) {                                                                     \
            EXPECTF(0, "cdcd_backend_cuda_create(0) failed with %d device(s): %.255s",        \
                    cdcd_cuda_device_count(), g_create_err[0] ? g_create_err : "(no message)"); \
            return;                                                                       \
        }                                                                                 \
    } while (0)

/* After an op: waits for the GPU, then its sticky error must be clear (else the test
 * ends: every later op of the backend would do nothing). */
#define GPU_OK(what)                                                                      \
    do {                                                                                  \
        g_gpu->ops->sync(g_gpu);                                                          \
        const char *e_ = cdcd_backend_error(g_gpu);                                       \
        if (e_) {                                                                         \
            EXPECTF(0, "%s: the CUDA backend reports an error: %s", (what), e_);          \
            return;                                                                       \
        }                                                                                 \
    } while (0)

/* for (side 0 = CPU, 1 = GPU): BE is the backend, PF/PI/PU its side of a pbuf */
#define SIDES for (int side = 0; side < 2; side++)
#define BE (side ? g_gpu : g_cpu)
#define PF(b) ((float *)(side ? (b).g : (b).c))
#define PI(b) ((int32_t *)(side ? (b).g : (b).c))
#define PU(b) ((uint8_t *)(side ? (b).g : (b).c))

static void *hnew(size_t bytes) {
    if (g_nhost == MAX_HOST) fatal("too many host buffers");
    void *p = calloc(1, bytes ? bytes : 1);
    if (!p) fatal("out of host memory");
    g_host[g_nhost++] = p;
    return p;
}

static pbuf pb_new(size_t bytes) {
    if (g_npbufs == MAX_PBUF) fatal("too many backend buffers");
    pbuf b = {g_cpu->ops->alloc(g_cpu, bytes), g_gpu->ops->alloc(g_gpu, bytes), bytes};
    if (!b.c || !b.g) {
        char msg[256];
        snprintf(msg, sizeof msg, "alloc of %zu bytes failed (cpu %s, gpu %s; gpu error: %s)",
                 bytes, b.c ? "ok" : "NULL", b.g ? "ok" : "NULL",
                 cdcd_backend_error(g_gpu) ? cdcd_backend_error(g_gpu) : "none");
        fatal(msg);
    }
    g_pbufs[g_npbufs++] = b;
    return b;
}

/* A buffer on both sides holding the same host bytes. */
static pbuf pb_bytes(const void *host, size_t bytes) {
    pbuf b = pb_new(bytes);
    g_cpu->ops->upload(g_cpu, b.c, host, bytes);
    g_gpu->ops->upload(g_gpu, b.g, host, bytes);
    return b;
}
static pbuf pb_f(const float *host, size_t n) { return pb_bytes(host, n * sizeof(float)); }
static pbuf pb_i32(const int32_t *host, size_t n) { return pb_bytes(host, n * sizeof(int32_t)); }

/* One side's contents, downloaded (and synced) into a new host array. */
static void *dl_bytes(pbuf b, int side, size_t bytes) {
    void *h = hnew(bytes);
    cdcd_backend *be = side ? g_gpu : g_cpu;
    be->ops->download(be, h, side ? b.g : b.c, bytes);
    be->ops->sync(be);
    return h;
}
static float *dlf(pbuf b, int side, size_t n) { return dl_bytes(b, side, n * sizeof(float)); }

/* The CPU's contents of b into the GPU's side (isolates a backward from its forward). */
static void pb_cpu_to_gpu(pbuf b) {
    void *h = dl_bytes(b, 0, b.bytes);
    g_gpu->ops->upload(g_gpu, b.g, h, b.bytes);
}

/* ================================================================ host inputs */

static float *randn(size_t n, float std) {
    float *p = hnew(n * sizeof(float));
    cdcd_rng_fill_normal(&g_rng, p, n, std);
    return p;
}

static float *randu(size_t n, float lo, float hi) {
    float *p = hnew(n * sizeof(float));
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * cdcd_rng_uniform_f(&g_rng);
    return p;
}

static int32_t *rand_ids(size_t n, int V) {
    int32_t *p = hnew(n * sizeof(int32_t));
    for (size_t i = 0; i < n; i++) p[i] = (int32_t)cdcd_rng_below(&g_rng, (uint64_t)V);
    return p;
}

/* rows of x (R, C) scaled to unit length, in place; returns x */
static float *unit_rows(float *x, int R, int C) {
    for (int r = 0; r < R; r++) {
        double s = 0.0;
        for (int c = 0; c < C; c++) s += (double)x[(size_t)r * C + c] * x[(size_t)r * C + c];
        float inv = (float)(1.0 / sqrt(s > 0 ? s : 1.0));
        for (int c = 0; c < C; c++) x[(size_t)r * C + c] *= inv;
    }
    return x;
}

static double rms_f(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++) s += (double)x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0.0;
}

static double gemm_rel(int K) { return TF32_PROD + 2.0 * (K + 2) * F32_EPS; }

/* The TF32 noise scale of each element of C (M,N) = op(A) op(B), K terms: TF32_TOL
 * sqrt(sum_k (a_ik b_kj)^2) -- ~ TF32_TOL sqrt(K) rms(a) rms(b), per element. Element (i,k)
 * of op(A) is A[i*sa + k*ka], of op(B) (k,j) is B[k*kb + j*sb]. */
static double *tf32_scale(int M, int N, int K, const float *A, size_t sa, size_t ka, const float *B,
                          size_t kb, size_t sb) {
    double *t = hnew(sizeof(double) * (size_t)M * N);
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0.0;
            for (int k = 0; k < K; k++) {
                double p = (double)A[i * sa + k * ka] * B[k * kb + j * sb];
                s += p * p;
            }
            t[(size_t)i * N + j] = TF32_TOL * sqrt(s);
        }
    return t;
}

/* A formatted description for one comparison: 8 rotating buffers, so valid only until the
 * 8th next call (a description kept longer goes in a local array). */
__attribute__((format(printf, 1, 2))) static const char *label(const char *fmt, ...) {
    static char bufs[8][200];
    static int k;
    char *b = bufs[k++ & 7];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(b, sizeof bufs[0], fmt, ap);
    va_end(ap);
    return b;
}

/* ================================================================ comparisons */

typedef struct {
    double rtol, atol, arms; /* arms: times the rms of the reference (its increments) */
    const float *base;       /* contents before an op that adds (+=), or NULL */
    const double *elem;      /* per-element extra tolerance, or NULL */
} tol_t;

/* got (GPU) against ref (CPU): prints the worst element; 1 when all are within tolerance. */
static int close_f(const char *what, const float *got, const float *ref, size_t n, tol_t t) {
    double sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        double r = (double)ref[i] - (t.base ? t.base[i] : 0.0);
        if (isfinite(r)) sq += r * r;
    }
    double rms = n ? sqrt(sq / (double)n) : 0.0;
    double worst = 0.0, w_tol = 0.0, max_abs = 0.0;
    size_t w_i = 0, max_i = 0, nonfinite = 0, nf_i = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i]) || !isfinite(ref[i])) {
            if (!(isnan(got[i]) && isnan(ref[i])) && got[i] != ref[i]) {
                if (!nonfinite) nf_i = i;
                nonfinite++;
            }
            continue;
        }
        double b = t.base ? t.base[i] : 0.0;
        double dr = (double)ref[i] - b, dg = (double)got[i] - b;
        double tol = t.atol + t.rtol * fabs(dr) + t.arms * rms + (t.elem ? t.elem[i] : 0.0);
        if (t.base) tol += 2.0 * F32_EPS * (fabs(b) + fabs(ref[i])); /* rounding of the += */
        double d = fabs(dg - dr);
        if (d > max_abs) max_abs = d, max_i = i;
        double ratio = d == 0.0 ? 0.0 : (tol > 0.0 ? d / tol : INFINITY);
        if (i == 0 || ratio > worst) worst = ratio, w_i = i, w_tol = tol;
    }
    printf("  %-58s n=%-7zu max|d| %.3g at %zu; worst d/tol %.3g at %zu (gpu %.9g cpu %.9g tol %.3g)\n",
           what, n, max_abs, max_i, worst, w_i, n ? (double)got[w_i] : 0.0,
           n ? (double)ref[w_i] : 0.0, w_tol);
    if (nonfinite)
        printf("  %-58s %zu non-finite mismatches, first at %zu (gpu %g cpu %g)\n", what,
               nonfinite, nf_i, (double)got[nf_i], (double)ref[nf_i]);
    return worst <= 1.0 && !nonfinite;
}

static int cmp_pb(const char *what, pbuf b, size_t n, tol_t t) {
    float *c = dlf(b, 0, n), *g = dlf(b, 1, n);
    return close_f(what, g, c, n, t);
}

#define CLOSE(what, got, ref, n, ...)                                                     \
    EXPECTF(close_f((what), (got), (ref), (n), (tol_t){__VA_ARGS__}),                     \
            "%s: GPU and CPU differ beyond tolerance", (what))
/* downloads both sides of a pbuf of n floats and compares them */
#define CMP(what, buf, n, ...)                                                            \
    EXPECTF(cmp_pb((what), (buf), (n), (tol_t){__VA_ARGS__}),                             \
            "%s: GPU and CPU differ beyond tolerance", (what))

static int same_bytes(const char *what, const void *got, const void *ref, size_t bytes) {
    const unsigned char *g = got, *r = ref;
    size_t diff = 0, first = 0;
    for (size_t i = 0; i < bytes; i++)
        if (g[i] != r[i]) {
            if (!diff) first = i;
            diff++;
        }
    printf("  %-58s %zu bytes, %zu differ%s\n", what, bytes, diff, diff ? "" : " (bit-identical)");
    if (diff) printf("  %-58s first difference at byte %zu (gpu 0x%02x cpu 0x%02x)\n", what, first, g[first], r[first]);
    return diff == 0;
}

#define SAME(what, got, ref, bytes)                                                       \
    EXPECTF(same_bytes((what), (got), (ref), (bytes)), "%s: not bit-identical", (what))

static int same_pb(const char *what, pbuf b, size_t bytes) {
    return same_bytes(what, dl_bytes(b, 1, bytes), dl_bytes(b, 0, bytes), bytes);
}
#define SAME_PB(what, buf, bytes)                                                         \
    EXPECTF(same_pb((what), (buf), (bytes)), "%s: GPU and CPU not bit-identical", (what))

/* ================================================================ the table */

#define SLOT(x) EXPECTF(o->x != NULL, "the CUDA op table's slot %s is NULL", #x)

TEST(test_cuda_table_complete) {
    NEED_GPU();
    const cdcd_backend_ops *o = g_gpu->ops;
    ASSERT(o != NULL);
    printf("  backend \"%s\", host_memory %d, max_segments %d, %d device(s)\n",
           o->name ? o->name : "(null)", g_gpu->host_memory, g_gpu->max_segments,
           cdcd_cuda_device_count());
    cdcd_cuda_device_info info;
    memset(&info, 0, sizeof info);
    EXPECT(cdcd_cuda_device_query(0, &info) == 0);
    printf("  device 0: %s, sm %d.%d, %.1f GiB\n", info.name, info.major, info.minor,
           (double)info.total_bytes / (1u << 30));
    EXPECT(cdcd_cuda_device_query(cdcd_cuda_device_count(), &info) == -1);
    EXPECT(o->name != NULL);
    EXPECT(g_gpu->host_memory == 0); /* device memory: a host pointer never aliases a buffer */
    EXPECT(g_gpu->max_segments >= MAX_SEGS);
    EXPECT(cdcd_backend_error(g_gpu) == NULL);
    SLOT(destroy); SLOT(alloc); SLOT(free); SLOT(zero); SLOT(upload); SLOT(download);
    SLOT(copy); SLOT(sync); SLOT(error); SLOT(grad_sqnorm); SLOT(adamw); SLOT(ema);
    SLOT(swap); SLOT(add); SLOT(set_inference); SLOT(linear_forward); SLOT(linear_backward);
    SLOT(unit_embed_forward); SLOT(unit_embed_backward); SLOT(noisy_input);
    SLOT(input_channels); SLOT(embed_backward); SLOT(time_fourier); SLOT(adaln_forward);
    SLOT(adaln_recompute); SLOT(adaln_backward); SLOT(gate_residual_forward);
    SLOT(gate_residual_backward); SLOT(gelu_forward); SLOT(gelu_backward); SLOT(silu_forward);
    SLOT(silu_backward); SLOT(qk_norm_rope_forward); SLOT(qk_norm_rope_backward);
    SLOT(attention_forward); SLOT(attention_backward); SLOT(precondition);
    SLOT(precondition_backward); SLOT(prior_scale); SLOT(linear_ce); SLOT(head_infer);
    SLOT(guide_mix);
}

/* ================================================================ memory */

TEST(test_memory_roundtrip) {
    NEED_GPU();
    const size_t nb = 4099;
    pbuf a = pb_new(nb), b = pb_new(nb);
    /* alloc: zeroed */
    unsigned char *z = dl_bytes(a, 1, nb), *zero = hnew(nb);
    SAME("alloc is zeroed", z, zero, nb);
    unsigned char *h = hnew(nb), *h2 = hnew(77);
    for (size_t i = 0; i < nb; i++) h[i] = (unsigned char)cdcd_rng_below(&g_rng, 256);
    for (size_t i = 0; i < 77; i++) h2[i] = (unsigned char)(1 + cdcd_rng_below(&g_rng, 255));
    SIDES {
        unsigned char *A = side ? a.g : a.c, *Bp = side ? b.g : b.c;
        BE->ops->upload(BE, A, h, nb);
        BE->ops->copy(BE, Bp + 12, A + 40, 4001); /* odd length, at offsets */
        BE->ops->zero(BE, A + 100, 1001);
        BE->ops->copy(BE, A, A, nb);              /* dst == src: a no-op */
        BE->ops->upload(BE, A + 2000, h2, 77);
        BE->ops->zero(BE, Bp + 4, 0);
        BE->ops->sync(BE);
    }
    GPU_OK("upload / copy / zero");
    SAME_PB("upload, copy at offsets, zero a range, upload at an offset", a, nb);
    SAME_PB("copy into a second buffer", b, nb);
    /* download of a range, into the middle of a host array */
    unsigned char *part = hnew(100);
    memset(part, 0xAB, 100);
    g_gpu->ops->download(g_gpu, part + 10, (unsigned char *)a.g + 2000, 77);
    g_gpu->ops->sync(g_gpu);
    GPU_OK("download of a range");
    SAME("download of a range", part + 10, h2, 77);
    EXPECT(part[9] == 0xAB && part[87] == 0xAB);
    /* a large float round trip */
    size_t n = (1u << 20) + 3;
    float *x = randn(n, 1.0f);
    pbuf big = pb_new(n * sizeof(float));
    g_gpu->ops->upload(g_gpu, big.g, x, n * sizeof(float));
    float *back = dlf(big, 1, n);
    GPU_OK("large round trip");
    SAME("4 MB upload / download", back, x, n * sizeof(float));
    /* backend-to-backend copy of the large buffer, then zero of all of it */
    pbuf big2 = pb_new(n * sizeof(float));
    g_gpu->ops->copy(g_gpu, big2.g, big.g, n * sizeof(float));
    float *back2 = dlf(big2, 1, n);
    SAME("4 MB copy", back2, x, n * sizeof(float));
    g_gpu->ops->zero(g_gpu, big2.g, n * sizeof(float));
    float *zz = dlf(big2, 1, n), *zref = hnew(n * sizeof(float));
    GPU_OK("large zero");
    SAME("4 MB zero", zz, zref, n * sizeof(float));
}

/* ================================================================ optimiser */

static size_t make_segs(cdcd_backend_segment *s, const size_t *lens, const int *decay, int n) {
    size_t off = 0;
    for (int i = 0; i < n; i++) {
        s[i].offset = off;
        s[i].len = lens[i];
        s[i].decay = decay ? decay[i] : 1;
        off += lens[i];
    }
    return off;
}

static int sqnorm_close(const char *what, double gpu, double cpu, double host) {
    double rel = fabs(gpu - cpu) / (fabs(cpu) > 0 ? fabs(cpu) : 1e-300);
    printf("  %-58s gpu %.17g cpu %.17g host %.17g rel %.3g\n", what, gpu, cpu, host, rel);
    return rel <= 1e-6;
}

TEST(test_grad_sqnorm) {
    NEED_GPU();
    size_t lens[] = {65536, 1000, 17, 4099, 1, 31, CDCD_BACKEND_SEGMENT, 2500};
    enum { NS = sizeof lens / sizeof lens[0] };
    cdcd_backend_segment segs[NS];
    size_t n = make_segs(segs, lens, NULL, NS);
    float *g = randn(n, 1.0f);
    for (size_t i = 0; i < segs[3].len; i++) g[segs[3].offset + i] *= 1e-3f;
    /* one large value then ones: a float accumulation in order loses the ones */
    for (size_t i = 0; i < segs[6].len; i++) g[segs[6].offset + i] = i ? 1.0f : 1e4f;
    pbuf G = pb_f(g, n);
    double host = 0.0, seg_host[NS];
    for (int s = 0; s < NS; s++) {
        double acc = 0.0;
        for (size_t i = 0; i < segs[s].len; i++) acc += (double)g[segs[s].offset + i] * g[segs[s].offset + i];
        seg_host[s] = acc;
        host += acc;
    }
    double c = g_cpu->ops->grad_sqnorm(g_cpu, G.c, segs, NS);
    double gg = g_gpu->ops->grad_sqnorm(g_gpu, G.g, segs, NS);
    GPU_OK("grad_sqnorm");
    EXPECT(fabs(c - host) <= 1e-12 * host);
    EXPECTF(sqnorm_close("grad_sqnorm, 8 segments", gg, c, host), "grad_sqnorm differs");
    for (int s = 0; s < NS; s++) {
        double cs = g_cpu->ops->grad_sqnorm(g_cpu, G.c, &segs[s], 1);
        double gs = g_gpu->ops->grad_sqnorm(g_gpu, G.g, &segs[s], 1);
        GPU_OK("grad_sqnorm of one segment");
        EXPECTF(sqnorm_close(label("grad_sqnorm, segment %d alone (len %zu)", s, segs[s].len), gs, cs,
                             seg_host[s]),
                "grad_sqnorm of segment %d differs", s);
    }
    /* many short segments, as a model of many small tensors */
    size_t lens2[48];
    for (int i = 0; i < 48; i++) lens2[i] = 1 + cdcd_rng_below(&g_rng, 3000);
    cdcd_backend_segment segs2[48];
    size_t n2 = make_segs(segs2, lens2, NULL, 48);
    float *g2 = randn(n2, 0.3f);
    pbuf G2 = pb_f(g2, n2);
    double h2 = 0.0;
    for (size_t i = 0; i < n2; i++) h2 += (double)g2[i] * g2[i];
    double c2 = g_cpu->ops->grad_sqnorm(g_cpu, G2.c, segs2, 48);
    double gg2 = g_gpu->ops->grad_sqnorm(g_gpu, G2.g, segs2, 48);
    GPU_OK("grad_sqnorm, 48 segments");
    EXPECTF(sqnorm_close("grad_sqnorm, 48 segments", gg2, c2, h2), "grad_sqnorm (48) differs");
}

TEST(test_adamw) {
    NEED_GPU();
    size_t lens[] = {CDCD_BACKEND_SEGMENT, 1000, 17, 4099, 1, 2500};
    int decay[] = {1, 0, 1, 0, 1, 1};
    enum { NS = sizeof lens / sizeof lens[0] };
    cdcd_backend_segment segs[NS];
    size_t n = make_segs(segs, lens, decay, NS);
    pbuf W = pb_f(randn(n, 0.5f), n), G = pb_new(n * sizeof(float));
    pbuf M = pb_new(n * sizeof(float)), Vb = pb_new(n * sizeof(float));
    for (int t = 1; t <= 2; t++) {
        float *g = randn(n, 1.0f);
        for (size_t i = 0; i < n; i += 97) g[i] = 0.0f;
        g_cpu->ops->upload(g_cpu, G.c, g, n * sizeof(float));
        g_gpu->ops->upload(g_gpu, G.g, g, n * sizeof(float));
        cdcd_backend_adamw p = {.lr = 1e-2f, .beta1 = 0.9f, .beta2 = 0.999f, .eps = 1e-8f,
                                .weight_decay = 0.1f, .coef = t == 1 ? 0.7f : 1.0f,
                                .bc1 = (float)(1.0 - pow(0.9, t)),
                                .bc2_sqrt = (float)sqrt(1.0 - pow(0.999, t))};
        SIDES BE->ops->adamw(BE, PF(W), PF(G), PF(M), PF(Vb), segs, NS, &p);
        GPU_OK("adamw");
        CMP(label("adamw step %d: w", t), W, n, .rtol = 1e-5, .atol = 1e-6);
        CMP(label("adamw step %d: m", t), M, n, .rtol = 1e-5, .atol = 1e-7);
        CMP(label("adamw step %d: v", t), Vb, n, .rtol = 1e-5, .atol = 1e-10);
    }
}

TEST(test_ema_swap_add_guide) {
    NEED_GPU();
    size_t sizes[] = {70001, 5};
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k];
        float *e = randn(n, 1.0f), *w = randn(n, 1.0f), *y = randn(n, 1.0f), *a = randn(n, 1.0f);
        pbuf E = pb_f(e, n), Wb = pb_f(w, n);
        const float decays[] = {0.999f, 0.5f};
        for (int di = 0; di < 2; di++) {
            float d = decays[di];
            pb_cpu_to_gpu(E); /* the same start on both sides */
            /* a few roundings of the terms d e and (1 - d) w (they cancel: not of the result) */
            float *cur = dlf(E, 0, n);
            double *te = hnew(sizeof(double) * n);
            for (size_t i = 0; i < n; i++) te[i] = 4.0 * F32_EPS * (fabs(d * cur[i]) + fabs((1.0f - d) * w[i]));
            SIDES BE->ops->ema(BE, PF(E), PF(Wb), n, d);
            GPU_OK("ema");
            CMP(label("ema decay %g, n %zu", (double)d, n), E, n, .rtol = 2e-6, .elem = te);
        }
        pbuf X = pb_f(y, n), Y = pb_f(a, n);
        SIDES BE->ops->swap(BE, PF(X), PF(Y), n);
        GPU_OK("swap");
        SAME_PB(label("swap a, n %zu", n), X, n * sizeof(float));
        SAME_PB(label("swap b, n %zu", n), Y, n * sizeof(float));
        SAME(label("swap moved b into a, n %zu", n), dlf(X, 1, n), a, n * sizeof(float));
        SIDES BE->ops->add(BE, PF(X), PF(Y), n);
        GPU_OK("add");
        SAME_PB(label("add (one rounding per element), n %zu", n), X, n * sizeof(float));
        pbuf Dst = pb_f(y, n), Cond = pb_f(a, n);
        double *tg = hnew(sizeof(double) * n);
        for (size_t i = 0; i < n; i++) tg[i] = 4.0 * F32_EPS * (fabs(y[i]) + 1.5 * (fabs(a[i]) + fabs(y[i])));
        SIDES BE->ops->guide_mix(BE, PF(Dst), PF(Cond), 1.5f, n);
        GPU_OK("guide_mix");
        CMP(label("guide_mix gamma 1.5, n %zu", n), Dst, n, .rtol = 2e-6, .elem = tg);
    }
}

/* ================================================================ linear layers */

typedef struct {
    int N, n_in, n_out, bias;
    const char *what;
} lin_case;

TEST(test_linear) {
    NEED_GPU();
    const lin_case cases[] = {
        {48, 64, 192, 0, "qkv (N,D) -> 3D, no bias"},
        {48, 64, 256, 1, "fc1 (N,D) -> 4D"},
        {48, 256, 64, 1, "fc2 (N,4D) -> D"},
        {3, 16, 384, 1, "ada (B,C) -> 6D"},
        {3, 16, 16, 1, "time MLP (B,C) -> C"},
        {48, 49, 64, 1, "input layer, in_dim 3E+1 = 49"},
        {37, 33, 50, 0, "odd sizes 37x33 -> 50"},
        {48, 64, 300, 1, "(N,D) -> V 300"},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const lin_case *lc = &cases[ci];
        int N = lc->N, ni = lc->n_in, no = lc->n_out;
        size_t nin = (size_t)N * ni, nout = (size_t)N * no, nw = (size_t)no * ni;
        float *in = randn(nin, 1.0f), *w = randn(nw, 0.1f), *b = randn((size_t)no, 0.5f);
        pbuf IN = pb_f(in, nin), Wb = pb_f(w, nw), Bb = lc->bias ? pb_f(b, (size_t)no) : none;
        pbuf OUT = pb_f(randn(nout, 10.0f), nout); /* garbage: must be overwritten */
        SIDES BE->ops->linear_forward(BE, PF(OUT), PF(IN), PF(Wb), PF(Bb), (size_t)N, ni, no);
        GPU_OK("linear_forward");
        /* out = in w^T: (i,k) of in at i*ni + k, (k,j) of w^T at j*ni + k */
        double *fa = tf32_scale(N, no, ni, in, (size_t)ni, 1, w, 1, (size_t)ni);
        CMP(label("linear_forward %s", lc->what), OUT, nout, .rtol = TF32_TOL, .elem = fa);
        if (ci == 1) { /* inference mode: the CPU tiles the product; the GPU may ignore it */
            pbuf OUT2 = pb_f(randn(nout, 10.0f), nout);
            SIDES BE->ops->set_inference(BE, 1);
            SIDES BE->ops->linear_forward(BE, PF(OUT2), PF(IN), PF(Wb), PF(Bb), (size_t)N, ni, no);
            SIDES BE->ops->set_inference(BE, 0);
            GPU_OK("linear_forward (inference mode)");
            CMP(label("linear_forward inference mode %s", lc->what), OUT2, nout, .rtol = TF32_TOL,
                .elem = fa);
        }
        /* backward: mode 0 din written, 1 din +=, 2 din NULL; db NULL without a bias and
         * in mode 1 */
        for (int mode = 0; mode < 3; mode++) {
            float *dout = randn(nout, 1.0f), *din0 = randn(nin, 1.0f);
            float *dw0 = randn(nw, 0.3f), *db0 = randn((size_t)no, 0.3f);
            int want_din = mode != 2, acc = mode == 1, want_db = lc->bias && mode != 1;
            pbuf DOUT = pb_f(dout, nout), DIN = pb_f(din0, nin), DW = pb_f(dw0, nw);
            pbuf DB = pb_f(db0, (size_t)no);
            SIDES BE->ops->linear_backward(BE, want_din ? PF(DIN) : NULL, acc, PF(DW),
                                           want_db ? PF(DB) : NULL, PF(DOUT), PF(IN), PF(Wb),
                                           (size_t)N, ni, no);
            GPU_OK("linear_backward");
            if (want_din) /* din = dout w: (i,k) of dout at i*no + k, (k,j) of w at k*ni + j */
                CMP(label("linear_backward %s: din (%s)", lc->what, acc ? "+=" : "written"), DIN,
                    nin, .rtol = TF32_TOL,
                    .elem = tf32_scale(N, ni, no, dout, (size_t)no, 1, w, (size_t)ni, 1),
                    .base = acc ? din0 : NULL);
            else
                SAME_PB(label("linear_backward %s: din buffer untouched (NULL)", lc->what), DIN,
                        nin * sizeof(float));
            CMP(label("linear_backward %s: dw += (din %s)", lc->what,
                      mode == 2 ? "NULL" : acc ? "+=" : "written"),
                DW, nw, .rtol = TF32_TOL, /* dw += dout^T in: (i,k) at k*no + i, (k,j) at k*ni + j */
                .elem = tf32_scale(no, ni, N, dout, 1, (size_t)no, in, (size_t)ni, 1), .base = dw0);
            if (want_db) { /* a sum over rows (perhaps a GEMM with ones): the same scale */
                float *ones = hnew(sizeof(float) * N);
                for (int i = 0; i < N; i++) ones[i] = 1.0f;
                CMP(label("linear_backward %s: db +=", lc->what), DB, (size_t)no, .rtol = TF32_TOL,
                    .elem = tf32_scale(no, 1, N, dout, 1, (size_t)no, ones, 1, 1), .base = db0);
            }
            else
                SAME(label("linear_backward %s: db untouched (NULL)", lc->what), dlf(DB, 1, (size_t)no),
                     db0, (size_t)no * sizeof(float));
        }
        release_all();
    }
}

/* ================================================================ embeddings and inputs */

TEST(test_unit_embed) {
    NEED_GPU();
    const int shapes[][2] = {{300, 16}, {50, 32}};
    for (int k = 0; k < 2; k++) {
        int V = shapes[k][0], E = shapes[k][1];
        size_t n = (size_t)V * E;
        float *emb = randn(n, 0.5f);
        memset(emb + 7 * E, 0, sizeof(float) * E); /* a zero row: x / max(|x|, eps) = 0 */
        pbuf EMB = pb_f(emb, n), ETAB = pb_f(randn(n, 9.0f), n), EN = pb_f(randn((size_t)V, 9.0f), (size_t)V);
        SIDES BE->ops->unit_embed_forward(BE, PF(ETAB), PF(EN), PF(EMB), V, E);
        GPU_OK("unit_embed_forward");
        CMP(label("unit_embed_forward V %d E %d: etab", V, E), ETAB, n, .rtol = 1e-5, .atol = 1e-6);
        CMP(label("unit_embed_forward V %d E %d: enorm", V, E), EN, (size_t)V, .rtol = 1e-5, .atol = 1e-7);
        /* backward from the CPU's enorm; demb starts at zero as the model's gradients do
         * (backend.h says +=, the CPU writes: see the report) */
        pb_cpu_to_gpu(EN);
        pbuf DET = pb_f(randn(n, 1.0f), n), DEMB = pb_new(n * sizeof(float));
        SIDES BE->ops->unit_embed_backward(BE, PF(DEMB), PF(DET), PF(EMB), PF(EN), V, E);
        GPU_OK("unit_embed_backward");
        CMP(label("unit_embed_backward V %d E %d: demb", V, E), DEMB, n, .rtol = 1e-5, .arms = 1e-6);
        release_all();
    }
}

TEST(test_noisy_input) {
    NEED_GPU();
    const int shapes[][4] = {{3, 16, 16, 50}, {2, 8, 32, 300}}; /* B T E V */
    for (int k = 0; k < 2; k++) {
        int B = shapes[k][0], T = shapes[k][1], E = shapes[k][2], V = shapes[k][3];
        size_t N = (size_t)B * T, nx = N * E;
        float *etab = unit_rows(randn((size_t)V * E, 1.0f), V, E);
        float *sigma = randu((size_t)B, 0.1f, 20.0f);
        pbuf ETAB = pb_f(etab, (size_t)V * E), IDS = pb_i32(rand_ids(N, V), N);
        pbuf NOISE = pb_f(randn(nx, 1.0f), nx), SIG = pb_f(sigma, (size_t)B);
        pbuf X = pb_f(randn(nx, 9.0f), nx);
        SIDES BE->ops->noisy_input(BE, PF(X), PF(ETAB), PI(IDS), PF(NOISE), PF(SIG), B, T, E);
        GPU_OK("noisy_input");
        CMP(label("noisy_input B %d T %d E %d", B, T, E), X, nx, .rtol = 2e-6, .atol = 1e-6);
        release_all();
    }
}

TEST(test_input_channels) {
    NEED_GPU();
    const int B = 3, T = 8, E = 16, V = 50;
    const size_t N = (size_t)B * T;
    for (int cfg = 0; cfg < 16; cfg++) {
        int cc = cfg & 1, slot = (cfg >> 1) & 1, with_cond = (cfg >> 2) & 1, with_self = (cfg >> 3) & 1;
        if (with_self && !slot) continue;
        int in_dim = E + (cc ? E + 1 : 0) + (slot ? E : 0);
        float *x = randn(N * E, 2.0f), *etab = unit_rows(randn((size_t)V * E, 1.0f), V, E);
        float *sigma = randu((size_t)B, 0.05f, 30.0f), *self = randn(N * E, 1.0f);
        uint8_t *mask = hnew(N);
        int32_t *cids = hnew(N * sizeof(int32_t));
        for (size_t n = 0; n < N; n++) {
            mask[n] = (n % T) < 3 || n == (size_t)T - 1; /* a prompt, and one more row */
            /* ids of non-conditioning rows are never read (the model checks only the
             * conditioning rows' ids): far out of range here */
            cids[n] = mask[n] ? (int32_t)cdcd_rng_below(&g_rng, V) : (n & 1 ? -1 : (1 << 28));
        }
        pbuf CH = pb_f(randn(N * in_dim, 9.0f), N * in_dim);
        pbuf X = pb_f(x, N * E), ETAB = pb_f(etab, (size_t)V * E), SIG = pb_f(sigma, (size_t)B);
        pbuf CIDS = with_cond ? pb_i32(cids, N) : none, CM = with_cond ? pb_bytes(mask, N) : none;
        pbuf SELF = with_self ? pb_f(self, N * E) : none;
        SIDES {
            cdcd_backend_channels a = {.chan = PF(CH), .x = PF(X), .etab = PF(ETAB),
                                       .sigma = PF(SIG), .cond_ids = PI(CIDS), .cond_mask = PU(CM),
                                       .self_cond = PF(SELF), .B = B, .T = T, .E = E,
                                       .in_dim = in_dim, .cond_channels = cc, .self_cond_slot = slot};
            BE->ops->input_channels(BE, &a);
        }
        GPU_OK("input_channels");
        CMP(label("input_channels cond_ch %d self_slot %d cond_mask %s self %s", cc, slot,
                  with_cond ? "yes" : "NULL", with_self ? "yes" : "NULL"),
            CH, N * in_dim, .rtol = 2e-6, .atol = 1e-7);
        release_all();
    }
}

TEST(test_embed_backward) {
    NEED_GPU();
    const int B = 3, T = 16, E = 16, V = 50;
    const size_t N = (size_t)B * T;
    for (int cfg = 0; cfg < 8; cfg++) {
        int cc = cfg & 1, with_cond = (cfg >> 1) & 1, extras = (cfg >> 2) & 1;
        int in_dim = E + (cc ? E + 1 : 0) + E;
        float *sigma = randu((size_t)B, 0.05f, 30.0f);
        int32_t *ids = rand_ids(N, 12); /* many repeats: the scatter's order matters */
        uint8_t *mask = hnew(N);
        for (size_t n = 0; n < N; n++) mask[n] = (n % T) < 4;
        float *detab0 = randn((size_t)V * E, 1.0f);
        pbuf DET = pb_f(detab0, (size_t)V * E), DE = pb_f(randn(N * E, 9.0f), N * E);
        pbuf DCH = pb_f(randn(N * in_dim, 1.0f), N * in_dim);
        pbuf DDX = extras ? pb_f(randn(N * E, 1.0f), N * E) : none;
        pbuf DXP = extras ? pb_f(randn(N * E, 0.5f), N * E) : none;
        pbuf IDS = pb_i32(ids, N), CM = with_cond ? pb_bytes(mask, N) : none;
        pbuf SIG = pb_f(sigma, (size_t)B);
        SIDES {
            cdcd_backend_embed_grad a = {.detab = PF(DET), .de = PF(DE), .dchan = PF(DCH),
                                         .dDx = PF(DDX), .dxprior = PF(DXP), .ids = PI(IDS),
                                         .cond_mask = PU(CM), .sigma = PF(SIG), .B = B, .T = T,
                                         .E = E, .in_dim = in_dim, .cond_channels = cc};
            BE->ops->embed_backward(BE, &a);
        }
        GPU_OK("embed_backward");
        char what[160];
        snprintf(what, sizeof what, "cond_ch %d cond_mask %s dDx/dxprior %s", cc,
                 with_cond ? "yes" : "NULL", extras ? "yes" : "NULL");
        CMP(label("embed_backward %s: de", what), DE, N * E, .rtol = 1e-6, .atol = 1e-6);
        CMP(label("embed_backward %s: detab +=", what), DET, (size_t)V * E, .rtol = 1e-6,
            .atol = 1e-5, .base = detab0);
        release_all();
    }
}

TEST(test_time_fourier) {
    NEED_GPU();
    const int shapes[][2] = {{3, 16}, {2, 64}};
    for (int k = 0; k < 2; k++) {
        int B = shapes[k][0], C = shapes[k][1], K = C / 2;
        float *freqs = hnew(sizeof(float) * K);
        for (int i = 0; i < K; i++) freqs[i] = (float)exp((double)i / (K - 1) * log(100.0));
        float *sigma = hnew(sizeof(float) * B);
        const float sig_values[] = {0.02f, 1.0f, 50.0f};
        for (int b = 0; b < B; b++) sigma[b] = sig_values[b % 3];
        sigma[B - 1] = 0.37f;
        double max_arg = 0.0;
        for (int b = 0; b < B; b++) max_arg = fmax(max_arg, 100.0 * fabs(log(sigma[b])) / 4.0);
        pbuf FR = pb_f(freqs, (size_t)K), SIG = pb_f(sigma, (size_t)B);
        pbuf OUT = pb_f(randn((size_t)B * C, 9.0f), (size_t)B * C);
        SIDES BE->ops->time_fourier(BE, PF(OUT), PF(SIG), PF(FR), B, C);
        GPU_OK("time_fourier");
        /* sin / cos of arguments up to max_arg: a 1-ulp log moves the argument by 1e-7 of it */
        CMP(label("time_fourier B %d C %d (max argument %.0f)", B, C, max_arg), OUT, (size_t)B * C,
            .atol = 2e-6 + 5e-7 * max_arg);
        release_all();
    }
}

/* ================================================================ adaLN, gates */

typedef struct {
    int B, T, D, stride_d, shift_d, scale_d; /* mod_stride and offsets in units of D */
} adaln_case;

TEST(test_adaln) {
    NEED_GPU();
    const adaln_case cases[] = {
        {1, 8, 32, 6, 0, 1}, {2, 16, 64, 6, 3, 4}, {3, 5, 48, 6, 0, 1}, {2, 16, 64, 2, 0, 1},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        const adaln_case *c = &cases[ci];
        int B = c->B, T = c->T, D = c->D, stride = c->stride_d * D;
        size_t N = (size_t)B * T, nx = N * D, nm = (size_t)B * stride;
        char what[160];
        snprintf(what, sizeof what, "B %d T %d D %d mod_stride %dD shift +%dD scale +%dD", B, T,
                 D, c->stride_d, c->shift_d, c->scale_d);
        float *x = randn(nx, 1.5f);
        for (size_t i = 0; i < nx; i++) x[i] += 0.5f;
        pbuf X = pb_f(x, nx), MOD = pb_f(randn(nm, 0.3f), nm);
        pbuf OUT = pb_f(randn(nx, 9.0f), nx), MEAN = pb_f(randn(N, 9.0f), N), RSTD = pb_f(randn(N, 9.0f), N);
        SIDES BE->ops->adaln_forward(BE, PF(OUT), PF(MEAN), PF(RSTD), PF(X), PF(MOD) + c->shift_d * D,
                                     PF(MOD) + c->scale_d * D, stride, B, T, D);
        GPU_OK("adaln_forward");
        CMP(label("adaln_forward %s: out", what), OUT, nx, .rtol = 1e-5, .atol = 1e-5);
        CMP(label("adaln_forward %s: mean", what), MEAN, N, .rtol = 1e-5, .atol = 1e-6);
        CMP(label("adaln_forward %s: rstd", what), RSTD, N, .rtol = 1e-5, .atol = 1e-7);
        /* recompute from each side's own statistics: bit-identical to its forward */
        pbuf OUT2 = pb_f(randn(nx, 9.0f), nx);
        SIDES BE->ops->adaln_recompute(BE, PF(OUT2), PF(X), PF(MEAN), PF(RSTD), PF(MOD) + c->shift_d * D,
                                       PF(MOD) + c->scale_d * D, stride, B, T, D);
        GPU_OK("adaln_recompute");
        SAME(label("adaln_recompute %s: GPU recompute == GPU forward", what), dlf(OUT2, 1, nx),
             dlf(OUT, 1, nx), nx * sizeof(float));
        SAME(label("adaln_recompute %s: CPU recompute == CPU forward", what), dlf(OUT2, 0, nx),
             dlf(OUT, 0, nx), nx * sizeof(float));
        CMP(label("adaln_recompute %s: out", what), OUT2, nx, .rtol = 1e-5, .atol = 1e-5);
        /* backward from the CPU's statistics */
        pb_cpu_to_gpu(MEAN);
        pb_cpu_to_gpu(RSTD);
        float *dx0 = randn(nx, 1.0f), *dmod0 = randn(nm, 0.5f);
        pbuf DOUT = pb_f(randn(nx, 1.0f), nx), DX = pb_f(dx0, nx), DMOD = pb_f(dmod0, nm);
        SIDES BE->ops->adaln_backward(BE, PF(DX), PF(DMOD) + c->shift_d * D, PF(DMOD) + c->scale_d * D,
                                      PF(DOUT), PF(X), PF(MEAN), PF(RSTD), PF(MOD) + c->scale_d * D,
                                      stride, B, T, D);
        GPU_OK("adaln_backward");
        CMP(label("adaln_backward %s: dx +=", what), DX, nx, .rtol = 1e-5, .atol = 2e-5, .base = dx0);
        CMP(label("adaln_backward %s: dshift, dscale += (whole mod)", what), DMOD, nm, .rtol = 1e-5,
            .atol = 2e-5, .base = dmod0);
        release_all();
    }
}

TEST(test_gate_residual) {
    NEED_GPU();
    const int cases[][4] = {{2, 16, 64, 2}, {3, 8, 32, 5}, {1, 5, 48, 2}}; /* B T D gate offset/D */
    for (int ci = 0; ci < 3; ci++) {
        int B = cases[ci][0], T = cases[ci][1], D = cases[ci][2], goff = cases[ci][3] * D;
        int stride = 6 * D;
        size_t nx = (size_t)B * T * D, nm = (size_t)B * stride;
        char what[160];
        snprintf(what, sizeof what, "B %d T %d D %d gate +%dD", B, T, D, cases[ci][3]);
        float *h0 = randn(nx, 1.0f);
        pbuf MOD = pb_f(randn(nm, 0.5f), nm), BR = pb_f(randn(nx, 1.0f), nx);
        pbuf HIN = pb_f(randn(nx, 1.0f), nx), H = pb_f(randn(nx, 9.0f), nx), H2 = pb_f(h0, nx);
        SIDES BE->ops->gate_residual_forward(BE, PF(H), PF(HIN), PF(BR), PF(MOD) + goff, stride, B, T, D);
        SIDES BE->ops->gate_residual_forward(BE, PF(H2), NULL, PF(BR), PF(MOD) + goff, stride, B, T, D);
        GPU_OK("gate_residual_forward");
        CMP(label("gate_residual_forward %s: copy_from", what), H, nx, .rtol = 2e-6, .atol = 1e-6);
        CMP(label("gate_residual_forward %s: copy_from NULL", what), H2, nx, .rtol = 2e-6, .atol = 1e-6);
        float *dmod0 = randn(nm, 0.5f);
        pbuf DBR = pb_f(randn(nx, 9.0f), nx), DMOD = pb_f(dmod0, nm), DH = pb_f(randn(nx, 1.0f), nx);
        SIDES BE->ops->gate_residual_backward(BE, PF(DBR), PF(DMOD) + goff, PF(DH), PF(BR),
                                              PF(MOD) + goff, stride, B, T, D);
        GPU_OK("gate_residual_backward");
        CMP(label("gate_residual_backward %s: dbranch", what), DBR, nx, .rtol = 1e-6);
        CMP(label("gate_residual_backward %s: dgate += (whole mod)", what), DMOD, nm, .rtol = 1e-5,
            .atol = 1e-5, .base = dmod0);
        release_all();
    }
}

/* ================================================================ activations */

static float *act_inputs(size_t n) {
    static const float special[] = {0.0f, 1e-3f, -1e-3f, 5.0f, -5.0f, 10.0f, -10.0f,
                                    20.0f, -20.0f, -40.0f, 0.5f, -0.75f, -1.28f};
    float *x = randn(n, 3.0f);
    for (size_t i = 0; i < n && i < sizeof special / sizeof special[0]; i++) x[i] = special[i];
    return x;
}

TEST(test_activations) {
    NEED_GPU();
    const int shapes[][2] = {{48, 256}, {3, 16}, {5, 33}};
    for (int k = 0; k < 3; k++) {
        size_t rows = (size_t)shapes[k][0], width = (size_t)shapes[k][1], n = rows * width;
        float *in = act_inputs(n), *dout = randn(n, 1.0f);
        pbuf IN = pb_f(in, n), OUT = pb_f(randn(n, 9.0f), n), DOUT = pb_f(dout, n);
        pbuf DIN = pb_f(randn(n, 9.0f), n), DD = pb_f(dout, n);
        SIDES BE->ops->gelu_forward(BE, PF(OUT), PF(IN), rows, width);
        GPU_OK("gelu_forward");
        CMP(label("gelu_forward %zux%zu", rows, width), OUT, n, .rtol = 1e-5, .atol = 1e-6);
        SIDES BE->ops->gelu_backward(BE, PF(DIN), PF(DOUT), PF(IN), rows, width);
        SIDES BE->ops->gelu_backward(BE, PF(DD), PF(DD), PF(IN), rows, width); /* din == dout */
        GPU_OK("gelu_backward");
        CMP(label("gelu_backward %zux%zu", rows, width), DIN, n, .rtol = 1e-5, .atol = 2e-6);
        CMP(label("gelu_backward %zux%zu in place (din == dout)", rows, width), DD, n, .rtol = 1e-5,
            .atol = 2e-6);
        release_all();
    }
    const size_t sizes[] = {48, 1000};
    for (int k = 0; k < 2; k++) {
        size_t n = sizes[k];
        pbuf IN = pb_f(act_inputs(n), n), OUT = pb_f(randn(n, 9.0f), n);
        pbuf DOUT = pb_f(randn(n, 1.0f), n), DIN = pb_f(randn(n, 9.0f), n);
        SIDES BE->ops->silu_forward(BE, PF(OUT), PF(IN), n);
        SIDES BE->ops->silu_backward(BE, PF(DIN), PF(DOUT), PF(IN), n);
        GPU_OK("silu");
        CMP(label("silu_forward n %zu", n), OUT, n, .rtol = 1e-5, .atol = 1e-6);
        CMP(label("silu_backward n %zu", n), DIN, n, .rtol = 1e-5, .atol = 1e-6);
        release_all();
    }
}

/* ================================================================ QK norm + RoPE */

TEST(test_qk_norm_rope) {
    NEED_GPU();
    const int cases[][4] = {{2, 16, 2, 16}, {3, 8, 4, 16}, {1, 12, 2, 32}}; /* B T H hd */
    const int max_T = 32; /* the tables have the model's max_seq rows, more than T */
    for (int ci = 0; ci < 3; ci++) {
        int B = cases[ci][0], T = cases[ci][1], H = cases[ci][2], hd = cases[ci][3], D = H * hd;
        size_t N = (size_t)B * T, half = (size_t)hd / 2;
        char what[160];
        snprintf(what, sizeof what, "B %d T %d H %d hd %d", B, T, H, hd);
        float *rc = hnew(sizeof(float) * max_T * half), *rs = hnew(sizeof(float) * max_T * half);
        cdcd_ops_rope_tables(rc, rs, max_T, hd);
        float *qkv = randn(N * 3 * D, 1.0f);
        for (size_t n = 0; n < N; n++) /* head vectors of different lengths */
            for (int j = 0; j < 3 * H; j++) {
                float s = 0.2f + 3.0f * cdcd_rng_uniform_f(&g_rng);
                for (int i = 0; i < hd; i++) qkv[n * 3 * D + (size_t)j * hd + i] *= s;
            }
        pbuf RC = pb_f(rc, max_T * half), RS = pb_f(rs, max_T * half), QKV = pb_f(qkv, N * 3 * D);
        pbuf QK = pb_f(randn(N * 2 * D, 9.0f), N * 2 * D), NORMS = pb_f(randn(N * 2 * H, 9.0f), N * 2 * H);
        SIDES BE->ops->qk_norm_rope_forward(BE, PF(QK), PF(NORMS), PF(QKV), PF(RC), PF(RS), B, T, H, hd);
        GPU_OK("qk_norm_rope_forward");
        CMP(label("qk_norm_rope_forward %s: qk", what), QK, N * 2 * D, .rtol = 1e-5, .atol = 1e-6);
        CMP(label("qk_norm_rope_forward %s: norms", what), NORMS, N * 2 * H, .rtol = 1e-5);
        pb_cpu_to_gpu(NORMS);
        float *dqkv0 = randn(N * 3 * D, 1.0f); /* its v part is not the op's: untouched */
        pbuf DQK = pb_f(randn(N * 2 * D, 1.0f), N * 2 * D), DQKV = pb_f(dqkv0, N * 3 * D);
        SIDES BE->ops->qk_norm_rope_backward(BE, PF(DQKV), PF(DQK), PF(QKV), PF(NORMS), PF(RC), PF(RS),
                                             B, T, H, hd);
        GPU_OK("qk_norm_rope_backward");
        CMP(label("qk_norm_rope_backward %s: dqkv (q, k written; v untouched)", what), DQKV, N * 3 * D,
            .rtol = 1e-5, .atol = 1e-6);
        float *g = dlf(DQKV, 1, N * 3 * D);
        size_t moved = 0;
        for (size_t n = 0; n < N; n++)
            moved += memcmp(g + n * 3 * D + 2 * D, dqkv0 + n * 3 * D + 2 * D, sizeof(float) * D) != 0;
        EXPECTF(moved == 0, "qk_norm_rope_backward %s: the v part of dqkv changed in %zu rows", what, moved);
        release_all();
    }
}

/* ================================================================ attention */

typedef struct {
    int B, T, H, hd;
    int pad; /* 0: pad_mask NULL; 1: tails padded (one sequence keeps 1 key); 2: a sequence all padding */
    int inference;
} attn_case;

static void attn_mask(uint8_t *m, int B, int T, int kind) {
    for (int i = 0; i < B * T; i++) m[i] = 1;
    for (int b = 0; b < B; b++) {
        int npad = 0;
        if (kind == 1) npad = b % 2 == 1 ? T / 3 + 1 : (b == 2 ? T - 1 : 0);
        if (kind == 2) npad = b == B - 1 ? T : (b == 0 ? T / 4 : 0);
        for (int t = T - npad; t < T; t++) m[(size_t)b * T + t] = 0;
    }
}

static void run_attention_case(const attn_case *ac) {
    int B = ac->B, T = ac->T, H = ac->H, hd = ac->hd, D = H * hd;
    size_t N = (size_t)B * T, TT = (size_t)T * T, nP = (size_t)B * H * TT;
    char what[160];
    snprintf(what, sizeof what, "B %d T %d H %d hd %d pad %s%s", B, T, H, hd,
             ac->pad == 0 ? "NULL" : ac->pad == 1 ? "tails" : "tails + an all-pad sequence",
             ac->inference ? ", inference mode" : "");
    /* qk as qk_norm_rope leaves it: unit head vectors; v inside qkv (ldv 3D) */
    float *qk = randn(N * 2 * D, 1.0f);
    for (size_t n = 0; n < N; n++) unit_rows(qk + n * 2 * D, 2 * H, hd);
    float *qkv = randn(N * 3 * D, 1.0f);
    uint8_t *mask = hnew(N);
    attn_mask(mask, B, T, ac->pad);
    float scale = (float)log2((double)T * T - T); /* the model's initial attn_scale */
    pbuf QK = pb_f(qk, N * 2 * D), QKV = pb_f(qkv, N * 3 * D), SC = pb_f(&scale, 1);
    pbuf MASK = ac->pad ? pb_bytes(mask, N) : none;
    pbuf O = pb_f(randn(N * D, 9.0f), N * D), P = pb_f(randn(nP, 9.0f), nP);
    if (ac->inference) SIDES BE->ops->set_inference(BE, 1);
    SIDES BE->ops->attention_forward(BE, PF(O), PF(P), PF(QK), PF(QKV) + 2 * D, 3 * D, PU(MASK),
                                     PF(SC), B, T, H, hd);
    if (ac->inference) SIDES BE->ops->set_inference(BE, 0);
    GPU_OK("attention_forward");
    float *Pc = dlf(P, 0, nP), *Og = dlf(O, 1, N * D), *Oc = dlf(O, 0, N * D);
    /* bounds: |score error| <= gemm_rel(hd) scale sum|q k|; P within exp(+-2 max) */
    double *tP = hnew(nP * sizeof(double)), *tO = hnew(N * D * sizeof(double));
    double vr = 0.0;
    for (size_t n = 0; n < N; n++) vr += (double)rms_f(qkv + n * 3 * D + 2 * D, (size_t)D) * rms_f(qkv + n * 3 * D + 2 * D, (size_t)D);
    vr = sqrt(vr / (double)N);
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++)
            for (int i = 0; i < T; i++) {
                const float *q = qk + ((size_t)b * T + i) * 2 * D + (size_t)h * hd;
                double m = 0.0;
                for (int j = 0; j < T; j++) {
                    if (ac->pad && !mask[(size_t)b * T + j]) continue;
                    const float *k = qk + ((size_t)b * T + j) * 2 * D + D + (size_t)h * hd;
                    double s = 0.0;
                    for (int c = 0; c < hd; c++) s += fabs((double)q[c] * k[c]);
                    m = fmax(m, gemm_rel(hd) * scale * s);
                }
                double epsP = expm1(2.0 * m) + 1e-5;
                const float *prow = Pc + (((size_t)b * H + h) * T + i) * T;
                for (int j = 0; j < T; j++)
                    tP[(((size_t)b * H + h) * T + i) * T + j] = BOUND_SAFETY * epsP * prow[j];
                for (int c = 0; c < hd; c++) {
                    double s = 0.0;
                    for (int j = 0; j < T; j++) s += prow[j] * fabs(qkv[((size_t)b * T + j) * 3 * D + 2 * D + (size_t)h * hd + c]);
                    tO[((size_t)b * T + i) * D + (size_t)h * hd + c] =
                        BOUND_SAFETY * (epsP + gemm_rel(T)) * s + 1e-6 * vr;
                }
            }
    CLOSE(label("attention_forward %s: P", what), dlf(P, 1, nP), Pc, nP, .atol = 1e-7, .elem = tP);
    CLOSE(label("attention_forward %s: o", what), Og, Oc, N * D, .elem = tO);
    if (ac->pad == 2) { /* a row without a valid key: zero probabilities, output 0 */
        float *Pg = dlf(P, 1, nP);
        size_t bad = 0;
        for (int h = 0; h < H; h++)
            for (size_t i = 0; i < TT; i++) bad += Pg[(((size_t)(B - 1) * H + h) * TT) + i] != 0.0f;
        for (size_t i = 0; i < (size_t)T * D; i++) bad += Og[(size_t)(B - 1) * T * D + i] != 0.0f;
        EXPECTF(bad == 0, "attention_forward %s: %zu nonzero P / o values of the all-pad sequence", what, bad);
    }

    /* ---- backward, from the CPU's P (identical inputs on both sides) */
    pb_cpu_to_gpu(P);
    float *dout = randn(N * D, 1.0f), *dqkv0 = randn(N * 3 * D, 1.0f), dscale0 = 0.25f;
    pbuf DOUT = pb_f(dout, N * D), DQK = pb_f(randn(N * 2 * D, 9.0f), N * 2 * D);
    pbuf DQKV = pb_f(dqkv0, N * 3 * D), DSC = pb_f(&dscale0, 1);
    pbuf DP = pb_new(nP * sizeof(float)), BH = pb_new((size_t)B * H * sizeof(float));
    SIDES BE->ops->attention_backward(BE, PF(DQK), PF(DQKV) + 2 * D, 3 * D, PF(DSC), PF(DP), PF(BH),
                                      PF(DOUT), PF(P), PF(QK), PF(QKV) + 2 * D, 3 * D, PF(SC), B, T,
                                      H, hd);
    GPU_OK("attention_backward");
    double *tdqk = hnew(N * 2 * D * sizeof(double)), *tdqkv = hnew(N * 3 * D * sizeof(double));
    double *dPh = hnew(TT * sizeof(double)), *edP = hnew(TT * sizeof(double));
    double *dS = hnew(TT * sizeof(double)), *edS = hnew(TT * sizeof(double));
    /* dscale = sum over (b,h,i,j) of dS_ij g_ij, g_ij = q_i . k_j: a sum of B H T^2 hd
     * products with heavy cancellation, so no useful worst-case bound; it gets the linear
     * layers' statistical tolerance instead: TF32_TOL sqrt(sum of squares) of the
     * first-order error terms, P_ij (g_ij - gbar_i) dO_ic v_jc (through dP) and
     * q_ic dS_ij k_jc (the dQu product), ~7.5 sigma; the truncation bias is relative */
    double sq_dscale = 0.0, sum_abs = 0.0;
    for (int b = 0; b < B; b++)
        for (int h = 0; h < H; h++) {
            const float *Pb = Pc + ((size_t)b * H + h) * TT;
#define Q_(t, c) qk[((size_t)b * T + (t)) * 2 * D + (size_t)h * hd + (c)]
#define K_(t, c) qk[((size_t)b * T + (t)) * 2 * D + D + (size_t)h * hd + (c)]
#define V_(t, c) qkv[((size_t)b * T + (t)) * 3 * D + 2 * D + (size_t)h * hd + (c)]
#define DO_(t, c) dout[((size_t)b * T + (t)) * D + (size_t)h * hd + (c)]
            for (int i = 0; i < T; i++)
                for (int j = 0; j < T; j++) {
                    double s = 0.0, a = 0.0;
                    for (int c = 0; c < hd; c++) s += (double)DO_(i, c) * V_(j, c), a += fabs((double)DO_(i, c) * V_(j, c));
                    dPh[(size_t)i * T + j] = s;
                    edP[(size_t)i * T + j] = gemm_rel(hd) * a;
                }
            for (int i = 0; i < T; i++) {
                double s = 0.0, es = 0.0, sa = 0.0;
                for (int j = 0; j < T; j++) {
                    double p = Pb[(size_t)i * T + j];
                    s += p * dPh[(size_t)i * T + j];
                    es += p * edP[(size_t)i * T + j];
                    sa += p * fabs(dPh[(size_t)i * T + j]);
                }
                es += 2.0 * (T + 2) * F32_EPS * sa;
                for (int j = 0; j < T; j++) {
                    double p = Pb[(size_t)i * T + j], d = dPh[(size_t)i * T + j];
                    dS[(size_t)i * T + j] = p * (d - s);
                    edS[(size_t)i * T + j] = p * (edP[(size_t)i * T + j] + es) + 4.0 * F32_EPS * p * (fabs(d) + fabs(s));
                }
            }
            for (int i = 0; i < T; i++)
                for (int c = 0; c < hd; c++) {
                    double eq = 0.0, dq = 0.0, ek = 0.0, ev = 0.0;
                    for (int j = 0; j < T; j++) {
                        double e = edS[(size_t)i * T + j] + gemm_rel(T) * fabs(dS[(size_t)i * T + j]);
                        eq += e * fabs(K_(j, c));
                        dq += dS[(size_t)i * T + j] * K_(j, c);
                        /* dk and dv of row i: sums over the queries j (transposed) */
                        double et = edS[(size_t)j * T + i] + gemm_rel(T) * fabs(dS[(size_t)j * T + i]);
                        ek += et * fabs(Q_(j, c));
                        ev += Pb[(size_t)j * T + i] * fabs(DO_(j, c));
                    }
                    size_t r = (size_t)b * T + i;
                    tdqk[r * 2 * D + (size_t)h * hd + c] = BOUND_SAFETY * scale * eq;
                    tdqk[r * 2 * D + D + (size_t)h * hd + c] = BOUND_SAFETY * scale * ek;
                    tdqkv[r * 3 * D + 2 * D + (size_t)h * hd + c] = BOUND_SAFETY * gemm_rel(T) * ev;
                    sum_abs += fabs(Q_(i, c) * dq);
                }
            for (int i = 0; i < T; i++) {
                double gbar = 0.0;
                for (int j = 0; j < T; j++) {
                    double g = 0.0;
                    for (int c = 0; c < hd; c++) g += (double)Q_(i, c) * K_(j, c);
                    dPh[(size_t)i * T + j] = g; /* reused: g_ij */
                    gbar += Pb[(size_t)i * T + j] * g;
                }
                for (int j = 0; j < T; j++) {
                    double w1 = Pb[(size_t)i * T + j] * (dPh[(size_t)i * T + j] - gbar), w2 = dS[(size_t)i * T + j];
                    for (int c = 0; c < hd; c++) {
                        double t1 = w1 * DO_(i, c) * V_(j, c), t2 = (double)Q_(i, c) * w2 * K_(j, c);
                        sq_dscale += t1 * t1 + t2 * t2;
                    }
                }
            }
#undef Q_
#undef K_
#undef V_
#undef DO_
        }
    double t_dscale = TF32_TOL * sqrt(sq_dscale) + 2.0 * ((double)T * hd + B * H) * F32_EPS * sum_abs;
    CMP(label("attention_backward %s: dqk", what), DQK, N * 2 * D, .rtol = 1e-5, .arms = 1e-6, .elem = tdqk);
    /* dv written at stride 3D; the q, k columns of dqkv untouched (tolerance 0 there) */
    CMP(label("attention_backward %s: dqkv (dv at ldv 3D)", what), DQKV, N * 3 * D, .rtol = 1e-5,
        .elem = tdqkv);
    CMP(label("attention_backward %s: dscale +=", what), DSC, 1, .rtol = TF32_TOL, .atol = t_dscale,
        .base = &dscale0);
}

TEST(test_attention) {
    NEED_GPU();
    const attn_case cases[] = {
        {2, 16, 2, 16, 1, 0}, {3, 8, 4, 16, 1, 0}, {2, 128, 2, 16, 1, 0}, {1, 12, 2, 32, 0, 0},
        {2, 16, 2, 16, 1, 1}, {3, 8, 2, 16, 2, 0},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        run_attention_case(&cases[ci]);
        if (cdcd_backend_error(g_gpu)) return;
        release_all();
    }
}

/* ================================================================ preconditioning, prior */

TEST(test_precondition_prior) {
    NEED_GPU();
    const int B = 3, T = 16, E = 16;
    const size_t N = (size_t)B * T, n = N * E;
    float *sigma = hnew(sizeof(float) * B);
    sigma[0] = 0.05f, sigma[1] = 1.0f, sigma[2] = 20.0f;
    pbuf SIG = pb_f(sigma, (size_t)B), X = pb_f(randn(n, 2.0f), n), F = pb_f(randn(n, 1.0f), n);
    pbuf DX = pb_f(randn(n, 9.0f), n), DF = pb_f(randn(n, 9.0f), n), DDX = pb_f(randn(n, 1.0f), n);
    SIDES BE->ops->precondition(BE, PF(DX), PF(X), PF(F), PF(SIG), B, T, E);
    SIDES BE->ops->precondition_backward(BE, PF(DF), PF(DDX), PF(SIG), B, T, E);
    GPU_OK("precondition");
    CMP("precondition: Dx", DX, n, .rtol = 4e-6, .atol = 1e-6);
    CMP("precondition_backward: dF", DF, n, .rtol = 2e-6, .atol = 1e-7);
    pbuf SC = pb_f(randn(N, 9.0f), N), XS = pb_f(randn(n, 9.0f), n), SC2 = pb_f(randn(N, 9.0f), N);
    SIDES BE->ops->prior_scale(BE, PF(SC), PF(XS), PF(X), PF(SIG), B, T, E);
    SIDES BE->ops->prior_scale(BE, PF(SC2), NULL, PF(X), PF(SIG), B, T, E);
    GPU_OK("prior_scale");
    CMP("prior_scale: scale", SC, N, .rtol = 2e-6);
    CMP("prior_scale: xs", XS, n, .rtol = 4e-6);
    CMP("prior_scale (xs NULL): scale", SC2, N, .rtol = 2e-6);
}

/* ================================================================ fused cross-entropy */

typedef struct {
    const char *name;
    int B, T, K, V, PK; /* PK > 0: the output prior (px, pscale, pw) */
    int bias, subset, grad, pgrad, ldpad, chunk, emb_head;
    float wstd;
} ce_case;

static void run_ce_case(const ce_case *cc) {
    int B = cc->B, T = cc->T, K = cc->K, V = cc->V, PK = cc->PK, N = B * T;
    int ldx = K + cc->ldpad, chunk = cc->chunk;
    /* loss rows as the model gathers them: a loss mask per sequence (the last sequence
     * without any), weight 1 / (count * sequences with loss rows); or every row */
    int32_t *rows = hnew(sizeof(int32_t) * N), *tg = hnew(sizeof(int32_t) * N);
    float *wts = hnew(sizeof(float) * N);
    int n_rows = 0;
    if (cc->subset) {
        uint8_t *lm = hnew((size_t)N);
        int cnt[16] = {0}, valid = 0;
        for (int s = 0; s < B; s++) {
            for (int t = 0; t < T; t++) {
                lm[s * T + t] = (s < B - 1 || B == 1) && cdcd_rng_below(&g_rng, 10) < 7;
                cnt[s] += lm[s * T + t];
            }
            valid += cnt[s] > 0;
        }
        for (int s = 0; s < B; s++)
            for (int t = 0; t < T; t++)
                if (lm[s * T + t]) {
                    rows[n_rows] = s * T + t;
                    wts[n_rows] = 1.0f / ((float)cnt[s] * (float)valid);
                    n_rows++;
                }
    } else {
        n_rows = N;
        for (int i = 0; i < N; i++) wts[i] = 1.0f / (float)N;
    }
    for (int i = 0; i < n_rows; i++) tg[i] = (int32_t)cdcd_rng_below(&g_rng, (uint64_t)V);
    float *x = randn((size_t)N * ldx, cc->emb_head ? 2.0f : 1.0f);
    float *w = cc->emb_head ? unit_rows(randn((size_t)V * K, 1.0f), V, K) : randn((size_t)V * K, cc->wstd);
    float *b = randn((size_t)V, 0.5f);
    float *px = NULL, *ps = NULL, *pw = NULL;
    if (PK) {
        px = randn((size_t)N * PK, 1.5f);
        pw = unit_rows(randn((size_t)V * PK, 1.0f), V, PK);
        ps = hnew(sizeof(float) * N);
        for (int s = 0; s < B; s++) {
            float sig = 1.5f + 2.5f * cdcd_rng_uniform_f(&g_rng);
            for (int t = 0; t < T; t++) ps[s * T + t] = sqrtf((float)PK) / (sig * sig);
        }
    }
    int pgrad = cc->grad && PK && cc->pgrad;
    float *dx0 = randn((size_t)N * ldx, 9.0f), *dw0 = randn((size_t)V * K, 0.1f), *db0 = randn((size_t)V, 0.1f);
    float *pdx0 = PK ? randn((size_t)N * PK, 9.0f) : NULL, *pdw0 = PK ? randn((size_t)V * PK, 0.1f) : NULL;
    pbuf X = pb_f(x, (size_t)N * ldx), ROWS = cc->subset ? pb_i32(rows, (size_t)n_rows) : none;
    pbuf TG = pb_i32(tg, (size_t)n_rows), WT = pb_f(wts, (size_t)n_rows), W = pb_f(w, (size_t)V * K);
    pbuf Bb = cc->bias ? pb_f(b, (size_t)V) : none, LOSS = pb_f(randn((size_t)n_rows, 9.0f), (size_t)n_rows);
    pbuf DX = cc->grad ? pb_f(dx0, (size_t)N * ldx) : none, DW = cc->grad ? pb_f(dw0, (size_t)V * K) : none;
    pbuf DB = cc->grad && cc->bias ? pb_f(db0, (size_t)V) : none;
    pbuf PX = PK ? pb_f(px, (size_t)N * PK) : none, PS = PK ? pb_f(ps, (size_t)N) : none;
    pbuf PW = PK ? pb_f(pw, (size_t)V * PK) : none;
    pbuf PDX = pgrad ? pb_f(pdx0, (size_t)N * PK) : none, PDW = pgrad ? pb_f(pdw0, (size_t)V * PK) : none;
    pbuf SX = pb_new(sizeof(float) * chunk * K), SL = pb_new(sizeof(float) * chunk * V);
    pbuf SDX = pb_new(sizeof(float) * chunk * K);
    pbuf SPX = PK ? pb_new(sizeof(float) * chunk * PK) : none, SPDX = pgrad ? pb_new(sizeof(float) * chunk * PK) : none;
    SIDES {
        cdcd_ops_ce_args a = {0};
        a.x = PF(X);
        a.ldx = ldx;
        a.rows = PI(ROWS);
        a.n_rows = n_rows;
        a.targets = PI(TG);
        a.weights = PF(WT);
        a.w = PF(W);
        a.b = PF(Bb);
        a.V = V;
        a.K = K;
        a.losses = PF(LOSS);
        a.dx = PF(DX);
        a.lddx = ldx;
        a.dw = PF(DW);
        a.db = PF(DB);
        a.chunk = chunk;
        a.scratch_x = PF(SX);
        a.scratch_logits = PF(SL);
        a.scratch_dx = PF(SDX);
        if (PK) {
            a.px = PF(PX);
            a.pscale = PF(PS);
            a.pw = PF(PW);
            a.PK = PK;
            a.pdx = PF(PDX);
            a.pdw = PF(PDW);
            a.scratch_px = PF(SPX);
            a.scratch_pdx = PF(SPDX);
        }
        BE->ops->linear_ce(BE, &a);
    }
    GPU_OK(cc->name);

    /* host bounds (double) */
    int n_chunks = (n_rows + chunk - 1) / chunk;
    double *tl = hnew(sizeof(double) * n_rows), *tdx = hnew(sizeof(double) * N * ldx);
    double *tdw = hnew(sizeof(double) * V * K), *tdb = hnew(sizeof(double) * V);
    double *tpdx = hnew(sizeof(double) * N * (PK ? PK : 1)), *tpdw = hnew(sizeof(double) * V * (PK ? PK : 1));
    double *l = hnew(sizeof(double) * V), *el = hnew(sizeof(double) * V);
    double *dl = hnew(sizeof(double) * V), *edl = hnew(sizeof(double) * V);
    double *xs = hnew(sizeof(double) * (PK ? PK : 1));
    uint8_t *written = hnew((size_t)N);
    for (int i = 0; i < n_rows; i++) {
        int r = cc->subset ? rows[i] : i;
        written[r] = 1;
        for (int k = 0; k < PK; k++) xs[k] = (double)(ps[r] * px[(size_t)r * PK + k]);
        double mx = -INFINITY, M = 0.0;
        for (int j = 0; j < V; j++) {
            double acc = 0.0, a = 0.0;
            for (int k = 0; k < K; k++) {
                double p = (double)x[(size_t)r * ldx + k] * w[(size_t)j * K + k];
                acc += p, a += fabs(p);
            }
            double e = gemm_rel(K) * a;
            for (int k = 0, pk = PK; k < pk; k++) {
                double p = xs[k] * pw[(size_t)j * PK + k];
                acc += p;
                e += (gemm_rel(PK) + F32_EPS) * fabs(p);
            }
            if (cc->bias) acc += b[j], e += 2.0 * F32_EPS * fabs(b[j]);
            e += 2.0 * F32_EPS * fabs(acc);
            l[j] = acc, el[j] = e;
            mx = fmax(mx, acc), M = fmax(M, e);
        }
        double S = 0.0;
        for (int j = 0; j < V; j++) S += exp(l[j] - mx);
        double lse = mx + log(S);
        tl[i] = BOUND_SAFETY * 2.0 * M + 4.0 * F32_EPS * (fabs(lse) + fabs(l[tg[i]]) + 1.0) + 2.0 * V * F32_EPS;
        if (!cc->grad) continue;
        double ep = expm1(2.0 * M) + 2.0 * V * F32_EPS;
        for (int j = 0; j < V; j++) {
            double p = exp(l[j] - mx) / S;
            dl[j] = wts[i] * (p - (j == tg[i]));
            edl[j] = wts[i] * p * ep + 1e-30;
        }
        for (int k = 0; k < K; k++) {
            double s = 0.0;
            for (int j = 0; j < V; j++) s += (edl[j] + gemm_rel(V) * fabs(dl[j])) * fabs(w[(size_t)j * K + k]);
            tdx[(size_t)r * ldx + k] = BOUND_SAFETY * s;
        }
        for (int j = 0; j < V; j++) {
            double e = edl[j] + gemm_rel(n_rows + n_chunks) * fabs(dl[j]);
            for (int k = 0; k < K; k++) tdw[(size_t)j * K + k] += BOUND_SAFETY * e * fabs(x[(size_t)r * ldx + k]);
            tdb[j] += BOUND_SAFETY * e;
            for (int k = 0; k < PK && pgrad; k++) tpdw[(size_t)j * PK + k] += BOUND_SAFETY * e * fabs(xs[k]);
        }
        for (int k = 0; k < PK && pgrad; k++) {
            double s = 0.0;
            for (int j = 0; j < V; j++) s += (edl[j] + gemm_rel(V) * fabs(dl[j])) * fabs(pw[(size_t)j * PK + k]);
            tpdx[(size_t)r * PK + k] = BOUND_SAFETY * ps[r] * s;
        }
    }
    CMP(label("linear_ce %s: losses", cc->name), LOSS, (size_t)n_rows, .rtol = 1e-5, .elem = tl);
    if (!cc->grad) return;
    /* dx: listed rows within their bounds; every other value (unlisted rows, the columns
     * past K of a stride) exactly the prefill */
    CMP(label("linear_ce %s: dx", cc->name), DX, (size_t)N * ldx, .rtol = 1e-5, .arms = 1e-6, .elem = tdx);
    float *dxg = dlf(DX, 1, (size_t)N * ldx);
    size_t moved = 0;
    for (int r = 0; r < N; r++)
        for (int k = written[r] ? K : 0; k < ldx; k++)
            moved += memcmp(&dxg[(size_t)r * ldx + k], &dx0[(size_t)r * ldx + k], sizeof(float)) != 0;
    EXPECTF(moved == 0, "linear_ce %s: %zu dx values outside the listed rows' first K columns changed",
            cc->name, moved);
    CMP(label("linear_ce %s: dw +=", cc->name), DW, (size_t)V * K, .rtol = 1e-5, .arms = 1e-6,
        .base = dw0, .elem = tdw);
    if (cc->bias)
        CMP(label("linear_ce %s: db +=", cc->name), DB, (size_t)V, .rtol = 1e-5, .arms = 1e-6, .base = db0,
            .elem = tdb);
    if (pgrad) {
        CMP(label("linear_ce %s: pdx", cc->name), PDX, (size_t)N * PK, .rtol = 1e-5, .arms = 1e-6,
            .elem = tpdx);
        float *pg = dlf(PDX, 1, (size_t)N * PK);
        size_t pm = 0;
        for (int r = 0; r < N; r++)
            if (!written[r]) pm += memcmp(pg + (size_t)r * PK, pdx0 + (size_t)r * PK, sizeof(float) * PK) != 0;
        EXPECTF(pm == 0, "linear_ce %s: pdx of %zu unlisted rows changed", cc->name, pm);
        CMP(label("linear_ce %s: pdw +=", cc->name), PDW, (size_t)V * PK, .rtol = 1e-5, .arms = 1e-6,
            .base = pdw0, .elem = tpdw);
    }
}

TEST(test_linear_ce) {
    NEED_GPU();
    const ce_case cases[] = {
        /* name                                         B  T   K   V    PK b  sub gr pg pad chunk emb wstd */
        {"logits head, forward only, loss rows, chunk 16", 3, 16, 32, 300, 0, 1, 1, 0, 0, 0, 16, 0, 0.2f},
        {"logits head, dx/dw/db, loss rows, chunk 16", 3, 16, 32, 300, 0, 1, 1, 1, 0, 0, 16, 0, 0.2f},
        {"logits head, dx/dw/db, rows NULL, chunk 13, ldx K+5", 2, 16, 32, 257, 0, 1, 0, 1, 0, 5, 13, 0, 0.2f},
        {"embedding head (w = etab, no b), dx/dw, chunk 20", 3, 16, 16, 50, 0, 0, 1, 1, 0, 0, 20, 1, 0.0f},
        {"logits head + prior, dx/dw/db/pdx/pdw, chunk 16", 3, 16, 32, 300, 16, 1, 1, 1, 1, 0, 16, 0, 0.2f},
        {"logits head + prior, forward only, chunk 7", 3, 16, 32, 300, 16, 1, 1, 0, 0, 0, 7, 0, 0.2f},
        {"logits head + prior, no prior gradients, chunk 16", 3, 16, 32, 300, 16, 1, 1, 1, 0, 0, 16, 0, 0.2f},
        {"logits head, one chunk (256 > rows)", 3, 16, 64, 300, 0, 1, 1, 1, 0, 0, 256, 0, 0.15f},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        run_ce_case(&cases[ci]);
        if (cdcd_backend_error(g_gpu)) return;
        release_all();
    }
}

/* ================================================================ inference head */

typedef struct {
    const char *name;
    int B, T, K, V, E;
    int bias, prior, emb_head;
    int x0, ent, arg, samp, logits;
    float temperature, score_temp, wstd;
    int rows_chunk, chunk, tile_rows;
} head_case;

/* model_layout.c's vocabulary split: at most 64 blocks, widths a multiple of 16 */
static void vocab_split(int V, int *blocks, int *width) {
    int nb = 64;
    if (nb > (V + 15) / 16) nb = (V + 15) / 16;
    int w = (V + nb - 1) / nb;
    w = (w + 15) / 16 * 16;
    *width = w;
    *blocks = (V + w - 1) / w;
}

static void run_head_case(const head_case *hc) {
    int B = hc->B, T = hc->T, K = hc->K, V = hc->V, E = hc->E, N = B * T;
    int blocks, bw;
    vocab_split(V, &blocks, &bw);
    float ist = 1.0f / hc->score_temp;
    float *etab = unit_rows(randn((size_t)V * E, 1.0f), V, E);
    float *hi = randn((size_t)N * K, hc->emb_head ? 1.5f : 1.0f);
    float *w = hc->emb_head ? etab : randn((size_t)V * K, hc->wstd);
    float *b = randn((size_t)V, 0.5f), *xp = randn((size_t)N * E, 0.7f), *u = randu((size_t)N, 0.0f, 1.0f);
    size_t sl = (size_t)hc->rows_chunk * V;
    if ((size_t)blocks * hc->tile_rows * bw > sl) sl = (size_t)blocks * hc->tile_rows * bw;
    pbuf HI = pb_f(hi, (size_t)N * K), ETAB = pb_f(etab, (size_t)V * E);
    pbuf W = hc->emb_head ? ETAB : pb_f(w, (size_t)V * K), Bb = hc->bias ? pb_f(b, (size_t)V) : none;
    pbuf XP = hc->prior ? pb_f(xp, (size_t)N * E) : none, U = pb_f(u, (size_t)N);
    pbuf SL = pb_new(sl * sizeof(float)), HS = pb_new(sizeof(float) * blocks * hc->chunk * 3);
    pbuf HA = pb_new(sizeof(int32_t) * blocks * hc->chunk), HX = pb_new(sizeof(float) * blocks * hc->chunk * E);
    float *x0[2], *ent[2], *lg[2];
    int32_t *am[2], *sp[2];
    for (int s = 0; s < 2; s++) { /* sentinels: every wanted value must be written */
        x0[s] = hnew(sizeof(float) * N * E), ent[s] = hnew(sizeof(float) * N);
        lg[s] = hnew(sizeof(float) * N * V);
        am[s] = hnew(sizeof(int32_t) * N), sp[s] = hnew(sizeof(int32_t) * N);
        for (int i = 0; i < N * E; i++) x0[s][i] = NAN;
        for (int i = 0; i < N; i++) ent[s][i] = NAN, am[s][i] = -7, sp[s][i] = -7;
        for (int i = 0; i < N * V; i++) lg[s][i] = NAN;
    }
    /* the GPU's host outputs as they are when head_infer returns, before any sync (the
     * model reads them then) */
    float *snap_x0 = hnew(sizeof(float) * N * E), *snap_ent = hnew(sizeof(float) * N);
    float *snap_lg = hnew(sizeof(float) * N * V);
    int32_t *snap_am = hnew(sizeof(int32_t) * N), *snap_sp = hnew(sizeof(int32_t) * N);
    SIDES BE->ops->set_inference(BE, 1);
    SIDES {
        cdcd_backend_head_args a = {
            .hi = PF(HI), .w = PF(W), .b = PF(Bb), .etab = PF(ETAB), .xprior = PF(XP),
            .uniform = PF(U), .N = (size_t)N, .K = K, .V = V, .E = E, .inv_score_temp = ist,
            .temperature = hc->temperature, .x0 = hc->x0 ? x0[side] : NULL,
            .entropy = hc->ent ? ent[side] : NULL, .logits = hc->logits ? lg[side] : NULL,
            .argmax = hc->arg ? am[side] : NULL, .sampled = hc->samp ? sp[side] : NULL,
            .scratch_logits = PF(SL), .hb_stats = PF(HS), .hb_x0 = PF(HX), .hb_arg = PI(HA),
            .rows_chunk = hc->rows_chunk, .blocks = blocks, .block_width = bw,
            .tile_rows = hc->tile_rows, .chunk = hc->chunk};
        BE->ops->head_infer(BE, &a);
        if (side) {
            memcpy(snap_x0, x0[1], sizeof(float) * N * E);
            memcpy(snap_ent, ent[1], sizeof(float) * N);
            memcpy(snap_lg, lg[1], sizeof(float) * N * V);
            memcpy(snap_am, am[1], sizeof(int32_t) * N);
            memcpy(snap_sp, sp[1], sizeof(int32_t) * N);
        }
        BE->ops->sync(BE);
    }
    SIDES BE->ops->set_inference(BE, 0);
    GPU_OK(hc->name);
    int complete = !memcmp(snap_x0, x0[1], sizeof(float) * N * E) && !memcmp(snap_ent, ent[1], sizeof(float) * N) &&
                   !memcmp(snap_lg, lg[1], sizeof(float) * N * V) && !memcmp(snap_am, am[1], sizeof(int32_t) * N) &&
                   !memcmp(snap_sp, sp[1], sizeof(int32_t) * N);
    EXPECTF(complete, "head_infer %s: the host outputs changed after head_infer returned (model.c reads "
            "them without a sync)", hc->name);

    /* host logits (double) and their bound */
    double *l = hnew(sizeof(double) * N * V), *el = hnew(sizeof(double) * N * V);
    double *tl = hnew(sizeof(double) * N * V), *tx = hnew(sizeof(double) * N * E);
    double *te = hnew(sizeof(double) * N), *M = hnew(sizeof(double) * N);
    double *p = hnew(sizeof(double) * V);
    for (int n = 0; n < N; n++) {
        double mx = -INFINITY;
        M[n] = 0.0;
        for (int j = 0; j < V; j++) {
            double acc = 0.0, a = 0.0, e;
            for (int k = 0; k < K; k++) {
                double t = (double)hi[(size_t)n * K + k] * w[(size_t)j * K + k];
                acc += t, a += fabs(t);
            }
            e = gemm_rel(K) * a;
            if (hc->prior) {
                a = 0.0;
                for (int k = 0; k < E; k++) {
                    double t = (double)xp[(size_t)n * E + k] * etab[(size_t)j * E + k];
                    acc += t, a += fabs(t);
                }
                e += gemm_rel(E) * a;
            }
            if (hc->bias) acc += b[j], e += 2.0 * F32_EPS * fabs(b[j]);
            e += 2.0 * F32_EPS * fabs(acc);
            l[(size_t)n * V + j] = acc, el[(size_t)n * V + j] = e;
            tl[(size_t)n * V + j] = BOUND_SAFETY * e;
            mx = fmax(mx, acc), M[n] = fmax(M[n], e);
        }
        /* p = softmax(l / score_temp); x0 and entropy bounds */
        double S = 0.0, ybar = 0.0, dev = 0.0, devE = 0.0;
        for (int j = 0; j < V; j++) S += p[j] = exp(ist * (l[(size_t)n * V + j] - mx));
        for (int j = 0; j < V; j++) p[j] /= S, ybar += p[j] * ist * (l[(size_t)n * V + j] - mx);
        for (int j = 0; j < V; j++) {
            double y = ist * (l[(size_t)n * V + j] - mx);
            dev += p[j] * fabs(y - ybar) * ist * el[(size_t)n * V + j];
            devE += p[j] * -y;
        }
        te[n] = BOUND_SAFETY * dev + 2.0 * (ist * M[n]) * (ist * M[n]) + 4.0 * V * F32_EPS * devE +
                1e-6 * (1.0 + fabs(log(S)));
        double ep = expm1(2.0 * ist * M[n]) + 2.0 * V * F32_EPS;
        for (int c = 0; c < E; c++) {
            double s = 0.0;
            for (int j = 0; j < V; j++) s += p[j] * fabs(etab[(size_t)j * E + c]);
            tx[(size_t)n * E + c] = BOUND_SAFETY * sqrt((double)E) * s * (ep + gemm_rel(V)) + 1e-6;
        }
    }
    if (hc->logits)
        CLOSE(label("head_infer %s: logits", hc->name), lg[1], lg[0], (size_t)N * V, .rtol = 1e-5, .atol = 1e-6,
              .elem = tl);
    if (hc->x0) CLOSE(label("head_infer %s: x0", hc->name), x0[1], x0[0], (size_t)N * E, .rtol = 1e-5, .elem = tx);
    if (hc->ent) CLOSE(label("head_infer %s: entropy", hc->name), ent[1], ent[0], (size_t)N, .rtol = 1e-5, .elem = te);

    /* argmax (and the temperature-0 draw, which is the argmax): exact where the top two
     * host logits are further apart than their bounds */
    for (int which = 0; which < 2; which++) {
        const int32_t *gi = which ? sp[1] : am[1], *ci = which ? sp[0] : am[0];
        if (which ? !(hc->samp && !(hc->temperature > 0.0f)) : !hc->arg) continue;
        int compared = 0, bad = 0, first_bad = -1;
        for (int n = 0; n < N; n++) {
            const double *ln = l + (size_t)n * V, *en = el + (size_t)n * V;
            int j1 = 0, j2 = -1;
            for (int j = 1; j < V; j++)
                if (ln[j] > ln[j1]) j2 = j1, j1 = j;
                else if (j2 < 0 || ln[j] > ln[j2]) j2 = j;
            double margin = BOUND_SAFETY * (en[j1] + en[j2]) + 1e-6 * (1.0 + fabs(ln[j1]));
            if (ln[j1] - ln[j2] <= margin) continue;
            compared++;
            if (gi[n] != ci[n] || ci[n] != j1) {
                if (first_bad < 0) first_bad = n;
                bad++;
            }
        }
        printf("  %-58s %d of %d rows away from a tie: %d differ\n",
               label("head_infer %s: %s", hc->name, which ? "sampled (t=0)" : "argmax"), compared, N, bad);
        if (bad)
            printf("  first at row %d: gpu %d cpu %d\n", first_bad, (int)gi[first_bad], (int)ci[first_bad]);
        EXPECTF(bad == 0, "head_infer %s: %s differs in %d rows", hc->name, which ? "sampled" : "argmax", bad);
        EXPECTF(compared * 2 >= N, "head_infer %s: only %d of %d rows compared (ties)", hc->name, compared, N);
    }
    /* with the logits: the GPU's argmax is the first maximum of its own logits */
    if (hc->logits && hc->arg) {
        int bad = 0;
        for (int n = 0; n < N; n++) {
            const float *ln = lg[1] + (size_t)n * V;
            int j1 = 0;
            for (int j = 1; j < V; j++)
                if (ln[j] > ln[j1]) j1 = j;
            bad += am[1][n] != j1;
        }
        EXPECTF(bad == 0, "head_infer %s: the GPU's argmax is not the first max of its logits in %d rows",
                hc->name, bad);
    }
    /* draws at temperature > 0: the CPU's pick k has u in [c(k-1), c(k)) of the CDF in
     * vocabulary order; compared where u is further than the CDF's uncertainty from both */
    if (hc->samp && hc->temperature > 0.0f) {
        double it = 1.0 / hc->temperature;
        int compared = 0, bad = 0, self_bad = 0;
        double *c = hnew(sizeof(double) * (V + 1));
        for (int n = 0; n < N; n++) {
            /* the uncertainty of the logits: measured when the call returned them, else the
             * bound */
            double delta = 0.0;
            const float *lc = hc->logits ? lg[0] + (size_t)n * V : NULL;
            if (hc->logits)
                for (int j = 0; j < V; j++) delta = fmax(delta, fabs((double)lg[1][(size_t)n * V + j] - lc[j]));
            else
                delta = BOUND_SAFETY * M[n];
            /* logits each off by <= delta move a CDF value c by <= c (1 - c) (e^(2 delta / t) - 1)
             * / e^(-2 delta / t) <= expm1(2 delta / t) / 4 (x 2 here) */
            double tol_cdf = 0.5 * expm1(2.0 * delta * it) + 4.0 * V * F32_EPS;
            double mx = -INFINITY, S = 0.0;
            for (int j = 0; j < V; j++) mx = fmax(mx, lc ? (double)lc[j] : l[(size_t)n * V + j]);
            c[0] = 0.0;
            for (int j = 0; j < V; j++) S += exp(((lc ? (double)lc[j] : l[(size_t)n * V + j]) - mx) * it), c[j + 1] = S;
            int k = sp[0][n];
            if (k < 0 || k >= V) {
                bad++;
                continue;
            }
            double lo = c[k] / S, hi2 = c[k + 1] / S, uu = u[n];
            if (uu - lo > tol_cdf && hi2 - uu > tol_cdf) {
                compared++;
                bad += sp[1][n] != k;
            }
            if (hc->logits) { /* the GPU's pick is the draw of its own logits */
                const float *lgn = lg[1] + (size_t)n * V;
                double gm = -INFINITY, GS = 0.0, below = 0.0;
                int kg = sp[1][n];
                for (int j = 0; j < V; j++) gm = fmax(gm, (double)lgn[j]);
                for (int j = 0; j < V; j++) {
                    double e = exp(((double)lgn[j] - gm) * it);
                    if (j < kg) below += e;
                    GS += e;
                }
                double glo = below / GS, ghi = kg >= 0 && kg < V ? (below + exp(((double)lgn[kg] - gm) * it)) / GS : -1.0;
                double st = 4.0 * V * F32_EPS + 1e-6;
                if (kg < 0 || kg >= V || uu < glo - st || uu > ghi + st) self_bad++;
            }
        }
        printf("  %-58s %d of %d draws away from a CDF boundary: %d differ; %d inconsistent with the GPU's own logits\n",
               label("head_infer %s: sampled (t=%.2f)", hc->name, (double)hc->temperature), compared, N, bad,
               self_bad);
        EXPECTF(bad == 0, "head_infer %s: sampled ids differ in %d rows", hc->name, bad);
        EXPECTF(self_bad == 0, "head_infer %s: %d sampled ids are not the draw of the GPU's logits", hc->name,
                self_bad);
        EXPECTF(hc->logits ? compared * 2 >= N : compared >= 1,
                "head_infer %s: only %d of %d draws compared", hc->name, compared, N);
    }
}

TEST(test_head_infer) {
    NEED_GPU();
    const head_case cases[] = {
        /* name  B T K V E  bias prior emb  x0 ent arg samp logits  temp score_t wstd  rows_chunk chunk tile */
        {"blocked: x0/entropy/argmax/sampled t=0, b, prior", 3, 16, 32, 300, 16, 1, 1, 0, 1, 1, 1, 1, 0,
         0.0f, 1.0f, 0.2f, 20, 20, 8},
        {"blocked: x0 only, embedding head (w = etab)", 3, 16, 16, 50, 16, 0, 0, 1, 1, 0, 0, 0, 0, 0.0f,
         1.0f, 0.0f, 20, 20, 8},
        {"blocked: argmax only, the model's chunk sizes", 3, 16, 32, 300, 16, 1, 0, 0, 0, 0, 1, 0, 0, 0.0f,
         1.0f, 0.2f, 256, 1024, 128},
        {"blocked: x0/entropy, score_temp 0.5, V 257", 3, 16, 32, 257, 16, 1, 1, 0, 1, 1, 0, 0, 0, 0.0f, 0.5f,
         0.2f, 20, 20, 8},
        {"whole rows: logits/x0/entropy/argmax, b, prior", 3, 16, 32, 300, 16, 1, 1, 0, 1, 1, 1, 0, 1, 0.0f,
         1.0f, 0.2f, 20, 20, 8},
        {"whole rows: sampled t=0.8 + logits/entropy/argmax", 3, 16, 32, 300, 16, 1, 1, 0, 0, 1, 1, 1, 1,
         0.8f, 1.0f, 0.5f, 20, 20, 8},
        {"whole rows: sampled t=0.5 only", 3, 16, 32, 300, 16, 1, 0, 0, 0, 0, 0, 1, 0, 0.5f, 1.0f, 0.5f, 20,
         20, 8},
    };
    for (size_t ci = 0; ci < sizeof cases / sizeof cases[0]; ci++) {
        run_head_case(&cases[ci]);
        if (cdcd_backend_error(g_gpu)) return;
        release_all();
    }
}

/* ================================================================ determinism */

/* The GPU against itself: the reducing ops rerun from the same state give the same bits
 * (backend.h: fixed splits, fixed reduction order; no float atomics). */
TEST(test_gpu_deterministic) {
    NEED_GPU();
    cdcd_backend *be = g_gpu;
    const cdcd_backend_ops *o = be->ops;
    /* grad_sqnorm */
    size_t lens[] = {CDCD_BACKEND_SEGMENT, 4099, 17, 30000};
    cdcd_backend_segment segs[4];
    size_t n = make_segs(segs, lens, NULL, 4);
    pbuf G = pb_f(randn(n, 1.0f), n);
    double s1 = o->grad_sqnorm(be, G.g, segs, 4), s2 = o->grad_sqnorm(be, G.g, segs, 4);
    GPU_OK("grad_sqnorm");
    EXPECTF(memcmp(&s1, &s2, sizeof s1) == 0, "grad_sqnorm: %.17g then %.17g", s1, s2);

    /* embed_backward: ids with repeats, into the same starting detab */
    {
        int B = 3, T = 16, E = 16, V = 50, in_dim = 3 * E + 1;
        size_t N = (size_t)B * T;
        uint8_t *mask = hnew(N);
        for (size_t i = 0; i < N; i++) mask[i] = (i % T) < 4;
        float *det0 = randn((size_t)V * E, 1.0f);
        pbuf DET = pb_f(det0, (size_t)V * E), DE = pb_new(N * E * sizeof(float));
        pbuf DCH = pb_f(randn(N * in_dim, 1.0f), N * in_dim), DDX = pb_f(randn(N * E, 1.0f), N * E);
        pbuf DXP = pb_f(randn(N * E, 1.0f), N * E), IDS = pb_i32(rand_ids(N, 5), N);
        pbuf CM = pb_bytes(mask, N), SIG = pb_f(randu((size_t)B, 0.1f, 10.0f), (size_t)B);
        cdcd_backend_embed_grad a = {.detab = DET.g, .de = DE.g, .dchan = DCH.g, .dDx = DDX.g,
                                     .dxprior = DXP.g, .ids = IDS.g, .cond_mask = CM.g,
                                     .sigma = SIG.g, .B = B, .T = T, .E = E, .in_dim = in_dim,
                                     .cond_channels = 1};
        o->embed_backward(be, &a);
        float *r1 = dlf(DET, 1, (size_t)V * E);
        o->upload(be, DET.g, det0, sizeof(float) * V * E);
        o->embed_backward(be, &a);
        float *r2 = dlf(DET, 1, (size_t)V * E);
        GPU_OK("embed_backward");
        SAME("embed_backward twice: detab", r2, r1, sizeof(float) * V * E);
    }
    /* adaln_backward and gate_residual_backward: sums over T into the modulation */
    {
        int B = 2, T = 128, D = 64, stride = 6 * D;
        size_t nx = (size_t)B * T * D, nm = (size_t)B * stride;
        float *dmod0 = randn(nm, 0.5f), *dx0 = randn(nx, 1.0f);
        pbuf X = pb_f(randn(nx, 1.0f), nx), MOD = pb_f(randn(nm, 0.3f), nm);
        pbuf OUT = pb_new(nx * sizeof(float)), MEAN = pb_new((size_t)B * T * sizeof(float));
        pbuf RSTD = pb_new((size_t)B * T * sizeof(float)), DOUT = pb_f(randn(nx, 1.0f), nx);
        pbuf DX = pb_f(dx0, nx), DMOD = pb_f(dmod0, nm), BR = pb_f(randn(nx, 1.0f), nx);
        pbuf DBR = pb_new(nx * sizeof(float));
        o->adaln_forward(be, OUT.g, MEAN.g, RSTD.g, X.g, MOD.g, (float *)MOD.g + D, stride, B, T, D);
        float *r[2][2];
        for (int rep = 0; rep < 2; rep++) {
            o->upload(be, DX.g, dx0, nx * sizeof(float));
            o->upload(be, DMOD.g, dmod0, nm * sizeof(float));
            o->adaln_backward(be, DX.g, DMOD.g, (float *)DMOD.g + D, DOUT.g, X.g, MEAN.g, RSTD.g,
                              (float *)MOD.g + D, stride, B, T, D);
            o->gate_residual_backward(be, DBR.g, (float *)DMOD.g + 2 * D, DOUT.g, BR.g, (float *)MOD.g + 2 * D,
                                      stride, B, T, D);
            r[rep][0] = dlf(DX, 1, nx);
            r[rep][1] = dlf(DMOD, 1, nm);
        }
        GPU_OK("adaln_backward / gate_residual_backward");
        SAME("adaln_backward twice: dx", r[1][0], r[0][0], nx * sizeof(float));
        SAME("adaln_backward + gate_residual_backward twice: dmod", r[1][1], r[0][1], nm * sizeof(float));
    }
    /* attention_backward (T 128): dqk, dv, dscale */
    {
        int B = 2, T = 128, H = 2, hd = 16, D = H * hd;
        size_t N = (size_t)B * T, nP = (size_t)B * H * T * T;
        float *qk = randn(N * 2 * D, 1.0f);
        for (size_t i = 0; i < N; i++) unit_rows(qk + i * 2 * D, 2 * H, hd);
        float scale = 10.0f;
        pbuf QK = pb_f(qk, N * 2 * D), QKV = pb_f(randn(N * 3 * D, 1.0f), N * 3 * D), SC = pb_f(&scale, 1);
        pbuf O = pb_new(N * D * sizeof(float)), P = pb_new(nP * sizeof(float));
        pbuf DOUT = pb_f(randn(N * D, 1.0f), N * D), DQK = pb_new(N * 2 * D * sizeof(float));
        pbuf DQKV = pb_new(N * 3 * D * sizeof(float)), DSC = pb_new(sizeof(float));
        pbuf DP = pb_new(nP * sizeof(float)), BH = pb_new((size_t)B * H * sizeof(float));
        o->attention_forward(be, O.g, P.g, QK.g, (float *)QKV.g + 2 * D, 3 * D, NULL, SC.g, B, T, H, hd);
        float *r[2][3];
        for (int rep = 0; rep < 2; rep++) {
            o->zero(be, DSC.g, sizeof(float));
            o->attention_backward(be, DQK.g, (float *)DQKV.g + 2 * D, 3 * D, DSC.g, DP.g, BH.g, DOUT.g, P.g,
                                  QK.g, (float *)QKV.g + 2 * D, 3 * D, SC.g, B, T, H, hd);
            r[rep][0] = dlf(DQK, 1, N * 2 * D);
            r[rep][1] = dlf(DQKV, 1, N * 3 * D);
            r[rep][2] = dlf(DSC, 1, 1);
        }
        GPU_OK("attention_backward");
        SAME("attention_backward twice: dqk", r[1][0], r[0][0], N * 2 * D * sizeof(float));
        SAME("attention_backward twice: dv", r[1][1], r[0][1], N * 3 * D * sizeof(float));
        SAME("attention_backward twice: dscale", r[1][2], r[0][2], sizeof(float));
    }
    /* linear_backward: dw, db over 512 rows */
    {
        int N = 512, ni = 64, no = 96;
        float *dw0 = randn((size_t)no * ni, 0.1f), *db0 = randn((size_t)no, 0.1f);
        pbuf IN = pb_f(randn((size_t)N * ni, 1.0f), (size_t)N * ni), W = pb_f(randn((size_t)no * ni, 0.1f), (size_t)no * ni);
        pbuf DOUT = pb_f(randn((size_t)N * no, 1.0f), (size_t)N * no), DIN = pb_new(sizeof(float) * N * ni);
        pbuf DW = pb_f(dw0, (size_t)no * ni), DB = pb_f(db0, (size_t)no);
        float *r[2][3];
        for (int rep = 0; rep < 2; rep++) {
            o->upload(be, DW.g, dw0, sizeof(float) * no * ni);
            o->upload(be, DB.g, db0, sizeof(float) * no);
            o->linear_backward(be, DIN.g, 0, DW.g, DB.g, DOUT.g, IN.g, W.g, (size_t)N, ni, no);
            r[rep][0] = dlf(DIN, 1, (size_t)N * ni);
            r[rep][1] = dlf(DW, 1, (size_t)no * ni);
            r[rep][2] = dlf(DB, 1, (size_t)no);
        }
        GPU_OK("linear_backward");
        SAME("linear_backward twice: din", r[1][0], r[0][0], sizeof(float) * N * ni);
        SAME("linear_backward twice: dw", r[1][1], r[0][1], sizeof(float) * no * ni);
        SAME("linear_backward twice: db", r[1][2], r[0][2], sizeof(float) * no);
    }
}

int main(void) {
    RUN(test_cuda_table_complete);
    RUN(test_memory_roundtrip);
    RUN(test_grad_sqnorm);
    RUN(test_adamw);
    RUN(test_ema_swap_add_guide);
    RUN(test_linear);
    RUN(test_unit_embed);
    RUN(test_noisy_input);
    RUN(test_input_channels);
    RUN(test_embed_backward);
    RUN(test_time_fourier);
    RUN(test_adaln);
    RUN(test_gate_residual);
    RUN(test_activations);
    RUN(test_qk_norm_rope);
    RUN(test_attention);
    RUN(test_precondition_prior);
    RUN(test_linear_ce);
    RUN(test_head_infer);
    RUN(test_gpu_deterministic);
    teardown();
    return test_summary();
}
