//! The crate's layers import only downward (docs/architecture.md): a module imports only
//! modules of a lower layer, and the files inside a module import one another without a circle.
//!
//! Read from the source as text, the way a reviewer reads it: every `crate::`, `super::` and
//! `self::` path, and every `use` of a submodule the file declares, outside comments and
//! `#[cfg(test)]` items (a test may reach any layer to set up what it checks). A text reader
//! was chosen over `cargo modules` so that the check needs no tool to install and runs with
//! the other tests; what it cannot see (a macro that names a module) is what the compiler
//! would show anyway.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The top-level modules of `src/`, bottom layer first. A module may import a module of a
/// lower layer only; two modules of one layer do not import each other.
const LAYERS: &[&[&str]] = &[
    // The global configuration, reading HTTP bodies, and how watches retry: they know nothing
    // of the rest.
    &["config", "body", "retry"],
    // The typed view of an object.
    &["view"],
    // What a policy is and all it may see: the request, the lookup trait, the finding.
    &["unit"],
    // The policy units and their registry (which owns the `policies:` keys).
    &["policies"],
    // PolicyExceptions: their write rule and their lifting.
    &["exceptions"],
    // Runs the units on a request, lifts what exceptions cover, decides.
    &["engine", "floor"],
    // The edges: decoding and encoding reviews, reports, the API client.
    &["admission", "report", "cluster"],
    &["audit", "server"],
    &["http", "certs", "floor_writer"],
    &["cli"],
    &["commands"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&module))
}

