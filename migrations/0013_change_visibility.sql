-- row-level security for postgres changes: realtime.visible_rows decides, for a page of
-- captured changes and the distinct claim sets subscribed to their tables, which claim set may
-- see which row, with postgresql's own rules, evaluated over the row as it was captured:
--
-- * the claim set's role must have select on the table (or on some of its columns: the columns
--   it may select are returned, and nothing else is delivered) and usage on its schema;
-- * a role that is a superuser, has bypassrls, or owns the table (unless row security is
--   forced) sees every row, as does every role when the table does not have row security on;
-- * otherwise a row is visible when at least one permissive select (or all) policy that
--   applies to the role passes and every restrictive one does; no permissive policy, no row.
--
-- policies are evaluated as written, under `set local role <role>` with `request.jwt.claims`
-- set to the claim set, over `jsonb_populate_record(null::<table>, <captured row>)` aliased as
-- the table: a later update or delete of the row does not change who sees a change, and
-- functions such as auth.uid() read the subscriber's claims. a claim set whose check raises
-- is retried row by row, so one failing row gets an error and the others their verdict.
--
-- request: {"claims": [{"role": text, "claims": text}, ...],
--           "tables": [{"relid": oid, "claims": [claim index, ...], "rows": [jsonb, ...]}, ...]}
-- answer, indices 0-based:
-- * one row per table and claim set, r null: visible true (every row, no row check), false
--   (no row) or null (rows answered one by one below); columns = what the role may select,
--   null for every column; error = why nothing could be decided (then nothing is visible).
-- * per visible row: (t, c, r, true, null, null); per row whose check raised:
--   (t, c, r, null, null, error). rows not listed are not visible.
--
-- not security definer: `set role` is checked against the session user, the gateway's login,
-- which must be a member of every role a token can name. a role the login is not a member of,
-- a superuser role, or the login itself, is refused (an error for that claim set), as
-- postgrest refuses to switch to it: a token naming `postgres` sees nothing.
--
-- the search path is pg_catalog and pg_temp only (pg_temp last, so it never hides a catalog
-- table; it is never searched for functions): nothing a role creates in `public` can stand in
-- for a function this body calls. policies are deparsed under the same path, so what they
-- call outside pg_catalog is written schema-qualified and found. functions policies call that
-- name objects without a schema should pin their own search_path, as supabase advises.

-- switches the transaction to `role_name` acting with `claims` (json text): the role, and every
-- setting supabase's auth helpers read (the legacy per-claim ones too, so none left over from
-- an earlier claim set or a session default can stand in for these claims).
create or replace function realtime.act_as(role_name text, claims text)
returns void
language plpgsql
-- no set clause: a function's set clause would undo, at its exit, the local settings it makes.
-- every name is qualified instead.
as $$
declare
    parsed pg_catalog.jsonb := nullif(claims, '')::pg_catalog.jsonb;
begin
    perform pg_catalog.set_config('role', role_name, true);
    perform pg_catalog.set_config('request.jwt.claims', coalesce(claims, ''), true);
    perform pg_catalog.set_config('request.jwt.claim', '', true);
    perform pg_catalog.set_config('request.jwt.claim.sub',
        coalesce(parsed operator(pg_catalog.->>) 'sub', ''), true);
    perform pg_catalog.set_config('request.jwt.claim.role',
        coalesce(parsed operator(pg_catalog.->>) 'role', ''), true);
end
$$;

revoke all on function realtime.act_as(text, text) from public;

-- whether tokens naming `role_name` may be acted as: an existing role that is not a superuser,
-- not the gateway's own login, and one the login may switch to (postgrest refuses the others
-- too). private channels ask the same (src/auth/channel.rs).
create or replace function realtime.may_act_as(role_name text)
returns boolean
language sql
stable
set search_path = pg_catalog, pg_temp
as $$
    select exists (select from pg_roles r where r.rolname = role_name and not r.rolsuper)
        and role_name <> session_user
        and pg_has_role(session_user, role_name, 'MEMBER')
$$;

revoke all on function realtime.may_act_as(text) from public;

-- what `role_name` may see of table `relid`, whatever the row: an error (the table is gone,
-- the role unknown or not one tokens may act as), or visible (true: every row; false: none;
-- null: rows pass `check_sql`), and the columns the role may select (null: all). asked once per
-- table and role of a request, however many claim sets share the role.
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
    if not realtime.may_act_as(role_name) then
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

