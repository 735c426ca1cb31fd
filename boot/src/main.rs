//! `strata-init`: PID 1 of a strata initramfs (see `strata_boot::init`).

fn main() {
    strata_boot::init::run()
}
