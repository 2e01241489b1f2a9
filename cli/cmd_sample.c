/* cdcd sample --checkpoint C [--n 4] [--steps 200] [--seed 1] [--prompt TEXT | --infill TEXT]
 *             [--guidance G] [--temperature T] [--score-temp S] [--length L] [--heun]
 *             [--self-cond] [--no-ema] [--threads N] [--vocab V] [--json] [--progress K]
 * Prints stories (or one JSON object {"samples":[{"text","ids"}...], ...} with --json).
 *
 * The vocabulary: the one embedded in the checkpoint (section "vocab", written by the
 * trainer), so sampling works from any directory. --vocab FILE must then be that same
 * vocabulary (checksum and size) or it is refused (exit status 2): a different file would
 * silently turn the model's ids into other words. A checkpoint written before vocabularies
 * were embedded needs --vocab, or data/vocab.txt in the working directory. */
#include <cJSON.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "commands.h"
#include "model.h"
#include "sampler.h"
#include "schedule.h"
#include "tokenizer.h"
#include "train.h"

#define SAMPLE_DEFAULT_VOCAB "data/vocab.txt"

typedef struct {
    int every;
} progress_ctx;

static int on_progress(void *ctx, int step, int n_steps, double t, double entropy, const char *preview) {
    progress_ctx *pc = ctx;
    if (pc->every > 0 && (step % pc->every == 0 || step == n_steps)) {
        fprintf(stderr, "step %4d/%d  t %8.3f  entropy %.3f%s%s\n", step, n_steps, t, entropy,
                preview ? "  | " : "", preview ? preview : "");
    }
    return 0;
}

/* The tokenizer to sample with (the policy in the header comment). NULL with a message
 * printed; *status is the exit status then. */
static cdcd_tokenizer *sample_tokenizer(const cdcd_inference_bundle *ib, const char *ckpt, const char *vocab,
                                        int *status) {
    char err[512], name[64];
    cdcd_tokenizer *embedded = NULL, *file = NULL;
    *status = 1;
    if (ib->vocab) {
        snprintf(name, sizeof name, "(embedded in the checkpoint)");
        embedded = cdcd_tok_load_from_buffer(ib->vocab, ib->vocab_len, name, 0, err, sizeof err);
        if (!embedded) {
            fprintf(stderr, "cdcd sample: %s: %s\n", ckpt, err);
            return NULL;
        }
        if (!vocab) return embedded;
        file = cdcd_tok_load_sized(vocab, 0, err, sizeof err);
        if (!file) {
            fprintf(stderr, "cdcd sample: --vocab: %s\n", err);
            cdcd_tok_free(embedded);
            return NULL;
        }
        uint64_t a = cdcd_tok_checksum(file), b = cdcd_tok_checksum(embedded);
        int na = cdcd_tok_vocab_size(file), nb = cdcd_tok_vocab_size(embedded);
        cdcd_tok_free(embedded);
        if (a != b || na != nb) {
            fprintf(stderr,
                    "cdcd sample: --vocab %s (%d tokens, checksum %016llx) is not the vocabulary embedded in %s "
                    "(%d tokens, checksum %016llx), the one the model was trained with; leave --vocab out to "
                    "use the embedded one\n",
                    vocab, na, (unsigned long long)a, ckpt, nb, (unsigned long long)b);
            cdcd_tok_free(file);
            *status = 2;
            return NULL;
        }
        return file;
    }
    /* A checkpoint without the section: the file named, or the default one. */
    const char *path = vocab ? vocab : SAMPLE_DEFAULT_VOCAB;
    file = cdcd_tok_load(path, err, sizeof err);
    if (!file) {
        if (vocab)
            fprintf(stderr, "cdcd sample: --vocab: %s\n", err);
        else
            fprintf(stderr,
                    "cdcd sample: %s has no embedded vocabulary (written before checkpoints carried one) and "
                    "the default %s cannot be used (%s): give the vocab.txt the model was trained with as "
                    "--vocab FILE\n",
                    ckpt, SAMPLE_DEFAULT_VOCAB, err);
    }
    return file;
}

