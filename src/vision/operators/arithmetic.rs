//! The vector arithmetic of Lookout's operators: dot products, weighted sums of rows, the softmax and
//! its exponential, written as plain code over `pulp`'s vectors, so that one build runs the widest
//! instructions the CPU has (AVX2 and FMA, AVX-512, NEON), chosen at run time.

/// The most vectors of a row that [`weighted_sum`] sums at once.
const SUM_VECTORS: usize = 4;

/// `out = Σ weights[t] · rows[t]`, the rows `out.len()` values each. A span of the row is summed over
/// every row at a time in registers, in two sets of accumulators (even and odd rows): eight
/// independent sums keep the FMA units busy while each waits on its previous result, and nothing
/// goes through memory until the span is done.
#[inline(always)]
pub(super) fn weighted_sum<S: pulp::Simd>(simd: S, weights: &[f32], rows: &[f32], out: &mut [f32]) {
    let width = out.len();
    let span = SUM_VECTORS * std::mem::size_of::<S::f32s>() / std::mem::size_of::<f32>();
    let whole = width / span * span;
    let vectors = |row: usize, start: usize| -> &[S::f32s; SUM_VECTORS] {
        S::as_simd_f32s(&rows[row * width + start..][..span])
            .0
            .first_chunk()
            .expect("a span holds SUM_VECTORS vectors")
    };
    for start in (0..whole).step_by(span) {
        let mut even = [simd.splat_f32s(0.0); SUM_VECTORS];
        let mut odd = [simd.splat_f32s(0.0); SUM_VECTORS];
        let (pairs, last) = weights.as_chunks::<2>();
        for (pair, &[first, second]) in pairs.iter().enumerate() {
            let (a, b) = (vectors(2 * pair, start), vectors(2 * pair + 1, start));
            let (first, second) = (simd.splat_f32s(first), simd.splat_f32s(second));
            for i in 0..SUM_VECTORS {
                even[i] = simd.mul_add_f32s(first, a[i], even[i]);
                odd[i] = simd.mul_add_f32s(second, b[i], odd[i]);
            }
        }
        if let [weight] = *last {
            let (weight, a) = (simd.splat_f32s(weight), vectors(weights.len() - 1, start));
            for i in 0..SUM_VECTORS {
                even[i] = simd.mul_add_f32s(weight, a[i], even[i]);
            }
        }
        let (out, _) = S::as_mut_simd_f32s(&mut out[start..][..span]);
        for ((out, even), odd) in out.iter_mut().zip(even).zip(odd) {
            *out = simd.add_f32s(even, odd);
        }
    }
    // The rest of the row (a head size that is no multiple of the span), one column at a time.
    for (column, out) in out.iter_mut().enumerate().skip(whole) {
        *out = weights
            .iter()
            .zip(rows.chunks_exact(width))
            .map(|(weight, row)| weight * row[column])
            .sum();
    }
}

/// The dot product of two rows in `simd`'s widest vectors: two accumulators, one reduction.
#[inline(always)]
pub(super) fn dot<S: pulp::Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_vectors, a_rest) = S::as_simd_f32s(a);
    let (b_vectors, b_rest) = S::as_simd_f32s(b);
    let mut even = simd.splat_f32s(0.0);
    let mut odd = simd.splat_f32s(0.0);
    let (a_pairs, a_last) = a_vectors.as_chunks::<2>();
    let (b_pairs, b_last) = b_vectors.as_chunks::<2>();
    for (a, b) in a_pairs.iter().zip(b_pairs) {
        even = simd.mul_add_f32s(a[0], b[0], even);
        odd = simd.mul_add_f32s(a[1], b[1], odd);
    }
    for (a, b) in a_last.iter().zip(b_last) {
        even = simd.mul_add_f32s(*a, *b, even);
    }
    simd.reduce_sum_f32s(simd.add_f32s(even, odd))
        + a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum::<f32>()
}

