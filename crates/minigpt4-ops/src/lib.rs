//! Every CPU kernel and custom op of minigpt4, each tested against candle's composite ops or a
//! scalar reference on random data. No model knowledge: the model parts (minigpt4-models) call
//! these with plain tensors.
//!
//! - [`quant_matvec`]: GGUF Q4_1/Q8_0 matrix–vector products for decode, dequantization for
//!   prefill, the finiteness check of quantized blocks.
//! - [`decode_attention`]: one decoded token's attention against the key/value cache.
//! - [`quant_gemm`]: the same matrices × many activation rows (prefill) in 8-bit integers
//!   (AVX-512 VNNI).
//! - [`vit_ops`]: fused ViT inference (dense + bias + GELU/residual, attention from packed qkv).
//! - [`train_ops`]: ops with a backward pass for training (RMSNorm, causal softmax, RoPE,
//!   SwiGLU, matmul with a frozen weight), and the causal mask.
//! - [`conv_ops`]: the depthwise convolution of EfficientNet-Lite (channels-last, ReLU6).
//! - [`cpu`]: what they share.

pub mod conv_ops;
pub mod cpu;
pub mod decode_attention;
pub mod quant_gemm;
pub mod quant_matvec;
pub mod train_ops;
pub mod vit_ops;
pub mod widen;
