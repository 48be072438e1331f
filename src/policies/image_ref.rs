//! Container image references, parsed by the Docker/OCI reference grammar
//! (`github.com/distribution/reference`), never by string prefix.
//!
//! `nginx` is `docker.io/library/nginx`; the first path component is a registry only when it
//! contains `.` or `:`, is `localhost`, or has an uppercase letter; `index.docker.io` and
//! `registry-1.docker.io` are Docker Hub.

use std::fmt;
use std::net::Ipv6Addr;

/// The canonical name of Docker Hub.
pub const DOCKER_HUB: &str = "docker.io";
const DOCKER_HUB_ALIASES: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
const NAME_TOTAL_LENGTH_MAX: usize = 255;
const TAG_LENGTH_MAX: usize = 128;

/// A parsed, normalised image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// `host[:port]` as written (a host is told from a path by its case too, so lowering it
    /// would change what the printed reference means), Docker Hub aliases folded into
    /// `docker.io`. Compare with [`ImageRef::registry_is`].
    pub registry: String,
    /// The repository path inside the registry (`library/nginx`).
    pub path: String,
    pub tag: Option<String>,
    /// `algorithm:hex`.
    pub digest: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageRefError {
    #[error("the reference is empty")]
    Empty,
    #[error("the name, with its registry, is longer than {NAME_TOTAL_LENGTH_MAX} characters")]
    NameTooLong,
    #[error("registry host {0:?} is not a valid host[:port]")]
    InvalidRegistry(String),
    #[error("repository name {0:?} must be lowercase")]
    Uppercase(String),
    #[error("repository path {0:?} is not valid (lowercase letters, digits and the separators . _ __ - between components separated by /)")]
    InvalidPath(String),
    #[error("a 64-character hexadecimal string cannot be a repository name")]
    HexRepository,
    #[error(
        "tag {0:?} is not valid (letters, digits, _ . -, at most 128, not starting with . or -)"
    )]
    InvalidTag(String),
    #[error("digest {0:?} is not valid (expected sha256:<64 lowercase hex>, sha384:<96> or sha512:<128>)")]
    InvalidDigest(String),
}

impl ImageRef {
    /// Parses a reference as a container runtime would (`ParseNormalizedNamed`).
    pub fn parse(reference: &str) -> Result<Self, ImageRefError> {
        if reference.is_empty() {
            return Err(ImageRefError::Empty);
        }
        let (rest, digest) = match reference.split_once('@') {
            Some((rest, digest)) => {
                validate_digest(digest)?;
                (rest, Some(digest.to_owned()))
            }
            None => (reference, None),
        };
        // A tag is what follows the last ':' when no '/' follows it (otherwise the ':' is a port).
        let (name, tag) = match rest.rfind(':') {
            Some(i) if !rest[i + 1..].contains('/') => (&rest[..i], Some(&rest[i + 1..])),
            _ => (rest, None),
        };
        if let Some(tag) = tag {
            validate_tag(tag)?;
        }
        if name.is_empty() {
            return Err(ImageRefError::InvalidPath(String::new()));
        }
        if name.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ImageRefError::NameTooLong);
        }
        let (registry, path) = split_registry(name);
        let registry = match registry {
            Some(registry) => normalize_registry(registry)?,
            None => DOCKER_HUB.to_owned(),
        };
        if path.chars().any(|c| c.is_ascii_uppercase()) {
            return Err(ImageRefError::Uppercase(path.to_owned()));
        }
        validate_path(path)?;
        let path = if registry == DOCKER_HUB && !path.contains('/') {
            if is_hex64(path) {
                return Err(ImageRefError::HexRepository);
            }
            format!("library/{path}")
        } else {
            path.to_owned()
        };
        // Also once resolved (`docker.io/library/` added), so that the reference as printed
        // parses too; stricter than Docker for names within 18 characters of the limit.
        if registry.len() + 1 + path.len() > NAME_TOTAL_LENGTH_MAX {
            return Err(ImageRefError::NameTooLong);
        }
        Ok(ImageRef {
            registry,
            path,
            tag: tag.map(str::to_owned),
            digest,
        })
    }

    /// Whether the image comes from `registry` (host names compare without case).
    pub fn registry_is(&self, registry: &str) -> bool {
        self.registry.eq_ignore_ascii_case(registry)
    }

    /// The same image, moved to `prefix` (`host[:port][/path]`), keeping path, tag and digest.
    pub fn with_prefix(&self, prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + self.path.len() + 80);
        out.push_str(prefix.trim_end_matches('/'));
        out.push('/');
        out.push_str(&self.path);
        self.push_tag_and_digest(&mut out);
        out
    }

    /// Whether the repository's trailing path components are `suffix` (`library/postgres`
    /// ends with `postgres`; `x/bitnami/postgresql` ends with `bitnami/postgresql`).
    pub fn path_ends_with(&self, suffix: &str) -> bool {
        self.path == suffix
            || (self.path.ends_with(suffix)
                && self.path[..self.path.len() - suffix.len()].ends_with('/'))
    }

    fn push_tag_and_digest(&self, out: &mut String) {
        if let Some(tag) = &self.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &self.digest {
            out.push('@');
            out.push_str(digest);
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = format!("{}/{}", self.registry, self.path);
        self.push_tag_and_digest(&mut out);
        f.write_str(&out)
    }
}

