-- connections per client address and per user, counted across every node that shares the
-- database: a connection's slot row records its client address and user, and a node taking
-- slots while a per-client limit is on counts the slots held for that address or user first.
--
-- takers on different nodes that see the same address or user at the same moment would both
-- count below the limit and both take a slot, so each batch first takes a transaction-level
-- advisory lock per address and user in it, in one order (no deadlock between batches);
-- batches without a common address or user do not wait for each other. the single-bigint lock
-- keys (hashes of 'a<addr>' and 'u<user>') are apart from the gateway's two-key locks.

alter table realtime.connection_slots
    add column if not exists client_addr inet,
    add column if not exists user_id uuid;

create index if not exists connection_slots_client_addr
    on realtime.connection_slots (client_addr) where node_id is not null;
create index if not exists connection_slots_user_id
    on realtime.connection_slots (user_id) where node_id is not null;

-- takes a slot for each connection of the batch, in order, unless its address already holds
-- max_per_addr slots or its user max_per_user (0: that limit is off); slots are searched from
-- start_at up to cap, then from 1. answers each connection: its slot, or why none: 'addr',
-- 'user', or 'cap' (every slot is taken).
create or replace function realtime.take_slots_limited(
    node text,
    conns uuid[],
    addrs inet[],
    users uuid[],
    cap int,
    start_at int,
    max_per_addr int,
    max_per_user int
)
returns table (conn uuid, taken int, refusal text)
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    i int;
    k bigint;
    got int;
begin
    for k in
        select distinct key from (
            select hashtextextended('a' || a::text, 0) as key
            from unnest(addrs) as a where a is not null and max_per_addr > 0
            union
            select hashtextextended('u' || u::text, 0)
            from unnest(users) as u where u is not null and max_per_user > 0
        ) as keys
        order by key
    loop
        perform pg_advisory_xact_lock(k);
    end loop;
    for i in 1 .. coalesce(array_length(conns, 1), 0) loop
        conn := conns[i];
        taken := null;
        refusal := null;
        if max_per_addr > 0 and addrs[i] is not null and (
            select count(*) from realtime.connection_slots s
            where s.client_addr = addrs[i] and s.node_id is not null
        ) >= max_per_addr then
            refusal := 'addr';
            return next;
            continue;
        end if;
        if max_per_user > 0 and users[i] is not null and (
            select count(*) from realtime.connection_slots s
            where s.user_id = users[i] and s.node_id is not null
        ) >= max_per_user then
            refusal := 'user';
            return next;
            continue;
        end if;
        got := null;
        update realtime.connection_slots s
           set node_id = node, connection_id = conns[i], taken_at = now(),
               client_addr = addrs[i], user_id = users[i]
         where s.slot = coalesce(
             (select f.slot from realtime.connection_slots f
               where f.node_id is null and f.slot >= start_at and f.slot <= cap
               order by f.slot limit 1 for update skip locked),
             (select f.slot from realtime.connection_slots f
               where f.node_id is null and f.slot >= 1 and f.slot <= cap
               order by f.slot limit 1 for update skip locked))
        returning s.slot into got;
        taken := got;
        if got is null then
            refusal := 'cap';
        end if;
        return next;
    end loop;
end
$$;

revoke all on function realtime.take_slots_limited(text, uuid[], inet[], uuid[], int, int, int, int) from public;
