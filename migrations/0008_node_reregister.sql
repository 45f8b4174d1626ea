-- a node declared lost during an outage re-registers its live sessions when it is back; when the
-- cluster reached its connection cap meanwhile, it closes its newest connections so that the cap
-- holds, and their registry rows end with close_reason 'cap_reclaimed'.
alter table public.realtime_subscription_registry
    drop constraint if exists realtime_subscription_registry_close_reason_check;
alter table public.realtime_subscription_registry
    add constraint realtime_subscription_registry_close_reason_check
    check (close_reason in ('leave', 'socket_closed', 'reaped', 'shutdown', 'slow_consumer',
                            'kicked', 'token_expired', 'node_lost', 'cap_reclaimed')) not valid;
alter table public.realtime_subscription_registry
    validate constraint realtime_subscription_registry_close_reason_check;
