/* JSON of what a sampler call was asked and gave: shared by sampling jobs (jobs.c) and
 * periodic stories (stories.c), so both store the same `samples.params` shape. */
#ifndef CDCDD_SAMPLE_JSON_H
#define CDCDD_SAMPLE_JSON_H

#include <stdint.h>

#include "buf.h"
#include "sampler.h"

/* The request parameters as stored with every sample and echoed in results: malloc'd
 * JSON, NULL when out of memory. ckpt < 0: latest / live. */
char *cdcdd_sample_params_json(const cdcd_sample_params *p, int ema, int64_t ckpt);
/* A story's token ids as a JSON array. */
void cdcdd_ids_json(cdcdd_buf *b, const int32_t *ids, int T);

#endif