/// A file's module path (`policies/db_access.rs` is `["policies", "db_access"]`).
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let relative = file.strip_prefix(src).unwrap().with_extension("");
    let mut parts: Vec<String> = relative
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The text without comments, string literals and `#[cfg(test)]` items.
fn code_only(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        if text[i..].starts_with("//") {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/").map_or(bytes.len() - i, |end| end + 2);
        } else if text[i..].starts_with("r#\"") {
            i += 3 + text[i + 3..]
                .find("\"#")
                .map_or(bytes.len() - i - 3, |end| end + 2);
            out.push_str("\"\"");
        } else if bytes[i] == b'\'' && char_literal_len(&text[i..]).is_some() {
            i += char_literal_len(&text[i..]).unwrap_or(1);
        } else if bytes[i] == b'"' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'"' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if text[i..].starts_with("#[cfg(test)]") {
            // Skip the item: to the end of its block, or of its line when it has none.
            i += "#[cfg(test)]".len();
            let rest = &text[i..];
            let brace = rest.find('{');
            let semicolon = rest.find(';');
            match (brace, semicolon) {
                (Some(b), s) if s.is_none_or(|s| b < s) => {
                    let mut depth = 0;
                    let mut j = i + b;
                    while j < bytes.len() {
                        match bytes[j] {
                            b'{' => depth += 1,
                            b'}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        j += 1;
                    }
                    i = j + 1;
                }
                (_, Some(s)) => i += s + 1,
                _ => i = bytes.len(),
            }
        } else {
            let c = text[i..].chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// The length of a char literal at the start of `text` (`'x'`, `'\\n'`, `'\\u{1F600}'`), or
/// `None` for a lifetime.
fn char_literal_len(text: &str) -> Option<usize> {
    let mut chars = text.char_indices().skip(1);
    let (_, first) = chars.next()?;
    if first == '\\' {
        // The escaped character is never the closing quote.
        return text
            .get(3..)?
            .find('\'')
            .map(|end| end + 4)
            .filter(|&len| len <= 12);
    }
    let (at, closing) = chars.next()?;
    (closing == '\'').then_some(at + 1)
}

/// The paths a file's code names: `crate::a::b`, `super::x`, `self::y`, and the items of
/// `use` groups, each as an absolute module path (its first segments; which of them is a
/// module is decided against the files).
fn named_paths(code: &str, module: &[String], children: &[String]) -> Vec<Vec<String>> {
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut paths = Vec::new();
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let at_word_start = i == 0 || !(ident(chars[i - 1]) || chars[i - 1] == ':');
        if !at_word_start || !ident(chars[i]) {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && ident(chars[i]) {
            i += 1;
        }
        let first: String = chars[start..i].iter().collect();
        let base: Option<Vec<String>> = match first.as_str() {
            "crate" => Some(Vec::new()),
            "self" => Some(module.to_vec()),
            // A file's parent module (for `a/mod.rs`, `a`'s parent; for `a/b.rs`, `a`).
            "super" => Some(module[..module.len().saturating_sub(1)].to_vec()),
            // `use child::X` in a file that declares `mod child`.
            name if children.iter().any(|c| c == name) && code_before_is_use(&chars, start) => {
                let mut base = module.to_vec();
                base.push(name.to_owned());
                Some(base)
            }
            _ => None,
        };
        let Some(base) = base else { continue };
        // The rest of the path, and a `{...}` group at its end.
        let mut path = base;
        loop {
            if chars.get(i) == Some(&':') && chars.get(i + 1) == Some(&':') {
                i += 2;
                if chars.get(i) == Some(&'{') {
                    let mut depth = 0;
                    let open = i;
                    while i < chars.len() {
                        match chars[i] {
                            '{' => depth += 1,
                            '}' => {
                                depth -= 1;
                                if depth == 0 {
                                    break;
                                }
                            }
                            _ => {}
                        }
                        i += 1;
                    }
                    let group: String = chars[open + 1..i].iter().collect();
                    expand_group(&path, &group, &mut paths);
                    break;
                }
                let seg_start = i;
                while i < chars.len() && ident(chars[i]) {
                    i += 1;
                }
                if seg_start == i {
                    break;
                }
                if first == "super" && chars[seg_start..i].iter().collect::<String>() == "super" {
                    path.pop();
                    continue;
                }
                path.push(chars[seg_start..i].iter().collect());
            } else {
                paths.push(path);
                break;
            }
        }
    }
    paths
}

fn code_before_is_use(chars: &[char], start: usize) -> bool {
    let before: String = chars[start.saturating_sub(8)..start].iter().collect();
    before.trim_end().ends_with("use")
}

/// The paths of a `use` group's items under `prefix`, nested groups included.
fn expand_group(prefix: &[String], group: &str, paths: &mut Vec<Vec<String>>) {
    for item in split_group(group) {
        let mut full = prefix.to_vec();
        let (head, nested) = match item.split_once("::{") {
            Some((head, rest)) => (head, rest.strip_suffix('}')),
            None => (item.as_str(), None),
        };
        full.extend(
            head.split("::")
                .map(|s| s.split(" as ").next().unwrap_or("").trim().to_owned())
                .filter(|s| !s.is_empty() && s != "self"),
        );
        match nested {
            Some(inner) => expand_group(&full, inner, paths),
            None => paths.push(full),
        }
    }
}

/// `a, b::{c, d}, e as f` split at its top-level commas.
fn split_group(group: &str) -> Vec<String> {
    let mut items = Vec::new();
    let mut depth = 0;
    let mut current = String::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut current));
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    items.push(current);
    items
        .into_iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

/// The modules (files) of `src/` and what each imports.
fn import_graph() -> BTreeMap<Vec<String>, BTreeSet<Vec<String>>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let modules: BTreeMap<Vec<String>, PathBuf> = files
        .iter()
        .map(|f| (module_path(&src, f), f.clone()))
        .collect();
    let mut graph = BTreeMap::new();
    for (module, file) in &modules {
        let text = std::fs::read_to_string(file).unwrap();
        let code = code_only(&text);
        let children: Vec<String> = code
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                let l = l.strip_prefix("pub ").unwrap_or(l);
                let l = l.strip_prefix("pub(crate) ").unwrap_or(l);
                l.strip_prefix("mod ")?.strip_suffix(';').map(str::to_owned)
            })
            .collect();
        let mut imports = BTreeSet::new();
        for path in named_paths(&code, module, &children) {
            // The longest prefix that is a file's module.
            let target = (1..=path.len())
                .rev()
                .map(|n| path[..n].to_vec())
                .find(|p| modules.contains_key(p));
            if let Some(target) = target {
                if &target != module {
                    imports.insert(target);
                }
            }
        }
        graph.insert(module.clone(), imports);
    }
    graph
}

