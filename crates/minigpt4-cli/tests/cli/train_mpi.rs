//! `mpirun -np 2 minigpt4 train ...` (issue 17) on the tiny fixture model, with the real Open MPI
//! launcher: two ranks take the same steps as one process with the same global batch, resume
//! each other's checkpoints, stop together when one is killed, and fill the feature cache
//! between them.
//!
//! Needs the `mpi` feature and Open MPI's `mpirun` on PATH (`.ci/run` installs Debian's
//! openmpi-bin and libopenmpi-dev). Run alone:
//! `cargo test --release -p minigpt4 --features mpi --test cli train_mpi`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::train_cli::{captioned_lines, fixture};

fn manifest(dir: &Path) -> PathBuf {
    let lines: Vec<String> = captioned_lines()
        .into_iter()
        // Two broken images, one in each rank's share of the distinct images: skipped by both.
        .chain(["broken-a.png", "broken-b.png"].iter().map(|f| {
            let p = dir.join(f);
            std::fs::write(&p, b"not an image").unwrap();
            format!(r#"{{"image": "{}", "caption": "Nothing.", "source": "t", "split": "train"}}"#, p.display())
        }))
        .collect();
    let p = dir.join("m.jsonl");
    std::fs::write(&p, lines.join("\n") + "\n").unwrap();
    p
}

/// `minigpt4 train` on the fixture with global batch 8 (`ranks` = None: started directly).
fn train(dir: &Path, ranks: Option<usize>, out: &str, steps: usize, save_every: usize, extra: &[&str]) -> Command {
    let mut c = match ranks {
        None => Command::new(env!("CARGO_BIN_EXE_minigpt4")),
        Some(n) => mpirun(n),
    };
    c.args(["train", "--stage", "1", "--model"])
        .arg(fixture("minigpt4/merge4/model.toml"))
        .arg("--data")
        .arg(manifest(dir))
        .arg("--out")
        .arg(dir.join(out))
        .arg("--cache-dir")
        .arg(dir.join("cache"))
        .args(["--batch", "8", "--grad-accum", "1", "--seed", "3", "--keep-checkpoints", "0"])
        .args(["--steps", &steps.to_string(), "--save-every", &save_every.to_string()])
        .args(extra);
    c
}

/// Open MPI's launcher running `n` ranks of our binary. Root is allowed (CI runs as root), and
/// more ranks than cores are (the test machine has 2).
fn mpirun(n: usize) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["--oversubscribe", "-np", &n.to_string()])
        .arg(env!("CARGO_BIN_EXE_minigpt4"))
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        // Containers often forbid the ptrace-based single copy between ranks.
        .env("OMPI_MCA_btl_vader_single_copy_mechanism", "none");
    c
}

/// Runs `c` to its end, failing the test (and killing it) if that takes longer than `limit`:
/// a hung job must fail, never wait forever.
fn run(mut c: Command, limit: Duration) -> Output {
    let child =
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("starting the command (is mpirun on PATH?)");
    finish(child, limit)
}

fn finish(mut child: Child, limit: Duration) -> Output {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if t0.elapsed() > limit {
            child.kill().ok();
            panic!("still running after {limit:?}: the job hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "{}\n{err}", o.status);
    err
}

fn tensors(p: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, t)| (n, t.data().chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect()))
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Largest |a − b| over all tensors, relative to the largest |a|.
fn relative_diff(a: &Path, b: &Path) -> f32 {
    let (a, b) = (tensors(a), tensors(b));
    assert_eq!(a.iter().map(|t| &t.0).collect::<Vec<_>>(), b.iter().map(|t| &t.0).collect::<Vec<_>>());
    let (mut diff, mut scale) = (0f32, 0f32);
    for ((_, x), (_, y)) in a.iter().zip(&b) {
        assert_eq!(x.len(), y.len());
        for (p, q) in x.iter().zip(y) {
            diff = diff.max((p - q).abs());
            scale = scale.max(p.abs());
        }
    }
    diff / scale
}

/// (step, loss) of every row of a run's log.
fn losses(run: &Path) -> Vec<(usize, f64)> {
    std::fs::read_to_string(run.join("log.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[0].parse().unwrap(), f[1].parse().unwrap())
        })
        .collect()
}

fn assert_same_losses(a: &Path, b: &Path) {
    let (a, b) = (losses(a), losses(b));
    assert_eq!(a.iter().map(|r| r.0).collect::<Vec<_>>(), b.iter().map(|r| r.0).collect::<Vec<_>>());
    let worst = a.iter().zip(&b).map(|(x, y)| ((x.1 - y.1) / x.1).abs()).fold(0f64, f64::max);
    eprintln!("largest relative loss difference over {} steps: {worst:.2e}", a.len());
    assert!(worst <= 1e-5, "losses differ by {worst:e}");
}

fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs the mpi feature (see the module docs)")]
fn two_ranks_take_the_same_steps_as_one_process_and_resume_its_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let limit = Duration::from_secs(120);
    ok(&run(train(dir.path(), None, "one", 12, 4, &["--quiet"]), limit));
    let stderr = ok(&run(train(dir.path(), Some(2), "two", 12, 4, &[]), limit));

    // One process and two ranks: the same projection and the same loss at every step.
    let diff =
        relative_diff(&dir.path().join("one/projection.safetensors"), &dir.path().join("two/projection.safetensors"));
    eprintln!("projection, 1 process vs 2 ranks: max abs diff / max abs = {diff:.2e}");
    assert!(diff <= 1e-5, "{diff:e}");
    assert_same_losses(&dir.path().join("one"), &dir.path().join("two"));

    // Rank 0 alone wrote and printed: the same files as one process, each once.
    assert_eq!(names(&dir.path().join("one")), names(&dir.path().join("two")));
    assert_eq!(names(&dir.path().join("two/checkpoints")).len(), 3);
    assert_eq!(losses(&dir.path().join("two")).len(), 12, "one log, each step once");
    assert_eq!(stderr.matches("data-parallel training: MPI").count(), 1, "{stderr}");
    assert!(stderr.contains("2 ranks"), "{stderr}");
    assert_eq!(stderr.matches("projection: ").count(), 1, "only rank 0 reports: {stderr}");
    assert!(stderr.contains("skipped image") && stderr.contains("broken-a.png"), "{stderr}");
    assert!(stderr.contains("broken-b.png: not usable (reported by rank 1)"), "{stderr}");

    // An error on the ranks ends the job with the message, and no rank waits for the others.
    let out = run(train(dir.path(), Some(2), "two", 12, 4, &[]), limit);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    // Whichever rank aborts first ends the other, which may not have printed yet.
    assert!(err.contains("of 2): ") && err.contains("already holds a training run; pass --resume"), "{err}");

    // Two ranks resume the single process's checkpoint at step 4 and end where it ended.
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    for f in ["log.csv", "config.json", "projection-init.safetensors"] {
        std::fs::copy(dir.path().join("one").join(f), resumed.join(f)).unwrap();
    }
    let step4 = "checkpoints/step-00000004.safetensors";
    std::fs::copy(dir.path().join("one").join(step4), resumed.join(step4)).unwrap();
    let stderr = ok(&run(train(dir.path(), Some(2), "resumed", 12, 4, &["--resume"]), limit));
    assert!(stderr.contains("resumed from step 4"), "{stderr}");
    let diff = relative_diff(&dir.path().join("one/projection.safetensors"), &resumed.join("projection.safetensors"));
    eprintln!("projection, 1 process vs 1 process to step 4 then 2 ranks: {diff:.2e}");
    assert!(diff <= 1e-5, "{diff:e}");
    assert_same_losses(&dir.path().join("one"), &resumed);
}

