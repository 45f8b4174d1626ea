-- change capture: a row trigger copies every change of a published table into
-- the outbox realtime.changes, and a deferred trigger on the outbox wakes the
-- gateway with at most one notify in flight. the gateway reads the outbox by
-- transaction id, so nothing depends on a notification arriving; the bell only
-- cuts latency. design and measurements: docs/capture.md.
--
-- migrations run with search_path = realtime, so every object is qualified. the
-- file must also apply cleanly to a database that already has these objects.

-- the outbox ------------------------------------------------------------------

create table if not exists realtime.changes (
    -- cache 1: a backend that cached a block of ids would hand out ids that are
    -- older than ones other backends already used, so id order would stop
    -- following capture order.
    id bigint generated always as identity (cache 1) primary key,
    -- top-level transaction id even inside savepoints, so the gateway can match
    -- rows against the xmax/xip of its previous snapshot.
    xid xid8 not null default pg_catalog.pg_current_xact_id(),
    -- clock time of the change, not the transaction start: a long transaction
    -- must not look older than it is to the pruner.
    captured_at timestamptz not null default pg_catalog.clock_timestamp(),
    relid oid not null,
    schema_name text not null,
    table_name text not null,
    -- no check constraint: capture_change is the only writer and every check
    -- is paid by every write to every published table.
    op text not null,
    record jsonb,
    old_record jsonb
);

-- rows are inserted once and deleted once, never updated, so pages are packed
-- full (fillfactor 100: free space would only help hot updates). the table is
-- a queue: prune deletes from the old end in batches of up to 50000 rows, so
-- autovacuum runs after about one batch whatever the table size instead of
-- after 20% of it, which keeps dead rows and index bloat bounded. set apart
-- from the create so an existing table gets them too.
alter table realtime.changes set (
    fillfactor = 100,
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 50000
);

-- a table created by hand or by an older draft may carry a different cache.
do $$
declare
    seq regclass := pg_catalog.pg_get_serial_sequence('realtime.changes', 'id')::regclass;
begin
    if (select s.seqcache from pg_catalog.pg_sequence s where s.seqrelid = seq) <> 1 then
        execute pg_catalog.format('alter sequence %s cache 1', seq);
    end if;
end
$$;

-- the gateway asks for "rows of transactions my previous snapshot could not
-- see": where xid >= $prev_xmax or xid = any($prev_xip).
create index if not exists changes_xid_idx on realtime.changes (xid);

-- no brin on captured_at: pruning frees the oldest pages, new rows reuse them,
-- and a brin range only ever widens, so after the first cycle every range
-- matches an old cutoff and the index scans the whole table (measured: all
-- 6250 pages for 50000 old rows). prune walks the primary key instead, and
-- writers maintain one index less.

-- writers never get privileges here: capture_change inserts as its owner, so a
-- role cannot forge changes of a table it does not write.
revoke all on table realtime.changes from public;

-- the row trigger ---------------------------------------------------------------

-- one insert and nothing else. no exception block (each would open a
-- subtransaction per row; bulk writes overflow the subxid cache and slow every
-- snapshot in the cluster), no pg_notify (8000-byte limit, cluster-wide lock),
-- no size check (big rows are toasted; the gateway truncates on delivery).
--
-- security definer so writers need no grant on realtime.changes and cannot
-- forge changes; search_path is pinned so a caller cannot redirect anything in
-- the body. to_jsonb is strict, so old is null for insert, new for delete.
--
-- the first change of a transaction sets realtime.bell to 'arm' around its
-- insert, which queues the outbox's deferred bell trigger exactly once (see
-- below); later changes only read the setting. the setting is transaction
-- local and follows savepoint rollback together with the queued bell.
--
-- arguments (relid, schema, table) are given only on a partitioned table
-- published via its root: postgres clones the trigger to every partition and
-- the change must name the root, as logical replication would.
create or replace function realtime.capture_change()
returns trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    first boolean := coalesce(current_setting('realtime.bell', true), '') not in ('queued', 'off');
begin
    if first then
        perform set_config('realtime.bell', 'arm', true);
    end if;
    insert into realtime.changes (relid, schema_name, table_name, op, record, old_record)
    values (
        coalesce(tg_argv[0]::oid, tg_relid),
        coalesce(tg_argv[1], tg_table_schema),
        coalesce(tg_argv[2], tg_table_name),
        tg_op,
        to_jsonb(new),
        to_jsonb(old)
    );
    if first then
        perform set_config('realtime.bell', 'queued', true);
    end if;
    return null;
