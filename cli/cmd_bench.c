/* cdcd bench --preset P --batch B --seq L --threads N --steps S [--mode train|sample]
 *            [--sample-steps K] [--json]
 * Times whole training steps (forward + backward + AdamW) or whole sampling runs (K Euler
 * steps + the final call) after one warm-up, on synthetic data of the real shape (random
 * ids, every position real, random sigmas and conditioning masks). Prints one JSON object:
 * tokens_per_s (median), step_ms {median,min,max}, peak_rss_mb, gflops (from the exact
 * FLOP count of core/flops.c), gemm_flops_per_token and the config. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "blas.h"
#include "clock.h"
#include "commands.h"
#include "flops.h"
#include "masks.h"
#include "device.h"
#include "model.h"
#include "rng.h"
#include "sampler.h"
#include "schedule.h"

#define BENCH_MAX_STEPS 1000

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double peak_rss_mb(void) {
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_maxrss / 1024.0;
}

static void usage(FILE *out) {
    fprintf(out, "usage: cdcd bench --preset tiny|small|base|seed100m [--batch 32] [--seq 128] [--threads 2]\n"
                 "                  [--steps 5] [--mode train|sample] [--sample-steps 200] [--json]\n"
                 "                  [--vocab-size V] [--d-emb E] [--output-prior]\n"
                 "                  [--device auto|cpu|cuda|cuda:N]\n"
                 "  --vocab-size  the model's output vocabulary (a corpus vocabulary: data.vocab = corpus)\n"
                 "  --device      where the model runs (default auto: the GPU when there is one)\n");
}

int cdcd_cmd_bench(int argc, char **argv) {
    const char *preset = "tiny", *mode = "train", *device = "auto";
    int B = 32, T = 128, threads = 2, steps = 5, sample_steps = 200, json = 0;
    int vocab_size = 0, d_emb = 0, output_prior = 0;
    static const struct option opts[] = {{"preset", required_argument, 0, 'p'}, {"batch", required_argument, 0, 'b'},
                                         {"seq", required_argument, 0, 'L'},    {"threads", required_argument, 0, 'j'},
                                         {"steps", required_argument, 0, 's'},  {"mode", required_argument, 0, 'm'},
                                         {"sample-steps", required_argument, 0, 'k'}, {"json", no_argument, 0, 'J'},
                                         {"vocab-size", required_argument, 0, 'V'}, {"d-emb", required_argument, 0, 'E'},
                                         {"output-prior", no_argument, 0, 'P'}, {"device", required_argument, 0, 'D'},
                                         {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "p:b:L:j:s:m:k:JV:E:PD:h", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': preset = optarg; break;
        case 'b': B = atoi(optarg); break;
        case 'L': T = atoi(optarg); break;
        case 'j': threads = atoi(optarg); break;
        case 's': steps = atoi(optarg); break;
        case 'm': mode = optarg; break;
        case 'k': sample_steps = atoi(optarg); break;
        case 'J': json = 1; break;
        case 'V': vocab_size = atoi(optarg); break;
        case 'E': d_emb = atoi(optarg); break;
        case 'P': output_prior = 1; break;
        case 'D': device = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    int train = strcmp(mode, "train") == 0;
    if ((!train && strcmp(mode, "sample") != 0) || B < 1 || B > 4096 || T < 2 || threads < 1 || steps < 1 ||
        steps > BENCH_MAX_STEPS || sample_steps < 1) {
        usage(stderr);
        return 2;
    }
    cdcd_model_config c;
    if (cdcd_model_preset(preset, &c) != 0) {
        fprintf(stderr, "cdcd bench: unknown preset %s\n", preset);
        return 2;
    }
    if (vocab_size) c.vocab_size = vocab_size;
    if (d_emb) c.d_emb = d_emb;
    c.output_prior = output_prior;
    if (c.vocab_size < 1000) {
        fprintf(stderr, "cdcd bench: --vocab-size must be at least 1000\n");
        return 2;
    }
    if (T > c.max_seq_len) {
        fprintf(stderr, "cdcd bench: --seq %d exceeds the preset's max_seq_len %d\n", T, c.max_seq_len);
        return 2;
    }
    char err[256];
    /* Sampling needs no gradients or optimiser state: an inference-only model, as cdcd sample
     * and the daemon's checkpoint sampling load. */
    int dev = cdcd_device_resolve(device, 0, err, sizeof err);
    if (dev < -1) {
        fprintf(stderr, "cdcd bench: --device: %s\n", err);
        return 2;
    }
    cdcd_model *m = cdcd_model_create_on(&c, B, T, threads, 1, train ? 0 : CDCD_MODEL_INFERENCE, dev, err, sizeof err);
    if (!m) {
        fprintf(stderr, "cdcd bench: %s\n", err);
        return 1;
    }
    size_t bt = (size_t)B * T;
    int32_t *ids = malloc(sizeof(int32_t) * bt);
    uint8_t *pad = malloc(bt), *cond = malloc(bt), *loss = malloc(bt);
    float *sigma = malloc(sizeof(float) * (size_t)B), *noise = malloc(sizeof(float) * bt * (size_t)c.d_emb);
    double *times = malloc(sizeof(double) * (size_t)steps);
    cdcd_rng r;
    cdcd_rng_init(&r, 1, 77);
    for (size_t i = 0; i < bt; i++) {
        ids[i] = 999 + (int32_t)cdcd_rng_below(&r, (uint64_t)(c.vocab_size - 999));
        pad[i] = 1;
    }
    cdcd_mask_params mp = {0.5f, 0.5f, 0.1f};
    cdcd_masks_make(&mp, &r, B, T, pad, cond, loss);
    for (int i = 0; i < B; i++) sigma[i] = 0.5f + 20.0f * cdcd_rng_uniform_f(&r);
    cdcd_rng_fill_normal(&r, noise, bt * (size_t)c.d_emb, 1.0f);
    cdcd_batch batch = {.B = B, .T = T, .ids = ids, .pad_mask = pad, .cond_mask = cond, .loss_mask = loss,
                        .sigma = sigma, .noise = noise, .self_cond = NULL};
    cdcd_adamw_params op = {1e-4f, 0.9f, 0.99f, 1e-8f, 0.01f, 1.0f};
    cdcd_schedule sched;
    cdcd_schedule_init(&sched, CDCD_SCHEDULE_CAUCHY, CDCD_SCHEDULE_DEFAULT_TMIN, CDCD_SCHEDULE_DEFAULT_TMAX);
    cdcd_sample_params sp;
    cdcd_sample_params_default(&sp);
    sp.n = B;
    sp.steps = sample_steps;
    sp.length = T;
    int rc = 1;
    for (int s = -1; s < steps; s++) { /* s = -1 is the warm-up */
        double t0 = cdcd_now_s();
        if (train) {
            cdcd_train_result res;
            if (cdcd_model_train_step(m, &batch, &op, s + 2, NULL, &res) != 0) goto done;
        } else {
            cdcd_sample_result out;
            if (cdcd_sample(m, &sched, NULL, &sp, NULL, NULL, &out, err, sizeof err) != 0) {
                fprintf(stderr, "cdcd bench: %s\n", err);
                goto done;
            }
            cdcd_sample_result_free(&out);
        }
        cdcd_model_sync(m); /* a device runs ahead of the host: the step ends when its work does */
        if (s >= 0) times[s] = cdcd_now_s() - t0;
    }
    qsort(times, (size_t)steps, sizeof *times, cmp_double);
    double med = times[steps / 2];
    cdcd_flops f = train ? cdcd_flops_train_step(&c, B, T) : cdcd_flops_forward(&c, B, T, 1);
    double calls = train ? 1.0 : (double)(sample_steps + 1);
    double tokens = (double)bt; /* a sampling run produces B stories of T tokens */
    double gemm_per_token = f.gemm * calls / tokens;
    cdcd_model_memory mem;
    cdcd_model_memory_report(m, &mem);
    if (!json) {
        printf("%s %s on %s, batch %d x %d, %d threads: %.1f tokens/s (median of %d), %.1f ms per %s, %.1f GFLOP/s, "
               "peak RSS %.0f MB, OpenBLAS %s kernels\n",
               preset, mode, cdcd_model_backend_name(m), B, T, threads, tokens / med, steps, med * 1e3, train ? "step" : "sampling run",
               (f.gemm + f.other) * calls / med * 1e-9, peak_rss_mb(), cdcd_blas_core_name());
    } else {
        printf("{\"device\":\"%s\",\"mode\":\"%s\",\"preset\":\"%s\",\"batch\":%d,\"seq\":%d,\"threads\":%d,\"steps\":%d,"
               "\"sample_steps\":%d,\"tokens_per_s\":%.2f,\"step_ms\":{\"median\":%.2f,\"min\":%.2f,\"max\":%.2f},"
               "\"step_ms_median\":%.2f,\"peak_rss_mb\":%.1f,\"gflops\":%.2f,\"gemm_flops_per_token\":%.6g,"
               "\"flops_per_step\":%.6g,\"params\":%zu,\"memory_mb\":{\"params\":%.1f,\"grads\":%.1f,\"adam\":%.1f,"
               "\"activations\":%.1f},\"blas_core\":\"%s\"}\n",
               cdcd_model_backend_name(m), mode, preset, B, T, threads, steps, train ? 0 : sample_steps, tokens / med, med * 1e3, times[0] * 1e3,
               times[steps - 1] * 1e3, med * 1e3, peak_rss_mb(), (f.gemm + f.other) * calls / med * 1e-9,
               gemm_per_token, (f.gemm + f.other) * calls, cdcd_model_param_count(m), mem.params / 1048576.0,
               mem.grads / 1048576.0, mem.adam / 1048576.0, mem.activations / 1048576.0,
               cdcd_blas_core_name());
    }
    rc = 0;
done:
    cdcd_model_free(m);
    free(ids);
    free(pad);
    free(cond);
    free(loss);
    free(sigma);
    free(noise);
    free(times);
    return rc;
}
