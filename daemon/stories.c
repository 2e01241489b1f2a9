/* Periodic stories: see stories.h. */
#include "stories.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "clock.h"
#include "log.h"
#include "notify.h"
#include "runconfig.h"
#include "sample_json.h"
#include "sampler.h"
#include "textstats.h"
#include "train.h"

static const char SQL_STORY_CLEAR[] = "DELETE FROM samples WHERE run = ?1 AND kind = 'periodic' AND step = ?2";
static const char SQL_STORY_INSERT[] =
    "INSERT INTO samples (run, step, job, params, text, ids, created_at, kind, seed, prompt) "
    "VALUES (?1, ?2, NULL, ?3, ?4, ?5, ?6, 'periodic', ?7, ?8)";
static const char SQL_BATCH_UPSERT[] =
    "INSERT OR REPLACE INTO story_batches (run, step, created_at, n, steps, seconds, reference_s, interval_s, "
    "interval_steps, share, figures) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)";

struct cdcdd_stories {
    cdcdd_stories_params p;             /* cfg is not kept */
    int every, n, steps, length;
    int prompted;                       /* the last story gets CDCDD_STORY_PROMPT */
    char tok_path[CDCD_RUN_PATH_MAX];   /* the run's training token file: the reference text */
    cdcd_text_ref *ref;                 /* built at the first batch; NULL: no figures */
    int ref_tried, warned_tok;
    int threads, use_ema;               /* for batches sampled from a checkpoint */
    double mark;                        /* monotonic time the current interval began */
    int64_t mark_step;
};

/* The weights a batch is sampled from: the live trainer's, or a checkpoint's. */
typedef struct {
    struct cdcd_model *model;
    const struct cdcd_schedule *sched;
    const struct cdcd_vocab_map *vmap;
} story_weights;

/* The stories of one batch as the sampler gave them. */
typedef struct {
    int n;
    char **texts, **ids, **params;
    int32_t **raw; /* the sampler's ids, for `dangling` */
    size_t *n_raw;
} story_set;

/* One stored batch, as GET /runs/{id}/stories and the "stories" event show it. */
typedef struct {
    int64_t step;
    double created_at;
    int n, steps;
    double seconds, reference_s, interval_s, share;
    int64_t interval_steps; /* -1: unknown */
    char *figures;          /* JSON object or NULL */
} story_batch;

/* The figures of a batch as JSON: the cdcd_text_stats fields under their own names. */
static char *figures_to_json(const cdcd_text_stats *st) {
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_buf_printf(&b, "{\"n_stories\":%d", st->n_stories);
    for (size_t i = 0; i < cdcd_text_stats_n_fields; i++) { /* the double fields, by name */
        double v;
        memcpy(&v, (const char *)st + cdcd_text_stats_fields[i].offset, sizeof v);
        cdcdd_buf_printf(&b, ",\"%s\":", cdcd_text_stats_fields[i].name);
        cdcdd_buf_json_num(&b, v); /* NaN (no tokenizer, no words) is null */
    }
    cdcdd_buf_putc(&b, '}');
    return cdcdd_buf_take(&b, NULL);
}

/* Writes a batch's JSON object up to the opening of its stories array; the caller adds
 * the stories (story_json) and closes it with "]}". */
static void batch_json_open(cdcdd_buf *b, const story_batch *x) {
    cdcdd_buf_printf(b, "{\"step\":%lld,\"created_at\":%.3f,\"n\":%d,\"steps\":%d,\"seconds\":", (long long)x->step,
                     x->created_at, x->n, x->steps);
    cdcdd_buf_json_num(b, x->seconds);
    cdcdd_buf_puts(b, ",\"reference_s\":");
    cdcdd_buf_json_num(b, x->reference_s);
    cdcdd_buf_puts(b, ",\"interval_s\":");
    cdcdd_buf_json_num(b, x->interval_s);
    cdcdd_buf_puts(b, ",\"interval_steps\":");
    if (x->interval_steps >= 0) cdcdd_buf_json_int(b, x->interval_steps);
    else cdcdd_buf_puts(b, "null");
    cdcdd_buf_puts(b, ",\"share\":");
    cdcdd_buf_json_num(b, x->share);
    cdcdd_buf_puts(b, ",\"figures\":");
    cdcdd_buf_puts(b, x->figures ? x->figures : "null");
    cdcdd_buf_puts(b, ",\"stories\":[");
}

