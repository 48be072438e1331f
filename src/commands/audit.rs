//! `prodguard audit`: the background audit's scan, once, against the current kubeconfig,
//! printed as `check` prints (same JSON schema, same exit codes).

use std::collections::BTreeMap;
use std::process::ExitCode;

use super::check::{offline_engine, print_output, CheckOutput, InputError};
use super::{load_config, EXIT_BAD_INPUT};
use crate::audit::{scan, Scanned};
use crate::cli::AuditArgs;

pub fn run(args: AuditArgs) -> ExitCode {
    let config = match load_config(args.config.as_deref(), args.mode) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let engine = offline_engine(&config);
    let scanned = runtime.block_on(async {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| format!("no in-cluster config or kubeconfig to audit: {e}"))?;
        // The cluster's PolicyExceptions apply as they do at admission.
        let (exceptions, ignored) = crate::exceptions::watch::list(&client).await?;
        if ignored > 0 {
            eprintln!(
                "warning: {ignored} PolicyExceptions are not honoured (invalid, or beyond the cap)"
            );
        }
        engine.exceptions().0.replace(exceptions);
        Ok::<_, String>(scan(&client, &engine).await)
    });
    let scan = match scanned {
        Ok(scan) => scan,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_BAD_INPUT);
        }
    };
    let mut output = CheckOutput::new();
    // Every scanned object counts once, with its findings.
    let mut by_object: BTreeMap<&Scanned, Vec<_>> = BTreeMap::new();
    for (object, finding) in &scan.findings {
        by_object.entry(object).or_default().push(finding.clone());
    }
    for findings in by_object.into_values() {
        output.add(None, findings);
    }
    output.summary.resources = scan.objects();
    output.errors = scan
        .errors
        .iter()
        .chain(&scan.object_errors)
        .map(|message| InputError {
            file: "cluster".to_owned(),
            message: message.clone(),
        })
        .collect();
    print_output(&output, args.output)
}
