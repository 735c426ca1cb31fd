//! Watching a running VM until it ends, then making sure QEMU is gone.
//!
//! The loop polls three sources every [`POLL`]: the serial log (the report),
//! the process (did QEMU exit?) and QMP (did the guest stop?). It ends on the
//! first of: the guest stops itself (QMP `SHUTDOWN` with `guest: true`, or
//! one guest `RESET` more than the run allows: QEMU emits those only when
//! started without `-no-reboot`);
//! QEMU exits; the firmware starts its UEFI shell (it found nothing to boot,
//! and will not boot anything later); the report's `done` event is
//! [`DONE_GRACE`] old without a power-off after a smoke run, or
//! [`HANDOVER_GRACE`] old when the guest goes on into its real system; the
//! guest kernel panics (it would wait there until the time limit); the time limit.
//! Then QEMU is asked to `quit`, and killed if it has not exited after
//! [`QUIT_GRACE`]. If QMP breaks down mid-run the process status and the
//! serial log still carry the run to an end.

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use crate::process::{self, Vm};
use crate::qmp::{Monitor, Shutdown};
use crate::serial::{self, Console, Tail};
use crate::verdict::Ending;

/// How often the sources are polled.
pub const POLL: Duration = Duration::from_millis(100);
/// How long a complete report may wait for the guest's own power-off, when
/// its `done` said it will power off (a smoke run).
pub const DONE_GRACE: Duration = Duration::from_secs(5);
/// How long a complete report waits when the guest goes on into its own
/// system instead. The verdict rests on the report alone, so this only lets
/// the log catch the hand-over's first lines (or its failure, printed at
/// once); the full [`DONE_GRACE`] here was a third of a TCG boot's time
/// to its verdict.
pub const HANDOVER_GRACE: Duration = Duration::from_secs(1);
/// How long QEMU gets to exit after `quit` before it is killed.
pub const QUIT_GRACE: Duration = Duration::from_secs(10);

