//! prodguard's project commands. `cargo xtask image` builds the container image: a statically
//! linked release binary, one layer, an OCI layout and an air-gap tarball, with no container
//! engine and no base image (docs/operations.md, "Install").

mod elf;
mod image;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "prodguard's project commands")]
struct Cli {
    #[command(subcommand)]
    command: Commands,
}

#[derive(Subcommand)]
enum Commands {
    /// Build the image: the static release binary, an OCI layout, an air-gap tarball.
    Image(ImageArgs),
}

#[derive(clap::Args)]
struct ImageArgs {
    /// Where to write `oci/`, the tarball, `rootfs/` (the Dockerfile's context) and `digest`.
    /// Default: `image/` in cargo's target directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// The repository the image is named by; the tag is prodguard's version. Naming it after
    /// your private registry (`harbor.example.org/openg2p/prodguard`) makes the loaded image
    /// match what the Deployment pulls.
    #[arg(long, default_value = "prodguard")]
    name: String,
    /// Use this already built binary instead of building it (it must be statically linked).
    #[arg(long)]
    binary: Option<PathBuf>,
}

const TARGET: &str = "x86_64-unknown-linux-gnu";

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Commands::Image(args) => image_command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The checkout being built. `cargo run` (and so `cargo xtask`) sets `CARGO_MANIFEST_DIR` for
/// the process: read it at run time, never the path compiled in, which is another checkout's
/// when checkouts share a target directory (CI's clone and a developer's tree do).
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    // xtask/ is one level below the workspace.
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or(manifest_dir)
}

