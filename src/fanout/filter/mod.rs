//! Postgres Changes filters: the `filter` grammar of docs/protocol.md 6.2 and the row predicate.
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
//!    print the ``Error parsing `filter` params: …`` texts of docs/protocol.md 6.2, which 6.5 sends
//!    as a `system` message.
//! 2. [`Filter::bind`] checks the filter against the table's [`Column`]s: every column must exist,
//!    every value is cast to its column's type once, the operator must suit the type, LIKE
//!    patterns and regexes are compiled once, and `in` lists become hash sets ([`BindError`]).
//! 3. [`BoundFilter::matches`] evaluates a record shaped like `to_jsonb(row)`. It never panics
//!    and never re-parses the filter; an `in` list costs one hash lookup whatever its length.
//!
//! # Grammar (docs/protocol.md 6.2)
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
//! (docs/protocol.md 6.2): on a NULL value, `eq neq lt lte gt gte in like ilike match imatch` pass,
//! with or without `not.`. `is` and `isdistinct` use real NULL semantics: `is.null` and
//! `is.unknown` are true, `is.true`/`is.false` false, `isdistinct.x` true; `not.` inverts them.
//! A non-NULL record value that cannot be read as the column's type (a string in an `int4`
//! column, …) fails its condition with or without `not.`.
//!
//! # Layout
//!
//! One file per stage: `grammar` parses the text (with `array_literal` for `in` lists and
//! array values, and `inspect` for upstream-compatible error details), `error` holds both error
//! types, `types` reads column types, `value` defines the comparable keys that `cast`, `dates`
//! and `json` produce from filter text and `record` produces from record values, and `bound`
//! binds a filter to a table and evaluates it.

mod array_literal;
mod bound;
mod cast;
mod dates;
mod error;
mod grammar;
mod inspect;
mod json;
#[cfg(test)]
mod proptests;
mod record;
#[cfg(test)]
mod test_support;
mod types;
mod value;

pub use self::bound::BoundFilter;
pub use self::error::{BindError, ParseError};
pub use self::grammar::{Condition, Filter, Op, Operand};
pub use self::types::Column;
