//! Qt resource archives (`.rcc`, as `rcc -binary` writes them).
//!
//! Layout (all integers big-endian): `"qres"`, version (u32), then the offsets of the tree, the
//! data and the names (u32 each), and from version 3 a flags word. A tree node is 14 bytes
//! (version 1) or 22 (a last-modified u64 added): name offset (u32), flags (u16: 1 = zlib,
//! 2 = directory, 4 = zstd), then for a directory child count and first child index (u32 each),
//! for a file territory and language (u16 each) and data offset (u32). A name is a u16 length,
//! a u32 hash and that many UTF-16 code units. A file's data is a u32 size then the bytes;
//! zlib data starts with the uncompressed length (u32, as `qCompress` writes it), zstd data is
//! a plain zstd frame. Node 0 is the root directory.

use std::io::Read;

pub const ZLIB: u16 = 1;
pub const DIRECTORY: u16 = 2;
pub const ZSTD: u16 = 4;

/// One file of a resource archive.
#[derive(Clone, Debug, PartialEq)]
pub struct RccFile {
    /// Path as Qt sees it, with a leading `/` (`/gcompris/src/activities/...`).
    pub path: String,
    /// Uncompressed bytes, or why they could not be had.
    pub data: Result<Vec<u8>, String>,
}

fn be_u16(b: &[u8], at: usize) -> Result<u16, String> {
    b.get(at..at + 2).map(|s| u16::from_be_bytes([s[0], s[1]])).ok_or_else(|| format!("offset {at} past the end"))
}

fn be_u32(b: &[u8], at: usize) -> Result<u32, String> {
    b.get(at..at + 4)
        .map(|s| u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| format!("offset {at} past the end"))
}

