/* cdcd eval --checkpoint C --data valid.tok [--batches N] [--batch B] [--sigmas a,b,...]
 *           [--threads N] [--seed S] [--no-ema] [--json]
 * Validation cross-entropy at fixed noise levels (the entropy-vs-sigma curve on held-out
 * data), the mean under the checkpoint's schedule, and the data's unigram entropy (what the
 * curve should approach at large sigma, where the input says nothing about the token). */
#include <cJSON.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "batch.h"
#include "commands.h"
#include "model.h"
#include "rng.h"
#include "schedule.h"
#include "tokfile.h"
#include "train.h"

#define EVAL_MAX_SIGMAS 64
#define EVAL_DEFAULT_BATCHES 8
#define EVAL_DEFAULT_BATCH 16
static const double eval_default_sigmas[] = {0.5, 1, 2, 5, 10, 20, 50, 100};

static void usage(FILE *out) {
    fprintf(out, "usage: cdcd eval --checkpoint C --data valid.tok [--batches N] [--batch B]\n"
                 "                 [--sigmas 0.5,1,2,...] [--threads N] [--seed S] [--no-ema] [--self-cond] [--json]\n"
                 "  --self-cond  first a pass without it, then the loss with that x-hat-0 as the\n"
                 "               self-conditioning input (as the sampler uses it)\n");
}

