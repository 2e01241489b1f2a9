/* Subcommands of the offline CLI `cdcd`. Each lives in its own cli/cmd_*.c file and is
 * declared weak here, so the dispatcher builds before every command exists.
 * Contract: int cdcd_cmd_NAME(int argc, char **argv) with argv[0] = "NAME";
 * returns the process exit status (0 ok, 1 runtime error, 2 usage error). */
#ifndef CDCD_CLI_COMMANDS_H
#define CDCD_CLI_COMMANDS_H

#define CDCD_WEAK __attribute__((weak))

CDCD_WEAK int cdcd_cmd_prep(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_tokenize(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_detokenize(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_train(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_eval(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_sample(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_bench(int argc, char **argv);
CDCD_WEAK int cdcd_cmd_info(int argc, char **argv);

#endif