end
$$;

-- only the reconcile (running as owner) attaches it: to_jsonb calls a
-- user-defined cast to json of a user-defined type, and that cast runs as this
-- function's owner. see the owner hand-off below. execute is checked when a
-- trigger is created, not when it fires, so writers are unaffected.
revoke all on function realtime.capture_change() from public;

-- the bell ------------------------------------------------------------------------

-- notify takes one cluster-wide lock that is held through commit (and through
-- the wait for a synchronous standby), so notifying transactions commit one at
-- a time. the bell therefore rings at commit, from a deferred trigger queued
-- once per transaction, and only if no other transaction is committing a bell
-- at that moment: the advisory lock is taken at commit and released with the
-- notify lock, so none of our writers ever queues for the notify lock, whatever
-- the commit latency. a writer that skips commits while that bell is in
-- flight; the gateway's follow-up read finds it. the payload is always empty.
--
-- (the first design rang from a statement trigger, one notifier per
-- millisecond slot, holding the slot from the statement to commit. once a
-- commit took over a millisecond, winners queued on the notify lock faster
-- than it drained and throughput collapsed; see docs/capture.md.)
--
-- a session may set realtime.bell = off to never ring: prepare transaction
-- refuses a transaction that notified.
--
-- 1381254999 is 0x52544757, "rtgw": the advisory lock class of this gateway.
-- key 0 is the bell; sync_capture and prune_changes use negative keys.
create or replace function realtime.ring_bell()
returns trigger
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    -- a listener that stopped reading fills the queue; past half full a commit
    -- could fail with "too many notifications", so stay quiet and let the
    -- gateway's polling carry the load.
    if pg_try_advisory_xact_lock(1381254999, 0)
        and pg_notification_queue_usage() < 0.5 then
        perform pg_notify('realtime_gateway', '');
    end if;
    return null;
end
$$;

revoke all on function realtime.ring_bell() from public;

-- the when clause keeps every change but a transaction's first out of the
-- deferred-trigger queue, so a bulk write queues one event, not one per row.
-- created only when missing: replacing it would lock the outbox against
-- writers.
do $$
begin
    if not exists (
        select from pg_catalog.pg_trigger
        where tgrelid = 'realtime.changes'::regclass and tgname = 'realtime_bell'
    ) then
        create constraint trigger realtime_bell
            after insert on realtime.changes
            deferrable initially deferred
            for each row
            when (pg_catalog.current_setting('realtime.bell', true) = 'arm')
            execute function realtime.ring_bell();
    end if;
end
$$;

-- the capture owner ---------------------------------------------------------------

-- capture_change runs as its owner, and to_jsonb runs user-defined casts to
-- json: the owner of a published table with such a type could run code as the
-- migration role (a superuser, often). so the function is handed to a role
-- that may only insert into the outbox. roles are cluster-wide: the role is
-- shared by every database of the cluster, and a parallel migration may create
-- it first.
do $$
declare
    me name := current_user;
    su boolean;
    cr boolean;
begin
    select rolsuper, rolcreaterole into su, cr from pg_catalog.pg_roles where rolname = me;
    if not (su or cr) then
        raise notice 'realtime: % may not create roles, so realtime.capture_change() keeps running as %', me, me
            using detail = 'owners of published tables can run code as that role through a cast to json; see docs/capture.md';
        return;
    end if;
    begin
        if not exists (select from pg_catalog.pg_roles where rolname = 'realtime_capture') then
            create role realtime_capture nologin;
        end if;
    exception when duplicate_object or unique_violation then
        null;
    end;
    grant usage on schema realtime to realtime_capture;
    grant insert on table realtime.changes to realtime_capture;
    if (select p.proowner from pg_catalog.pg_proc p
        where p.oid = 'realtime.capture_change()'::regprocedure)
        <> (select oid from pg_catalog.pg_roles where rolname = 'realtime_capture') then
        if su then
            alter function realtime.capture_change() owner to realtime_capture;
        else
            -- a non-superuser must be a member of the new owner and the new
            -- owner must be able to create in the schema, for this one moment.
            begin
                grant realtime_capture to current_user;
                grant create on schema realtime to realtime_capture;
                alter function realtime.capture_change() owner to realtime_capture;
                revoke create on schema realtime from realtime_capture;
            exception when others then
                raise notice 'realtime: cannot hand realtime.capture_change() to realtime_capture: %', sqlerrm
                    using detail = 'it keeps running as ' || me || '; see docs/capture.md';
            end;
        end if;
    end if;
