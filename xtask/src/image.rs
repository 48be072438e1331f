//! The container image, assembled from a built binary with no container engine and no base image.
//!
//! One layer holds the binary and the few files a non-root process expects (`/etc/passwd` and
//! `/etc/group` with uid and gid 65532, `/etc/nsswitch.conf`, a `/tmp`). Every tar header is fixed
//! (owner 0:0, the given timestamp, no user or group names) and the entries are written in path
//! order, and gzip is given a zero timestamp: the same binary and timestamp give the same digest.
//!
//! Written out as an OCI layout (`oci/`) and as one tarball that is both an OCI archive and a
//! `docker save` archive (its `manifest.json`), which `docker load`, `ctr images import`,
//! `podman load`, skopeo and RKE2's air-gap images directory read.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::{json, Value};

/// Where the binary sits in the image, and so the entrypoint.
pub const BINARY_PATH: &str = "usr/local/bin/prodguard";
/// The non-root user and group the image runs as (distroless' `nonroot`).
pub const UID: u64 = 65532;
/// The webhook's and the metrics' ports, as `deploy/` uses them.
pub const EXPOSED_PORTS: [&str; 2] = ["8443/tcp", "9090/tcp"];

pub const MEDIA_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_LAYER: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// What the image is made of and says about itself.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The statically linked binary.
    pub binary: Vec<u8>,
    /// Seconds since the epoch: every file's mtime and the config's `created`.
    pub epoch: u64,
    /// `prodguard`, or `registry.example.org/openg2p/prodguard`.
    pub name: String,
    pub version: String,
    pub revision: String,
    pub source: String,
    pub licenses: String,
}

/// A content-addressed blob: its bytes and `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self {
            digest: sha256(&bytes),
            bytes,
        }
    }

    pub fn hex(&self) -> &str {
        self.digest.trim_start_matches("sha256:")
    }

    fn descriptor(&self, media_type: &str) -> Value {
        json!({"mediaType": media_type, "digest": self.digest, "size": self.bytes.len()})
    }
}

/// The image: its layer (uncompressed for the diff id, compressed as stored), config and manifest.
#[derive(Debug, Clone)]
pub struct Image {
    pub layer_tar: Vec<u8>,
    pub layer: Blob,
    pub config: Blob,
    pub manifest: Blob,
    /// The fully qualified reference the image is known by (`docker.io/library/prodguard:0.1.0`).
    pub reference: String,
    /// The short one `docker load` tags it with (`prodguard:0.1.0`).
    pub tag_reference: String,
    pub tag: String,
}

pub fn sha256(bytes: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut hex = String::with_capacity(7 + 64);
    hex.push_str("sha256:");
    for byte in digest.as_ref() {
        hex.push_str(&format!("{byte:02x}"));
    }
    hex
}

/// A reference as Docker and containerd read it: a first component with a dot or a colon, or
/// `localhost`, is a registry; anything else is on Docker Hub (`library/` for a single name).
pub fn qualify(name: &str) -> String {
    let (first, rest) = match name.split_once('/') {
        Some((first, rest)) => (first, Some(rest)),
        None => (name, None),
    };
    let is_registry = first.contains('.') || first.contains(':') || first == "localhost";
    match rest {
        Some(_) if is_registry => name.to_string(),
        Some(_) => format!("docker.io/{name}"),
        None => format!("docker.io/library/{name}"),
    }
}

/// Checks a repository name by the reference grammar's rules that matter here: lower case
/// path components, and a tag that is not part of the name.
pub fn validate_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("the image name is empty".into());
    }
    if name.contains('@') {
        return Err(format!(
            "the image name `{name}` holds a digest: give the repository alone (the tag is the version)"
        ));
    }
    let path = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            rest
        }
        _ => name,
    };
    for component in path.split('/') {
        let valid = !component.is_empty()
            && component
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-".contains(c))
            && component.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !valid {
            return Err(format!(
                "the image name `{name}` has the path component `{component}`: lower case letters, digits and `._-` only (the tag is the version, not part of the name)"
            ));
        }
    }
    Ok(())
}

