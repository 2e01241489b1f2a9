/* Runs as JSON: see run_json.h. */
#include "run_json.h"

#include "schedule.h"

static void json_num_or_null(cdcdd_buf *b, double v) { cdcdd_buf_json_num(b, v); }

static void json_time(cdcdd_buf *b, double t) {
    if (t > 0) cdcdd_buf_printf(b, "%.3f", t);
    else cdcdd_buf_puts(b, "null");
}

void cdcdd_fit_json(cdcdd_buf *b, const cdcd_fit_report *f) {
    cdcdd_buf_printf(b, "{\"step\":%lld,\"ok\":%s,\"kind\":\"%s\",\"mu\":", (long long)f->step,
                     f->ok ? "true" : "false", f->kind == CDCD_SCHEDULE_PWL ? "pwl" : "cauchy");
    cdcdd_buf_json_num(b, f->mu);
    cdcdd_buf_puts(b, ",\"s\":");
    cdcdd_buf_json_num(b, f->s);
    cdcdd_buf_puts(b, ",\"h\":");
    cdcdd_buf_json_num(b, f->h);
    cdcdd_buf_puts(b, ",\"o\":");
    cdcdd_buf_json_num(b, f->o);
    cdcdd_buf_puts(b, ",\"rmse\":");
    cdcdd_buf_json_num(b, f->rmse);
    cdcdd_buf_printf(b, ",\"n\":%d}", f->n);
}

void cdcdd_run_json(cdcdd_buf *b, const cdcdd_run *r, int with_config) {
    cdcdd_buf_printf(b, "{\"id\":%lld,\"name\":", (long long)r->id);
    cdcdd_buf_json_str(b, r->name);
    cdcdd_buf_printf(b, ",\"state\":\"%s\",\"pending\":", cdcdd_run_state_name(r->state));
    if (r->pending) cdcdd_buf_json_str(b, r->pending);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"created_at\":");
    json_time(b, r->created_at);
    cdcdd_buf_puts(b, ",\"started_at\":");
    json_time(b, r->started_at);
    cdcdd_buf_puts(b, ",\"finished_at\":");
    json_time(b, r->finished_at);
    cdcdd_buf_printf(b, ",\"step\":%lld,\"max_steps\":%lld,\"tokens\":%lld,\"tokens_per_s\":",
                     (long long)r->step, (long long)r->max_steps, (long long)r->tokens);
    json_num_or_null(b, r->tokens_per_s);
    cdcdd_buf_puts(b, ",\"loss\":");
    json_num_or_null(b, r->loss);
    cdcdd_buf_printf(b, ",\"nonfinite\":%s,\"lr\":", r->nonfinite ? "true" : "false");
    json_num_or_null(b, r->lr);
    cdcdd_buf_puts(b, ",\"grad_norm\":");
    json_num_or_null(b, r->grad_norm);
    cdcdd_buf_puts(b, ",\"valid_loss\":");
    json_num_or_null(b, r->valid_loss);
    cdcdd_buf_puts(b, ",\"valid_step\":");
    if (r->valid_step >= 0) cdcdd_buf_json_int(b, r->valid_step);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"fit\":");
    if (r->has_fit) cdcdd_fit_json(b, &r->fit);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"checkpoint\":");
    if (r->ckpt_step >= 0) {
        cdcdd_buf_printf(b, "{\"step\":%lld,\"bytes\":%llu,\"sha256\":\"%s\"}",
                         (long long)r->ckpt_step, (unsigned long long)r->ckpt_bytes, r->ckpt_sha);
    } else {
        cdcdd_buf_puts(b, "null");
    }
    cdcdd_buf_puts(b, ",\"error\":");
    if (r->error[0]) cdcdd_buf_json_str(b, r->error);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"note\":");
    if (r->note[0]) cdcdd_buf_json_str(b, r->note);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_printf(b, ",\"sample_jobs\":%d", r->sample_jobs);
    if (with_config) {
        cdcdd_buf_puts(b, ",\"config\":");
        cdcdd_buf_puts(b, r->config_json ? r->config_json : "null");
    }
    cdcdd_buf_putc(b, '}');
}