static void story_json(cdcdd_buf *b, int first, int64_t seed, const char *prompt, const char *text) {
    if (!first) cdcdd_buf_putc(b, ',');
    cdcdd_buf_printf(b, "{\"seed\":%lld,\"prompt\":", (long long)seed);
    cdcdd_buf_json_str(b, prompt);
    cdcdd_buf_puts(b, ",\"text\":");
    cdcdd_buf_json_str(b, text ? text : "");
    cdcdd_buf_putc(b, '}');
}

/* Story i of every batch: its seed and its prompt (NULL: unconditional). */
static uint64_t story_seed(int i) { return CDCDD_STORY_FIRST_SEED + (uint64_t)i; }
static const char *story_prompt(const cdcdd_stories *s, int i) {
    return s->prompted && i == s->n - 1 ? CDCDD_STORY_PROMPT : NULL;
}

cdcdd_stories *cdcdd_stories_new(const cdcdd_stories_params *p) {
    const cdcd_run_config *cfg = p->cfg;
    if (!cfg || cfg->train.sample_every <= 0 || cfg->train.sample_n <= 0 || cfg->train.sample_steps <= 0) return NULL;
    cdcdd_stories *s = calloc(1, sizeof *s);
    if (!s) {
        cdcd_warn("run %lld: out of memory: no periodic stories", (long long)p->run_id);
        return NULL;
    }
    s->p = *p;
    s->p.cfg = NULL;
    s->every = cfg->train.sample_every;
    s->n = cfg->train.sample_n;
    s->steps = cfg->train.sample_steps;
    s->length = cfg->data.seq_len; /* what the model was trained on */
    s->prompted = cfg->model.cond_channels != 0;
    if (!s->prompted)
        cdcd_info("run %lld: the model has no conditioning channels: its periodic stories are all unconditional",
                  (long long)p->run_id);
    snprintf(s->tok_path, sizeof s->tok_path, "%s", cfg->data.train);
    s->threads = p->threads > 0 ? p->threads : 1;
    s->use_ema = cfg->optim.ema > 0;
    s->mark = cdcd_now_s();
    s->mark_step = p->from_step;
    return s;
}

void cdcdd_stories_free(cdcdd_stories *s) {
    if (!s) return;
    cdcd_text_ref_free(s->ref);
    free(s);
}

static int cancelled(const cdcdd_stories *s) { return s->p.cancelled && s->p.cancelled(s->p.cancel_ctx); }

static int stories_progress(void *ctx, int step, int n_steps, double t, double mean_entropy, const char *preview) {
    cdcdd_stories *s = ctx;
    if (s->p.hb >= 0) cdcdd_notify_heartbeat_beat(s->p.hb);
    return cancelled(s) ? 1 : 0;
}

/* The "stories" event, published on the loop thread. */
typedef struct {
    cdcdd_loop_msg msg; /* first: the queue node */
    cdcdd_sse_hub *hub;
    int64_t run;
    char *json;
    size_t len;
} stories_event;

static void on_stories_event(cdcdd_loop_msg *m) {
    stories_event *ev = (stories_event *)m;
    cdcdd_sse_publish(ev->hub, CDCDD_TOPIC_RUN, ev->run, "stories", ev->json, ev->len);
    free(ev->json);
    free(ev);
}

/* 1 when the run has a batch stored at step, 0 when not (or the store cannot say). */
static int batch_stored(cdcdd_store *store, int64_t run, int64_t step) {
    sqlite3 *db = cdcdd_store_reader(store);
    if (!db) return 0;
    sqlite3_stmt *st = NULL;
    int found = 0;
    if (sqlite3_prepare_v2(db, "SELECT 1 FROM story_batches WHERE run = ?1 AND step = ?2", -1, &st, NULL) ==
        SQLITE_OK) {
        sqlite3_bind_int64(st, 1, run);
        sqlite3_bind_int64(st, 2, step);
        found = sqlite3_step(st) == SQLITE_ROW;
    }
    sqlite3_finalize(st);
    cdcdd_store_reader_release(store, db);
    return found;
}