fn run(command: &mut Command) -> Result<String, String> {
    let output = command
        .output()
        .map_err(|e| format!("running {command:?}: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "{command:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    String::from_utf8(output.stdout).map_err(|e| format!("{command:?} printed non-UTF-8: {e}"))
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

fn target_directory(root: &Path) -> Result<PathBuf, String> {
    let metadata = run(cargo().current_dir(root).args([
        "metadata",
        "--format-version",
        "1",
        "--no-deps",
        "--offline",
    ]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).map_err(|e| format!("reading cargo metadata: {e}"))?;
    metadata["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .ok_or_else(|| "cargo metadata names no target directory".to_string())
}

/// Builds the release binary statically linked (glibc's static libraries, `crt-static`), with
/// the build's own paths remapped so that another checkout of the same commit builds the same
/// bytes. The flags apply to the target only (`--target`), not to build scripts and proc macros.
fn build_binary(root: &Path, target_dir: &Path) -> Result<PathBuf, String> {
    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        return Err(format!(
            "the image is built for linux/amd64 on an x86_64 Linux machine, not on {}/{}",
            std::env::consts::OS,
            std::env::consts::ARCH
        ));
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cargo")))
        .ok_or("neither CARGO_HOME nor HOME is set: cannot remap the registry's paths")?;
    let rustflags = format!(
        "-C target-feature=+crt-static --remap-path-prefix={}=/src --remap-path-prefix={}=/cargo",
        root.display(),
        cargo_home.display()
    );
    let status = cargo()
        .current_dir(root)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("RUSTFLAGS", rustflags)
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--bin",
            "prodguard",
        ])
        .status()
        .map_err(|e| format!("running cargo build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "cargo build of the release binary failed ({status})"
        ));
    }
    Ok(target_dir.join(TARGET).join("release").join("prodguard"))
}

/// The time every file and the config carry: SOURCE_DATE_EPOCH, else the commit's time.
fn epoch(root: &Path) -> Result<u64, String> {
    if let Ok(value) = std::env::var("SOURCE_DATE_EPOCH") {
        return value
            .trim()
            .parse()
            .map_err(|e| format!("SOURCE_DATE_EPOCH `{value}` is not a number of seconds: {e}"));
    }
    let out = run(Command::new("git")
        .current_dir(root)
        .args(["log", "-1", "--format=%ct"]))
    .map_err(|e| {
        format!("{e}\nnot a git checkout: set SOURCE_DATE_EPOCH to the source's time in seconds")
    })?;
    out.trim()
        .parse()
        .map_err(|e| format!("git printed `{}` as the commit time: {e}", out.trim()))
}

/// The commit, with `-dirty` when tracked files differ from it.
fn revision(root: &Path) -> Result<String, String> {
    if let Ok(value) = std::env::var("PRODGUARD_IMAGE_REVISION") {
        return Ok(value);
    }
    let head = run(Command::new("git")
        .current_dir(root)
        .args(["rev-parse", "HEAD"]))
    .map_err(|e| {
        format!("{e}\nnot a git checkout: set PRODGUARD_IMAGE_REVISION to the source's revision")
    })?;
    let changes = run(Command::new("git").current_dir(root).args([
        "status",
        "--porcelain",
        "--untracked-files=no",
    ]))?;
    let dirty = if changes.trim().is_empty() {
        ""
    } else {
        "-dirty"
    };
    Ok(format!("{}{dirty}", head.trim()))
}

/// `key = "value"` of the `[package]` table of prodguard's Cargo.toml.
fn package_field(manifest: &str, key: &str) -> Option<String> {
    let mut in_package = false;
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
            continue;
        }
        if !in_package {
            continue;
        }
        if let Some((name, value)) = line.split_once('=') {
            if name.trim() == key {
                return Some(value.trim().trim_matches('"').to_string());
            }
        }
    }
    None
}

fn image_command(args: ImageArgs) -> Result<(), String> {
    let root = workspace_root();
    let manifest_path = root.join("Cargo.toml");
    let manifest = std::fs::read_to_string(&manifest_path)
        .map_err(|e| format!("{}: {e}", manifest_path.display()))?;
    let field = |key: &str| {
        package_field(&manifest, key)
            .ok_or_else(|| format!("{}: no `{key}` in [package]", manifest_path.display()))
    };
    let target_dir = target_directory(&root)?;
    let binary_path = match args.binary {
        Some(path) => path,
        None => build_binary(&root, &target_dir)?,
    };
    let binary =
        std::fs::read(&binary_path).map_err(|e| format!("{}: {e}", binary_path.display()))?;
    elf::check_static(&binary).map_err(|e| format!("{}: {e}", binary_path.display()))?;
    let spec = image::Spec {
        binary,
        epoch: epoch(&root)?,
        name: args.name,
        version: field("version")?,
        revision: revision(&root)?,
        source: field("repository")?,
        licenses: field("license")?,
    };
    let built = image::build(&spec)?;
    let out = args.out.unwrap_or_else(|| target_dir.join("image"));
    std::fs::create_dir_all(&out).map_err(|e| format!("{}: {e}", out.display()))?;
    built.write_layout(&out.join("oci"))?;
    let archive_name = format!("prodguard-{}-amd64.tar", spec.version);
    let archive = built.archive(spec.epoch)?;
    let archive_path = out.join(&archive_name);
    std::fs::write(&archive_path, &archive)
        .map_err(|e| format!("{}: {e}", archive_path.display()))?;
    write_rootfs(&out.join("rootfs"), &built.layer_tar)?;
    std::fs::write(out.join("digest"), format!("{}\n", built.manifest.digest))
        .map_err(|e| format!("{}: {e}", out.join("digest").display()))?;

    let oci = out.join("oci");
    println!("image     {}", built.tag_reference);
    println!("digest    {}", built.manifest.digest);
    println!(
        "layer     {} bytes compressed ({} bytes uncompressed)",
        built.layer.bytes.len(),
        built.layer_tar.len()
    );
    println!("layout    {}", oci.display());
    println!(
        "tarball   {} ({} bytes)",
        archive_path.display(),
        archive.len()
    );
    println!();
    println!(
        "Push it to your registry (the digest stays {}):",
        built.manifest.digest
    );
    println!(
        "  skopeo copy --preserve-digests oci:{}:{} docker://REGISTRY/prodguard:{}",
        oci.display(),
        built.tag,
        built.tag
    );
    println!(
        "Or load it on a node: copy the tarball into /var/lib/rancher/rke2/agent/images/ (RKE2),"
    );
    println!(
        "  or run `docker load -i {archive_name}` or `ctr -n k8s.io images import {archive_name}`."
    );
    Ok(())
}

/// The layer unpacked into `dir` (emptied first): the Dockerfile's build context.
fn write_rootfs(dir: &Path, layer_tar: &[u8]) -> Result<(), String> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut archive = tar::Archive::new(layer_tar);
    archive.set_preserve_permissions(true);
    archive
        .unpack(dir)
        .map_err(|e| format!("unpacking the layer into {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn package_fields_come_from_the_package_table_only() {
        let manifest = "[package]\nname = \"prodguard\"\nversion = \"0.1.0\"\nlicense = \"Apache-2.0\"\n\n[dependencies]\nversion = \"9\"\n";
        assert_eq!(package_field(manifest, "version").as_deref(), Some("0.1.0"));
        assert_eq!(
            package_field(manifest, "license").as_deref(),
            Some("Apache-2.0")
        );
        assert_eq!(package_field(manifest, "repository"), None);
    }

    #[test]
    fn the_checkout_is_the_one_cargo_runs_in_not_the_one_compiled_in() {
        // `cargo test` sets CARGO_MANIFEST_DIR for the test process as `cargo run` does.
        let at_run_time = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
        assert_eq!(workspace_root(), at_run_time.parent().unwrap());
        assert!(workspace_root().join("xtask").join("Cargo.toml").exists());
    }

    #[test]
    fn prodguard_s_manifest_names_what_the_labels_need() {
        let manifest = std::fs::read_to_string(workspace_root().join("Cargo.toml")).unwrap();
        for key in ["version", "repository", "license"] {
            assert!(package_field(&manifest, key).is_some(), "{key}");
        }
    }
}