static void usage(FILE *out) {
    fprintf(out,
            "usage: cdcd sample --checkpoint C [options]\n"
            "  --device D        auto (default: the checkpoint's; the GPU when there is one), cpu,\n"
            "                    cuda or cuda:N\n"
            "  --n N             stories (default 4)\n"
            "  --steps N         ODE steps (default 200)\n"
            "  --seed N          seed (same seed and threads: same output)\n"
            "  --prompt TEXT     generate a continuation of TEXT\n"
            "  --infill TEXT     fill the [MASK] tokens of TEXT\n"
            "  --guidance G      classifier-free guidance scale (default 1 = none)\n"
            "  --temperature T   final-token temperature (default 0 = argmax)\n"
            "  --score-temp S    temperature of the softmax used for x-hat-0 (default 0.9;\n"
            "                    1 = the model's own probabilities)\n"
            "  --length L        sequence length (default: the model's)\n"
            "  --heun            Heun's 2nd-order method (two model calls per step)\n"
            "  --self-cond       self-conditioning (default: on when the model was trained with it)\n"
            "  --no-self-cond    no self-conditioning\n"
            "  --clamp SIGMA     below this noise level snap x-hat-0 to the argmax token's embedding\n"
            "  --churn G         stochastic steps: raise sigma by the factor 1+G with fresh noise\n"
            "                    before each step (0 = deterministic ODE, the default; at most 1)\n"
            "  --no-ema          use the raw weights even when the checkpoint has an EMA\n"
            "  --threads N       threads (default 2)\n"
            "  --vocab FILE      vocab.txt (default: the one embedded in the checkpoint; a\n"
            "                    different FILE is refused; older checkpoints without one:\n"
            "                    data/vocab.txt)\n"
            "  --progress K      print t, entropy and the argmax text every K steps\n"
            "  --json            one JSON object on stdout\n");
}

