-- failed authentications per client address, shared by every gateway node on the database
-- (--max-auth-failures within --auth-failure-window): one row per address, a fixed window started
-- by its first failure; windows that are over are deleted by the gateways.
create table if not exists realtime.auth_failures (
    addr text primary key,
    window_start timestamptz not null default now(),
    failures integer not null default 1
);
create index if not exists auth_failures_window_start on realtime.auth_failures (window_start);
