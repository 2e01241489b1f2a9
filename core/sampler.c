#include "sampler.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model.h"
#include "rng.h"
#include "schedule.h"
#include "tokenizer.h"
#include "vocab_map.h"

#define SAMPLE_MAX_STEPS 100000
#define SAMPLE_MAX_N 4096
#define SAMPLE_STREAM_NOISE 11
#define SAMPLE_STREAM_FINAL 12
#define SAMPLE_STREAM_CHURN 13 /* its own stream: churn 0 leaves every other draw as it was */
#define SAMPLE_MAX_CHURN 1.0f   /* sigma at most doubles before a step */

void cdcd_sample_params_default(cdcd_sample_params *p) {
    memset(p, 0, sizeof *p);
    p->n = CDCD_SAMPLE_DEFAULT_N;
    p->steps = CDCD_SAMPLE_DEFAULT_STEPS;
    p->seed = 1;
    p->temperature = 0.0f;
    p->guidance = 1.0f;
    p->score_temp = CDCD_SAMPLE_DEFAULT_SCORE_TEMP;
    p->self_cond = -1;
}

void cdcd_sample_result_free(cdcd_sample_result *r) {
    if (!r) return;
    if (r->texts)
        for (int i = 0; i < r->n; i++) free(r->texts[i]);
    free(r->texts);
    free(r->ids);
    memset(r, 0, sizeof *r);
}

