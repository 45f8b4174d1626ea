-- broadcast and presence: messages sent from sql, the durable presence of every node, and the
-- rows behind bus messages too large for a notification. the bus itself is notify on channel
-- realtime_bus; every gateway node listens on it through its one listener connection. message
-- formats: src/broadcast/bus.rs.
--
-- migrations run with search_path = realtime, so every object is qualified. every statement
-- tolerates objects that already exist.

-- messages --------------------------------------------------------------------------------

-- one row per realtime.send call, with upstream's columns, so sql written for supabase realtime
-- (and policies on this table) keeps working. the gateway delivers each row once, to the channel
-- named by topic, with meta.id = id; rows are pruned after ten minutes (long enough for a node
-- whose listener reconnected to deliver what it missed). not partitioned: pruning deletes.
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
create index if not exists messages_inserted_at on realtime.messages (inserted_at);

-- only realtime.send (as its owner) and the gateway write here.
revoke all on table realtime.messages from public;

-- sends payload as event to the channel topic (a name without 'realtime:'), as supabase's
-- realtime.send does: payload gets an id key when it is an object without one, a row is
-- inserted, and the gateway is notified. notifications are transactional: delivered once the
-- calling transaction commits, never if it rolls back (a savepoint rolled back takes its sends
-- with it). usable inside triggers.
--
-- it never raises into the caller: any failure becomes a warning and nothing is sent. the only
-- failure it cannot catch is postgres refusing the commit because the notify queue is full,
-- which takes a listener that stopped reading for a long time.
--
-- private defaults to true as upstream, and private channels are refused at join by this
-- gateway: pass private => false to reach the clients of a public channel.
--
-- the notification carries the whole message when it fits (under 7900 bytes) and only the id
-- otherwise; the gateway then reads the row.
--
-- security definer so callers need no grant on realtime.messages (a role still needs usage on
-- schema realtime to call it). search_path is pinned and the body runs no user code.
create or replace function realtime.send(
    payload jsonb,
    event text,
    topic text,
    private boolean default true
)
returns void
language plpgsql
security definer
set search_path = pg_catalog, pg_temp
as $$
declare
    message_id uuid := gen_random_uuid();
    message_payload jsonb := payload;
    note text;
begin
    begin
        if topic is null or topic = '' or event is null then
            raise exception 'realtime.send needs a topic and an event';
        end if;
        if jsonb_typeof(payload) = 'object' and not payload ? 'id' then
            message_payload := payload || jsonb_build_object('id', message_id);
        end if;
        insert into realtime.messages (id, topic, extension, event, payload, private)
        values (message_id, topic, 'broadcast', event, message_payload, coalesce(private, true));
        note := json_build_object('k', 'db', 'id', message_id, 't', topic,
                                  'x', coalesce(private, true), 'e', event,
                                  'd', message_payload)::text;
        if octet_length(note) > 7900 then
            note := json_build_object('k', 'db', 'id', message_id)::text;
        end if;
        perform pg_notify('realtime_bus', note);
    exception when others then
        raise warning 'ErrorSendingBroadcastMessage: %', sqlerrm;
    end;
end
$$;

-- presence --------------------------------------------------------------------------------

-- every tracked presence, one row per entry (phx_ref), written by the node that holds the
-- channel membership in the same transaction as the notification of the change. a node that
-- missed notifications rebuilds the other nodes' presence from here; the rows of a lost node
-- are removed by realtime.presence_prune.
create table if not exists realtime.presences (
    phx_ref text primary key,
    topic text not null,
    key text not null,
    meta jsonb not null,
    node_id text not null,
    updated_at timestamptz not null default now()
);
create index if not exists presences_node on realtime.presences (node_id);

revoke all on table realtime.presences from public;

-- removes the presence of every node other than me that has not heartbeated its realtime.nodes
-- row within stale_after_secs (or has no row at all), and tells every node, one sync
-- notification per lost node, to drop those entries (their clients then see the leaves).
-- returns the number of rows removed. run periodically by every node: whichever runs first
-- does the work. a node wrongly taken for lost writes its rows again when it hears the sync.
create or replace function realtime.presence_prune(me text, stale_after_secs double precision)
returns bigint
language plpgsql
set search_path = pg_catalog, pg_temp
as $$
declare
    lost text;
    removed bigint;
    total bigint := 0;
begin
    for lost in
        select distinct p.node_id from realtime.presences p
        where p.node_id <> me
          and not exists (
              select from realtime.nodes n
              where n.node_id = p.node_id
                and n.heartbeat_at >= now() - make_interval(secs => stale_after_secs))
    loop
        delete from realtime.presences where node_id = lost;
        get diagnostics removed = row_count;
        if removed > 0 then
            perform pg_notify('realtime_bus', json_build_object('k', 'sync', 'node', lost)::text);
            total := total + removed;
        end if;
    end loop;
    return total;
end
$$;

revoke all on function realtime.presence_prune(text, double precision) from public;

-- the bus ---------------------------------------------------------------------------------

-- bus messages of a node too large for a notification (presence metas and broadcasts up to
-- --max-message-bytes): the notification names the row. rows are pruned after five minutes.
create table if not exists realtime.bus_spill (
    id bigint generated always as identity primary key,
    node_id text not null,
    envelope text not null,
    created_at timestamptz not null default now()
);

revoke all on table realtime.bus_spill from public;