/// A configured image repository (`postgres`, `bitnami/postgresql`, `ghcr.io/x/db`): a
/// repository suffix, on any registry (mirrors included) unless the entry names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImagePattern {
    registry: Option<String>,
    suffix: String,
}

impl ImagePattern {
    pub fn parse(entry: &str) -> Result<ImagePattern, ImageRefError> {
        let parsed = ImageRef::parse(entry)?;
        let explicit = !is_docker_hub(&parsed.registry)
            || entry.to_ascii_lowercase().starts_with("docker.io/");
        let suffix = match parsed.path.strip_prefix("library/") {
            Some(official) if !entry.contains("library/") => official.to_owned(),
            _ => parsed.path.clone(),
        };
        Ok(ImagePattern {
            registry: explicit.then_some(parsed.registry),
            suffix,
        })
    }

    /// The valid entries of a configured list (the configuration is validated at load).
    pub fn parse_all(entries: &[String]) -> Vec<ImagePattern> {
        entries
            .iter()
            .filter_map(|e| ImagePattern::parse(e).ok())
            .collect()
    }

    pub fn matches(&self, image: &ImageRef) -> bool {
        self.registry.as_ref().is_none_or(|r| image.registry_is(r))
            && image.path_ends_with(&self.suffix)
    }

    /// Whether any pattern matches the image reference `image` (unparsable: no). A reference
    /// that does not even contain a pattern's last path component is turned away before it is
    /// parsed: most images match nothing, and this runs on every container of every request.
    pub fn any_matches(patterns: &[ImagePattern], image: &str) -> bool {
        let candidate = patterns.iter().any(|p| {
            let last = p.suffix.rsplit('/').next().unwrap_or(&p.suffix);
            image.contains(last)
        });
        candidate
            && ImageRef::parse(image)
                .is_ok_and(|parsed| patterns.iter().any(|p| p.matches(&parsed)))
    }
}

/// Whether a registry string names Docker Hub.
pub fn is_docker_hub(registry: &str) -> bool {
    DOCKER_HUB_ALIASES
        .iter()
        .any(|alias| registry.eq_ignore_ascii_case(alias))
}

/// Splits `name` into an explicit registry and the repository path.
fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains(['.', ':'])
                || first == "localhost"
                || first.chars().any(|c| c.is_ascii_uppercase()) =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

/// Validates `host[:port]` and returns it with Docker Hub aliases folded into `docker.io`.
pub fn normalize_registry(registry: &str) -> Result<String, ImageRefError> {
    let invalid = || ImageRefError::InvalidRegistry(registry.to_owned());
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (ip, after) = rest.split_once(']').ok_or_else(invalid)?;
        ip.parse::<Ipv6Addr>().map_err(|_| invalid())?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or_else(invalid)?),
        };
        (&registry[..ip.len() + 2], port)
    } else {
        match registry.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (registry, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err(invalid());
        }
    }
    if !host.starts_with('[') {
        let valid_component = |c: &str| {
            !c.is_empty()
                && c.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !c.starts_with('-')
                && !c.ends_with('-')
        };
        if !host.split('.').all(valid_component) {
            return Err(invalid());
        }
    }
    if port.is_none() && is_docker_hub(host) {
        return Ok(DOCKER_HUB.to_owned());
    }
    Ok(match port {
        Some(port) => format!("{host}:{port}"),
        None => host.to_owned(),
    })
}

