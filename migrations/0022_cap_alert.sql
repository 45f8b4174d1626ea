-- the connection-cap warning, shared by every node on the database: one row saying whether the
-- next crossing of the warning threshold (ADMIN_WARN_PERCENT of the cap) is still to be
-- recorded (`armed`) or has been (the cluster is in its warning state until its connections
-- fall below ADMIN_CLEAR_PERCENT). each node's watcher checks the count against it in one
-- statement; the update that disarms the row is what records a crossing, so only one node
-- records each one, however many watch.
create table if not exists realtime.cap_alert (
    -- a single row: the key can only be true.
    id boolean primary key default true check (id),
    armed boolean not null default true,
    -- when it was last disarmed (a crossing) or re-armed, by which node, at which count and cap.
    changed_at timestamptz not null default now(),
    changed_by text,
    in_use int,
    cap int
);

insert into realtime.cap_alert (id) values (true) on conflict (id) do nothing;
