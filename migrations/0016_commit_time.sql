-- commit_timestamp is the time the writer's transaction committed when postgresql records it
-- (`track_commit_timestamp = on`, which local mode sets; each commit then stores its time,
-- about 10 bytes per transaction in pg_commit_ts, and reading it is a lookup per change). where
-- it is off, or the time is no longer kept, it is the time the row was changed inside its
-- transaction (`captured_at`), which is early by up to the transaction's duration.
--
-- the setting can change only with a restart, so it is read per call, not cached.
create or replace function realtime.commit_time(x xid8, captured timestamptz)
returns timestamptz
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select case
        when current_setting('track_commit_timestamp') = 'on'
        then coalesce(pg_xact_commit_timestamp(x::xid), captured)
        else captured
    end
$$;

revoke all on function realtime.commit_time(xid8, timestamptz) from public;
