-- cdcdd store, schema version 4: a note on each run saying what the daemon changed in
-- its config (a train.threads above the daemon's budget is clamped, not refused).
-- Applied by daemon/store.c at start when PRAGMA user_version < 4, inside one
-- BEGIN IMMEDIATE transaction that also sets user_version = 4.

ALTER TABLE runs ADD COLUMN note TEXT;