/// Why watching failed (the VM is killed in every case).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process could not be waited for or killed.
    #[error(transparent)]
    Process(#[from] process::Error),
    /// The serial log could not be read.
    #[error(transparent)]
    Serial(#[from] serial::Error),
}

/// How a run ended, and what the console showed.
#[derive(Debug)]
pub struct Watched {
    /// What ended the run.
    pub ending: Ending,
    /// Report events and console lines.
    pub console: Console,
    /// True when QEMU had to be killed (it ignored or never got `quit`).
    pub killed: bool,
    /// How often the guest reset itself and QEMU restarted it.
    pub resets: u32,
}

/// Watches `vm` (started at `started`) until it ends or `timeout` passes
/// since `started`, then stops QEMU. Up to `max_resets` guest resets are
/// let through (QEMU restarts the guest); the next one ends the run.
pub fn watch(
    vm: &mut Vm,
    monitor: Option<Monitor>,
    tail: &mut Tail,
    started: Instant,
    timeout: Duration,
    max_resets: u32,
) -> Result<Watched, Error> {
    let mut monitor = monitor;
    let mut resets = 0;
    let mut console = Console::default();
    let mut done_at: Option<Instant> = None;
    let since_start = || Some(started.elapsed().as_secs_f64());
    let ending = loop {
        console.feed_at(tail.poll()?, since_start());
        if done_at.is_none() && console.done() {
            done_at = Some(Instant::now());
        }
        if let Some(status) = vm.try_wait()? {
            break Ending::QemuExit {
                status: process::describe(status),
            };
        }
        if console.firmware_shell {
            break Ending::FirmwareShell;
        }
        if let Some(line) = &console.kernel_panic {
            break Ending::KernelPanic { line: line.clone() };
        }
        if let Some(reason) = guest_stop(&mut monitor, &mut resets, max_resets) {
            break Ending::GuestStopped { reason };
        }
        if done_at.is_some_and(|t| t.elapsed() >= grace(&console)) {
            break Ending::RunnerQuit;
        }
        if started.elapsed() >= timeout {
            break match done_at {
                Some(_) => Ending::RunnerQuit,
                None => Ending::Timeout {
                    secs: timeout.as_secs(),
                },
            };
        }
        std::thread::sleep(POLL);
    };
    let killed = stop(vm, monitor)?;
    console.feed_at(tail.finish()?, since_start());
    Ok(Watched {
        ending,
        console,
        killed,
        resets,
    })
}

/// How long a complete report waits for the VM to end on its own: the
/// guest's power-off after a smoke run, else only the hand-over's first lines.
fn grace(console: &Console) -> Duration {
    let smoke = console
        .events
        .iter()
        .any(|e| matches!(e, strata_proto::report::Event::Done { smoke: true, .. }));
    if smoke {
        DONE_GRACE
    } else {
        HANDOVER_GRACE
    }
}

/// The cause, when the guest stopped itself or reset once too often. A
/// monitor that fails is dropped: from then on the process status decides.
fn guest_stop(monitor: &mut Option<Monitor>, resets: &mut u32, max_resets: u32) -> Option<String> {
    let m = monitor.as_mut()?;
    match m.poll() {
        Ok(stops) => first_stop(stops, resets, max_resets),
        Err(_) => {
            *monitor = None;
            None
        }
    }
}

/// The first of `stops` that ends the run: a guest stop, or the guest reset
/// that makes more than `max_resets` (counted in `resets`). Host-side events
/// (QEMU's own, a `quit`) do not count.
fn first_stop(stops: Vec<Shutdown>, resets: &mut u32, max_resets: u32) -> Option<String> {
    for stop in stops.into_iter().filter(|s| s.guest) {
        if !stop.reset {
            return Some(stop.reason);
        }
        *resets += 1;
        if *resets > max_resets {
            return Some(format!(
                "{}: the guest reset {} times, at most {max_resets} allowed",
                stop.reason, *resets
            ));
        }
    }
    None
}

/// Asks QEMU to quit, waits, kills it if need be; true when it was killed.
/// The monitor is closed only afterwards (see [`Monitor::quit`]).
fn stop(vm: &mut Vm, mut monitor: Option<Monitor>) -> Result<bool, Error> {
    if vm.try_wait()?.is_some() {
        return Ok(false);
    }
    let asked = monitor.as_mut().is_some_and(|m| m.quit().is_ok());
    let grace = if asked { QUIT_GRACE } else { Duration::ZERO };
    let status = vm.wait_or_kill(grace)?;
    drop(monitor);
    Ok(status.signal() == Some(libc::SIGKILL))
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_proto::report::Event;

    fn stop(reason: &str, guest: bool, reset: bool) -> Shutdown {
        Shutdown {
            guest,
            reason: reason.into(),
            reset,
        }
    }

    #[test]
    fn resets_pass_up_to_the_bound_and_the_next_one_ends_the_run() {
        let mut resets = 0;
        let reset = || stop("guest-reset", true, true);
        let host_reset = stop("host-qmp-system-reset", false, true);
        assert_eq!(first_stop(vec![reset(), host_reset], &mut resets, 2), None);
        assert_eq!(first_stop(vec![reset()], &mut resets, 2), None);
        assert_eq!(resets, 2);
        let end = first_stop(vec![reset()], &mut resets, 2).unwrap();
        assert_eq!(
            end,
            "guest-reset: the guest reset 3 times, at most 2 allowed"
        );
        let mut none = 0;
        let end = first_stop(vec![reset()], &mut none, 0).unwrap();
        assert!(end.contains("reset 1 times, at most 0"), "{end}");
    }

    #[test]
    fn a_guest_power_off_ends_the_run_at_once() {
        let mut resets = 0;
        let stops = vec![
            stop("host-qmp-quit", false, false),
            stop("guest-shutdown", true, false),
            stop("guest-reset", true, true),
        ];
        assert_eq!(
            first_stop(stops, &mut resets, 2).as_deref(),
            Some("guest-shutdown")
        );
        assert_eq!(resets, 0);
    }

    #[test]
    fn only_a_smoke_run_gets_the_long_grace() {
        let done = |smoke| Event::Done {
            ok: true,
            layers: 0,
            smoke,
        };
        let mut c = Console::default();
        c.feed([done(true).to_line()]);
        assert_eq!(grace(&c), DONE_GRACE);
        let mut c = Console::default();
        c.feed([done(false).to_line()]);
        assert_eq!(grace(&c), HANDOVER_GRACE);
    }
}
