//! How much memory the background audit may use, from the container's memory limit.
//!
//! The audit's memory is what one list page costs while it is evaluated plus what the
//! reports keep (results, with their messages cut to 1 KiB); everything else it holds is
//! small and fixed, or a few bytes per finding. At start, `serve` reads the cgroup's limit
//! and its own resident memory, keeps room for admission, and plans pages and kept results
//! to fit the rest: as asked when they fit, smaller when they do not (a degraded audit,
//! said in a Warning Event and the log), and no audit at all when even the smallest plan
//! does not fit. The figures below come from docs/benchmarks.md's audit benchmark.

use super::PageBudget;

/// The audit's fixed cost: its thread and runtime, its kube client, the snapshot of roles
/// and namespaces, the finding hashes of a cluster of tens of thousands of findings.
pub const AUDIT_FIXED: u64 = 6 * 1024 * 1024;
/// Peak bytes per byte of a list page: the body, and the one object decoded from it at a
/// time (measured: about 2.2).
pub const PAGE_FACTOR: u64 = 3;
/// Bytes a kept result costs (measured about 350 with the benchmark's messages; a message
/// is at most 1 KiB).
pub const RESULT_BYTES: u64 = 512;
/// The smallest plan: pages of 256 KiB and 100 kept results.
pub const MIN_PAGE_BYTES: usize = 256 * 1024;
pub const MIN_RESULTS: usize = 100;

/// Pages and kept results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditBudget {
    pub page: PageBudget,
    /// Results all reports keep together.
    pub max_results_total: usize,
}

impl AuditBudget {
    /// The memory the plan needs beyond the fixed cost.
    pub fn bytes(&self) -> u64 {
        self.page.bytes as u64 * PAGE_FACTOR + self.max_results_total as u64 * RESULT_BYTES
    }
}

/// What the audit runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// As asked: no limit, or the limit holds it.
    Full(AuditBudget),
    /// Smaller pages and fewer kept results, and why.
    Degraded(AuditBudget, String),
    /// No audit: even the smallest plan does not fit, and why.
    Refused(String),
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// Fits `wanted` into `limit` (bytes, `None` for no limit) for a process that already
/// holds `resident` bytes and keeps `admission` bytes for reviews in flight.
pub fn plan(limit: Option<u64>, resident: u64, admission: u64, wanted: AuditBudget) -> Plan {
    let Some(limit) = limit else {
        return Plan::Full(wanted);
    };
    let available = limit.saturating_sub(resident + admission + AUDIT_FIXED);
    if wanted.bytes() <= available {
        return Plan::Full(wanted);
    }
    let smallest = AuditBudget {
        page: PageBudget {
            objects: wanted.page.objects,
            bytes: MIN_PAGE_BYTES.min(wanted.page.bytes),
        },
        max_results_total: MIN_RESULTS.min(wanted.max_results_total),
    };
    let accounting = format!(
        "the memory limit is {}, {} is in use, {} is kept for admission and {} for the audit's fixed cost",
        mib(limit),
        mib(resident),
        mib(admission),
        mib(AUDIT_FIXED)
    );
    if smallest.bytes() > available {
        return Plan::Refused(format!(
            "the background audit does not fit: {accounting}, which leaves {} where its smallest plan \
             (pages of {}, {} kept results) needs {}; raise the memory limit",
            mib(available),
            mib(smallest.page.bytes as u64),
            smallest.max_results_total,
            mib(smallest.bytes())
        ));
    }
    // Both shrink by the same factor, down to the smallest plan.
    let scale = available as f64 / wanted.bytes() as f64;
    let page_bytes = ((wanted.page.bytes as f64 * scale) as usize).max(smallest.page.bytes);
    let rest = available.saturating_sub(page_bytes as u64 * PAGE_FACTOR);
    let results = ((rest / RESULT_BYTES) as usize)
        .min(wanted.max_results_total)
        .max(smallest.max_results_total);
    let budget = AuditBudget {
        page: PageBudget {
            objects: wanted.page.objects,
            bytes: page_bytes,
        },
        max_results_total: results,
    };
    Plan::Degraded(
        budget,
        format!(
            "the background audit runs degraded: {accounting}, which leaves {} where the asked plan \
             (pages of {}, {} kept results) needs {}; it lists pages of at most {} and keeps {} results \
             in all (the rest are counted); raise the memory limit to audit in full",
            mib(available),
            mib(wanted.page.bytes as u64),
            wanted.max_results_total,
            mib(wanted.bytes()),
            mib(budget.page.bytes as u64),
            budget.max_results_total
        ),
    )
}

/// The memory limit of this process's cgroup, or `None` when there is none.
pub fn memory_limit() -> Option<u64> {
    let membership = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    memory_limit_in(std::path::Path::new("/sys/fs/cgroup"), &membership)
}

