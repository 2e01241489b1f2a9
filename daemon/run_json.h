/* A run as JSON, as the API and the run event stream show it (openapi.yaml: Run). */
#ifndef CDCDD_RUN_JSON_H
#define CDCDD_RUN_JSON_H

#include "buf.h"
#include "run.h"

/* Writes the run; with_config adds the "config" object. */
void cdcdd_run_json(cdcdd_buf *b, const cdcdd_run *r, int with_config);
/* A schedule fit: {"step","ok","kind","mu","s","h","o","rmse","n"}. */
void cdcdd_fit_json(cdcdd_buf *b, const cdcd_fit_report *f);

#endif
