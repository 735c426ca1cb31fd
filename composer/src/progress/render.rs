//! The three ways `strata build` shows its [`Event`]s, chosen by the binary:
//!
//! - [`Bars`], on a terminal: one indicatif bar per running step, with bytes, rate and ETA
//!   when the step's total is known (bytes and rate otherwise), and a line above the bars for
//!   each step that ends;
//! - [`Plain`], when stderr is not a terminal: one line per step as it ends (the same lines
//!   [`Bars`] prints), nothing while it runs;
//! - [`Json`], for `--json`: one JSON object per event and line, for CI (progress at most once
//!   a second per step).
//!
//! `-q` uses [`Quiet`]: nothing but the error, which the binary prints itself.

use super::{millis, Event, Sink, STEPS};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest interval between two `progress` lines of one step in [`Json`].
const JSON_PROGRESS_EVERY: Duration = Duration::from_secs(1);

/// The line a step leaves when it ends, or a note's text; `None` for events that leave none.
///
/// A step is labelled `[n/7] name:`; a sub-step `<step>/<item>` is indented under it by item.
pub fn line(e: &Event<'_>) -> Option<String> {
    let (step, what) = match *e {
        Event::Finished {
            step,
            elapsed,
            detail,
            ..
        } => (
            step,
            with_detail(detail, &format!("{:.1} s", secs(elapsed))),
        ),
        Event::Cached { step, detail, .. } => (step, with_detail(detail, "cached")),
        Event::Failed { step, elapsed } => (step, format!("failed after {:.1} s", secs(elapsed))),
        Event::Note { text } => return Some(text.to_string()),
        Event::Started { .. } | Event::Progress { .. } => return None,
    };
    Some(format!("{} {what}", label(step)))
}

fn with_detail(detail: &str, tail: &str) -> String {
    if detail.is_empty() {
        format!("({tail})")
    } else {
        format!("{detail} ({tail})")
    }
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn label(step: &str) -> String {
    if let Some((_, item)) = step.split_once('/') {
        return format!("      {item}:");
    }
    match STEPS.iter().position(|s| *s == step) {
        Some(i) => format!("[{}/{}] {step}:", i + 1, STEPS.len()),
        None => format!("{step}:"),
    }
}

/// An event as the JSON object [`Json`] prints.
///
/// Fields: `event` (started, progress, finished, cached, failed, note), `step`, and as they
/// apply `total` (bytes expected), `bytes` (bytes so far for progress, bytes made otherwise),
/// `duration_ms`, `detail`, `message` (a note's text).
pub fn json(e: &Event<'_>) -> serde_json::Value {
    use serde_json::json;
    let mut v = match *e {
        Event::Started { step, total } => json!({"event": "started", "step": step, "total": total}),
        Event::Progress { step, done, total } => {
            json!({"event": "progress", "step": step, "bytes": done, "total": total})
        }
        Event::Finished {
            step,
            elapsed,
            bytes,
            detail,
        } => json!({"event": "finished", "step": step, "duration_ms": millis(elapsed),
                    "bytes": bytes, "detail": detail}),
        Event::Cached {
            step,
            bytes,
            detail,
        } => json!({"event": "cached", "step": step, "duration_ms": 0, "bytes": bytes,
                    "detail": detail}),
        Event::Failed { step, elapsed } => {
            json!({"event": "failed", "step": step, "duration_ms": millis(elapsed)})
        }
        Event::Note { text } => json!({"event": "note", "message": text}),
    };
    // Unknown values are left out rather than written as null.
    if let Some(map) = v.as_object_mut() {
        map.retain(|_, value| !value.is_null());
    }
    v
}

/// What the user asked to see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars on a terminal, plain lines otherwise.
    Auto,
    /// `--json`: events on stdout.
    Json,
    /// `-q`: nothing.
    Quiet,
}

/// The renderer for `mode`: JSON to `stdout`, lines to `stderr`, bars (drawn on the process's
/// stderr) when `terminal` says stderr is one.
pub fn choose(
    mode: Mode,
    stdout: Box<dyn Write + Send>,
    stderr: Box<dyn Write + Send>,
    terminal: bool,
) -> Box<dyn Sink> {
    match mode {
        Mode::Quiet => Box::new(Quiet),
        Mode::Json => Box::new(Json::new(stdout)),
        Mode::Auto if terminal => Box::new(Bars::new()),
        Mode::Auto => Box::new(Plain::new(stderr)),
    }
}

/// Prints nothing (`-q`: only the error, which the binary prints).
pub struct Quiet;

impl Sink for Quiet {
    fn event(&self, _: &Event<'_>) {}
}

/// One line per ended step, to a writer (stderr).
pub struct Plain {
    out: Mutex<Box<dyn Write + Send>>,
}

impl Plain {
    /// Writes lines to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            out: Mutex::new(out),
        }
    }
}

