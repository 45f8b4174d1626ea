//! PostgreSQL array literals (`{1,2}`, `{{1,2},{3,4}}`, `{"a b",NULL}`) read with
//! PostgreSQL's rules, for `in` lists and for the values of array columns, and the whitespace
//! PostgreSQL's input functions skip.

/// The most dimensions an array value may have (PostgreSQL's `MAXDIM`).
pub(super) const MAX_ARRAY_DIMS: usize = 6;

/// One element of a parsed array literal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Literal {
    /// A scalar element; `None` is an unquoted `NULL`.
    Item(Option<String>),
    /// A nested `{…}`.
    Sub(Vec<Literal>),
}

pub(super) fn is_pg_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\u{b}' | '\u{c}')
}

/// Trims the whitespace PostgreSQL's input functions skip (`isspace` in the C locale).
pub(super) fn trim_pg(text: &str) -> &str {
    text.trim_matches(is_pg_space)
}

/// Parses a one- or multi-dimensional array literal (no `[1:2]=` dimension decoration) into
/// its top-level elements, or `None` where PostgreSQL says "malformed array literal".
pub(super) fn parse_array_literal(text: &str) -> Option<Vec<Literal>> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::fanout::filter::test_support::matches;
    use crate::fanout::filter::{Filter, Operand};

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
}
