//! Postgres Changes filters: the `filter` grammar of PROTOCOL.md 6.2 and the row predicate.
//!
//! This module owns stage 3 of the data flow, routing/filtering
//! (listener -> decode -> **routing/filtering** -> per-connection queue -> socket writer). The
//! router hands it a subscription's `filter` text once, when the subscription is created, and
//! then asks it for every captured row change whether the row matches. It is pure: no I/O, no
//! clock, no shared state. The router decides which row to pass (the old row for DELETE).
//!
//! # Life of a filter
//!
//! 1. [`Filter::parse`] turns the text into a type-free [`Filter`]. Its errors ([`ParseError`])
//!    print the ``Error parsing `filter` params: …`` texts of PROTOCOL.md 6.2, which 6.5 sends
//!    as a `system` message.
//! 2. [`Filter::bind`] checks the filter against the table's [`Column`]s: every column must exist,
//!    every value is cast to its column's type once, the operator must suit the type, LIKE
//!    patterns and regexes are compiled once, and `in` lists become hash sets ([`BindError`]).
//! 3. [`BoundFilter::matches`] evaluates a record shaped like `to_jsonb(row)`. It never panics
//!    and never re-parses the filter; an `in` list costs one hash lookup whatever its length.
//!
//! # Grammar (PROTOCOL.md 6.2)
//!
//! - The whole text is trimmed; an empty text is a filter without conditions.
//! - Conditions are separated by top-level commas and AND-ed. Splitting follows upstream byte by
//!   byte: `(` opens a level and `)` closes one (never below zero), and a `"` opens a quoted run
//!   only right after `.`, `(` or `,`. Inside a quoted run `\` takes the next character as is
//!   and the next `"` closes the run. A comma splits only outside parentheses and quoted runs.
//! - Each segment is trimmed (an empty one is an error) and split at its first `=` into column
//!   and rest (the column is taken verbatim). A leading `not.` on the rest negates the
//!   condition. The rest is split at its first `.` into operator and value. Operators are
//!   case-sensitive: `eq neq lt lte gt gte in like ilike is match imatch isdistinct`.
//! - Value of every operator but `in`: if the whole value is one double-quoted string
//!   (`"a,b"`, `"say \"hi\""`), the quotes are removed and each `\x` becomes `x`; any other value,
//!   including a malformed quoted one such as `"a"b`, is kept verbatim. A value with a comma
//!   outside parentheses (a JSON object, an array literal) must be quoted, as upstream requires:
//!   `doc=eq."{\"a\":1,\"b\":2}"`, `tags=eq."{a,b}"`.
//! - `in` value: must be `(` … `)`. Like upstream, `(…)` becomes the PostgreSQL array literal
//!   `{…}`, read with PostgreSQL's array rules: elements split on commas, each either
//!   double-quoted (`\` escapes the next character) or unquoted (surrounding whitespace dropped,
//!   `\` escapes, the unquoted word `NULL` in any case is a NULL element); `()` is empty. A list
//!   that PostgreSQL would reject (`(1,,2)`, `(a"b")`, nested braces) is
//!   [`ParseError::MalformedList`]; upstream reports it later, as a database exception.
//!
//! Error details for a missing `=`, a missing `.` or an unknown operator mimic Elixir's
//! `inspect/1` of the pieces upstream split off: the whole segment when it has no `=`; the part
//! after `=` (and after `not.`) when it has no `.`; `[operator, value]` for an unknown operator.
//! Each piece is rendered as Elixir renders a binary: in double quotes, with `"` `\` `#{` and
//! the control characters `\a \b \d \e \f \n \r \t \v` escaped, cut after 4096 characters with
//! ` <> ...` appended; a piece with any other control character (not printable for Elixir)
//! becomes a byte list `<<104, 1>>` (at most 50 bytes, then `...`). Pieces are joined by `, `
//! inside `[` `]`, and like Elixir's inspect at width 80, the space before the second piece
//! becomes a line break plus one space when that piece and the closing `]` would pass column 80.
//! Byte-list pieces are always laid out on one line (Elixir lays those out differently).
//!
//! # Semantics per column type
//!
//! The type is the column's `pg_type.typname` (SQL spellings such as `integer`,
//! `character varying(10)` or `timestamp with time zone` are accepted too). The filter value is
//! cast to it as PostgreSQL would (`invalid input syntax …` otherwise); record values are read
//! from their `to_jsonb` form, and string renderings of the same value are accepted as well
//! (for example `"5"` or `"NaN"` for numbers, `"t"` for booleans, `"{1,2}"` for arrays).
//!
//! - `int2` `int4` `int8` `oid`: exact 64-bit integers (an int8 beyond 2^53 stays exact). Input
//!   is decimal digits with an optional sign and surrounding whitespace, range-checked per type
//!   (the PostgreSQL 16 hex/octal/binary and `_` forms are not accepted).
//! - `float4` `float8`: IEEE doubles (float4 values rounded to single precision on both sides),
//!   ordered like PostgreSQL: NaN equals NaN and sorts above everything, `-0` equals `0`.
//! - `numeric`: exact decimals of any size (no float rounding), trailing zeros insignificant
//!   (`1.10` = `1.1`), with `NaN` and `±Infinity` ordered as PostgreSQL does. Record numbers are
//!   read from serde_json's rendering, which is exact unless serde_json already rounded a huge
//!   or long number to an f64.
//! - `bool`: everything `boolin` accepts (`t`, `true`, `yes`, `on`, `1`, unique prefixes…);
//!   `false < true`.
//! - `text` `varchar` `name` `char`: strings compared byte by byte, which is PostgreSQL's `C`
//!   collation; a database using a linguistic collation may order differently. `bpchar` ignores
//!   trailing spaces; `citext` compares lowercased and its LIKE/regex are case-insensitive.
//! - `uuid`: 128-bit values, so case, braces and hyphen placement do not matter.
//! - `timestamptz`: instants: `2025-05-01 12:00:00+00`, `2025-05-01T12:00:00Z` and
//!   `2025-05-01T14:00:00+02:00` are equal. Accepted input: `YYYY-MM-DD`, then optionally `T` or
//!   spaces and `HH:MM[:SS[.fraction]]` (rounded to microseconds), then optionally `Z`, `UTC`,
//!   `GMT` or a numeric offset (`+HH`, `+HHMM`, `+HH:MM`, `+HH:MM:SS`); `infinity`, `-infinity`,
//!   `epoch`. Without an offset the time is read as UTC (the session time zone is assumed to be
//!   UTC). Named zones (`Europe/Paris`, `CET`) and `now`/`today` are rejected.
//! - `timestamp` `date` `time`: naive values from the same syntax, offsets ignored as PostgreSQL
//!   ignores them for these types. `timetz`: ordered by UTC time and then by offset, so, as in
//!   PostgreSQL, `12:00+00` and `13:00+01` are not equal.
//! - `json` `jsonb`: JSON equality: object key order is irrelevant and numbers compare as
//!   numerics (`1` = `1.0`). Only `eq`, `neq`, `in`, `isdistinct` and `is.null` are accepted;
//!   PostgreSQL has no `json = json` at all, and jsonb ordering is not implemented.
//! - arrays (`_int4`, `int4[]`): PostgreSQL array literals (`{1,2}`, `{{1,2},{3,4}}`,
//!   `{"a b",NULL}`) compared element by element with the element type's rules, NULL elements
//!   equal to each other and sorting last, then by length and dimensions, like `array_cmp`.
//! - every other type (enums, `interval`, `inet`, …): the text form. Equality is exact text and
//!   ordering is byte order, so enum ordering does not follow the enum's declaration order.
//!
//! # Operators
//!
//! `eq neq lt lte gt gte` compare as above. `in` is set membership; a NULL element makes a
//! miss unknown, which fails with or without `not.` (SQL `x = ANY('{1,NULL}')`).
//! `like`/`ilike` use `%`, `_` and `\` escapes over the whole value (ILIKE folds case with
//! Unicode simple case folding). `match`/`imatch` search for a regex anywhere in the value with
//! the `regex` crate instead of PostgreSQL's ARE engine. They agree on classes, repetition,
//! anchors, `(?i)` and `\d \w \s`, and `.` matches newlines as in PostgreSQL. Not available:
//! back-references, lookahead, `\m \M \y \Y \Z`, `[[:<:]]`, `***=` directors and ARE-only
//! options such as `(?b)`; a pattern using them is normally a [`BindError::InvalidRegex`].
//! Different meaning: `\b` is a word boundary here but a backspace in ARE. Pattern operators
//! need a text-like column, or fall back to the text form of an "other" type; elsewhere they
//! fail as in PostgreSQL (`operator does not exist`). `is` takes `null`, `true`, `false` or
//! `unknown` in any case, the last three only on `bool` columns. `isdistinct` is `IS DISTINCT
//! FROM`.
//!
//! # NULL
//!
//! A JSON `null` and a missing key are NULL. Kept from upstream for compatibility
//! (PROTOCOL.md 6.2): on a NULL value, `eq neq lt lte gt gte in like ilike match imatch` pass,
//! with or without `not.`. `is` and `isdistinct` use real NULL semantics: `is.null` and
//! `is.unknown` are true, `is.true`/`is.false` false, `isdistinct.x` true; `not.` inverts them.
//! A non-NULL record value that cannot be read as the column's type (a string in an `int4`
//! column, …) fails its condition with or without `not.`.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::hash::{Hash, Hasher};
use std::str::FromStr;

use chrono::{DateTime, NaiveDate};
use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

/// The most dimensions an array value may have (PostgreSQL's `MAXDIM`).
const MAX_ARRAY_DIMS: usize = 6;
/// How deeply nested a JSON value may be before it is treated as unreadable; keeps the
/// recursive conversion far from the stack limit.
const MAX_JSON_DEPTH: usize = 512;
/// Compiled-program size limit for LIKE patterns and regexes: generous for any real pattern,
/// small enough that one subscription cannot make the gateway allocate without bound.
const REGEX_SIZE_LIMIT: usize = 1 << 20;
/// Elixir's default `printable_limit` for inspected binaries.
const INSPECT_PRINTABLE_LIMIT: usize = 4096;
/// Elixir's default `limit` for inspected bitstrings (bytes shown).
const INSPECT_BYTE_LIMIT: usize = 50;
/// Elixir's default inspect width.
const INSPECT_WIDTH: usize = 80;

const US_PER_SEC: i64 = 1_000_000;
const US_PER_DAY: i64 = 86_400 * US_PER_SEC;

// ---------------------------------------------------------------------------------------------
// Errors

/// Why a `filter` text could not be parsed. The `Display` text is what PROTOCOL.md 6.5 sends.
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

/// Why a parsed [`Filter`] cannot be applied to a table's columns. Texts mirror PostgreSQL's
/// wording, with the column's type name as given in [`Column::type_name`].
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
enum CastFail {
    Syntax,
    Range,
    DateTimeRange,
}

impl CastFail {
    fn into_error(self, type_name: &str, value: &str) -> BindError {
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

// ---------------------------------------------------------------------------------------------
// Parsed, type-free filter

/// A filter operator of PROTOCOL.md 6.2.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    /// `eq`: `=`.
    Eq,
    /// `neq`: `<>`.
    Neq,
    /// `lt`: `<`.
    Lt,
    /// `lte`: `<=`.
    Lte,
    /// `gt`: `>`.
    Gt,
    /// `gte`: `>=`.
    Gte,
    /// `in`: membership in a parenthesised list.
    In,
    /// `like`: SQL LIKE.
    Like,
    /// `ilike`: SQL ILIKE.
    Ilike,
    /// `is`: IS NULL / TRUE / FALSE / UNKNOWN.
    Is,
    /// `match`: regex search, `~`.
    Match,
    /// `imatch`: case-insensitive regex search, `~*`.
    Imatch,
    /// `isdistinct`: IS DISTINCT FROM.
    IsDistinct,
}

impl Op {
    /// Every operator, in the order of PROTOCOL.md 6.2.
    pub const ALL: [Op; 13] = [
        Op::Eq,
        Op::Neq,
        Op::Lt,
        Op::Lte,
        Op::Gt,
        Op::Gte,
        Op::In,
        Op::Like,
        Op::Ilike,
        Op::Is,
        Op::Match,
        Op::Imatch,
        Op::IsDistinct,
    ];

    /// The operator's name in filter text, e.g. `isdistinct`.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Eq => "eq",
            Op::Neq => "neq",
            Op::Lt => "lt",
            Op::Lte => "lte",
            Op::Gt => "gt",
            Op::Gte => "gte",
            Op::In => "in",
            Op::Like => "like",
            Op::Ilike => "ilike",
            Op::Is => "is",
            Op::Match => "match",
            Op::Imatch => "imatch",
            Op::IsDistinct => "isdistinct",
        }
    }

    /// Looks an operator up by its exact, lowercase name (`EQ` is not an operator upstream).
    pub fn from_name(name: &str) -> Option<Op> {
        Op::ALL.into_iter().find(|op| op.as_str() == name)
    }

    /// The SQL spelling used in error texts.
    fn sql_symbol(self) -> &'static str {
        match self {
            Op::Eq => "=",
            Op::Neq => "<>",
            Op::Lt => "<",
            Op::Lte => "<=",
            Op::Gt => ">",
            Op::Gte => ">=",
            Op::In => "= ANY",
            Op::Like => "~~",
            Op::Ilike => "~~*",
            Op::Is => "IS",
            Op::Match => "~",
            Op::Imatch => "~*",
            Op::IsDistinct => "IS DISTINCT FROM",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The value side of a [`Condition`], still untyped text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Operand {
    /// The value of every operator but `in`, with its quotes removed.
    Scalar(String),
    /// The elements of an `in` list; `None` is an unquoted `NULL` element.
    List(Vec<Option<String>>),
}

/// One `column=[not.]op.value` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    column: String,
    op: Op,
    negate: bool,
    operand: Operand,
}

