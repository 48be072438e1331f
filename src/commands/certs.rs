//! `prodguard certs`: a CA and a serving certificate for the webhook Service's DNS names, and
//! with `--inject` the CA bundle patched into the webhook configurations of a live cluster.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use base64::Engine as _;

use super::EXIT_BAD_INPUT;
use crate::certs::pki;
use crate::cli::CertsArgs;
use crate::cluster::inject_ca_bundle;

pub fn run(args: CertsArgs) -> ExitCode {
    match certs(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

fn certs(args: &CertsArgs) -> Result<(), String> {
    let ca_pem = if let Some(ca_file) = &args.ca_file {
        std::fs::read_to_string(ca_file)
            .map_err(|e| format!("cannot read {}: {e}", ca_file.display()))?
    } else {
        let ca_path = args.out_dir.join("ca.crt");
        if args.inject && !args.force && ca_path.exists() {
            println!("using the CA in {}", ca_path.display());
        } else {
            write_certs(args)?;
            println!(
                "wrote ca.crt, tls.crt and tls.key to {}",
                args.out_dir.display()
            );
        }
        std::fs::read_to_string(&ca_path)
            .map_err(|e| format!("cannot read {}: {e}", ca_path.display()))?
    };
    if !ca_pem.contains("-----BEGIN CERTIFICATE-----") {
        return Err("the CA bundle holds no PEM certificate".into());
    }
    if args.inject {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the async runtime: {e}"))?;
        let patched = runtime.block_on(async {
            let client = kube::Client::try_default().await.map_err(|e| {
                format!("no in-cluster config or kubeconfig to inject the CA bundle with: {e}")
            })?;
            inject_ca_bundle(client, &args.webhook_name, ca_pem.as_bytes())
                .await
                .map_err(|e| e.to_string())
        })?;
        println!("injected the CA bundle into {}", patched.join(", "));
    }
    println!("CA bundle (the caBundle of both webhook configurations):");
    println!(
        "{}",
        base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())
    );
    Ok(())
}

/// Writes ca.crt, tls.crt and tls.key to `--out-dir`.
pub fn write_certs(args: &CertsArgs) -> Result<(), String> {
    let mut names = pki::service_names(&args.service, &args.namespace);
    names.extend(args.extra_names.iter().cloned());
    let files = ["ca.crt", "tls.crt", "tls.key"];
    if !args.force {
        if let Some(existing) = files.iter().find(|f| args.out_dir.join(f).exists()) {
            return Err(format!(
                "{} already exists; pass --force to replace the certificates in {}",
                args.out_dir.join(existing).display(),
                args.out_dir.display()
            ));
        }
    }
    let pki = pki::generate(&format!("prodguard CA for {}", names[2]), &names)
        .map_err(|e| format!("cannot generate certificates for {}: {e}", names.join(", ")))?;
    std::fs::create_dir_all(&args.out_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.out_dir.display()))?;
    write_file(&args.out_dir.join("ca.crt"), &pki.ca_cert_pem, false)?;
    write_file(&args.out_dir.join("tls.crt"), &pki.cert_pem, false)?;
    write_file(&args.out_dir.join("tls.key"), &pki.key_pem, true)?;
    Ok(())
}

/// Writes `contents`; a private file is readable by its owner only.
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), String> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    options
        .open(path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
