//! `prodguard certs`: a CA and a serving certificate for the webhook Service's DNS names.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use base64::Engine as _;

use super::EXIT_BAD_INPUT;
use crate::cli::CertsArgs;
use crate::server::pki;

pub fn run(args: CertsArgs) -> ExitCode {
    match write_certs(&args) {
        Ok(bundle) => {
            println!(
                "wrote ca.crt, tls.crt and tls.key to {}",
                args.out_dir.display()
            );
            println!("CA bundle (the caBundle of both webhook configurations):");
            println!("{bundle}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_BAD_INPUT)
        }
    }
}

/// Writes the files and returns the base64 CA bundle.
pub fn write_certs(args: &CertsArgs) -> Result<String, String> {
    let names = pki::service_names(&args.service, &args.namespace);
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
    Ok(base64::engine::general_purpose::STANDARD.encode(pki.ca_cert_pem.as_bytes()))
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