/* Builds the reference for the figures once per trainer, from the run's training token
 * file (slow on a big file: the watchdog is told the trainer waits by design). */
static double stories_build_ref(cdcdd_stories *s, const struct cdcd_tokenizer *tok) {
    double t0 = cdcd_now_s();
    char err[256] = "";
    s->ref_tried = 1;
    if (s->p.hb >= 0) cdcdd_notify_heartbeat_idle(s->p.hb, 1);
    s->ref = cdcd_text_ref_from_tokfile(s->tok_path, tok, err, sizeof err);
    if (s->p.hb >= 0) cdcdd_notify_heartbeat_idle(s->p.hb, 0);
    double dt = cdcd_now_s() - t0;
    if (s->ref)
        cdcd_info("run %lld: story figures measured against %s (reference built in %.2f s)", (long long)s->p.run_id,
                  s->tok_path, dt);
    else
        cdcd_warn("run %lld: periodic stories get no figures: %s", (long long)s->p.run_id,
                  err[0] ? err : "cannot build the reference");
    return dt;
}

static void story_set_free(story_set *x) {
    for (int i = 0; x->texts && x->ids && x->params && x->raw && i < x->n; i++) {
        free(x->texts[i]);
        free(x->ids[i]);
        free(x->params[i]);
        free(x->raw[i]);
    }
    free(x->texts);
    free(x->ids);
    free(x->params);
    free(x->raw);
    free(x->n_raw);
}

/* Samples story i into x. 0, or -1 (logged; cancelled or failed). */
static int sample_story(cdcdd_stories *s, const story_weights *w, const struct cdcd_tokenizer *tok, int64_t step,
                        int i, story_set *x) {
    cdcd_sample_params p;
    cdcd_sample_params_default(&p);
    p.n = 1;
    p.steps = s->steps;
    p.length = s->length;
    p.seed = story_seed(i);
    p.prompt = story_prompt(s, i);
    p.vmap = w->vmap; /* a corpus-vocabulary run: model ids <-> tokenizer ids */
    cdcd_sample_result res;
    memset(&res, 0, sizeof res);
    char err[256] = "";
    if (cdcd_sample(w->model, w->sched, tok, &p, stories_progress, s, &res, err, sizeof err) != 0) {
        if (cancelled(s))
            cdcd_info("run %lld: periodic stories at step %lld abandoned: the trainer is winding down",
                      (long long)s->p.run_id, (long long)step);
        else
            cdcd_warn("run %lld: periodic stories at step %lld failed: %s", (long long)s->p.run_id, (long long)step,
                      err);
        cdcd_sample_result_free(&res);
        return -1;
    }
    x->texts[i] = strdup(res.texts && res.texts[0] ? res.texts[0] : "");
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    cdcdd_ids_json(&b, res.ids, res.T);
    x->ids[i] = cdcdd_buf_take(&b, NULL);
    x->params[i] = cdcdd_sample_params_json(&p, 0, -1);
    x->raw[i] = malloc(sizeof(int32_t) * (size_t)(res.T > 0 ? res.T : 1));
    if (x->raw[i] && res.T > 0) memcpy(x->raw[i], res.ids, sizeof(int32_t) * (size_t)res.T);
    x->n_raw[i] = res.T > 0 ? (size_t)res.T : 0;
    cdcd_sample_result_free(&res);
    if (!x->texts[i] || !x->ids[i] || !x->params[i] || !x->raw[i]) {
        cdcd_warn("run %lld: out of memory sampling the stories of step %lld", (long long)s->p.run_id, (long long)step);
        return -1;
    }
    return 0;
}

/* The stories first, then the batch: a reader that sees the batch row sees its stories.
 * Committed before the event, so a client that fetches on it finds the batch. */