fn name(module: &[String]) -> String {
    if module.is_empty() {
        "lib".to_owned()
    } else {
        module.join("/")
    }
}

/// The parser itself: what it must see and what it must not.
#[test]
fn the_reader_sees_paths_and_skips_comments_strings_and_tests() {
    let code = code_only(
        "use crate::a::{b, c::{D, E}};\n// crate::hidden\nlet s = \"crate::also_hidden\"; let q = '\"'; fn f<'a>(x: &'a str) {}\n\
         use super::sibling::X;\n#[cfg(test)]\nmod tests { use crate::test_only; }\nuse child::Y;\n",
    );
    let module = vec!["m".to_owned(), "f".to_owned()];
    let paths = named_paths(&code, &module, &["child".to_owned()]);
    let strings: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(
        strings,
        [
            "a::b",
            "a::c::D",
            "a::c::E",
            "m::sibling::X",
            "m::f::child::Y"
        ],
        "{code}"
    );
}

/// Each top-level module is in a layer, and imports only lower layers.
#[test]
fn modules_import_only_lower_layers() {
    let graph = import_graph();
    let mut problems = Vec::new();
    for (module, imports) in &graph {
        let Some(top) = module.first() else { continue };
        let Some(layer) = layer_of(top) else {
            problems.push(format!(
                "src/{top} is in no layer: add it to LAYERS in tests/layers.rs and to docs/architecture.md"
            ));
            continue;
        };
        for target in imports {
            let Some(target_top) = target.first() else {
                continue;
            };
            if target_top == top {
                continue;
            }
            match layer_of(target_top) {
                Some(target_layer) if target_layer < layer => {}
                Some(target_layer) => problems.push(format!(
                    "{} (layer {layer}) imports {} (layer {target_layer})",
                    name(module),
                    name(target),
                )),
                None => problems.push(format!(
                    "{} imports {}, which is in no layer",
                    name(module),
                    name(target)
                )),
            }
        }
    }
    problems.sort();
    problems.dedup();
    assert!(
        problems.is_empty(),
        "imports that climb (docs/architecture.md):\n{}",
        problems.join("\n")
    );
}

/// No circle among the files, inside a module or across them.
#[test]
fn no_file_imports_itself_through_others() {
    let graph = import_graph();
    // Depth-first search for a back edge, reporting the circle it closes.
    fn visit(
        node: &Vec<String>,
        graph: &BTreeMap<Vec<String>, BTreeSet<Vec<String>>>,
        state: &mut BTreeMap<Vec<String>, u8>,
        stack: &mut Vec<Vec<String>>,
        circles: &mut Vec<String>,
    ) {
        state.insert(node.clone(), 1);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            match state.get(next).copied().unwrap_or(0) {
                0 => visit(next, graph, state, stack, circles),
                1 => {
                    let from = stack.iter().position(|n| n == next).unwrap_or(0);
                    let mut circle: Vec<String> = stack[from..].iter().map(|m| name(m)).collect();
                    circle.push(name(next));
                    circles.push(circle.join(" -> "));
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(node.clone(), 2);
    }
    let mut state = BTreeMap::new();
    let mut circles = Vec::new();
    for node in graph.keys() {
        if !state.contains_key(node) {
            visit(node, &graph, &mut state, &mut Vec::new(), &mut circles);
        }
    }
    assert!(
        circles.is_empty(),
        "import circles:\n{}",
        circles.join("\n")
    );
    // The graph is read at all: the engine imports the units, the policies and the exceptions.
    let engine = &graph[&vec!["engine".to_owned()]];
    for expected in ["unit", "policies", "exceptions"] {
        assert!(
            engine
                .iter()
                .any(|m| m.first().is_some_and(|t| t == expected)),
            "the engine's imports as read: {engine:?}"
        );
    }
}