impl Condition {
    /// The column name, verbatim (case-sensitive, not trimmed inside the segment).
    pub fn column(&self) -> &str {
        &self.column
    }

    /// The operator.
    pub fn op(&self) -> Op {
        self.op
    }

    /// Whether the operator had the `not.` prefix.
    pub fn is_negated(&self) -> bool {
        self.negate
    }

    /// The value: [`Operand::List`] for `in`, [`Operand::Scalar`] otherwise.
    pub fn operand(&self) -> &Operand {
        &self.operand
    }
}

/// A parsed `filter`: conditions that must all hold. It knows nothing about column types yet;
/// [`Filter::bind`] adds them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    conditions: Vec<Condition>,
}

impl Filter {
    /// Parses a `filter` text with the grammar of PROTOCOL.md 6.2 (see the module docs).
    ///
    /// # Errors
    /// [`ParseError`] for an empty segment, a segment without `=` or `.`, an unknown operator,
    /// an `in` value without parentheses or an `in` list that is not a valid array literal. The
    /// first failing segment decides.
    pub fn parse(text: &str) -> Result<Filter, ParseError> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(Filter::default());
        }
        let conditions = split_top_level(trimmed)
            .into_iter()
            .map(parse_segment)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Filter { conditions })
    }

    /// Whether the filter has no conditions (it then matches every row).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// The conditions, in the order written.
    pub fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    /// The column names the filter references, each once, in order of first use.
    pub fn columns(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for condition in &self.conditions {
            if !out.contains(&condition.column.as_str()) {
                out.push(&condition.column);
            }
        }
        out
    }

    /// Types the filter against a table's columns: looks every column up (by exact name),
    /// casts every value to its column's type once, checks each operator suits the type and
    /// compiles patterns, producing a predicate that is cheap to evaluate per row.
    ///
    /// # Errors
    /// [`BindError`] for an unknown column, a value that does not cast, an operator the type
    /// lacks, a bad `is` value, a bad LIKE pattern or a bad regex. The first failing condition
    /// decides.
    pub fn bind(&self, columns: &[Column]) -> Result<BoundFilter, BindError> {
        let conditions = self
            .conditions
            .iter()
            .map(|condition| bind_condition(condition, columns))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BoundFilter { conditions })
    }
}

impl FromStr for Filter {
    type Err = ParseError;

    fn from_str(text: &str) -> Result<Filter, ParseError> {
        Filter::parse(text)
    }
}

/// Splits at commas outside parentheses and quoted runs, exactly as upstream's
/// `split_top_level` does (see the module docs). Works on bytes: every split point is an ASCII
/// comma, so the slices are valid UTF-8.
fn split_top_level(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut segments = Vec::new();
    let mut depth = 0usize;
    let mut quoted = false;
    let mut prev = 0u8;
    let mut start = 0usize;
    let mut i = 0usize;
    while let Some(&byte) = bytes.get(i) {
        if quoted {
            match (byte, bytes.get(i + 1)) {
                (b'\\', Some(&next)) => {
                    prev = next;
                    i += 2;
                    continue;
                }
                (b'"', _) => quoted = false,
                _ => {}
            }
        } else {
            match byte {
                b'"' if matches!(prev, b'.' | b'(' | b',') => quoted = true,
                b'(' => depth += 1,
                b')' => depth = depth.saturating_sub(1),
                b',' if depth == 0 => {
                    segments.push(&text[start..i]);
                    start = i + 1;
                    prev = 0;
                    i += 1;
                    continue;
                }
                _ => {}
            }
        }
        prev = byte;
        i += 1;
    }
    segments.push(&text[start..]);
    segments
}

fn parse_segment(segment: &str) -> Result<Condition, ParseError> {
    let trimmed = segment.trim();
    if trimmed.is_empty() {
        return Err(ParseError::EmptySegment);
    }
    let Some((column, rest)) = trimmed.split_once('=') else {
        return Err(malformed(&[trimmed]));
    };
    let (negate, op_value) = match rest.strip_prefix("not.") {
        Some(op_value) => (true, op_value),
        None => (false, rest),
    };
    let Some((op_name, value)) = op_value.split_once('.') else {
        return Err(malformed(&[op_value]));
    };
    let Some(op) = Op::from_name(op_name) else {
        return Err(malformed(&[op_name, value]));
    };
    let operand = if op == Op::In {
        let inner = value
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .ok_or(ParseError::InNotParenthesized)?;
        let literal = format!("{{{inner}}}");
        match parse_in_list(&literal) {
            Some(items) => Operand::List(items),
            None => return Err(ParseError::MalformedList { literal }),
        }
    } else {
        Operand::Scalar(unquote_value(value))
    };
    Ok(Condition {
        column: column.to_owned(),
        op,
        negate,
        operand,
    })
}

fn malformed(pieces: &[&str]) -> ParseError {
    ParseError::Malformed {
        pieces: pieces.iter().map(|piece| (*piece).to_owned()).collect(),
    }
}

/// Removes the quotes of a value that is exactly one quoted string; anything else verbatim.
fn unquote_value(value: &str) -> String {
    let Some(rest) = value.strip_prefix('"') else {
        return value.to_owned();
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' if chars.as_str().is_empty() => return out,
            '"' => return value.to_owned(),
            '\\' => match chars.next() {
                Some(escaped) => out.push(escaped),
                None => return value.to_owned(),
            },
            c => out.push(c),
        }
    }
    value.to_owned()
}