impl Sink for Plain {
    fn event(&self, e: &Event<'_>) {
        if let Some(l) = line(e) {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            // A closed stderr must not fail the build.
            let _ = writeln!(out, "{l}");
        }
    }
}

/// One JSON object per line, to a writer (stdout).
pub struct Json {
    state: Mutex<JsonState>,
}

struct JsonState {
    out: Box<dyn Write + Send>,
    /// When each running step's last progress line went out.
    last: HashMap<String, Instant>,
}

impl Json {
    /// Writes events to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Self {
        Self {
            state: Mutex::new(JsonState {
                out,
                last: HashMap::new(),
            }),
        }
    }
}

impl Sink for Json {
    fn event(&self, e: &Event<'_>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match *e {
            Event::Progress { step, .. } => {
                let now = Instant::now();
                if let Some(t) = s.last.get(step) {
                    if now.duration_since(*t) < JSON_PROGRESS_EVERY {
                        return;
                    }
                }
                s.last.insert(step.to_string(), now);
            }
            Event::Finished { step, .. }
            | Event::Cached { step, .. }
            | Event::Failed { step, .. } => {
                s.last.remove(step);
            }
            _ => {}
        }
        let _ = writeln!(s.out, "{}", json(e));
        // Lines are read as they come (a CI log, a pipe): flush each.
        let _ = s.out.flush();
    }
}

/// A step with a known total: bytes, rate, ETA.
const BAR: &str = "{spinner} {prefix:30} [{bar:25}] {bytes:>10} / {total_bytes:<10} \
                   {binary_bytes_per_sec:>12}  ETA {eta}";
/// A step counting bytes without knowing their total.
const COUNTER: &str = "{spinner} {prefix:30} {bytes:>10} {binary_bytes_per_sec:>12}  {elapsed}";
/// A step that only takes time (until it reports bytes, if it does).
const SPINNER: &str = "{spinner} {prefix:30} {elapsed}";

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// A progress bar per running step, on a terminal (stderr).
pub struct Bars {
    multi: MultiProgress,
    bars: Mutex<HashMap<String, ProgressBar>>,
}

impl Default for Bars {
    fn default() -> Self {
        Self::new()
    }
}

impl Bars {
    /// Bars on stderr.
    pub fn new() -> Self {
        Self::with_target(ProgressDrawTarget::stderr())
    }

    /// Bars drawn to `target` (tests draw to a hidden one).
    pub fn with_target(target: ProgressDrawTarget) -> Self {
        Self {
            multi: MultiProgress::with_draw_target(target),
            bars: Mutex::new(HashMap::new()),
        }
    }