end
$$;

-- the publication ---------------------------------------------------------------

-- the set of realtime tables is the publication, as in supabase. only its
-- membership matters: nothing reads it through logical replication, so
-- wal_level does not matter (ignore the warning create publication prints).
do $$
begin
    if not exists (
        select from pg_catalog.pg_publication where pubname = 'supabase_realtime'
    ) then
        create publication supabase_realtime;
    end if;
end
$$;

-- reconcile ---------------------------------------------------------------------

-- makes the capture triggers match the publication, as logical replication
-- would publish it:
-- * each table listed in pg_publication_tables gets realtime_capture, for the
--   operations the publication publishes (publish = 'insert' captures inserts
--   only);
-- * publish_via_partition_root: a partitioned table is listed itself; postgres
--   clones its row trigger to every partition, present and future, and the
--   trigger arguments name the root;
-- * otherwise partitions are listed; the trigger goes on the highest
--   partitioned ancestor whose leaves are all published, so a partition created
--   later is captured from its first row rather than from the next reconcile,
--   and changes carry the partition's name, as logical replication does.
-- our triggers on tables no longer published are dropped. a trigger a user
-- disabled stays disabled. the gateway's own tables are never captured: a for
-- all tables publication would otherwise make the outbox capture itself, and
-- stream the subscription registry (it sits in public) with its heartbeats.
--
-- the work, without the lock sync_capture takes (the event trigger calls it
-- directly, see there). only this file's definer functions call it.
create or replace function realtime.reconcile_capture()
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    capture_fn oid := 'realtime.capture_change()'::regprocedure;
    enc name := getdatabaseencoding();
    r record;
    created text[] := '{}';
    dropped text[] := '{}';
    failed text[] := '{}';