fn validate_path(path: &str) -> Result<(), ImageRefError> {
    let invalid = || ImageRefError::InvalidPath(path.to_owned());
    for component in path.split('/') {
        if !valid_path_component(component) {
            return Err(invalid());
        }
    }
    Ok(())
}

/// `[a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*`
fn valid_path_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while i < bytes.len() {
        if alnum(bytes[i]) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // A separator: '.', '_', '__' or any run of '-'.
        let start = i;
        match bytes[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < bytes.len() && bytes[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < bytes.len() && bytes[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > start);
        need_alnum = true;
    }
    !need_alnum
}

fn validate_tag(tag: &str) -> Result<(), ImageRefError> {
    let word = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let bytes = tag.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= TAG_LENGTH_MAX
        && word(bytes[0])
        && bytes.iter().all(|&b| word(b) || b == b'.' || b == b'-');
    if valid {
        Ok(())
    } else {
        Err(ImageRefError::InvalidTag(tag.to_owned()))
    }
}

fn validate_digest(digest: &str) -> Result<(), ImageRefError> {
    let invalid = || ImageRefError::InvalidDigest(digest.to_owned());
    let (algorithm, hex) = digest.split_once(':').ok_or_else(invalid)?;
    let expected_len = match algorithm {
        "sha256" => 64,
        "sha384" => 96,
        "sha512" => 128,
        _ => return Err(invalid()),
    };
    if hex.len() == expected_len
        && hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(invalid())
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Checks a policy's list of image repositories (`images[i]`), the problem naming an example
/// of what to give.
pub fn validate_images(images: &[String], example: &str) -> Result<(), (String, String)> {
    for (i, image) in images.iter().enumerate() {
        ImageRef::parse(image).map_err(|e| {
            (
                format!("images[{i}]"),
                format!("{e}; give a repository such as {example}"),
            )
        })?;
    }
    Ok(())
}

/// An allowed-registry or mirror entry: `host[:port]` with an optional path prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryPattern {
    pub registry: String,
    /// Path prefix without slashes at the ends; empty for the whole registry.
    pub path_prefix: String,
}

impl RegistryPattern {
    pub fn matches(&self, image: &ImageRef) -> bool {
        image.registry_is(&self.registry)
            && (self.path_prefix.is_empty()
                || image.path == self.path_prefix
                || image
                    .path
                    .strip_prefix(&self.path_prefix)
                    .is_some_and(|rest| rest.starts_with('/')))
    }
}

impl fmt::Display for RegistryPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path_prefix.is_empty() {
            f.write_str(&self.registry)
        } else {
            write!(f, "{}/{}/", self.registry, self.path_prefix)
        }
    }
}

/// The reference grammar's pieces as RE2 (and Rust `regex`) syntax, for the CEL floor.
mod grammar {
    /// `[a-z0-9]+ ((\.|_|__|-+)[a-z0-9]+)*`
    pub const COMPONENT: &str = r"[a-z0-9]+(?:(?:\.|__|_|-+)[a-z0-9]+)*";
    /// A component without `.`: a first component that is not a registry host.
    pub const COMPONENT_NO_DOT: &str = r"[a-z0-9]+(?:(?:__|_|-+)[a-z0-9]+)*";
    pub const TAG: &str = r"[A-Za-z0-9_][A-Za-z0-9_.\-]{0,127}";
    pub const DIGEST: &str = r"(?:sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})";
    pub const HUB_HOSTS: &str = r"(?i:docker\.io|index\.docker\.io|registry-1\.docker\.io)";

    pub fn path() -> String {
        format!("{COMPONENT}(?:/{COMPONENT})*")
    }

    pub fn suffix() -> String {
        format!("(?::{TAG})?(?:@{DIGEST})?$")
    }
}

