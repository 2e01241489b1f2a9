-- cdcdd store, schema version 3: run ids are never reused.
-- Applied by daemon/store.c at start when PRAGMA user_version < 3, inside one
-- BEGIN IMMEDIATE transaction that also sets user_version = 3. Never edit a released
-- migration: add sql/NNN_name.sql and list it in daemon/embed.c.
--
-- Ids used to be max(id) + 1 at start, so deleting the newest run and restarting handed
-- its id (and a leftover run directory, whose checkpoints could then be pruned into the
-- new run's) to the next run. The counter below only grows: every insert into runs moves
-- it past the new id, and deletes do not touch it. The daemon also skips an id whose run
-- directory already exists on disk, which covers runs deleted before this migration.

CREATE TABLE id_counters (
    name TEXT PRIMARY KEY,
    next INTEGER NOT NULL CHECK (next >= 1)
);
INSERT INTO id_counters (name, next) SELECT 'runs', coalesce(max(id), 0) + 1 FROM runs;

CREATE TRIGGER runs_id_counter AFTER INSERT ON runs
BEGIN
    UPDATE id_counters SET next = max(next, NEW.id + 1) WHERE name = 'runs';
END;
