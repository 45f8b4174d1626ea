//! `realtime.capture_change()` is `security definer` without a `SET search_path` clause
//! (migration 0034): it runs in every writer's transaction, as its owner, with the writer's
//! search path. That is safe only while PostgreSQL resolves no name in it through that path.
//! Two checks: its body, read back from the catalog, qualifies every function, type, operator and
//! table (a later edit that forgets one fails here); and run under a search path whose first
//! schema shadows every function, operator and type the body names, with temporary tables
//! named like the ones it writes, a capture still writes the outbox and pulls the bell, while
//! the same body with one name left unqualified falls into the trap.

mod common;

use std::collections::BTreeSet;

use common::TestDb;
use sqlx::{Connection, PgConnection};

/// Words before `(` that are syntax, not calls.
const SYNTAX: &[&str] = &[
    "values", "coalesce", "if", "elsif", "exists", "operator", "and", "or", "not", "return",
    "array", "row",
];
/// Words after an explicit operator, or syntax, before `(`.
const AFTER_OPERATOR: &[&str] = &["all", "any", "some"];
/// `pg_catalog` functions that look up the object a text argument names through the search path
/// (by prefix).
const NAME_TAKING: &[&str] = &[
    "nextval",
    "currval",
    "setval",
    "to_reg",
    "has_",
    "pg_get_serial_sequence",
    "pg_relation_size",
    "pg_total_relation_size",
    "pg_table_size",
    "pg_indexes_size",
];
/// Words that make PostgreSQL look up an operator (`=`, or the type's comparison) by name.
const IMPLICIT_OPERATORS: &[&str] = &[
    "in", "between", "like", "ilike", "similar", "distinct", "nullif",
];

/// The body with comments removed and every string literal emptied.
fn strip(body: &str) -> String {
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for c in chars.by_ref() {
                    if c == '\n' {
                        out.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut last = ' ';
                for c in chars.by_ref() {
                    if last == '*' && c == '/' {
                        break;
                    }
                    last = c;
                }
                out.push(' ');
            }
            '\'' => {
                // '' inside a literal is a quote; the literal ends at a lone one.
                loop {
                    match chars.next() {
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                        }
                        Some('\'') | None => break,
                        Some(_) => {}
                    }
                }
                out.push_str("''");
            }
            c => out.push(c),
        }
    }
    out
}

/// A token of the stripped body: a (possibly qualified) name, or one other character.
fn tokens(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len()
                && (chars[i].is_alphanumeric() || chars[i] == '_' || chars[i] == '$' || {
                    // A dot between two names qualifies the second.
                    chars[i] == '.'
                        && chars
                            .get(i + 1)
                            .is_some_and(|n| n.is_alphabetic() || *n == '_')
                })
            {
                i += 1;
            }
            out.push(chars[start..i].iter().collect::<String>().to_lowercase());
        } else if c.is_ascii_digit() {
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                i += 1;
            }
            out.push("0".to_owned());
        } else if c == '\'' && chars.get(i + 1) == Some(&'\'') {
            // An emptied literal.
            out.push("''".to_owned());
            i += 2;
        } else {
            if !c.is_whitespace() {
                out.push(c.to_string());
            }
            i += 1;
        }
    }
    out
}

/// Whether `name` is schema-qualified with a schema the function's owner controls.
fn qualified(name: &str) -> bool {
    name.starts_with("pg_catalog.") || name.starts_with("realtime.")
}

