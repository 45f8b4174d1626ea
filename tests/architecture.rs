//! Architecture checks on the source text, with no dependencies and nothing to build or run:
//! no import cycle between the crate's top-level modules, and no oversized source file.
//!
//! The import graph: every `.rs` file under `src/` belongs to a top-level module (`src/foo.rs`
//! and everything under `src/foo/` belong to `foo`; `lib.rs` and `main.rs` are the root and are
//! not counted). Each `crate::<name>` path that a file uses, in `use` items (grouped ones too)
//! or inline (`crate::pg::Error`), is an edge from its module to `<name>`. Comments (doc
//! comments and intra-doc links included), string and character literals and `$crate::` in
//! macros are skipped. Test modules inside a file count like the rest of the file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// The longest a source file under `src/` or `tests/` may be, in lines.
const MAX_LINES: usize = 800;

/// Where a `crate::` path was found: a file (relative to the crate root) and a 1-based line.
type Site = (String, usize);

/// The import graph: module -> module it uses -> every place that uses it.
type Graph = BTreeMap<String, BTreeMap<String, Vec<Site>>>;

/// Stop listing cycles after this many; the message says how many were left out.
const MAX_CYCLES_LISTED: usize = 200;

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted; skips hidden folders and installed tool folders.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries =
            fs::read_dir(&dir).unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()));
        for entry in entries {
            let path = entry
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
                .path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !name.starts_with('.') && name != "node_modules" && name != "target" {
                    pending.push(path);
                }
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

/// The path of `path` relative to the crate root, with `/` separators.
fn relative(path: &Path) -> String {
    let root = manifest_dir();
    let rel = path.strip_prefix(&root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}

/// The top-level module a file under `src/` belongs to, given its path relative to `src/`;
/// `None` for the crate roots (`lib.rs`, `main.rs`) and for `src/bin/`, whose files are
/// crates of their own.
fn top_level_module(rel_to_src: &Path) -> Option<String> {
    let mut components = rel_to_src.components();
    let first = components.next()?.as_os_str().to_str()?;
    let nested = components.next().is_some();
    if nested {
        return (first != "bin").then(|| first.to_owned());
    }
    let stem = first.strip_suffix(".rs")?;
    (stem != "lib" && stem != "main").then(|| stem.to_owned())
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `source` with comments and string and character literals replaced by spaces; line breaks are
/// kept, so positions and line numbers stay those of `source`.
fn code_only(source: &str) -> Vec<char> {
    let src: Vec<char> = source.chars().collect();
    let mut out = src.clone();
    let blank = |out: &mut Vec<char>, from: usize, to: usize| {
        for c in out.iter_mut().take(to.min(src.len())).skip(from) {
            if *c != '\n' {
                *c = ' ';
            }
        }
    };
    let at = |i: usize| src.get(i).copied().unwrap_or('\0');
    let mut i = 0;
    while i < src.len() {
        let c = src[i];
        if c == '/' && at(i + 1) == '/' {
            let end = (i..src.len())
                .find(|&j| src[j] == '\n')
                .unwrap_or(src.len());
            blank(&mut out, i, end);
            i = end;
        } else if c == '/' && at(i + 1) == '*' {
            // Block comments nest.
            let mut depth = 0usize;
            let mut j = i;
            while j < src.len() {
                if src[j] == '/' && at(j + 1) == '*' {
                    depth += 1;
                    j += 2;
                } else if src[j] == '*' && at(j + 1) == '/' {
                    depth -= 1;
                    j += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    j += 1;
                }
            }
            blank(&mut out, i, j);
            i = j;
        } else if let Some(hashes) = raw_string_start(&src, i) {
            // r"...", r#"..."#, br"...": no escapes, ends at a quote and as many hashes.
            let open = i + 1 + hashes;
            let mut j = open + 1;
            while j < src.len() {
                if src[j] == '"' && (1..=hashes).all(|k| at(j + k) == '#') {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            blank(&mut out, open, j);
            i = j;
        } else if c == '"' {
            let mut j = i + 1;
            while j < src.len() && src[j] != '"' {
                j += if src[j] == '\\' { 2 } else { 1 };
            }
            blank(&mut out, i, j + 1);
            i = j + 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{1F600}'), or else a lifetime or label.
            if at(i + 1) == '\\' {
                let end = (i + 2..src.len())
                    .find(|&j| src[j] == '\'')
                    .unwrap_or(src.len());
                blank(&mut out, i, end + 1);
                i = end + 1;
            } else if at(i + 2) == '\'' {
                blank(&mut out, i, i + 3);
                i += 3;
            } else {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    out
}

/// When a raw string literal starts at `i` (`r`, `br` or `cr` then hashes and a quote), the
/// number of hashes.
fn raw_string_start(src: &[char], i: usize) -> Option<usize> {
    if src[i] != 'r' {
        return None;
    }
    let before = |k: usize| i.checked_sub(k).map(|j| src[j]);
    let starts_token = match before(1) {
        None => true,
        Some('b' | 'c') => !before(2).is_some_and(is_ident_char),
        Some(p) => !is_ident_char(p),
    };
    if !starts_token {
        return None;
    }
    let hashes = src[i + 1..].iter().take_while(|&&c| c == '#').count();
    (src.get(i + 1 + hashes) == Some(&'"')).then_some(hashes)
}

/// The first segment of every `crate::` path in `source`, with its 1-based line:
/// `crate::pg::Error` gives `pg`; `use crate::{a::{b, c}, d::E};` gives `a` and `d`.
/// `$crate::`, `pub(crate)` and anything in comments or literals give nothing.
fn crate_paths(source: &str) -> Vec<(String, usize)> {
    let code = code_only(source);
    let line_of = |pos: usize| 1 + code[..pos].iter().filter(|&&c| c == '\n').count();
    let skip_ws = |mut j: usize| {
        while j < code.len() && code[j].is_whitespace() {
            j += 1;
        }
        j
    };
    let ident_at = |j: usize| -> String {
        code[j..]
            .iter()
            .take_while(|&&c| is_ident_char(c))
            .collect()
    };
    let keyword: Vec<char> = "crate".chars().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i + keyword.len() <= code.len() {
        let is_word = code[i..i + keyword.len()] == keyword[..]
            && !i
                .checked_sub(1)
                .is_some_and(|p| is_ident_char(code[p]) || code[p] == '$')
            && !code
                .get(i + keyword.len())
                .copied()
                .is_some_and(is_ident_char);
        if !is_word {
            i += 1;
            continue;
        }
        let mut j = skip_ws(i + keyword.len());
        i += keyword.len();
        if code.get(j) != Some(&':') || code.get(j + 1) != Some(&':') {
            continue;
        }
        j = skip_ws(j + 2);
        if code.get(j) == Some(&'{') {
            // A group: the first name of each item at the group's own level.
            let mut depth = 0usize;
            let mut expect_item = true;
            while j < code.len() {
                let c = code[j];
                if c == '{' {
                    depth += 1;
                    expect_item = depth == 1;
                    j += 1;
                } else if c == '}' {
                    depth -= 1;
                    j += 1;
                    if depth == 0 {
                        break;
                    }
                } else if c == ',' {
                    expect_item = depth == 1;
                    j += 1;
                } else if expect_item && is_ident_char(c) {
                    let name = ident_at(j);
                    j += name.len();
                    if name != "self" {
                        found.push((name, line_of(j)));
                    }
                    expect_item = false;
                } else {
                    if !c.is_whitespace() {
                        expect_item = false;
                    }
                    j += 1;
                }
            }
            i = j;
        } else {
            let name = ident_at(j);
            if !name.is_empty() {
                found.push((name, line_of(j)));
            }
        }
    }
    found
}

/// The import graph of the crate's top-level modules, built from the files under `src/`.
fn import_graph() -> Graph {
    let src = manifest_dir().join("src");
    let files = rust_files(&src);
    let owned: Vec<(PathBuf, String)> = files
        .into_iter()
        .filter_map(|path| {
            let module = top_level_module(path.strip_prefix(&src).ok()?)?;
            Some((path, module))
        })
        .collect();
    let modules: BTreeSet<&str> = owned.iter().map(|(_, m)| m.as_str()).collect();
    let mut graph = Graph::new();
    for (path, module) in &owned {
        let source = fs::read_to_string(path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        for (target, line) in crate_paths(&source) {
            // Names that are no module are items of the crate root (re-exports): not counted.
            if target != *module && modules.contains(target.as_str()) {
                graph
                    .entry(module.clone())
                    .or_default()
                    .entry(target)
                    .or_default()
                    .push((relative(path), line));
            }
        }
    }
    graph
}

/// Every elementary cycle of `graph` (up to `limit`), each as its modules in order, starting
/// from its smallest name; and whether the limit cut the list short.
fn cycles(graph: &Graph, limit: usize) -> (Vec<Vec<String>>, bool) {
    fn walk(
        graph: &Graph,
        start: &str,
        path: &mut Vec<String>,
        found: &mut Vec<Vec<String>>,
        limit: usize,
    ) -> bool {
        let last = path.last().cloned().unwrap_or_default();
        for next in graph
            .get(&last)
            .into_iter()
            .flat_map(|targets| targets.keys())
        {
            if next == start {
                if found.len() == limit {
                    return true;
                }
                found.push(path.clone());
            } else if next.as_str() > start && !path.contains(next) {
                path.push(next.clone());
                let cut = walk(graph, start, path, found, limit);
                path.pop();
                if cut {
                    return true;
                }
            }
        }
        false
    }
    let mut found = Vec::new();
    let mut cut = false;
    for start in graph.keys() {
        let mut path = vec![start.clone()];
        if walk(graph, start, &mut path, &mut found, limit) {
            cut = true;
            break;
        }
    }
    found.sort_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
    (found, cut)
}

/// A readable report of `cycles`: each cycle, then the places that make each of its edges.
fn describe_cycles(graph: &Graph, cycles: &[Vec<String>], cut: bool) -> String {
    let mut report = format!(
        "{}{} import cycle(s) between top-level modules of src/:\n",
        if cut { "more than " } else { "" },
        cycles.len()
    );
    for cycle in cycles {
        let mut names = cycle.clone();
        names.push(cycle[0].clone());
        report.push_str(&format!("\nimport cycle: {}\n", names.join(" -> ")));
        for edge in names.windows(2) {
            let sites = &graph[&edge[0]][&edge[1]];
            let places: Vec<String> = sites
                .iter()
                .map(|(file, line)| format!("{file}:{line}"))
                .collect();
            report.push_str(&format!(
                "  {} -> {}: {}\n",
                edge[0],
                edge[1],
                places.join(", ")
            ));
        }
    }
    if cut {
        report.push_str(&format!(
            "\n(listing stopped after {} cycles)\n",
            cycles.len()
        ));
    }
    report
}

/// Guards the layering: a cycle between top-level modules means neither can be understood,
/// tested or split off without the other.
#[test]
fn no_import_cycles_between_top_level_modules() {
    let graph = import_graph();
    assert!(
        !graph.is_empty(),
        "no crate:: paths found under src/: is the parser broken?"
    );
    let (found, cut) = cycles(&graph, MAX_CYCLES_LISTED);
    assert!(found.is_empty(), "{}", describe_cycles(&graph, &found, cut));
}

/// Guards against files too long to review: none under src/ or tests/ exceeds `MAX_LINES`.
#[test]
fn no_source_file_exceeds_max_lines() {
    let root = manifest_dir();
    let mut offenders = Vec::new();
    for dir in ["src", "tests"] {
        for path in rust_files(&root.join(dir)) {
            let source = fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
            let lines = source.lines().count();
            if lines > MAX_LINES {
                offenders.push((lines, relative(&path)));
            }
        }
    }
    offenders.sort_by(|a, b| b.cmp(a));
    let list: Vec<String> = offenders
        .iter()
        .map(|(lines, file)| format!("  {file}: {lines} lines"))
        .collect();
    assert!(
        offenders.is_empty(),
        "{} file(s) longer than MAX_LINES = {MAX_LINES} lines; split them:\n{}",
        offenders.len(),
        list.join("\n")
    );
}

fn names(source: &str) -> Vec<String> {
    crate_paths(source).into_iter().map(|(n, _)| n).collect()
}

#[test]
fn parser_reads_simple_and_inline_paths_with_lines() {
    let source =
        "use crate::state::AppState;\n\nfn f() -> crate::pg::Error {\n    crate::auth::sign()\n}\n";
    assert_eq!(
        crate_paths(source),
        vec![
            ("state".to_owned(), 1),
            ("pg".to_owned(), 3),
            ("auth".to_owned(), 4)
        ]
    );
}

#[test]
fn parser_reads_grouped_and_nested_groups() {
    assert_eq!(names("use crate::{a::b, c};"), ["a", "c"]);
    assert_eq!(names("use crate::{a::{b, c}, d::E};"), ["a", "d"]);
    assert_eq!(
        names("use crate::{\n    a::{b::{C, D}, e},\n    self,\n    f,\n};\nuse crate::g;"),
        ["a", "f", "g"]
    );
    let lines: Vec<usize> = crate_paths("use crate::{\n    a::b,\n    c,\n};")
        .into_iter()
        .map(|(_, line)| line)
        .collect();
    assert_eq!(lines, [2, 3]);
}

#[test]
fn parser_ignores_comments_and_literals() {
    let source = r##"
//! Module docs name [`crate::x`].
/// See [`crate::y::Z`] and crate::y.
// use crate::commented;
/* crate::block /* crate::nested */ crate::still_comment */
fn f() {
    let s = "crate::in_string";
    let r = r"crate::in_raw";
    let h = r#"crate::in_hashed_raw"#;
    let q = '"';
    let t = 'x';
    crate::real::call();
}
"##;
    assert_eq!(names(source), ["real"]);
}

#[test]
fn parser_ignores_pub_crate_and_dollar_crate() {
    let source = "pub(crate) fn f() {}\npub(in crate::m) struct S;\nmacro_rules! m { () => { $crate::inner::f() } }\nfn g<'a>(x: &'a str) -> crate::kept::T { crate :: spaced :: f() }\n";
    assert_eq!(names(source), ["m", "kept", "spaced"]);
    assert!(names("let crates::x = 1; let my_crate::y = 2;").is_empty());
}

#[test]
fn files_map_to_their_top_level_module() {
    let module = |p: &str| top_level_module(Path::new(p));
    assert_eq!(module("state.rs").as_deref(), Some("state"));
    assert_eq!(module("session/mod.rs").as_deref(), Some("session"));
    assert_eq!(module("fanout/deep/er.rs").as_deref(), Some("fanout"));
    assert_eq!(module("lib.rs"), None);
    assert_eq!(module("main.rs"), None);
    assert_eq!(module("bin/tool.rs"), None);
}

#[test]
fn cycle_search_finds_each_cycle_once() {
    let edges = [("a", "b"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "d")];
    let mut graph = Graph::new();
    for (from, to) in edges {
        graph
            .entry(from.to_owned())
            .or_default()
            .insert(to.to_owned(), vec![(format!("src/{from}.rs"), 1)]);
    }
    let (found, cut) = cycles(&graph, 10);
    assert!(!cut);
    assert_eq!(found, [vec!["a", "b"], vec!["a", "b", "c"]]);
    let report = describe_cycles(&graph, &found, cut);
    assert!(
        report.contains("import cycle: a -> b -> a\n  a -> b: src/a.rs:1\n  b -> a: src/b.rs:1\n")
    );
    let (first, cut) = cycles(&graph, 1);
    assert!(cut);
    assert_eq!(first.len(), 1);
}
