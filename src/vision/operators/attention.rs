//! `DecoderAttention`: the attention of Lookout's own decoder.
//!
//! It does what ONNX Runtime's `GroupQueryAttention` does in Lookout's graph (rotary embedding of the
//! new queries and keys, the new keys and values written into the cache buffer in place, causal
//! attention of grouped heads), for an f32 cache, and reads the cache the way decoding needs. With
//! several query heads per key/value head (SmolVLM2: 3), ONNX Runtime's CPU kernel handles each query
//! head on its own, reading its key/value head from memory once per query head; at long contexts that
//! traffic dominated a decoding step (13 tiles, 884 positions: attention was a third of the step).
//! Here the query heads of one key/value head are taken together, so the cached rows come from memory
//! once for all of them. A decoding step also splits the cached positions into chunks, so that both
//! threads stream the cache however few the heads, and merges the chunks' partial softmaxes (as
//! flash-decoding does). Timed inside one process, alternating the two ways step by step, the
//! operator took 13-17% less time than with one head a thread, at 100 and at 900 cached positions.
//! While a chunk's keys are scored, its value rows are prefetched: the scoring gives the loads time to
//! arrive before the weighted sums read the rows. On its own, over 30 layers' caches of 884 and 2,000
//! positions (far past the CPU's caches), a step took 19-25% less time with it on 2 threads, and
//! 20-22% on one (alternating with and without, in one process).
//!
//! Inputs: the packed `qkv` projections `[batch, sequence, (heads + 2 kv_heads) x head_dim]`, the cache
//! buffers `past_key` and `past_value` `[batch, kv_heads, capacity, head_dim]` (bound as the outputs
//! `present_key` and `present_value` too, so that a step copies nothing; otherwise the outputs start
//! as copies of the inputs), `seqlens_k` (each
//! row's last valid position, `[batch]` int32) and the rotary tables `cos` and `sin`
//! `[positions, head_dim / 2]`. Row `b`'s new tokens sit at positions `seqlens_k[b] + 1 - sequence`
//! onwards. Output: `[batch, sequence, heads x head_dim]`.
//!
//! The products go through ndarray's matrix multiply (matrixmultiply, with the AVX2 and FMA kernels it
//! picks at run time); the exponentials of the softmax are a polynomial that the compiler vectorizes
//! for the CPU's widest instructions (pulp), as precise as the library's `exp` to a few units in the
//! last place. Queries are taken in blocks, each against only the keys it may see.

use std::sync::Mutex;

use ndarray::linalg::general_mat_mul;
use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
};
use ort::value::{TensorElementType, TensorValueType, ValueRef};

use super::arithmetic::{Exponentials, dot, prefetch, softmax, weighted_sum};

/// The operator's name in graphs.
pub const NAME: &str = "DecoderAttention";

/// The most queries (of one head) multiplied at once in a prefill: each block sees only the keys up to
/// its last query, so causal attention costs about half the full product.
const QUERY_BLOCK: usize = 128;

pub(super) struct DecoderAttention;

impl Operator for DecoderAttention {
    type Kernel<'attr> = Attention;

    fn name(&self) -> &str {
        NAME
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        use TensorElementType::{Float32, Int32};
        [Float32, Float32, Float32, Int32, Float32, Float32].map(OperatorInput::required)
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [TensorElementType::Float32; 3].map(OperatorOutput::required)
    }

    fn create_kernel<'attr>(&self, info: &KernelContext<'attr>) -> ort::Result<Attention> {
        let count = |name: &str| {
            info.get::<i64>(name)
                .filter(|count| *count > 0)
                .map(|count| count as usize)
                .ok_or_else(|| {
                    ort::Error::new(format!("{NAME}: {name} must be a positive integer"))
                })
        };
        let (heads, kv_heads) = (count("num_heads")?, count("kv_num_heads")?);
        if heads % kv_heads != 0 {
            return Err(ort::Error::new(format!(
                "{NAME}: {heads} query heads do not divide into {kv_heads} key/value heads"
            )));
        }
        Ok(Attention { heads, kv_heads })
    }
}

/// The kernel: the head counts of its node.
pub struct Attention {
    heads: usize,
    kv_heads: usize,
}

