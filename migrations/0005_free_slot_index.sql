-- taking a connection slot looks for a free slot. walking the primary key over taken slots
-- passed every taken slot first, so each connect cost grew with the number of open connections
-- (measured: 510 connects/s falling to 145/s over a 15,000-connection ramp). this index holds
-- only the free slots.
create index if not exists connection_slots_free
    on realtime.connection_slots (slot) where node_id is null;
