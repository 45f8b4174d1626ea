-- the outbox's name columns, unused since 0023, are dropped (no rewrite: dropping a column
-- only marks it dropped).
--
-- a separate migration because a writer whose capture trigger waited on the outbox lock while
-- 0023 ran still executes the body it started with, which names these columns: its insert is
-- planned again once it gets the lock. it queued for the lock before this migration asked for
-- it, so it gets it first and finds the columns still there. dropped in the same transaction
-- as the function was replaced, that insert would fail the writer's transaction.
alter table realtime.changes
    drop column if exists schema_name,
    drop column if exists table_name;
