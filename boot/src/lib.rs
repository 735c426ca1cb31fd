//! What runs inside the guest: the strata init (PID 1 of the initramfs) and
//! the report protocol it shares with the boot runner.

pub mod report;
