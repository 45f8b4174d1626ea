//! Elixir's `inspect/1` of binaries and lists, so that the details of
//! [`ParseError::Malformed`](super::ParseError::Malformed) match upstream byte for byte (rules
//! in the module docs of `fanout::filter`).

/// Elixir's default `printable_limit` for inspected binaries.
const INSPECT_PRINTABLE_LIMIT: usize = 4096;
/// Elixir's default `limit` for inspected bitstrings (bytes shown).
const INSPECT_BYTE_LIMIT: usize = 50;
/// Elixir's default inspect width.
const INSPECT_WIDTH: usize = 80;

/// Renders pieces the way Elixir's `inspect/1` renders a list of binaries (module docs).
pub(super) fn inspect_pieces(pieces: &[String]) -> String {
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
    use crate::fanout::filter::test_support::parse_err;

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
}
