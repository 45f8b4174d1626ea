-- broadcast from the database, as supabase has it: realtime.send (replaced),
-- realtime.send_binary, the trigger helper realtime.broadcast_changes, the binary_payload column
-- of realtime.messages, an index for replay, and a record of every send that failed.
--
-- none of these functions ever raises into the caller's transaction: a bad argument, a refused
-- insert, a missing partition, anything the database raises while sending becomes a warning
-- (WarnSendingBroadcastMessage, as upstream) and a 'send_failed' row of realtime.audit_log, and
-- nothing is sent. the writer's own rows commit.
--
-- the rows written here are the messages a private channel joined with config.broadcast.replay
-- replays; the gateway deletes them after --message-retention (default 72 hours).
--
-- as in 0014, objects upstream may own on a supabase database are replaced only by a role
-- allowed to; otherwise a notice says what was left as it is.

-- raw-binary messages (realtime.send_binary) keep their bytes here, payload stays null.
do $column$
begin
    alter table realtime.messages add column if not exists binary_payload bytea;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not add realtime.messages.binary_payload', current_user;
end
$column$;

-- replay reads the newest private broadcasts of one topic since a time.
do $index$
begin
    create index if not exists messages_replay on realtime.messages (topic, inserted_at)
        where extension = 'broadcast' and private is true;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not index realtime.messages for replay', current_user;
end
$index$;

