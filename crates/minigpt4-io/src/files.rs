//! File plumbing every crate shares: writes that a crash never leaves half done under the
//! final name, and content hashes.

use std::fs::{self, File};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// Writes `dest` through a temporary file next to it: `fill` writes the file (and may refuse
/// what it wrote), then the file is synced and renamed into place; on any error it is removed, so
/// an interrupted write never leaves a file that looks complete.
pub fn write_atomically(dest: &Path, fill: impl FnOnce(&mut File, &Path) -> Result<()>) -> Result<()> {
    let dir = dest.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| -> Result<()> {
        let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        fill(&mut f, &tmp)?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
        drop(f);
        fs::rename(&tmp, dest).map_err(|e| Error::io(dest, e))?;
        sync_dir(dir);
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Writes `bytes` to `dest` atomically (see [`write_atomically`]).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(dest, |f, tmp| f.write_all(bytes).map_err(|e| Error::io(tmp, e)))
}

/// sha256 (lower-case hex) and length of a file, read in a streaming way.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if k == 0 {
            break;
        }
        h.update(&buf[..k]);
        n += k as u64;
    }
    Ok((hex(&h.finalize()), n))
}

/// Makes a rename durable (best effort; not possible on every platform).
pub fn sync_dir(dir: &Path) {
    #[cfg(unix)]
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Where fetched parts, presets' files and caches live: `$MINIGPT4_HOME`, else
/// `$XDG_CACHE_HOME/minigpt4`, else `~/.cache/minigpt4`.
pub fn minigpt4_home() -> PathBuf {
    if let Some(h) = std::env::var_os("MINIGPT4_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(x).join("minigpt4");
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("minigpt4")
}

/// Holds `dir/.lock` exclusively until the returned file is dropped: two processes writing into
/// `dir` (two fetches) wait for each other; `progress` hears about the wait.
pub fn lock_dir(dir: &Path, progress: &mut dyn FnMut(&str)) -> Result<File> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let path = dir.join(".lock");
    let f = File::options().create(true).truncate(false).write(true).open(&path).map_err(|e| Error::io(&path, e))?;
    match f.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            progress(&format!("waiting for another fetch into {} to finish", dir.display()));
            f.lock().map_err(|e| Error::io(&path, e))?;
        }
        Err(fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
    }
    Ok(f)
}

/// Removes `path`; one that is not there is no error.
pub fn remove_if_present(path: &Path) -> Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// A byte count in decimal units, as pip prints them (`1.2 GB`).
pub fn fmt_size(n: u64) -> String {
    match n {
        n if n >= 1_000_000_000 => format!("{:.1} GB", n as f64 / 1e9),
        n if n >= 1_000_000 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}
