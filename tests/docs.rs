//! The documentation stays whole: every relative link of the README and of `docs/` leads to a
//! file, and every policy has its page and its row in the README's table.

use std::path::{Path, PathBuf};

use prodguard::policies::*;

const POLICIES: [&str; 11] = [
    image_pull_policy::ID,
    airgap_registry::ID,
    registry_mirror::ID,
    db_access::ID,
    min_replicas::ID,
    protect_delete::ID,
    rbac_hygiene::ID,
    ingress_body_size::ID,
    opensearch_cluster::ID,
    external_databases::ID,
    node_spread::ID,
];

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
