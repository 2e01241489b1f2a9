-- cdcdd store, schema version 1.
-- Applied by daemon/store.c at start when PRAGMA user_version < 1, inside one
-- BEGIN IMMEDIATE transaction that also sets user_version = 1. Never edit a released
-- migration: add sql/NNN_name.sql and list it in daemon/migrations.c.
-- Times are wall-clock seconds since the epoch (REAL). Steps count optimiser steps.

CREATE TABLE runs (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    state       TEXT NOT NULL
                CHECK (state IN ('queued', 'running', 'paused', 'stopped', 'finished', 'failed')),
    config      TEXT NOT NULL,            -- normalised run config JSON (every default filled)
    created_at  REAL NOT NULL,
    started_at  REAL,                     -- first time a trainer thread began the run
    finished_at REAL,                     -- reached finished / stopped / failed
    step        INTEGER NOT NULL DEFAULT 0,
    tokens      INTEGER NOT NULL DEFAULT 0,
    max_steps   INTEGER NOT NULL DEFAULT 0,
    error       TEXT,                     -- why the run failed (NULL otherwise)
    updated_at  REAL
);
CREATE INDEX runs_state ON runs(state);

-- One row per optimiser step. valid_loss is filled by a later upsert when the step
-- was also a validation step. loss/grad_norm are NULL with nonfinite = 1 on divergence.
CREATE TABLE metrics (
    run          INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step         INTEGER NOT NULL,
    time         REAL NOT NULL,
    loss         REAL,
    lr           REAL,
    grad_norm    REAL,
    tokens_per_s REAL,
    tokens       INTEGER,
    step_ms      REAL,
    nonfinite    INTEGER NOT NULL DEFAULT 0,
    valid_loss   REAL,
    PRIMARY KEY (run, step)
) WITHOUT ROWID;

-- (sigma, loss) per training sequence: what the Cauchy refit reads back (last N by id).
CREATE TABLE entropy_samples (
    id    INTEGER PRIMARY KEY,
    run   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step  INTEGER NOT NULL,
    sigma REAL NOT NULL,
    loss  REAL NOT NULL
);
CREATE INDEX entropy_run_step ON entropy_samples(run, step);

CREATE TABLE schedule_fits (
    run   INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step  INTEGER NOT NULL,
    time  REAL NOT NULL,
    ok    INTEGER NOT NULL,               -- 0: the fit failed, the previous one was kept
    kind  TEXT NOT NULL,                  -- 'cauchy' or 'pwl'
    mu    REAL,
    s     REAL,
    h     REAL,
    o     REAL,
    rmse  REAL,
    n     INTEGER,
    knots TEXT,                           -- JSON: F at the 101 log-spaced sigmas of [tmin, tmax]
    PRIMARY KEY (run, step)
) WITHOUT ROWID;

CREATE TABLE samples (
    id         INTEGER PRIMARY KEY,
    run        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,          -- training step of the weights used
    job        INTEGER,                   -- sampling job id (per daemon lifetime)
    params     TEXT NOT NULL,             -- request parameters, JSON
    text       TEXT NOT NULL,
    ids        TEXT NOT NULL,             -- token ids, JSON array
    created_at REAL NOT NULL
);
CREATE INDEX samples_run ON samples(run, id);

CREATE TABLE checkpoints (
    run        INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step       INTEGER NOT NULL,
    path       TEXT NOT NULL,
    bytes      INTEGER NOT NULL,
    sha256     TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (run, step)
) WITHOUT ROWID;
