//! An order-preserving parallel map on scoped threads, and a helper thread beside one job.
//!
//! Work is handed out one item at a time, so a thread that meets a few large
//! items (big kernel modules, say) does not hold the others up, and the
//! results come back in input order, so the output is deterministic.

use std::sync::atomic::{AtomicUsize, Ordering};

/// The environment variable that sets the thread count (`STRATA_JOBS=1`: a single-threaded build,
/// so tests can show that the bytes do not depend on it).
pub const JOBS_ENV: &str = "STRATA_JOBS";

/// How many threads strata works on: `STRATA_JOBS` when it holds a positive number, else one per
/// core the process may use, 1 when that is unknown. Read once.
///
/// The one place the count is chosen, so every pool and encoder agrees. Callers cap it where more
/// threads stop paying (memory per xz decoder thread, say). Artefact bytes never depend on the
/// count: the streaming xz and zstd encoders (the initramfs) use their multi-threaded layout
/// even on one thread, and the `.xz`/`.zst` output wrappers cut fixed-size pieces.
pub fn jobs() -> usize {
    static JOBS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *JOBS.get_or_init(|| jobs_from(std::env::var(JOBS_ENV).ok().as_deref()))
}

/// `value` as a thread count, or every core when it is absent, zero or not a number.
fn jobs_from(value: Option<&str>) -> usize {
    value
        .and_then(|v| v.trim().parse::<std::num::NonZeroUsize>().ok())
        .or_else(|| std::thread::available_parallelism().ok())
        .map_or(1, std::num::NonZeroUsize::get)
}

/// [`jobs`] as the `u32` the xz and zstd encoders take.
pub fn jobs_u32() -> u32 {
    u32::try_from(jobs()).unwrap_or(u32::MAX)
}

/// The most glibc malloc arenas strata's threads spread over.
///
/// glibc gives threads up to 8 arenas per core, and an arena keeps what its threads freed. The
/// squashfs workers each allocate a compression context and a block or two per block, so every
/// worker's arena ends up holding tens of MiB after the squashfs step: a cold xz build peaked at
/// 507 MiB with `STRATA_JOBS=16` (2 cores), against 409 MiB with 4 arenas and the same CPU
/// time within the run-to-run spread (docs/performance.md). With the usual thread count (one
/// per core) the cap changes little: the threads that allocate most are the workers, and they
/// compress, rarely waiting for a lock.
const MALLOC_ARENAS: i32 = 4;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], unless `MALLOC_ARENA_MAX` says otherwise.
/// Call it before any thread exists. Returns whether the cap is in force (false on a C library
/// without arenas, or when the environment set its own).
pub fn bound_malloc_arenas() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt changes a tunable of the allocator and touches no memory of ours.
        return unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) } == 1;
    }
    false
}

/// `f` over every item on up to `threads` threads; results in input order.
/// A panic in `f` is resumed on the calling thread.
pub fn map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(item) = items.get(i) else {
                return done;
            };
            done.push((i, f(item)));
        }
    };
    let mut results: Vec<(usize, R)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads.clamp(1, items.len().max(1)))
            .map(|_| scope.spawn(work))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| {
                h.join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, r)| r).collect()
}

/// Runs `work` while a helper thread calls `tick` every `every`, until `work` returns (`tick`
/// is not called after that). For what watches or nudges a file that `work` writes, from
/// outside the writer: progress counts ([`crate::progress::watch_file`]) and writeback
/// ([`crate::io::pages::written_back_while`]).
pub fn beside<R>(
    every: std::time::Duration,
    tick: impl Fn() + Send,
    work: impl FnOnce() -> R,
) -> R {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::scope(|s| {
        s.spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every)
            {
                tick();
            }
        });
        let r = work();
        drop(stop);
        r
    })
}

#[cfg(test)]
mod tests {
    /// glibc accepts the cap (mallopt returns 1), unless the environment set its own.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[test]
    fn glibc_takes_the_arena_cap_unless_the_environment_sets_one() {
        let env_set = std::env::var_os("MALLOC_ARENA_MAX").is_some();
        assert_eq!(super::bound_malloc_arenas(), !env_set);
    }

    #[test]
    fn jobs_is_at_least_one_and_agrees_with_its_u32_form() {
        assert!(super::jobs() >= 1);
        assert_eq!(super::jobs() as u64, u64::from(super::jobs_u32()));
    }

    #[test]
    fn strata_jobs_wins_when_it_is_a_positive_number() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(super::jobs_from(Some("3")), 3);
        assert_eq!(super::jobs_from(Some(" 1 ")), 1);
        assert_eq!(super::jobs_from(Some("0")), cores);
        assert_eq!(super::jobs_from(Some("many")), cores);
        assert_eq!(super::jobs_from(None), cores);
    }

    #[test]
    fn keeps_input_order_on_any_thread_count() {
        let items: Vec<u64> = (0..1000).collect();
        for threads in [0, 1, 2, 7] {
            let out = super::map(&items, threads, |x| x * 2);
            assert_eq!(out, items.iter().map(|x| x * 2).collect::<Vec<_>>());
        }
        assert!(super::map(&[] as &[u8], 2, |x| *x).is_empty());
    }

    /// The helper ticks while the work runs, and not once it has returned.
    #[test]
    fn beside_ticks_while_the_work_runs_and_stops_with_it() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;
        let ticks = AtomicUsize::new(0);
        let tick = || {
            ticks.fetch_add(1, Ordering::SeqCst);
        };
        let seen = super::beside(Duration::from_millis(5), tick, || {
            while ticks.load(Ordering::SeqCst) < 3 {
                std::thread::sleep(Duration::from_millis(1));
            }
            "done"
        });
        assert_eq!(seen, "done");
        let after = ticks.load(Ordering::SeqCst);
        std::thread::sleep(Duration::from_millis(30));
        assert_eq!(ticks.load(Ordering::SeqCst), after);
    }
}