/// The layer's tar: directories and files in path order, every header fixed.
pub fn layer_tar(binary: &[u8], epoch: u64) -> std::io::Result<Vec<u8>> {
    // (path, mode, contents): None is a directory. In path order.
    let passwd = format!(
        "root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:{UID}:{UID}:nonroot:/home/nonroot:/sbin/nologin\n"
    );
    let group = format!("root:x:0:\nnonroot:x:{UID}:\n");
    // A static glibc binary resolves names with its built-in files and dns modules; say the order.
    let nsswitch = "hosts: files dns\n";
    let entries: Vec<(&str, u32, Option<&[u8]>)> = vec![
        ("etc/", 0o755, None),
        ("etc/group", 0o644, Some(group.as_bytes())),
        ("etc/nsswitch.conf", 0o644, Some(nsswitch.as_bytes())),
        ("etc/passwd", 0o644, Some(passwd.as_bytes())),
        ("tmp/", 0o1777, None),
        ("usr/", 0o755, None),
        ("usr/local/", 0o755, None),
        ("usr/local/bin/", 0o755, None),
        (BINARY_PATH, 0o755, Some(binary)),
    ];
    debug_assert!(entries.windows(2).all(|w| w[0].0 < w[1].0));
    let mut builder = tar::Builder::new(Vec::new());
    builder.mode(tar::HeaderMode::Deterministic);
    for (path, mode, contents) in entries {
        let mut header = tar::Header::new_ustar();
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(epoch);
        header.set_mode(mode);
        match contents {
            None => {
                header.set_entry_type(tar::EntryType::Directory);
                header.set_size(0);
                builder.append_data(&mut header, path, std::io::empty())?;
            }
            Some(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(bytes.len() as u64);
                builder.append_data(&mut header, path, bytes)?;
            }
        }
    }
    builder.into_inner()
}

/// gzip at the best level, with no name and a zero timestamp in its header.
pub fn gzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::best());
    encoder.write_all(bytes)?;
    encoder.finish()
}

/// RFC 3339 in UTC for seconds since the epoch (the civil-from-days algorithm).
pub fn rfc3339(epoch: u64) -> String {
    let days = (epoch / 86_400) as i64;
    let secs = epoch % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

pub fn build(spec: &Spec) -> Result<Image, String> {
    validate_name(&spec.name)?;
    let layer_tar = layer_tar(&spec.binary, spec.epoch).map_err(|e| format!("the layer: {e}"))?;
    let diff_id = sha256(&layer_tar);
    let layer = Blob::new(gzip(&layer_tar).map_err(|e| format!("compressing the layer: {e}"))?);
    let created = rfc3339(spec.epoch);
    let labels: BTreeMap<&str, &str> = [
        ("org.opencontainers.image.title", "prodguard"),
        (
            "org.opencontainers.image.description",
            "Kubernetes admission webhook that enforces the OpenG2P production deployment guide",
        ),
        ("org.opencontainers.image.version", spec.version.as_str()),
        ("org.opencontainers.image.revision", spec.revision.as_str()),
        ("org.opencontainers.image.source", spec.source.as_str()),
        ("org.opencontainers.image.licenses", spec.licenses.as_str()),
        ("org.opencontainers.image.created", created.as_str()),
    ]
    .into_iter()
    .collect();
    let ports: BTreeMap<&str, Value> = EXPOSED_PORTS.iter().map(|p| (*p, json!({}))).collect();
    let config = json!({
        "created": created,
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "User": format!("{UID}:{UID}"),
            "Env": ["PATH=/usr/local/bin"],
            "Entrypoint": [format!("/{BINARY_PATH}")],
            "Cmd": ["serve"],
            "ExposedPorts": ports,
            "WorkingDir": "/",
            "Labels": labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "cargo xtask image"}],
    });
    let config = Blob::new(to_json(&config)?);
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": config.descriptor(MEDIA_CONFIG),
        "layers": [layer.descriptor(MEDIA_LAYER)],
        "annotations": {
            "org.opencontainers.image.version": spec.version,
            "org.opencontainers.image.revision": spec.revision,
            "org.opencontainers.image.source": spec.source,
            "org.opencontainers.image.created": created,
        },
    });
    let manifest = Blob::new(to_json(&manifest)?);
    let reference = format!("{}:{}", qualify(&spec.name), spec.version);
    Ok(Image {
        layer_tar,
        layer,
        config,
        manifest,
        tag_reference: format!("{}:{}", spec.name, spec.version),
        reference,
        tag: spec.version.clone(),
    })
}

fn to_json(value: &Value) -> Result<Vec<u8>, String> {
    // serde_json keeps a map's keys sorted (no preserve_order): the same value, the same bytes.
    serde_json::to_vec(value).map_err(|e| format!("writing JSON: {e}"))
}

