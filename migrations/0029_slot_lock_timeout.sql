-- the statements that take connection slots give up on a lock after 4 s, in the database.
--
-- the gateway bounds its wait for a slot statement (5 s: the batch's upgrades are refused with
-- 503 and the next batch is served), but a bound on the client's side does not stop the
-- statement. one waiting on a lock (a table locked by a maintenance statement, another
-- batch's per-client advisory locks) went on waiting, holding its pool connection, while the
-- next batch started another: the pool could fill with them. with lock_timeout set by the
-- functions themselves, such a statement fails on the server before the gateway stops waiting,
-- takes no slot and gives its connection back.
--
-- realtime.take_slots is the statement the gateway sent on its own (one per batch without
-- per-client limits): free slots from start_at up to cap, then from 1, locked with skip locked,
-- one per connection in order while they last. both parts of the search are one statement, so
-- a failure takes no slot; the part below start_at is read only when the part above had too
-- few free slots. pl/pgsql, so that its statement is planned once per connection.
create or replace function realtime.take_slots(node text, conns uuid[], start_at int, cap int)
returns table (slot int, conn uuid)
language plpgsql
set lock_timeout = '4s'
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    return query
        with above as materialized (
            select s.slot from realtime.connection_slots s
            where s.node_id is null and s.slot >= start_at and s.slot <= cap
            order by s.slot limit cardinality(conns) for update skip locked),
        below as materialized (
            select s.slot from realtime.connection_slots s
            where s.node_id is null and s.slot < start_at
            order by s.slot limit cardinality(conns) for update skip locked),
        free as (
            select f.slot, row_number() over () as n from (
                select a.slot from above a
                union all
                select b.slot from below b
                limit cardinality(conns)) f),
        wanted as (
            select w.connection_id, w.n from unnest(conns) with ordinality as w(connection_id, n))
        update realtime.connection_slots s
        set node_id = node, connection_id = wanted.connection_id, taken_at = now(),
            client_addr = null, user_id = null
        from free join wanted on wanted.n = free.n
        where s.slot = free.slot
        returning s.slot, s.connection_id;
end
$$;

revoke all on function realtime.take_slots(text, uuid[], int, int) from public;

alter function realtime.take_slots_limited(text, uuid[], inet[], uuid[], int, int, int, int)
    set lock_timeout = '4s';
