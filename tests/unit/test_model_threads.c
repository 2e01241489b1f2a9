/* Two models driven from two threads of one process, as in cdcdd: one trains while the
 * other samples. OpenBLAS has a single, process-global thread count; the sampling model's
 * inference ("split" mode) wants one BLAS thread. The training model must keep its own
 * count all the time (core/blas.h, the thread policy), and both models must compute exactly
 * what they compute alone.
 *
 * A monitor thread reads the global count while the two run. Before the policy, every
 * inference call set it to 1 (and back to the sampler's count), so the trainer's products
 * silently ran on one BLAS thread: the monitor then sees 1 and the test fails. Speed itself
 * is not asserted (the machine is shared; the step times are printed). */
#include <cblas.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"
#include "rng.h"
#include "test.h"

#define TB 4
#define TT 64
#define TV 300
#define TRAIN_THREADS 2
#define SAMPLE_THREADS 2
#define STEPS 6
#define MIN_INFER_CALLS 4

static cdcd_model_config small_config(void) {
    cdcd_model_config c;
    cdcd_model_config_default(&c);
    c.vocab_size = TV;
    c.d_emb = 16;
    c.d_model = 128;
    c.n_heads = 4;
    c.n_layers = 2;
    c.cond_dim = 16;
    c.max_seq_len = TT;
    return c;
}

typedef struct {
    int32_t ids[TB * TT];
    uint8_t pad[TB * TT], loss[TB * TT];
    float sigma[TB];
    float noise[TB * TT * 16];
    float x[TB * TT * 16];
} inputs;

