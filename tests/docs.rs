//! The documentation stays whole: every relative link of the README and of `docs/` leads to a
//! file, and every policy has its page and its row in the README's table.

use std::path::{Path, PathBuf};

/// The registry's ids: a new policy module needs its page and its row, with nothing to add here.
use prodguard::policies::IDS as POLICIES;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn markdown_files() -> Vec<PathBuf> {
    let mut files = vec![root().join("README.md")];
    let mut dirs = vec![root().join("docs")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                files.push(path);
            }
        }
    }
    files
}

/// The targets of `](target)` links that are paths in the repository.
fn relative_links(text: &str) -> Vec<&str> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|target| target.split('#').next().unwrap_or(target))
        .filter(|target| {
            !target.is_empty() && !target.contains("://") && !target.starts_with("mailto:")
        })
        .collect()
}

#[test]
fn every_relative_link_leads_to_a_file() {
    let mut broken = Vec::new();
    let files = markdown_files();
    assert!(files.len() > 10, "{files:?}");
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for target in relative_links(&text) {
            let base = file.parent().unwrap_or(Path::new("."));
            if !base.join(target).exists() {
                broken.push(format!("{}: {target}", file.display()));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn every_policy_has_its_page_and_its_row() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    assert!(!POLICIES.is_empty());
    for id in POLICIES {
        let page = root().join(format!("docs/policies/{id}.md"));
        let text =
            std::fs::read_to_string(&page).unwrap_or_else(|e| panic!("{}: {e}", page.display()));
        assert!(text.starts_with(&format!("# {id}\n")), "{}", page.display());
        assert!(
            readme.contains(&format!("| [`{id}`](docs/policies/{id}.md) |")),
            "the README's policy table has no row for {id}"
        );
    }
}

#[test]
fn a_broken_link_is_seen() {
    assert_eq!(
        relative_links("see [a](docs/a.md#x), [b](https://x.org/) and [c](c.md)"),
        ["docs/a.md", "c.md"]
    );
}

/// The long flags of `prodguard <command>` as clap defines them (not --help, --version, nor
/// the global --log and --log-format).
fn clap_flags(command: &str) -> std::collections::BTreeSet<String> {
    use clap::CommandFactory;
    let cli = prodguard::cli::Cli::command();
    let sub = cli
        .find_subcommand(command)
        .unwrap_or_else(|| panic!("no command {command}"));
    sub.get_arguments()
        .filter(|a| !a.is_global_set())
        .filter_map(|a| a.get_long())
        .filter(|l| !matches!(*l, "help" | "version"))
        .map(|l| format!("--{l}"))
        .collect()
}

/// The long flags docs/configuration.md's synopsis of `prodguard <command>` names.
fn documented_flags(command: &str) -> std::collections::BTreeSet<String> {
    let text = std::fs::read_to_string(root().join("docs/configuration.md")).unwrap();
    let start = text
        .find(&format!("- `prodguard {command} "))
        .unwrap_or_else(|| panic!("docs/configuration.md has no synopsis of {command}"));
    // The synopsis is the code span that opens the item.
    let rest = &text[start + 3..];
    let synopsis = &rest[..rest.find('`').unwrap()];
    let mut flags = std::collections::BTreeSet::new();
    for word in synopsis.split(|c: char| c.is_whitespace() || "[]=|".contains(c)) {
        if let Some(flag) = word.strip_prefix("--") {
            let name: String = flag
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '-')
                .collect();
            flags.insert(format!("--{name}"));
        }
    }
    flags
}

#[test]
fn each_command_s_synopsis_names_exactly_its_flags() {
    for command in ["serve", "check", "audit", "certs"] {
        let (clap, docs) = (clap_flags(command), documented_flags(command));
        assert_eq!(
            clap.difference(&docs).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{command}: flags missing from docs/configuration.md"
        );
        assert_eq!(
            docs.difference(&clap).collect::<Vec<_>>(),
            Vec::<&String>::new(),
            "{command}: docs/configuration.md names flags {command} does not have"
        );
    }
}