/// Asks the CPU to start loading `values` into its nearest cache, a line (64 bytes) at a time, ahead
/// of their use. Only a hint: it reads nothing into the program and never faults. On CPUs other than
/// x86-64 it does nothing (Rust has no stable prefetch there), and the hardware's own prefetching is
/// all.
#[inline(always)]
#[allow(unsafe_code)]
pub(super) fn prefetch<T>(values: &[T]) {
    #[cfg(target_arch = "x86_64")]
    for offset in (0..std::mem::size_of_val(values)).step_by(64) {
        let line = values.as_ptr().cast::<u8>().wrapping_add(offset);
        // SAFETY: a prefetch has no effect the program can observe and cannot fault, whatever the
        // address; this one is within a live slice.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(line.cast())
        };
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = values;
}

/// `scores` turned into probabilities in place.
pub(super) fn softmax(scores: &mut [f32]) {
    let (_, sum) = pulp::Arch::new().dispatch(Exponentials(scores));
    let scale = 1.0 / sum;
    scores.iter_mut().for_each(|score| *score *= scale);
}

/// The lanes in which [`Exponentials`] and [`LogSumExp`] work: plain code over arrays of this many
/// values, which the compiler vectorizes for the instructions the `pulp::Simd` type enables.
const LANES: usize = 16;

/// The largest of `values` (minus infinity for none).
#[inline(always)]
fn largest(values: &[f32]) -> f32 {
    let mut most = [f32::NEG_INFINITY; LANES];
    let (chunks, rest) = values.as_chunks::<LANES>();
    for chunk in chunks {
        for (most, value) in most.iter_mut().zip(chunk) {
            *most = most.max(*value);
        }
    }
    rest.iter()
        .chain(&most)
        .fold(f32::NEG_INFINITY, |a, b| a.max(*b))
}

/// `scores` turned into the exponentials of their differences with the largest, in place; returns the
/// largest score and the exponentials' sum.
pub(super) struct Exponentials<'a>(pub(super) &'a mut [f32]);

impl pulp::WithSimd for Exponentials<'_> {
    type Output = (f32, f32);

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> (f32, f32) {
        let scores = self.0;
        let most = largest(scores);
        let mut sums = [0.0f32; LANES];
        let (chunks, rest) = scores.as_chunks_mut::<LANES>();
        for chunk in chunks {
            for (sum, score) in sums.iter_mut().zip(chunk.iter_mut()) {
                *score = exp(*score - most);
                *sum += *score;
            }
        }
        let mut sum: f32 = sums.iter().sum();
        for score in rest.iter_mut() {
            *score = exp(*score - most);
            sum += *score;
        }
        (most, sum)
    }
}

/// `ln Σ e^x` over the values, computed as `largest + ln Σ e^(x - largest)` so that no exponential
/// overflows: a logit's log-probability is the logit minus this. It runs on every generated token over
/// the whole vocabulary (49,280 logits for SmolVLM2), where the standard library's scalar exponential
/// took 0.19 ms a token, a fiftieth of an int8 decoding step; this one vectorizes.
pub(crate) fn log_sum_exp(values: &[f32]) -> f32 {
    pulp::Arch::new().dispatch(LogSumExp(values))
}

struct LogSumExp<'a>(&'a [f32]);

impl pulp::WithSimd for LogSumExp<'_> {
    type Output = f32;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, _: S) -> f32 {
        let values = self.0;
        let most = largest(values);
        let mut sums = [0.0f32; LANES];
        let (chunks, rest) = values.as_chunks::<LANES>();
        for chunk in chunks {
            for (sum, value) in sums.iter_mut().zip(chunk) {
                *sum += exp(*value - most);
            }
        }
        let sum =
            sums.iter().sum::<f32>() + rest.iter().map(|value| exp(value - most)).sum::<f32>();
        most + sum.ln()
    }
}