/// Reads `{…}` built from an `in` list: a flat PostgreSQL array literal.
fn parse_in_list(literal: &str) -> Option<Vec<Option<String>>> {
    parse_array_literal(literal)?
        .into_iter()
        .map(|item| match item {
            Literal::Item(value) => Some(value),
            Literal::Sub(_) => None,
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL array literals

/// One element of a parsed array literal.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Literal {
    /// A scalar element; `None` is an unquoted `NULL`.
    Item(Option<String>),
    /// A nested `{…}`.
    Sub(Vec<Literal>),
}

fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// Trims the whitespace PostgreSQL's input functions skip (`isspace` in the C locale).
fn trim_pg(text: &str) -> &str {
    text.trim_matches(is_pg_space)
}

/// Parses a one- or multi-dimensional array literal (no `[1:2]=` dimension decoration) into
/// its top-level elements, or `None` where PostgreSQL says "malformed array literal".
fn parse_array_literal(text: &str) -> Option<Vec<Literal>> {
    let mut chars = trim_pg(text).chars().peekable();
    if chars.next()? != '{' {
        return None;
    }
    let items = parse_array_level(&mut chars, 1)?;
    if chars.next().is_some() {
        return None;
    }
    Some(items)
}

fn skip_pg_space(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    while chars.next_if(|c| is_pg_space(*c)).is_some() {}
}

/// Parses the elements after an opening `{` up to and including its `}`.
fn parse_array_level(
    chars: &mut std::iter::Peekable<std::str::Chars<'_>>,
    depth: usize,
) -> Option<Vec<Literal>> {
    let mut items = Vec::new();
    skip_pg_space(chars);
    if chars.next_if_eq(&'}').is_some() {
        return Some(items);
    }
    loop {
        skip_pg_space(chars);
        match *chars.peek()? {
            '{' => {
                if depth >= MAX_ARRAY_DIMS {
                    return None;
                }
                chars.next();
                items.push(Literal::Sub(parse_array_level(chars, depth + 1)?));
            }
            '"' => {
                chars.next();
                let mut value = String::new();
                loop {
                    match chars.next()? {
                        '\\' => value.push(chars.next()?),
                        '"' => break,
                        c => value.push(c),
                    }
                }
                items.push(Literal::Item(Some(value)));
            }
            _ => {
                let mut value = String::new();
                // Length of `value` up to its last character that is not unescaped whitespace.
                let mut kept = 0usize;
                let mut escaped = false;
                loop {
                    match *chars.peek()? {
                        ',' | '}' => break,
                        '{' | '"' => return None,
                        '\\' => {
                            chars.next();
                            value.push(chars.next()?);
                            kept = value.len();
                            escaped = true;
                        }
                        c => {
                            chars.next();
                            value.push(c);
                            if !is_pg_space(c) {
                                kept = value.len();
                            }
                        }
                    }
                }
                value.truncate(kept);
                if value.is_empty() && !escaped {
                    return None;
                }
                let is_null = !escaped && value.eq_ignore_ascii_case("null");
                items.push(Literal::Item((!is_null).then_some(value)));
            }
        }
        skip_pg_space(chars);
        match chars.next()? {
            ',' => {}
            '}' => return Some(items),
            _ => return None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Column types

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
struct SqlType {
    /// The name used in error texts.
    name: String,
    kind: Kind,
}

#[derive(Debug, Clone)]
enum Kind {
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
enum TextKind {
    /// `text`, `varchar`, `name`, `"char"`.
    Plain,
    /// `bpchar`: trailing spaces are insignificant.
    Blank,
    /// `citext`: case-insensitive.
    Citext,
}

impl SqlType {
    fn from_type_name(type_name: &str) -> SqlType {
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
fn is_orderable(kind: &Kind) -> bool {
    match kind {
        Kind::Json => false,
        Kind::Array(element) => is_orderable(&element.kind),
        _ => true,
    }
}

/// Whether LIKE and regex operators apply (text types, or the text form of other types).
fn takes_patterns(kind: &Kind) -> bool {
    matches!(kind, Kind::Text(_) | Kind::Other)
}

// ---------------------------------------------------------------------------------------------
// Typed values

/// A value normalised for comparison: equal keys are equal values of the column's type, and
/// equal values hash alike, so `in` lists can be hash sets.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Int(i64),
    Float(FloatKey),
    Numeric(Decimal),
    Bool(bool),
    /// Text types (already trimmed for bpchar, lowercased for citext) and other types' text.
    Text(String),
    Uuid(u128),
    Date(Bounded<NaiveDate>),
    /// Microseconds since midnight.
    Time(i64),
    /// UTC-adjusted microseconds, then the zone in seconds west of UTC (PostgreSQL's order).
    TimeTz(i64, i32),
    /// Microseconds since 1970-01-01 00:00 (UTC for timestamptz).
    Timestamp(Bounded<i64>),
    Json(JsonKey),
    Array(ArrayKey),
}

/// Order of two keys of the same column type; `None` when the type has no order.
fn key_cmp(a: &Key, b: &Key) -> Option<Ordering> {
    match (a, b) {
        (Key::Int(x), Key::Int(y)) => Some(x.cmp(y)),
        (Key::Float(x), Key::Float(y)) => Some(x.cmp(y)),
        (Key::Numeric(x), Key::Numeric(y)) => Some(x.cmp(y)),
        (Key::Bool(x), Key::Bool(y)) => Some(x.cmp(y)),
        (Key::Text(x), Key::Text(y)) => Some(x.as_bytes().cmp(y.as_bytes())),
        (Key::Uuid(x), Key::Uuid(y)) => Some(x.cmp(y)),
        (Key::Date(x), Key::Date(y)) => Some(x.cmp(y)),
        (Key::Time(x), Key::Time(y)) => Some(x.cmp(y)),
        (Key::TimeTz(t1, z1), Key::TimeTz(t2, z2)) => Some(t1.cmp(t2).then(z1.cmp(z2))),
        (Key::Timestamp(x), Key::Timestamp(y)) => Some(x.cmp(y)),
        (Key::Array(x), Key::Array(y)) => array_cmp(x, y),
        _ => None,
    }
}

/// A value with PostgreSQL's `-infinity` and `infinity` around it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Bounded<T> {
    NegInfinity,
    Finite(T),
    Infinity,
}

/// An f64 with PostgreSQL's float order: NaN equals NaN and is the greatest, `-0` equals `0`.
#[derive(Debug, Clone, Copy)]
struct FloatKey(f64);

impl PartialEq for FloatKey {
    fn eq(&self, other: &FloatKey) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for FloatKey {}

impl PartialOrd for FloatKey {
    fn partial_cmp(&self, other: &FloatKey) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FloatKey {
    fn cmp(&self, other: &FloatKey) -> Ordering {
        match (self.0.is_nan(), other.0.is_nan()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Greater,
            (false, true) => Ordering::Less,
            // Neither is NaN, so `partial_cmp` is always `Some`.
            (false, false) => self.0.partial_cmp(&other.0).unwrap_or(Ordering::Equal),
        }
    }
}

impl Hash for FloatKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let bits = if self.0.is_nan() {
            f64::NAN.to_bits()
        } else if self.0 == 0.0 {
            0
        } else {
            self.0.to_bits()
        };
        bits.hash(state);
    }
}

/// An exact decimal in canonical form, so derived equality and hashing are numeric equality.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Decimal {
    NegInfinity,
    /// `±0.d1d2…dn × 10^exp` with `d1 != 0` and `dn != 0`; zero is `digits` empty, `exp` 0,
    /// `negative` false.
    Finite {
        negative: bool,
        digits: Vec<u8>,
        exp: i64,
    },
    Infinity,
    NaN,
}

impl Decimal {
    fn rank(&self) -> u8 {
        match self {
            Decimal::NegInfinity => 0,
            Decimal::Finite { .. } => 1,
            Decimal::Infinity => 2,
            Decimal::NaN => 3,
        }
    }
}

impl PartialOrd for Decimal {
    fn partial_cmp(&self, other: &Decimal) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Decimal {
    fn cmp(&self, other: &Decimal) -> Ordering {
        match (self, other) {
            (
                Decimal::Finite {
                    negative: n1,
                    digits: d1,
                    exp: e1,
                },
                Decimal::Finite {
                    negative: n2,
                    digits: d2,
                    exp: e2,
                },
            ) => {
                let sign = |negative: bool, digits: &[u8]| match (digits.is_empty(), negative) {
                    (true, _) => 0i8,
                    (false, true) => -1,
                    (false, false) => 1,
                };
                let (s1, s2) = (sign(*n1, d1), sign(*n2, d2));
                if s1 != s2 || s1 == 0 {
                    return s1.cmp(&s2);
                }
                let magnitude = e1.cmp(e2).then_with(|| d1.cmp(d2));
                if s1 > 0 {
                    magnitude
                } else {
                    magnitude.reverse()
                }
            }
            _ => self.rank().cmp(&other.rank()),
        }
    }
}

/// A JSON value with jsonb equality: object keys unordered, numbers compared as numerics.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum JsonKey {
    Null,
    Bool(bool),
    Number(Decimal),
    String(String),
    Array(Vec<JsonKey>),
    Object(BTreeMap<String, JsonKey>),
}

/// An array value: its dimensions and its elements in storage order (NULL is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ArrayKey {
    dims: Vec<usize>,
    items: Vec<Option<Key>>,
}

/// PostgreSQL's `array_cmp`: elements first (NULL sorts last), then length, then dimensions.
fn array_cmp(a: &ArrayKey, b: &ArrayKey) -> Option<Ordering> {
    for (x, y) in a.items.iter().zip(&b.items) {
        let order = match (x, y) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => key_cmp(x, y)?,
        };
        if order != Ordering::Equal {
            return Some(order);
        }
    }
    Some(
        a.items
            .len()
            .cmp(&b.items.len())
            .then(a.dims.len().cmp(&b.dims.len()))
            .then_with(|| a.dims.cmp(&b.dims)),
    )
}

// ---------------------------------------------------------------------------------------------
// Casting filter text to a key

fn cast(ty: &SqlType, text: &str) -> Result<Key, BindError> {
    let fail = |failure: CastFail| failure.into_error(&ty.name, text);
    match &ty.kind {
        Kind::Int { min, max } => parse_int(text, *min, *max).map(Key::Int).map_err(fail),
        Kind::Float { single } => parse_float(text, *single)
            .map(|v| Key::Float(FloatKey(v)))
            .map_err(fail),
        Kind::Numeric => parse_decimal(text)
            .map(Key::Numeric)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Bool => parse_bool(text)
            .map(Key::Bool)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Text(kind) => Ok(Key::Text(text_key(*kind, text))),
        Kind::Other => Ok(Key::Text(text.to_owned())),
        Kind::Uuid => parse_uuid(text)
            .map(Key::Uuid)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Date => cast_date(text).map(Key::Date).map_err(fail),
        Kind::Time => cast_time(text).map(Key::Time).map_err(fail),
        Kind::TimeTz => cast_timetz(text)
            .map(|(time, zone)| Key::TimeTz(time, zone))
            .map_err(fail),
        Kind::Timestamp => cast_timestamp(text, false)
            .map(Key::Timestamp)
            .map_err(fail),
        Kind::TimestampTz => cast_timestamp(text, true).map(Key::Timestamp).map_err(fail),
        Kind::Json => serde_json::from_str::<Value>(text)
            .ok()
            .and_then(|value| json_key(&value, 0))
            .map(Key::Json)
            .ok_or_else(|| fail(CastFail::Syntax)),
        Kind::Array(element) => cast_array(element, text).map(Key::Array),
    }
}

fn text_key(kind: TextKind, text: &str) -> String {
    match kind {
        TextKind::Plain => text.to_owned(),
        TextKind::Blank => text.trim_end_matches(' ').to_owned(),
        TextKind::Citext => text.to_lowercase(),
    }
}

/// `int2in`/`int4in`/`int8in`/`oidin` for decimal input.
fn parse_int(text: &str, min: i64, max: i64) -> Result<i64, CastFail> {
    let trimmed = trim_pg(text);
    let (negative, digits) = match trimmed.as_bytes().first() {
        Some(b'-') => (true, &trimmed[1..]),
        Some(b'+') => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(CastFail::Syntax);
    }
    let mut magnitude: i128 = 0;
    for b in digits.bytes() {
        magnitude = magnitude * 10 + i128::from(b - b'0');
        if magnitude > i128::from(u64::MAX) {
            return Err(CastFail::Range);
        }
    }
    let value = if negative { -magnitude } else { magnitude };
    if value < i128::from(min) || value > i128::from(max) {
        return Err(CastFail::Range);
    }
    i64::try_from(value).map_err(|_| CastFail::Range)
}

/// `float4in`/`float8in`: decimal or exponent notation, `NaN`, `[+-]Infinity`, `[+-]inf`.
fn parse_float(text: &str, single: bool) -> Result<f64, CastFail> {
    let trimmed = trim_pg(text);
    let value: f64 = trimmed.parse().map_err(|_| CastFail::Syntax)?;
    let infinity_literal = trimmed
        .trim_start_matches(['+', '-'])
        .get(..3)
        .is_some_and(|prefix| prefix.eq_ignore_ascii_case("inf"));
    let nonzero_mantissa = trimmed
        .split(['e', 'E'])
        .next()
        .unwrap_or_default()
        .bytes()
        .any(|b| (b'1'..=b'9').contains(&b));
    let value = if single {
        // Single precision is what a float4 column stores; `as` rounds to nearest.
        f64::from(value as f32)
    } else {
        value
    };
    if value.is_infinite() && !infinity_literal {
        return Err(CastFail::Range);
    }
    if value == 0.0 && nonzero_mantissa {
        return Err(CastFail::Range);
    }
    Ok(value)
}

/// `numeric_in` (without the PostgreSQL 16 `_` separators and non-decimal forms).
fn parse_decimal(text: &str) -> Option<Decimal> {
    let trimmed = trim_pg(text);
    let special = |word: &str| trimmed.eq_ignore_ascii_case(word);
    if special("nan") {
        return Some(Decimal::NaN);
    }
    if ["infinity", "+infinity", "inf", "+inf"]
        .into_iter()
        .any(special)
    {
        return Some(Decimal::Infinity);
    }
    if ["-infinity", "-inf"].into_iter().any(special) {
        return Some(Decimal::NegInfinity);
    }
    let (negative, body) = match trimmed.as_bytes().first()? {
        b'-' => (true, &trimmed[1..]),
        b'+' => (false, &trimmed[1..]),
        _ => (false, trimmed),
    };
    let (mantissa, exponent) = match body.find(['e', 'E']) {
        Some(at) => (&body[..at], Some(&body[at + 1..])),
        None => (body, None),
    };
    let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int_part.is_empty() && frac_part.is_empty() {
        return None;
    }
    if !int_part
        .bytes()
        .chain(frac_part.bytes())
        .all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let exponent: i64 = match exponent {
        None => 0,
        Some(e) => {
            let digits = e.strip_prefix(['+', '-']).unwrap_or(e);
            if digits.is_empty() || digits.len() > 9 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return None;
            }
            e.parse().ok()?
        }
    };
    let all: Vec<u8> = int_part
        .bytes()
        .chain(frac_part.bytes())
        .map(|b| b - b'0')
        .collect();
    let Some(first) = all.iter().position(|&d| d != 0) else {
        return Some(Decimal::Finite {
            negative: false,
            digits: Vec::new(),
            exp: 0,
        });
    };
    let last = all.iter().rposition(|&d| d != 0)?;
    // value = all × 10^(exponent − frac digits) = 0.d1…dn × 10^(significant int digits + …)
    let significant = i64::try_from(all.len() - first).ok()?;
    let frac_len = i64::try_from(frac_part.len()).ok()?;
    let exp = significant.checked_add(exponent)?.checked_sub(frac_len)?;
    Some(Decimal::Finite {
        negative,
        digits: all[first..=last].to_vec(),
        exp,
    })
}

/// `boolin`: `t`/`true`/`y`/`yes`/`on`/`1` and `f`/`false`/`n`/`no`/`off`/`0`, any case,
/// unique prefixes included.
fn parse_bool(text: &str) -> Option<bool> {
    let word = trim_pg(text).to_ascii_lowercase();
    let prefix_of = |full: &str, min: usize| {
        word.len() >= min && word.len() <= full.len() && full.starts_with(word.as_str())
    };
    match word.as_bytes().first()? {
        b't' => prefix_of("true", 1).then_some(true),
        b'f' => prefix_of("false", 1).then_some(false),
        b'y' => prefix_of("yes", 1).then_some(true),
        b'n' => prefix_of("no", 1).then_some(false),
        b'o' if prefix_of("on", 2) => Some(true),
        b'o' if prefix_of("off", 2) => Some(false),
        b'1' if word == "1" => Some(true),
        b'0' if word == "0" => Some(false),
        _ => None,
    }
}

/// `uuid_in`: 32 hex digits, a `-` allowed after any group of four, optional braces.
fn parse_uuid(text: &str) -> Option<u128> {
    let body = match text.strip_prefix('{') {
        Some(rest) => rest.strip_suffix('}')?,
        None => text,
    };
    let bytes = body.as_bytes();
    let mut value: u128 = 0;
    let mut count = 0u32;
    let mut i = 0usize;
    while count < 32 {
        let digit = char::from(*bytes.get(i)?).to_digit(16)?;
        value = (value << 4) | u128::from(digit);
        count += 1;
        i += 1;
        // A hyphen may follow every group of four digits but the last.
        if matches!(count, 4 | 8 | 12 | 16 | 20 | 24 | 28) && bytes.get(i) == Some(&b'-') {
            i += 1;
        }
    }
    (i == bytes.len()).then_some(value)
}

// ---------------------------------------------------------------------------------------------
// Dates and times

/// What a date/time text says, before it is read as one particular type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DateTimeInput {
    Infinity,
    NegInfinity,
    Epoch,
    Allballs,
    Fields {
        date: Option<NaiveDate>,
        /// Microseconds since midnight; up to 24:00:00.
        time: Option<i64>,
        /// Seconds east of UTC.
        offset: Option<i32>,
    },
}

/// A cursor over the ASCII grammar of date/time input.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Scanner<'_> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn peek_at(&self, ahead: usize) -> Option<u8> {
        self.bytes.get(self.at + ahead).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let hit = self.peek() == Some(byte);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn skip_space(&mut self) -> bool {
        let start = self.at;
        while self.peek().is_some_and(|b| is_pg_space(char::from(b))) {
            self.at += 1;
        }
        self.at > start
    }

    fn digit_run(&self) -> usize {
        self.bytes[self.at.min(self.bytes.len())..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count()
    }

    /// Reads between `min` and `max` digits (all the digits there are must fit).
    fn number(&mut self, min: usize, max: usize) -> Result<u32, CastFail> {
        let len = self.digit_run();
        if len < min || len > max {
            return Err(CastFail::Syntax);
        }
        let mut value = 0u32;
        for &b in &self.bytes[self.at..self.at + len] {
            value = value * 10 + u32::from(b - b'0');
        }
        self.at += len;
        Ok(value)
    }

    /// Reads exactly `count` digits, whatever follows them.
    fn exact(&mut self, count: usize) -> Result<u32, CastFail> {
        let digits = self
            .bytes
            .get(self.at..self.at + count)
            .filter(|digits| digits.iter().all(u8::is_ascii_digit))
            .ok_or(CastFail::Syntax)?;
        let value = digits
            .iter()
            .fold(0u32, |value, &b| value * 10 + u32::from(b - b'0'));
        self.at += count;
        Ok(value)
    }

    fn looks_like_date(&self) -> bool {
        let run = self.digit_run();
        run > 0 && self.peek_at(run) == Some(b'-')
    }

    fn date(&mut self) -> Result<NaiveDate, CastFail> {
        let year = self.number(4, 6)?;
        if !self.eat(b'-') {
            return Err(CastFail::Syntax);
        }
        let month = self.number(1, 2)?;
        if !self.eat(b'-') {
            return Err(CastFail::Syntax);
        }
        let day = self.number(1, 2)?;
        if year == 0 {
            return Err(CastFail::DateTimeRange);
        }
        let year = i32::try_from(year).map_err(|_| CastFail::DateTimeRange)?;
        NaiveDate::from_ymd_opt(year, month, day).ok_or(CastFail::DateTimeRange)
    }

    fn time(&mut self) -> Result<i64, CastFail> {
        let hour = i64::from(self.number(1, 2)?);
        if !self.eat(b':') {
            return Err(CastFail::Syntax);
        }
        let minute = i64::from(self.number(2, 2)?);
        let mut second = 0i64;
        let mut fraction = 0i64;
        if self.eat(b':') {
            second = i64::from(self.number(2, 2)?);
            if self.eat(b'.') {
                let len = self.digit_run();
                if len == 0 {
                    return Err(CastFail::Syntax);
                }
                fraction = fraction_to_micros(&self.bytes[self.at..self.at + len]);
                self.at += len;
            }
        }
        if hour > 24 || minute > 59 || second > 60 {
            return Err(CastFail::DateTimeRange);
        }
        let micros = ((hour * 60 + minute) * 60 + second) * US_PER_SEC + fraction;
        if micros > US_PER_DAY {
            return Err(CastFail::DateTimeRange);
        }
        Ok(micros)
    }

    /// `Z`, `UTC`, `GMT`, `±HH`, `±HHMM`, `±HHMMSS`, `±HH:MM`, `±HH:MM:SS`; seconds east.
    fn zone(&mut self) -> Result<Option<i32>, CastFail> {
        let Some(first) = self.peek() else {
            return Ok(None);
        };
        match first {
            b'z' | b'Z' => {
                self.at += 1;
                Ok(Some(0))
            }
            b'+' | b'-' => {
                self.at += 1;
                let run = self.digit_run();
                let (hours, minutes, seconds) = match run {
                    1 | 2 => {
                        let hours = self.number(1, 2)?;
                        let mut minutes = 0;
                        let mut seconds = 0;
                        if self.eat(b':') {
                            minutes = self.number(2, 2)?;
                            if self.eat(b':') {
                                seconds = self.number(2, 2)?;
                            }
                        }
                        (hours, minutes, seconds)
                    }
                    4 => (self.exact(2)?, self.exact(2)?, 0),
                    6 => (self.exact(2)?, self.exact(2)?, self.exact(2)?),
                    _ => return Err(CastFail::Syntax),
                };
                if hours > 15 || minutes > 59 || seconds > 59 {
                    return Err(CastFail::DateTimeRange);
                }
                let total = i32::try_from(hours * 3600 + minutes * 60 + seconds)
                    .map_err(|_| CastFail::DateTimeRange)?;
                Ok(Some(if first == b'-' { -total } else { total }))
            }
            _ => {
                let rest = &self.bytes[self.at..];
                let word = rest.get(..3).unwrap_or(rest);
                if word.eq_ignore_ascii_case(b"utc") || word.eq_ignore_ascii_case(b"gmt") {
                    self.at += 3;
                    Ok(Some(0))
                } else {
                    Err(CastFail::Syntax)
                }
            }
        }
    }
}

/// Fractional-second digits to microseconds, rounding half to even past the sixth digit.
fn fraction_to_micros(digits: &[u8]) -> i64 {
    let mut micros = 0i64;
    for i in 0..6 {
        micros = micros * 10 + digits.get(i).map_or(0, |d| i64::from(d - b'0'));
    }
    if let Some((&next, tail)) = digits.get(6..).and_then(|rest| rest.split_first()) {
        let tail_nonzero = tail.iter().any(|&d| d != b'0');
        if next > b'5' || (next == b'5' && (tail_nonzero || micros % 2 == 1)) {
            micros += 1;
        }
    }
    micros
}

fn parse_datetime(text: &str) -> Result<DateTimeInput, CastFail> {
    let trimmed = trim_pg(text);
    let special = |word: &str| trimmed.eq_ignore_ascii_case(word);
    if special("infinity") || special("+infinity") {
        return Ok(DateTimeInput::Infinity);
    }
    if special("-infinity") {
        return Ok(DateTimeInput::NegInfinity);
    }
    if special("epoch") {
        return Ok(DateTimeInput::Epoch);
    }
    if special("allballs") {
        return Ok(DateTimeInput::Allballs);
    }
    let mut scanner = Scanner {
        bytes: trimmed.as_bytes(),
        at: 0,
    };
    let mut date = None;
    let mut time = None;
    if scanner.looks_like_date() {
        date = Some(scanner.date()?);
        let had_t = scanner.eat(b'T') || scanner.eat(b't');
        let had_space = scanner.skip_space();
        if had_t || (had_space && scanner.peek().is_some_and(|b| b.is_ascii_digit())) {
            time = Some(scanner.time()?);
        }
    } else {
        time = Some(scanner.time()?);
    }
    scanner.skip_space();
    let offset = scanner.zone()?;
    scanner.skip_space();
    if scanner.peek().is_some() {
        return Err(CastFail::Syntax);
    }
    Ok(DateTimeInput::Fields { date, time, offset })
}

fn unix_epoch_date() -> NaiveDate {
    DateTime::UNIX_EPOCH.date_naive()
}

fn cast_date(text: &str) -> Result<Bounded<NaiveDate>, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Infinity => Ok(Bounded::Infinity),
        DateTimeInput::NegInfinity => Ok(Bounded::NegInfinity),
        DateTimeInput::Epoch => Ok(Bounded::Finite(unix_epoch_date())),
        DateTimeInput::Fields {
            date: Some(date), ..
        } => Ok(Bounded::Finite(date)),
        DateTimeInput::Allballs | DateTimeInput::Fields { date: None, .. } => Err(CastFail::Syntax),
    }
}

