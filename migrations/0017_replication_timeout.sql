-- a channel joined with config.broadcast.replication_ready whose change stream did not come up
-- within REPLICATION_READY_TIMEOUT is closed by the gateway: its registry row ends with
-- close_reason 'replication_timeout'.
alter table public.realtime_subscription_registry
    drop constraint if exists realtime_subscription_registry_close_reason_check;
alter table public.realtime_subscription_registry
    add constraint realtime_subscription_registry_close_reason_check
    check (close_reason in ('leave', 'socket_closed', 'reaped', 'shutdown', 'slow_consumer',
                            'kicked', 'token_expired', 'node_lost', 'cap_reclaimed',
                            'replication_timeout')) not valid;
alter table public.realtime_subscription_registry
    validate constraint realtime_subscription_registry_close_reason_check;