static void store_batch(cdcdd_stories *s, const story_batch *x, const story_set *set) {
    cdcdd_store *store = s->p.store;
    cdcdd_wop *op = cdcdd_wop_new(SQL_STORY_CLEAR, 2, 1);
    if (op) {
        cdcdd_wop_int(op, s->p.run_id);
        cdcdd_wop_int(op, x->step);
        cdcdd_store_submit(store, op);
    }
    op = cdcdd_wop_new(SQL_STORY_INSERT, 8, set->n);
    if (op) {
        for (int i = 0; i < set->n; i++) {
            cdcdd_wop_int(op, s->p.run_id);
            cdcdd_wop_int(op, x->step);
            cdcdd_wop_text(op, set->params[i]);
            cdcdd_wop_text(op, set->texts[i]);
            cdcdd_wop_text(op, set->ids[i]);
            cdcdd_wop_double(op, x->created_at);
            cdcdd_wop_int(op, (int64_t)story_seed(i));
            cdcdd_wop_text(op, story_prompt(s, i));
        }
        cdcdd_store_submit(store, op);
    }
    op = cdcdd_wop_new(SQL_BATCH_UPSERT, 11, 1);
    if (op) {
        cdcdd_wop_int(op, s->p.run_id);
        cdcdd_wop_int(op, x->step);
        cdcdd_wop_double(op, x->created_at);
        cdcdd_wop_int(op, set->n);
        cdcdd_wop_int(op, s->steps);
        cdcdd_wop_double(op, x->seconds);
        cdcdd_wop_double(op, x->reference_s);
        cdcdd_wop_double(op, x->interval_s);
        cdcdd_wop_int(op, x->interval_steps);
        cdcdd_wop_double(op, x->share);
        cdcdd_wop_text(op, x->figures);
        cdcdd_store_submit(store, op);
    }
    cdcdd_store_sync(store);
}

static void announce_batch(cdcdd_stories *s, const story_batch *x, const story_set *set) {
    if (x->interval_steps > 0)
        cdcd_info("run %lld: periodic stories at step %lld: %d stories in %.2f s (%.2f%% of the last %lld steps, "
                  "%.1f s)%s",
                  (long long)s->p.run_id, (long long)x->step, set->n, x->seconds, 100.0 * x->share,
                  (long long)x->interval_steps, x->interval_s, x->reference_s > 0 ? ", with the reference build" : "");
    else
        cdcd_info("run %lld: periodic stories at step %lld: %d stories in %.2f s (missing after the restart)%s",
                  (long long)s->p.run_id, (long long)x->step, set->n, x->seconds,
                  x->reference_s > 0 ? ", with the reference build" : "");
    cdcdd_buf b;
    cdcdd_buf_init(&b);
    batch_json_open(&b, x);
    for (int i = 0; i < set->n; i++) story_json(&b, i == 0, (int64_t)story_seed(i), story_prompt(s, i), set->texts[i]);
    cdcdd_buf_printf(&b, "],\"run\":%lld}", (long long)s->p.run_id);
    stories_event *ev = calloc(1, sizeof *ev);
    if (ev && cdcdd_buf_ok(&b)) {
        ev->hub = s->p.hub;
        ev->run = s->p.run_id;
        ev->json = cdcdd_buf_take(&b, &ev->len);
        if (ev->json) cdcdd_loopq_post(s->p.loopq, &ev->msg, on_stories_event);
        else free(ev);
    } else {
        free(ev); /* the batch is stored; only the live event is lost */
    }
    cdcdd_buf_free(&b);
}

