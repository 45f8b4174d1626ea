-- less work for postgresql per read of the outbox and per row-level security check, with the
-- same answers.
--
-- * realtime.read_changes is the gateway's usual read of the outbox (src/capture/listener.rs),
--   moved into a function so its plan is made once per connection: sent as a statement, it was
--   planned anew on every read (postgresql keeps custom plans when their estimate beats the
--   generic one's), which took more time than running it. each branch of the read is ordered
--   by an indexed column with a limit, so the generic plan walks the same indexes.
--
-- row-level security checks (realtime.visible_rows, 0013):
--
-- * realtime.may_act_as loses its set clause. a sql function with one is never inlined, and
--   its body was planned again in every transaction that called it: a third of a check's
--   time when the subscribers' tables have no policies. every name is qualified instead, so
--   the caller's search_path cannot change what it reads.
-- * realtime.table_sight decides the same thing from the role it has already read, with no
--   query of its own.
-- * realtime.act_as makes its five settings in one statement instead of five.

create or replace function realtime.may_act_as(role_name text)
returns boolean
language sql
stable
as $$
    select exists (
            select from pg_catalog.pg_roles r
            where r.rolname operator(pg_catalog.=) role_name and not r.rolsuper
        )
        and role_name operator(pg_catalog.<>) session_user
        and pg_catalog.pg_has_role(session_user, role_name, 'MEMBER')
$$;

revoke all on function realtime.may_act_as(text) from public;

create or replace function realtime.act_as(role_name text, claims text)
returns void
language plpgsql
-- no set clause: a function's set clause would undo, at its exit, the local settings it makes.
-- every name is qualified instead.
as $$
declare
    parsed pg_catalog.jsonb := nullif(claims, '')::pg_catalog.jsonb;
begin
    perform pg_catalog.set_config('role', role_name, true),
            pg_catalog.set_config('request.jwt.claims', coalesce(claims, ''), true),
            pg_catalog.set_config('request.jwt.claim', '', true),
            pg_catalog.set_config('request.jwt.claim.sub',
                coalesce(parsed operator(pg_catalog.->>) 'sub', ''), true),
            pg_catalog.set_config('request.jwt.claim.role',
                coalesce(parsed operator(pg_catalog.->>) 'role', ''), true);
end
$$;

revoke all on function realtime.act_as(text, text) from public;

create or replace function realtime.table_sight(
    relid oid,
    role_name text,
    out error text,
    out visible boolean,
    out columns text[],
    out check_sql text
)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    rel record;
    who record;
    permissive text;
    restrictive text;
begin
    select cl.relname, ns.nspname, cl.relrowsecurity, cl.relforcerowsecurity, cl.relowner
    into rel
    from pg_class cl join pg_namespace ns on ns.oid = cl.relnamespace
    where cl.oid = relid;
    if not found then
        error := 'the table no longer exists';
        return;
    end if;
    select ro.rolsuper, ro.rolbypassrls into who from pg_roles ro where ro.rolname = role_name;
    if not found then
        error := format('role %s does not exist', quote_ident(role_name));
        return;
    end if;
    -- realtime.may_act_as, from the role read above.
    if who.rolsuper or role_name = session_user
        or not pg_has_role(session_user, role_name, 'MEMBER')
    then
        error := format('tokens may not act as role %s', quote_ident(role_name));
        return;
    end if;
    if not has_schema_privilege(role_name, rel.nspname, 'USAGE') then
        visible := false;
        return;
    end if;
    if not has_table_privilege(role_name, relid, 'SELECT') then
        select array_agg(a.attname::text order by a.attnum) into columns
        from pg_attribute a
        where a.attrelid = relid and a.attnum > 0 and not a.attisdropped
          and has_column_privilege(role_name, relid, a.attnum, 'SELECT');
        if columns is null then
            visible := false;
            return;
        end if;
    end if;
    if who.rolbypassrls or not rel.relrowsecurity
        or (not rel.relforcerowsecurity and pg_has_role(role_name, rel.relowner, 'USAGE'))
    then
        visible := true;
        return;
    end if;
    select
        coalesce(string_agg('(' || q || ')', ' or ') filter (where pol.polpermissive), 'false'),
        coalesce(string_agg('(' || q || ')', ' and ') filter (where not pol.polpermissive), 'true')
    into permissive, restrictive
    from pg_policy pol,
         lateral (select pg_get_expr(pol.polqual, pol.polrelid) as q) e
    where pol.polrelid = relid
      and pol.polcmd in ('r', '*')
      and e.q is not null
      and (pol.polroles = '{0}'
           or exists (select 1 from unnest(pol.polroles) pr
                      where pr <> 0 and pg_has_role(role_name, pr, 'USAGE')));
    -- the row is aliased as the table inside its own subquery, so the policies' column names
    -- resolve to the row whatever the table's columns are called.
    check_sql := format(
        'select coalesce(pg_catalog.array_agg((x.i - 1)::int), ''{}'') '
        'from pg_catalog.jsonb_array_elements($1) with ordinality as x(rec, i) '
        'where exists (select from pg_catalog.jsonb_populate_record(null::%I.%I, x.rec) '
        'as %I where (%s) and (%s))',
        rel.nspname, rel.relname, rel.relname, permissive, restrictive);
end
$$;

revoke all on function realtime.table_sight(oid, text) from public;

create or replace function realtime.read_changes(
    cursor_xmax text,
    cursor_xip text[],
    cursor_max_id int8,
    page int8
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
    snapshot text
)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
begin
    -- one statement, so one snapshot: the one returned in the row of part 0. in-flight rows (of
    -- transactions the previous read did not see) are found through the xid index, each branch
    -- ordered by xid; the limits only tell the caller whether the read fits in one page.
    return query
        select 0, 0, null::int8, null::timestamptz, null::int8, null::text, null::text,
               null::text, pg_current_snapshot()::text
        union all
        (select 1, 1, c.id, realtime.commit_time(c.xid, c.captured_at), c.relid::int8, c.op,
                c.record::text, c.old_record::text, null
         from realtime.changes c
         where c.xid = any(cursor_xip::xid8[]) and c.id <= cursor_max_id
         order by c.xid limit page)
        union all
        (select 2, 1, c.id, realtime.commit_time(c.xid, c.captured_at), c.relid::int8, c.op,
                c.record::text, c.old_record::text, null
         from realtime.changes c
         where c.xid >= cursor_xmax::xid8 and c.id <= cursor_max_id
         order by c.xid limit page)
        union all
        (select 3, 2, c.id, realtime.commit_time(c.xid, c.captured_at), c.relid::int8, c.op,
                c.record::text, c.old_record::text, null
         from realtime.changes c
         where c.id > cursor_max_id
         order by c.id limit page);
end
$$;

revoke all on function realtime.read_changes(text, text[], int8, int8) from public;
