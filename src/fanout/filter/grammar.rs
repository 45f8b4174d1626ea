//! The type-free filter: [`Op`], [`Operand`], [`Condition`] and [`Filter::parse`], which splits
//! the text at top-level commas and reads each `column=[not.]op.value` segment (docs/protocol.md 6.2;
//! the grammar is described in the module docs of `fanout::filter`).

use std::fmt;
use std::str::FromStr;

use super::array_literal::{parse_array_literal, Literal};
use super::error::ParseError;

/// A filter operator of docs/protocol.md 6.2.
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
    /// Every operator, in the order of docs/protocol.md 6.2.
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
    pub(super) fn sql_symbol(self) -> &'static str {
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
    /// Parses a `filter` text with the grammar of docs/protocol.md 6.2 (see the module docs).
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

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Map};

    use super::*;
    use crate::fanout::filter::test_support::{matches, parse_err};
    use crate::fanout::filter::BoundFilter;

    fn scalar(text: &str) -> Operand {
        Operand::Scalar(text.to_owned())
    }

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

    proptest! {
        #[test]
        fn parse_never_panics(text in any::<String>()) {
            let _ = Filter::parse(&text);
        }
    }
}