/// Microseconds since the epoch; `with_zone` applies the offset (default UTC), otherwise the
/// offset is ignored as `timestamp_in` ignores it.
fn cast_timestamp(text: &str, with_zone: bool) -> Result<Bounded<i64>, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Infinity => Ok(Bounded::Infinity),
        DateTimeInput::NegInfinity => Ok(Bounded::NegInfinity),
        DateTimeInput::Epoch => Ok(Bounded::Finite(0)),
        DateTimeInput::Fields {
            date: Some(date),
            time,
            offset,
        } => {
            let days = date.signed_duration_since(unix_epoch_date()).num_days();
            let offset = if with_zone { offset.unwrap_or(0) } else { 0 };
            days.checked_mul(US_PER_DAY)
                .and_then(|us| us.checked_add(time.unwrap_or(0)))
                .and_then(|us| us.checked_sub(i64::from(offset) * US_PER_SEC))
                .map(Bounded::Finite)
                .ok_or(CastFail::DateTimeRange)
        }
        DateTimeInput::Allballs | DateTimeInput::Fields { date: None, .. } => Err(CastFail::Syntax),
    }
}

fn cast_time(text: &str) -> Result<i64, CastFail> {
    match parse_datetime(text)? {
        DateTimeInput::Allballs => Ok(0),
        DateTimeInput::Fields {
            time: Some(time), ..
        } => Ok(time),
        _ => Err(CastFail::Syntax),
    }
}

/// `(time + zone, zone)` with the zone in seconds west, as `timetz_cmp` orders them.
fn cast_timetz(text: &str) -> Result<(i64, i32), CastFail> {
    let (time, offset) = match parse_datetime(text)? {
        DateTimeInput::Allballs => (0, 0),
        DateTimeInput::Fields {
            time: Some(time),
            offset,
            ..
        } => (time, offset.unwrap_or(0)),
        _ => return Err(CastFail::Syntax),
    };
    let zone = -offset;
    Ok((time + i64::from(zone) * US_PER_SEC, zone))
}

// ---------------------------------------------------------------------------------------------
// JSON and arrays

fn json_key(value: &Value, depth: usize) -> Option<JsonKey> {
    if depth > MAX_JSON_DEPTH {
        return None;
    }
    Some(match value {
        Value::Null => JsonKey::Null,
        Value::Bool(b) => JsonKey::Bool(*b),
        Value::Number(n) => JsonKey::Number(parse_decimal(&n.to_string())?),
        Value::String(s) => JsonKey::String(s.clone()),
        Value::Array(items) => JsonKey::Array(
            items
                .iter()
                .map(|item| json_key(item, depth + 1))
                .collect::<Option<_>>()?,
        ),
        Value::Object(map) => JsonKey::Object(
            map.iter()
                .map(|(k, v)| Some((k.clone(), json_key(v, depth + 1)?)))
                .collect::<Option<_>>()?,
        ),
    })
}

/// Collects an array's shape while its elements are visited depth first, rejecting ragged or
/// too deep arrays as PostgreSQL does.
#[derive(Default)]
struct ArrayBuilder {
    dims: Vec<usize>,
    items: Vec<Option<Key>>,
    leaf_level: Option<usize>,
}

impl ArrayBuilder {
    /// Enters a (sub-)array at `level` with `len` elements that are leaves or sub-arrays.
    fn enter(&mut self, level: usize, len: usize, leaves: bool) -> bool {
        if level >= MAX_ARRAY_DIMS {
            return false;
        }
        let dims_ok = match self.dims.get(level) {
            Some(&known) => known == len,
            None if level == self.dims.len() => {
                self.dims.push(len);
                true
            }
            None => false,
        };
        let level_ok = match (self.leaf_level, leaves) {
            (None, true) => {
                self.leaf_level = Some(level);
                true
            }
            (None, false) => true,
            (Some(leaf), true) => leaf == level,
            (Some(leaf), false) => leaf > level,
        };
        dims_ok && level_ok
    }

    fn finish(mut self) -> ArrayKey {
        if self.items.is_empty() {
            self.dims.clear();
        }
        ArrayKey {
            dims: self.dims,
            items: self.items,
        }
    }
}

fn cast_array(element: &SqlType, text: &str) -> Result<ArrayKey, BindError> {
    let malformed = || BindError::MalformedArray {
        value: text.to_owned(),
    };
    let top = parse_array_literal(text).ok_or_else(malformed)?;
    let mut builder = ArrayBuilder::default();
    if !add_literal_level(&mut builder, element, 0, &top)? {
        return Err(malformed());
    }
    Ok(builder.finish())
}

/// Adds one literal level; `Ok(false)` when the shape is not rectangular.
fn add_literal_level(
    builder: &mut ArrayBuilder,
    element: &SqlType,
    level: usize,
    items: &[Literal],
) -> Result<bool, BindError> {
    let subs = items
        .iter()
        .filter(|item| matches!(item, Literal::Sub(_)))
        .count();
    if subs != 0 && subs != items.len() {
        return Ok(false);
    }
    if !builder.enter(level, items.len(), subs == 0) {
        return Ok(false);
    }
    for item in items {
        match item {
            Literal::Item(None) => builder.items.push(None),
            Literal::Item(Some(text)) => builder.items.push(Some(cast(element, text)?)),
            Literal::Sub(inner) => {
                if !add_literal_level(builder, element, level + 1, inner)? {
                    return Ok(false);
                }
            }
        }
    }
    Ok(true)
}

fn array_from_json(element: &SqlType, items: &[Value]) -> Option<ArrayKey> {
    let mut builder = ArrayBuilder::default();
    add_json_level(&mut builder, element, 0, items)?;
    Some(builder.finish())
}

fn add_json_level(
    builder: &mut ArrayBuilder,
    element: &SqlType,
    level: usize,
    items: &[Value],
) -> Option<()> {
    // An array of json/jsonb holds JSON arrays as elements; it is never read as nested.
    let nested =
        !matches!(element.kind, Kind::Json) && items.first().is_some_and(|item| item.is_array());
    if !builder.enter(level, items.len(), !nested) {
        return None;
    }
    for item in items {
        match (nested, item) {
            (true, Value::Array(inner)) => add_json_level(builder, element, level + 1, inner)?,
            (true, _) => return None,
            (false, Value::Null) => builder.items.push(None),
            (false, item) => builder.items.push(Some(record_key(element, item)?)),
        }
    }
    Some(())
}

// ---------------------------------------------------------------------------------------------
// Reading record values

/// The text PostgreSQL would show for a record value of an unknown or text type.
fn text_form(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::Null => None,
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Bool(b) => Some(Cow::Borrowed(if *b { "true" } else { "false" })),
        Value::Number(n) => Some(Cow::Owned(n.to_string())),
        other => serde_json::to_string(other).ok().map(Cow::Owned),
    }
}

fn integral_f64(value: f64) -> Option<i64> {
    // 2^63 is exactly representable; anything in [-2^63, 2^63) converts without loss.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (value.fract() == 0.0 && (-LIMIT..LIMIT).contains(&value)).then_some(value as i64)
}