impl RegistryPattern {
    /// A CEL condition: the image reference `image` (a CEL string expression) parses, and
    /// [`RegistryPattern::matches`] it; the grammar written as regular expressions (RE2, which
    /// the API server's CEL `matches` reads). Names over 255 characters, which `parse` refuses,
    /// are not told apart.
    pub fn cel_allows(&self, image: &str) -> String {
        use super::floor::{any_of, cel_string, regex_escape};
        use grammar::*;
        let path = path();
        let suffix = suffix();
        let matches = |regex: String| format!("{image}.matches({})", cel_string(&regex));
        // The repository path (as resolved) under the prefix.
        let under_prefix = |path_regex: &str| -> String {
            if self.path_prefix.is_empty() {
                path_regex.to_owned()
            } else {
                format!("{}(?:/{path})?", regex_escape(&self.path_prefix))
            }
        };
        if self.registry != DOCKER_HUB {
            let host = format!("(?i:{})", regex_escape(&self.registry));
            let allowed = matches(format!("^{host}/{}{suffix}", under_prefix(&path)));
            // A first component without `.` or `:` names a registry only when it is
            // `localhost` or has an uppercase letter.
            let host_like = self.registry.contains(['.', ':', '['])
                || self.registry.eq_ignore_ascii_case("localhost");
            if host_like {
                return allowed;
            }
            let lower = self.registry.to_ascii_lowercase();
            return format!(
                "{allowed} && !{image}.startsWith({})",
                cel_string(&format!("{lower}/"))
            );
        }
        // Docker Hub: named (by any of its names) or implied by a first component that is no
        // host; a one-component name is under `library/`, so these need two or more.
        let several = match self.path_prefix.as_str() {
            "" => format!("{COMPONENT}(?:/{COMPONENT})+"),
            prefix if prefix.contains('/') => under_prefix(&path),
            prefix => format!("{}/{path}", regex_escape(prefix)),
        };
        let mut any = vec![matches(format!("^{HUB_HOSTS}/{several}{suffix}"))];
        let first_no_host = self
            .path_prefix
            .split('/')
            .next()
            .is_some_and(|first| !first.contains('.') && first != "localhost");
        if self.path_prefix.is_empty() {
            any.push(format!(
                "{} && !{image}.startsWith(\"localhost/\")",
                matches(format!("^{COMPONENT_NO_DOT}(?:/{COMPONENT})+{suffix}"))
            ));
        } else if first_no_host {
            any.push(matches(format!("^{several}{suffix}")));
        }
        // One component: `library/<name>`.
        let single = match self.path_prefix.as_str() {
            "" | "library" => Some(COMPONENT.to_owned()),
            prefix => prefix
                .strip_prefix("library/")
                .and_then(|rest| (!rest.contains('/')).then(|| regex_escape(rest))),
        };
        if let Some(single) = single {
            any.push(matches(format!("^{HUB_HOSTS}/{single}{suffix}")));
            any.push(format!(
                "{} && !{image}.matches(\"^[0-9a-f]{{64}}(?:[:@]|$)\")",
                matches(format!("^{single}{suffix}"))
            ));
        }
        any_of(&any)
    }
}