/// What in a PL/pgSQL `body` PostgreSQL would resolve through the caller's search path.
fn unqualified(body: &str) -> Vec<String> {
    let t = tokens(&strip(body));
    let mut found = Vec::new();
    let word = |i: usize| t.get(i).map(String::as_str).unwrap_or("");
    let is_name = |s: &str| s.starts_with(|c: char| c.is_alphabetic() || c == '_');
    let mut in_declare = false;
    let mut i = 0;
    while i < t.len() {
        let w = word(i);
        match w {
            "declare" => in_declare = true,
            "begin" => in_declare = false,
            _ => {}
        }
        if in_declare && w == ";" && is_name(word(i + 1)) && word(i + 1) != "begin" {
            // `name type ...;`: the type.
            if !qualified(word(i + 2)) {
                found.push(format!("type {} of {}", word(i + 2), word(i + 1)));
            }
        }
        if w == "declare" && is_name(word(i + 1)) && !qualified(word(i + 2)) {
            found.push(format!("type {} of {}", word(i + 2), word(i + 1)));
        }
        if is_name(w) && word(i + 1) == "(" {
            if w.contains('.') {
                if !qualified(w) {
                    found.push(format!("call of {w}"));
                }
            } else if IMPLICIT_OPERATORS.contains(&w) {
                found.push(format!("operator looked up by `{w}`"));
            } else if !SYNTAX.contains(&w)
                && !AFTER_OPERATOR.contains(&w)
                && !matches!(word(i.wrapping_sub(1)), "into")
            {
                found.push(format!("call of {w}"));
            }
            // A name given as text is looked up through the path: `nextval('seq')`.
            let function = w.trim_start_matches("pg_catalog.");
            if word(i + 2) == "''" && NAME_TAKING.iter().any(|p| function.starts_with(p)) {
                found.push(format!("name given as text to {w}"));
            }
        }
        if w == "execute" {
            found.push("dynamic sql (execute)".to_owned());
        }
        if IMPLICIT_OPERATORS.contains(&w) && word(i + 1) != "(" {
            found.push(format!("operator looked up by `{w}`"));
        }
        if w == "case" && word(i + 1) != "when" {
            found.push("a simple case compares with `=`".to_owned());
        }
        if w == ":" && word(i + 1) == ":" {
            if !qualified(word(i + 2)) {
                found.push(format!("cast to {}", word(i + 2)));
            } else if word(i + 2).starts_with("pg_catalog.reg") {
                // `'name'::regclass` looks the name up through the path.
                found.push(format!("cast to {}", word(i + 2)));
            }
            i += 3;
            continue;
        }
        if matches!(
            w,
            "into" | "from" | "update" | "join" | "using" | "truncate" | "lock"
        ) {
            // The relations named after it, `from a, b` included.
            let mut j = i + 1;
            while matches!(word(j), "table" | "only") {
                j += 1;
            }
            while is_name(word(j)) {
                if !qualified(word(j)) {
                    found.push(format!("relation {}", word(j)));
                }
                j += 1;
                if is_name(word(j)) && !matches!(word(j), "where" | "values" | "default" | "on") {
                    j += 1; // an alias
                }
                if word(j) != "," {
                    break;
                }
                j += 1;
            }
        }
        if w == "operator" && word(i + 1) == "(" {
            // operator(schema.op): the schema must be qualified; skip to the closing parenthesis.
            let mut j = i + 2;
            let mut spelled = String::new();
            while j < t.len() && word(j) != ")" {
                spelled.push_str(word(j));
                j += 1;
            }
            if !qualified(&spelled) {
                found.push(format!("operator({spelled})"));
            }
            i = j + 1;
            continue;
        }
        if w.len() == 1 && "+-*/<>=~!@#%^&|?".contains(w) {
            let assignment = w == "=" && word(i.wrapping_sub(1)) == ":";
            if !assignment {
                found.push(format!("operator {w}"));
            }
        }
        i += 1;
    }
    found
}

