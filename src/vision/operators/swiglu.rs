//! `SwiGlu`: the gate of a Llama MLP, `silu(gate) · up`, from the fused gate and up projection.
//!
//! Lookout's graph computes the gate and up projections as one MatMul, `[..., 2 x intermediate]`,
//! the gate's half first. ONNX Runtime runs the gate as Split, Sigmoid and two Muls (three kernels
//! once it fuses Sigmoid and the first Mul into QuickGelu): three passes over the values and three
//! dispatches a layer, each a few microseconds of a decoding step that reads only 6 KB. This
//! operator reads each pair once and writes the product.
//!
//! Input: `gate_up` `[..., 2 x intermediate]` (f32). Output: `[..., intermediate]`.

use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::TensorElementType;

use super::arithmetic::exp;

/// The operator's name in graphs.
pub const NAME: &str = "SwiGlu";

/// The most outputs one thread computes at once in a prefill (a decoding step's row is one piece).
const PIECE: usize = 16 * 1024;

pub(super) struct SwiGlu;

impl Operator for SwiGlu {
    type Kernel<'attr> = Gate;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        [OperatorInput::required(TensorElementType::Float32)]
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, _: &KernelContext<'attr>) -> ort::Result<Gate> {
        Ok(Gate)
    }
}

pub struct Gate;

fn fail(problem: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("{NAME}: {problem}"))
}

impl Kernel for Gate {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let input = ctx.input(0)?.ok_or_else(|| fail("input 0 is missing"))?;
        let (shape, values) = input.try_extract_tensor::<f32>()?;
        let width = match shape.last() {
            Some(&width) if width > 0 && width % 2 == 0 => width as usize,
            _ => {
                return Err(fail(format!(
                    "the input's last axis must be even, not {shape:?}"
                )));
            }
        };
        let mut output_shape = shape.to_vec();
        if let Some(last) = output_shape.last_mut() {
            *last /= 2;
        }
        let mut output = ctx
            .output(0, output_shape)?
            .ok_or_else(|| fail("the output is missing"))?;
        let (_, products) = output.try_extract_tensor_mut::<f32>()?;
        let half = width / 2;
        let rows_a_piece = (PIECE / half).max(1);
        let pieces: Vec<(&[f32], Mutex<&mut [f32]>)> = values
            .chunks(rows_a_piece * width)
            .zip(products.chunks_mut(rows_a_piece * half))
            .map(|(input, output)| (input, Mutex::new(output)))
            .collect();
        let gate = |index: usize| {
            let (input, output) = &pieces[index];
            let mut output = output
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for (pair, product) in input.chunks_exact(width).zip(output.chunks_exact_mut(half)) {
                let (gate, up) = pair.split_at(half);
                pulp::Arch::new().dispatch(Products { gate, up, product });
            }
        };
        if pieces.len() == 1 {
            gate(0);
        } else {
            ctx.par_for(pieces.len(), pieces.len(), gate)?;
        }
        Ok(())
    }
}

/// `product = silu(gate) · up`, element by element.
struct Products<'a> {
    gate: &'a [f32],
    up: &'a [f32],
    product: &'a mut [f32],
}

impl pulp::WithSimd for Products<'_> {
    type Output = ();

    /// Plain code that the compiler vectorizes for the instructions `S` enables.
    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) {
        for ((gate, up), product) in self.gate.iter().zip(self.up).zip(self.product.iter_mut()) {
            *product = silu(*gate) * up;
        }
    }
}

/// `x · sigmoid(x)`, the sigmoid from `e^-|x|` so that the exponential never overflows.
#[inline(always)]
fn silu(x: f32) -> f32 {
    let small = exp(-x.abs());
    let numerator = if x >= 0.0 { 1.0 } else { small };
    x * numerator / (1.0 + small)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silu_agrees_with_its_definition() {
        for x in [
            -100.0f32, -20.0, -3.5, -1.0, -1e-3, 0.0, 1e-3, 0.5, 2.0, 7.25, 30.0, 100.0,
        ] {
            let expected = f64::from(x) / (1.0 + (-f64::from(x)).exp());
            let got = f64::from(silu(x));
            assert!(
                (got - expected).abs() <= 1e-6 * expected.abs().max(1e-30) + 1e-37,
                "silu({x}) = {got}, not {expected}"
            );
        }
    }

    #[test]
    fn the_products_pair_each_gate_with_its_up_value() {
        let gate: Vec<f32> = (0..37).map(|i| i as f32 * 0.25 - 4.0).collect();
        let up: Vec<f32> = (0..37).map(|i| 1.0 + i as f32).collect();
        let mut product = vec![0.0; 37];
        pulp::Arch::new().dispatch(Products {
            gate: &gate,
            up: &up,
            product: &mut product,
        });
        for i in 0..37 {
            assert_eq!(product[i], silu(gate[i]) * up[i]);
        }
    }
}
