-- closed registry rows are kept for a retention period (REGISTRY_RETENTION),
-- then deleted by the nodes' heartbeat: without it, one client that joins and
-- leaves in a loop grows the table without bound. the partial index finds the
-- oldest closed rows without reading the open ones.
create index if not exists realtime_subscription_registry_closed_at
    on public.realtime_subscription_registry (closed_at)
    where not is_active;
