-- the outbox is pruned only below what every live node has read, and never
-- into transactions that may still commit.
--
-- each node records where its listener is: the highest outbox id it has read
-- (max_id) and the xmin of the snapshot it read with (read_xmin) (every transaction below
-- xmin had ended by then, so rows with id <= max_id and xid < xmin are behind
-- it). a node whose read_at is older than the stale interval counts as gone.
create table if not exists realtime.change_readers (
    node_id text primary key,
    max_id bigint not null,
    read_xmin xid8 not null,
    read_at timestamptz not null default now()
);

-- how far pruning has gone: the highest id deleted, and the xid bound it
-- deleted below. a node that finds either past its own position knows that
-- changes were pruned before it read them, and says so to its subscribers.
create table if not exists realtime.change_horizon (
    one boolean primary key default true check (one),
    pruned_id bigint not null default 0,
    pruned_below xid8 not null default '0'::xid8
);
insert into realtime.change_horizon (one) values (true) on conflict do nothing;

-- records a node's position; returns the horizon, for the gap check.
create or replace function realtime.report_position(node text, upto bigint, below xid8)
returns table (pruned_id bigint, pruned_below xid8)
language sql
set search_path = pg_catalog, pg_temp
as $$
    insert into realtime.change_readers (node_id, max_id, read_xmin, read_at)
    values (node, upto, below, now())
    on conflict (node_id) do update
        set max_id = excluded.max_id, read_xmin = excluded.read_xmin, read_at = excluded.read_at;
    select h.pruned_id, h.pruned_below from realtime.change_horizon h;
$$;

-- deletes up to `batch` rows that are older than `retention`, that every node
-- read within `stale` has read, and whose transactions ended before any
-- snapshot now running began; returns how many. a second pruner returns 0 at
-- once. when no node is live, no one will ask for the rows: only retention and
-- running transactions bound the prune.
create or replace function realtime.prune_read_changes(
    retention interval, stale interval, batch int default 50000)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    cutoff timestamptz := now() - retention;
    upto_id bigint;
    below xid8 := pg_snapshot_xmin(pg_current_snapshot());
    reader_xmin xid8;
    last_id bigint;
    n bigint;
begin
    if not pg_try_advisory_xact_lock(1381254999, -2) then
        return 0;
    end if;
    select min(r.max_id), min(r.read_xmin) into upto_id, reader_xmin
    from realtime.change_readers r
    where r.read_at > now() - stale;
    if reader_xmin is not null and reader_xmin < below then
        below := reader_xmin;
    end if;
    -- readers gone for a long time are forgotten (their rows no longer hold anything).
    delete from realtime.change_readers r where r.read_at < now() - stale * 10;
    -- caught up: the oldest row is young, one index probe.
    if not exists (
        select from (select c.captured_at from realtime.changes c order by c.id limit 1) o
        where o.captured_at < cutoff
    ) then
        return 0;
    end if;
    -- the first `batch` rows in id order bound each call's work, whatever is left
    -- behind in them (rows of a transaction still running stay for a later call).
    with win as (
        select c.id, c.captured_at, c.xid from realtime.changes c
        where c.id <= coalesce(upto_id, 9223372036854775807)
        order by c.id
        limit batch
    ), gone as (
        delete from realtime.changes c using win w
        where c.id = w.id and w.captured_at < cutoff and w.xid < below
        returning c.id
    )
    select count(*), max(gone.id) into n, last_id from gone;
    if n > 0 then
        update realtime.change_horizon h
        set pruned_id = greatest(h.pruned_id, last_id),
            pruned_below = greatest(h.pruned_below, below);
    end if;
    return n;
end
$$;

revoke all on function realtime.report_position(text, bigint, xid8) from public;
revoke all on function realtime.prune_read_changes(interval, interval, int) from public;
