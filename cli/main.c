/* cdcd: the offline CLI. Dispatches to one subcommand per file (cli/cmd_*.c). */
#include <stdio.h>
#include <string.h>

#include "blas.h"
#include "commands.h"

typedef struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *summary;
} cdcd_command;

static const cdcd_command commands[] = {
    {"prep", cdcd_cmd_prep, "tokenise TinyStories text or JSON Lines into a .tok file"},
    {"tokenize", cdcd_cmd_tokenize, "JSON Lines {\"text\"} on stdin -> {\"ids\"} on stdout"},
    {"detokenize", cdcd_cmd_detokenize, "JSON Lines {\"ids\"} on stdin -> {\"text\"} on stdout"},
    {"train", cdcd_cmd_train, "train a model from a JSON run config"},
    {"eval", cdcd_cmd_eval, "validation cross-entropy on a sigma grid"},
    {"sample", cdcd_cmd_sample, "generate stories from a checkpoint"},
    {"bench", cdcd_cmd_bench, "time training steps or sampling runs"},
    {"info", cdcd_cmd_info, "parameter count and memory of a config or preset"},
};

static void usage(FILE *out) {
    fprintf(out, "usage: cdcd COMMAND [options]   (cdcd COMMAND --help for details)\n\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (commands[i].fn) fprintf(out, "  %-11s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv) {
    cdcd_blas_ensure_kernel(argc, argv);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("cdcd %s\n", CDCD_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        if (strcmp(argv[1], commands[i].name) == 0) {
            if (!commands[i].fn) {
                fprintf(stderr, "cdcd: command '%s' is not built into this binary\n", argv[1]);
                return 2;
            }
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    fprintf(stderr, "cdcd: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