begin
    -- our create/drop trigger commands are not in the event trigger's tag list;
    -- this flag keeps a future tag list from making it recurse.
    perform set_config('realtime.syncing', 'on', true);

    -- one query computes every action before the first ddl runs. drops sort
    -- first: moving the trigger between a partition and its parent would
    -- otherwise collide on the trigger name.
    for r in
        with pub as (
            select p.pubviaroot,
                   (case when p.pubinsert then 4 else 0 end
                    + case when p.pubdelete then 8 else 0 end
                    + case when p.pubupdate then 16 else 0 end)::int2 as events
            from pg_publication p
            where p.pubname = 'supabase_realtime'
        ),
        published as (
            select c.oid as relid, c.relkind, c.relispartition
            from pg_publication_tables pt
            join pg_namespace n on n.nspname = pt.schemaname
            join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
            where pt.pubname = 'supabase_realtime' and pt.schemaname <> 'realtime'
              and c.oid is distinct from to_regclass('public.realtime_subscription_registry')
        ),
        -- (published partition, partitioned ancestor, distance up)
        ancestor as (
            select pb.relid as leaf, a.relid::oid as anc, a.depth
            from published pb
            cross join lateral pg_partition_ancestors(pb.relid) with ordinality a(relid, depth)
            where pb.relispartition and a.relid::oid <> pb.relid
              and not (select pubviaroot from pub)
        ),
        whole as (
            select d.anc
            from (select distinct anc from ancestor) d
            where not exists (
                select from pg_partition_tree(d.anc) t
                where t.isleaf
                  and not exists (select from published p where p.relid = t.relid::oid)
            )
        ),
        target as (
            -- via root: the listed relation; a partitioned one passes its name on
            select pb.relid, pb.relkind = 'p' as named
            from published pb
            where (select pubviaroot from pub)
            union
            select coalesce(
                       (select x.anc from ancestor x join whole w on w.anc = x.anc
                        where x.leaf = pb.relid order by x.depth desc limit 1),
                       pb.relid),
                   false
            from published pb
            where not (select pubviaroot from pub)
        ),
        desired as (
            select t.relid, (1 + pub.events)::int2 as tgtype,
                   case when t.named then
                       convert_to(t.relid::text, enc) || '\x00'::bytea
                       || convert_to(n.nspname, enc) || '\x00'::bytea
                       || convert_to(c.relname, enc) || '\x00'::bytea
                   else ''::bytea end as tgargs,
                   case when t.named then
                       format('%L, %L, %L', t.relid::text, n.nspname, c.relname)
                   else '' end as args
            from target t
            cross join pub
            join pg_class c on c.oid = t.relid
            join pg_namespace n on n.oid = c.relnamespace
            where pub.events <> 0
        ),
        present as (
            select t.tgrelid as relid, t.tgtype, t.tgargs
            from pg_trigger t
            where t.tgparentid = 0 and t.tgfoid = capture_fn and t.tgname = 'realtime_capture'
        )
        -- a full join on hashable keys: anti-joins here were planned as nested
        -- loops, quadratic in the number of published tables.
        select p.relid is null as is_create,
               coalesce(d.relid, p.relid) as relid,
               coalesce(d.tgtype, p.tgtype) as tgtype,
               coalesce(d.args, '') as args
        from desired d
        full join present p
            on p.relid = d.relid and p.tgtype = d.tgtype and p.tgargs = d.tgargs
        where d.relid is null or p.relid is null
        order by 1, 2
    loop
        begin
            if r.is_create then
                execute format(
                    'create trigger realtime_capture after %s on %s for each row '
                    'execute function realtime.capture_change(%s)',
                    array_to_string(array_remove(array[
                        case when r.tgtype & 4 <> 0 then 'insert' end,
                        case when r.tgtype & 16 <> 0 then 'update' end,
                        case when r.tgtype & 8 <> 0 then 'delete' end], null), ' or '),
                    r.relid::regclass,
                    r.args);
                created := created || r.relid::regclass::text;
            else
                execute format('drop trigger realtime_capture on %s', r.relid::regclass);
                dropped := dropped || r.relid::regclass::text;
            end if;
        exception when others then
            -- one table we may not touch (not its owner, the name taken by
            -- another trigger, a lock timeout) must not stop the others.
            failed := failed || format('%s: %s', r.relid::regclass, sqlerrm);
            raise warning 'realtime: cannot % realtime_capture on %: %',
                case when r.is_create then 'create' else 'drop' end,
                r.relid::regclass, sqlerrm;
        end;
    end loop;

    perform set_config('realtime.syncing', '', true);
    return jsonb_build_object('created', created, 'dropped', dropped, 'failed', failed);
end
$$;

revoke all on function realtime.reconcile_capture() from public;

-- security definer so enable_table and the gateway can run it for any role; it
-- only does what the publication says, and only the publication owner can
-- change that. two reconcilers at once would create the same trigger and one
-- would fail, so they take turns; the lock is taken before the catalogs are
-- read, so a waiter sees what the other committed. wait = false returns
-- {"skipped": true} at once instead (the gateway's periodic call: the other
-- reconciler is doing the job).
create or replace function realtime.sync_capture(wait boolean default true)
returns jsonb
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if wait then
        perform pg_advisory_xact_lock(1381254999, -1);
    elsif not pg_try_advisory_xact_lock(1381254999, -1) then
        return jsonb_build_object('skipped', true);
    end if;
    return realtime.reconcile_capture();
end
$$;

-- enable / disable --------------------------------------------------------------

