//! Lookout's own ONNX Runtime operators (domain `ai.lookout`), registered with every session, for
//! what the runtime's CPU kernels do slower in Lookout's decoder graph (`lookout models build`):
//! - `DecoderAttention` (`attention`): grouped-query attention on the fixed cache buffers, each cached
//!   row read once for all the query heads that share it;
//! - `SwiGlu` (`swiglu`): a Llama MLP's gate in one pass, where the runtime runs three kernels;
//! - `QuantizedLinear` (`linear`): the int8 and int4 graphs' projections in integers on 16-bit
//!   activations, at `MatMulNBits`' speed or faster one row at a time and faster for a prefill's many
//!   rows (a GEMM of its own).
//!
//! They compute in f32: the fp16 graph, meant for accelerators, uses the runtime's own operators.
//! Their vectorized exponential also serves the decoding loop (`log_sum_exp`).

mod arithmetic;
pub mod attention;
pub mod linear;
pub mod swiglu;

pub(crate) use arithmetic::log_sum_exp;

use ort::operator::OperatorDomain;

/// The operators' domain, as graphs name it.
pub const DOMAIN: &str = "ai.lookout";

/// The domain to register with a session so that it can run Lookout's decoder.
pub fn operators() -> ort::Result<OperatorDomain> {
    OperatorDomain::new(DOMAIN)?
        .add(attention::DecoderAttention)?
        .add(linear::QuantizedLinear)?
        .add(swiglu::SwiGlu)
}
