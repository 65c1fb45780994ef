//! `minigpt4-fuzz TARGET [--inputs N] [--seed S] [--start I] [--replay I] [--scratch DIR]`:
//! a long fuzz run of one target (see the library docs); `scripts/fuzz.sh` runs them all.
//! Exit status 1 when an input crashed the parser (its index and message are printed, and its
//! bytes written to `<scratch>/crash-<target>-<seed>-<index>`).

use std::path::PathBuf;
use std::process::ExitCode;

use minigpt4_fuzz::{run, Harness, Outcome, Target};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: minigpt4-fuzz gguf|safetensors|pth|image|request [--inputs N] [--seed S] [--start I] [--replay I] [--scratch DIR]";
    let Some(target) = args.first().and_then(|a| Target::from_name(a)) else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let flag = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1));
    let num = |name: &str, default: u64| flag(name).map_or(Some(default), |v| v.replace('_', "").parse().ok());
    let (Some(inputs), Some(seed), Some(start)) = (num("--inputs", 1_000_000), num("--seed", 1), num("--start", 0))
    else {
        eprintln!("{usage}");
        return ExitCode::from(2);
    };
    let scratch = flag("--scratch")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join(format!("minigpt4-fuzz-{}", target.name())));
    let h = match Harness::new(target, &scratch) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("cannot set up {}: {e}", scratch.display());
            return ExitCode::from(2);
        }
    };
    if let Some(i) = flag("--replay").and_then(|v| v.parse::<u64>().ok()) {
        let input = h.input(seed, i);
        let out = scratch.join(format!("replay-{}-{seed}-{i}", target.name()));
        let _ = std::fs::write(&out, &input);
        println!("input {i} ({} bytes, written to {}): {:?}", input.len(), out.display(), h.run_one(&input));
        return ExitCode::SUCCESS;
    }
    eprintln!("fuzzing {} with seed {seed}: inputs {start}..{}", target.name(), start + inputs);
    let report = run(&h, seed, start, inputs, |i, r| {
        if (i + 1) % 100_000 == 0 {
            eprintln!(
                "  {} inputs: {} accepted, {} refused, {} crashes",
                r.inputs,
                r.accepted,
                r.refused,
                r.crashes.len()
            );
        }
    });
    println!(
        "{}: {} inputs in {:.1?} ({:.0}/s): {} accepted, {} refused, {} crashes; slowest input #{} took {:.1?}",
        target.name(),
        report.inputs,
        report.elapsed,
        report.inputs as f64 / report.elapsed.as_secs_f64(),
        report.accepted,
        report.refused,
        report.crashes.len(),
        report.slowest.0,
        report.slowest.1
    );
    for (i, msg) in &report.crashes {
        let path = scratch.join(format!("crash-{}-{seed}-{i}", target.name()));
        let _ = std::fs::write(&path, h.input(seed, *i));
        println!("crash: input {i}: {msg} (bytes in {})", path.display());
        debug_assert!(matches!(h.run_one(&h.input(seed, *i)), Outcome::Panicked(_)));
    }
    if report.crashes.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