    /// How many bars are up.
    pub fn running(&self) -> usize {
        self.bars.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    fn bar(step: &str, total: Option<u64>) -> ProgressBar {
        let bar = match total {
            Some(t) => ProgressBar::new(t).with_style(style(BAR)),
            None => ProgressBar::no_length().with_style(style(SPINNER)),
        };
        bar.set_prefix(step.to_string());
        bar
    }

    fn end(&self, step: &str) {
        let bar = self
            .bars
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(step);
        if let Some(bar) = bar {
            bar.finish_and_clear();
            self.multi.remove(&bar);
        }
    }
}

impl Sink for Bars {
    fn event(&self, e: &Event<'_>) {
        match *e {
            Event::Started { step, total } => {
                let bar = self.multi.add(Self::bar(step, total));
                bar.enable_steady_tick(Duration::from_millis(100));
                let mut bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
                bars.insert(step.to_string(), bar);
            }
            Event::Progress { step, done, total } => {
                let bars = self.bars.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(bar) = bars.get(step) {
                    match total {
                        Some(t) => bar.set_length(t.max(done)),
                        // The first bytes of a step without a total: show them.
                        None if bar.position() == 0 => bar.set_style(style(COUNTER)),
                        None => {}
                    }
                    bar.set_position(done);
                }
            }
            Event::Finished { step, .. }
            | Event::Cached { step, .. }
            | Event::Failed { step, .. } => self.end(step),
            Event::Note { .. } => {}
        }
        if let Some(l) = line(e) {
            let _ = self.multi.println(l);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::Task;
    use std::sync::Arc;

    /// A writer the test can read back.
    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);

    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    /// A small build's worth of events: two steps, one with a sub-step that moves bytes and
    /// one cached sub-step, a note, and a step that fails.
    fn play(sink: &dyn Sink) {
        Task::start(sink, "inputs", None).finish(None, "profile p.yaml (amd64, platform metal)");
        let sq = Task::start(sink, "squashfs", None);
        let root = sq.sub("rootfs.sqsh", Some(3 << 20));
        std::thread::sleep(crate::progress::PROGRESS_EVERY);
        root.set(1 << 20);
        root.finish(Some(2 << 20), "3 MiB of files");
        sq.sub("00-hello.sqsh", None).cached(Some(4096), "4 KiB");
        crate::progress::note(sink, "flatten: conflict: /etc/x");
        sq.finish(None, "root + 1 layer(s)");
        drop(Task::start(sink, "kernel", None));
    }

    #[test]
    fn json_lines_parse_and_carry_step_event_duration_and_bytes() {
        let buf = Buf::default();
        play(&Json::new(Box::new(buf.clone())));
        let events: Vec<serde_json::Value> = buf
            .text()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        let kinds: Vec<(&str, &str)> = events
            .iter()
            .map(|e| {
                let step = e["step"].as_str().unwrap_or("-");
                (e["event"].as_str().unwrap(), step)
            })
            .collect();
        assert_eq!(
            kinds,
            [
                ("started", "inputs"),
                ("finished", "inputs"),
                ("started", "squashfs"),
                ("started", "squashfs/rootfs.sqsh"),
                ("progress", "squashfs/rootfs.sqsh"),
                ("finished", "squashfs/rootfs.sqsh"),
                ("started", "squashfs/00-hello.sqsh"),
                ("cached", "squashfs/00-hello.sqsh"),
                ("note", "-"),
                ("finished", "squashfs"),
                ("started", "kernel"),
                ("failed", "kernel"),
            ]
        );
        let root_done = &events[5];
        assert_eq!(root_done["bytes"], 2 << 20);
        assert!(root_done["duration_ms"].as_u64().unwrap() >= 100);
        assert_eq!(root_done["detail"], "3 MiB of files");
        assert_eq!(events[4]["bytes"], 1 << 20);
        assert_eq!(events[4]["total"], 3 << 20);
        assert_eq!(events[7]["bytes"], 4096);
        assert_eq!(events[7]["duration_ms"], 0);
        assert_eq!(events[8]["message"], "flatten: conflict: /etc/x");
        // Nothing unknown is written as null.
        assert!(events[1].get("bytes").is_none());
        assert!(events[1]["duration_ms"].is_u64());
    }

    #[test]
    fn json_progress_is_at_most_once_a_second_per_step() {
        let buf = Buf::default();
        let sink = Json::new(Box::new(buf.clone()));
        for done in 0..50 {
            for step in ["outputs/a", "outputs/b"] {
                sink.event(&Event::Progress {
                    step,
                    done,
                    total: None,
                });
            }
        }
        assert_eq!(buf.text().lines().count(), 2);
    }

    #[test]
    fn plain_prints_one_line_per_ended_step_and_each_note() {
        let buf = Buf::default();
        play(&Plain::new(Box::new(buf.clone())));
        let text = buf.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert!(lines[0].starts_with("[1/7] inputs: profile p.yaml (amd64, platform metal) ("));
        assert!(lines[1].starts_with("      rootfs.sqsh: 3 MiB of files ("));
        assert!(lines[1].ends_with(" s)"));
        assert_eq!(lines[2], "      00-hello.sqsh: 4 KiB (cached)");
        assert_eq!(lines[3], "flatten: conflict: /etc/x");
        assert!(lines[4].starts_with("[3/7] squashfs: root + 1 layer(s) ("));
        assert!(lines[5].starts_with("[2/7] kernel: failed after "));
    }

    #[test]
    fn quiet_prints_nothing_and_the_modes_write_where_they_should() {
        let run = |mode: Mode| {
            let (out, err) = (Buf::default(), Buf::default());
            let sink = choose(mode, Box::new(out.clone()), Box::new(err.clone()), false);
            play(sink.as_ref());
            (out.text(), err.text())
        };
        assert_eq!(run(Mode::Quiet), (String::new(), String::new()));
        let (out, err) = run(Mode::Auto);
        assert_eq!((out.as_str(), err.lines().count()), ("", 6));
        let (out, err) = run(Mode::Json);
        assert_eq!((out.lines().count(), err.as_str()), (12, ""));
    }

    #[test]
    fn bars_come_and_go_with_their_steps() {
        let bars = Bars::with_target(ProgressDrawTarget::hidden());
        let sq = Task::start(&bars, "squashfs", None);
        let root = sq.sub("rootfs.sqsh", Some(100));
        let ext = sq.sub("00-hello.sqsh", None);
        assert_eq!(bars.running(), 3);
        root.set(50);
        root.finish(Some(10), "");
        ext.cached(None, "");
        assert_eq!(bars.running(), 1);
        drop(sq);
        assert_eq!(bars.running(), 0);
    }
}
