-- sessions that can resume after a reconnect (README, "Resuming after a reconnect").
--
-- when a socket that passed a session id ends, the gateway records where each of its
-- channels stood in the change stream (snapshots of the outbox, readable by any node), one row
-- per channel, bound to the identity (role and sub) of the channel's token. a socket with the
-- same session id that joins the same channel with the same identity before expires_at
-- continues from there; a row of another identity is never used, nor overwritten.
create table if not exists realtime.resume_points (
    session_id text not null,
    topic text not null,
    identity text not null,
    node_id text not null,
    -- {"before": snapshot, "after": snapshot, "last_id": n}
    position jsonb not null,
    -- the outbox rows the position still needs: xids at or above hold_xmin (and ids above
    -- hold_id). the pruner keeps them until expires_at.
    hold_id bigint not null,
    hold_xmin xid8 not null,
    ended_at timestamptz not null default now(),
    expires_at timestamptz not null,
    primary key (session_id, topic, identity)
);
create index if not exists resume_points_expires on realtime.resume_points (expires_at);
revoke all on realtime.resume_points from public;

-- as in 0007, and the holds of resume points not expired yet bound the prune like readers;
-- resume points expired for a day are deleted.
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
    hold_id bigint;
    hold_xmin xid8;
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
    select min(p.hold_id), min(p.hold_xmin) into hold_id, hold_xmin
    from realtime.resume_points p
    where p.expires_at > now();
    if hold_id is not null then
        upto_id := least(coalesce(upto_id, hold_id), hold_id);
    end if;
    if hold_xmin is not null and hold_xmin < below then
        below := hold_xmin;
    end if;
    delete from realtime.change_readers r where r.read_at < now() - stale * 10;
    delete from realtime.resume_points p where p.expires_at < now() - interval '1 day';
    if not exists (
        select from (select c.captured_at from realtime.changes c order by c.id limit 1) o
        where o.captured_at < cutoff
    ) then
        return 0;
    end if;
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

revoke all on function realtime.prune_read_changes(interval, interval, int) from public;
