//! Column types: the public [`Column`] and the internal `SqlType` a column's `pg_type.typname`
//! (or SQL spelling) is read as, which decides how values are cast, compared and matched.

/// A table column as the router knows it from the catalog.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Column {
    /// The column name, matched exactly against the filter's column names and record keys.
    pub name: String,
    /// PostgreSQL `pg_type.typname`: `int4`, `text`, `timestamptz`, `_int4`, an enum's name…
    pub type_name: String,
}

impl Column {
    /// A column with the given name and `pg_type.typname`.
    pub fn new(name: impl Into<String>, type_name: impl Into<String>) -> Column {
        Column {
            name: name.into(),
            type_name: type_name.into(),
        }
    }
}

/// A column type as far as filtering cares.
#[derive(Debug, Clone)]
pub(super) struct SqlType {
    /// The name used in error texts.
    pub(super) name: String,
    pub(super) kind: Kind,
}

#[derive(Debug, Clone)]
pub(super) enum Kind {
    Int { min: i64, max: i64 },
    Float { single: bool },
    Numeric,
    Bool,
    Text(TextKind),
    Uuid,
    Date,
    Time,
    TimeTz,
    Timestamp,
    TimestampTz,
    Json,
    Array(Box<SqlType>),
    Other,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TextKind {
    /// `text`, `varchar`, `name`, `"char"`.
    Plain,
    /// `bpchar`: trailing spaces are insignificant.
    Blank,
    /// `citext`: case-insensitive.
    Citext,
}

impl SqlType {
    pub(super) fn from_type_name(type_name: &str) -> SqlType {
        let normalized = normalize_type_name(type_name);
        let mut base = normalized.as_str();
        let mut is_array = false;
        while let Some(element) = base.strip_suffix("[]") {
            base = element.trim_end();
            is_array = true;
        }
        if !is_array {
            if let Some(element) = base.strip_prefix('_').filter(|e| !e.is_empty()) {
                base = element;
                is_array = true;
            }
        }
        let element_kind = scalar_kind(base);
        if is_array {
            let element = SqlType {
                name: base.to_owned(),
                kind: element_kind,
            };
            SqlType {
                name: type_name.to_owned(),
                kind: Kind::Array(Box::new(element)),
            }
        } else {
            SqlType {
                name: type_name.to_owned(),
                kind: element_kind,
            }
        }
    }
}

/// Lowercases, drops type modifiers (`(10)`, `(10,2)`) and quotes, collapses whitespace.
fn normalize_type_name(type_name: &str) -> String {
    let mut out = String::with_capacity(type_name.len());
    let mut depth = 0usize;
    for c in type_name.chars() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '"' => {}
            c if depth == 0 => out.push(c.to_ascii_lowercase()),
            _ => {}
        }
    }
    out.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn scalar_kind(name: &str) -> Kind {
    match name {
        "int2" | "smallint" => Kind::Int {
            min: i16::MIN.into(),
            max: i16::MAX.into(),
        },
        "int4" | "integer" | "int" => Kind::Int {
            min: i32::MIN.into(),
            max: i32::MAX.into(),
        },
        "int8" | "bigint" => Kind::Int {
            min: i64::MIN,
            max: i64::MAX,
        },
        "oid" => Kind::Int {
            min: 0,
            max: u32::MAX.into(),
        },
        "float4" | "real" => Kind::Float { single: true },
        "float8" | "double precision" => Kind::Float { single: false },
        "numeric" | "decimal" => Kind::Numeric,
        "bool" | "boolean" => Kind::Bool,
        "text" | "varchar" | "character varying" | "name" | "char" => Kind::Text(TextKind::Plain),
        "bpchar" | "character" => Kind::Text(TextKind::Blank),
        "citext" => Kind::Text(TextKind::Citext),
        "uuid" => Kind::Uuid,
        "date" => Kind::Date,
        "time" | "time without time zone" => Kind::Time,
        "timetz" | "time with time zone" => Kind::TimeTz,
        "timestamp" | "timestamp without time zone" => Kind::Timestamp,
        "timestamptz" | "timestamp with time zone" => Kind::TimestampTz,
        "json" | "jsonb" => Kind::Json,
        _ => Kind::Other,
    }
}

/// Whether `lt`/`lte`/`gt`/`gte` are implemented for the type.
pub(super) fn is_orderable(kind: &Kind) -> bool {
    match kind {
        Kind::Json => false,
        Kind::Array(element) => is_orderable(&element.kind),
        _ => true,
    }
}