/// Reads a non-null record value as a key of the column's type; `None` when it is not one.
fn record_key(ty: &SqlType, value: &Value) -> Option<Key> {
    match &ty.kind {
        Kind::Int { .. } => match value {
            Value::Number(n) => n.as_i64().or_else(|| n.as_f64().and_then(integral_f64)),
            Value::String(s) => parse_int(s, i64::MIN, i64::MAX).ok(),
            _ => None,
        }
        .map(Key::Int),
        Kind::Float { single } => match value {
            Value::Number(n) => n.as_f64().map(|f| {
                if *single {
                    // A float4 column holds single precision values.
                    f64::from(f as f32)
                } else {
                    f
                }
            }),
            Value::String(s) => parse_float(s, *single).ok(),
            _ => None,
        }
        .map(|f| Key::Float(FloatKey(f))),
        Kind::Numeric => match value {
            Value::Number(n) => parse_decimal(&n.to_string()),
            Value::String(s) => parse_decimal(s),
            _ => None,
        }
        .map(Key::Numeric),
        Kind::Bool => match value {
            Value::Bool(b) => Some(*b),
            Value::String(s) => parse_bool(s),
            _ => None,
        }
        .map(Key::Bool),
        Kind::Text(kind) => text_form(value).map(|text| Key::Text(text_key(*kind, &text))),
        Kind::Other => text_form(value).map(|text| Key::Text(text.into_owned())),
        Kind::Uuid => value.as_str().and_then(parse_uuid).map(Key::Uuid),
        Kind::Date => cast_date(value.as_str()?).ok().map(Key::Date),
        Kind::Time => cast_time(value.as_str()?).ok().map(Key::Time),
        Kind::TimeTz => cast_timetz(value.as_str()?)
            .ok()
            .map(|(time, zone)| Key::TimeTz(time, zone)),
        Kind::Timestamp => cast_timestamp(value.as_str()?, false)
            .ok()
            .map(Key::Timestamp),
        Kind::TimestampTz => cast_timestamp(value.as_str()?, true)
            .ok()
            .map(Key::Timestamp),
        Kind::Json => json_key(value, 0).map(Key::Json),
        Kind::Array(element) => match value {
            Value::Array(items) => array_from_json(element, items).map(Key::Array),
            Value::String(s) => cast_array(element, s).ok().map(Key::Array),
            _ => None,
        },
    }
}

/// The text LIKE and regexes look at: bpchar without its padding, other types' text form.
fn pattern_subject<'a>(ty: &SqlType, value: &'a Value) -> Option<Cow<'a, str>> {
    let text = text_form(value)?;
    Some(match (&ty.kind, text) {
        (Kind::Text(TextKind::Blank), Cow::Borrowed(s)) => Cow::Borrowed(s.trim_end_matches(' ')),
        (Kind::Text(TextKind::Blank), Cow::Owned(s)) => Cow::Owned(s.trim_end_matches(' ').into()),
        (_, text) => text,
    })
}

// ---------------------------------------------------------------------------------------------
// Bound filter

/// A [`Filter`] typed against a table's columns, ready to test rows. Cheap to clone and
/// `Send + Sync`; [`BoundFilter::default`] has no conditions and matches every row.
#[derive(Debug, Clone, Default)]
pub struct BoundFilter {
    conditions: Vec<BoundCondition>,
}

impl BoundFilter {
    /// Whether the record (an object shaped like `to_jsonb(row)`; for DELETE the old row)
    /// satisfies every condition. A missing key is NULL. Never panics.
    pub fn matches(&self, record: &Map<String, Value>) -> bool {
        self.conditions
            .iter()
            .all(|condition| condition.matches(record))
    }

    /// Whether the filter has no conditions (it then matches every row).
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }
}

#[derive(Debug, Clone)]
struct BoundCondition {
    column: String,
    ty: SqlType,
    negate: bool,
    test: Test,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CmpOp {
    Eq,
    Neq,
    Lt,
    Lte,
    Gt,
    Gte,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IsTarget {
    Null,
    True,
    False,
    Unknown,
}

#[derive(Debug, Clone)]
enum Test {
    Compare(CmpOp, Key),
    In { set: HashSet<Key>, has_null: bool },
    Pattern(Regex),
    Is(IsTarget),
    IsDistinct(Key),
}

impl BoundCondition {
    fn matches(&self, record: &Map<String, Value>) -> bool {
        let value = record.get(&self.column).unwrap_or(&Value::Null);
        let outcome = if value.is_null() {
            match &self.test {
                Test::Is(target) => Some(matches!(target, IsTarget::Null | IsTarget::Unknown)),
                Test::IsDistinct(_) => Some(true),
                // The upstream NULL quirk (PROTOCOL.md 6.2): passes whatever `not.` says.
                _ => return true,
            }
        } else {
            self.evaluate(value)
        };
        // `None` is SQL's unknown (or an unreadable value): the condition fails either way.
        outcome.is_some_and(|holds| holds != self.negate)
    }

    fn evaluate(&self, value: &Value) -> Option<bool> {
        match &self.test {
            Test::Compare(op, wanted) => {
                let got = record_key(&self.ty, value)?;
                Some(match op {
                    CmpOp::Eq => got == *wanted,
                    CmpOp::Neq => got != *wanted,
                    CmpOp::Lt => key_cmp(&got, wanted)?.is_lt(),
                    CmpOp::Lte => key_cmp(&got, wanted)?.is_le(),
                    CmpOp::Gt => key_cmp(&got, wanted)?.is_gt(),
                    CmpOp::Gte => key_cmp(&got, wanted)?.is_ge(),
                })
            }
            Test::In { set, has_null } => {
                let got = record_key(&self.ty, value)?;
                match (set.contains(&got), has_null) {
                    (true, _) => Some(true),
                    (false, true) => None,
                    (false, false) => Some(false),
                }
            }
            Test::Pattern(regex) => Some(regex.is_match(&pattern_subject(&self.ty, value)?)),
            Test::Is(IsTarget::Null | IsTarget::Unknown) => Some(false),
            Test::Is(IsTarget::True) => Some(record_key(&self.ty, value)? == Key::Bool(true)),
            Test::Is(IsTarget::False) => Some(record_key(&self.ty, value)? == Key::Bool(false)),
            Test::IsDistinct(other) => Some(record_key(&self.ty, value)? != *other),
        }
    }
}

fn bind_condition(condition: &Condition, columns: &[Column]) -> Result<BoundCondition, BindError> {
    let column = columns
        .iter()
        .find(|column| column.name == condition.column)
        .ok_or_else(|| BindError::UnknownColumn {
            name: condition.column.clone(),
        })?;
    let ty = SqlType::from_type_name(&column.type_name);
    let test = match &condition.operand {
        Operand::List(items) => bind_in(&ty, items)?,
        Operand::Scalar(text) => bind_scalar(&ty, condition.op, text)?,
    };
    Ok(BoundCondition {
        column: condition.column.clone(),
        ty,
        negate: condition.negate,
        test,
    })
}

fn bind_in(ty: &SqlType, items: &[Option<String>]) -> Result<Test, BindError> {
    let mut set = HashSet::with_capacity(items.len());
    let mut has_null = false;
    for item in items {
        match item {
            Some(text) => {
                set.insert(cast(ty, text)?);
            }
            None => has_null = true,
        }
    }
    Ok(Test::In { set, has_null })
}

fn bind_scalar(ty: &SqlType, op: Op, text: &str) -> Result<Test, BindError> {
    let compare = |cmp: CmpOp| -> Result<Test, BindError> {
        let ordering = !matches!(cmp, CmpOp::Eq | CmpOp::Neq);
        if ordering && !is_orderable(&ty.kind) {
            return Err(BindError::UnsupportedOperator {
                operator: op.sql_symbol(),
                type_name: ty.name.clone(),
            });
        }
        Ok(Test::Compare(cmp, cast(ty, text)?))
    };
    match op {
        Op::Eq => compare(CmpOp::Eq),
        Op::Neq => compare(CmpOp::Neq),
        Op::Lt => compare(CmpOp::Lt),
        Op::Lte => compare(CmpOp::Lte),
        Op::Gt => compare(CmpOp::Gt),
        Op::Gte => compare(CmpOp::Gte),
        // `parse` always gives `in` a list; a scalar is read as a one-element list.
        Op::In => bind_in(ty, &[Some(text.to_owned())]),
        Op::IsDistinct => Ok(Test::IsDistinct(cast(ty, text)?)),
        Op::Is => bind_is(ty, text),
        Op::Like | Op::Ilike | Op::Match | Op::Imatch => {
            if !takes_patterns(&ty.kind) {
                return Err(BindError::OperatorDoesNotExist {
                    operator: op.sql_symbol(),
                    type_name: ty.name.clone(),
                });
            }
            let case_insensitive = matches!(op, Op::Ilike | Op::Imatch)
                || matches!(ty.kind, Kind::Text(TextKind::Citext));
            let regex = if matches!(op, Op::Like | Op::Ilike) {
                like_regex(text, case_insensitive)?
            } else {
                compile_regex(text, case_insensitive)?
            };
            Ok(Test::Pattern(regex))
        }
    }
}

fn bind_is(ty: &SqlType, text: &str) -> Result<Test, BindError> {
    let word = trim_pg(text);
    let (target, keyword) = if word.eq_ignore_ascii_case("null") {
        return Ok(Test::Is(IsTarget::Null));
    } else if word.eq_ignore_ascii_case("true") {
        (IsTarget::True, "TRUE")
    } else if word.eq_ignore_ascii_case("false") {
        (IsTarget::False, "FALSE")
    } else if word.eq_ignore_ascii_case("unknown") {
        (IsTarget::Unknown, "UNKNOWN")
    } else {
        return Err(BindError::InvalidIsValue {
            value: text.to_owned(),
        });
    };
    if !matches!(ty.kind, Kind::Bool) {
        return Err(BindError::IsNotBoolean {
            keyword,
            type_name: ty.name.clone(),
        });
    }
    Ok(Test::Is(target))
}

/// Compiles a LIKE pattern (`%`, `_`, `\` escape) into an anchored regex.
fn like_regex(pattern: &str, case_insensitive: bool) -> Result<Regex, BindError> {
    let mut source = String::from(r"\A");
    let mut literal = String::new();
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => literal.push(chars.next().ok_or(BindError::LikeTrailingEscape)?),
            '%' | '_' => {
                source.push_str(&regex::escape(&literal));
                literal.clear();
                source.push_str(if c == '%' { ".*" } else { "." });
            }
            c => literal.push(c),
        }
    }
    source.push_str(&regex::escape(&literal));
    source.push_str(r"\z");
    compile_regex(&source, case_insensitive)
}

fn compile_regex(source: &str, case_insensitive: bool) -> Result<Regex, BindError> {
    RegexBuilder::new(source)
        .case_insensitive(case_insensitive)
        // PostgreSQL's ARE lets `.` and `[^…]` match a newline by default.
        .dot_matches_new_line(true)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|err| BindError::InvalidRegex {
            detail: regex_detail(&err),
        })
}

