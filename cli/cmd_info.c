/* cdcd info [--preset P | --config run.json] [--batch B] [--seq L] [--json]
 * Parameter count and memory (parameters, gradients, AdamW moments, activations) of a
 * preset or a run config, without allocating the model. With no argument: every preset. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "commands.h"
#include "model.h"

static const char *const presets[] = {"tiny", "small", "base", "seed100m"};

static void print_one(const char *name, const cdcd_model_config *c, int B, int T, int json, int first) {
    cdcd_model_memory mem;
    if (cdcd_model_memory_estimate(c, B, T, &mem) != 0) {
        fprintf(stderr, "cdcd info: %s: invalid config\n", name);
        return;
    }
    size_t n = cdcd_model_num_params(c);
    double mib = 1048576.0;
    if (json) {
        printf("%s{\"name\":\"%s\",\"params\":%zu,\"d_emb\":%d,\"d_model\":%d,\"n_heads\":%d,\"n_layers\":%d,"
               "\"cond_dim\":%d,\"batch\":%d,\"seq\":%d,\"memory_mb\":{\"params\":%.1f,\"grads\":%.1f,\"adam\":%.1f,"
               "\"activations\":%.1f,\"total\":%.1f}}",
               first ? "" : ",", name, n, c->d_emb, c->d_model, c->n_heads, c->n_layers, c->cond_dim, B, T,
               mem.params / mib, mem.grads / mib, mem.adam / mib, mem.activations / mib, mem.total / mib);
    } else {
        printf("%-9s %6.2fM params  E %-4d D %-5d H %-3d L %-3d C %-4d | MiB at %dx%d: params %.0f, grads %.0f, "
               "adam %.0f, activations %.0f, total %.0f\n",
               name, n / 1e6, c->d_emb, c->d_model, c->n_heads, c->n_layers, c->cond_dim, B, T, mem.params / mib,
               mem.grads / mib, mem.adam / mib, mem.activations / mib, mem.total / mib);
    }
}

int cdcd_cmd_info(int argc, char **argv) {
    const char *preset = NULL;
    int B = 32, T = 128, json = 0;
    static const struct option opts[] = {{"preset", required_argument, 0, 'p'}, {"batch", required_argument, 0, 'b'},
                                         {"seq", required_argument, 0, 'L'},    {"json", no_argument, 0, 'J'},
                                         {"help", no_argument, 0, 'h'},          {0, 0, 0, 0}};
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "p:b:L:Jh", opts, NULL)) != -1) {
        switch (ch) {
        case 'p': preset = optarg; break;
        case 'b': B = atoi(optarg); break;
        case 'L': T = atoi(optarg); break;
        case 'J': json = 1; break;
        case 'h': printf("usage: cdcd info [--preset P] [--batch B] [--seq L] [--json]\n"); return 0;
        default: return 2;
        }
    }
    if (B < 1 || T < 2) return 2;
    if (json) printf("[");
    int first = 1;
    for (size_t i = 0; i < sizeof presets / sizeof presets[0]; i++) {
        if (preset && strcmp(preset, presets[i]) != 0) continue;
        cdcd_model_config c;
        cdcd_model_preset(presets[i], &c);
        print_one(presets[i], &c, B, T, json, first);
        first = 0;
    }
    if (json) printf("]\n");
    if (first) {
        fprintf(stderr, "cdcd info: unknown preset %s\n", preset);
        return 2;
    }
    return 0;
}
