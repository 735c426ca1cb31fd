//! The one way a unit test of the guest init may decline to run.
//!
//! Under `make test` (`STRATA_E2E=1`) a missing prerequisite is a failure with its fix,
//! because a skip there would hide a broken setup; in a bare `cargo test` the test prints
//! one `SKIPPED <test>: <why>` line to stderr and returns.

use std::io::Write as _;

/// True when `ok`; otherwise panics under `STRATA_E2E=1` naming `why` and `fix`, or prints
/// `SKIPPED <test>: <why> (<fix>)` and returns false.
pub(crate) fn require(ok: bool, why: &str, fix: &str) -> bool {
    if ok {
        return true;
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("<unnamed test>")
        .to_string();
    let e2e = std::env::var_os("STRATA_E2E").is_some_and(|v| v == "1");
    assert!(
        !e2e,
        "STRATA_E2E=1 but {test} cannot run: {why}; fix: {fix}"
    );
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing
    // tests, and a skip must show in every run.
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {why} ({fix})");
    false
}