pub fn parse_registry_pattern(entry: &str) -> Result<RegistryPattern, String> {
    let trimmed = entry.trim_end_matches('/');
    let (registry, prefix) = match trimmed.split_once('/') {
        Some((registry, prefix)) => (registry, prefix),
        None => (trimmed, ""),
    };
    let hint = "write host[:port] with an optional path, such as `registry.local:5000` or \
                `harbor.example.org/openg2p/`";
    if registry.contains("://") || entry.contains("://") {
        return Err(format!("{entry:?} has a URL scheme; {hint}"));
    }
    let registry = normalize_registry(registry).map_err(|e| format!("{e}; {hint}"))?;
    if !prefix.is_empty() {
        // Validate the path by parsing a reference under it.
        ImageRef::parse(&format!("{registry}/{prefix}/x"))
            .map_err(|e| format!("path {prefix:?} is not valid: {e}; {hint}"))?;
    }
    Ok(RegistryPattern {
        registry,
        path_prefix: prefix.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// (reference, Some((registry, path, tag, digest))) or None when it must not parse.
    #[allow(clippy::type_complexity)]
    fn table() -> Vec<(
        String,
        Option<(&'static str, &'static str, Option<&'static str>, bool)>,
    )> {
        let ok =
            |r: &'static str, p: &'static str, t: Option<&'static str>, d: bool| Some((r, p, t, d));
        vec![
            // Docker Hub short names and aliases
            (
                "nginx".into(),
                ok("docker.io", "library/nginx", None, false),
            ),
            (
                "nginx:1.25".into(),
                ok("docker.io", "library/nginx", Some("1.25"), false),
            ),
            (
                "redis:7.2".into(),
                ok("docker.io", "library/redis", Some("7.2"), false),
            ),
            (
                "bitnami/postgresql:16".into(),
                ok("docker.io", "bitnami/postgresql", Some("16"), false),
            ),
            (
                "docker.io/nginx".into(),
                ok("docker.io", "library/nginx", None, false),
            ),
            (
                "docker.io/library/nginx:latest".into(),
                ok("docker.io", "library/nginx", Some("latest"), false),
            ),
            (
                "index.docker.io/nginx".into(),
                ok("docker.io", "library/nginx", None, false),
            ),
            (
                "registry-1.docker.io/bitnami/redis:7".into(),
                ok("docker.io", "bitnami/redis", Some("7"), false),
            ),
            (
                "Docker.IO/library/nginx".into(),
                ok("docker.io", "library/nginx", None, false),
            ),
            // "myregistry/busybox" is Docker Hub: no '.', ':' or localhost in the first component.
            (
                "myregistry/busybox".into(),
                ok("docker.io", "myregistry/busybox", None, false),
            ),
            (
                "jmalloc/echo-server".into(),
                ok("docker.io", "jmalloc/echo-server", None, false),
            ),
            // localhost and host:port
            ("localhost/app".into(), ok("localhost", "app", None, false)),
            (
                "localhost:5000/app:v1".into(),
                ok("localhost:5000", "app", Some("v1"), false),
            ),
            (
                "registry.local:5000/openg2p/app".into(),
                ok("registry.local:5000", "openg2p/app", None, false),
            ),
            (
                "registry.local:5000/openg2p/app:1.0".into(),
                ok("registry.local:5000", "openg2p/app", Some("1.0"), false),
            ),
            // tag vs port: x:5000 is a tag
            (
                "x:5000".into(),
                ok("docker.io", "library/x", Some("5000"), false),
            ),
            (
                "ghcr.io/openg2p/x:5000".into(),
                ok("ghcr.io", "openg2p/x", Some("5000"), false),
            ),
            (
                "quay.io/keycloak/keycloak".into(),
                ok("quay.io", "keycloak/keycloak", None, false),
            ),
            // digests are kept
            (
                format!("nginx@{D}"),
                ok("docker.io", "library/nginx", None, true),
            ),
            (
                format!("nginx:1.25@{D}"),
                ok("docker.io", "library/nginx", Some("1.25"), true),
            ),
            (
                format!("registry.local:5000/app@{D}"),
                ok("registry.local:5000", "app", None, true),
            ),
            // IPv6 hosts
            (
                "[::1]:5000/app".into(),
                ok("[::1]:5000", "app", None, false),
            ),
            (
                "[2001:db8::1]/team/app:v2".into(),
                ok("[2001:db8::1]", "team/app", Some("v2"), false),
            ),
            // separators in paths
            (
                "a/b__c/d-e--f.g".into(),
                ok("docker.io", "a/b__c/d-e--f.g", None, false),
            ),
            // An uppercase first component is a registry (and keeps its case)
            (
                "Registry.Local/app".into(),
                ok("Registry.Local", "app", None, false),
            ),
            ("REGISTRY/app".into(), ok("REGISTRY", "app", None, false)),
            // Bypass forms: a look-alike host is its own registry
            (
                "ghcr.io.evil.com/openg2p/app".into(),
                ok("ghcr.io.evil.com", "openg2p/app", None, false),
            ),
            ("registry.local:5000.evil.com/app".into(), None),
            ("registry.local:5000@evil.com/app".into(), None),
            ("ghcr.io./app".into(), None),
            ("-bad.com/app".into(), None),
            ("[::1/app".into(), None),
            ("[zz::1]/app".into(), None),
            // Invalid forms
            ("".into(), None),
            ("Nginx".into(), None),
            ("docker.io/Library/nginx".into(), None),
            ("nginx:".into(), None),
            ("nginx:-bad".into(), None),
            (format!("nginx:{}", "a".repeat(129)), None),
            ("nginx@sha256:abc".into(), None),
            (format!("nginx@{}", D.to_uppercase()), None),
            ("nginx@md5:0123456789abcdef0123456789abcdef".into(), None),
            ("a//b".into(), None),
            ("a/b/".into(), None),
            ("/a".into(), None),
            ("a..b".into(), None),
            ("a___b".into(), None),
            ("a b".into(), None),
            (":tag".into(), None),
            ("registry.local:/app".into(), None),
            (
                "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into(),
                None,
            ),
            (format!("{}/app", "a".repeat(300)), None),
        ]
    }

    #[test]
    fn parses_the_reference_table() {
        let table = table();
        assert!(table.len() >= 30);
        for (reference, expected) in table {
            let got = ImageRef::parse(&reference);
            match (expected, got) {
                (Some((registry, path, tag, has_digest)), Ok(r)) => {
                    assert_eq!(r.registry, registry, "registry of {reference}");
                    assert_eq!(r.path, path, "path of {reference}");
                    assert_eq!(r.tag.as_deref(), tag, "tag of {reference}");
                    assert_eq!(r.digest.is_some(), has_digest, "digest of {reference}");
                }
                (None, Err(_)) => {}
                (expected, got) => panic!("{reference:?}: expected {expected:?}, got {got:?}"),
            }
        }
    }

    #[test]
    fn rewrites_with_a_prefix_keeping_tag_and_digest() {
        let r = ImageRef::parse(&format!("nginx:1.25@{D}")).unwrap();
        assert_eq!(
            r.with_prefix("registry.local:5000/dockerhub/"),
            format!("registry.local:5000/dockerhub/library/nginx:1.25@{D}")
        );
        let r = ImageRef::parse("bitnami/redis").unwrap();
        assert_eq!(
            r.with_prefix("registry.local/dockerhub"),
            "registry.local/dockerhub/bitnami/redis"
        );
        assert_eq!(r.to_string(), "docker.io/bitnami/redis");
    }

    #[test]
    fn path_suffix_matches_whole_components() {
        let r = ImageRef::parse("registry.local/dockerhub/library/postgres:16").unwrap();
        assert!(r.path_ends_with("postgres"));
        assert!(r.path_ends_with("library/postgres"));
        assert!(!r.path_ends_with("gres"));
        let r = ImageRef::parse("bitnami/postgresql").unwrap();
        assert!(r.path_ends_with("bitnami/postgresql"));
        assert!(!r.path_ends_with("postgres"));
    }

    #[test]
    fn a_printed_reference_parses_back_to_itself() {
        // Found by fuzzing: a host told from a path only by its uppercase letter must keep it.
        for reference in [
            "IOeee/o",
            "Registry.Local/app:1",
            "nginx",
            "[::1]:5000/a/b",
            "REGISTRY/app",
        ] {
            let parsed = ImageRef::parse(reference).unwrap();
            assert_eq!(
                ImageRef::parse(&parsed.to_string()).unwrap(),
                parsed,
                "{reference}"
            );
        }
        assert!(ImageRef::parse("Registry.Local/app")
            .unwrap()
            .registry_is("registry.local"));
        // Found by fuzzing: a short name that fits only before `docker.io/library/` is added.
        let long = "a".repeat(250);
        assert_eq!(ImageRef::parse(&long), Err(ImageRefError::NameTooLong));
        assert!(ImageRef::parse(&"a".repeat(237)).is_ok());
    }

    #[test]
    fn errors_say_what_is_wrong() {
        let err = ImageRef::parse("Nginx").unwrap_err();
        assert_eq!(
            err.to_string(),
            "repository name \"Nginx\" must be lowercase"
        );
        let err = ImageRef::parse("registry.local:50x0/app").unwrap_err();
        assert!(err.to_string().contains("registry.local:50x0"), "{err}");
    }

    #[test]
    fn image_patterns_match_by_trailing_components_and_named_registries() {
        let cases = [
            ("postgres", "postgres:16", true),
            ("postgres", "registry.local:5000/dockerhub/library/postgres:16", true),
            ("postgres", "docker.io/library/postgres@sha256:0000000000000000000000000000000000000000000000000000000000000000", true),
            ("postgres", "bitnami/postgresql:16", false),
            ("postgres", "myorg/postgres-exporter:1", false),
            ("bitnami/postgresql", "docker.io/bitnami/postgresql:16.3.0", true),
            ("bitnami/postgresql", "postgresql:16", false),
            ("library/postgres", "postgres", true),
            ("ghcr.io/x/db", "ghcr.io/x/db:1", true),
            ("ghcr.io/x/db", "docker.io/x/db:1", false),
            ("minio/minio", "quay.io/minio/minio:RELEASE.2024", true),
            ("minio/minio", "minio/mc", false),
            ("postgres", "Not A Reference", false),
        ];
        for (entry, image, expected) in cases {
            let pattern = ImagePattern::parse(entry).unwrap();
            assert_eq!(
                ImagePattern::any_matches(std::slice::from_ref(&pattern), image),
                expected,
                "{entry} ~ {image}"
            );
        }
    }
}
