//! What a build tells while it runs: structured events, a sink that receives them, and the
//! renderers the `strata` binary chooses from ([`render`]).
//!
//! A build is the seven [`STEPS`]; long ones have sub-steps named `<step>/<item>` (one per
//! squashfs image, initramfs, output file), which may run at the same time on several threads.
//! Each (sub-)step is a [`Task`]: it announces itself when created, reports bytes as they pass
//! (it is an [`io::count::Meter`](crate::io::count::Meter), so a [`Counted`] reader or writer
//! can feed it), and ends as finished (with its duration and byte count), cached (a cache hit:
//! no work done), or failed (dropped before it ended, i.e. an error unwound past it).
//!
//! Library code never prints: it sends [`Event`]s to a [`Sink`], which is `Send + Sync` so the
//! worker threads of one step report through the same one. Progress events are rate-limited
//! here (one per [`PROGRESS_EVERY`] per task), so counting every read costs two atomic
//! operations and a clock read.
//!
//! [`Counted`]: crate::io::count::Counted

pub mod render;

use crate::io::count::Meter;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The steps of a build, in order (the plain renderer numbers them `[n/7]`).
pub const STEPS: [&str; 7] = [
    "inputs",
    "kernel",
    "squashfs",
    "initramfs",
    "layout",
    "outputs",
    "manifest",
];

/// Shortest interval between two progress events of one task.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// How often [`watch_file`] looks at the file it watches.
const WATCH_EVERY: Duration = Duration::from_millis(200);

/// One thing that happened in a build. `step` is one of [`STEPS`], or `<step>/<item>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// A step began; `total` is how many bytes it will move, when known.
    Started {
        /// The step.
        step: &'a str,
        /// Bytes it will move, if known beforehand.
        total: Option<u64>,
    },
    /// A running step moved `done` bytes so far.
    Progress {
        /// The step.
        step: &'a str,
        /// Bytes so far.
        done: u64,
        /// Bytes in all, if known.
        total: Option<u64>,
    },
    /// A step ended successfully.
    Finished {
        /// The step.
        step: &'a str,
        /// Wall time it took.
        elapsed: Duration,
        /// What it made, in bytes (the image or file written), when it made one thing.
        bytes: Option<u64>,
        /// One line for people: what was made.
        detail: &'a str,
    },
    /// A step's result was found in the cache: nothing was done.
    Cached {
        /// The step.
        step: &'a str,
        /// Size of the cached result.
        bytes: Option<u64>,
        /// One line for people.
        detail: &'a str,
    },
    /// A step was abandoned because of an error (the error itself is reported by the caller).
    Failed {
        /// The step.
        step: &'a str,
        /// Wall time until it failed.
        elapsed: Duration,
    },
    /// A remark that belongs to no step's result (a warning, a plan finding).
    Note {
        /// The line.
        text: &'a str,
    },
}

/// Receives a build's events; shared by the build's threads.
pub trait Sink: Send + Sync {
    /// Handles one event. Must not block for long: the build waits for it.
    fn event(&self, e: &Event<'_>);
}

/// No output (tests, library callers that want none).
impl Sink for () {
    fn event(&self, _: &Event<'_>) {}
}

/// Any thread-safe closure over events.
impl<F: Fn(&Event<'_>) + Send + Sync> Sink for F {
    fn event(&self, e: &Event<'_>) {
        self(e)
    }
}

/// Sends a [`Event::Note`].
pub fn note(sink: &dyn Sink, text: &str) {
    sink.event(&Event::Note { text });
}

/// A running step: created with [`Task::start`], ended with [`Task::finish`] or
/// [`Task::cached`]; dropped otherwise, it reports [`Event::Failed`].
pub struct Task<'s> {
    sink: &'s dyn Sink,
    step: String,
    total: Option<u64>,
    done: AtomicU64,
    start: Instant,
    /// Milliseconds after `start` of the last progress event (rate limit).
    last_ms: AtomicU64,
    ended: AtomicBool,
}

impl<'s> Task<'s> {
    /// Starts `step`, which will move `total` bytes if that is known, and says so.
    pub fn start(sink: &'s dyn Sink, step: impl Into<String>, total: Option<u64>) -> Self {
        let step = step.into();
        sink.event(&Event::Started { step: &step, total });
        Self {
            sink,
            step,
            total,
            done: AtomicU64::new(0),
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
            ended: AtomicBool::new(false),
        }
    }

    /// Starts the sub-step `<this step>/<item>`.
    pub fn sub(&self, item: &str, total: Option<u64>) -> Task<'s> {
        let top = self.step.split('/').next().unwrap_or(&self.step);
        Task::start(self.sink, format!("{top}/{item}"), total)
    }