/// The sizes of one run.
#[derive(Clone, Copy)]
struct Sizes {
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    sequence: usize,
    capacity: usize,
}

impl Sizes {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }

    fn width(&self) -> usize {
        (self.heads + 2 * self.kv_heads) * self.head_dim
    }
}

fn fail(problem: impl std::fmt::Display) -> ort::Error {
    ort::Error::new(format!("{NAME}: {problem}"))
}

fn required<'a>(ctx: &'a ComputeContext, index: usize) -> ort::Result<ValueRef<'a>> {
    ctx.input(index)?
        .ok_or_else(|| fail(format!("input {index} is missing")))
}

impl Kernel for Attention {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let qkv_value = required(ctx, 0)?;
        let (qkv_shape, qkv) = qkv_value.try_extract_tensor::<f32>()?;
        let past_key = required(ctx, 1)?.downcast::<TensorValueType<f32>>()?;
        let past_value = required(ctx, 2)?.downcast::<TensorValueType<f32>>()?;
        let cache_shape: Vec<i64> = past_key.shape().to_vec();
        let seqlens_value = required(ctx, 3)?;
        let (_, seqlens) = seqlens_value.try_extract_tensor::<i32>()?;
        let cos_value = required(ctx, 4)?;
        let (table_shape, cos) = cos_value.try_extract_tensor::<f32>()?;
        let sin_value = required(ctx, 5)?;
        let (_, sin) = sin_value.try_extract_tensor::<f32>()?;

        let (&[batch, sequence, width], &[_, kv_heads, capacity, head_dim]) =
            (&qkv_shape[..], &cache_shape[..])
        else {
            return Err(fail(format!(
                "qkv {qkv_shape:?} or the cache {cache_shape:?} is of the wrong rank"
            )));
        };
        let sizes = Sizes {
            heads: self.heads,
            kv_heads: self.kv_heads,
            head_dim: head_dim as usize,
            sequence: sequence as usize,
            capacity: capacity as usize,
        };
        let batch = batch as usize;
        if kv_heads as usize != sizes.kv_heads
            || width as usize != sizes.width()
            || seqlens.len() != batch
            || table_shape.get(1).copied() != Some(head_dim / 2)
        {
            return Err(fail(format!(
                "inputs disagree: qkv {qkv_shape:?}, cache {cache_shape:?}, {} seqlens, rotary \
                 tables {table_shape:?}, {} heads over {} key/value heads",
                seqlens.len(),
                sizes.heads,
                sizes.kv_heads
            )));
        }
        let positions = table_shape[0] as usize;
        let rows: Vec<Row> = seqlens
            .iter()
            .map(|last| {
                let total = usize::try_from(*last + 1).unwrap_or(0);
                let past = total.checked_sub(sizes.sequence);
                match past {
                    Some(past) if total <= sizes.capacity && total <= positions => Ok(Row { past }),
                    _ => Err(fail(format!(
                        "a row of {total} positions does not hold {} new ones within a cache of {} \
                         and {positions} rotary positions",
                        sizes.sequence, sizes.capacity
                    ))),
                }
            })
            .collect::<ort::Result<_>>()?;

        let (key_buffer, value_buffer) = (past_key.data_ptr(), past_value.data_ptr());
        let mut present_key = ctx
            .output(1, cache_shape.clone())?
            .ok_or_else(|| fail("present_key is missing"))?
            .downcast::<TensorValueType<f32>>()?;
        let mut present_value = ctx
            .output(2, cache_shape)?
            .ok_or_else(|| fail("present_value is missing"))?
            .downcast::<TensorValueType<f32>>()?;
        // Bound in place (Lookout's decoding loop), the cache is already there; otherwise (a caller
        // that lets ONNX Runtime allocate the outputs) it is copied first, as GroupQueryAttention does.
        let in_place =
            present_key.data_ptr() == key_buffer && present_value.data_ptr() == value_buffer;
        let (_, keys) = present_key.try_extract_tensor_mut::<f32>()?;
        let (_, values) = present_value.try_extract_tensor_mut::<f32>()?;
        if !in_place {
            keys.copy_from_slice(past_key.try_extract_tensor::<f32>()?.1);
            values.copy_from_slice(past_value.try_extract_tensor::<f32>()?.1);
        }
        let rotary = Rotary { cos, sin };
        let queries = write_cache(&sizes, &rows, qkv, &rotary, keys, values);

