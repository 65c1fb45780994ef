//! Gradients summed by NCCL on GPUs (candle's cudarc bindings); MPI starts the ranks, gives each
//! its rank and hands rank 0's NCCL id to the others, and still carries the few host scalars.
//!
//! Built only with the `nccl` feature (CUDA and NCCL needed to compile). Not run by any test of
//! this repository: the machines it is developed on have no GPU. See README "Training on
//! several machines".

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use candle_core::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle_core::cuda_backend::{CudaStorage, CudaStorageSlice};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use mpi::traits::*;

use super::mpi::Mpi;
use super::Collective;

pub struct Nccl {
    mpi: Mpi,
    comm: Arc<Comm>,
}

impl Nccl {
    /// One NCCL communicator over the MPI world, each rank on `device` (pick it from the local
    /// rank, e.g. `CUDA_VISIBLE_DEVICES` set per rank by the launcher).
    pub fn new(mpi: Mpi, device: &Device) -> Result<Self> {
        let Device::Cuda(dev) = device else { bail!("NCCL needs a CUDA device") };
        let (rank, size) = (mpi.rank(), mpi.size());
        let id =
            if rank == 0 { Id::new().map_err(|e| anyhow!("ncclGetUniqueId: {e:?}"))? } else { Id::uninit([0; 128]) };
        let mut bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
        mpi.world().process_at_rank(0).broadcast_into(&mut bytes[..]);
        let mut internal = [0 as std::ffi::c_char; 128];
        for (d, s) in internal.iter_mut().zip(&bytes) {
            *d = *s as std::ffi::c_char;
        }
        let comm = Comm::from_rank(dev.cuda_stream(), rank, size, Id::uninit(internal))
            .map_err(|e| anyhow!("ncclCommInitRank (rank {rank} of {size}): {e:?}"))?;
        Ok(Self { mpi, comm: Arc::new(comm) })
    }
}

/// `ncclAllReduce(sum)` as a candle op on an f32 tensor.
struct AllReduceSum(Arc<Comm>);

// NCCL communicators may be used from one thread at a time; training calls this from its one
// thread only.
unsafe impl Send for AllReduceSum {}
unsafe impl Sync for AllReduceSum {}

impl CustomOp1 for AllReduceSum {
    fn name(&self) -> &'static str {
        "nccl-all-reduce-sum"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("the NCCL all-reduce runs on CUDA tensors only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> candle_core::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("the NCCL all-reduce needs a contiguous tensor")
        };
        let dev = s.device.clone();
        let CudaStorageSlice::F32(src) = &s.slice else { candle_core::bail!("the NCCL all-reduce sums f32") };
        let src = src.slice(start..end);
        let mut dst = dev.alloc_zeros::<f32>(end - start)?;
        self.0
            .all_reduce(&src, &mut dst, &ReduceOp::Sum)
            .map_err(|e| candle_core::Error::Msg(format!("ncclAllReduce: {e:?}")))?;
        Ok((CudaStorage::wrap_cuda_slice(dst, dev), l.shape().clone()))
    }
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.mpi.rank()
    }

    fn size(&self) -> usize {
        self.mpi.size()
    }

    fn all_reduce_sum(&self, t: &Tensor) -> Result<Tensor> {
        let f = t.to_dtype(DType::F32)?.contiguous()?;
        Ok(f.apply_op1_no_bwd(&AllReduceSum(self.comm.clone()))?.to_dtype(t.dtype())?)
    }

    fn sum_f64(&self, values: &mut [f64]) -> Result<()> {
        self.mpi.sum_f64(values)
    }

    fn max_u8(&self, bytes: &mut [u8]) -> Result<()> {
        self.mpi.max_u8(bytes)
    }

    fn barrier(&self) -> Result<()> {
        self.mpi.barrier()
    }

    fn abort(&self, code: i32) -> ! {
        self.mpi.abort(code)
    }

    fn describe(&self) -> String {
        format!("NCCL over {}", self.mpi.describe())
    }
}