/// `capture_change`'s body in the catalog.
async fn body(conn: &mut PgConnection) -> String {
    sqlx::query_scalar(
        "select prosrc from pg_proc where oid = 'realtime.capture_change()'::regprocedure",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

/// The body of `capture_change` as migration 0023 wrote it (with its `SET` clause).
fn body_of_0023() -> String {
    let sql = include_str!("../migrations/0023_compact_capture.sql");
    let start = sql
        .find("create or replace function realtime.capture_change()")
        .unwrap();
    let rest = &sql[start..];
    let open = rest.find("as $$").unwrap() + "as $$".len();
    let close = rest[open..].find("$$;").unwrap();
    rest[open..open + close].to_owned()
}

#[tokio::test]
async fn capture_names_nothing_through_the_search_path() {
    let db = TestDb::new().await;
    let mut conn = db.connect().await;
    let (definer, config): (bool, Option<Vec<String>>) = sqlx::query_as(
        "select prosecdef, proconfig from pg_proc \
         where oid = 'realtime.capture_change()'::regprocedure",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert!(definer);
    assert_eq!(
        config, None,
        "no SET clause: its cost is what migration 0034 removed"
    );
    let found = unqualified(&body(&mut conn).await);
    assert!(
        found.is_empty(),
        "resolved through the search path: {found:?}"
    );

    // The check sees what the body of 0023, safe only by its SET clause, left to the path.
    let old = unqualified(&body_of_0023());
    for expected in [
        "call of current_setting",
        "call of set_config",
        "call of left",
        "call of to_jsonb",
        "cast to oid",
        "type boolean of first",
        "type text of ignored",
    ] {
        assert!(old.iter().any(|f| f == expected), "{expected} in {old:?}");
    }
    assert!(
        old.iter()
            .any(|f| f.starts_with("operator looked up by `in`")),
        "{old:?}"
    );
    // And each kind of lookup a later edit could add.
    for (careless, expected) in [
        (
            "begin perform pg_catalog.nextval('s'); end",
            "name given as text to pg_catalog.nextval",
        ),
        (
            "begin perform 'x'::pg_catalog.regclass; end",
            "cast to pg_catalog.regclass",
        ),
        ("begin execute 'select 1'; end", "dynamic sql (execute)"),
        (
            "begin delete from realtime.changes using realtime.changes a, b; end",
            "relation b",
        ),
        (
            "begin perform x from realtime.changes c, pg_class; end",
            "relation pg_class",
        ),
        (
            "begin perform case x when 1 then 2 end; end",
            "a simple case compares with `=`",
        ),
        (
            "begin if x between 1 and 2 then null; end if; end",
            "operator looked up by `between`",
        ),
        (
            "begin if x + 1 operator(pg_catalog.>) 2 then null; end if; end",
            "operator +",
        ),
    ] {
        let found = unqualified(careless);
        assert!(found.iter().any(|f| f == expected), "{careless}: {found:?}");
    }
}

/// Creates schema `trap`, usable by all, with a function raising `trap: <name>` for each signature of every
/// `pg_catalog` function `body` calls, an operator raising likewise for each operator it names
/// (on the common types), and a domain that admits no value for each type it names; and, in
/// the session of `conn`, an empty temporary table for each `realtime` relation it names.
async fn lay_traps(conn: &mut PgConnection, body: &str) {
    let t = tokens(&strip(body));
    let mut functions = BTreeSet::new();
    let mut types = BTreeSet::new();
    let mut relations = BTreeSet::new();
    let mut operators = BTreeSet::new();
    for (i, w) in t.iter().enumerate() {
        let next = t.get(i + 1).map(String::as_str);
        if let Some(name) = w.strip_prefix("pg_catalog.") {
            if next == Some("(") {
                functions.insert(name.to_owned());
            } else {
                types.insert(name.to_owned());
            }
        }
        if let Some(name) = w.strip_prefix("realtime.") {
            relations.insert(name.to_owned());
        }
        if w == "operator" && next == Some("(") {
            let mut j = i + 2;
            let mut spelled = String::new();
            while t.get(j).is_some_and(|w| w != ")") {
                spelled.push_str(&t[j]);
                j += 1;
            }
            operators.insert(spelled.trim_start_matches("pg_catalog.").to_owned());
        }
    }
    assert!(functions.len() >= 5 && !operators.is_empty() && !types.is_empty());
    // Usable by everyone, the function's owner included: a schema the owner may not use is left
    // out of its search path, and a trap there would catch nothing.
    for sql in ["create schema trap", "grant usage on schema trap to public"] {
        sqlx::query(sql).execute(&mut *conn).await.unwrap();
    }
    for name in &functions {
        let signatures: Vec<(String, String)> = sqlx::query_as(
            "select pg_get_function_identity_arguments(oid), pg_get_function_result(oid) \
             from pg_proc where pronamespace = 'pg_catalog'::regnamespace and proname = $1 \
               and prokind = 'f'",
        )
        .bind(name)
        .fetch_all(&mut *conn)
        .await
        .unwrap();
        assert!(!signatures.is_empty(), "{name}");
        for (args, result) in signatures {
            sqlx::query(&format!(
                "create function trap.{name}({args}) returns {result} language plpgsql \
                 as $t$ begin raise exception 'trap: {name}'; end $t$"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    for (k, op) in operators.iter().enumerate() {
        for ty in ["text", "bool", "int4", "int8", "oid", "jsonb"] {
            sqlx::query(&format!(
                "create function trap.op_{k}_{ty}(a pg_catalog.{ty}, b pg_catalog.{ty}) \
                 returns pg_catalog.bool language plpgsql \
                 as $t$ begin raise exception 'trap: operator {op}'; end $t$"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
            sqlx::query(&format!(
                "create operator trap.{op} (leftarg = pg_catalog.{ty}, rightarg = pg_catalog.{ty}, \
                 function = trap.op_{k}_{ty})"
            ))
            .execute(&mut *conn)
            .await
            .unwrap();
        }
    }
    for ty in &types {
        sqlx::query(&format!(
            "create domain trap.{ty} as pg_catalog.{ty} check (false)"
        ))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    for rel in &relations {
        sqlx::query(&format!("create temporary table {rel} ()"))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_hostile_search_path_reaches_nothing_in_the_capture() {
    let db = TestDb::new().await;
    common::realtime_table(&db, "guarded", "n bigint").await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let body = body(&mut conn).await;
    lay_traps(&mut conn, &body).await;
    sqlx::query("set search_path = trap, pg_catalog, public")
        .execute(&mut conn)
        .await
        .unwrap();

    // The function as migrated: the change reaches the real outbox and pulls the real bell.
    let mut tx = conn.begin().await.unwrap();
    sqlx::query("insert into public.guarded (n) values (7)")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (captured, pulled): (i64, i64) = sqlx::query_as(
        "select (select count(*) from realtime.changes \
                 where relid operator(pg_catalog.=) 'public.guarded'::pg_catalog.regclass), \
                (select count(*) from realtime.bell_pulls)",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!((captured, pulled), (1, 1));
    tx.rollback().await.unwrap();

    // The same body with any one name left to the search path falls into a trap: the traps are
    // live.
    for (qualified, bare) in [
        ("pg_catalog.left(", "left("),
        ("pg_catalog.to_jsonb(new)", "to_jsonb(new)"),
        ("pg_catalog.current_setting(", "current_setting("),
        (
            "pg_catalog.pg_try_advisory_lock_shared(",
            "pg_try_advisory_lock_shared(",
        ),
        ("operator(pg_catalog.<>)", "<>"),
        ("::pg_catalog.oid", "::oid"),
        ("bell pg_catalog.text", "bell text"),
    ] {
        let careless = body.replacen(qualified, bare, 1);
        assert_ne!(careless, body, "{qualified} is in the body");
        let mut tx = conn.begin().await.unwrap();
        // Set, so that the comparisons on it are evaluated, not only planned.
        sqlx::query("set local realtime.bell = on")
            .execute(&mut *tx)
            .await
            .unwrap();
        sqlx::query(&format!(
            "create or replace function realtime.capture_change() returns trigger \
             language plpgsql security definer as $body${careless}$body$"
        ))
        .execute(&mut *tx)
        .await
        .unwrap();
        let e = sqlx::query("insert into public.guarded (n) values (8)")
            .execute(&mut *tx)
            .await
            .expect_err(bare);
        let e = e.to_string();
        // A trap function or operator raises; a trap domain admits no value.
        assert!(
            e.contains("trap: ") || e.contains("violates check constraint"),
            "{bare}: {e}"
        );
        tx.rollback().await.unwrap();
    }
}