impl Image {
    /// `index.json`: the one manifest, named by its tag (OCI) and its full reference (containerd).
    pub fn index(&self) -> Result<Vec<u8>, String> {
        let mut descriptor = self.manifest.descriptor(MEDIA_MANIFEST);
        descriptor["annotations"] = json!({
            "org.opencontainers.image.ref.name": self.tag,
            "io.containerd.image.name": self.reference,
        });
        to_json(&json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": [descriptor]}))
    }

    /// `manifest.json` of a `docker save` archive.
    pub fn docker_manifest(&self) -> Result<Vec<u8>, String> {
        to_json(&json!([{
            "Config": format!("blobs/sha256/{}", self.config.hex()),
            "RepoTags": [self.tag_reference],
            "Layers": [format!("blobs/sha256/{}", self.layer.hex())],
        }]))
    }

    /// The files of the OCI layout, in path order: `blobs/sha256/*`, `index.json`, `oci-layout`.
    pub fn layout_files(&self) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut files: Vec<(String, Vec<u8>)> = [&self.config, &self.layer, &self.manifest]
            .into_iter()
            .map(|blob| (format!("blobs/sha256/{}", blob.hex()), blob.bytes.clone()))
            .collect();
        files.push(("index.json".into(), self.index()?));
        files.push((
            "oci-layout".into(),
            to_json(&json!({"imageLayoutVersion": "1.0.0"}))?,
        ));
        files.sort();
        Ok(files)
    }

    /// The air-gap tarball: the OCI layout plus `manifest.json`, every header fixed.
    pub fn archive(&self, epoch: u64) -> Result<Vec<u8>, String> {
        let mut files = self.layout_files()?;
        files.push(("manifest.json".into(), self.docker_manifest()?));
        files.sort();
        let mut dirs = vec!["blobs/".to_string(), "blobs/sha256/".to_string()];
        dirs.sort();
        let mut builder = tar::Builder::new(Vec::new());
        builder.mode(tar::HeaderMode::Deterministic);
        let io = |e: std::io::Error| format!("writing the archive: {e}");
        for dir in dirs {
            let mut header = fixed_header(epoch, 0o755);
            header.set_entry_type(tar::EntryType::Directory);
            header.set_size(0);
            builder
                .append_data(&mut header, dir, std::io::empty())
                .map_err(io)?;
        }
        for (path, bytes) in files {
            let mut header = fixed_header(epoch, 0o644);
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(bytes.len() as u64);
            builder
                .append_data(&mut header, path, bytes.as_slice())
                .map_err(io)?;
        }
        builder.into_inner().map_err(io)
    }

    /// Writes the OCI layout under `dir` (created, or emptied of a previous image's files).
    pub fn write_layout(&self, dir: &Path) -> Result<(), String> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        for (path, bytes) in self.layout_files()? {
            let target = dir.join(path);
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| format!("{}: {e}", parent.display()))?;
            }
            std::fs::write(&target, bytes).map_err(|e| format!("{}: {e}", target.display()))?;
        }
        Ok(())
    }
}