    /// The sink this task reports to (for sub-steps made elsewhere).
    pub fn sink(&self) -> &'s dyn Sink {
        self.sink
    }

    /// The step's name.
    pub fn step(&self) -> &str {
        &self.step
    }

    /// Bytes counted so far.
    pub fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }

    /// Sets the byte count (for a caller that measures it, e.g. by a file's size), and
    /// reports it if it changed and the last report is old enough.
    pub fn set(&self, done: u64) {
        if self.done.swap(done, Ordering::Relaxed) != done {
            self.report(done);
        }
    }

    /// Ends the step: it made `bytes` (if it made one thing) and `detail` says what.
    /// Returns its duration.
    pub fn finish(self, bytes: Option<u64>, detail: &str) -> Duration {
        let elapsed = self.start.elapsed();
        self.ended.store(true, Ordering::Relaxed);
        self.sink.event(&Event::Finished {
            step: &self.step,
            elapsed,
            bytes,
            detail,
        });
        elapsed
    }

    /// Ends the step as [`Task::cached`] when `cached`, else as [`Task::finish`].
    pub fn end(self, cached: bool, bytes: Option<u64>, detail: &str) {
        if cached {
            self.cached(bytes, detail);
        } else {
            self.finish(bytes, detail);
        }
    }

    /// Ends the step as a cache hit: its result of `bytes` was already there.
    pub fn cached(self, bytes: Option<u64>, detail: &str) {
        self.ended.store(true, Ordering::Relaxed);
        self.sink.event(&Event::Cached {
            step: &self.step,
            bytes,
            detail,
        });
    }

    /// A progress event, unless one went out less than [`PROGRESS_EVERY`] ago.
    fn report(&self, done: u64) {
        let now = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        let last = self.last_ms.load(Ordering::Relaxed);
        let every = PROGRESS_EVERY.as_millis() as u64;
        if now.saturating_sub(last) < every {
            return;
        }
        // One thread wins the slot; the others' counts go out with the next event.
        if self
            .last_ms
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
        {
            self.sink.event(&Event::Progress {
                step: &self.step,
                done,
                total: self.total,
            });
        }
    }
}

impl Meter for Task<'_> {
    fn add(&self, bytes: u64) {
        let done = self.done.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.report(done);
    }
}

impl Drop for Task<'_> {
    fn drop(&mut self) {
        if !self.ended.load(Ordering::Relaxed) {
            self.sink.event(&Event::Failed {
                step: &self.step,
                elapsed: self.start.elapsed(),
            });
        }
    }
}

/// Runs `work` while a helper thread sets `task`'s count to the bytes `path` holds, a few
/// times a second.
///
/// For writers that take a path and open the file themselves (most output formats and the
/// xz/zstd wrappers): their progress is measured from outside, without a hook inside them.
/// The count is the bytes actually stored (allocated blocks, capped at the length), so a
/// sparse file set to its full length first still counts only what was written.
pub fn watch_file<R>(task: &Task<'_>, path: &Path, work: impl FnOnce() -> R) -> R {
    let count = || {
        if let Some(n) = stored_bytes(path) {
            task.set(n);
        }
    };
    crate::par::beside(WATCH_EVERY, count, work)
}

/// Bytes of `path` that are on disk: allocated blocks, at most its length.
fn stored_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.blocks() * 512).min(m.len()))
}

/// One ended step, as [`Recorder`] keeps it for the build report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StepRecord {
    /// The step (`<step>` or `<step>/<item>`).
    pub step: String,
    /// Wall time in milliseconds (0 for a cache hit).
    pub duration_ms: u64,
    /// Bytes made, when the step made one thing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Whether the result came from the cache.
    pub cached: bool,
}

/// Passes events on to another sink and keeps every ended step, in the order they ended.
pub struct Recorder<'s> {
    inner: &'s dyn Sink,
    steps: Mutex<Vec<StepRecord>>,
}

impl<'s> Recorder<'s> {
    /// Records what passes on to `inner`.
    pub fn new(inner: &'s dyn Sink) -> Self {
        Self {
            inner,
            steps: Mutex::new(Vec::new()),
        }
    }

    /// The steps that ended so far.
    pub fn into_steps(self) -> Vec<StepRecord> {
        self.steps.into_inner().unwrap_or_else(|p| p.into_inner())
    }

    fn keep(&self, r: StepRecord) {
        self.steps.lock().unwrap_or_else(|p| p.into_inner()).push(r);
    }
}

