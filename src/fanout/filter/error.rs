//! Errors of the two fallible steps: [`ParseError`] for `Filter::parse` and [`BindError`] for
//! `Filter::bind`, plus the internal `CastFail` a single cast reports before it is given its
//! type name and value.

use super::inspect::inspect_pieces;

/// Why a `filter` text could not be parsed. The `Display` text is what docs/protocol.md 6.5 sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// An `in` value not wrapped in parentheses.
    #[error("Error parsing `filter` params: `in` filter value must be wrapped by parentheses")]
    InNotParenthesized,
    /// A blank segment, e.g. `id=eq.1,,x=eq.2`.
    #[error(
        "Error parsing `filter` params: filter must not contain empty segments (check for extra commas)"
    )]
    EmptySegment,
    /// A segment without `=`, without `.` after the operator, or with an unknown operator.
    #[error("Error parsing `filter` params: {}", inspect_pieces(.pieces))]
    Malformed {
        /// The pieces upstream reports, rendered like Elixir's `inspect/1` of a list.
        pieces: Vec<String>,
    },
    /// An `in` list PostgreSQL would reject as an array literal, e.g. `(1,,2)`.
    #[error("Error parsing `filter` params: malformed array literal: \"{literal}\"")]
    MalformedList {
        /// The list as the array literal upstream builds, e.g. `{1,,2}`.
        literal: String,
    },
}

/// Why a parsed [`Filter`](super::Filter) cannot be applied to a table's columns. Texts mirror
/// PostgreSQL's wording, with the column's type name as given in
/// [`Column::type_name`](super::Column::type_name).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The filter names a column the table does not have.
    #[error("invalid column for filter {name}")]
    UnknownColumn {
        /// The column name as written in the filter.
        name: String,
    },
    /// A value that does not parse as the column's type.
    #[error("invalid input syntax for type {type_name}: \"{value}\"")]
    InvalidInput {
        /// The type the value was cast to.
        type_name: String,
        /// The value as written (unquoted).
        value: String,
    },
    /// A number outside the range of the column's type.
    #[error("value \"{value}\" is out of range for type {type_name}")]
    OutOfRange {
        /// The type the value was cast to.
        type_name: String,
        /// The value as written (unquoted).
        value: String,
    },
    /// A date or time with an impossible field (month 13, hour 25, offset +16…).
    #[error("date/time field value out of range: \"{value}\"")]
    DateTimeOutOfRange {
        /// The value as written (unquoted).
        value: String,
    },
    /// A value for an array column that is not a well-formed array literal.
    #[error("malformed array literal: \"{value}\"")]
    MalformedArray {
        /// The value as written (unquoted).
        value: String,
    },
    /// An operator PostgreSQL does not define for the column's type (LIKE on `int4`, …).
    #[error("operator does not exist: {type_name} {operator} {type_name}")]
    OperatorDoesNotExist {
        /// The SQL operator, e.g. `~~`.
        operator: &'static str,
        /// The column's type.
        type_name: String,
    },
    /// An operator PostgreSQL defines but this module does not implement (ordering of jsonb).
    #[error("operator {operator} is not supported for type {type_name}")]
    UnsupportedOperator {
        /// The SQL operator, e.g. `<`.
        operator: &'static str,
        /// The column's type.
        type_name: String,
    },
    /// `is.true`, `is.false` or `is.unknown` on a column that is not `bool`.
    #[error("argument of IS {keyword} must be type boolean, not type {type_name}")]
    IsNotBoolean {
        /// `TRUE`, `FALSE` or `UNKNOWN`.
        keyword: &'static str,
        /// The column's type.
        type_name: String,
    },
    /// An `is` value other than `null`, `true`, `false` or `unknown`.
    #[error("invalid value for is filter: \"{value}\" (expected null, true, false or unknown)")]
    InvalidIsValue {
        /// The value as written (unquoted).
        value: String,
    },
    /// A LIKE/ILIKE pattern ending in a lone `\`.
    #[error("LIKE pattern must not end with escape character")]
    LikeTrailingEscape,
    /// A `match`/`imatch` pattern the regex engine rejects.
    #[error("invalid regular expression: {detail}")]
    InvalidRegex {
        /// The engine's explanation.
        detail: String,
    },
}

/// Why a single cast failed; turned into a [`BindError`] with the type name and value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum CastFail {
    Syntax,
    Range,
    DateTimeRange,
}

