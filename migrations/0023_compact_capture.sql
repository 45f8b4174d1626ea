-- a cheaper capture for the writer (docs/capture.md, "What a writer pays"):
-- * the outbox row no longer names the table: relid identifies it, and the gateway has always
--   gone by relid (catalog, routing, audit); resuming now resolves names through relid too. the
--   name columns are made nullable here and dropped by 0024 (see there for why two steps).
-- * op is stored as one letter ('I', 'U', 'D'). it stays text: in this row layout the letter
--   and a "char" take the same room once the record is aligned, and keeping the type spares a
--   rewrite of the whole outbox under an exclusive lock. rows written before keep 'INSERT',
--   'UPDATE' and 'DELETE'; the gateway reads both forms.
-- * the capture's bookkeeping of the bell uses assignments instead of perform (each perform
--   runs a query; an assignment is evaluated directly), and ring_bell drops its set clause.
-- * realtime.commit_time loses its set clause and is declared volatile, so the planner inlines
--   it into the gateway's reads instead of calling a function per row.
--
-- the outbox's heap row and its wal record are 36 bytes smaller; figures in docs/capture.md.

-- guarded: applied again (without the ledger) after 0024, the columns are gone.
do $$
declare
    col text;
begin
    foreach col in array array['schema_name', 'table_name'] loop
        if exists (
            select from pg_catalog.pg_attribute
            where attrelid = 'realtime.changes'::regclass and attname = col
              and not attisdropped and attnotnull
        ) then
            execute pg_catalog.format('alter table realtime.changes alter column %I drop not null', col);
        end if;
    end loop;
end
$$;

-- same security as before (0002): security definer, run by realtime_capture, search_path
-- pinned. the trigger arguments of a partitioned table published via its root still carry
-- (relid, schema, table); only the relid is used.
create or replace function realtime.capture_change()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    first boolean := coalesce(current_setting('realtime.bell', true), '') not in ('queued', 'off');
    ignored text;
begin
    if first then
        ignored := set_config('realtime.bell', 'arm', true);
    end if;
    insert into realtime.changes (relid, op, record, old_record)
    values (
        coalesce(tg_argv[0]::oid, tg_relid),
        left(tg_op, 1),
        to_jsonb(new),
        to_jsonb(old)
    );
    if first then
        ignored := set_config('realtime.bell', 'queued', true);
    end if;
    return null;
end
$$;

-- ring_bell runs as the committing writer (no security definer), so a search_path of the
-- writer's could only ever turn the writer's own code against itself; every name is
-- qualified all the same. the set clause cost a save and restore of the setting per commit.
create or replace function realtime.ring_bell()
returns trigger
language plpgsql
as $$
begin
    if pg_catalog.pg_try_advisory_xact_lock(1381254999, 0)
        and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::pg_catalog.float8 then
        perform pg_catalog.pg_notify('realtime_gateway', '');
    end if;
    return null;
end
$$;

-- inlined into the caller's query (a sql function with a set clause never is, and a stable
-- one may not call the volatile pg_xact_commit_timestamp): names are qualified because the
-- body is planned with the caller's search_path. only the gateway may call it.
create or replace function realtime.commit_time(x xid8, captured timestamptz)
returns timestamptz
language sql
volatile
as $$
    select case
        when pg_catalog.current_setting('track_commit_timestamp') operator(pg_catalog.=) 'on'
        then coalesce(pg_catalog.pg_xact_commit_timestamp(x::pg_catalog.xid), captured)
        else captured
    end
$$;