impl Sink for Recorder<'_> {
    fn event(&self, e: &Event<'_>) {
        match *e {
            Event::Finished {
                step,
                elapsed,
                bytes,
                ..
            } => self.keep(StepRecord {
                step: step.into(),
                duration_ms: millis(elapsed),
                bytes,
                cached: false,
            }),
            Event::Cached { step, bytes, .. } => self.keep(StepRecord {
                step: step.into(),
                duration_ms: 0,
                bytes,
                cached: true,
            }),
            _ => {}
        }
        self.inner.event(e);
    }
}

/// A duration in whole milliseconds.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event, as owned text.
    #[derive(Default)]
    struct Log(Mutex<Vec<String>>);

    impl Sink for Log {
        fn event(&self, e: &Event<'_>) {
            let line = match e {
                Event::Started { step, total } => format!("started {step} {total:?}"),
                Event::Progress { step, done, .. } => format!("progress {step} {done}"),
                Event::Finished { step, bytes, .. } => format!("finished {step} {bytes:?}"),
                Event::Cached { step, .. } => format!("cached {step}"),
                Event::Failed { step, .. } => format!("failed {step}"),
                Event::Note { text } => format!("note {text}"),
            };
            self.0.lock().unwrap().push(line);
        }
    }

    #[test]
    fn a_task_starts_and_finishes_and_names_its_sub_steps() {
        let log = Log::default();
        let t = Task::start(&log, "squashfs", None);
        let sub = t.sub("rootfs.sqsh", Some(10));
        sub.finish(Some(4), "made");
        t.finish(None, "done");
        assert_eq!(
            *log.0.lock().unwrap(),
            [
                "started squashfs None",
                "started squashfs/rootfs.sqsh Some(10)",
                "finished squashfs/rootfs.sqsh Some(4)",
                "finished squashfs None",
            ]
        );
    }

    #[test]
    fn a_dropped_task_reports_failure_and_a_cached_one_does_not() {
        let log = Log::default();
        drop(Task::start(&log, "kernel", None));
        Task::start(&log, "outputs/a.qcow2", None).cached(Some(1), "hit");
        let lines = log.0.lock().unwrap();
        assert_eq!(lines[1], "failed kernel");
        assert_eq!(lines[3], "cached outputs/a.qcow2");
        assert_eq!(lines.len(), 4);
    }

    #[test]
    fn progress_is_counted_from_many_threads_and_rate_limited() {
        let log = Log::default();
        let t = Task::start(&log, "squashfs/rootfs.sqsh", Some(8000));
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        t.add(1);
                    }
                });
            }
        });
        assert_eq!(t.done(), 8000);
        std::thread::sleep(PROGRESS_EVERY);
        t.add(0);
        let allowed = millis(t.start.elapsed()) / PROGRESS_EVERY.as_millis() as u64;
        let progress = |l: &Vec<String>| l.iter().filter(|l| l.starts_with("progress")).count();
        let n = progress(&log.0.lock().unwrap()) as u64;
        // None in the first PROGRESS_EVERY, at most one per interval after; the one after the
        // sleep always goes out.
        assert!(
            (1..=allowed).contains(&n),
            "{n} progress events, {allowed} allowed"
        );
        assert_eq!(
            log.0.lock().unwrap().last().unwrap(),
            "progress squashfs/rootfs.sqsh 8000"
        );
        t.finish(Some(8000), "");
    }

    #[test]
    fn watch_file_reports_the_bytes_written_while_the_work_runs() {
        let log = Log::default();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let t = Task::start(&log, "outputs/x.raw", None);
        watch_file(&t, &path, || {
            let f = std::fs::File::create(&path).unwrap();
            // Sparse length first, as the raw copy does: only written data counts.
            f.set_len(1 << 30).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&f, &[1u8; 65536], 0).unwrap();
            f.sync_all().unwrap();
            std::thread::sleep(WATCH_EVERY * 3);
        });
        let done = t.done();
        assert!((65536..1 << 20).contains(&done), "counted {done}");
        t.finish(None, "");
    }

    #[test]
    fn the_recorder_keeps_ended_steps_and_passes_everything_on() {
        let log = Log::default();
        let rec = Recorder::new(&log);
        Task::start(&rec, "inputs", None).finish(None, "");
        Task::start(&rec, "squashfs/a", None).cached(Some(7), "");
        note(&rec, "hello");
        assert_eq!(log.0.lock().unwrap().len(), 5);
        let steps = rec.into_steps();
        assert_eq!(steps.len(), 2);
        assert_eq!(steps[0].step, "inputs");
        assert!(!steps[0].cached);
        assert_eq!(steps[1].bytes, Some(7));
        assert!(steps[1].cached);
    }
}
