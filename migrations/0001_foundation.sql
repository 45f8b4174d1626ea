-- foundation: the subscription registry (postgresql 13 or newer: gen_random_uuid, xid8).
--
-- the gateway applies migrations with search_path = realtime (the migration ledger lives there),
-- so every object here is schema-qualified. every statement tolerates objects that already exist,
-- because operators may have created the registry by hand from the original design.


-- one row per channel a client joins. rows are never deleted by the gateway while active; a row
-- ends with is_active = false, closed_at and a close_reason, so admins can see history and leaks.
-- it sits in public (not in realtime) because operators and dashboards query it by this name.
create table if not exists public.realtime_subscription_registry (
    id uuid primary key default gen_random_uuid(),
    subscription_id text not null,
    channel_name text not null,
    user_id uuid,
    component_name text,
    table_filters jsonb,
    last_heartbeat_at timestamptz,
    is_active boolean default true,
    created_at timestamptz default now()
);

-- what operators need beyond the original design: which node and connection holds the row, and
-- how and why it ended.
alter table public.realtime_subscription_registry
    add column if not exists node_id text,
    add column if not exists connection_id uuid,
    add column if not exists remote_addr text,
    add column if not exists closed_at timestamptz,
    add column if not exists close_reason text;

do $$
begin
    if not exists (
        select 1 from pg_constraint
        where conname = 'realtime_subscription_registry_close_reason_check'
    ) then
        alter table public.realtime_subscription_registry
            add constraint realtime_subscription_registry_close_reason_check
            check (close_reason in ('leave', 'socket_closed', 'reaped', 'shutdown',
                                    'slow_consumer', 'kicked', 'token_expired', 'node_lost'));
    end if;
end $$;

-- user_id references auth.users(id) where a supabase-style auth schema exists; a plain uuid
-- otherwise. not valid-checked so that existing rows of deleted users do not block the migration.
do $$
begin
    if to_regclass('auth.users') is not null and not exists (
        select 1 from pg_constraint
        where conname = 'realtime_subscription_registry_user_id_fkey'
    ) then
        alter table public.realtime_subscription_registry
            add constraint realtime_subscription_registry_user_id_fkey
            foreign key (user_id) references auth.users (id) on delete set null not valid;
    end if;
end $$;

-- a subscription id is unique per node while the row is active (joins are upserts on it).
create unique index if not exists realtime_subscription_registry_active_subscription
    on public.realtime_subscription_registry (node_id, subscription_id)
    where is_active;
-- the reaper and node-loss cleanup scan active rows of one node by heartbeat age.
create index if not exists realtime_subscription_registry_active_node
    on public.realtime_subscription_registry (node_id, last_heartbeat_at)
    where is_active;
-- admin queries: who listens to a channel, what a user or component holds.
create index if not exists realtime_subscription_registry_channel
    on public.realtime_subscription_registry (channel_name) where is_active;
create index if not exists realtime_subscription_registry_user
    on public.realtime_subscription_registry (user_id) where is_active;
create index if not exists realtime_subscription_registry_component
    on public.realtime_subscription_registry (component_name) where is_active;
-- every connection's rows are closed together when its socket ends.
create index if not exists realtime_subscription_registry_connection
    on public.realtime_subscription_registry (connection_id) where is_active;

-- the registry may hold personal data (user ids, addresses): with row level security on and no
-- policy, only owners and superusers (the gateway, operators) read it, never an api role.
alter table public.realtime_subscription_registry enable row level security;

comment on table public.realtime_subscription_registry is
    'realtime-gateway: one row per channel joined by a client; is_active = false once it ends';