static int fail(char *err, size_t errlen, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(char *err, size_t errlen, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return -1;
}

/* The conditioning template shared by every story of a call:
 * ids (T), cond (T) 1 = given, real (T) 1 = position exists (infill stops at its [SEP]). */
typedef struct {
    int32_t *ids;
    uint8_t *cond, *real;
    int n_given;
} cond_template;

/* Encodes text (special token names such as [MASK] become their ids) after [CLS]. */
static int encode_after_cls(const cdcd_tokenizer *tok, const char *text, int cap, int32_t *buf, int *n,
                            char *err, size_t errlen) {
    cdcd_tok_ids ids;
    cdcd_tok_ids_init(&ids);
    if (cdcd_tok_encode_ex(tok, text, strlen(text), CDCD_TOK_ENCODE_SPECIALS, &ids) != 0) {
        cdcd_tok_ids_free(&ids);
        return fail(err, errlen, "out of memory encoding the prompt");
    }
    *n = 0;
    buf[(*n)++] = cdcd_tok_specials(tok)->cls;
    int too_long = (int)ids.n > cap - 1;
    for (size_t i = 0; i < ids.n && !too_long; i++) buf[(*n)++] = ids.ids[i];
    cdcd_tok_ids_free(&ids);
    if (too_long) return fail(err, errlen, "the text is longer than the sequence (%d tokens)", cap);
    return 0;
}

static int build_template(const cdcd_sample_params *p, const cdcd_tokenizer *tok, int T, cond_template *c,
                          char *err, size_t errlen) {
    for (int t = 0; t < T; t++) {
        c->ids[t] = 0;
        c->cond[t] = 0;
        c->real[t] = 1;
    }
    c->n_given = 0;
    int has_prompt = p->prompt && strspn(p->prompt, " \t\r\n") < strlen(p->prompt);
    int has_infill = p->infill && strspn(p->infill, " \t\r\n") < strlen(p->infill);
    if (has_prompt && has_infill) return fail(err, errlen, "give a prompt or an infill text, not both");
    if (!has_prompt && !has_infill) return 0; /* an empty prompt is an unconditional sample */
    if (!tok) return fail(err, errlen, "a tokenizer is needed for prompts");
    int32_t *buf = malloc(sizeof(int32_t) * ((size_t)T + 1));
    if (!buf) return fail(err, errlen, "out of memory");
    int n = 0;
    const cdcd_tok_special *sp = cdcd_tok_specials(tok);
    if (encode_after_cls(tok, has_prompt ? p->prompt : p->infill, has_prompt ? T - 1 : T - 1, buf, &n, err,
                         errlen) != 0)
        goto bad;
    if (has_prompt) {
        if (n >= T) {
            fail(err, errlen, "the prompt fills the whole sequence (%d tokens): nothing left to generate", T);
            goto bad;
        }
        for (int t = 0; t < n; t++) {
            c->ids[t] = buf[t];
            c->cond[t] = 1;
        }
        c->n_given = n;
    } else {
        int n_masks = 0;
        for (int t = 0; t < n; t++) n_masks += buf[t] == sp->mask;
        if (n_masks == 0) {
            fail(err, errlen, "the infill text has no [MASK] to fill");
            goto bad;
        }
        buf[n++] = sp->sep; /* fits: encode left room for it */
        for (int t = 0; t < T; t++) {
            c->real[t] = t < n;
            if (t < n && buf[t] != sp->mask) {
                c->ids[t] = buf[t];
                c->cond[t] = 1;
                c->n_given++;
            }
        }
    }
    free(buf);
    return 0;
bad:
    free(buf);
    return -1;
}

/* Mean entropy over the generated (real, not given) positions. */
static double mean_entropy(const float *ent, int nb, int T, const cond_template *c) {
    double s = 0;
    long n = 0;
    for (int b = 0; b < nb; b++)
        for (int t = 0; t < T; t++)
            if (c->real[t] && !c->cond[t]) {
                s += ent[(size_t)b * T + t];
                n++;
            }
    return n ? s / (double)n : 0.0;
}

int cdcd_sample(struct cdcd_model *model, const struct cdcd_schedule *sched, const struct cdcd_tokenizer *tok,
                const cdcd_sample_params *p, cdcd_sample_progress_fn progress, void *progress_ctx,
                cdcd_sample_result *out, char *err, size_t errlen) {
    memset(out, 0, sizeof *out);
    const cdcd_model_config *mc = cdcd_model_get_config(model);
    int max_T = cdcd_model_max_seq(model);
    int T = p->length > 0 ? p->length : max_T;
    if (p->steps < 1 || p->steps > SAMPLE_MAX_STEPS)
        return fail(err, errlen, "steps must be between 1 and %d (got %d)", SAMPLE_MAX_STEPS, p->steps);
    if (p->n < 1 || p->n > SAMPLE_MAX_N) return fail(err, errlen, "n must be between 1 and %d", SAMPLE_MAX_N);
    if (T < 2 || T > max_T) return fail(err, errlen, "length must be between 2 and the model's %d (got %d)", max_T, T);
    if (!(p->temperature >= 0) || !isfinite(p->temperature)) return fail(err, errlen, "temperature must be >= 0");
    if (!isfinite(p->guidance) || p->guidance < 0) return fail(err, errlen, "guidance must be >= 0");
    if (!(p->score_temp > 0) || !isfinite(p->score_temp)) return fail(err, errlen, "score_temp must be > 0");
    if (!(p->clamp_below >= 0) || !isfinite(p->clamp_below)) return fail(err, errlen, "clamp_below must be >= 0");
    if (!(p->churn >= 0) || !(p->churn <= SAMPLE_MAX_CHURN))
        return fail(err, errlen, "churn must be between 0 and %g", (double)SAMPLE_MAX_CHURN);
    if (p->self_cond > 0 && !mc->self_cond) return fail(err, errlen, "the model was not trained with self-conditioning");
    if ((p->prompt && *p->prompt) || (p->infill && *p->infill)) {
        if (!mc->cond_channels) return fail(err, errlen, "the model has no conditioning channels: it cannot take a prompt");
    }
    int E = mc->d_emb, maxB = cdcd_model_max_batch(model);
    int rc = -1;
    size_t nsteps = (size_t)p->steps;
    cond_template c = {0};
    double *ts = malloc(sizeof(double) * (nsteps + 1));
    c.ids = malloc(sizeof(int32_t) * (size_t)T);
    c.cond = malloc((size_t)T);
    c.real = malloc((size_t)T);
    size_t bte = (size_t)maxB * T * E, bt = (size_t)maxB * T;
    float *x = malloc(sizeof(float) * bte), *x0 = malloc(sizeof(float) * bte), *xt = malloc(sizeof(float) * bte);
    float *d = malloc(sizeof(float) * bte), *sc = mc->self_cond ? calloc(bte, sizeof(float)) : NULL;
    float *ent = malloc(sizeof(float) * bt), *sig = malloc(sizeof(float) * (size_t)maxB);
    int32_t *cids = malloc(sizeof(int32_t) * bt), *amax = malloc(sizeof(int32_t) * bt);
    uint8_t *cmask = malloc(bt), *pmask = malloc(bt);
    char *preview = malloc(8 * (size_t)T + 64);
    float *etab = p->clamp_below > 0 ? malloc(sizeof(float) * (size_t)mc->vocab_size * E) : NULL;
    out->n = p->n;
    out->T = T;
    out->ids = malloc(sizeof(int32_t) * (size_t)p->n * T);
    out->texts = calloc((size_t)p->n, sizeof(char *));
    if (!ts || !c.ids || !c.cond || !c.real || !x || !x0 || !xt || !d || (mc->self_cond && !sc) || !ent || !sig ||
        !cids || !amax || !cmask || !pmask || !preview || !out->ids || !out->texts || (p->clamp_below > 0 && !etab)) {
        fail(err, errlen, "out of memory");
        goto done;
    }
    if (build_template(p, tok, T, &c, err, errlen) != 0) goto done;
    if (etab) cdcd_model_unit_embeddings(model, etab);
    float sqrt_e = sqrtf((float)E);
    if (cdcd_schedule_timesteps(sched, p->steps, ts) != 0) {
        fail(err, errlen, "the schedule cannot produce %d timesteps", p->steps);
        goto done;
    }
    int conditioned = c.n_given > 0;
    cdcd_rng rng_noise, rng_final;
    cdcd_rng_init(&rng_noise, p->seed, SAMPLE_STREAM_NOISE);
    cdcd_rng_init(&rng_final, p->seed, SAMPLE_STREAM_FINAL);
    cdcd_rng rng_churn;
    cdcd_rng_init(&rng_churn, p->seed, SAMPLE_STREAM_CHURN);
    int use_sc = (p->self_cond != 0) && mc->self_cond;
    int cancelled = 0;
    for (int start = 0; start < p->n && !cancelled; start += maxB) {
        int nb = p->n - start < maxB ? p->n - start : maxB;
        size_t nte = (size_t)nb * T * E;
        for (int b = 0; b < nb; b++) {
            memcpy(cids + (size_t)b * T, c.ids, sizeof(int32_t) * (size_t)T);
            cdcd_vmap_ids_to_model(p->vmap, cids + (size_t)b * T, (size_t)T);
            memcpy(cmask + (size_t)b * T, c.cond, (size_t)T);
            memcpy(pmask + (size_t)b * T, c.real, (size_t)T);
        }
        cdcd_rng_fill_normal(&rng_noise, x, nte, (float)ts[0]);
        if (sc) memset(sc, 0, sizeof(float) * nte);
        cdcd_infer_input in = {.B = nb, .T = T, .x = x, .sigma = sig, .pad_mask = pmask,
                               .cond_ids = conditioned ? cids : NULL, .cond_mask = conditioned ? cmask : NULL,
                               .self_cond = use_sc ? sc : NULL, .guidance = p->guidance,
                               .score_temp = p->score_temp};
        for (size_t i = 0; i < nsteps; i++) {
            double t = ts[i], tn = ts[i + 1];
            /* never above the first step's sigma (tmax): the model was not trained past it */
            double t_hat = fmin(t * (1.0 + p->churn), ts[0]);
            if (t_hat > t && i + 1 < nsteps) {
                /* x ~ p_t plus fresh noise of variance t_hat^2 - t^2 is a draw of p_t_hat */
                cdcd_rng_fill_normal(&rng_churn, xt, nte, (float)sqrt(t_hat * t_hat - t * t));
                for (size_t k = 0; k < nte; k++) x[k] += xt[k];
                t = t_hat;
            }
            for (int b = 0; b < nb; b++) sig[b] = (float)t;
            int want_preview = progress && p->preview_every > 0 && tok &&
                               ((i + 1) % (size_t)p->preview_every == 0 || i + 1 == nsteps);
            int clamp = etab && t < p->clamp_below;
            cdcd_infer_output o = {.x0 = x0, .entropy = ent, .argmax = want_preview || clamp ? amax : NULL};
            in.x = x;
            if (cdcd_model_infer(model, &in, &o) != 0) {
                fail(err, errlen, "model evaluation failed at step %zu", i);
                goto done;
            }
            if (clamp) /* x-hat-0 = e(argmax token) at every generated position */
                for (size_t r = 0; r < (size_t)nb * T; r++) {
                    const float *e = etab + (size_t)amax[r] * E;
                    for (int k = 0; k < E; k++) x0[r * E + k] = sqrt_e * e[k];
                }
            /* Euler: dx/dt = (x - x0)/t. */
            for (size_t k = 0; k < nte; k++) d[k] = (x[k] - x0[k]) / (float)t;
            if (p->heun) {
                for (size_t k = 0; k < nte; k++) xt[k] = x[k] + (float)(tn - t) * d[k];
                for (int b = 0; b < nb; b++) sig[b] = (float)tn;
                cdcd_infer_input in2 = in;
                in2.x = xt;
                cdcd_infer_output o2 = {.x0 = x0}; /* d already holds the first slope */
                if (cdcd_model_infer(model, &in2, &o2) != 0) {
                    fail(err, errlen, "model evaluation failed at step %zu", i);
                    goto done;
                }
                for (size_t k = 0; k < nte; k++) {
                    float d2 = (xt[k] - x0[k]) / (float)tn;
                    x[k] += (float)(tn - t) * 0.5f * (d[k] + d2);
                }
            } else {
                for (size_t k = 0; k < nte; k++) x[k] += (float)(tn - t) * d[k];
            }
            if (use_sc) memcpy(sc, x0, sizeof(float) * nte);
            if (progress) {
                const char *pv = NULL;
                if (want_preview) {
                    cdcd_vmap_ids_to_token(p->vmap, amax, (size_t)T);
                    for (int tt = 0; tt < T; tt++)
                        if (c.cond[tt]) amax[tt] = c.ids[tt];
                    char *txt = cdcd_tok_decode(tok, amax, (size_t)T, CDCD_TOK_DECODE_STOP_AT_SEP);
                    snprintf(preview, 8 * (size_t)T + 64, "%s", txt ? txt : "");
                    free(txt);
                    pv = preview;
                }
                if (progress(progress_ctx, (int)i + 1, p->steps, tn, mean_entropy(ent, nb, T, &c), pv) != 0) {
                    cancelled = 1;
                    break;
                }
            }
        }
        if (cancelled) break;
        /* One last model call at t_min; tokens by argmax or a temperature softmax draw. */
        for (int b = 0; b < nb; b++) sig[b] = (float)ts[nsteps];
        in.x = x;
        cdcd_infer_output o = {.sampled = amax, .temperature = p->temperature, .rng = &rng_final};
        if (cdcd_model_infer(model, &in, &o) != 0) {
            fail(err, errlen, "model evaluation failed at the final step");
            goto done;
        }
        int32_t pad_id = tok ? cdcd_tok_specials(tok)->pad : 0;
        cdcd_vmap_ids_to_token(p->vmap, amax, (size_t)nb * T);
        for (int b = 0; b < nb; b++) {
            int32_t *dst = out->ids + (size_t)(start + b) * T;
            for (int t = 0; t < T; t++) {
                dst[t] = c.cond[t] ? c.ids[t] : c.real[t] ? amax[(size_t)b * T + t] : pad_id;
            }
            if (tok) {
                out->texts[start + b] = cdcd_tok_decode(tok, dst, (size_t)T, CDCD_TOK_DECODE_STOP_AT_SEP);
                if (!out->texts[start + b]) {
                    fail(err, errlen, "cannot decode the sample (ids out of the vocabulary?)");
                    goto done;
                }
            }
        }
    }
    if (cancelled) {
        fail(err, errlen, "cancelled");
        goto done;
    }
    rc = 0;
done:
    if (rc != 0) cdcd_sample_result_free(out);
    free(ts);
    free(c.ids);
    free(c.cond);
    free(c.real);
    free(x);
    free(x0);
    free(xt);
    free(d);
    free(sc);
    free(ent);
    free(sig);
    free(cids);
    free(amax);
    free(cmask);
    free(pmask);
    free(preview);
    free(etab);
    return rc;
}
