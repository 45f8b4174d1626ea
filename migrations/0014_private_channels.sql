-- private channels: a join with config.private = true is authorized by the row-level-security
-- policies on realtime.messages, as with supabase realtime. the gateway evaluates them in a
-- transaction it rolls back, acting as the token's role with request.jwt.claims set and
-- realtime.topic() returning the channel's name:
--
--   read  (join, receive broadcasts / presence): rows of the channel's topic with extension
--         'broadcast' / 'presence' inserted by the gateway are visible to the role (select
--         policies);
--   write (send broadcasts, track presence): the role may insert such a row (insert policies).
--
-- users write policies like
--
--   create policy "members read" on realtime.messages for select to authenticated
--     using (realtime.topic() = 'room-1' and realtime.messages.extension in ('broadcast', 'presence'));
--
-- every step is guarded: on a database that already has these objects (a supabase database,
-- where realtime.messages is partitioned and owned by another role) nothing is recreated, and
-- what the migrating role may not change is reported in a notice.

-- the table (0004 creates it on a plain postgres; kept here for databases that lack it).
create table if not exists realtime.messages (
    id uuid not null default gen_random_uuid() primary key,
    topic text not null,
    extension text not null,
    event text,
    payload jsonb,
    private boolean default false,
    inserted_at timestamptz not null default now(),
    updated_at timestamptz not null default now()
);

-- without row-level security the grants below would open every private channel to every
-- role: a table that cannot be protected stops the migration.
do $rls$
begin
    alter table realtime.messages enable row level security;
exception when insufficient_privilege then
    if not (select c.relrowsecurity from pg_class c where c.oid = 'realtime.messages'::regclass) then
        raise exception 'realtime-gateway: % may not enable row level security on realtime.messages, and it is off', current_user;
    end if;
end
$rls$;

-- the channel being authorized (or the topic realtime.send is sending to), for policies.
do $topic$
begin
    if to_regprocedure('realtime.topic()') is null then
        create function realtime.topic() returns text
        language sql stable
        as $f$
            select nullif(current_setting('realtime.topic', true), '')::text
        $f$;
        comment on function realtime.topic() is
            'realtime-gateway: the channel topic being authorized, for policies on realtime.messages';
    end if;
end
$topic$;

-- the roles policies are written for read and insert rows while they are checked (rows the
-- gateway rolls back), and call realtime.send. row-level security decides what they may do.
do $grants$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        continue when not exists (select 1 from pg_roles where rolname = r);
        begin
            execute format('grant usage on schema realtime to %I', r);
            execute format('grant select, insert on table realtime.messages to %I', r);
            execute format('grant execute on function realtime.topic() to %I', r);
        exception when insufficient_privilege then
            raise notice 'realtime-gateway: % may not grant on realtime.messages to %', current_user, r;
        end;
    end loop;
end
$grants$;

-- with usage on the schema granted, functions executable by everyone by default become
-- reachable: the capture reconcile is for the gateway and operators only.
do $revoke$
begin
    revoke all on function realtime.sync_capture(boolean) from public;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not revoke realtime.sync_capture from public', current_user;
end
$revoke$;

-- realtime.send now inserts as its caller, as supabase's does: a caller subject to row-level
-- security needs an insert policy on realtime.messages that admits the row (realtime.topic()
-- is set to the topic while it is inserted); the table's owner, superusers and roles with
-- bypassrls need none. a refused insert is a warning, as every other failure, and nothing is
-- sent. messages with private => true reach only the members of the private channel of that
-- topic whose read is authorized; private => false ones reach the public channel's members.
-- (replaced only by a role allowed to: on a supabase database the function is left as it is.)
do $send$
begin
    execute $sql$
create or replace function realtime.send(
    payload jsonb,
    event text,
    topic text,
    private boolean default true
)
returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $fn$
declare
    message_id uuid := gen_random_uuid();
    message_payload jsonb := payload;
    is_private boolean := coalesce(private, true);
    previous_topic text := current_setting('realtime.topic', true);
    note text;
begin
    begin
        if topic is null or topic = '' or event is null then
            raise exception 'realtime.send needs a topic and an event';
        end if;
        if jsonb_typeof(payload) = 'object' and not payload ? 'id' then
            message_payload := payload || jsonb_build_object('id', message_id);
        end if;
        perform set_config('realtime.topic', topic, true);
        insert into realtime.messages (id, topic, extension, event, payload, private)
        values (message_id, topic, 'broadcast', event, message_payload, is_private);
        perform set_config('realtime.topic', coalesce(previous_topic, ''), true);
        note := json_build_object('k', 'db', 'id', message_id, 't', topic,
                                  'x', is_private, 'e', event,
                                  'd', message_payload)::text;
        if octet_length(note) > 7900 then
            note := json_build_object('k', 'db', 'id', message_id)::text;
        end if;
        perform pg_notify('realtime_bus', note);
    exception when others then
        perform set_config('realtime.topic', coalesce(previous_topic, ''), true);
        raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
    end;
end
$fn$
    $sql$;
exception when insufficient_privilege then
    -- an earlier realtime.send that runs as its owner would let any caller post to private
    -- topics: keep it only if it runs as its caller.
    if exists (select from pg_proc p where p.oid = 'realtime.send(jsonb, text, text, boolean)'::regprocedure
               and p.prosecdef) then
        raise exception 'realtime-gateway: % may not replace realtime.send, which runs as its owner', current_user;
    end if;
    raise notice 'realtime-gateway: % may not replace realtime.send', current_user;
end
$send$;