/// The memory limit of the cgroup that `membership` (the text of `/proc/self/cgroup`) names
/// under `root`: cgroup v2's `memory.max`, then v1's `memory.limit_in_bytes`. In a container
/// with a cgroup namespace the path is `/`, the files at the root of the mount; without one
/// it is the full path. The mount's root files are the last resort.
pub fn memory_limit_in(root: &std::path::Path, membership: &str) -> Option<u64> {
    let mut candidates = Vec::new();
    for line in membership.lines() {
        let mut fields = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let path = path.trim_start_matches('/');
        if controllers.is_empty() {
            candidates.push(root.join(path).join("memory.max"));
        } else if controllers.split(',').any(|c| c == "memory") {
            candidates.push(root.join("memory").join(path).join("memory.limit_in_bytes"));
        }
    }
    candidates.push(root.join("memory.max"));
    candidates.push(root.join("memory").join("memory.limit_in_bytes"));
    candidates
        .iter()
        .find_map(|file| std::fs::read_to_string(file).ok())
        .and_then(|text| parse_limit(&text))
}

/// `max`, or v1's "no limit" (a page-rounded `i64::MAX`), is no limit.
pub fn parse_limit(text: &str) -> Option<u64> {
    let value: u64 = text.trim().parse().ok()?;
    (value < 1 << 62).then_some(value)
}

/// This process's resident memory (`VmRSS`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status_field(&status, "VmRSS:")
}

/// A `kB` field of `/proc/PID/status`, in bytes.
pub fn status_field(status: &str, field: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(field))?;
    let kib: u64 = line[field.len()..]
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;
    const ADMISSION: u64 = 24 * MIB;

    fn wanted() -> AuditBudget {
        AuditBudget {
            page: PageBudget {
                objects: 500,
                bytes: 4 * MIB as usize,
            },
            max_results_total: 10_000,
        }
    }

    #[test]
    fn no_limit_or_a_roomy_one_plans_in_full() {
        assert_eq!(
            plan(None, 10 * MIB, ADMISSION, wanted()),
            Plan::Full(wanted())
        );
        assert_eq!(
            plan(Some(128 * MIB), 10 * MIB, ADMISSION, wanted()),
            Plan::Full(wanted())
        );
    }

    #[test]
    fn deploy_s_limit_holds_admission_s_default_budget_and_the_full_audit() {
        // deploy/base: a 128Mi limit; about 20 MiB resident once serving.
        let admission = crate::http::admission_memory(crate::http::DEFAULT_BYTES_IN_FLIGHT);
        assert_eq!(
            plan(Some(128 * MIB), 20 * MIB, admission, wanted()),
            Plan::Full(wanted())
        );
    }

    #[test]
    fn a_tight_limit_shrinks_pages_and_results_to_fit() {
        let limit = 56 * MIB;
        let Plan::Degraded(budget, why) = plan(Some(limit), 10 * MIB, ADMISSION, wanted()) else {
            panic!("not degraded");
        };
        assert!(budget.page.bytes < wanted().page.bytes, "{budget:?}");
        assert!(
            budget.max_results_total < wanted().max_results_total,
            "{budget:?}"
        );
        assert!(budget.page.bytes >= MIN_PAGE_BYTES);
        assert!(
            budget.bytes() <= limit - 10 * MIB - ADMISSION - AUDIT_FIXED,
            "{budget:?}"
        );
        assert!(why.contains("runs degraded"), "{why}");
        assert!(why.contains("the memory limit is 56.0 MiB"), "{why}");
    }

    #[test]
    fn a_limit_that_cannot_hold_the_smallest_plan_refuses() {
        let Plan::Refused(why) = plan(Some(40 * MIB), 12 * MIB, ADMISSION, wanted()) else {
            panic!("not refused");
        };
        assert!(why.contains("does not fit"), "{why}");
        assert!(why.contains("raise the memory limit"), "{why}");
    }

    #[test]
    fn the_limit_of_this_process_s_own_cgroup() {
        let root = tempfile::tempdir().unwrap();
        let write = |path: &str, text: &str| {
            let file = root.path().join(path);
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        };
        // cgroup v2 without a namespace: the full path.
        write("kubepods/pod1/c1/memory.max", "134217728\n");
        write("memory.max", "max\n");
        assert_eq!(
            memory_limit_in(root.path(), "0::/kubepods/pod1/c1\n"),
            Some(128 * MIB)
        );
        // With a cgroup namespace the path is /: the root's file.
        assert_eq!(
            memory_limit_in(root.path(), "0::/\n"),
            None,
            "max is no limit"
        );
        // cgroup v1: the memory controller's line.
        write("memory/docker/abc/memory.limit_in_bytes", "67108864\n");
        assert_eq!(
            memory_limit_in(
                root.path(),
                "12:pids:/docker/abc\n4:memory:/docker/abc\n1:name=systemd:/docker/abc\n"
            ),
            Some(64 * MIB)
        );
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(memory_limit_in(empty.path(), ""), None, "no cgroup files");
    }

    #[test]
    fn cgroup_limits_and_status_fields_parse() {
        assert_eq!(parse_limit("134217728\n"), Some(128 * MIB));
        assert_eq!(parse_limit("max\n"), None);
        assert_eq!(parse_limit("9223372036854771712\n"), None);
        assert_eq!(parse_limit("garbage"), None);
        let status = "Name:\tprodguard\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(status_field(status, "VmRSS:"), Some(10 * MIB));
        assert_eq!(status_field(status, "VmHWM:"), Some(20 * MIB));
        assert_eq!(status_field(status, "VmSwap:"), None);
    }
}