fn fixed_header(epoch: u64, mode: u32) -> tar::Header {
    let mut header = tar::Header::new_ustar();
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(epoch);
    header.set_mode(mode);
    header
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec() -> Spec {
        Spec {
            binary: b"\x7fELF not really".to_vec(),
            epoch: 1_796_049_315,
            name: "prodguard".into(),
            version: "0.1.0".into(),
            revision: "3f194f7".into(),
            source: "https://github.com/openg2p/prodguard".into(),
            licenses: "Apache-2.0".into(),
        }
    }

    fn entries(tar_bytes: &[u8]) -> Vec<(String, u64, u64, u64, u32, Vec<u8>)> {
        let mut archive = tar::Archive::new(tar_bytes);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let mut contents = Vec::new();
            entry.read_to_end(&mut contents).unwrap();
            out.push((
                entry.path().unwrap().to_string_lossy().into_owned(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header.mtime().unwrap(),
                header.mode().unwrap(),
                contents,
            ));
        }
        out
    }

    #[test]
    fn the_same_input_gives_the_same_digests_and_another_binary_another() {
        let one = build(&spec()).unwrap();
        let two = build(&spec()).unwrap();
        assert_eq!(one.manifest, two.manifest);
        assert_eq!(one.layer, two.layer);
        assert_eq!(one.archive(1).unwrap(), two.archive(1).unwrap());
        let mut other = spec();
        other.binary.push(b'!');
        assert_ne!(build(&other).unwrap().manifest.digest, one.manifest.digest);
        let mut later = spec();
        later.epoch += 1;
        assert_ne!(build(&later).unwrap().layer.digest, one.layer.digest);
    }

    #[test]
    fn the_layer_holds_the_binary_and_the_user_with_fixed_headers_in_order() {
        let image = build(&spec()).unwrap();
        let entries = entries(&image.layer_tar);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert_eq!(
            paths,
            [
                "etc/",
                "etc/group",
                "etc/nsswitch.conf",
                "etc/passwd",
                "tmp/",
                "usr/",
                "usr/local/",
                "usr/local/bin/",
                "usr/local/bin/prodguard"
            ]
        );
        for (path, uid, gid, mtime, _, _) in &entries {
            assert_eq!((*uid, *gid, *mtime), (0, 0, 1_796_049_315), "{path}");
        }
        let binary = entries.iter().find(|e| e.0 == BINARY_PATH).unwrap();
        assert_eq!(binary.4, 0o755);
        assert_eq!(binary.5, spec().binary);
        let passwd = entries.iter().find(|e| e.0 == "etc/passwd").unwrap();
        assert!(String::from_utf8_lossy(&passwd.5).contains("nonroot:x:65532:65532:"));
        assert_eq!(entries.iter().find(|e| e.0 == "tmp/").unwrap().4, 0o1777);
        // The compressed blob is the tar, and its digest is what the manifest names.
        let mut unpacked = Vec::new();
        flate2::read::GzDecoder::new(image.layer.bytes.as_slice())
            .read_to_end(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, image.layer_tar);
    }

    #[test]
    fn the_config_says_who_runs_what_and_names_the_uncompressed_layer() {
        let image = build(&spec()).unwrap();
        let config: Value = serde_json::from_slice(&image.config.bytes).unwrap();
        assert_eq!(config["config"]["User"], "65532:65532");
        assert_eq!(
            config["config"]["Entrypoint"],
            json!(["/usr/local/bin/prodguard"])
        );
        assert_eq!(config["config"]["Cmd"], json!(["serve"]));
        assert_eq!(
            config["config"]["ExposedPorts"],
            json!({"8443/tcp": {}, "9090/tcp": {}})
        );
        let labels = &config["config"]["Labels"];
        assert_eq!(labels["org.opencontainers.image.version"], "0.1.0");
        assert_eq!(labels["org.opencontainers.image.revision"], "3f194f7");
        assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
        assert_eq!(config["created"], "2026-11-30T14:35:15Z");
        assert_eq!(
            config["rootfs"]["diff_ids"],
            json!([sha256(&image.layer_tar)])
        );
        let manifest: Value = serde_json::from_slice(&image.manifest.bytes).unwrap();
        assert_eq!(manifest["config"]["digest"], image.config.digest);
        assert_eq!(manifest["layers"][0]["digest"], image.layer.digest);
        assert_eq!(manifest["layers"][0]["size"], image.layer.bytes.len());
    }

    #[test]
    fn the_archive_is_a_layout_and_a_docker_save() {
        let image = build(&spec()).unwrap();
        let archive = image.archive(0).unwrap();
        let entries = entries(&archive);
        let paths: Vec<&str> = entries.iter().map(|e| e.0.as_str()).collect();
        assert!(paths.contains(&"oci-layout"));
        assert!(paths.contains(&"index.json"));
        let docker: Value =
            serde_json::from_slice(&entries.iter().find(|e| e.0 == "manifest.json").unwrap().5)
                .unwrap();
        assert_eq!(docker[0]["RepoTags"], json!(["prodguard:0.1.0"]));
        for path in [&docker[0]["Config"], &docker[0]["Layers"][0]] {
            let path = path.as_str().unwrap();
            let (_, _, _, _, _, bytes) = entries.iter().find(|e| e.0 == path).unwrap();
            assert_eq!(
                format!(
                    "blobs/sha256/{}",
                    sha256(bytes).trim_start_matches("sha256:")
                ),
                path
            );
        }
        let index: Value =
            serde_json::from_slice(&entries.iter().find(|e| e.0 == "index.json").unwrap().5)
                .unwrap();
        let descriptor = &index["manifests"][0];
        assert_eq!(descriptor["digest"], image.manifest.digest);
        assert_eq!(
            descriptor["annotations"]["io.containerd.image.name"],
            "docker.io/library/prodguard:0.1.0"
        );
        assert_eq!(
            descriptor["annotations"]["org.opencontainers.image.ref.name"],
            "0.1.0"
        );
    }

    #[test]
    fn names_are_qualified_as_docker_and_containerd_read_them() {
        assert_eq!(qualify("prodguard"), "docker.io/library/prodguard");
        assert_eq!(qualify("openg2p/prodguard"), "docker.io/openg2p/prodguard");
        assert_eq!(
            qualify("harbor.example.org/openg2p/prodguard"),
            "harbor.example.org/openg2p/prodguard"
        );
        assert_eq!(
            qualify("registry.local:5000/prodguard"),
            "registry.local:5000/prodguard"
        );
        assert_eq!(qualify("localhost/prodguard"), "localhost/prodguard");
        assert!(validate_name("registry.local:5000/openg2p/prodguard").is_ok());
        assert!(validate_name("prodguard:0.1.0")
            .unwrap_err()
            .contains("the tag is the version"));
        assert!(validate_name("Prodguard").is_err());
        assert!(validate_name("prodguard@sha256:00")
            .unwrap_err()
            .contains("digest"));
        assert!(validate_name("").is_err());
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_796_049_315), "2026-11-30T14:35:15Z");
    }
}