impl CastFail {
    pub(super) fn into_error(self, type_name: &str, value: &str) -> BindError {
        match self {
            CastFail::Syntax => BindError::InvalidInput {
                type_name: type_name.to_owned(),
                value: value.to_owned(),
            },
            CastFail::Range => BindError::OutOfRange {
                type_name: type_name.to_owned(),
                value: value.to_owned(),
            },
            CastFail::DateTimeRange => BindError::DateTimeOutOfRange {
                value: value.to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::fanout::filter::test_support::bind_err;

    #[test]
    fn bind_errors_mirror_postgres_wording() {
        let cases = [
            ("nope=eq.1", "invalid column for filter nope"),
            ("id=eq.abc", r#"invalid input syntax for type int4: "abc""#),
            ("id=eq.", r#"invalid input syntax for type int4: """#),
            ("id=eq.1.5", r#"invalid input syntax for type int4: "1.5""#),
            ("id=in.(1,x)", r#"invalid input syntax for type int4: "x""#),
            ("small=eq.40000", r#"value "40000" is out of range for type int2"#),
            ("id=eq.2147483648", r#"value "2147483648" is out of range for type int4"#),
            (
                "big=eq.9223372036854775808",
                r#"value "9223372036854775808" is out of range for type int8"#,
            ),
            ("obj=eq.-1", r#"value "-1" is out of range for type oid"#),
            ("amount=eq.1.2.3", r#"invalid input syntax for type numeric: "1.2.3""#),
            ("ratio=eq.1e400", r#"value "1e400" is out of range for type float8"#),
            ("r4=eq.1e39", r#"value "1e39" is out of range for type float4"#),
            ("ratio=eq.abc", r#"invalid input syntax for type float8: "abc""#),
            ("done=eq.maybe", r#"invalid input syntax for type bool: "maybe""#),
            ("uid=eq.not-a-uuid", r#"invalid input syntax for type uuid: "not-a-uuid""#),
            ("day=eq.2025-13-01", r#"date/time field value out of range: "2025-13-01""#),
            ("day=eq.2025-02-30", r#"date/time field value out of range: "2025-02-30""#),
            ("day=eq.yesterday", r#"invalid input syntax for type date: "yesterday""#),
            (
                "at=eq.2025-05-01 12:00 Europe/Paris",
                r#"invalid input syntax for type timestamptz: "2025-05-01 12:00 Europe/Paris""#,
            ),
            ("local=eq.12:00", r#"invalid input syntax for type timestamp: "12:00""#),
            ("clock=eq.25:00", r#"date/time field value out of range: "25:00""#),
            ("doc=eq.{oops", r#"invalid input syntax for type jsonb: "{oops""#),
            (r#"nums=eq."{1,{2}}""#, r#"malformed array literal: "{1,{2}}""#),
            (r#"nums=eq."{{1},{2,3}}""#, r#"malformed array literal: "{{1},{2,3}}""#),
            ("nums=eq.1", r#"malformed array literal: "1""#),
            (r#"nums=eq."{1,x}""#, r#"invalid input syntax for type int4: "x""#),
            ("title=match.(", "invalid regular expression: unclosed group"),
            (r#"title=imatch."a{2,1}""#, "invalid regular expression: invalid repetition count range, the start must be <= the end"),
            (r"title=like.abc\", "LIKE pattern must not end with escape character"),
            ("id=like.1%", "operator does not exist: int4 ~~ int4"),
            ("uid=ilike.a%", "operator does not exist: uuid ~~* uuid"),
            ("at=match.2025", "operator does not exist: timestamptz ~ timestamptz"),
            ("doc=imatch.a", "operator does not exist: jsonb ~* jsonb"),
            ("id=is.true", "argument of IS TRUE must be type boolean, not type int4"),
            ("title=is.unknown", "argument of IS UNKNOWN must be type boolean, not type text"),
            (
                "done=is.maybe",
                r#"invalid value for is filter: "maybe" (expected null, true, false or unknown)"#,
            ),
            ("doc=lt.1", "operator < is not supported for type jsonb"),
            ("raw=gte.1", "operator >= is not supported for type json"),
        ];
        for (filter, want) in cases {
            assert_eq!(bind_err(filter), want, "{filter}");
        }
    }
}
