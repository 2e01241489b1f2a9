-- cdcdd store, schema version 2: periodic stories.
-- Applied by daemon/store.c at start when PRAGMA user_version < 2, inside one
-- BEGIN IMMEDIATE transaction that also sets user_version = 2. Never edit a released
-- migration: add sql/NNN_name.sql and list it in daemon/embed.c.
--
-- Every train.sample_every steps a training run samples train.sample_n stories from its
-- live weights with fixed seeds (story i: seed i + 1; the last one prompted), so that the
-- stories of different steps are comparable. The stories are rows of `samples` with
-- kind = 'periodic'; the batch (its cost and its quality figures) is a row of
-- `story_batches`. Rows of either written after the checkpoint a run restarts from are
-- deleted at the restart, as metrics are.

ALTER TABLE samples ADD COLUMN kind TEXT NOT NULL DEFAULT 'request'
    CHECK (kind IN ('request', 'periodic'));  -- 'request': POST /runs/{id}/samples
ALTER TABLE samples ADD COLUMN seed INTEGER;  -- periodic: the story's own seed
ALTER TABLE samples ADD COLUMN prompt TEXT;   -- periodic: the prompt (NULL = unconditional)
CREATE INDEX samples_run_kind_step ON samples(run, kind, step);

CREATE TABLE story_batches (
    run            INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step           INTEGER NOT NULL,          -- training step of the live weights sampled
    created_at     REAL NOT NULL,
    n              INTEGER NOT NULL,          -- stories
    steps          INTEGER NOT NULL,          -- ODE steps per story
    seconds        REAL NOT NULL,             -- training stood still this long for the batch
    reference_s    REAL NOT NULL DEFAULT 0,   -- of which building the n-gram reference (once per trainer)
    interval_s     REAL,                      -- wall time since the previous batch (or the trainer's start)
    interval_steps INTEGER,                   -- optimiser steps in that interval
    share          REAL,                      -- seconds / interval_s
    figures        TEXT,                      -- JSON: the cdcd_text_stats fields (core/textstats.h); NULL without a reference
    PRIMARY KEY (run, step)
) WITHOUT ROWID;