/// Whether LIKE and regex operators apply (text types, or the text form of other types).
pub(super) fn takes_patterns(kind: &Kind) -> bool {
    matches!(kind, Kind::Text(_) | Kind::Other)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fanout::filter::test_support::*;
    use crate::fanout::filter::Filter;

    #[test]
    fn text_compares_bytes_and_supports_patterns() {
        check_all(
            "title",
            &[
                ("eq.hello", json!("hello"), true),
                ("eq.hello", json!("Hello"), false),
                ("eq. padded ", json!(" padded"), true),
                ("neq.hello", json!("world"), true),
                ("neq.hello", json!("hello"), false),
                // Byte order ("C" collation): uppercase sorts before lowercase.
                ("lt.a", json!("B"), true),
                ("lt.b", json!("b"), false),
                ("lte.abc", json!("abc"), true),
                ("lte.abc", json!("abd"), false),
                ("gt.abc", json!("abd"), true),
                ("gt.é", json!("z"), false),
                ("gte.abc", json!("abc"), true),
                ("gte.abc", json!("ab"), false),
                ("in.(hello,world)", json!("world"), true),
                ("in.(hello,world)", json!("World"), false),
                ("like.he%", json!("hello"), true),
                ("like.he%", json!("Hello"), false),
                ("like.h_llo", json!("hallo"), true),
                ("like.h_llo", json!("hllo"), false),
                (r"like.100\%", json!("100%"), true),
                (r"like.100\%", json!("1000"), false),
                ("like.%.txt", json!("a.txt"), true),
                ("like.%.txt", json!("atxt"), false),
                ("like.a%", json!("a\nb"), true),
                ("ilike.HE%", json!("hello"), true),
                ("ilike.HE%", json!("yellow"), false),
                ("ilike.ÉTÉ", json!("été"), true),
                ("match.^h.*o$", json!("hello"), true),
                ("match.ell", json!("hello"), true),
                ("match.^ell", json!("hello"), false),
                ("match.a.b", json!("a\nb"), true),
                (r"match.^\d+$", json!("123"), true),
                ("imatch.^HEL", json!("hello"), true),
                ("imatch.^x", json!("hello"), false),
                ("isdistinct.hello", json!("world"), true),
                ("isdistinct.hello", json!("hello"), false),
                ("is.null", json!(""), false),
            ],
        );
        check_all(
            "vc",
            &[("eq.x", json!("x"), true), ("gt.x", json!("x"), false)],
        );
    }

    #[test]
    fn bpchar_ignores_padding_and_citext_ignores_case() {
        check_all(
            "code",
            &[
                ("eq.ab", json!("ab   "), true),
                ("eq.ab  ", json!("ab"), true),
                ("eq.ab", json!(" ab"), false),
                ("lt.ab", json!("ab "), false),
                ("like.ab", json!("ab  "), true),
                ("match.b$", json!("ab  "), true),
                ("in.(ab)", json!("ab "), true),
            ],
        );
        check_all(
            "email",
            &[
                ("eq.Bob@X.io", json!("bob@x.io"), true),
                ("eq.Bob@X.io", json!("rob@x.io"), false),
                ("like.BOB%", json!("bob@x.io"), true),
                ("match.^BOB", json!("bob"), true),
                ("in.(ALICE,BOB)", json!("bob"), true),
                ("lt.B", json!("a"), true),
            ],
        );
    }

    #[test]
    fn other_types_compare_their_text_form() {
        check_all(
            "mood",
            &[
                ("eq.happy", json!("happy"), true),
                ("eq.happy", json!("sad"), false),
                ("neq.happy", json!("sad"), true),
                ("lt.sad", json!("happy"), true),
                ("gt.sad", json!("happy"), false),
                ("in.(sad,ok)", json!("happy"), false),
                ("like.ha%", json!("happy"), true),
                ("imatch.^HA", json!("happy"), true),
                ("isdistinct.happy", json!("happy"), false),
            ],
        );
    }

    #[test]
    fn type_names_accept_sql_spellings_and_modifiers() {
        let cols = [
            Column::new("a", "character varying(10)"),
            Column::new("b", "timestamp(3) with time zone"),
            Column::new("c", "INTEGER[]"),
            Column::new("d", "numeric(10,2)"),
        ];
        let bound = Filter::parse(r#"a=like.x%,b=eq.2025-05-01T12:00:00Z,c=eq."{1}",d=eq.1.005"#)
            .unwrap()
            .bind(&cols)
            .unwrap();
        let row = json!({"a": "xy", "b": "2025-05-01T14:00:00+02:00", "c": [1], "d": 1.005});
        assert!(bound.matches(row.as_object().unwrap()));
    }
}