/* Samples, measures, stores and announces the batch of `step` with the weights w. */
static void stories_batch(cdcdd_stories *s, const story_weights *w, int64_t step) {
    const struct cdcd_tokenizer *tok = cdcdd_vocab_get(s->p.vocab, NULL);
    if (!tok) {
        if (!s->warned_tok)
            cdcd_warn("run %lld: no tokenizer: periodic stories are skipped until it loads", (long long)s->p.run_id);
        s->warned_tok = 1;
        return;
    }
    double t0 = cdcd_now_s();
    double ref_s = s->ref_tried ? 0 : stories_build_ref(s, tok);
    int n = s->n;
    story_set set = {.n = n,
                     .texts = calloc((size_t)n, sizeof(char *)),
                     .ids = calloc((size_t)n, sizeof(char *)),
                     .params = calloc((size_t)n, sizeof(char *)),
                     .raw = calloc((size_t)n, sizeof(int32_t *)),
                     .n_raw = calloc((size_t)n, sizeof(size_t))};
    story_batch x = {.step = step, .n = n, .steps = s->steps, .reference_s = ref_s, .interval_steps = -1};
    if (!set.texts || !set.ids || !set.params || !set.raw || !set.n_raw) {
        cdcd_warn("run %lld: out of memory sampling the stories of step %lld", (long long)s->p.run_id, (long long)step);
        story_set_free(&set);
        return;
    }
    int ok = 1;
    for (int i = 0; i < n && ok; i++) ok = sample_story(s, w, tok, step, i, &set) == 0;
    if (ok) {
        if (s->ref) {
            cdcd_text_stats stats;
            memset(&stats, 0, sizeof stats);
            if (cdcd_text_stats_compute_ids(s->ref, tok, (const char *const *)set.texts,
                                            (const int32_t *const *)set.raw, set.n_raw, (size_t)n, &stats) == 0)
                x.figures = figures_to_json(&stats);
            else
                cdcd_warn("run %lld: cannot measure the stories of step %lld (out of memory, or ids outside the "
                          "vocabulary)", (long long)s->p.run_id, (long long)step);
        }
        double t1 = cdcd_now_s();
        x.created_at = cdcd_wall_s();
        x.seconds = t1 - t0;
        x.interval_s = t1 - s->mark;
        x.interval_steps = step - s->mark_step;
        /* a batch sampled at the step a trainer resumed at has no interval of training behind it */
        x.share = x.interval_steps > 0 && x.interval_s > 0 ? x.seconds / x.interval_s : NAN;
        s->mark = t1;
        s->mark_step = step;
        store_batch(s, &x, &set);
        announce_batch(s, &x, &set);
    }
    story_set_free(&set);
    free(x.figures);
}

void cdcdd_stories_after_step(cdcdd_stories *s, struct cdcd_trainer *t, int unless_stored) {
    if (!s || !t) return;
    int64_t step = cdcd_trainer_step_count(t);
    if (step <= 0 || step % s->every != 0) return;
    if (unless_stored && batch_stored(s->p.store, s->p.run_id, step)) return;
    /* A run with an EMA writes its stories from the EMA weights, as its checkpoints sample. */
    int swapped = cdcd_trainer_swap_ema(t);
    story_weights w = {cdcd_trainer_model(t), cdcd_trainer_schedule(t), cdcd_trainer_vocab_map(t)};
    stories_batch(s, &w, step);
    if (swapped) cdcd_trainer_swap_ema(t);
}

void cdcdd_stories_at_checkpoint(cdcdd_stories *s, const char *path, int64_t step, int unless_stored) {
    if (!s || step <= 0) return;
    int due = unless_stored ? step % s->every == 0 && !batch_stored(s->p.store, s->p.run_id, step)
                            : step / s->every > s->mark_step / s->every;
    if (!due) return;
    cdcd_inference_bundle b;
    char err[256] = "";
    if (cdcd_load_for_inference(path, s->threads, 1, s->use_ema, &b, err, sizeof err) != 0) {
        cdcd_warn("run %lld: periodic stories at step %lld: cannot load %s: %s", (long long)s->p.run_id,
                  (long long)step, path, err);
        s->mark_step = step; /* not again for this interval */
        return;
    }
    story_weights w = {b.model, b.sched, b.vmap};
    stories_batch(s, &w, step);
    s->mark_step = step;
    cdcd_inference_bundle_free(&b);
}

/* ---- GET /runs/{id}/stories ---- */

