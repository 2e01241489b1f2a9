/* Periodic stories: every train.sample_every optimiser steps (never at step 0) the trainer
 * thread itself, right after the step, samples train.sample_n stories with
 * train.sample_steps ODE steps from the live weights, as a live sampling job does. The
 * seeds are fixed (story i: CDCDD_STORY_FIRST_SEED + i, one story per sampler call) so that
 * the stories of different steps differ only by the weights; the last story is prompted
 * with CDCDD_STORY_PROMPT (when the model has conditioning channels), the rest are
 * unconditional. Each batch is measured with core/textstats against a reference built
 * once per trainer, on the trainer thread, from the run's training token file; the
 * stories are stored as samples of kind 'periodic', the batch (figures, seconds, share of
 * the wall time since the previous batch) in story_batches, both committed before the
 * run's "stories" event, and the cost is logged. A pause, stop or shutdown abandons a
 * batch in progress; the restart samples the batch of the step it resumes at when none is
 * stored. cdcdd_stories_read answers GET /runs/{id}/stories. */
#ifndef CDCDD_STORIES_H
#define CDCDD_STORIES_H

#include <sqlite3.h>
#include <stdint.h>

#include "buf.h"
#include "loopq.h"
#include "sse.h"
#include "store.h"
#include "vocab.h"

#define CDCDD_STORY_PROMPT "Once upon a time" /* the prompt of a periodic batch's last story */
#define CDCDD_STORY_FIRST_SEED 1u         /* story i of every periodic batch uses seed 1 + i */
#define CDCDD_STORIES_LIST_DEFAULT 50     /* GET /runs/{id}/stories default limit (batches) */
#define CDCDD_STORIES_LIST_MAX 1000

struct cdcd_trainer;
struct cdcd_run_config;
typedef struct cdcdd_stories cdcdd_stories;

typedef struct {
    cdcdd_store *store;
    cdcdd_vocab *vocab;
    cdcdd_loopq *loopq;   /* the "stories" event goes to the loop ... */
    cdcdd_sse_hub *hub;   /* ... which publishes it here */
    int64_t run_id;
    const struct cdcd_run_config *cfg; /* read here only */
    int64_t from_step;    /* the trainer starts after this step */
    int hb;               /* the trainer's heartbeat (-1: none) */
    int (*cancelled)(void *ctx); /* non-zero when the trainer must wind down */
    void *cancel_ctx;
    int threads;          /* sampling from a checkpoint (a distributed run): threads to use */
} cdcdd_stories_params;

/* NULL when the run samples no stories (train.sample_every = 0) or out of memory. */
cdcdd_stories *cdcdd_stories_new(const cdcdd_stories_params *p);
/* After an optimiser step (and once after the trainer opened): samples, measures, stores
 * and announces the batch when the trainer's step is a positive multiple of sample_every;
 * with unless_stored, not when the store already has that step's batch (a restart).
 * Failures are logged and training goes on. NULL s does nothing. */
void cdcdd_stories_after_step(cdcdd_stories *s, struct cdcd_trainer *t, int unless_stored);
/* A distributed run's batches (its weights live in the ranks): after each checkpoint the
 * ranks report, the batch is sampled from that checkpoint's file (its EMA weights when the
 * run has an EMA) when the training since the last batch crossed a multiple of
 * sample_every; the batch carries the checkpoint's step (with the defaults, checkpoint_every
 * divides sample_every, so the steps are those of a local run). unless_stored: at a restart,
 * the resumed checkpoint's batch when its step is a multiple and none is stored. */
void cdcdd_stories_at_checkpoint(cdcdd_stories *s, const char *path, int64_t step, int unless_stored);
void cdcdd_stories_free(cdcdd_stories *s);

/* GET /runs/{id}/stories: batches newest first, before before_step, with their stories
 * unless with_stories is 0. A cdcdd_read_fn (http.h) over a cdcdd_stories_query. */
typedef struct {
    int64_t run, before_step, limit, with_stories;
} cdcdd_stories_query;
void cdcdd_stories_read(sqlite3 *db, void *query, unsigned *status, cdcdd_buf *out);

#endif