/// `e^x` for `x <= 0` (a softmax's shifted scores): `2^n * e^r` with `n` the nearest integer to
/// `x / ln 2` and `|r| <= ln 2 / 2`, `e^r` by its Taylor polynomial to the 7th power (relative error
/// under 2e-7), with no branch and no conversion between floats and integers, so that it vectorizes
/// into a few instructions a lane: `n` comes from an addition (below), where `round_ties_even` and an
/// `as i32` cast, which give the same bits, took 2.2 times as long (1.8 against 0.8 ns a value on
/// AVX2, timed alternately in one process). Below `e^-80` (1.8e-35, no weight next to the largest
/// score's 1) it is 0: products of such weights are subnormal numbers, which the CPU handles a hundred
/// times slower (a decoding step took 13 times as long on them).
#[inline(always)]
pub(super) fn exp(x: f32) -> f32 {
    let negligible = x < -80.0;
    let x = x.max(-80.0);
    // Adding 1.5 · 2^23 rounds x / ln 2 to the nearest integer (ties to even) in the float's low bits:
    // `n` as a float, and as an integer in the sum's bits, with no conversion instruction.
    const ROUNDER: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUNDER;
    let n = shifted - ROUNDER;
    let n_bits = shifted.to_bits().wrapping_sub(ROUNDER.to_bits());
    // ln 2 in two parts, so that n * LN2_HIGH is exact.
    const LN2_HIGH: f32 = 0.693_145_75;
    const LN2_LOW: f32 = 1.428_606_8e-6;
    let r = (x - n * LN2_HIGH) - n * LN2_LOW;
    let mut p = 1.0 / 5040.0;
    for coefficient in [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ] {
        p = p * r + coefficient;
    }
    let value = f32::from_bits(p.to_bits().wrapping_add(n_bits << 23));
    if negligible { 0.0 } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exponential_agrees_with_the_library_s() {
        let mut worst = 0.0f32;
        for i in 0..=100_000 {
            let x = -80.0 * i as f32 / 100_000.0;
            let relative = ((exp(x) - x.exp()) / x.exp()).abs();
            worst = worst.max(relative);
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp(0.0), 1.0);
        assert_eq!(exp(-80.5), 0.0);
        assert_eq!(exp(-200.0), 0.0);
    }

    #[test]
    fn softmax_sums_to_one_and_keeps_the_order() {
        let mut scores: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin() * 5.0).collect();
        let reference: Vec<f32> = {
            let most = scores.iter().fold(f32::NEG_INFINITY, |a, b| a.max(*b));
            let exps: Vec<f32> = scores.iter().map(|s| (s - most).exp()).collect();
            let sum: f32 = exps.iter().sum();
            exps.iter().map(|e| e / sum).collect()
        };
        softmax(&mut scores);
        for (got, want) in scores.iter().zip(&reference) {
            assert!((got - want).abs() < 1e-6, "{got} against {want}");
        }
    }

    #[test]
    fn log_sum_exp_agrees_with_a_sum_in_double_precision() {
        // A vocabulary's worth of logits (whole lanes and a remainder), spread as a model's are.
        let logits: Vec<f32> = (0..49_283)
            .map(|i| (i as f32 * 0.618).sin() * 12.0)
            .collect();
        let most = logits
            .iter()
            .fold(f64::NEG_INFINITY, |a, b| a.max(f64::from(*b)));
        let reference = most
            + logits
                .iter()
                .map(|logit| (f64::from(*logit) - most).exp())
                .sum::<f64>()
                .ln();
        let got = f64::from(log_sum_exp(&logits));
        assert!((got - reference).abs() < 1e-5, "{got} against {reference}");
        // ln(e^0 + e^ln 3) = ln 4; ten equal values, fewer than one lane.
        assert!((log_sum_exp(&[0.0, 3f32.ln()]) - 4f32.ln()).abs() < 1e-6);
        assert!((log_sum_exp(&[2.0; 10]) - (2.0 + 10f32.ln())).abs() < 1e-6);
        // Large logits do not overflow: 1000 + ln 2.
        assert!((log_sum_exp(&[1000.0, 1000.0]) - (1000.0 + 2f32.ln())).abs() < 1e-3);
        // A token that cannot be chosen adds nothing.
        assert_eq!(log_sum_exp(&[f32::NEG_INFINITY, 0.0]), 0.0);
    }
}