static void make_inputs(inputs *in) {
    cdcd_rng r;
    cdcd_rng_init(&r, 21, 0);
    for (int i = 0; i < TB * TT; i++) {
        in->ids[i] = (int32_t)cdcd_rng_below(&r, TV);
        in->pad[i] = 1;
        in->loss[i] = 1;
    }
    for (int b = 0; b < TB; b++) in->sigma[b] = 0.5f + (float)b;
    cdcd_rng_fill_normal(&r, in->noise, sizeof in->noise / sizeof(float), 1.0f);
    cdcd_rng_fill_normal(&r, in->x, sizeof in->x / sizeof(float), 2.0f);
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

typedef struct {
    cdcd_model *m;
    const inputs *in;
    float losses[STEPS];
    double seconds;
    int ok;
    atomic_int *done;
} train_job;

static void *train_thread(void *arg) {
    train_job *j = arg;
    cdcd_batch b = {TB, TT, j->in->ids, j->in->pad, NULL, j->in->loss, j->in->sigma, j->in->noise,
                    NULL, 0};
    cdcd_adamw_params o = {1e-3f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    double t0 = now_s();
    j->ok = 1;
    for (int s = 0; s < STEPS; s++) {
        cdcd_train_result r;
        if (cdcd_model_train_step(j->m, &b, &o, s + 1, NULL, &r) != 0) j->ok = 0;
        j->losses[s] = r.loss;
    }
    j->seconds = now_s() - t0;
    if (j->done) atomic_store(j->done, 1);
    return NULL;
}

typedef struct {
    cdcd_model *m;
    const inputs *in;
    float x0[TB * TT * 16];
    int calls, ok;
    atomic_int *stop;
} sample_job;

static int infer_once(sample_job *j) {
    cdcd_infer_input in = {TB, TT, j->in->x, j->in->sigma, NULL, NULL, NULL, NULL, 1.0f, 1.0f};
    cdcd_infer_output out = {.x0 = j->x0};
    return cdcd_model_infer(j->m, &in, &out);
}

static void *sample_thread(void *arg) {
    sample_job *j = arg;
    j->ok = 1;
    /* at least MIN_INFER_CALLS calls, then on until the trainer is done */
    while (j->calls < MIN_INFER_CALLS || !atomic_load(j->stop)) {
        if (infer_once(j) != 0) j->ok = 0;
        j->calls++;
    }
    return NULL;
}

typedef struct {
    atomic_int *stop;
    int min_seen, reads;
} monitor_job;

static void *monitor_thread(void *arg) {
    monitor_job *j = arg;
    j->min_seen = 1 << 30;
    while (!atomic_load(j->stop)) {
        int n = openblas_get_num_threads();
        if (n < j->min_seen) j->min_seen = n;
        j->reads++;
        struct timespec ts = {0, 20000}; /* 20 us */
        nanosleep(&ts, NULL);
    }
    return NULL;
}

TEST(test_sampling_leaves_training_threads_alone) {
    cdcd_model_config c = small_config();
    char err[256];
    static inputs in;
    make_inputs(&in);
    /* alone: the reference results and step time */
    cdcd_model *a = cdcd_model_create(&c, TB, TT, TRAIN_THREADS, 7, err, sizeof err);
    ASSERT(a);
    static train_job alone;
    memset(&alone, 0, sizeof alone);
    alone.m = a, alone.in = &in;
    train_thread(&alone);
    ASSERT(alone.ok);
    cdcd_model_free(a);
    cdcd_model *s = cdcd_model_create_ex(&c, TB, TT, SAMPLE_THREADS, 9, CDCD_MODEL_INFERENCE, err,
                                         sizeof err);
    ASSERT(s);
    static sample_job salone;
    memset(&salone, 0, sizeof salone);
    salone.m = s, salone.in = &in;
    ASSERT(infer_once(&salone) == 0);

    /* together: a fresh trainer (same seed), the sampler, and the monitor */
    a = cdcd_model_create(&c, TB, TT, TRAIN_THREADS, 7, err, sizeof err);
    ASSERT(a);
    EXPECT(openblas_get_num_threads() == TRAIN_THREADS);
    atomic_int train_done = 0, stop_monitor = 0;
    static train_job tj;
    static sample_job sj;
    memset(&tj, 0, sizeof tj);
    memset(&sj, 0, sizeof sj);
    tj.m = a, tj.in = &in, tj.done = &train_done;
    sj.m = s, sj.in = &in, sj.stop = &train_done;
    monitor_job mj = {&stop_monitor, 0, 0};
    pthread_t th_m, th_s, th_t;
    ASSERT(pthread_create(&th_m, NULL, monitor_thread, &mj) == 0);
    ASSERT(pthread_create(&th_s, NULL, sample_thread, &sj) == 0);
    ASSERT(pthread_create(&th_t, NULL, train_thread, &tj) == 0);
    pthread_join(th_t, NULL);
    pthread_join(th_s, NULL);
    atomic_store(&stop_monitor, 1);
    pthread_join(th_m, NULL);
    printf("  trainer alone %.3f s, beside the sampler %.3f s (%d inference calls); "
           "smallest BLAS thread count seen %d in %d reads (trainer wants %d)\n",
           alone.seconds, tj.seconds, sj.calls, mj.min_seen, mj.reads, TRAIN_THREADS);
    EXPECT(tj.ok && sj.ok);
    EXPECT(sj.calls >= MIN_INFER_CALLS);
    /* the trainer's BLAS thread count never dropped while it was training */
    EXPECTF(mj.min_seen >= TRAIN_THREADS, "BLAS thread count fell to %d while training",
            mj.min_seen);
    /* same results as alone: the trainer bit for bit; the sampler too (its tiles may run
     * with more BLAS threads, which sums every output element in the same order) */
    EXPECT(memcmp(tj.losses, alone.losses, sizeof tj.losses) == 0);
    EXPECT(memcmp(sj.x0, salone.x0, sizeof sj.x0) == 0);
    /* the sampler freed: the trainer's count stays */
    cdcd_model_free(s);
    EXPECT(openblas_get_num_threads() == TRAIN_THREADS);
    cdcd_model_free(a);
}

/* A model created with fewer threads does not lower the count of a live one. */
TEST(test_create_does_not_lower_threads) {
    cdcd_model_config c = small_config();
    char err[256];
    cdcd_model *a = cdcd_model_create(&c, TB, TT, 3, 7, err, sizeof err);
    ASSERT(a);
    EXPECT(openblas_get_num_threads() == 3);
    cdcd_model *b = cdcd_model_create(&c, TB, TT, 1, 7, err, sizeof err);
    ASSERT(b);
    EXPECT(openblas_get_num_threads() == 3);
    cdcd_model_free(b);
    EXPECT(openblas_get_num_threads() == 3);
    cdcd_model_free(a);
}

int main(void) {
    RUN(test_sampling_leaves_training_threads_alone);
    RUN(test_create_does_not_lower_threads);
    return test_summary();
}