int cdcd_cmd_eval(int argc, char **argv) {
    const char *ckpt = NULL, *data = NULL;
    int batches = EVAL_DEFAULT_BATCHES, B = EVAL_DEFAULT_BATCH, threads = 2, json = 0, use_ema = 1, self_cond = 0;
    unsigned long long seed = 1;
    double sigmas[EVAL_MAX_SIGMAS];
    int n_sigmas = (int)(sizeof eval_default_sigmas / sizeof eval_default_sigmas[0]);
    memcpy(sigmas, eval_default_sigmas, sizeof eval_default_sigmas);
    static const struct option opts[] = {{"checkpoint", required_argument, 0, 'c'}, {"data", required_argument, 0, 'd'},
                                         {"batches", required_argument, 0, 'b'},    {"batch", required_argument, 0, 'B'},
                                         {"sigmas", required_argument, 0, 's'},     {"threads", required_argument, 0, 'j'},
                                         {"seed", required_argument, 0, 'S'},       {"no-ema", no_argument, 0, 'E'},
                                         {"json", no_argument, 0, 'J'},             {"help", no_argument, 0, 'h'},
                                         {"self-cond", no_argument, 0, 'C'},
                                         {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:d:b:B:s:j:S:EJCh", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': ckpt = optarg; break;
        case 'd': data = optarg; break;
        case 'b': batches = atoi(optarg); break;
        case 'B': B = atoi(optarg); break;
        case 'j': threads = atoi(optarg); break;
        case 'S': seed = strtoull(optarg, NULL, 10); break;
        case 'E': use_ema = 0; break;
        case 'J': json = 1; break;
        case 'C': self_cond = 1; break;
        case 's': {
            n_sigmas = 0;
            char *s = optarg, *end;
            while (*s && n_sigmas < EVAL_MAX_SIGMAS) {
                double v = strtod(s, &end);
                if (end == s || !(v > 0) || !isfinite(v)) {
                    fprintf(stderr, "cdcd eval: --sigmas: bad value near '%s'\n", s);
                    return 2;
                }
                sigmas[n_sigmas++] = v;
                s = *end == ',' ? end + 1 : end;
                if (*end && *end != ',') {
                    fprintf(stderr, "cdcd eval: --sigmas: expected a comma-separated list\n");
                    return 2;
                }
            }
            break;
        }
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (!ckpt || !data || batches < 1 || B < 1 || B > 4096 || threads < 1 || n_sigmas < 1) {
        usage(stderr);
        return 2;
    }
    char err[512];
    cdcd_inference_bundle ib;
    if (cdcd_load_for_inference(ckpt, threads, B, use_ema, &ib, err, sizeof err) != 0) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        return 1;
    }
    int rc = 1;
    cdcd_tokfile *tf = cdcd_tokfile_open(data, NULL, err, sizeof err);
    cdcd_batcher *it = NULL;
    int T = ib.cfg->data.seq_len, E = ib.cfg->model.d_emb, V = ib.cfg->model.vocab_size;
    size_t bt = (size_t)B * T;
    int32_t *ids = malloc(sizeof(int32_t) * bt * (size_t)batches);
    uint8_t *pad = malloc(bt * (size_t)batches);
    float *noise = malloc(sizeof(float) * bt * (size_t)E), *sig = malloc(sizeof(float) * (size_t)B);
    float *sc = self_cond ? malloc(sizeof(float) * bt * (size_t)E) : NULL;
    double *counts = calloc((size_t)V, sizeof(double));
    double *ce = calloc((size_t)n_sigmas + 1, sizeof(double));
    if (!tf) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        goto done;
    }
    if (self_cond && !ib.cfg->model.self_cond) {
        fprintf(stderr, "cdcd eval: --self-cond: the model was not trained with self-conditioning\n");
        goto done;
    }
    if (self_cond && !sc) {
        fprintf(stderr, "cdcd eval: out of memory\n");
        goto done;
    }
    if (!ids || !pad || !noise || !sig || !counts || !ce) {
        fprintf(stderr, "cdcd eval: out of memory\n");
        goto done;
    }
    cdcd_batch_opts bo;
    cdcd_batch_opts_default(&bo);
    bo.batch_size = B;
    bo.seq_len = T;
    bo.shuffle = 0;
    bo.wrap = 0;
    it = cdcd_batch_create(tf, &bo, err, sizeof err);
    if (!it) {
        fprintf(stderr, "cdcd eval: %s\n", err);
        goto done;
    }
    int nb = 0;
    double n_tokens = 0;
    /* Whole batches only, so every sigma sees the same sequences. */
    for (; nb < batches; nb++)
        if (cdcd_batch_next(it, ids + (size_t)nb * bt, pad + (size_t)nb * bt, NULL) != B) break;
    if (nb == 0) {
        fprintf(stderr, "cdcd eval: %s holds no batch\n", data);
        goto done;
    }
    for (size_t i = 0; i < bt * (size_t)nb; i++)
        if (pad[i] && ids[i] >= 0 && ids[i] < V) {
            counts[ids[i]] += 1;
            n_tokens += 1;
        }
    double unigram = 0;
    for (int v = 0; v < V; v++)
        if (counts[v] > 0) unigram -= counts[v] / n_tokens * log(counts[v] / n_tokens);
    /* Column n_sigmas is "sigma drawn from the schedule". */
    for (int k = 0; k <= n_sigmas; k++) {
        cdcd_rng rn, rs;
        cdcd_rng_init(&rn, seed, 1000 + (uint64_t)k);
        cdcd_rng_init(&rs, seed, 2000);
        double sum = 0;
        for (int b = 0; b < nb; b++) {
            if (k < n_sigmas)
                for (int i = 0; i < B; i++) sig[i] = (float)sigmas[k];
            else
                cdcd_schedule_sample_sigmas(ib.sched, &rs, B, sig);
            cdcd_rng_fill_normal(&rn, noise, bt * (size_t)E, 1.0f);
            cdcd_batch batch = {.B = B, .T = T, .ids = ids + (size_t)b * bt, .pad_mask = pad + (size_t)b * bt,
                                .cond_mask = NULL, .loss_mask = pad + (size_t)b * bt, .sigma = sig,
                                .noise = noise, .self_cond = NULL};
            float loss;
            if (sc) {
                if (cdcd_model_forward_x0(ib.model, &batch, sc) != 0) {
                    fprintf(stderr, "cdcd eval: evaluation failed\n");
                    goto done;
                }
                batch.self_cond = sc;
            }
            if (cdcd_model_forward_loss(ib.model, &batch, &loss, NULL) != 0) {
                fprintf(stderr, "cdcd eval: evaluation failed\n");
                goto done;
            }
            sum += loss;
        }
        ce[k] = sum / nb;
    }
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *curve = cJSON_AddArrayToObject(root, "curve");
        for (int k = 0; k < n_sigmas; k++) {
            cJSON *pt = cJSON_CreateObject();
            cJSON_AddNumberToObject(pt, "sigma", sigmas[k]);
            cJSON_AddNumberToObject(pt, "ce", ce[k]);
            cJSON_AddItemToArray(curve, pt);
        }
        cJSON_AddNumberToObject(root, "schedule_mean_ce", ce[n_sigmas]);
        cJSON_AddNumberToObject(root, "unigram_entropy", unigram);
        cJSON_AddNumberToObject(root, "sequences", (double)nb * B);
        cJSON_AddNumberToObject(root, "tokens", n_tokens);
        cJSON_AddNumberToObject(root, "checkpoint_step", (double)ib.step);
        cJSON_AddBoolToObject(root, "ema", ib.used_ema);
        char *s = cJSON_PrintUnformatted(root);
        puts(s);
        free(s);
        cJSON_Delete(root);
    } else {
        printf("checkpoint step %lld%s, %d sequences (%.0f tokens) of %s\n", (long long)ib.step,
               ib.used_ema ? " (EMA weights)" : "", nb * B, n_tokens, data);
        printf("%10s  %8s\n", "sigma", "CE (nats)");
        for (int k = 0; k < n_sigmas; k++) printf("%10g  %8.4f\n", sigmas[k], ce[k]);
        printf("%10s  %8.4f\n", "schedule", ce[n_sigmas]);
        printf("unigram entropy of the data: %.4f nats\n", unigram);
    }
    rc = 0;
done:
    cdcd_batch_free(it);
    cdcd_tokfile_close(tf);
    cdcd_inference_bundle_free(&ib);
    free(ids);
    free(pad);
    free(noise);
    free(sc);
    free(sig);
    free(counts);
    free(ce);
    return rc;
}