-- records a failed send in the audit log: one 'send_failed' row per transaction and function
-- (the first error, and how many calls failed), so a trigger failing on every row of a bulk
-- write costs one row, not one per call. the row's txid keeps a caller from pointing the
-- setting at another transaction's row. security definer: callers need no grant on the audit
-- log. a failure to record is itself only a warning.
create or replace function realtime.send_failed(
    fn text,
    topic text,
    event text,
    private boolean,
    caller text,
    error text,
    state text
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    tx text;
    setting text := 'realtime.send_failed.' || coalesce(fn, '');
    row_id bigint;
begin
    begin
        tx := txid_current()::text;
        row_id := nullif(current_setting(setting, true), '')::bigint;
        if row_id is not null then
            update realtime.audit_log
            set detail = jsonb_set(detail, '{failures}',
                                   to_jsonb(coalesce((detail->>'failures')::bigint, 0) + 1))
            where id = row_id and kind = 'send_failed' and detail->>'txid' = tx;
            if found then
                return;
            end if;
        end if;
        insert into realtime.audit_log (kind, detail)
        values ('send_failed', jsonb_build_object(
            'function', fn, 'topic', left(topic, 1024), 'event', left(event, 256),
            'private', private, 'role', caller, 'error', left(error, 1024), 'sqlstate', state,
            'failures', 1, 'txid', tx))
        returning id into row_id;
        perform set_config(setting, row_id::text, true);
    exception when others then
        raise warning 'realtime-gateway: cannot record a failed send: %', sqlerrm;
    end;
end
$$;

-- the one place a message is written and announced, for send, send_binary and
-- broadcast_changes (fn names the caller for the audit log): validates, inserts the row as the
-- caller (row-level security applies, with realtime.topic() returning topic), and notifies the
-- gateway at commit with the whole message when it fits (under 7900 bytes; binary payloads as
-- hex) and only the id otherwise. inserted_at is the time of the call, not of the transaction's
-- start, so the messages of one transaction replay in the order they were sent. never raises.
create or replace function realtime.send_message(
    fn text,
    payload jsonb,
    binary_payload bytea,
    event text,
    topic text,
    private boolean
)
returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $$
declare
    message_id uuid := gen_random_uuid();
    message_payload jsonb := payload;
    is_private boolean := coalesce(private, true);
    is_binary boolean := fn = 'send_binary';
    previous_topic text := current_setting('realtime.topic', true);
    note text;
begin
    begin
        if topic is null or topic = '' then
            raise exception 'a topic is required';
        end if;
        if event is null then
            raise exception 'an event is required';
        end if;
        if is_binary then
            if binary_payload is null then
                raise exception 'a payload is required';
            end if;
            -- a binary frame carries at most 255 bytes of event and of 'realtime:' || topic
            if octet_length(event) > 255 then
                raise exception 'the event is longer than 255 bytes, the most a binary frame carries';
            end if;
            if octet_length(topic) > 246 then
                raise exception 'the topic is longer than 246 bytes, the most a binary frame carries';
            end if;
            message_payload := null;
        elsif jsonb_typeof(payload) = 'object' and not payload ? 'id' then
            message_payload := payload || jsonb_build_object('id', message_id);
        end if;
        perform set_config('realtime.topic', topic, true);
        insert into realtime.messages
            (id, topic, extension, event, payload, binary_payload, private, inserted_at)
        values (message_id, topic, 'broadcast', event, message_payload,
                case when is_binary then binary_payload end, is_private, clock_timestamp());
        perform set_config('realtime.topic', coalesce(previous_topic, ''), true);
        if is_binary then
            note := json_build_object('k', 'db', 'id', message_id, 't', topic, 'x', is_private,
                                      'e', event, 'h', encode(binary_payload, 'hex'))::text;
        else
            note := json_build_object('k', 'db', 'id', message_id, 't', topic, 'x', is_private,
                                      'e', event, 'd', message_payload)::text;
        end if;
        if octet_length(note) > 7900 then
            note := json_build_object('k', 'db', 'id', message_id)::text;
        end if;
        perform pg_notify('realtime_bus', note);
    exception when others then
        -- the block's subtransaction is rolled back: the row, the notification and the
        -- realtime.topic setting are undone with it.
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        perform realtime.send_failed(fn, topic, event, is_private, current_user, sqlerrm,
                                     sqlstate);
    end;
end
$$;

-- the functions clients call. each replaces upstream's, when the migrating role may.
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
language sql
security invoker
set search_path = pg_catalog, pg_temp
as $fn$
    select realtime.send_message('send', payload, null, event, topic, private)
$fn$
    $sql$;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not replace realtime.send', current_user;
end
$send$;

-- sends payload's bytes as event to the channel topic: vsn 2 clients receive a binary
-- broadcast (realtime-js hands an ArrayBuffer to the listener) with meta {"id": <row id>};
-- vsn 1 clients, which cannot represent raw bytes, receive nothing, as upstream.
do $send_binary$
begin
    execute $sql$
create or replace function realtime.send_binary(
    payload bytea,
    event text,
    topic text,
    private boolean default true
)
returns void
language sql
security invoker
set search_path = pg_catalog, pg_temp
as $fn$
    select realtime.send_message('send_binary', null, payload, event, topic, private)
$fn$
    $sql$;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not replace realtime.send_binary', current_user;
end
$send_binary$;

-- for row-level triggers:
--
--   perform realtime.broadcast_changes('room:' || new.room_id, tg_op, tg_op, tg_table_name,
--                                      tg_table_schema, new, old);
--
-- sends {"record": new, "old_record": old, "operation", "table", "schema"} as event_name to the
-- private channel topic_name (null records as json null). unlike upstream's, which raises, a
-- statement-level call or an operation other than insert, update or delete is a warning and a
-- 'send_failed' row, and nothing is sent.
do $broadcast_changes$
begin
    execute $sql$
create or replace function realtime.broadcast_changes(
    topic_name text,
    event_name text,
    operation text,
    table_name text,
    table_schema text,
    new record,
    old record,
    level text default 'ROW'
)
returns void
language plpgsql
security invoker
set search_path = pg_catalog, pg_temp
as $fn$
declare
    row_data jsonb;
begin
    begin
        if level = 'STATEMENT' then
            raise exception 'broadcast_changes can be called for each row only, not for each statement';
        end if;
        if operation is null or operation not in ('INSERT', 'UPDATE', 'DELETE') then
            raise exception 'unexpected operation %, expected INSERT, UPDATE or DELETE',
                coalesce(operation, 'null');
        end if;
        row_data := jsonb_build_object('old_record', old, 'record', new, 'operation', operation,
                                       'table', table_name, 'schema', table_schema);
    exception when others then
        raise warning 'WarnSendingBroadcastMessage: %', sqlerrm;
        perform realtime.send_failed('broadcast_changes', topic_name, event_name, true,
                                     current_user, sqlerrm, sqlstate);
        return;
    end;
    perform realtime.send_message('broadcast_changes', row_data, null, event_name, topic_name,
                                  true);
end
$fn$
    $sql$;
exception when insufficient_privilege then
    raise notice 'realtime-gateway: % may not replace realtime.broadcast_changes', current_user;
end
$broadcast_changes$;