        let mut output = ctx
            .output(0, [batch, sizes.sequence, sizes.heads * sizes.head_dim])?
            .ok_or_else(|| fail("the output is missing"))?;
        let (_, output) = output.try_extract_tensor_mut::<f32>()?;
        attend(ctx, &sizes, &rows, &queries, keys, values, output)
    }
}

/// One row of the batch: how many positions its cache held before this run.
#[derive(Clone, Copy)]
struct Row {
    past: usize,
}

/// The rotary tables: `[positions, head_dim / 2]` each.
struct Rotary<'a> {
    cos: &'a [f32],
    sin: &'a [f32],
}

impl Rotary<'_> {
    /// `x` turned by the angles of `position` into `out` (the halves of the head rotated as pairs,
    /// as Llama's `rotate_half` does).
    fn apply(&self, x: &[f32], position: usize, out: &mut [f32]) {
        let half = x.len() / 2;
        let cos = &self.cos[position * half..][..half];
        let sin = &self.sin[position * half..][..half];
        let (first, second) = x.split_at(half);
        let (out_first, out_second) = out.split_at_mut(half);
        for i in 0..half {
            out_first[i] = first[i] * cos[i] - second[i] * sin[i];
            out_second[i] = second[i] * cos[i] + first[i] * sin[i];
        }
    }
}

/// Writes the new keys (rotated) and values of every row into the cache at their positions, and
/// returns the rotated queries scaled by `1/sqrt(head_dim)`, laid out `[batch, heads, sequence,
/// head_dim]`.
fn write_cache(
    sizes: &Sizes,
    rows: &[Row],
    qkv: &[f32],
    rotary: &Rotary,
    keys: &mut [f32],
    values: &mut [f32],
) -> Vec<f32> {
    let Sizes {
        heads,
        kv_heads,
        head_dim,
        sequence,
        capacity,
    } = *sizes;
    let scale = 1.0 / (head_dim as f32).sqrt();
    let mut queries = vec![0.0; rows.len() * heads * sequence * head_dim];
    for (b, row) in rows.iter().enumerate() {
        for s in 0..sequence {
            let position = row.past + s;
            let token = &qkv[(b * sequence + s) * sizes.width()..][..sizes.width()];
            for h in 0..heads {
                let out = &mut queries[((b * heads + h) * sequence + s) * head_dim..][..head_dim];
                rotary.apply(&token[h * head_dim..][..head_dim], position, out);
                out.iter_mut().for_each(|value| *value *= scale);
            }
            for g in 0..kv_heads {
                let at = ((b * kv_heads + g) * capacity + position) * head_dim;
                let key = &token[(heads + g) * head_dim..][..head_dim];
                rotary.apply(key, position, &mut keys[at..][..head_dim]);
                let value = &token[(heads + kv_heads + g) * head_dim..][..head_dim];
                values[at..][..head_dim].copy_from_slice(value);
            }
        }
    }
    queries
}

/// One unit of a prefill: the queries `[first, end)` of the query heads of key/value head `group`, of
/// row `row`.
#[derive(Clone, Copy)]
struct Unit {
    row: usize,
    group: usize,
    first: usize,
    end: usize,
}

