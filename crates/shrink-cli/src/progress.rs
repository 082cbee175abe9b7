//! Progress on stderr (hidden when stderr is not a terminal).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use shrink_passes::ProgressSink;

/// A spinner for work of unknown length.
pub fn spinner(message: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.set_message(message.to_string());
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// A bar over `total` steps.
pub fn bar(total: u64, message: &str) -> ProgressBar {
    let pb = ProgressBar::new(total);
    pb.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    pb.set_message(message.to_string());
    pb
}

/// Progress of the run on stderr: a spinner for unsized work, a bar otherwise.
#[derive(Default)]
pub struct Bars {
    bar: Option<ProgressBar>,
    /// Messages go to stderr (stdout carries the JSON report).
    messages_to_stderr: bool,
}

impl Bars {
    pub fn new(messages_to_stderr: bool) -> Self {
        Bars {
            bar: None,
            messages_to_stderr,
        }
    }
}

impl ProgressSink for Bars {
    fn start(&mut self, what: &str, total: u64) {
        self.finish();
        self.bar = Some(if total == 0 {
            spinner(what)
        } else {
            bar(total, what)
        });
    }
    fn advance(&mut self, done: u64) {
        if let Some(b) = &self.bar {
            b.set_position(done);
        }
    }
    fn note(&mut self, message: &str) {
        if let Some(b) = &self.bar {
            b.set_message(message.to_string());
        }
    }
    fn message(&mut self, line: &str) {
        let print = || match self.messages_to_stderr {
            true => eprintln!("{line}"),
            false => println!("{line}"),
        };
        match &self.bar {
            Some(b) => b.suspend(print),
            None => print(),
        }
    }
    fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}
