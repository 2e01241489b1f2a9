/* cdcd train --report: see train_report.h. */
#include "train_report.h"

#include <math.h>

/* JSON has no NaN or Inf: those become null (a nonfinite step still reports its row). */
static void num(FILE *out, double v, const char *fmt) {
    if (isfinite(v))
        fprintf(out, fmt, v);
    else
        fputs("null", out);
}

/* A JSON string: quotes, backslashes and control characters escaped. */
static void str(FILE *out, const char *s) {
    fputc('"', out);
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(out, "\\%c", *p);
        else if (*p < 0x20)
            fprintf(out, "\\u%04x", *p);
        else
            fputc(*p, out);
    }
    fputc('"', out);
}

static void floats(FILE *out, const float *v, int n) {
    fputc('[', out);
    for (int i = 0; i < n; i++) {
        if (i) fputc(',', out);
        num(out, v[i], "%.9g");
    }
    fputc(']', out);
}

static void end(FILE *out) {
    fputs("}\n", out);
    fflush(out);
}

void cdcd_report_started(FILE *out, int64_t step, int ranks) {
    fprintf(out, "{\"type\":\"started\",\"step\":%lld,\"ranks\":%d", (long long)step, ranks);
    end(out);
}

void cdcd_report_step(FILE *out, const cdcd_step_report *r) {
    fprintf(out, "{\"type\":\"step\",\"step\":%lld,\"loss\":", (long long)r->step);
    num(out, r->loss, "%.17g");
    fputs(",\"lr\":", out);
    num(out, r->lr, "%.17g");
    fputs(",\"grad_norm\":", out);
    num(out, r->grad_norm, "%.17g");
    fputs(",\"tokens_per_s\":", out);
    num(out, r->tokens_per_s, "%.17g");
    fprintf(out, ",\"tokens\":%lld,\"step_ms\":", (long long)r->tokens);
    num(out, r->step_ms, "%.17g");
    fprintf(out, ",\"nonfinite\":%d", r->nonfinite);
    end(out);
}

void cdcd_report_entropy(FILE *out, int64_t step, int n, const float *sigma, const float *loss) {
    fprintf(out, "{\"type\":\"entropy\",\"step\":%lld,\"sigma\":", (long long)step);
    floats(out, sigma, n);
    fputs(",\"loss\":", out);
    floats(out, loss, n);
    end(out);
}

void cdcd_report_fit(FILE *out, const cdcd_fit_report *f, const double *knots, int n_knots) {
    fprintf(out, "{\"type\":\"fit\",\"step\":%lld,\"ok\":%d", (long long)f->step, f->ok);
    const char *names[] = {"mu", "s", "h", "o", "rmse"};
    const double vals[] = {f->mu, f->s, f->h, f->o, f->rmse};
    for (int i = 0; i < 5; i++) {
        fprintf(out, ",\"%s\":", names[i]);
        num(out, vals[i], "%.17g");
    }
    fprintf(out, ",\"n\":%d,\"kind\":%d", f->n, f->kind);
    if (knots) {
        fputs(",\"knots\":[", out);
        for (int i = 0; i < n_knots; i++) {
            if (i) fputc(',', out);
            num(out, knots[i], "%.17g");
        }
        fputc(']', out);
    }
    end(out);
}

void cdcd_report_valid(FILE *out, int64_t step, double loss) {
    fprintf(out, "{\"type\":\"valid\",\"step\":%lld,\"loss\":", (long long)step);
    num(out, loss, "%.17g");
    end(out);
}

void cdcd_report_checkpoint(FILE *out, int64_t step, const char *path, uint64_t bytes, const char *sha256_hex) {
    fprintf(out, "{\"type\":\"checkpoint\",\"step\":%lld,\"path\":", (long long)step);
    str(out, path);
    fprintf(out, ",\"bytes\":%llu,\"sha256\":", (unsigned long long)bytes);
    str(out, sha256_hex);
    end(out);
}
