//! Data-parallel training across processes (DESIGN.md §7): only the projection trains, so every
//! rank holds the whole frozen model, computes the gradient of its share of each global batch,
//! and the gradients are summed over ranks before one identical AdamW step on every rank
//! (PyTorch DDP's scheme, which MiniGPT-4's reference stage 1 runs on 4 A100s).
//!
//! We do not write our own networking: ranks are started by an MPI launcher (`mpirun`, `srun`)
//! and talk through MPI ([`mpi`], feature `mpi`), or through NCCL on GPUs ([`nccl`], feature
//! `nccl`), MPI then only starting the ranks and handing out NCCL's id.

use std::rc::Rc;

use anyhow::{bail, Result};
use candle_core::Tensor;

#[cfg(feature = "mpi")]
pub mod mpi;
#[cfg(feature = "nccl")]
pub mod nccl;

/// The ranks of a run and the collectives training needs. Every rank calls every method in
/// the same order (MPI's rule for collectives).
pub trait Collective {
    fn rank(&self) -> usize;
    fn size(&self) -> usize;
    /// The element-wise sum of `t` over all ranks, the same on every rank.
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor>;
    /// The element-wise sum of `values` over all ranks, in place (counts and scalars).
    fn sum_f64(&self, values: &mut [f64]) -> Result<()>;
    /// The element-wise maximum of `bytes` over all ranks, in place: an all-gather when each rank
    /// fills its own slots and leaves the others zero.
    fn max_u8(&self, bytes: &mut [u8]) -> Result<()>;
    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<()>;
    /// Ends every rank of the job with `code` (a rank that fails alone must not leave the
    /// others waiting in a collective forever).
    fn abort(&self, code: i32) -> !;
    /// What the ranks run on, for logs ("MPI (Open MPI v4.1.4), 2 ranks").
    fn describe(&self) -> String;
}

/// The ranks a run belongs to, as training options carry them (one process alone by default).
#[derive(Clone)]
pub struct Ranks(pub Rc<dyn Collective>);

impl Default for Ranks {
    fn default() -> Self {
        Ranks(Rc::new(SingleProcess))
    }
}

impl std::fmt::Debug for Ranks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0.describe())
    }
}

impl std::ops::Deref for Ranks {
    type Target = dyn Collective;
    fn deref(&self) -> &Self::Target {
        &*self.0
    }
}

impl Ranks {
    /// Rank 0 alone writes the run's files and prints; the others stay silent.
    pub fn is_root(&self) -> bool {
        self.0.rank() == 0
    }
}

/// One process alone: every collective is the identity.
#[derive(Debug, Default)]
pub struct SingleProcess;

impl Collective for SingleProcess {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        Ok(t.clone())
    }
    fn sum_f64(&self, _values: &mut [f64]) -> Result<()> {
        Ok(())
    }
    fn max_u8(&self, _bytes: &mut [u8]) -> Result<()> {
        Ok(())
    }
    fn barrier(&self) -> Result<()> {
        Ok(())
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
    fn describe(&self) -> String {
        "one process".into()
    }
}

/// Rank `rank`'s share `[lo, hi)` of items with costs `costs`, cut into contiguous pieces of about
/// equal total cost, every rank getting at least one item (needs `costs.len() >= size`). A
/// micro-batch's samples differ in length; cut by count, the rank with the longer ones keeps the
/// others waiting at the all-reduce.
pub fn share_by_cost(costs: &[usize], rank: usize, size: usize) -> (usize, usize) {
    let n = costs.len();
    let total: usize = costs.iter().sum();
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0usize);
    for c in costs {
        prefix.push(prefix.last().unwrap() + c);
    }
    // Boundary k: the first index whose prefix reaches k/size of the total, moved so that every
    // rank keeps at least one item on either side.
    let mut lo = 0;
    for k in 1..=size {
        let hi = if k == size {
            n
        } else {
            prefix.partition_point(|&p| p * size < total * k).max(lo + 1).min(n - (size - k))
        };
        if k == rank + 1 {
            return (lo, hi);
        }
        lo = hi;
    }
    (n, n)
}

/// Environment variables MPI launchers set in every rank: Open MPI's `mpirun`, MPICH/Hydra, Intel
/// MPI and `srun --mpi=pmi2` (`PMI_*`), PMIx (Open MPI 5, `srun --mpi=pmix`). Slurm's own
/// `SLURM_NTASKS` is not one: a batch script sees it without being a rank.
const LAUNCHER_SIZE_VARS: &[&str] = &["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"];
const LAUNCHER_RANK_VARS: &[&str] = &["OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"];

/// How many ranks an MPI launcher started, when this process is one of them (`None` when it
/// was started directly).
pub fn launched_ranks() -> Option<usize> {
    let size = LAUNCHER_SIZE_VARS.iter().find_map(|v| std::env::var(v).ok()?.trim().parse::<usize>().ok());
    match size {
        Some(n) => Some(n),
        // PMIx without a size variable: a launcher is there, MPI will tell the size.
        None if LAUNCHER_RANK_VARS.iter().any(|v| std::env::var_os(v).is_some()) => Some(0),
        None => None,
    }
}

/// The ranks this process belongs to: MPI's world when an MPI launcher started more than one
/// rank (NCCL for the gradients when `device` is a GPU and the `nccl` feature is on), else one
/// process alone.
pub fn from_environment(device: &candle_core::Device) -> Result<Ranks> {
    let Some(ranks) = launched_ranks() else { return Ok(Ranks::default()) };
    if ranks == 1 {
        return Ok(Ranks::default());
    }
    #[cfg(feature = "mpi")]
    {
        let world = mpi::Mpi::initialize()?;
        #[cfg(feature = "nccl")]
        if device.is_cuda() {
            return Ok(Ranks(Rc::new(nccl::Nccl::new(world, device)?)));
        }
        let _ = device;
        Ok(Ranks(Rc::new(world)))
    }
    #[cfg(not(feature = "mpi"))]
    {
        let _ = device;
        bail!(
            "started by an MPI launcher ({} ranks), but this minigpt4 was built without MPI: every rank would \
             train alone and write the same files; rebuild with `cargo build --release --features minigpt4/mpi` \
             (needs Open MPI or MPICH and libclang)",
            if ranks == 0 { "several".to_string() } else { ranks.to_string() }
        )
    }
}

/// Checks that a global batch can be split over the ranks (each rank needs at least one sample
/// per micro-batch).
pub fn check_batch(batch: usize, ranks: usize) -> Result<()> {
    if batch < ranks {
        bail!(
            "the global batch ({batch}) is smaller than the number of ranks ({ranks}); give --batch at least {ranks}"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_shares_cover_the_batch_in_order_and_balance_it() {
        let mut rng = crate::data::SplitMix64::new(7);
        for n in 1..24 {
            for size in 1..=n.min(6) {
                let costs: Vec<usize> = (0..n).map(|_| 1 + rng.below(60)).collect();
                let mut next = 0;
                for r in 0..size {
                    let (lo, hi) = share_by_cost(&costs, r, size);
                    assert_eq!(lo, next, "{costs:?} {size}");
                    assert!(hi > lo, "every rank gets a sample: {costs:?} {size}");
                    next = hi;
                }
                assert_eq!(next, n);
            }
        }
        // Long samples first: a cut by count would give rank 0 almost all the work.
        let costs = [50, 50, 50, 10, 10, 10, 10, 10];
        assert_eq!(share_by_cost(&costs, 0, 2), (0, 2));
        assert_eq!(share_by_cost(&costs, 1, 2), (2, 8));
    }
}
