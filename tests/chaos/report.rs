//! The end-of-run report: operations by kind and outcome, faults by kind, and each check's result.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::history::Op;
use super::nemesis::{Fault, FaultEvent};

/// Outcome columns, in display order.
const OUTCOMES: [&str; 5] = ["ok", "cas-failed", "unknown", "failed", "no-info"];
const KINDS: [&str; 6] = ["put", "get", "cas", "delete", "txn", "txn-read"];

/// One line of the checks section: what was checked, whether it held, and the details.
pub struct CheckLine {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// Renders the report.
pub fn render(header: &str, ops: &[Op], faults: &[FaultEvent], checks: &[CheckLine]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "=== {header}");
    let mut counts: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    for op in ops {
        *counts
            .entry((op.call.kind(), op.outcome.label()))
            .or_default() += 1;
    }
    let _ = writeln!(
        out,
        "operations: {} ({:.0}/s)",
        ops.len(),
        ops.len() as f64 / span_seconds(ops).max(1e-9)
    );
    let _ = write!(out, "  {:<8}", "");
    for outcome in OUTCOMES {
        let _ = write!(out, "{outcome:>11}");
    }
    let _ = writeln!(out, "{:>11}", "total");
    for kind in KINDS {
        let _ = write!(out, "  {kind:<8}");
        let mut total = 0;
        for outcome in OUTCOMES {
            let n = counts.get(&(kind, outcome)).copied().unwrap_or(0);
            total += n;
            let _ = write!(out, "{n:>11}");
        }
        let _ = writeln!(out, "{total:>11}");
    }
    let _ = writeln!(out, "faults: {}", faults.len());
    for kind in Fault::ALL {
        let n = faults.iter().filter(|f| f.fault == kind).count();
        let _ = writeln!(out, "  {:<16}{n:>5}", kind.name());
    }
    let _ = writeln!(out, "checks:");
    for check in checks {
        let mark = if check.passed { "ok  " } else { "FAIL" };
        let _ = writeln!(out, "  {mark} {:<20}{}", check.name, check.detail);
    }
    out
}

/// The faults, one a line, for the saved artifacts.
pub fn fault_log(faults: &[FaultEvent]) -> String {
    faults
        .iter()
        .map(|f| {
            format!(
                "[{:.6}s .. {:.6}s] {}: {}\n",
                f.started as f64 / 1e9,
                f.healed as f64 / 1e9,
                f.fault.name(),
                f.detail
            )
        })
        .collect()
}

fn span_seconds(ops: &[Op]) -> f64 {
    let first = ops.iter().map(|o| o.invoked).min().unwrap_or(0);
    let last = ops.iter().map(|o| o.completed).max().unwrap_or(0);
    (last.saturating_sub(first)) as f64 / 1e9
}