/// Causal attention of every row's new queries over its cache, written into `output`: a decoding
/// step (one new query a row) by [`attend_step`], a prefill in blocks of queries. Units run on ONNX
/// Runtime's threads; each computes into its own buffer, copied into place after.
fn attend(
    ctx: &ComputeContext,
    sizes: &Sizes,
    rows: &[Row],
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    output: &mut [f32],
) -> ort::Result<()> {
    if sizes.sequence == 1 {
        return attend_step(ctx, sizes, rows, queries, keys, values, output);
    }
    let units: Vec<Unit> = (0..rows.len())
        .flat_map(|row| {
            (0..sizes.kv_heads).flat_map(move |group| {
                (0..sizes.sequence)
                    .step_by(QUERY_BLOCK)
                    .map(move |first| Unit {
                        row,
                        group,
                        first,
                        end: (first + QUERY_BLOCK).min(sizes.sequence),
                    })
            })
        })
        .collect();
    let results: Vec<Mutex<Vec<f32>>> = units.iter().map(|_| Mutex::default()).collect();
    ctx.par_for(units.len(), units.len(), |index| {
        let done = attend_block(sizes, rows, units[index], queries, keys, values);
        *results[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = done;
    })?;
    let Sizes {
        heads, head_dim, ..
    } = *sizes;
    for (unit, result) in units.iter().zip(results) {
        let result = result
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let block = unit.end - unit.first;
        for (j, head) in result.chunks_exact(block * head_dim).enumerate() {
            let h = unit.group * sizes.group() + j;
            for (s, row) in (unit.first..unit.end).zip(head.chunks_exact(head_dim)) {
                let at = ((unit.row * sizes.sequence + s) * heads + h) * head_dim;
                output[at..][..head_dim].copy_from_slice(row);
            }
        }
    }
    Ok(())
}

/// The attention of one block of queries: for each head of its group, `[block, head_dim]` rows.
fn attend_block(
    sizes: &Sizes,
    rows: &[Row],
    unit: Unit,
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
) -> Vec<f32> {
    let Sizes {
        heads,
        kv_heads,
        head_dim,
        sequence,
        capacity,
    } = *sizes;
    let past = rows[unit.row].past;
    let block = unit.end - unit.first;
    // The keys the block's last query may see.
    let visible = past + unit.end;
    let cache = ((unit.row * kv_heads + unit.group) * capacity) * head_dim;
    let keys = ArrayView2::from_shape((visible, head_dim), &keys[cache..][..visible * head_dim])
        .expect("the cache holds the visible rows");
    let values =
        ArrayView2::from_shape((visible, head_dim), &values[cache..][..visible * head_dim])
            .expect("the cache holds the visible rows");
    let mut scores = vec![0.0f32; block * visible];
    let mut result = vec![0.0f32; sizes.group() * block * head_dim];
    for (j, out) in result.chunks_exact_mut(block * head_dim).enumerate() {
        let h = unit.group * sizes.group() + j;
        let at = ((unit.row * heads + h) * sequence + unit.first) * head_dim;
        let q = ArrayView2::from_shape((block, head_dim), &queries[at..][..block * head_dim])
            .expect("the queries hold the block");
        let mut s = ArrayViewMut2::from_shape((block, visible), &mut scores[..])
            .expect("the scores hold the block");
        general_mat_mul(1.0, &q, &keys.t(), 0.0, &mut s);
        for (i, row) in scores.chunks_exact_mut(visible).enumerate() {
            // Query `first + i` sees the keys up to its own position.
            let seen = past + unit.first + i + 1;
            softmax(&mut row[..seen]);
            row[seen..].fill(0.0);
        }
        let p = ArrayView2::from_shape((block, visible), &scores[..]).expect("the scores");
        let mut o = ArrayViewMut2::from_shape((block, head_dim).strides((head_dim, 1)), out)
            .expect("the result holds the block");
        general_mat_mul(1.0, &p, &values, 0.0, &mut o);
    }
    result
}

/// The cached positions one unit of a decoding step reads: a chunk's keys and values (32 KB for a
/// head size of 64) stay in the core's cache while each head of the group goes over them.
const STEP_CHUNK: usize = 64;

/// One unit of a decoding step: the heads of key/value head `group` of row `row` over the cached
/// positions `[first, end)`.
#[derive(Clone, Copy)]
struct StepUnit {
    row: usize,
    group: usize,
    first: usize,
    end: usize,
}

/// A decoding step: one new query a row and head, against every cached position. There is little
/// arithmetic per cached row, so the step goes as fast as the cache comes from memory. Each unit
/// reads one chunk of one group's rows, once for all the group's heads, and units share the rows
/// among threads without overlap, however few the heads; the chunks' partial softmaxes are merged
/// after (the way flash-decoding splits the keys).
fn attend_step(
    ctx: &ComputeContext,
    sizes: &Sizes,
    rows: &[Row],
    queries: &[f32],
    keys: &[f32],
    values: &[f32],
    output: &mut [f32],
) -> ort::Result<()> {
    let Sizes {
        kv_heads,
        head_dim,
        capacity,
        ..
    } = *sizes;
    let group_width = sizes.group() * head_dim;
    let units: Vec<StepUnit> = rows
        .iter()
        .enumerate()
        .flat_map(|(row, cached)| {
            let total = cached.past + 1;
            (0..kv_heads).flat_map(move |group| {
                (0..total).step_by(STEP_CHUNK).map(move |first| StepUnit {
                    row,
                    group,
                    first,
                    end: (first + STEP_CHUNK).min(total),
                })
            })
        })
        .collect();
    let partials: Vec<Mutex<Partial>> = units.iter().map(|_| Mutex::default()).collect();
    ctx.par_for(units.len(), units.len(), |index| {
        let unit = units[index];
        // The queries of a step are `[batch, heads, 1, head_dim]`: a group's are consecutive.
        let group_queries = (unit.row * kv_heads + unit.group) * group_width;
        let cache = (unit.row * kv_heads + unit.group) * capacity;
        let chunk = (cache + unit.first) * head_dim..(cache + unit.end) * head_dim;
        let done = pulp::Arch::new().dispatch(StepChunk {
            queries: &queries[group_queries..][..group_width],
            keys: &keys[chunk.clone()],
            values: &values[chunk],
            head_dim,
        });
        *partials[index]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = done;
    })?;
    // Units come in order of row and group: each (row, group)'s chunks are consecutive.
    let mut partials = units.iter().zip(partials).peekable();
    while let Some((unit, first)) = partials.next() {
        let mut merged = first
            .into_inner()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while let Some((_, next)) =
            partials.next_if(|(next, _)| (next.row, next.group) == (unit.row, unit.group))
        {
            merged.merge(
                &next
                    .into_inner()
                    .unwrap_or_else(|poisoned| poisoned.into_inner()),
            );
        }
        let at = (unit.row * kv_heads + unit.group) * group_width;
        merged.normalise_into(&mut output[at..][..group_width]);
    }
    Ok(())
}

/// The attention of a group's heads over some of the cached positions, before normalisation: per
/// head, the largest score, the sum of the exponentials of the scores less it, and the values
/// weighted by those exponentials.
#[derive(Default)]
struct Partial {
    most: Vec<f32>,
    sum: Vec<f32>,
    weighted: Vec<f32>,
}

impl Partial {
    /// Takes in the positions of `other` (same heads): each side rescaled to the larger maximum.
    fn merge(&mut self, other: &Partial) {
        let head_dim = self.weighted.len() / self.most.len();
        for (j, (&most, &sum)) in other.most.iter().zip(&other.sum).enumerate() {
            let largest = self.most[j].max(most);
            let (mine, theirs) = ((self.most[j] - largest).exp(), (most - largest).exp());
            self.most[j] = largest;
            self.sum[j] = self.sum[j] * mine + sum * theirs;
            let weighted = &other.weighted[j * head_dim..][..head_dim];
            for (value, other) in self.weighted[j * head_dim..][..head_dim]
                .iter_mut()
                .zip(weighted)
            {
                *value = *value * mine + other * theirs;
            }
        }
    }

    /// The heads' outputs, `[heads, head_dim]`, into `out`.
    fn normalise_into(&self, out: &mut [f32]) {
        let head_dim = self.weighted.len() / self.sum.len();
        for ((out, weighted), sum) in out
            .chunks_exact_mut(head_dim)
            .zip(self.weighted.chunks_exact(head_dim))
            .zip(&self.sum)
        {
            for (out, weighted) in out.iter_mut().zip(weighted) {
                *out = weighted / sum;
            }
        }
    }
}

/// A group's new queries (`[heads, head_dim]`) against a chunk of its cached rows.
struct StepChunk<'a> {
    queries: &'a [f32],
    keys: &'a [f32],
    values: &'a [f32],
    head_dim: usize,
}

