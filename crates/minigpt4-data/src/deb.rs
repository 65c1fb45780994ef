//! Reading a Debian package without dpkg: an `ar` archive whose `data.tar.{xz,zst,gz}` member
//! holds the installed files.

use std::path::Path;

use crate::archive::{ar_members, decompressor, walk_tar, TarItem};
use crate::{DataError, Result};

/// Calls `f` on every member of the package's data archive (paths without the leading `./`,
/// e.g. `usr/share/tuxpaint/stamps/animals/cat.png`).
pub fn walk(path: &Path, f: impl FnMut(TarItem) -> Result<()>) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    walk_bytes(&bytes, path, f)
}

/// [`walk`] over a package already in memory; `what` names it in errors.
pub fn walk_bytes(bytes: &[u8], what: &Path, f: impl FnMut(TarItem) -> Result<()>) -> Result<()> {
    let members = ar_members(bytes, what)?;
    if members.first().map(|(n, _)| n.as_str()) != Some("debian-binary") {
        return Err(DataError::format(what, "not a Debian package (first member is not `debian-binary`)"));
    }
    let (name, data) = members
        .iter()
        .find(|(n, _)| n.starts_with("data.tar"))
        .ok_or_else(|| DataError::format(what, "no data.tar member"))?;
    walk_tar(decompressor(name, *data)?, what, f)
}

#[cfg(test)]
pub(crate) use tests::make_deb;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::tests::{make_tar, xz};
    use crate::archive::{write_ar, TarKind};

    /// A tiny `.deb`: `debian-binary`, `control.tar.xz`, `data.tar.{xz|zst}`.
    pub fn make_deb(files: &[(&str, &[u8])], zstd: bool) -> Vec<u8> {
        let data = make_tar(files, &[]);
        let control = xz(&make_tar(&[("./control", b"Package: t\n")], &[]));
        let (name, packed) = if zstd {
            ("data.tar.zst", ruzstd::encoding::compress_to_vec(&data[..], ruzstd::encoding::CompressionLevel::Fastest))
        } else {
            ("data.tar.xz", xz(&data))
        };
        write_ar(&[("debian-binary", b"2.0\n"), ("control.tar.xz", &control), (name, &packed)])
    }

    #[test]
    fn reads_a_tiny_deb_with_xz_and_zstd() {
        for zstd in [false, true] {
            let deb = make_deb(&[("./usr/share/x/a.txt", b"A cat."), ("./usr/share/x/b.png", b"png")], zstd);
            let mut seen = vec![];
            walk_bytes(&deb, Path::new("t.deb"), |it| {
                if it.kind == TarKind::File {
                    seen.push((it.path, it.data));
                }
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![("usr/share/x/a.txt".into(), b"A cat.".to_vec()), ("usr/share/x/b.png".into(), b"png".to_vec())]
            );
        }
    }

    #[test]
    fn rejects_what_is_not_a_deb() {
        let not = write_ar(&[("hello", b"x")]);
        assert!(walk_bytes(&not, Path::new("t.deb"), |_| Ok(())).unwrap_err().to_string().contains("debian-binary"));
        let deb = make_deb(&[("./a", b"x")], false);
        assert!(walk_bytes(&deb[..deb.len() - 10], Path::new("t.deb"), |_| Ok(())).is_err());
    }
}
