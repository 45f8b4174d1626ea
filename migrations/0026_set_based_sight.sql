-- row-level security checks (0013) with the same answers for less work per claim set: the
-- gateway's usual check is now realtime.visible_rows over arrays, this file's version.
--
-- * the request comes as arrays (the claim sets' roles and claims, the tables, their rows, and
--   which claim sets ask about which table), which the gateway sends in binary: nothing is
--   parsed but the rows, and they only when a table's policies check them. the json request of
--   0013 was parsed whole for every page, and reading a claim set out of it as
--   `request -> 'claims' -> i` copied the whole list again for each claim set, so many claim
--   sets cost the square of their number.
-- * what a table shows a role whatever the row (realtime.table_sight) is answered for all the
--   role's claim sets in one statement: a table without row-level security, or one the role
--   may not read, costs one answer row per claim set and no loop.
-- * the role and claims are restored at the end only when a row check set them.
--
-- realtime.visible_rows(jsonb) stays as 0013 made it, for nodes of an earlier version sharing
-- the database during an upgrade.

create or replace function realtime.visible_rows(
    roles text[],
    claims text[],
    relids oid[],
    table_rows text[],
    pair_tables int[],
    pair_claims int[]
)
returns table (t int, c int, r int, visible boolean, columns text[], error text)
language plpgsql
volatile
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
declare
    tab_i int;
    tab_claims int[];
    rows jsonb;
    rows_text text;
    claim_i int;
    role_name text;
    sight record;
    stmt_name text;
    seen int[];
    row_i int;
    acted boolean := false;
    saved_role text := current_setting('role');
    saved_claims text := coalesce(current_setting('request.jwt.claims', true), '');
begin
    -- indices are 0-based: claim set i is roles[i + 1] with claims[i + 1]; table j is relids[j + 1]
    -- with the json array of rows table_rows[j + 1]; pair k asks what claim set pair_claims[k]
    -- sees of table pair_tables[k].
    for tab_i in 0 .. coalesce(cardinality(relids), 0) - 1 loop
        tab_claims := array(
            select p.pc from unnest(pair_tables, pair_claims) as p(pt, pc) where p.pt = tab_i
        );
        rows := null;
        rows_text := null;
        for role_name in select distinct roles[i + 1] from unnest(tab_claims) as i loop
            select s.error, s.visible, s.columns, s.check_sql into sight
            from realtime.table_sight(relids[tab_i + 1], role_name) s;
            -- the table-level answer of each of the role's claim sets; with a check, rows follow
            -- one by one.
            return query
                select tab_i, i, null::int, sight.visible, sight.columns, sight.error
                from unnest(tab_claims) as i
                where roles[i + 1] is not distinct from role_name;
            continue when sight.check_sql is null;
            -- each distinct check is prepared once per connection and its plan reused by every
            -- claim set (postgresql replans it when a role change matters to it).
            stmt_name := 'realtime_visible_' || md5(sight.check_sql);
            if not exists (select from pg_prepared_statements p where p.name = stmt_name) then
                if (select count(*) from pg_prepared_statements p
                    where p.name like 'realtime\_visible\_%') >= 256 then
                    -- policies changed often: start over rather than keep them all.
                    deallocate all;
                end if;
                execute format('prepare %I(jsonb) as %s', stmt_name, sight.check_sql);
            end if;
            rows_text := coalesce(rows_text, quote_literal(table_rows[tab_i + 1]));
            acted := true;
            for claim_i in
                select i from unnest(tab_claims) as i where roles[i + 1] is not distinct from role_name
            loop
                begin
                    perform realtime.act_as(role_name, claims[claim_i + 1]);
                    execute format('execute %I(%s)', stmt_name, rows_text) into seen;
                    perform pg_catalog.set_config('role', saved_role, true);
                exception when others then
                    seen := null;
                end;
                if seen is not null then
                    return query
                        select tab_i, claim_i, v, true, null::text[], null::text
                        from unnest(seen) as v;
                    continue;
                end if;
                -- some row made the check raise: each row on its own.
                rows := coalesce(rows, table_rows[tab_i + 1]::jsonb);
                for row_i in 0 .. jsonb_array_length(rows) - 1 loop
                    t := tab_i; c := claim_i; r := row_i; visible := null; columns := null;
                    error := null;
                    begin
                        perform realtime.act_as(role_name, claims[claim_i + 1]);
                        execute format('execute %I(%L)', stmt_name,
                            jsonb_build_array(rows -> row_i)) into seen;
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
    end loop;
    -- between claim sets only the role is switched back (catalog reads need the login's); the
    -- claims settings are restored once, here, when a check set them.
    if acted then
        perform realtime.act_as(saved_role, saved_claims);
    end if;
end
$$;

revoke all on function realtime.visible_rows(text[], text[], oid[], text[], int[], int[]) from public;
