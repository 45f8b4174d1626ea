-- what a table shows a role, as the outbox read answers it (0027), in plain SQL that the read's
-- own statement takes in (realtime.table_sight_inline): the same answers as
-- realtime.table_sight, for about a quarter of the work. 0027's realtime.read_sight was PL/pgSQL
-- calling table_sight inside an exception block, so each table and role of a read cost a
-- function call, a subtransaction and a few catalog statements of their own (about 0.1 ms);
-- the lookups themselves take a few microseconds.
--
-- * the function is a single select, stable, with no settings of its own, so PostgreSQL inlines
--   it into realtime.read_changes' statement (which sets search_path): no call, no plan of its
--   own. its names and operators are schema-qualified, for callers with another search_path.
-- * a table, schema or role dropped while the read runs: the catalog rows come from the
--   statement's snapshot, and every privilege is asked by oid of the catalog as it is now,
--   where PostgreSQL's oid forms answer null for an object gone since. a table or schema
--   dropped after the snapshot is then shown to nobody (no change, no error entry); a role
--   dropped after it is one tokens may not act as (an error entry); a table dropped before it,
--   an unknown role, one tokens may not act as: error entries, as before. in a narrow race
--   (the object dropped between postgresql's own existence check and its privilege lookup)
--   the statement raises "schema/relation with oid ... does not exist"; the gateway then reads
--   again without the answers and the row checks decide, so no exception block is paid for on
--   every read.
-- * the columns a role may select, for a table it may not select as a whole, are asked only in
--   that case, through realtime.selectable_columns (not inlined, so a read that does not need
--   them does not plan them).
-- * the gateway's login needs execute on both functions (it owns them when it migrated the
--   database); without it the read fails (permission denied), and the listener then reads
--   without the answers.
--
-- realtime.read_changes(text, text[], int8, int8, text[]) is 0027's with the new function in
-- place of realtime.read_sight, which goes. realtime.table_sight stays: realtime.visible_rows
-- asks it for the statement that checks rows.

create or replace function realtime.selectable_columns(role_id oid, relid oid)
returns text[]
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select array_agg(a.attname::text order by a.attnum)
    from pg_attribute a
    where a.attrelid = relid and a.attnum > 0 and not a.attisdropped
      and has_column_privilege(role_id, relid, a.attnum, 'SELECT')
$$;

revoke all on function realtime.selectable_columns(oid, oid) from public;

create or replace function realtime.table_sight_inline(relid oid, role_name text)
returns table (error text, visible boolean, columns text[])
language sql
stable
as $$
    select
        c.error,
        case
            when c.error is not null then null
            -- null: the schema or table was dropped after the statement's snapshot
            when c.schema_ok is not true or c.table_ok is null then false
            when not c.table_ok and c.columns is null then false
            when c.rls is not false then null
            else true
        end,
        c.columns
    from (
        select
            d.error, d.schema_ok, d.table_ok, d.rls,
            case when d.error is null and d.schema_ok and not d.table_ok
                 then realtime.selectable_columns(d.role_id, d.rel_id)
            end as columns
        from (
            select
                case
                    when cl.oid is null then 'the table no longer exists'
                    when ro.oid is null then pg_catalog.format(
                        'role %s does not exist', pg_catalog.quote_ident(role_name))
                    -- as realtime.may_act_as: a role the gateway's login is a member of, never
                    -- a superuser nor the login itself.
                    when ro.rolsuper
                         or role_name operator(pg_catalog.=) pg_catalog.session_user()::pg_catalog.text
                         or not pg_catalog.pg_has_role(pg_catalog.session_user(), ro.oid, 'MEMBER')
                        then pg_catalog.format(
                            'tokens may not act as role %s', pg_catalog.quote_ident(role_name))
                end as error,
                ro.oid as role_id,
                cl.oid as rel_id,
                pg_catalog.has_schema_privilege(ro.oid, cl.relnamespace, 'USAGE') as schema_ok,
                pg_catalog.has_table_privilege(ro.oid, cl.oid, 'SELECT') as table_ok,
                not (ro.rolbypassrls or not cl.relrowsecurity
                     or (not cl.relforcerowsecurity
                         and pg_catalog.pg_has_role(ro.oid, cl.relowner, 'USAGE'))) as rls
            from (select) as one
            left join pg_catalog.pg_class cl on cl.oid operator(pg_catalog.=) relid
            left join pg_catalog.pg_roles ro on ro.rolname operator(pg_catalog.=) role_name
            -- each level is computed once (offset 0 keeps the planner from copying a level's
            -- expressions into every use of them above)
            offset 0
        ) d
        offset 0
    ) c
$$;

revoke all on function realtime.table_sight_inline(oid, text) from public;

create or replace function realtime.read_changes(
    cursor_xmax text,
    cursor_xip text[],
    cursor_max_id int8,
    page int8,
    roles text[]
)
returns table (
    part int,
    grp int,
    id int8,
    captured_at timestamptz,
    relid int8,
    op text,
    record text,
    old_record text,
    snapshot text,
    role text,
    error text,
    visible boolean,
    columns text[]
)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    -- as 0027's read: one statement, so one snapshot, the one returned in the row of part 0;
    -- each branch is ordered by an indexed column with a limit. then part 4: per distinct
    -- table of the rows read and per role, the table-level answer (visible true or false, the
    -- columns the role may select, or an error; neither visible nor error when the policies
    -- must check each row), which the statement's plan takes in.
    return query
        with found as materialized (
            (select 1 as part, 1 as grp, c.id, realtime.commit_time(c.xid, c.captured_at) as at,
                    c.relid, c.op, c.record::text as rec, c.old_record::text as old_rec
             from realtime.changes c
             where c.xid = any(cursor_xip::xid8[]) and c.id <= cursor_max_id
             order by c.xid limit page)
            union all
            (select 2, 1, c.id, realtime.commit_time(c.xid, c.captured_at), c.relid, c.op,
                    c.record::text, c.old_record::text
             from realtime.changes c
             where c.xid >= cursor_xmax::xid8 and c.id <= cursor_max_id
             order by c.xid limit page)
            union all
            (select 3, 2, c.id, realtime.commit_time(c.xid, c.captured_at), c.relid, c.op,
                    c.record::text, c.old_record::text
             from realtime.changes c
             where c.id > cursor_max_id
             order by c.id limit page)
        )
        select 0, 0, null::int8, null::timestamptz, null::int8, null::text, null::text,
               null::text, pg_current_snapshot()::text, null::text, null::text, null::boolean,
               null::text[]
        union all
        select f.part, f.grp, f.id, f.at, f.relid::int8, f.op, f.rec, f.old_rec, null::text,
               null::text, null::text, null::boolean, null::text[]
        from found f
        union all
        select 4, 3, null::int8, null::timestamptz, t.relid::int8, null::text, null::text,
               null::text, null::text, r.name, s.error, s.visible, s.columns
        from (select distinct f.relid from found f) t
        cross join unnest(roles) as r(name)
        cross join lateral realtime.table_sight_inline(t.relid, r.name) s;
end
$$;

revoke all on function realtime.read_changes(text, text[], int8, int8, text[]) from public;

drop function if exists realtime.read_sight(oid, text);