/// Our binary's rank `rank` of the job writing to `out` (found in /proc: Open MPI puts the rank
/// in each process's environment).
fn rank_pid(out: &Path, rank: usize) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
        let cmdline = String::from_utf8_lossy(&cmdline);
        let environ = std::fs::read(e.path().join("environ")).ok()?;
        let is_rank = environ.split(|&b| b == 0).any(|v| v == want.as_bytes());
        (cmdline.contains(out.to_str()?) && !cmdline.starts_with("mpirun") && is_rank).then_some(pid)
    })
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs the mpi feature (see the module docs)")]
fn a_killed_rank_stops_the_job_and_resume_ends_like_an_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let (steps, every) = (2000, 100);
    ok(&run(train(dir.path(), Some(2), "full", steps, every, &["--quiet"]), Duration::from_secs(300)));

    let killed = dir.path().join("killed");
    let child = train(dir.path(), Some(2), "killed", steps, every, &["--quiet"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while std::fs::read_dir(killed.join("checkpoints")).map(|d| d.count()).unwrap_or(0) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoints appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = rank_pid(&killed, 1).expect("rank 1 of the job");
    let kill = Instant::now();
    assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    let out = finish(child, Duration::from_secs(60));
    let stopped = kill.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("the job stopped {stopped:?} after rank 1 was killed:\n{stderr}");
    assert!(!out.status.success(), "the run finished before it could be killed; make it longer");
    assert!(stderr.contains("rank 1") && stderr.contains("signal 9"), "the launcher names the dead rank: {stderr}");
    assert!(!killed.join("projection.safetensors").exists());
    assert!(rank_pid(&killed, 0).is_none(), "rank 0 was left running");

    let stderr = ok(&run(train(dir.path(), Some(2), "killed", steps, every, &["--resume"]), Duration::from_secs(300)));
    assert!(stderr.contains("resumed from step"), "{stderr}");
    let diff = relative_diff(&dir.path().join("full/projection.safetensors"), &killed.join("projection.safetensors"));
    eprintln!("projection, uninterrupted vs killed and resumed (2 ranks each): {diff:.2e}");
    assert_eq!(diff, 0.0, "the same ranks take the same steps: bit for bit");
    assert_same_losses(&dir.path().join("full"), &killed);
}

#[test]
#[cfg_attr(not(feature = "mpi"), ignore = "needs the mpi feature (see the module docs)")]
fn features_only_under_mpirun_fills_the_cache_for_a_later_run() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = mpirun(2);
    c.args(["train", "--features-only", "--model"])
        .arg(fixture("minigpt4/merge4/model.toml"))
        .arg("--data")
        .arg(manifest(dir.path()))
        .arg("--cache-dir")
        .arg(dir.path().join("cache"));
    let stderr = ok(&run(c, Duration::from_secs(120)));
    assert!(stderr.contains("4 distinct images: 4 features computed, 0 from cache"), "{stderr}");
    let cached: usize = std::fs::read_dir(dir.path().join("cache/features"))
        .unwrap()
        .map(|fp| std::fs::read_dir(fp.unwrap().path()).unwrap().count())
        .sum();
    assert_eq!(cached, 4);

    let stderr = ok(&run(train(dir.path(), None, "after", 2, 1, &[]), Duration::from_secs(120)));
    assert!(stderr.contains("0 features computed, 4 from cache"), "{stderr}");
}
