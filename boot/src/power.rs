//! Ending the boot: powering off, never exiting.
//!
//! PID 1 must not exit (the kernel panics when it does), so every way out of
//! the init ends here: flush file systems, ask the kernel to power off, and
//! should even that fail, sleep forever.

use std::time::Duration;

/// How long a fatal error stays on screen before the power-off.
pub const FATAL_DELAY: Duration = Duration::from_secs(5);

/// Syncs and powers the machine off. Does not return.
pub fn power_off() -> ! {
    // SAFETY: sync() takes no arguments and cannot fail.
    unsafe { libc::sync() };
    // SAFETY: reboot() with a valid command only affects the machine state;
    // it returns only on failure (e.g. not permitted), which we outlive below.
    unsafe { libc::reboot(libc::RB_POWER_OFF) };
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Waits [`FATAL_DELAY`], then powers off.
pub fn fatal_power_off() -> ! {
    std::thread::sleep(FATAL_DELAY);
    power_off()
}
