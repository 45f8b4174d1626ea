-- the outbox read answers, for each table it returns rows of, what that table shows each role
-- the gateway names, whatever the row (realtime.table_sight): a table without row-level
-- security, or one a role may not read, then needs no row-level security check of its own,
-- and the change reaches its subscribers one round trip sooner. tables whose policies check
-- the rows still go through realtime.visible_rows (0026).
--
-- realtime.read_changes(text, text[], int8, int8) stays as 0025 made it, for nodes of an
-- earlier version sharing the database during an upgrade.

-- realtime.table_sight that never raises: an error (a role or schema dropped while the read
-- runs, say) is the answer's error text, so it costs its own table and role an error entry,
-- never the read.
create or replace function realtime.read_sight(
    relid oid,
    role_name text,
    out error text,
    out visible boolean,
    out columns text[]
)
language plpgsql
stable
set search_path = pg_catalog, pg_temp
as $$
#variable_conflict use_column
begin
    select s.error, s.visible, s.columns into error, visible, columns
    from realtime.table_sight(relid, role_name) s;
exception when others then
    error := sqlerrm;
    visible := null;
    columns := null;
end
$$;

revoke all on function realtime.read_sight(oid, text) from public;

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
    -- as 0025's read: one statement, so one snapshot, the one returned in the row of part 0;
    -- each branch is ordered by an indexed column with a limit. then part 4: per distinct
    -- table of the rows read and per role, the table-level answer (visible true or false, the
    -- columns the role may select, or an error; neither visible nor error when the policies
    -- must check each row).
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
        cross join lateral realtime.read_sight(t.relid, r.name) s;
end
$$;

revoke all on function realtime.read_changes(text, text[], int8, int8, text[]) from public;
