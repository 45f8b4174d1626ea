-- supabase's database roles (anon, authenticated, service_role), the auth schema and its
-- helpers auth.uid(), auth.role() and auth.jwt(), on a plain postgres that lacks them, so that
-- row-level-security policies written for supabase (`using (user_id = auth.uid())`) work here.
--
-- everything is created only when missing: on a supabase database (or a cluster where another
-- database already ran this) existing roles, the schema and the functions are left as they are.
-- roles are cluster-wide and several databases may migrate at once, so a role created by someone
-- else between our check and our create is not an error. a migrating role that may not create
-- roles, grant bypassrls or grant on objects it does not own is told so in a notice and the
-- migration goes on.
--
-- the helpers read the settings postgrest (and realtime) set per request: `request.jwt.claims`
-- (the whole claim set as json) and the legacy per-claim `request.jwt.claim.<name>`, which wins
-- when both are set, as in supabase's definitions. an empty setting counts as absent. unlike
-- supabase's auth.uid(), a `sub` that is not a uuid gives null instead of an error.

do $roles$
declare
    me record;
    r text;
begin
    select rolsuper, rolcreaterole, rolbypassrls into me from pg_roles where rolname = current_user;
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        continue when exists (select 1 from pg_roles where rolname = r);
        if not (me.rolsuper or me.rolcreaterole) then
            raise notice 'realtime-gateway: role % is missing and % may not create roles', r, current_user;
            continue;
        end if;
        begin
            if r = 'service_role' and (me.rolsuper or me.rolbypassrls) then
                begin
                    execute format('create role %I nologin noinherit bypassrls', r);
                exception when insufficient_privilege then
                    raise notice 'realtime-gateway: % may not grant bypassrls; service_role is created without it', current_user;
                    execute format('create role %I nologin noinherit', r);
                end;
            else
                execute format('create role %I nologin noinherit', r);
            end if;
        exception when duplicate_object or unique_violation then
            null; -- created meanwhile by another database's migration
        end;
    end loop;
end
$roles$;

do $schema$
begin
    if not exists (select 1 from pg_namespace where nspname = 'auth') then
        begin
            create schema auth;
        exception when duplicate_schema or unique_violation then
            null;
        end;
    end if;
end
$schema$;

do $functions$
begin
    if to_regprocedure('auth.uid()') is null then
        create function auth.uid() returns uuid
        language sql stable
        as $f$
            select case
                when s ~* '^([0-9a-f]{4}(-?[0-9a-f]{4}){7}|\{[0-9a-f]{4}(-?[0-9a-f]{4}){7}\})$'
                then s::uuid
            end
            from (
                select coalesce(
                    nullif(current_setting('request.jwt.claim.sub', true), ''),
                    nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub'
                ) as s
            ) as claim
        $f$;
        comment on function auth.uid() is
            'realtime-gateway: the request''s jwt sub as a uuid; null when absent or not a uuid';
    end if;
    if to_regprocedure('auth.role()') is null then
        create function auth.role() returns text
        language sql stable
        as $f$
            select coalesce(
                nullif(current_setting('request.jwt.claim.role', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role'
            )::text
        $f$;
        comment on function auth.role() is
            'realtime-gateway: the request''s jwt role claim; null when absent';
    end if;
    if to_regprocedure('auth.jwt()') is null then
        create function auth.jwt() returns jsonb
        language sql stable
        as $f$
            select coalesce(
                nullif(current_setting('request.jwt.claim', true), ''),
                nullif(current_setting('request.jwt.claims', true), '')
            )::jsonb
        $f$;
        comment on function auth.jwt() is
            'realtime-gateway: the request''s jwt claims; null when absent';
    end if;
end
$functions$;

do $grants$
declare
    r text;
begin
    foreach r in array array['anon', 'authenticated', 'service_role'] loop
        continue when not exists (select 1 from pg_roles where rolname = r);
        begin
            execute format('grant usage on schema auth to %I', r);
            execute format(
                'grant execute on function auth.uid(), auth.role(), auth.jwt() to %I', r);
        exception when insufficient_privilege then
            raise notice 'realtime-gateway: % may not grant on schema auth to %', current_user, r;
        end;
    end loop;
end
$grants$;
