//! Progress reporting: indicatif bars on a terminal, occasional plain lines otherwise (logs,
//! CI), nothing when quiet.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// Bars on a terminal, lines on a pipe.
    Auto,
    /// Nothing at all (tests, library use).
    Quiet,
}

impl Progress {
    pub fn is_terminal(self) -> bool {
        self == Progress::Auto && std::io::stderr().is_terminal()
    }

    pub fn bar(self, len: u64, prefix: &'static str) -> ProgressBar {
        if !self.is_terminal() {
            return ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::hidden());
        }
        let style =
            ProgressStyle::with_template("{prefix:>9} [{bar:32.cyan/blue}] {pos}/{len} {msg} ({elapsed} < {eta})")
                .expect("valid template")
                .progress_chars("=> ");
        ProgressBar::new(len).with_style(style).with_prefix(prefix)
    }

    /// A status line for non-terminal output (the bar carries it on a terminal).
    pub fn line(self, bar: &ProgressBar, msg: &str) {
        match self {
            Progress::Quiet => {}
            Progress::Auto if self.is_terminal() => bar.println(msg),
            Progress::Auto => eprintln!("{msg}"),
        }
    }

    /// A one-off status line, shown unless quiet.
    pub fn status(self, msg: &str) {
        if self != Progress::Quiet {
            eprintln!("{msg}");
        }
    }

    /// A warning, always shown except when quiet; above the bar on a terminal.
    pub fn warn(self, bar: Option<&ProgressBar>, msg: &str) {
        match (self, bar) {
            (Progress::Quiet, _) => {}
            (_, Some(b)) if self.is_terminal() => b.println(format!("warning: {msg}")),
            _ => eprintln!("warning: {msg}"),
        }
    }
}
