-- registry support: gateway nodes, the cluster-wide connection cap, the audit log and the
-- views operators query. every statement tolerates objects that already exist.

-- one row per live gateway node. a node heartbeats its row every heartbeat interval; a row older
-- than the stale timeout belongs to a lost node (crash, kill -9), whose registry rows and
-- connection slots any live node then releases.
create table if not exists realtime.nodes (
    node_id text primary key,
    started_at timestamptz not null default now(),
    heartbeat_at timestamptz not null default now(),
    listen_addr text,
    max_connections int
);

-- the connection cap, shared by every node on this database: one row per slot, and an open
-- websocket holds exactly one. taking a slot is a single-row update of the lowest free slot with
-- `for update skip locked`, so concurrent connects on several nodes never take more slots than
-- exist and never wait on each other. slots above the configured cap are never taken.
create table if not exists realtime.connection_slots (
    slot int primary key,
    node_id text,
    connection_id uuid,
    taken_at timestamptz
);
create index if not exists connection_slots_node
    on realtime.connection_slots (node_id) where node_id is not null;

-- makes slots 1..cap exist; free slots above the cap are removed (taken ones stay until their
-- connection ends and the next call removes them).
create or replace function realtime.ensure_connection_slots(cap int)
returns void
language sql
as $$
    insert into realtime.connection_slots (slot)
    select g from generate_series(1, cap) g
    on conflict (slot) do nothing;
    delete from realtime.connection_slots where slot > cap and node_id is null;
$$;

-- what the gateway decided and refused, for operators and auditors: cap refusals and warnings,
-- reaped sessions, slow consumers, lost nodes, failed authentications, rate limits. written in
-- batches off the message path; pruned by the gateway on its retention setting.
create table if not exists realtime.audit_log (
    id bigint generated always as identity primary key,
    at timestamptz not null default now(),
    kind text not null,
    node_id text,
    user_id uuid,
    remote_addr text,
    detail jsonb not null default '{}'
);
create index if not exists audit_log_at on realtime.audit_log using brin (at);
create index if not exists audit_log_kind_at on realtime.audit_log (kind, at);

-- the registry row id is chosen by the gateway (it updates rows by id when channels end).
-- active rows of one connection are closed together.

-- views for operators -------------------------------------------------------------------------

create or replace view realtime.active_subscriptions as
select r.id, r.subscription_id, r.channel_name, r.user_id, r.component_name, r.table_filters,
       r.node_id, r.connection_id, r.remote_addr, r.created_at, r.last_heartbeat_at
from public.realtime_subscription_registry r
where r.is_active;

create or replace view realtime.subscriptions_per_channel as
select channel_name, count(*) as subscriptions, count(distinct connection_id) as connections,
       count(distinct user_id) as users
from public.realtime_subscription_registry
where is_active
group by channel_name;

create or replace view realtime.subscriptions_per_user as
select user_id, count(*) as subscriptions, count(distinct connection_id) as connections
from public.realtime_subscription_registry
where is_active
group by user_id;

-- a component whose active subscriptions keep growing, or whose rows end by being reaped rather
-- than left, leaks channels.
create or replace view realtime.subscriptions_per_component as
select component_name,
       count(*) filter (where is_active) as active,
       count(*) filter (where close_reason = 'leave') as left_cleanly,
       count(*) filter (where close_reason in ('socket_closed', 'reaped', 'node_lost'))
           as ended_without_leave,
       count(*) as total
from public.realtime_subscription_registry
group by component_name;

create or replace view realtime.subscriptions_per_node as
select r.node_id, count(*) as subscriptions, count(distinct r.connection_id) as connections,
       n.heartbeat_at, n.heartbeat_at is not null as node_live
from public.realtime_subscription_registry r
left join realtime.nodes n using (node_id)
where r.is_active
group by r.node_id, n.heartbeat_at;

-- active rows whose heartbeat is older than two minutes or whose node is gone: what the reaper and
-- node-loss cleanup will close.
create or replace view realtime.stale_subscriptions as
select r.*
from public.realtime_subscription_registry r
left join realtime.nodes n using (node_id)
where r.is_active
  and (r.last_heartbeat_at < now() - interval '2 minutes' or n.node_id is null);