void cdcdd_stories_read(sqlite3 *db, void *query, unsigned *status, cdcdd_buf *out) {
    const cdcdd_stories_query *a = query;
    sqlite3_stmt *st = NULL, *ss = NULL;
    story_batch *rows = NULL;
    int n = 0, rc = SQLITE_OK;
    if (sqlite3_prepare_v2(db,
                           "SELECT step, created_at, n, steps, seconds, reference_s, interval_s, interval_steps, share, "
                           "figures FROM story_batches WHERE run = ?1 AND step < ?2 ORDER BY step DESC LIMIT ?3",
                           -1, &st, NULL) != SQLITE_OK)
        goto fail;
    sqlite3_bind_int64(st, 1, a->run);
    sqlite3_bind_int64(st, 2, a->before_step);
    sqlite3_bind_int64(st, 3, a->limit);
    rows = calloc((size_t)a->limit, sizeof *rows);
    if (!rows) {
        *status = 500;
        cdcdd_error_json(out, "out_of_memory", NULL, "out of memory");
        goto done;
    }
#define COL_D(stmt, i) (sqlite3_column_type(stmt, i) == SQLITE_NULL ? NAN : sqlite3_column_double(stmt, i))
    while (n < a->limit && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        story_batch *x = &rows[n++];
        x->step = sqlite3_column_int64(st, 0);
        x->created_at = sqlite3_column_double(st, 1);
        x->n = sqlite3_column_int(st, 2);
        x->steps = sqlite3_column_int(st, 3);
        x->seconds = COL_D(st, 4);
        x->reference_s = COL_D(st, 5);
        x->interval_s = COL_D(st, 6);
        x->interval_steps = sqlite3_column_type(st, 7) == SQLITE_NULL ? -1 : sqlite3_column_int64(st, 7);
        x->share = COL_D(st, 8);
        const unsigned char *f = sqlite3_column_text(st, 9);
        x->figures = f ? strdup((const char *)f) : NULL;
    }
#undef COL_D
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) goto fail;
    if (a->with_stories && n > 0) {
        if (sqlite3_prepare_v2(db,
                               "SELECT step, seed, prompt, text FROM samples WHERE run = ?1 AND kind = 'periodic' "
                               "AND step >= ?2 AND step <= ?3 ORDER BY step DESC, seed ASC, id ASC",
                               -1, &ss, NULL) != SQLITE_OK)
            goto fail;
        sqlite3_bind_int64(ss, 1, a->run);
        sqlite3_bind_int64(ss, 2, rows[n - 1].step);
        sqlite3_bind_int64(ss, 3, rows[0].step);
        rc = sqlite3_step(ss);
    }
    cdcdd_buf_printf(out, "{\"run\":%lld,\"batches\":[", (long long)a->run);
    for (int i = 0; i < n; i++) {
        if (i) cdcdd_buf_putc(out, ',');
        batch_json_open(out, &rows[i]);
        int first = 1;
        /* both lists run newest step first: take this batch's stories, skip orphans */
        while (ss && rc == SQLITE_ROW && sqlite3_column_int64(ss, 0) >= rows[i].step) {
            if (sqlite3_column_int64(ss, 0) == rows[i].step) {
                story_json(out, first, sqlite3_column_int64(ss, 1), (const char *)sqlite3_column_text(ss, 2),
                           (const char *)sqlite3_column_text(ss, 3));
                first = 0;
            }
            rc = sqlite3_step(ss);
        }
        cdcdd_buf_puts(out, "]}");
    }
    if (ss && rc != SQLITE_ROW && rc != SQLITE_DONE) goto fail;
    cdcdd_buf_printf(out, "],\"count\":%d,\"next_before_step\":", n);
    if (n == a->limit && n > 0) cdcdd_buf_json_int(out, rows[n - 1].step);
    else cdcdd_buf_puts(out, "null");
    cdcdd_buf_putc(out, '}');
    goto done;
fail:
    cdcdd_buf_free(out);
    cdcdd_buf_init(out);
    *status = 500;
    cdcdd_error_json(out, "store_error", NULL, sqlite3_errmsg(db));
done:
    sqlite3_finalize(st);
    sqlite3_finalize(ss);
    for (int i = 0; rows && i < n; i++) free(rows[i].figures);
    free(rows);
}

