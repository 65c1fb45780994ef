//! The ranks of an MPI job (Open MPI, MPICH, Intel MPI, through the `mpi` crate): what
//! `mpirun -np N minigpt4 train ...` or `srun minigpt4 train ...` starts.

use anyhow::{anyhow, Result};
use candle_core::{DType, Tensor};
use mpi::collective::SystemOperation;
use mpi::environment::Universe;
use mpi::topology::SimpleCommunicator;
use mpi::traits::*;

use super::Collective;

pub struct Mpi {
    world: SimpleCommunicator,
    /// Finalizes MPI when dropped, after `world`'s last use.
    _universe: Universe,
}

impl Mpi {
    /// `MPI_Init`; once per process.
    pub fn initialize() -> Result<Self> {
        let universe = mpi::initialize().ok_or_else(|| anyhow!("MPI was already initialized in this process"))?;
        Ok(Self { world: universe.world(), _universe: universe })
    }

    pub fn world(&self) -> &SimpleCommunicator {
        &self.world
    }
}

impl Collective for Mpi {
    fn rank(&self) -> usize {
        self.world.rank() as usize
    }

    fn size(&self) -> usize {
        self.world.size() as usize
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let send = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let mut recv = vec![0f32; send.len()];
        self.world.all_reduce_into(&send[..], &mut recv[..], SystemOperation::sum());
        Ok(Tensor::from_vec(recv, t.shape(), t.device())?.to_dtype(t.dtype())?)
    }

    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        let send = values.to_vec();
        self.world.all_reduce_into(&send[..], values, SystemOperation::sum());
        Ok(())
    }

    fn max_u8(&self, bytes: &mut [u8]) -> Result<()> {
        // MPI counts are 32-bit.
        for chunk in bytes.chunks_mut(1 << 30) {
            let send = chunk.to_vec();
            self.world.all_reduce_into(&send[..], chunk, SystemOperation::max());
        }
        Ok(())
    }

    fn barrier(&self) -> Result<()> {
        self.world.barrier();
        Ok(())
    }

    fn abort(&self, code: i32) -> ! {
        self.world.abort(code)
    }

    fn describe(&self) -> String {
        let library = mpi::environment::library_version().unwrap_or_default();
        let library = library.split(',').next().unwrap_or("MPI").trim().to_string();
        format!("MPI ({library}), {} ranks", self.size())
    }
}
