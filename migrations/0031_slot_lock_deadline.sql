-- with per-client limits, a batch's lock waits together stay within the function's lock_timeout.
--
-- realtime.take_slots_limited takes one advisory lock per address and user of the batch, one
-- after another, and then updates the slot table once per connection. since 0029 each of those
-- waits gave up after 4 s, but not their sum: a batch waiting 3 s on each of several locks held
-- its pool connection long after the node had stopped waiting for it (5 s). the function now
-- reads its lock_timeout once, as a deadline for the whole call, and sets lock_timeout to what is
-- left before each lock it may wait for (at least 1 ms: 0 would mean no limit). set_config with
-- is_local inside a function that has its own set lock_timeout lasts until the function returns.
-- a lock_timeout of 0 (no limit) keeps the call unbounded, as the setting says.
--
-- everything else is as in 0015: same signature, answers and locks, in the same order.
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
set lock_timeout = '4s'
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    i int;
    k bigint;
    got int;
    deadline timestamptz := case
        when current_setting('lock_timeout') = '0' then null
        else clock_timestamp() + current_setting('lock_timeout')::interval
    end;
    ignored text;
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
        if deadline is not null then
            ignored := set_config('lock_timeout', greatest(1, floor(
                extract(epoch from deadline - clock_timestamp()) * 1000))::bigint || 'ms', true);
        end if;
        perform pg_advisory_xact_lock(k);
    end loop;
    for i in 1 .. coalesce(array_length(conns, 1), 0) loop
        if deadline is not null then
            ignored := set_config('lock_timeout', greatest(1, floor(
                extract(epoch from deadline - clock_timestamp()) * 1000))::bigint || 'ms', true);
        end if;
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
