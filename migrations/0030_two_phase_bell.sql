-- two-phase commit on published tables works with the bell on: a transaction being prepared
-- does not ring.
--
-- postgresql refuses to prepare a transaction that executed notify ("cannot PREPARE a
-- transaction that has executed LISTEN, UNLISTEN, or NOTIFY"), and ring_bell runs as a
-- deferred trigger, which fires at prepare transaction as at commit. a transaction that won the
-- bell therefore failed its prepare: nearly always while writes were sparse. writers that use
-- two-phase commit (xa transaction managers) had to set realtime.bell = off themselves.
--
-- the trigger now recognizes the prepare by the statement being run (current_query(): the
-- client's text, and prepare transaction can only be sent as a statement of its own, never from
-- a function) and returns before taking the bell's lock: a prepared transaction keeps its
-- transaction-level advisory locks until commit prepared, so a bell taken there would keep
-- every other writer from ringing until then. the same for set constraints, which fires the
-- deferred bell early (a transaction checking its deferred constraints before it prepares).
-- the prepared transaction's changes are read by the gateway's poll once committed (commit
-- prepared fires no trigger). a text that merely contains the words (a value of an insert)
-- only costs that transaction its bell. [[:space:]] rather than a backslash class, which a
-- session with standard_conforming_strings off would read differently.
--
-- not covered: a transaction that sets its constraints immediate before its first captured row
-- rings at that row's statement, and realtime.send() notifies; such a transaction can be
-- prepared only with realtime.bell = off (and no realtime.send).
--
-- the test is made only when the server allows prepared transactions
-- (max_prepared_transactions, 0 by default: then no transaction can be prepared), so the usual
-- commit pays one setting lookup.
create or replace function realtime.ring_bell()
returns trigger
language plpgsql
as $$
begin
    if pg_catalog.current_setting('max_prepared_transactions') operator(pg_catalog.<>) '0'
        and pg_catalog.current_query() operator(pg_catalog.~*)
            'prepare[[:space:]]+transaction|set[[:space:]]+constraints' then
        return null;
    end if;
    if pg_catalog.pg_try_advisory_xact_lock(1381254999, 0)
        and pg_catalog.pg_notification_queue_usage() operator(pg_catalog.<) 0.5::pg_catalog.float8 then
        perform pg_catalog.pg_notify('realtime_gateway', '');
    end if;
    return null;
end
$$;