impl pulp::WithSimd for StepChunk<'_> {
    type Output = Partial;

    #[inline(always)]
    fn with_simd<S: pulp::Simd>(self, simd: S) -> Partial {
        let StepChunk {
            queries,
            keys,
            values,
            head_dim,
        } = self;
        let heads = queries.len() / head_dim;
        let positions = keys.len() / head_dim;
        let mut weights = vec![0.0f32; heads * positions];
        for ((t, key), value) in keys
            .chunks_exact(head_dim)
            .enumerate()
            .zip(values.chunks_exact(head_dim))
        {
            // The value rows come next: asked for while the keys are scored, they are in the cache
            // when the weighted sums need them, instead of each load waiting on memory then.
            prefetch(value);
            for (j, query) in queries.chunks_exact(head_dim).enumerate() {
                weights[j * positions + t] = dot(simd, query, key);
            }
        }
        let mut partial = Partial {
            most: Vec::with_capacity(heads),
            sum: Vec::with_capacity(heads),
            weighted: vec![0.0f32; heads * head_dim],
        };
        for (weights, weighted) in weights
            .chunks_exact_mut(positions)
            .zip(partial.weighted.chunks_exact_mut(head_dim))
        {
            let (most, sum) = Exponentials(weights).with_simd(simd);
            partial.most.push(most);
            partial.sum.push(sum);
            weighted_sum(simd, weights, values, weighted);
        }
        partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A decoding step by the definition: per head, softmax of the query's dot products with the keys,
    /// then the weighted sum of the values.
    fn attention_by_definition(
        queries: &[f32],
        keys: &[f32],
        values: &[f32],
        head_dim: usize,
    ) -> Vec<f32> {
        queries
            .chunks_exact(head_dim)
            .flat_map(|query| {
                let scores: Vec<f64> = keys
                    .chunks_exact(head_dim)
                    .map(|key| query.iter().zip(key).map(|(q, k)| f64::from(q * k)).sum())
                    .collect();
                let most = scores.iter().fold(f64::NEG_INFINITY, |a, b| a.max(*b));
                let exps: Vec<f64> = scores.iter().map(|s| (s - most).exp()).collect();
                let sum: f64 = exps.iter().sum();
                (0..head_dim).map(move |column| {
                    exps.iter()
                        .zip(values.chunks_exact(head_dim))
                        .map(|(e, row)| e / sum * f64::from(row[column]))
                        .sum::<f64>() as f32
                })
            })
            .collect()
    }

    /// A decoding step of one group as `attend_step` takes it: chunk by chunk, merged.
    fn step_in_chunks(queries: &[f32], keys: &[f32], values: &[f32], head_dim: usize) -> Vec<f32> {
        let chunk = STEP_CHUNK * head_dim;
        let mut partials = keys
            .chunks(chunk)
            .zip(values.chunks(chunk))
            .map(|(keys, values)| {
                pulp::Arch::new().dispatch(StepChunk {
                    queries,
                    keys,
                    values,
                    head_dim,
                })
            });
        let mut merged = partials.next().expect("one position at least");
        partials.for_each(|next| merged.merge(&next));
        let mut out = vec![0.0; queries.len()];
        merged.normalise_into(&mut out);
        out
    }

    #[test]
    fn a_decoding_step_agrees_with_the_definition() {
        let value = |i: usize, salt: f32| (i as f32 * 0.731 + salt).sin() * 2.0;
        // One chunk and several, the last one short; a head size that leaves a remainder after
        // the summed spans; a single cached position.
        for (head_dim, positions) in [(64, 37), (64, 884), (20, 5), (64, 1), (64, 128)] {
            let queries: Vec<f32> = (0..3 * head_dim).map(|i| value(i, 0.1) * 0.2).collect();
            let keys: Vec<f32> = (0..positions * head_dim).map(|i| value(i, 0.7)).collect();
            let values: Vec<f32> = (0..positions * head_dim).map(|i| value(i, 1.3)).collect();
            let got = step_in_chunks(&queries, &keys, &values, head_dim);
            let want = attention_by_definition(&queries, &keys, &values, head_dim);
            for (got, want) in got.iter().zip(&want) {
                assert!(
                    (got - want).abs() < 1e-5,
                    "{head_dim}/{positions}: {got} against {want}"
                );
            }
        }
    }
}
