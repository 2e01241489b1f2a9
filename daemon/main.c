/* cdcdd: the CDCD training daemon. main() only reads the settings and hands over to the
 * server (daemon/server.c); see cdcdd --help and systemd/cdcdd.conf. */
#include <stdio.h>

#include "blas.h"
#include "log.h"
#include "options.h"
#include "server.h"

int main(int argc, char **argv) {
    cdcd_blas_ensure_kernel(argc, argv);
    cdcdd_options opts;
    char err[CDCDD_OPTIONS_ERR_MAX];
    int rc = cdcdd_options_parse(argc, argv, &opts, err, sizeof err);
    if (rc == CDCDD_OPTIONS_EXIT) return 0; /* --help or --version */
    if (rc != CDCDD_OPTIONS_OK) {
        fprintf(stderr, "cdcdd: %s\n", err);
        return 2;
    }
    cdcd_log_set_level(opts.log_level);
    if (opts.log_file[0] && cdcd_log_open(opts.log_file) != 0) {
        perror(opts.log_file);
        return 1;
    }
    return cdcdd_server_main(&opts);
}