create or replace function realtime.visible_rows(request jsonb)
returns table (t int, c int, r int, visible boolean, columns text[], error text)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    tab jsonb;
    tab_i int := -1;
    claim_i int;
    claim jsonb;
    role_name text;
    sights jsonb;
    sight jsonb;
    check_sql text;
    stmt_name text;
    rows_text text;
    seen int[];
    row_i int;
    saved_role text := current_setting('role');
    saved_claims text := coalesce(current_setting('request.jwt.claims', true), '');
begin
    for tab in select value from jsonb_array_elements(request -> 'tables') loop
        tab_i := tab_i + 1;
        sights := '{}';
        rows_text := quote_literal(tab -> 'rows');
        for claim_i in select value::int from jsonb_array_elements_text(tab -> 'claims') loop
            claim := request -> 'claims' -> claim_i;
            role_name := claim ->> 'role';
            sight := sights -> role_name;
            if sight is null then
                select to_jsonb(s) into sight
                from realtime.table_sight((tab ->> 'relid')::oid, role_name) s;
                -- each distinct check is prepared once per connection and its plan reused by
                -- every claim set (postgresql replans it when a role change matters to it).
                if sight ->> 'check_sql' is not null then
                    stmt_name := 'realtime_visible_' || md5(sight ->> 'check_sql');
                    if not exists (
                        select from pg_prepared_statements p where p.name = stmt_name
                    ) then
                        if (select count(*) from pg_prepared_statements p
                            where p.name like 'realtime\_visible\_%') >= 256 then
                            -- policies changed often: start over rather than keep them all.
                            deallocate all;
                        end if;
                        execute format('prepare %I(jsonb) as %s', stmt_name, sight ->> 'check_sql');
                    end if;
                    sight := sight || jsonb_build_object('statement', stmt_name);
                end if;
                sights := sights || jsonb_build_object(role_name, sight);
            end if;
            t := tab_i; c := claim_i; r := null;
            error := sight ->> 'error';
            visible := (sight ->> 'visible')::boolean;
            columns := case when jsonb_typeof(sight -> 'columns') = 'array'
                            then array(select jsonb_array_elements_text(sight -> 'columns'))
                       end;
            check_sql := sight ->> 'check_sql';
            -- the table-level answer; with a check, rows follow one by one.
            return next;
            continue when check_sql is null;
            columns := null;
            stmt_name := sight ->> 'statement';
            begin
                perform realtime.act_as(role_name, claim ->> 'claims');
                execute format('execute %I(%s)', stmt_name, rows_text) into seen;
                perform pg_catalog.set_config('role', saved_role, true);
            exception when others then
                seen := null;
            end;
            if seen is not null then
                foreach row_i in array seen loop
                    r := row_i; visible := true; error := null;
                    return next;
                end loop;
                continue;
            end if;
            -- some row made the check raise: each row on its own.
            for row_i in 0 .. jsonb_array_length(tab -> 'rows') - 1 loop
                r := row_i; visible := null; error := null;
                begin
                    perform realtime.act_as(role_name, claim ->> 'claims');
                    execute format('execute %I(%L)', stmt_name,
                        jsonb_build_array(tab -> 'rows' -> row_i)) into seen;
                    perform pg_catalog.set_config('role', saved_role, true);
                    if cardinality(seen) > 0 then
                        visible := true;
                        return next;
                    end if;
                exception when others then
                    error := sqlerrm;
                    return next;
                end;
            end loop;
        end loop;
    end loop;
    -- between claim sets only the role is switched back (catalog reads need the login's); the
    -- claims settings are restored once, here.
    perform realtime.act_as(saved_role, saved_claims);
end
$$;

revoke all on function realtime.visible_rows(jsonb) from public;

-- the gateway's login switches to the roles tokens name: make it a member of supabase's roles
-- when it is not a superuser (a superuser may switch to any role).
do $members$
declare
    r text;
begin
    if (select rolsuper from pg_roles where rolname = current_user) then
        return;
    end if;
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        continue when not exists (select 1 from pg_roles where rolname = r);
        continue when pg_has_role(current_user, r, 'MEMBER');
        begin
            execute format('grant %I to %I', r, current_user);
        exception when insufficient_privilege or invalid_grant_operation then
            raise notice 'realtime-gateway: % may not become a member of %; grant it so tokens of that role receive changes', current_user, r;
        end;
    end loop;
end
$members$;
