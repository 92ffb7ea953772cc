//! Progress of a batch of transfers (an initial sync, a large rescan): a bar
//! on a terminal, a log line every few seconds otherwise, and nothing at all
//! for a batch that ends within a second.

use std::{
    io::IsTerminal,
    time::{Duration, Instant},
};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A batch shorter than this shows no progress.
pub const SHOW_AFTER: Duration = Duration::from_secs(1);
/// Time between two progress log lines when not on a terminal.
pub const LOG_EVERY: Duration = Duration::from_secs(5);

/// Counts one batch's files and bytes.
#[derive(Debug)]
pub struct Progress {
    total_files: u64,
    total_bytes: u64,
    files: u64,
    bytes: u64,
    started: Instant,
    last_report: Option<Instant>,
    terminal: bool,
    bar: Option<ProgressBar>,
}

/// What to say about a batch at some moment.
#[derive(Debug, Clone, PartialEq)]
pub enum Report {
    Nothing,
    /// Show or update the bar.
    Bar,
    /// Write a log line.
    Line,
}

impl Progress {
    /// A batch of `total_files` files and `total_bytes` bytes; a bar if
    /// stderr is a terminal.
    pub fn new(total_files: u64, total_bytes: u64) -> Self {
        Self::at(total_files, total_bytes, Instant::now(), std::io::stderr().is_terminal())
    }

    fn at(total_files: u64, total_bytes: u64, started: Instant, terminal: bool) -> Self {
        Self { total_files, total_bytes, files: 0, bytes: 0, started, last_report: None, terminal, bar: None }
    }

    /// One more file done, of `bytes` bytes.
    pub fn advance(&mut self, bytes: u64) {
        self.files += 1;
        self.bytes += bytes;
        match self.decide(Instant::now()) {
            Report::Nothing => {}
            Report::Bar => self.draw(),
            Report::Line => self.log(),
        }
    }

    /// The pure part: what to show at `now`.
    fn decide(&mut self, now: Instant) -> Report {
        if now.duration_since(self.started) < SHOW_AFTER {
            return Report::Nothing;
        }
        if self.terminal {
            return Report::Bar;
        }
        if self.last_report.is_some_and(|t| now.duration_since(t) < LOG_EVERY) {
            return Report::Nothing;
        }
        self.last_report = Some(now);
        Report::Line
    }

    fn draw(&mut self) {
        let bar = self.bar.get_or_insert_with(|| {
            let bar = ProgressBar::with_draw_target(Some(self.total_bytes), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{wide_bar} {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta} {msg}",
                )
                .expect("valid template"),
            );
            bar
        });
        bar.set_position(self.bytes);
        bar.set_message(format!("{}/{} files", self.files, self.total_files));
    }

    fn log(&self) {
        let elapsed = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.bytes as f64 / elapsed;
        let left = self.total_bytes.saturating_sub(self.bytes) as f64;
        let eta = if rate > 0.0 { Duration::from_secs_f64(left / rate) } else { Duration::ZERO };
        tracing::info!(
            files = %format!("{}/{}", self.files, self.total_files),
            bytes = %format!("{}/{}", HumanBytes(self.bytes), HumanBytes(self.total_bytes)),
            rate = %format!("{}/s", HumanBytes(rate as u64)),
            eta = %HumanDuration(eta),
            "syncing"
        );
    }

    /// Ends the batch: clears the bar; says how it went if it was long.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        let elapsed = self.started.elapsed();
        if elapsed >= SHOW_AFTER {
            tracing::info!(
                files = self.files,
                bytes = %HumanBytes(self.bytes),
                took = %HumanDuration(elapsed),
                "batch done"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_batches_say_nothing_and_long_ones_log_every_few_seconds() {
        let t0 = Instant::now();
        let mut p = Progress::at(10, 100, t0, false);
        assert_eq!(p.decide(t0 + SHOW_AFTER / 2), Report::Nothing);
        assert_eq!(p.decide(t0 + SHOW_AFTER), Report::Line);
        assert_eq!(p.decide(t0 + SHOW_AFTER + LOG_EVERY / 2), Report::Nothing);
        assert_eq!(p.decide(t0 + SHOW_AFTER + LOG_EVERY), Report::Line);
        let mut t = Progress::at(10, 100, t0, true);
        assert_eq!(t.decide(t0), Report::Nothing);
        assert_eq!(t.decide(t0 + SHOW_AFTER), Report::Bar);
    }
}
