-- the connection slots' indexes on client_addr and user_id hold no nulls.
--
-- a slot is taken and freed by updates that change node_id, which the slot table's partial
-- indexes depend on, so each take is a new row version with an entry in every index whose
-- predicate it meets. client_addr and user_id are set only when per-client limits are on
-- (--max-connections-per-addr, --max-connections-per-user; both off by default) and user_id only
-- for a token with a sub, yet their indexes took an entry for every taken slot, null or not. the
-- only readers of these indexes are the limits' counts in realtime.take_slots_limited (client_addr
-- = addrs[i], user_id = users[i]: a null never matches), which imply the new predicates, so the
-- planner still uses them. with the limits off, a take now adds two index entries instead of
-- four: realtime.take_slots of a batch of 48 slots took 0.90 ms instead of 0.98 (pgbench, one
-- client, synchronous_commit off, the two sets of indexes alternating, medians of nine runs of
-- 312 batches; about 0.16 ms of each is making the batch's ids), and a freed slot's version
-- leaves no dead entry in them either.
drop index if exists realtime.connection_slots_client_addr;
create index if not exists connection_slots_client_addr
    on realtime.connection_slots (client_addr) where node_id is not null and client_addr is not null;
drop index if exists realtime.connection_slots_user_id;
create index if not exists connection_slots_user_id
    on realtime.connection_slots (user_id) where node_id is not null and user_id is not null;
