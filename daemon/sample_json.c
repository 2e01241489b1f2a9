/* Sampler parameters and ids as JSON: see sample_json.h. */
#include "sample_json.h"

#include <math.h>

char *cdcdd_sample_params_json(const cdcd_sample_params *p, int ema, int64_t ckpt) {
    cdcdd_buf pj;
    cdcdd_buf_init(&pj);
    cdcdd_buf_printf(&pj, "{\"n\":%d,\"steps\":%d,\"seed\":%llu,\"length\":%d,\"temperature\":", p->n, p->steps,
                     (unsigned long long)p->seed, p->length);
    cdcdd_buf_json_num(&pj, p->temperature);
    cdcdd_buf_puts(&pj, ",\"guidance\":");
    cdcdd_buf_json_num(&pj, p->guidance);
    cdcdd_buf_puts(&pj, ",\"score_temp\":");
    cdcdd_buf_json_num(&pj, p->score_temp);
    cdcdd_buf_puts(&pj, ",\"churn\":");
    cdcdd_buf_json_num(&pj, p->churn);
    cdcdd_buf_puts(&pj, ",\"clamp\":");
    cdcdd_buf_json_num(&pj, p->clamp_below);
    cdcdd_buf_printf(&pj, ",\"heun\":%s,\"self_cond\":%s,\"ema\":%s,\"checkpoint\":", p->heun ? "true" : "false",
                     p->self_cond < 0 ? "\"auto\"" : p->self_cond ? "true" : "false", ema ? "true" : "false");
    if (ckpt >= 0) cdcdd_buf_json_int(&pj, ckpt);
    else cdcdd_buf_puts(&pj, "null");
    cdcdd_buf_puts(&pj, ",\"prompt\":");
    cdcdd_buf_json_str(&pj, p->prompt);
    cdcdd_buf_puts(&pj, ",\"infill\":");
    cdcdd_buf_json_str(&pj, p->infill);
    cdcdd_buf_putc(&pj, '}');
    return cdcdd_buf_take(&pj, NULL);
}

void cdcdd_ids_json(cdcdd_buf *b, const int32_t *ids, int T) {
    cdcdd_buf_putc(b, '[');
    for (int k = 0; k < T; k++) {
        if (k) cdcdd_buf_putc(b, ',');
        cdcdd_buf_printf(b, "%d", (int)ids[k]);
    }
    cdcdd_buf_putc(b, ']');
}