int cdcd_cmd_sample(int argc, char **argv) {
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    const char *ckpt = NULL, *vocab = NULL, *device = NULL;
    int threads = 2, json = 0, use_ema = 1;
    progress_ctx pc = {0};
    static const struct option opts[] = {
        {"checkpoint", required_argument, 0, 'c'}, {"n", required_argument, 0, 'n'},
        {"steps", required_argument, 0, 's'},      {"seed", required_argument, 0, 'S'},
        {"prompt", required_argument, 0, 'p'},     {"infill", required_argument, 0, 'i'},
        {"guidance", required_argument, 0, 'g'},   {"temperature", required_argument, 0, 't'},
        {"score-temp", required_argument, 0, 'T'}, {"length", required_argument, 0, 'L'},
        {"heun", no_argument, 0, 'H'},             {"self-cond", no_argument, 0, 'C'},
        {"no-ema", no_argument, 0, 'E'},           {"threads", required_argument, 0, 'j'},
        {"vocab", required_argument, 0, 'v'},      {"json", no_argument, 0, 'J'},
        {"progress", required_argument, 0, 'P'},   {"help", no_argument, 0, 'h'},
        {"no-self-cond", no_argument, 0, 'N'},     {"clamp", required_argument, 0, 'K'},
        {"churn", required_argument, 0, 'G'},      {"device", required_argument, 0, 'D'},
        {0, 0, 0, 0}};
    int ch;
    char *end;
    optind = 1;
#define NUM_ARG(dst, conv)                                                                 \
    do {                                                                                   \
        dst = conv;                                                                        \
        if (*end) {                                                                        \
            fprintf(stderr, "cdcd sample: not a number: %s\n", optarg);             \
            return 2;                                                                      \
        }                                                                                  \
    } while (0)
    while ((ch = getopt_long(argc, argv, "c:n:s:S:p:i:g:t:T:L:HCEj:v:JP:hNK:G:D:", opts, NULL)) != -1) {
        switch (ch) {
        case 'c': ckpt = optarg; break;
        case 'n': NUM_ARG(p.n, (int)strtol(optarg, &end, 10)); break;
        case 's': NUM_ARG(p.steps, (int)strtol(optarg, &end, 10)); break;
        case 'S': NUM_ARG(p.seed, strtoull(optarg, &end, 10)); break;
        case 'p': p.prompt = optarg; break;
        case 'i': p.infill = optarg; break;
        case 'g': NUM_ARG(p.guidance, strtof(optarg, &end)); break;
        case 't': NUM_ARG(p.temperature, strtof(optarg, &end)); break;
        case 'T': NUM_ARG(p.score_temp, strtof(optarg, &end)); break;
        case 'L': NUM_ARG(p.length, (int)strtol(optarg, &end, 10)); break;
        case 'H': p.heun = 1; break;
        case 'C': p.self_cond = 1; break;
        case 'N': p.self_cond = 0; break;
        case 'K': NUM_ARG(p.clamp_below, strtof(optarg, &end)); break;
        case 'G': NUM_ARG(p.churn, strtof(optarg, &end)); break;
        case 'E': use_ema = 0; break;
        case 'j': NUM_ARG(threads, (int)strtol(optarg, &end, 10)); break;
        case 'v': vocab = optarg; break;
        case 'J': json = 1; break;
        case 'P': NUM_ARG(pc.every, (int)strtol(optarg, &end, 10)); break;
        case 'D': device = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
#undef NUM_ARG
    if (!ckpt || optind != argc) {
        usage(stderr);
        return 2;
    }
    if (threads < 1 || threads > 256) {
        fprintf(stderr, "cdcd sample: --threads must be 1..256\n");
        return 2;
    }
    p.preview_every = pc.every;
    char err[512];
    cdcd_inference_bundle ib;
    int batch = p.n < 64 ? (p.n > 0 ? p.n : 1) : 64;
    if (cdcd_load_for_inference_on(ckpt, device, threads, batch, use_ema, &ib, err, sizeof err) != 0) {
        fprintf(stderr, "cdcd sample: %s\n", err);
        return 1;
    }
    int status;
    cdcd_tokenizer *tok = sample_tokenizer(&ib, ckpt, vocab, &status);
    if (!tok) {
        cdcd_inference_bundle_free(&ib);
        return status;
    }
    p.vmap = ib.vmap;
    cdcd_sample_result res;
    double t0 = cdcd_now_s();
    int rc = cdcd_sample(ib.model, ib.sched, tok, &p, pc.every > 0 ? on_progress : NULL, &pc, &res, err, sizeof err);
    double secs = cdcd_now_s() - t0;
    if (rc != 0) {
        fprintf(stderr, "cdcd sample: %s\n", err);
        cdcd_inference_bundle_free(&ib);
        cdcd_tok_free(tok);
        return 2;
    }
    if (json) {
        cJSON *root = cJSON_CreateObject();
        cJSON *arr = cJSON_AddArrayToObject(root, "samples");
        for (int i = 0; i < res.n; i++) {
            cJSON *s = cJSON_CreateObject();
            cJSON_AddStringToObject(s, "text", res.texts[i]);
            cJSON *ids = cJSON_AddArrayToObject(s, "ids");
            for (int t = 0; t < res.T; t++) cJSON_AddItemToArray(ids, cJSON_CreateNumber(res.ids[(size_t)i * res.T + t]));
            cJSON_AddItemToArray(arr, s);
        }
        cJSON_AddNumberToObject(root, "checkpoint_step", (double)ib.step);
        cJSON_AddBoolToObject(root, "ema", ib.used_ema);
        cJSON_AddNumberToObject(root, "steps", p.steps);
        cJSON_AddNumberToObject(root, "seconds", secs);
        char *s = cJSON_PrintUnformatted(root);
        puts(s);
        free(s);
        cJSON_Delete(root);
    } else {
        for (int i = 0; i < res.n; i++) printf("--- story %d\n%s\n", i + 1, res.texts[i]);
        fprintf(stderr, "%d stories, %d steps, %.2f s (%.2f s per story)\n", res.n, p.steps, secs, secs / res.n);
    }
    cdcd_sample_result_free(&res);
    cdcd_inference_bundle_free(&ib);
    cdcd_tok_free(tok);
    return 0;
}
