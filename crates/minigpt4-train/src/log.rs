//! `DIR/log.csv`: `step,loss,lr,samples_per_s,elapsed_s`, one row per optimizer step. On resume
//! the rows after the checkpoint's step are dropped (that work is redone).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

pub const HEADER: &str = "step,loss,lr,samples_per_s,elapsed_s";

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Row {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub samples_per_s: f64,
    pub elapsed_s: f64,
}

pub struct CsvLog {
    path: PathBuf,
    file: Option<std::fs::File>,
    pub rows: Vec<Row>,
}

pub fn parse(text: &str) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            if f.len() != 5 {
                return None;
            }
            Some(Row {
                step: f[0].parse().ok()?,
                loss: f[1].parse().ok()?,
                lr: f[2].parse().ok()?,
                samples_per_s: f[3].parse().ok()?,
                elapsed_s: f[4].parse().ok()?,
            })
        })
        .collect()
}

impl CsvLog {
    /// Opens `path`, keeping the rows up to `keep_through` (0 starts a new log).
    pub fn open(path: &Path, keep_through: usize) -> Result<Self> {
        let rows: Vec<Row> = if keep_through == 0 {
            Vec::new()
        } else {
            std::fs::read_to_string(path)
                .map(|t| parse(&t))
                .unwrap_or_default()
                .into_iter()
                .filter(|r| r.step <= keep_through)
                .collect()
        };
        let mut text = format!("{HEADER}\n");
        for r in &rows {
            text.push_str(&line(r));
        }
        crate::io::write_atomic(path, text.as_bytes())?;
        let file = std::fs::OpenOptions::new().append(true).open(path).with_context(|| path.display().to_string())?;
        Ok(Self { path: path.to_path_buf(), file: Some(file), rows })
    }

    /// A log kept in memory only (the ranks other than 0 of a data-parallel run).
    pub fn detached() -> Self {
        Self { path: PathBuf::new(), file: None, rows: Vec::new() }
    }

    pub fn push(&mut self, r: Row) -> Result<()> {
        if let Some(file) = &mut self.file {
            file.write_all(line(&r).as_bytes()).with_context(|| self.path.display().to_string())?;
            file.flush()?;
        }
        self.rows.push(r);
        Ok(())
    }
}

fn line(r: &Row) -> String {
    // Loss and lr in shortest round-trip form: the log reads back exactly.
    format!("{},{},{:e},{:.3},{:.3}\n", r.step, r.loss, r.lr, r.samples_per_s, r.elapsed_s)
}
