//! Archive plumbing shared by the importers: compressed streams by name, tar walking, and the
//! Unix `ar` format (`.deb`).

use std::io::Read;
use std::path::Path;

use crate::{DataError, Result};

/// One member of a tar archive.
pub struct TarItem {
    /// The member's path as stored, without a leading `./`.
    pub path: String,
    pub kind: TarKind,
    /// The contents of a regular file (empty otherwise).
    pub data: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TarKind {
    File,
    Dir,
    /// A symbolic or hard link, with its target as stored.
    Link(String),
    Other,
}

/// Wraps `reader` in the decompressor its name calls for: `.gz`/`.tgz`, `.xz`, `.zst`, or none.
pub fn decompressor<'a, R: Read + 'a>(name: &str, reader: R) -> Result<Box<dyn Read + 'a>> {
    let name = name.to_ascii_lowercase();
    Ok(if name.ends_with(".gz") || name.ends_with(".tgz") {
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else if name.ends_with(".xz") {
        Box::new(lzma_rust2::XzReader::new(reader, true))
    } else if name.ends_with(".zst") || name.ends_with(".zstd") {
        Box::new(
            ruzstd::decoding::StreamingDecoder::new(reader)
                .map_err(|e| DataError::Other(format!("{name}: bad zstd stream: {e}")))?,
        )
    } else {
        Box::new(reader)
    })
}

/// Calls `f` on every member of the tar stream `reader`, in archive order. `what` names the
/// archive in errors. A broken header stops the walk with an error (the members seen so far
/// have been handed to `f`).
pub fn walk_tar<R: Read>(reader: R, what: &Path, mut f: impl FnMut(TarItem) -> Result<()>) -> Result<()> {
    let mut ar = tar::Archive::new(reader);
    let entries = ar.entries().map_err(|e| DataError::format(what, format!("not a tar archive: {e}")))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| DataError::format(what, format!("bad tar entry: {e}")))?;
        let raw_path = entry.path_bytes();
        let path = String::from_utf8_lossy(&raw_path).trim_start_matches("./").to_string();
        let et = entry.header().entry_type();
        let kind = if et.is_file() {
            TarKind::File
        } else if et.is_dir() {
            TarKind::Dir
        } else if et.is_symlink() || et.is_hard_link() {
            let target = entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
            TarKind::Link(target)
        } else {
            TarKind::Other
        };
        let mut data = Vec::new();
        if kind == TarKind::File {
            entry
                .read_to_end(&mut data)
                .map_err(|e| DataError::format(what, format!("{path}: truncated tar member: {e}")))?;
        }
        f(TarItem { path, kind, data })?;
    }
    Ok(())
}

/// The members of a Unix `ar` archive (as used by `.deb`): `(name, bytes)`.
pub fn ar_members<'a>(bytes: &'a [u8], what: &Path) -> Result<Vec<(String, &'a [u8])>> {
    const MAGIC: &[u8] = b"!<arch>\n";
    if !bytes.starts_with(MAGIC) {
        return Err(DataError::format(what, "not an ar archive (no `!<arch>` magic)"));
    }
    let mut out = Vec::new();
    let mut pos = MAGIC.len();
    while pos + 60 <= bytes.len() {
        let h = &bytes[pos..pos + 60];
        if &h[58..60] != b"`\n" {
            return Err(DataError::format(what, format!("bad ar member header at byte {pos}")));
        }
        let name = String::from_utf8_lossy(&h[0..16]).trim_end().trim_end_matches('/').to_string();
        let size: usize = String::from_utf8_lossy(&h[48..58])
            .trim()
            .parse()
            .map_err(|_| DataError::format(what, format!("bad ar member size at byte {pos}")))?;
        let start = pos + 60;
        let end = start.checked_add(size).filter(|&e| e <= bytes.len()).ok_or_else(|| {
            DataError::format(what, format!("ar member `{name}` runs past the end of the file (truncated download?)"))
        })?;
        out.push((name, &bytes[start..end]));
        pos = end + (size & 1);
    }
    if bytes.len() > pos && bytes[pos..].iter().any(|b| !b.is_ascii_whitespace()) {
        return Err(DataError::format(
            what,
            format!("ar archive ends inside a member header at byte {pos} (truncated download?)"),
        ));
    }
    Ok(out)
}

/// Writes an `ar` archive (tests build tiny `.deb`s with it).
pub fn write_ar(members: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = b"!<arch>\n".to_vec();
    for (name, data) in members {
        let header = format!("{:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", name, 0, 0, 0, 100644, data.len());
        assert_eq!(header.len(), 60);
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        if data.len() % 2 == 1 {
            out.push(b'\n');
        }
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar archive of `(path, bytes)` files, plus `(path, target)` symlinks.
    pub fn make_tar(files: &[(&str, &[u8])], links: &[(&str, &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (p, d) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(d.len() as u64);
            h.set_mode(0o644);
            h.set_entry_type(tar::EntryType::Regular);
            b.append_data(&mut h, p, *d).unwrap();
        }
        for (p, t) in links {
            let mut h = tar::Header::new_gnu();
            h.set_size(0);
            h.set_entry_type(tar::EntryType::Symlink);
            b.append_link(&mut h, p, t).unwrap();
        }
        b.into_inner().unwrap()
    }

    pub fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    pub fn xz(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut w = lzma_rust2::XzWriter::new(Vec::new(), lzma_rust2::XzOptions::with_preset(1)).unwrap();
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn ar_round_trip_and_truncation() {
        let ar = write_ar(&[("debian-binary", b"2.0\n"), ("odd", b"x")]);
        let m = ar_members(&ar, Path::new("t.deb")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], ("debian-binary".to_string(), &b"2.0\n"[..]));
        assert_eq!(m[1].1, b"x");
        let err = ar_members(&ar[..ar.len() - 3], Path::new("t.deb")).unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");
        assert!(ar_members(b"hello", Path::new("t.deb")).is_err());
    }

    #[test]
    fn tar_walk_through_each_compression() {
        let t = make_tar(&[("./a/b.txt", b"hi")], &[("a/c.txt", "b.txt")]);
        for (name, data) in [("x.tar", t.clone()), ("x.tar.gz", gzip(&t)), ("x.tar.xz", xz(&t))] {
            let mut seen = vec![];
            walk_tar(decompressor(name, &data[..]).unwrap(), Path::new(name), |it| {
                seen.push((it.path, it.kind, it.data));
                Ok(())
            })
            .unwrap();
            assert_eq!(seen[0], ("a/b.txt".into(), TarKind::File, b"hi".to_vec()), "{name}");
            assert_eq!(seen[1].1, TarKind::Link("b.txt".into()));
        }
    }
}