-- security invoker on purpose: alter publication then checks that the caller
-- owns the publication and the table. as definer, anyone could publish any
-- table and read it through the gateway.
create or replace function realtime.enable_table(tbl regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if not exists (select from pg_publication where pubname = 'supabase_realtime') then
        create publication supabase_realtime;
    end if;
    -- already published (listed, for all tables, its schema, or an ancestor):
    -- adding it again would fail or change nothing.
    if not exists (
        select from pg_publication_tables pt
        join pg_namespace n on n.nspname = pt.schemaname
        join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
        where pt.pubname = 'supabase_realtime'
          and (c.oid = tbl or c.oid in (select a.relid::oid from pg_partition_ancestors(tbl) a(relid)))
    ) and not exists (
        select from pg_publication_rel pr
        join pg_publication p on p.oid = pr.prpubid
        where p.pubname = 'supabase_realtime' and pr.prrelid = tbl
    ) then
        execute format('alter publication supabase_realtime add table %s', tbl);
    end if;
    perform realtime.sync_capture();
end
$$;

create or replace function realtime.disable_table(tbl regclass)
returns void
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
begin
    if exists (
        select from pg_publication_rel pr
        join pg_publication p on p.oid = pr.prpubid
        where p.pubname = 'supabase_realtime' and pr.prrelid = tbl
    ) then
        execute format('alter publication supabase_realtime drop table %s', tbl);
    end if;
    -- still published another way: say so rather than pretend it is off.
    if exists (
        select from pg_publication_tables pt
        join pg_namespace n on n.nspname = pt.schemaname
        join pg_class c on c.relnamespace = n.oid and c.relname = pt.tablename
        where pt.pubname = 'supabase_realtime'
          and (c.oid = tbl or c.oid in (select a.relid::oid from pg_partition_ancestors(tbl) a(relid)))
    ) then
        raise exception 'realtime: % is still published by supabase_realtime', tbl
            using hint = 'the publication is for all tables, covers its schema, or publishes a parent table';
    end if;
    perform realtime.sync_capture();
end
$$;

-- the event trigger ---------------------------------------------------------------

-- runs the reconcile in the same transaction as the ddl, so a table created or
-- published is captured from its first committed row. it must never fail the
-- user's ddl: errors become warnings and the gateway's periodic reconcile
-- repairs the state (ddl is rare, so the subtransaction is cheap here).
-- it takes no reconcile lock: held to the end of the ddl's transaction, that
-- lock would make every other session's create/alter table wait for this whole
-- transaction (a long migration would stall them all). a rare collision with a
-- concurrent reconcile costs one warning, and the next reconcile settles it.
create or replace function realtime.sync_capture_on_ddl()
returns event_trigger
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
begin
    if current_setting('realtime.syncing', true) = 'on' then
        return;
    end if;
    begin
        perform realtime.reconcile_capture();
    exception when others then
        raise warning 'realtime: change capture not reconciled after %: %', tg_tag, sqlerrm
            using hint = 'the gateway reconciles again within seconds';
    end;
end
$$;

-- event triggers need a superuser. without one the gateway calls
-- realtime.sync_capture() at start and every few seconds, which does the same
-- job later: changes a newly published table gets before the next call are
-- not captured at all (enable_table has no such gap: it reconciles itself).
do $$
begin
    if (select rolsuper from pg_catalog.pg_roles where rolname = current_user) then
        drop event trigger if exists realtime_sync_capture;
        create event trigger realtime_sync_capture on ddl_command_end
            when tag in (
                'CREATE PUBLICATION', 'ALTER PUBLICATION', 'DROP PUBLICATION',
                'CREATE TABLE', 'CREATE TABLE AS', 'SELECT INTO', 'ALTER TABLE',
                'ALTER SCHEMA'
            )
            execute function realtime.sync_capture_on_ddl();
    else
        raise notice 'realtime: % is not a superuser, so the event trigger realtime_sync_capture was not created', current_user
            using detail = 'the gateway calls realtime.sync_capture() at start and every few seconds instead; '
                'a table published with alter publication is captured from the next call on';
    end if;
end
$$;

-- pruning ---------------------------------------------------------------------------

-- deletes at most 50000 of the oldest rows per call, walking the primary key
-- from the old end (ids follow capture time, see cache 1 above), so a big
-- backlog is pruned over several calls and each call stays short. delete takes
-- no lock a writer waits for: writers only insert new rows. a second pruner
-- returns 0 at once instead of waiting on the first one's row locks.
create or replace function realtime.prune_changes(retention interval)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    cutoff timestamptz := now() - retention;
    upto bigint;
    n bigint;
begin
    if not pg_try_advisory_xact_lock(1381254999, -2) then
        return 0;
    end if;
    -- caught up: the oldest row is young, one index probe.
    if not exists (
        select from (select c.captured_at from realtime.changes c order by c.id limit 1) o
        where o.captured_at < cutoff
    ) then
        return 0;
    end if;
    select max(o.id) into upto
    from (select c.id from realtime.changes c order by c.id limit 50000) o;
    delete from realtime.changes c where c.id <= upto and c.captured_at < cutoff;
    get diagnostics n = row_count;
    return n;
end
$$;

-- bring existing publications in line now; later changes come through the event
-- trigger or the gateway's reconcile.
select realtime.sync_capture();