/// Lists every file of the archive with its uncompressed contents. A broken header or tree is
/// an error; a file whose data cannot be decompressed is listed with its error.
pub fn read(b: &[u8]) -> Result<Vec<RccFile>, String> {
    if !b.starts_with(b"qres") {
        return Err("not a Qt resource file (no `qres` magic)".into());
    }
    let version = be_u32(b, 4)?;
    if !(1..=3).contains(&version) {
        return Err(format!("unknown rcc version {version}"));
    }
    let (tree, data, names) = (be_u32(b, 8)? as usize, be_u32(b, 12)? as usize, be_u32(b, 16)? as usize);
    let node_size = if version >= 2 { 22 } else { 14 };
    let name = |off: usize| -> Result<String, String> {
        let at = names + off;
        let len = be_u16(b, at)? as usize;
        let units: Result<Vec<u16>, String> = (0..len).map(|i| be_u16(b, at + 6 + 2 * i)).collect();
        Ok(String::from_utf16_lossy(&units?))
    };
    let mut out = Vec::new();
    // Depth-first walk with an explicit stack; `seen` guards against cycles in a bad tree.
    let mut stack: Vec<(usize, String)> = vec![(0, String::new())];
    let mut seen = std::collections::HashSet::new();
    while let Some((index, prefix)) = stack.pop() {
        if !seen.insert(index) || seen.len() > 1_000_000 {
            return Err(format!("tree node {index} visited twice (corrupt tree)"));
        }
        let at = tree + index * node_size;
        let flags = be_u16(b, at + 4)?;
        let path = if index == 0 { String::new() } else { format!("{prefix}/{}", name(be_u32(b, at)? as usize)?) };
        if flags & DIRECTORY != 0 {
            let count = be_u32(b, at + 6)? as usize;
            let first = be_u32(b, at + 10)? as usize;
            for child in (first..first + count).rev() {
                stack.push((child, path.clone()));
            }
        } else {
            let offset = data + be_u32(b, at + 10)? as usize;
            let contents = be_u32(b, offset).and_then(|size| {
                b.get(offset + 4..offset + 4 + size as usize).ok_or_else(|| format!("{path}: data runs past the end"))
            });
            let data = contents.and_then(|raw| decompress(raw, flags));
            out.push(RccFile { path, data });
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

fn decompress(raw: &[u8], flags: u16) -> Result<Vec<u8>, String> {
    if flags & ZLIB != 0 {
        let expected = be_u32(raw, 0)? as usize;
        let mut out = Vec::with_capacity(expected.min(1 << 28));
        flate2::read::ZlibDecoder::new(&raw[4..]).read_to_end(&mut out).map_err(|e| format!("bad zlib data: {e}"))?;
        if out.len() != expected {
            return Err(format!("zlib data gave {} bytes, expected {expected}", out.len()));
        }
        Ok(out)
    } else if flags & ZSTD != 0 {
        let mut out = Vec::new();
        ruzstd::decoding::StreamingDecoder::new(raw)
            .map_err(|e| format!("bad zstd data: {e}"))?
            .read_to_end(&mut out)
            .map_err(|e| format!("bad zstd data: {e}"))?;
        Ok(out)
    } else {
        Ok(raw.to_vec())
    }
}

/// Writes a version-2 resource archive of `(path, bytes, flags)` files (flags: 0, [`ZLIB`] or
/// [`ZSTD`]). For tests; names get a zero hash, which readers that walk the tree ignore.
pub fn write(files: &[(&str, &[u8], u16)]) -> Vec<u8> {
    use std::collections::BTreeMap;
    use std::io::Write;
    #[derive(Default)]
    struct Dir {
        dirs: BTreeMap<String, Dir>,
        files: BTreeMap<String, (Vec<u8>, u16)>,
    }
    let mut root = Dir::default();
    for (path, bytes, flags) in files {
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let mut d = &mut root;
        for p in &parts[..parts.len() - 1] {
            d = d.dirs.entry(p.to_string()).or_default();
        }
        d.files.insert(parts[parts.len() - 1].to_string(), (bytes.to_vec(), *flags));
    }
    let (mut names, mut data, mut nodes) = (Vec::<u8>::new(), Vec::<u8>::new(), Vec::<[u8; 22]>::new());
    let add_name = |n: &str, names: &mut Vec<u8>| -> u32 {
        let off = names.len() as u32;
        let units: Vec<u16> = n.encode_utf16().collect();
        names.extend((units.len() as u16).to_be_bytes());
        names.extend(0u32.to_be_bytes());
        for u in units {
            names.extend(u.to_be_bytes());
        }
        off
    };
    // Breadth-first so that each directory's children are contiguous.
    nodes.push([0; 22]);
    let mut queue: std::collections::VecDeque<(usize, &Dir)> = std::collections::VecDeque::from([(0, &root)]);
    while let Some((index, dir)) = queue.pop_front() {
        let first = nodes.len();
        let count = dir.dirs.len() + dir.files.len();
        nodes[index][4..6].copy_from_slice(&DIRECTORY.to_be_bytes());
        nodes[index][6..10].copy_from_slice(&(count as u32).to_be_bytes());
        nodes[index][10..14].copy_from_slice(&(first as u32).to_be_bytes());
        for (name, sub) in &dir.dirs {
            let mut n = [0u8; 22];
            n[0..4].copy_from_slice(&add_name(name, &mut names).to_be_bytes());
            nodes.push(n);
            queue.push_back((nodes.len() - 1, sub));
        }
        for (name, (bytes, flags)) in &dir.files {
            let mut n = [0u8; 22];
            n[0..4].copy_from_slice(&add_name(name, &mut names).to_be_bytes());
            n[4..6].copy_from_slice(&flags.to_be_bytes());
            n[10..14].copy_from_slice(&(data.len() as u32).to_be_bytes());
            let payload = if flags & ZLIB != 0 {
                let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
                e.write_all(bytes).unwrap();
                let mut p = (bytes.len() as u32).to_be_bytes().to_vec();
                p.extend(e.finish().unwrap());
                p
            } else if flags & ZSTD != 0 {
                ruzstd::encoding::compress_to_vec(&bytes[..], ruzstd::encoding::CompressionLevel::Fastest)
            } else {
                bytes.clone()
            };
            data.extend((payload.len() as u32).to_be_bytes());
            data.extend(payload);
            nodes.push(n);
        }
    }
    let header = 24usize;
    let tree_off = header;
    let data_off = tree_off + nodes.len() * 22;
    let names_off = data_off + data.len();
    let mut out = b"qres".to_vec();
    for v in [2u32, tree_off as u32, data_off as u32, names_off as u32, 0] {
        out.extend(v.to_be_bytes());
    }
    for n in &nodes {
        out.extend(n);
    }
    out.extend(data);
    out.extend(names);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_plain_zlib_zstd() {
        let big = vec![7u8; 5000];
        let rcc = write(&[
            ("/a/b/one.txt", b"one", 0),
            ("/a/two.qml", b"title: qsTr(\"Two\")", ZLIB),
            ("/a/b/c/three.bin", &big, ZSTD),
            ("/top.txt", b"top", ZLIB),
        ]);
        let files = read(&rcc).unwrap();
        let got: Vec<(&str, Vec<u8>)> = files.iter().map(|f| (f.path.as_str(), f.data.clone().unwrap())).collect();
        assert_eq!(
            got,
            vec![
                ("/a/b/c/three.bin", big.clone()),
                ("/a/b/one.txt", b"one".to_vec()),
                ("/a/two.qml", b"title: qsTr(\"Two\")".to_vec()),
                ("/top.txt", b"top".to_vec())
            ]
        );
    }

    #[test]
    fn corrupt_entries_are_reported_not_fatal() {
        let mut rcc = write(&[("/x/ok.txt", b"fine", 0), ("/x/bad.txt", b"some text to squeeze", ZLIB)]);
        // Break the zlib stream of bad.txt (its payload is the first in the data area after ok? find it).
        let pos = rcc.windows(2).position(|w| w == [0x78, 0x9c]).expect("zlib header");
        rcc[pos + 3] ^= 0xff;
        rcc[pos + 4] ^= 0xff;
        let files = read(&rcc).unwrap();
        assert_eq!(files.len(), 2);
        assert!(files.iter().find(|f| f.path == "/x/bad.txt").unwrap().data.is_err());
        assert_eq!(files.iter().find(|f| f.path == "/x/ok.txt").unwrap().data.as_deref().unwrap(), b"fine");
        assert!(read(b"nope").is_err());
        assert!(read(&rcc[..30]).is_err());
    }
}
