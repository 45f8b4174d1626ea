-- a cheaper capture for the writer: the bell moves off the outbox, and a writer skips it while a
-- node rests it (docs/capture.md, "The bell" and "What a writer pays").
--
-- until now the bell was a deferred constraint trigger on realtime.changes whose when clause let
-- only a transaction's first captured row through. postgresql reads a trigger's when clause
-- back from its stored text and plans it for every statement, and each insert of
-- capture_change is a statement of its own: every captured row paid for it (about 4.7 us of a
-- lone writer's cpu), and every transaction paid for the two set_config calls that armed it
-- and for ring_bell at commit (about 6 us more), even while a node rested the bell and
-- ring_bell could only find its lock taken.
--
-- * the bell's deferred trigger now sits on realtime.bell_pulls, an unlogged table without
--   columns: a transaction's first captured change inserts one row there, which queues the
--   bell for its commit. the outbox has no trigger left, so an insert into it evaluates
--   nothing more. the gateway deletes the pulls of committed transactions every second.
-- * a node that rests the bell (src/capture/bell.rs) also holds the advisory lock
--   (1381254999, 1) exclusively, on the same connection. the first captured change of a
--   transaction tries that lock shared for an instant: when it cannot have it, a node rests the
--   bell and the transaction pulls nothing. writers only ever take it shared, so they never
--   stand in each other's way; only one node can hold it, and the others rest with key 0 alone,
--   as before (a writer that pulls then finds key 0 taken at commit and rings nothing).
-- * capture_change has no set clause: every name in it is qualified (functions and types with
--   pg_catalog, operators as operator(pg_catalog.=), tables with realtime), so a writer's
--   search_path, and pg_temp, resolve nothing in it. the clause cost each captured row a save
--   and restore of the settings and made postgresql recompute the writer's search path after
--   every call (1-2 us of a lone writer's cpu per row, more under contention). tests/capture_names.rs
--   checks the body and runs it under a search path that shadows every name it uses. code the
--   capture runs on the writer's behalf (a user-defined cast to json that to_jsonb calls) now sees
--   the writer's search path too: such functions must pin their own (docs/capture.md, "security").
--
-- the realtime.bell setting keeps its meaning: 'off' (set by the writer) captures without the
-- bell; this function sets 'done' once the transaction has pulled or found the bell resting; any
-- other value, or none, lets the transaction's next captured change pull it. a savepoint rolled
-- back takes its pull and the setting with it, and the next change pulls again. the look at key
-- 1 and its release are one expression, so no cancel or timeout can land between them and leave
-- the writer's session holding the key.

create unlogged table if not exists realtime.bell_pulls ();
revoke all on table realtime.bell_pulls from public;

comment on table realtime.bell_pulls is
    'one row per transaction that pulls the capture bell; its deferred trigger rings at commit. '
    'the gateway deletes committed pulls.';

do $$
begin
    if not exists (
        select from pg_catalog.pg_trigger
        where tgrelid = 'realtime.bell_pulls'::regclass and tgname = 'realtime_bell'
    ) then
        create constraint trigger realtime_bell
            after insert on realtime.bell_pulls
            deferrable initially deferred
            for each row
            execute function realtime.ring_bell();
    end if;
end
$$;

create or replace function realtime.capture_change()
returns trigger
language plpgsql
security definer
as $$
declare
    bell pg_catalog.text := pg_catalog.current_setting('realtime.bell', true);
begin
    insert into realtime.changes (relid, op, record, old_record)
    values (
        coalesce(tg_argv[0]::pg_catalog.oid, tg_relid),
        pg_catalog.left(tg_op, 1),
        pg_catalog.to_jsonb(new),
        pg_catalog.to_jsonb(old)
    );
    if bell is null
        or (bell operator(pg_catalog.<>) 'off' and bell operator(pg_catalog.<>) 'done') then
        -- in parentheses: pl/pgsql ends an if's condition at the first then outside them.
        if (case when pg_catalog.pg_try_advisory_lock_shared(1381254999, 1)
                 then pg_catalog.pg_advisory_unlock_shared(1381254999, 1)
                 else false end) then
            insert into realtime.bell_pulls default values;
        end if;
        bell := pg_catalog.set_config('realtime.bell', 'done', true);
    end if;
    return null;
end
$$;

-- whoever owns capture_change (realtime_capture, or the migration role without one) inserts
-- the pulls; a role that may prune the outbox (a gateway role other than the migration role)
-- deletes them.
do $$
declare
    grantee text;
begin
    execute pg_catalog.format(
        'grant insert on table realtime.bell_pulls to %I',
        (select pg_catalog.pg_get_userbyid(proowner) from pg_catalog.pg_proc
         where oid = 'realtime.capture_change()'::pg_catalog.regprocedure));
    for grantee in
        select distinct g.grantee::text from information_schema.role_table_grants g
        where g.table_schema = 'realtime' and g.table_name = 'changes'
          and g.privilege_type = 'DELETE' and g.grantee <> 'PUBLIC'
    loop
        execute pg_catalog.format('grant delete on table realtime.bell_pulls to %I', grantee);
    end loop;
end
$$;

-- the old bell trigger goes last. dropping it locks the outbox against every captured write
-- until this transaction ends, and waits for writers already in a transaction: so it waits at
-- most 3 s. should a long writer transaction hold it up, the trigger stays (harmless: nothing
-- arms it any more, each captured row only pays for reading its when clause) and the gateway
-- drops it at a later reconcile (src/capture/maintenance.rs).
do $$
begin
    perform pg_catalog.set_config('lock_timeout', '3s', true);
    drop trigger if exists realtime_bell on realtime.changes;
exception when lock_not_available then
    raise notice 'realtime: the outbox is busy; its old bell trigger stays until the gateway drops it';
end
$$;
