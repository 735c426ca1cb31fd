//! `strata-init`: PID 1 of a strata initramfs (see `strata_boot::init`);
//! started as `strata-report`, the systemd reporter (see `strata_boot::sysreport`).

fn main() {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    if strata_boot::sysreport::is_reporter(&argv0.to_string_lossy()) {
        strata_boot::sysreport::run()
    }
    strata_boot::init::run()
}
