-- operators close connections through the admin api (post /admin/api/connections/{id}/disconnect).
-- the node that holds the connection closes it at once; a connection held by another node is
-- asked for here, and every node takes the requests addressed to it about once a second, closes
-- those connections (close code 4002, registry rows ended 'kicked') and audits them. a request
-- no node took (its node was lost meanwhile) is removed after a minute.
create table if not exists realtime.disconnect_requests (
    id bigint generated always as identity primary key,
    node_id text not null,
    connection_id uuid not null,
    requested_at timestamptz not null default now(),
    -- the node whose api took the request, the operator's address and their stated reason
    requested_on text,
    operator_addr text,
    reason text
);
create index if not exists disconnect_requests_node
    on realtime.disconnect_requests (node_id);

-- the admin api lists a user's audit records newest first.
create index if not exists audit_log_user_at
    on realtime.audit_log (user_id, at) where user_id is not null;

-- only the gateway (its owner) and superusers read or write the requests, never an api role.
alter table realtime.disconnect_requests enable row level security;

comment on table realtime.disconnect_requests is
    'realtime-gateway: operator requests to close a connection held by another node';