/// The one-line reason of a regex error (the crate's text also draws the pattern and a caret).
fn regex_detail(err: &regex::Error) -> String {
    match err {
        regex::Error::Syntax(text) => text
            .lines()
            .rev()
            .find_map(|line| line.trim().strip_prefix("error: "))
            .unwrap_or(text)
            .trim()
            .to_owned(),
        regex::Error::CompiledTooBig(_) => "regular expression is too large".to_owned(),
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------------------------
// Elixir inspect, for upstream-compatible error details

/// Renders pieces the way Elixir's `inspect/1` renders a list of binaries (module docs).
fn inspect_pieces(pieces: &[String]) -> String {
    let docs: Vec<String> = pieces.iter().map(|piece| inspect_binary(piece)).collect();
    let mut out = String::from("[");
    let mut column = 1usize;
    for (i, doc) in docs.iter().enumerate() {
        let width = doc.chars().count();
        if i > 0 {
            out.push(',');
            column += 1;
            // Elixir's flex break: break when the piece and the `,` or `]` after it do not fit.
            if column + 1 + width + 1 > INSPECT_WIDTH {
                out.push_str("\n ");
                column = 1;
            } else {
                out.push(' ');
                column += 1;
            }
        }
        out.push_str(doc);
        column += width;
    }
    out.push(']');
    out
}

fn elixir_printable(c: char) -> bool {
    matches!(
        c,
        '\u{20}'..='\u{7e}'
            | '\u{a0}'..='\u{d7ff}'
            | '\u{e000}'..='\u{fffd}'
            | '\u{10000}'..='\u{10ffff}'
            | '\n'
            | '\r'
            | '\t'
            | '\u{b}'
            | '\u{8}'
            | '\u{c}'
            | '\u{1b}'
            | '\u{7f}'
            | '\u{7}'
    )
}

fn inspect_binary(piece: &str) -> String {
    if !piece
        .chars()
        .take(INSPECT_PRINTABLE_LIMIT)
        .all(elixir_printable)
    {
        let shown: Vec<String> = piece
            .bytes()
            .take(INSPECT_BYTE_LIMIT)
            .map(|b| b.to_string())
            .collect();
        let more = if piece.len() > INSPECT_BYTE_LIMIT {
            ", ..."
        } else {
            ""
        };
        return format!("<<{}{more}>>", shown.join(", "));
    }
    let mut out = String::with_capacity(piece.len() + 2);
    out.push('"');
    let mut rest = piece;
    let mut budget = INSPECT_PRINTABLE_LIMIT;
    loop {
        let mut chars = rest.chars();
        let Some(c) = chars.next() else {
            out.push('"');
            return out;
        };
        if budget == 0 {
            out.push_str("\" <> ...");
            return out;
        }
        budget -= 1;
        let after = chars.as_str();
        if c == '#' && after.starts_with('{') {
            out.push_str("\\#{");
            rest = &after[1..];
            continue;
        }
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{7f}' => out.push_str("\\d"),
            '\u{1b}' => out.push_str("\\e"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            c => out.push(c),
        }
        rest = after;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    const U1: &str = "639f86b1-738b-43ed-bb09-c8d3f3bafa30";
    const U2: &str = "b423f213-ac24-402a-95ea-cf1d94d8e9f0";

    fn columns() -> Vec<Column> {
        [
            ("id", "int4"),
            ("small", "int2"),
            ("big", "int8"),
            ("obj", "oid"),
            ("amount", "numeric"),
            ("ratio", "float8"),
            ("r4", "float4"),
            ("title", "text"),
            ("vc", "varchar"),
            ("code", "bpchar"),
            ("email", "citext"),
            ("uid", "uuid"),
            ("done", "bool"),
            ("at", "timestamptz"),
            ("local", "timestamp"),
            ("day", "date"),
            ("clock", "time"),
            ("clocktz", "timetz"),
            ("doc", "jsonb"),
            ("raw", "json"),
            ("nums", "_int4"),
            ("tags", "_text"),
            ("mood", "mood"),
        ]
        .into_iter()
        .map(|(name, type_name)| Column::new(name, type_name))
        .collect()
    }

    fn bind(filter: &str) -> BoundFilter {
        Filter::parse(filter)
            .unwrap_or_else(|err| panic!("{filter}: {err}"))
            .bind(&columns())
            .unwrap_or_else(|err| panic!("{filter}: {err}"))
    }

    fn record(column: &str, value: Value) -> Map<String, Value> {
        let mut record = Map::new();
        record.insert(column.to_owned(), value);
        record
    }

    fn matches(filter: &str, column: &str, value: Value) -> bool {
        bind(filter).matches(&record(column, value))
    }

    /// Checks `column=op_value` against `value`, and that `column=not.op_value` gives the
    /// opposite answer (the value is never NULL here).
    #[track_caller]
    fn check(column: &str, op_value: &str, value: Value, expected: bool) {
        let plain = format!("{column}={op_value}");
        let negated = format!("{column}=not.{op_value}");
        assert_eq!(
            matches(&plain, column, value.clone()),
            expected,
            "{plain} on {value}"
        );
        assert_eq!(
            matches(&negated, column, value.clone()),
            !expected,
            "{negated} on {value}"
        );
    }

    #[track_caller]
    fn check_all(column: &str, cases: &[(&str, Value, bool)]) {
        for (op_value, value, expected) in cases {
            check(column, op_value, value.clone(), *expected);
        }
    }

    fn parse_err(filter: &str) -> String {
        match Filter::parse(filter) {
            Ok(parsed) => panic!("{filter} parsed: {parsed:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn bind_err(filter: &str) -> String {
        let parsed = Filter::parse(filter).unwrap_or_else(|err| panic!("{filter}: {err}"));
        match parsed.bind(&columns()) {
            Ok(bound) => panic!("{filter} bound: {bound:?}"),
            Err(err) => err.to_string(),
        }
    }

    fn scalar(text: &str) -> Operand {
        Operand::Scalar(text.to_owned())
    }

    // --- grammar -------------------------------------------------------------------------

    #[test]
    fn empty_and_blank_filters_have_no_conditions() {
        for text in ["", "   ", "\n\t"] {
            let filter = Filter::parse(text).unwrap();
            assert!(filter.is_empty());
            assert!(filter.bind(&[]).unwrap().matches(&Map::new()));
        }
        assert!(BoundFilter::default().matches(&Map::new()));
    }

    #[test]
    fn conditions_are_split_on_top_level_commas_and_trimmed() {
        let filter: Filter = "  id=gt.0 ,  title=not.like.a% ,id=lt.100 "
            .parse()
            .unwrap();
        let got: Vec<_> = filter
            .conditions()
            .iter()
            .map(|c| (c.column(), c.op(), c.is_negated(), c.operand().clone()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("id", Op::Gt, false, scalar("0")),
                ("title", Op::Like, true, scalar("a%")),
                ("id", Op::Lt, false, scalar("100")),
            ]
        );
        assert_eq!(filter.columns(), vec!["id", "title"]);
    }

    #[test]
    fn every_operator_parses_with_and_without_not() {
        for op in Op::ALL {
            assert_eq!(Op::from_name(op.as_str()), Some(op));
            let value = if op == Op::In { "(1)" } else { "1" };
            for negate in [false, true] {
                let prefix = if negate { "not." } else { "" };
                let filter = Filter::parse(&format!("c={prefix}{op}.{value}")).unwrap();
                let condition = &filter.conditions()[0];
                assert_eq!((condition.op(), condition.is_negated()), (op, negate));
            }
        }
        assert_eq!(Op::from_name("EQ"), None);
    }

    #[test]
    fn quoted_values_keep_commas_and_escaped_quotes() {
        let filter = Filter::parse(r#"title=eq."a,b",id=eq.1"#).unwrap();
        assert_eq!(filter.conditions().len(), 2);
        assert_eq!(filter.conditions()[0].operand(), &scalar("a,b"));
        assert_eq!(filter.conditions()[1].operand(), &scalar("1"));

        let cases = [
            (r#"title=eq."say \"hi\", ok""#, r#"say "hi", ok"#),
            (r#"title=eq."a\\b""#, r"a\b"),
            (r#"title=eq."(,)""#, "(,)"),
            (r#"title=eq."""#, ""),
            // Not exactly one quoted string: kept verbatim, as upstream does.
            (r#"title=eq."a"b"#, r#""a"b"#),
            (r#"title=eq."open"#, r#""open"#),
            (r#"title=eq.a"b"#, r#"a"b"#),
        ];
        for (text, want) in cases {
            let filter = Filter::parse(text).unwrap();
            assert_eq!(filter.conditions()[0].operand(), &scalar(want), "{text}");
        }
        // A quote not after `.`, `(` or `,` does not open a quoted run, so the comma splits.
        assert_eq!(
            Filter::parse(r#"title=eq.a"b,id=eq.1"#)
                .unwrap()
                .conditions()
                .len(),
            2
        );
        assert!(matches(
            r#"title=eq."say \"hi\", ok""#,
            "title",
            json!(r#"say "hi", ok"#)
        ));
    }

    #[test]
    fn in_lists_read_quoted_elements_and_null() {
        let filter =
            Filter::parse(r#"title=in.("a,b",c,"d\"e",  f g  ,NULL,"NULL",\n\ull)"#).unwrap();
        let want = vec![
            Some("a,b".to_owned()),
            Some("c".to_owned()),
            Some("d\"e".to_owned()),
            Some("f g".to_owned()),
            None,
            Some("NULL".to_owned()),
            Some("null".to_owned()),
        ];
        assert_eq!(filter.conditions()[0].operand(), &Operand::List(want));
        assert_eq!(
            Filter::parse("id=in.()").unwrap().conditions()[0].operand(),
            &Operand::List(Vec::new())
        );
        assert!(matches(r#"title=in.("a,b",c)"#, "title", json!("a,b")));
        assert!(!matches(r#"title=in.("a,b",c)"#, "title", json!("a")));
        assert!(matches(r#"title=in.("null")"#, "title", json!("null")));
        assert!(!matches("title=in.()", "title", json!("x")));
        assert!(matches("title=not.in.()", "title", json!("x")));
    }

    #[test]
    fn in_lists_with_500_values_are_hash_lookups() {
        let values: Vec<String> = (0..500).map(|i| (i * 2).to_string()).collect();
        let bound = bind(&format!("id=in.({})", values.join(",")));
        assert!(matches!(
            &bound.conditions[0].test,
            Test::In { set, has_null: false } if set.len() == 500
        ));
        let negated = bind(&format!("id=not.in.({})", values.join(",")));
        for i in 0..1000 {
            let row = record("id", json!(i));
            assert_eq!(bound.matches(&row), i % 2 == 0, "{i}");
            assert_eq!(negated.matches(&row), i % 2 == 1, "{i}");
        }

        let titles: Vec<String> = (0..500).map(|i| format!(r#""t,\"{i}\"""#)).collect();
        let bound = bind(&format!("title=in.({})", titles.join(",")));
        assert!(bound.matches(&record("title", json!(r#"t,"499""#))));
        assert!(bound.matches(&record("title", json!(r#"t,"0""#))));
        assert!(!bound.matches(&record("title", json!(r#"t,"500""#))));
        assert!(!bound.matches(&record("title", json!("t,499"))));
    }

    #[test]
    fn in_lists_with_a_null_element_fail_on_a_miss_either_way() {
        check("id", "in.(1,NULL)", json!(1), true);
        assert!(!matches("id=in.(1,null)", "id", json!(2)));
        assert!(!matches("id=not.in.(1,null)", "id", json!(2)));
    }

    // --- exact error texts -------------------------------------------------------------------

    #[test]
    fn parse_errors_have_the_upstream_texts() {
        let p = "Error parsing `filter` params: ";
        assert_eq!(
            parse_err("subject=foo.hey"),
            format!(r#"{p}["foo", "hey"]"#)
        );
        assert_eq!(parse_err("undefined"), format!(r#"{p}["undefined"]"#));
        assert_eq!(parse_err("id=eq"), format!(r#"{p}["eq"]"#));
        assert_eq!(parse_err("id=not.eq"), format!(r#"{p}["eq"]"#));
        assert_eq!(parse_err("id=not.foo.1"), format!(r#"{p}["foo", "1"]"#));
        assert_eq!(parse_err("id=EQ.1"), format!(r#"{p}["EQ", "1"]"#));
        assert_eq!(parse_err("id=.1"), format!(r#"{p}["", "1"]"#));
        assert_eq!(parse_err("id=eq.1,foo"), format!(r#"{p}["foo"]"#));
        let in_error = format!("{p}`in` filter value must be wrapped by parentheses");
        for text in ["id=in.1", "id=in.(1", "id=in.1)", "id=in.(", "id=not.in.x"] {
            assert_eq!(parse_err(text), in_error, "{text}");
        }
        let empty = format!("{p}filter must not contain empty segments (check for extra commas)");
        for text in [
            "id=eq.1,,x=eq.2",
            "id=eq.1,",
            ",id=eq.1",
            "id=eq.1, ,x=eq.2",
        ] {
            assert_eq!(parse_err(text), empty, "{text}");
        }
        assert_eq!(
            parse_err("id=in.(1,,2)"),
            format!(r#"{p}malformed array literal: "{{1,,2}}""#)
        );
        assert_eq!(
            parse_err(r#"id=in.(a"b")"#),
            format!(r#"{p}malformed array literal: "{{a"b"}}""#)
        );
    }

    #[test]
    fn parse_error_pieces_are_rendered_like_elixir_inspect() {
        let p = "Error parsing `filter` params: ";
        assert_eq!(parse_err(r#"a=b"c"#), format!(r#"{p}["b\"c"]"#));
        assert_eq!(parse_err(r"a=b\c"), format!(r#"{p}["b\\c"]"#));
        assert_eq!(parse_err("a=x#{y}"), format!(r#"{p}["x\#{{y}}"]"#));
        assert_eq!(parse_err("a=x\ty.z"), format!(r#"{p}["x\ty", "z"]"#));
        assert_eq!(parse_err("a=é.ü"), format!(r#"{p}["é", "ü"]"#));
        assert_eq!(parse_err("a=x\u{1}"), format!("{p}[<<120, 1>>]"));
        let long_op = "o".repeat(40);
        let long_value = "v".repeat(40);
        assert_eq!(
            parse_err(&format!("a={long_op}.{long_value}")),
            format!("{p}[\"{long_op}\",\n \"{long_value}\"]")
        );
        let fits = "v".repeat(30);
        assert_eq!(
            parse_err(&format!("a={long_op}.{fits}")),
            format!("{p}[\"{long_op}\", \"{fits}\"]")
        );
        let huge = "x".repeat(5000);
        assert_eq!(
            parse_err(&format!("a={huge}")),
            format!("{p}[\"{}\" <> ...]", "x".repeat(4096))
        );
    }

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

    #[test]
    fn bind_reports_the_first_failing_condition() {
        assert_eq!(
            bind_err("id=eq.1,nope=eq.2,id=eq.x"),
            "invalid column for filter nope"
        );
    }

    // --- per type ------------------------------------------------------------------------

    #[test]
    fn int4_compares_numerically() {
        check_all(
            "id",
            &[
                ("eq.5", json!(5), true),
                ("eq.5", json!(6), false),
                ("eq. +5", json!(5), true),
                ("eq.5", json!("5"), true),
                ("neq.5", json!(6), true),
                ("neq.5", json!(5), false),
                ("lt.5", json!(4), true),
                ("lt.5", json!(5), false),
                ("lt.10", json!(9), true),
                ("lte.5", json!(5), true),
                ("lte.5", json!(6), false),
                ("gt.-3", json!(-2), true),
                ("gt.5", json!(5), false),
                ("gte.5", json!(5), true),
                ("gte.5", json!(4), false),
                ("in.(1,5,9)", json!(5), true),
                ("in.(1, 5 ,9)", json!(5), true),
                ("in.(1,5,9)", json!(4), false),
                ("isdistinct.5", json!(4), true),
                ("isdistinct.5", json!(5), false),
                ("is.null", json!(5), false),
                ("eq.2147483647", json!(2147483647), true),
                ("eq.-2147483648", json!(-2147483648i64), true),
            ],
        );
        check_all(
            "small",
            &[("eq.-32768", json!(-32768), true), ("gt.1", json!(2), true)],
        );
        check_all(
            "obj",
            &[
                ("eq.4294967295", json!(4294967295u64), true),
                ("lt.4294967295", json!(4294967295u64), false),
            ],
        );
    }

    #[test]
    fn int8_beyond_2_pow_53_compares_exactly() {
        // 2^53 + 1 and 2^53 are the same f64; they must not be the same int8.
        let above = json!(9_007_199_254_740_993i64);
        let at = json!(9_007_199_254_740_992i64);
        check_all(
            "big",
            &[
                ("eq.9007199254740993", above.clone(), true),
                ("eq.9007199254740993", at.clone(), false),
                ("neq.9007199254740993", at.clone(), true),
                ("neq.9007199254740993", above.clone(), false),
                ("lt.9007199254740993", at.clone(), true),
                ("lt.9007199254740992", at.clone(), false),
                ("lte.9007199254740992", at.clone(), true),
                ("lte.9007199254740992", above.clone(), false),
                ("gt.9007199254740992", above.clone(), true),
                ("gt.9007199254740993", above.clone(), false),
                ("gte.9007199254740993", above.clone(), true),
                ("gte.9007199254740993", at.clone(), false),
                ("in.(9007199254740993,1)", above.clone(), true),
                ("in.(9007199254740993,1)", at.clone(), false),
                ("isdistinct.9007199254740993", at, true),
                ("isdistinct.9007199254740993", above, false),
                ("eq.9223372036854775807", json!(i64::MAX), true),
                ("gte.-9223372036854775808", json!(i64::MIN), true),
            ],
        );
        let parsed: Value = serde_json::from_str(r#"{"big": 9007199254740993}"#).unwrap();
        let row = parsed.as_object().unwrap();
        assert!(bind("big=eq.9007199254740993").matches(row));
        assert!(!bind("big=eq.9007199254740992").matches(row));
    }

    #[test]
    fn numeric_compares_exact_decimals() {
        check_all(
            "amount",
            &[
                ("eq.1.10", json!(1.1), true),
                ("eq.1.1", json!(1.2), false),
                ("eq.0.1", json!(0.1), true),
                (
                    "eq.12345678901234567890",
                    json!(12_345_678_901_234_567_890u64),
                    true,
                ),
                (
                    "eq.12345678901234567891",
                    json!(12_345_678_901_234_567_890u64),
                    false,
                ),
                ("eq.123.450", json!("123.45"), true),
                ("neq.0", json!(-0.0), false),
                ("neq.0", json!(0.001), true),
                (
                    "lt.12345678901234567890.5",
                    json!(12_345_678_901_234_567_890u64),
                    true,
                ),
                ("lt.-1.5", json!(-1.25), false),
                ("lte.-1.5", json!(-1.5), true),
                ("lte.-1.5", json!(-1.4), false),
                ("gt.1e3", json!(1000.5), true),
                ("gt.1e3", json!(1000), false),
                ("gte.1e3", json!(1000), true),
                ("gte.1e3", json!(999), false),
                ("gt.-0.5", json!(0), true),
                ("gt.1000000", json!("NaN"), true),
                ("eq.NaN", json!("NaN"), true),
                ("lt.Infinity", json!("NaN"), false),
                ("gt.99999999999999999999", json!("Infinity"), true),
                ("lt.-1e400", json!("-Infinity"), true),
                ("in.(1.0,2.50)", json!(2.5), true),
                ("in.(1.0,2.50)", json!(3), false),
                ("isdistinct.2.50", json!(2.5), false),
                ("isdistinct.2.50", json!(2.51), true),
            ],
        );
    }

    #[test]
    fn float8_and_float4_follow_postgres_float_order() {
        check_all(
            "ratio",
            &[
                ("eq.1.5", json!(1.5), true),
                ("eq.1.5", json!(1.25), false),
                ("eq.2", json!(2), true),
                ("neq.2", json!(2.0), false),
                ("neq.1.5", json!(2), true),
                ("lt.2", json!(1.999), true),
                ("lt.2", json!(2), false),
                ("lte.2", json!(2.0), true),
                ("lte.2", json!(2.5), false),
                ("gt.-1e10", json!(0), true),
                ("gt.0", json!(-0.5), false),
                ("gte.2", json!(2), true),
                ("gte.2", json!(1.5), false),
                ("eq.-0", json!(0.0), true),
                ("eq.NaN", json!("NaN"), true),
                ("gt.Infinity", json!("NaN"), true),
                ("lt.-Infinity", json!(-1e308), false),
                ("eq.-Infinity", json!("-Infinity"), true),
                ("in.(0.5,1.5)", json!(1.5), true),
                ("in.(0.5,1.5)", json!(2.5), false),
                ("isdistinct.0.5", json!(0.5), false),
                ("isdistinct.0.5", json!(0.25), true),
            ],
        );
        check_all(
            "r4",
            &[
                ("eq.1.1", json!(1.1), true),
                ("gt.1.1", json!(1.2), true),
                ("lt.1.1", json!(1.1), false),
            ],
        );
    }

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
    fn uuid_ignores_case_and_format() {
        let u1 = json!(U1);
        let upper = U1.to_uppercase();
        let braces = format!("{{{U1}}}");
        let bare = U1.replace('-', "");
        check_all(
            "uid",
            &[
                (&format!("eq.{upper}"), u1.clone(), true),
                (&format!("eq.{braces}"), u1.clone(), true),
                (&format!("eq.{bare}"), u1.clone(), true),
                (&format!("eq.{U2}"), u1.clone(), false),
                (&format!("neq.{U2}"), u1.clone(), true),
                (&format!("neq.{upper}"), u1.clone(), false),
                (&format!("lt.{U2}"), u1.clone(), true),
                (&format!("lt.{U1}"), u1.clone(), false),
                (&format!("lte.{U1}"), u1.clone(), true),
                (&format!("lte.{U1}"), json!(U2), false),
                (&format!("gt.{U1}"), json!(U2), true),
                (&format!("gt.{U2}"), u1.clone(), false),
                (&format!("gte.{U1}"), u1.clone(), true),
                (&format!("gte.{U2}"), u1.clone(), false),
                (
                    &format!("in.({},{upper})", U2.to_uppercase()),
                    u1.clone(),
                    true,
                ),
                (&format!("in.({U2})"), u1.clone(), false),
                (&format!("isdistinct.{upper}"), u1.clone(), false),
                (&format!("isdistinct.{U2}"), u1, true),
            ],
        );
    }

    #[test]
    fn bool_reads_boolin_spellings() {
        check_all(
            "done",
            &[
                ("eq.true", json!(true), true),
                ("eq.true", json!(false), false),
                ("eq.t", json!(true), true),
                ("eq.YES", json!(true), true),
                ("eq.off", json!(false), true),
                ("eq.0", json!(false), true),
                ("eq.true", json!("t"), true),
                ("neq.true", json!(false), true),
                ("neq.false", json!(false), false),
                ("lt.true", json!(false), true),
                ("lt.false", json!(false), false),
                ("lte.false", json!(false), true),
                ("lte.false", json!(true), false),
                ("gt.false", json!(true), true),
                ("gt.true", json!(true), false),
                ("gte.false", json!(false), true),
                ("gte.true", json!(false), false),
                ("in.(true)", json!(true), true),
                ("in.(t)", json!(false), false),
                ("is.true", json!(true), true),
                ("is.true", json!(false), false),
                ("is.FALSE", json!(false), true),
                ("is.false", json!(true), false),
                ("is.unknown", json!(true), false),
                ("is.Null", json!(false), false),
                ("isdistinct.true", json!(false), true),
                ("isdistinct.true", json!(true), false),
            ],
        );
    }

    #[test]
    fn timestamptz_compares_instants() {
        let at = json!("2025-05-01T12:00:00+00:00");
        check_all(
            "at",
            &[
                ("eq.2025-05-01 12:00:00+00", at.clone(), true),
                ("eq.2025-05-01T12:00:00Z", at.clone(), true),
                ("eq.2025-05-01T14:00:00+02:00", at.clone(), true),
                ("eq.2025-05-01 07:00:00 -05", at.clone(), true),
                ("eq.2025-05-01 12:00:00 UTC", at.clone(), true),
                ("eq.2025-05-01 12:00", at.clone(), true),
                ("eq.2025-05-01 12:00:00.000001+00", at.clone(), false),
                (
                    "eq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T14:00:00+02:00"),
                    true,
                ),
                (
                    "eq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T17:30:00+05:30"),
                    true,
                ),
                ("eq.2025-05-01T17:30:00+0530", at.clone(), true),
                ("eq.2025-05-01T06:29:30-053030", at.clone(), true),
                ("eq.2025-05-01T12:00:00+00:00:00", at.clone(), true),
                ("eq.2025-05-01T12:00:00 GMT", at.clone(), true),
                (
                    "eq.2025-05-01T12:00:00.123456Z",
                    json!("2025-05-01T12:00:00.123456+00:00"),
                    true,
                ),
                (
                    "eq.2025-05-01 12:00:00.1234565+00",
                    json!("2025-05-01T12:00:00.123456+00:00"),
                    true,
                ),
                (
                    "neq.2025-05-01T12:00:00Z",
                    json!("2025-05-01T12:00:01+00:00"),
                    true,
                ),
                ("neq.2025-05-01T10:00:00-02", at.clone(), false),
                (
                    "lt.2025-05-01T12:00:00Z",
                    json!("2025-05-01T11:59:59.999999+00:00"),
                    true,
                ),
                (
                    "lt.2025-05-01T12:00:00Z",
                    json!("2025-05-01T13:30:00+01:30"),
                    false,
                ),
                (
                    "lte.2025-05-01T12:00:00Z",
                    json!("2025-05-01T13:30:00+01:30"),
                    true,
                ),
                (
                    "lte.2025-05-01T12:00:00Z",
                    json!("2025-05-01T12:00:01+00:00"),
                    false,
                ),
                (
                    "gt.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00.5+00:00"),
                    true,
                ),
                (
                    "gt.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00+00:00"),
                    false,
                ),
                (
                    "gte.2025-05-01 12:00:00-05",
                    json!("2025-05-01T17:00:00+00:00"),
                    true,
                ),
                (
                    "gte.2025-05-01 12:00:00-05",
                    json!("2025-05-01T16:59:59+00:00"),
                    false,
                ),
                (
                    r#"in.("2025-05-01 12:00:00+00",2025-06-01)"#,
                    at.clone(),
                    true,
                ),
                ("in.(2025-06-01)", at.clone(), false),
                ("isdistinct.2025-05-01T12:00:00Z", at.clone(), false),
                ("isdistinct.2025-05-01T12:00:01Z", at.clone(), true),
                ("gt.-infinity", at.clone(), true),
                ("lt.infinity", at, true),
                ("eq.infinity", json!("infinity"), true),
            ],
        );
    }

    #[test]
    fn timestamp_and_date_compare_naive_values() {
        let local = json!("2025-05-01T12:34:56.123456");
        check_all(
            "local",
            &[
                ("eq.2025-05-01 12:34:56.123456", local.clone(), true),
                ("eq.2025-05-01T12:34:56.123456", local.clone(), true),
                ("eq.2025-05-01 12:34:56.123456+02", local.clone(), true),
                ("eq.2025-05-01 12:34:56", local.clone(), false),
                ("neq.2025-05-01 12:34:56", local.clone(), true),
                ("neq.2025-05-01 12:34:56.123456", local.clone(), false),
                ("lt.2025-05-02", local.clone(), true),
                ("lt.2025-05-01", local.clone(), false),
                ("lte.2025-05-01 12:34:56.123456", local.clone(), true),
                ("lte.2025-05-01 12:34:56", local.clone(), false),
                ("gt.2025-05-01", local.clone(), true),
                ("gt.2025-05-02", local.clone(), false),
                ("gte.2025-05-01 12:34:56.123456", local.clone(), true),
                ("gte.2025-05-01 12:34:57", local.clone(), false),
                ("in.(2025-05-01 12:34:56.123456)", local.clone(), true),
                ("in.(2025-05-01)", local.clone(), false),
                ("isdistinct.2025-05-01", local.clone(), true),
                ("isdistinct.2025-05-01 12:34:56.123456", local, false),
                ("eq.2025-05-02 00:00:00", json!("2025-05-01T24:00:00"), true),
                ("eq.epoch", json!("1970-01-01T00:00:00"), true),
            ],
        );
        let day = json!("2025-05-01");
        check_all(
            "day",
            &[
                ("eq.2025-05-01", day.clone(), true),
                ("eq.2025-5-1", day.clone(), true),
                ("eq.2025-05-01 23:59", day.clone(), true),
                ("eq.2025-05-02", day.clone(), false),
                ("neq.2025-05-02", day.clone(), true),
                ("neq.2025-05-01", day.clone(), false),
                ("lt.2025-05-02", day.clone(), true),
                ("lt.2025-05-01", day.clone(), false),
                ("lte.2025-05-01", day.clone(), true),
                ("lte.2025-04-30", day.clone(), false),
                ("gt.2025-04-30", day.clone(), true),
                ("gt.2025-05-01", day.clone(), false),
                ("gte.2025-05-01", day.clone(), true),
                ("gte.2025-05-02", day.clone(), false),
                ("in.(2025-05-01,2025-06-01)", day.clone(), true),
                ("in.(2025-06-01)", day.clone(), false),
                ("isdistinct.2025-05-01", day.clone(), false),
                ("isdistinct.2025-05-02", day.clone(), true),
                ("gt.-infinity", day.clone(), true),
                ("lt.infinity", day, true),
                ("lt.2025-05-01", json!("-infinity"), true),
            ],
        );
    }

    #[test]
    fn time_and_timetz_follow_postgres_order() {
        check_all(
            "clock",
            &[
                ("eq.12:00", json!("12:00:00"), true),
                ("eq.allballs", json!("00:00:00"), true),
                ("lt.12:00:00.5", json!("12:00:00"), true),
                ("gt.23:59:59", json!("24:00:00"), true),
                ("gte.13:00", json!("12:00:00"), false),
            ],
        );
        check_all(
            "clocktz",
            &[
                ("eq.12:00:00+00", json!("12:00:00+00:00"), true),
                // Same instant, different zone: not equal in PostgreSQL.
                ("eq.13:00:00+01", json!("12:00:00+00:00"), false),
                ("lt.12:00:00+00", json!("12:30:00+01:00"), true),
                ("gt.12:00:00+00", json!("12:30:00+01:00"), false),
            ],
        );
    }

    #[test]
    fn json_and_jsonb_compare_by_json_equality() {
        check_all(
            "doc",
            &[
                (
                    r#"eq."{\"a\":1,\"b\":[1,2]}""#,
                    json!({"b": [1, 2], "a": 1}),
                    true,
                ),
                (
                    r#"eq."{\"a\":1,\"b\":[1,2]}""#,
                    json!({"a": 1, "b": [2, 1]}),
                    false,
                ),
                (r#"eq.{"a":1.0}"#, json!({"a": 1}), true),
                (r#"eq."\"hi\"""#, json!("hi"), true),
                ("eq.3", json!(3.0), true),
                ("eq.true", json!(true), true),
                ("eq.true", json!("true"), false),
                (r#"neq.{"a":1}"#, json!({"a": 2}), true),
                (r#"neq.{"a":1}"#, json!({"a": 1}), false),
                (r#"in.("{\"a\":1}",2)"#, json!(2), true),
                (r#"in.("{\"a\":1}",2)"#, json!({"a": 1}), true),
                (r#"in.("{\"a\":1}",2)"#, json!({"a": 2}), false),
                (r#"isdistinct.{"a":1}"#, json!({"a": 1}), false),
                (r#"isdistinct.{"a":1}"#, json!([1]), true),
            ],
        );
        check_all(
            "raw",
            &[
                (r#"eq.{"a":1}"#, json!({"a": 1}), true),
                (r#"eq.{"a":1}"#, json!({"a": "1"}), false),
            ],
        );
    }

    #[test]
    fn arrays_compare_element_by_element() {
        check_all(
            "nums",
            &[
                (r#"eq."{1,2,3}""#, json!([1, 2, 3]), true),
                (r#"eq."{1,2,3}""#, json!([1, 2]), false),
                (r#"eq."{1,2,3}""#, json!("{1,2,3}"), true),
                ("eq.{}", json!([]), true),
                (r#"eq."{{1,2},{3,4}}""#, json!([[1, 2], [3, 4]]), true),
                (r#"eq."{1,2,3,4}""#, json!([[1, 2], [3, 4]]), false),
                (r#"eq."{1,NULL}""#, json!([1, null]), true),
                (r#"neq."{1,2}""#, json!([1, 2, 3]), true),
                (r#"neq."{1,2}""#, json!([1, 2]), false),
                (r#"lt."{1,3}""#, json!([1, 2, 9]), true),
                (r#"lt."{1,2}""#, json!([1, 2]), false),
                (r#"lte."{1,2}""#, json!([1, 2]), true),
                (r#"lte."{1,2}""#, json!([1, 3]), false),
                (r#"gt."{1,2}""#, json!([1, 2, 0]), true),
                (r#"gt."{1,2}""#, json!([1, null]), true),
                (r#"gt."{2}""#, json!([1, 9]), false),
                (r#"gte."{2}""#, json!([2]), true),
                (r#"gte."{2}""#, json!([1, 9]), false),
                (r#"in.("{1,2}","{3}")"#, json!([3]), true),
                (r#"in.("{1,2}","{3}")"#, json!([2, 1]), false),
                (r#"isdistinct."{1}""#, json!([1]), false),
                (r#"isdistinct."{1}""#, json!([2]), true),
            ],
        );
        check_all(
            "tags",
            &[
                (r#"eq."{\"a b\",c}""#, json!(["a b", "c"]), true),
                (r#"eq."{\"a b\",c}""#, json!(["a b"]), false),
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

    // --- NULL ---------------------------------------------------------------------------

    #[test]
    fn null_values_pass_comparisons_whatever_not_says() {
        let filters = [
            "id=eq.5",
            "id=neq.5",
            "id=lt.5",
            "id=lte.5",
            "id=gt.5",
            "id=gte.5",
            "id=in.(1,2)",
            "title=like.a%",
            "title=ilike.a%",
            "title=match.^a",
            "title=imatch.^a",
            "doc=eq.1",
            "nums=eq.{}",
        ];
        for filter in filters {
            let column = filter.split('=').next().unwrap();
            let negated = filter.replacen('=', "=not.", 1);
            for text in [filter, negated.as_str()] {
                let bound = bind(text);
                assert!(
                    bound.matches(&record(column, Value::Null)),
                    "{text} on null"
                );
                assert!(bound.matches(&Map::new()), "{text} on a missing key");
            }
        }
    }

    #[test]
    fn is_and_isdistinct_use_real_null_semantics() {
        let cases = [
            ("id=is.null", Value::Null, true),
            ("id=is.NULL", Value::Null, true),
            ("id=not.is.null", Value::Null, false),
            ("id=is.null", json!(5), false),
            ("id=not.is.null", json!(5), true),
            ("done=is.unknown", Value::Null, true),
            ("done=not.is.unknown", Value::Null, false),
            ("done=is.true", Value::Null, false),
            ("done=not.is.true", Value::Null, true),
            ("done=is.false", Value::Null, false),
            ("done=not.is.false", Value::Null, true),
            ("id=isdistinct.5", Value::Null, true),
            ("id=not.isdistinct.5", Value::Null, false),
            ("title=isdistinct.x", Value::Null, true),
        ];
        for (filter, value, expected) in cases {
            let column = filter.split('=').next().unwrap();
            assert_eq!(
                matches(filter, column, value.clone()),
                expected,
                "{filter} on {value}"
            );
        }
        assert!(bind("id=is.null").matches(&Map::new()));
        assert!(!bind("id=not.is.null").matches(&Map::new()));
    }

    #[test]
    fn conditions_are_anded() {
        let bound = bind("id=gt.0,id=lt.10,title=like.a%");
        let row = |id: i64, title: &str| json!({"id": id, "title": title});
        assert!(bound.matches(row(5, "abc").as_object().unwrap()));
        assert!(!bound.matches(row(10, "abc").as_object().unwrap()));
        assert!(!bound.matches(row(5, "xbc").as_object().unwrap()));
    }

    #[test]
    fn unreadable_record_values_fail_with_and_without_not() {
        for filter in ["id=eq.5", "id=not.eq.5", "uid=neq.x", "done=is.true"] {
            let Ok(parsed) = Filter::parse(filter) else {
                panic!("{filter}")
            };
            let Ok(bound) = parsed.bind(&columns()) else {
                continue;
            };
            let column = filter.split('=').next().unwrap();
            assert!(
                !bound.matches(&record(column, json!({"not": "a number"}))),
                "{filter}"
            );
        }
        assert!(!matches("id=not.eq.5", "id", json!("five")));
        assert!(!matches("at=not.eq.2025-05-01", "at", json!("garbage")));
    }

    // --- properties -----------------------------------------------------------------------

    const MODEL_OPS: [&str; 6] = ["eq", "neq", "lt", "lte", "gt", "gte"];

    #[derive(Debug, Clone)]
    enum ModelTest {
        Compare(usize, i32),
        In(Vec<i32>),
    }

    fn model_condition() -> impl Strategy<Value = (ModelTest, bool)> {
        let value = prop_oneof![4 => -6i32..6, 1 => any::<i32>()];
        let test = prop_oneof![
            (0..MODEL_OPS.len(), value.clone()).prop_map(|(op, v)| ModelTest::Compare(op, v)),
            prop::collection::vec(value, 0..8).prop_map(ModelTest::In),
        ];
        (test, any::<bool>())
    }

    fn model_text((test, negate): &(ModelTest, bool)) -> String {
        let not = if *negate { "not." } else { "" };
        match test {
            ModelTest::Compare(op, v) => format!("id={not}{}.{v}", MODEL_OPS[*op]),
            ModelTest::In(values) => {
                let list: Vec<String> = values.iter().map(i32::to_string).collect();
                format!("id={not}in.({})", list.join(","))
            }
        }
    }

    fn model_holds((test, negate): &(ModelTest, bool), value: Option<i32>) -> bool {
        let Some(x) = value else {
            return true;
        };
        let holds = match test {
            ModelTest::Compare(op, v) => match *op {
                0 => x == *v,
                1 => x != *v,
                2 => x < *v,
                3 => x <= *v,
                4 => x > *v,
                _ => x >= *v,
            },
            ModelTest::In(values) => values.contains(&x),
        };
        holds != *negate
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            "[0-9T:+. -]{0,32}".prop_map(Value::String),
            "[-+]?[0-9.eE]{0,24}|NaN|-?Infinity|infinity|[{}\",a-z0-9 NUL\\\\]{0,16}"
                .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 48, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    /// One bound filter per column type and operator family, built once.
    fn every_kind_of_filter() -> &'static [(String, BoundFilter)] {
        static FILTERS: OnceLock<Vec<(String, BoundFilter)>> = OnceLock::new();
        FILTERS.get_or_init(|| {
            let texts = [
                "id=eq.5",
                "id=lt.5",
                "id=in.(1,2,NULL)",
                "id=isdistinct.5",
                "small=gte.1",
                "big=gt.9007199254740993",
                "obj=eq.7",
                "amount=lt.1.5",
                "amount=in.(1,NaN)",
                "ratio=gte.0.5",
                "r4=lt.1.1",
                "title=eq.x",
                "title=lt.x",
                "title=like.a%b_",
                "title=ilike.%É%",
                "title=match.^a+$",
                "title=imatch.b",
                "vc=in.(a,b)",
                "code=eq.ab",
                "code=like.a%",
                "email=eq.X",
                "email=match.x",
                "uid=eq.639f86b1-738b-43ed-bb09-c8d3f3bafa30",
                "uid=gt.639f86b1-738b-43ed-bb09-c8d3f3bafa30",
                "done=is.true",
                "done=is.unknown",
                "done=eq.t",
                "at=lt.2025-05-01T12:00:00Z",
                "at=in.(infinity)",
                "local=gte.2025-05-01",
                "day=eq.2025-05-01",
                "clock=lt.12:00",
                "clocktz=gt.12:00+01",
                r#"doc=eq.{"a":1}"#,
                "doc=in.(1,2)",
                "raw=neq.[]",
                r#"nums=lt."{1,2}""#,
                r#"nums=eq."{{1},{2}}""#,
                r#"tags=eq."{a,NULL}""#,
                "mood=gt.m",
                "mood=like.%",
                "id=is.null",
            ];
            texts
                .iter()
                .flat_map(|text| [(*text).to_owned(), text.replacen('=', "=not.", 1)])
                .map(|text| {
                    let column = text.split('=').next().unwrap_or_default().to_owned();
                    (column, bind(&text))
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = Filter::parse(&text);
        }

        #[test]
        fn parse_and_bind_never_panic_on_filter_like_text(
            text in r#"(id|title|at|nums|doc|x)=(not\.)?(eq|in|like|match|is|lt)\.[a-z0-9=.,()"\\{} %_:+-]{0,32}"#,
        ) {
            if let Ok(filter) = Filter::parse(&text) {
                if let Ok(bound) = filter.bind(&columns()) {
                    let _ = bound.matches(&record("id", json!(1)));
                }
            }
        }

        #[test]
        fn int4_filters_agree_with_a_naive_model(
            conditions in prop::collection::vec(model_condition(), 1..4),
            value in prop::option::of(prop_oneof![4 => -6i32..6, 1 => any::<i32>()]),
        ) {
            let text: Vec<String> = conditions.iter().map(model_text).collect();
            let text = text.join(",");
            let filter = Filter::parse(&text).map_err(|err| TestCaseError::fail(err.to_string()))?;
            let bound = filter
                .bind(&[Column::new("id", "int4")])
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            let row = record("id", value.map_or(Value::Null, Value::from));
            let expected = conditions.iter().all(|condition| model_holds(condition, value));
            prop_assert_eq!(bound.matches(&row), expected, "{} on {:?}", text, value);
        }

        #[test]
        fn matches_never_panics_on_arbitrary_json(value in arb_json()) {
            for (column, bound) in every_kind_of_filter() {
                let _ = bound.matches(&record(column, value.clone()));
            }
            if let Value::Object(map) = &value {
                for (_, bound) in every_kind_of_filter() {
                    let _ = bound.matches(map);
                }
            }
        }
    }
}
