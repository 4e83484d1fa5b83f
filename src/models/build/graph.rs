//! The decoder graph: Llama's text model as a few fused ONNX Runtime operators per layer.
//!
//! Per layer: `SkipSimplifiedLayerNormalization` (the residual add and RMSNorm in one node; the first
//! layer's has no residual yet and is a `SimplifiedLayerNormalization`), one MatMul for the fused Q, K
//! and V projections, the attention (rotary embedding inside, grouped heads, the key/value cache read
//! and written in place: Lookout's `DecoderAttention` for an f32 cache, ONNX Runtime's
//! `GroupQueryAttention` for the fp16 graph's half-precision one), the output projection, a second
//! skip-norm, one MatMul for the fused gate and up projections, the gate (`silu(gate) · up`:
//! Lookout's `SwiGlu` on f32 activations, `Split`, `Sigmoid` and `Mul`s on half-precision ones), and
//! the down projection. Eight nodes a layer, where the official export has ~70.
//!
//! The cache is one buffer per layer of a fixed capacity, `[batch, kv_heads, capacity, head_dim]`, the
//! same buffer bound as `past_key_values.N.*` and `present.N.*`: the attention writes the new
//! positions at each sequence's length (`seqlens_k`, from the attention mask) and reads only the valid
//! ones, so a step neither copies nor concatenates the cache. `attention_mask` (`[batch, total]`,
//! ones then zeros: each row's valid length) gives `seqlens_k` (its row sums less one) and
//! `total_sequence_length` (its width). `num_logits_to_keep` (a scalar) keeps the LM head to the last
//! positions: a prefill needs one row of logits, not one per prompt token.
//!
//! An fp16 graph computes and caches in half precision, but takes f32 embeddings and gives f32
//! logits (a Cast at each end), so one decoding loop drives every precision; only its cache buffers'
//! element type differs.

use super::checkpoint::{Checkpoint, TextConfig};
use super::onnx::{
    Attribute, Dim, GraphProto, NodeProto, TensorProto, attribute, data_type, value_info,
};
use super::quantize::{BLOCK, Bits, quantize};
use super::weights::WeightsFile;
use super::{BuildError, Precision};
use crate::vision::operators::{self, attention, linear, swiglu};

/// The graph's nodes and initializers as they are added; the weights' bytes go straight to the
/// external data file.
struct Builder<'w> {
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    weights: &'w mut WeightsFile,
    precision: Precision,
    /// The element type of the activations, the cache and every float weight: FLOAT16 for fp16,
    /// else FLOAT.
    float: i32,
}

impl Builder<'_> {
    /// Adds a node named `name` and returns its `outputs` output names (`name/0`, `name/1`...); an
    /// empty input name is an optional input left out.
    fn node(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        outputs: usize,
        attributes: Vec<(&str, Attribute)>,
    ) -> Vec<String> {
        let output: Vec<String> = (0..outputs)
            .map(|index| format!("{name}/{index}"))
            .collect();
        // ONNX Runtime's own operators; SimplifiedLayerNormalization, though one of them, is
        // registered in the default domain.
        let domain = match op_type {
            "GroupQueryAttention" | "SkipSimplifiedLayerNormalization" => "com.microsoft",
            attention::NAME | linear::NAME | swiglu::NAME => operators::DOMAIN,
            _ => "",
        };
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|input| (*input).to_owned()).collect(),
            output: output.clone(),
            name: name.to_owned(),
            op_type: op_type.to_owned(),
            attribute: attributes
                .into_iter()
                .map(|(name, value)| attribute(name, value))
                .collect(),
            domain: domain.to_owned(),
        });
        output
    }

    /// A node of one output; its name.
    fn one(
        &mut self,
        op_type: &str,
        name: &str,
        inputs: &[&str],
        attributes: Vec<(&str, Attribute)>,
    ) -> String {
        self.node(op_type, name, inputs, 1, attributes).remove(0)
    }

    /// RMSNorm of `input + skip` scaled by `weight`: the normalised values, and the sum (the residual
    /// stream the next block adds to). The mean and inverse deviation outputs are left out.
    fn skip_norm(
        &mut self,
        name: &str,
        input: &str,
        skip: &str,
        weight: &str,
        config: &TextConfig,
    ) -> (String, String) {
        let mut outputs = self.node(
            "SkipSimplifiedLayerNormalization",
            name,
            &[input, skip, weight],
            4,
            vec![eps_attr(config)],
        );
        outputs[1].clear();
        outputs[2].clear();
        if let Some(node) = self.nodes.last_mut() {
            node.output.clone_from(&outputs);
        }
        (
            std::mem::take(&mut outputs[0]),
            std::mem::take(&mut outputs[3]),
        )
    }

    /// A small constant held in the model file itself.
    fn constant_i64(&mut self, name: &str, dims: &[i64], values: &[i64]) -> String {
        self.initializers.push(TensorProto {
            dims: dims.to_vec(),
            data_type: data_type::INT64,
            name: name.to_owned(),
            raw_data: values
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect(),
            ..TensorProto::default()
        });
        name.to_owned()
    }

    /// A weight in the external data file.
    fn weight(
        &mut self,
        name: &str,
        dims: &[usize],
        elem_type: i32,
        bytes: &[u8],
    ) -> Result<String, BuildError> {
        let tensor = self.weights.write(name, dims, elem_type, bytes)?;
        self.initializers.push(tensor);
        Ok(name.to_owned())
    }

    /// A float weight, in the graph's float type.
    fn weight_float(
        &mut self,
        name: &str,
        dims: &[usize],
        values: &[f32],
    ) -> Result<String, BuildError> {
        let bytes: Vec<u8> = if self.float == data_type::FLOAT16 {
            values
                .iter()
                .flat_map(|value| half::f16::from_f32(*value).to_le_bytes())
                .collect()
        } else {
            values
                .iter()
                .flat_map(|value| value.to_le_bytes())
                .collect()
        };
        self.weight(name, dims, self.float, &bytes)
    }

    /// `input` cast to `to` at the edge of a half-precision graph, whose inputs and logits are f32;
    /// in the other graphs, whose activations are f32 throughout, `input` itself.
    fn cast(&mut self, name: &str, input: &str, to: i32) -> String {
        if self.float == data_type::FLOAT {
            return input.to_owned();
        }
        self.one(
            "Cast",
            name,
            &[input],
            vec![("to", Attribute::Int(i64::from(to)))],
        )
    }

    /// `input` times the linear layer `weight` (`[n, k]`, out by in, as checkpoints store it), in the
    /// build's precision: a MatMul by its transpose (fp32, fp16), or Lookout's `QuantizedLinear` (int8,
    /// int4), the quantized weights in `MatMulNBits`' layout.
    fn linear(
        &mut self,
        name: &str,
        input: &str,
        weight: &[f32],
        n: usize,
        k: usize,
    ) -> Result<String, BuildError> {
        let bits = match self.precision {
            Precision::Fp32 | Precision::Fp16 => {
                let mut transposed = vec![0f32; n * k];
                for (row, values) in weight.chunks_exact(k).enumerate() {
                    for (column, value) in values.iter().enumerate() {
                        transposed[column * n + row] = *value;
                    }
                }
                let b = self.weight_float(&format!("{name}.weight"), &[k, n], &transposed)?;
                return Ok(self.one("MatMul", name, &[input, &b], vec![]));
            }
            Precision::Int8 => Bits::Eight,
            Precision::Int4 => Bits::Four,
        };
        let quantized = quantize(weight, n, k, bits);
        let bytes_per_block = BLOCK * bits.count() / 8;
        let b = self.weight(
            &format!("{name}.weight_q"),
            &[n, quantized.blocks, bytes_per_block],
            data_type::UINT8,
            &quantized.data,
        )?;
        let scales = self.weight_float(
            &format!("{name}.scales"),
            &[n * quantized.blocks],
            &quantized.scales,
        )?;
        Ok(self.one(
            linear::NAME,
            name,
            &[input, &b, &scales],
            vec![("bits", Attribute::Int(bits.count() as i64))],
        ))
    }
}

/// The rotary embedding's cos and sin caches, `[positions, head_dim / 2]`, computed in f32 as
/// transformers' Llama does: `inv_freq = 1 / theta^(2i / head_dim)`, angle = position * inv_freq.
fn rotary_caches(config: &TextConfig) -> (Vec<f32>, Vec<f32>) {
    let half = config.head_dim / 2;
    let inv_freq: Vec<f32> = (0..half)
        .map(|i| {
            1.0 / config
                .rope_theta
                .powf((2 * i) as f32 / config.head_dim as f32)
        })
        .collect();
    let mut cos = Vec::with_capacity(config.max_positions * half);
    let mut sin = Vec::with_capacity(config.max_positions * half);
    for position in 0..config.max_positions {
        for frequency in &inv_freq {
            let angle = position as f32 * frequency;
            cos.push(angle.cos());
            sin.push(angle.sin());
        }
    }
    (cos, sin)
}

/// The names of a layer's cache tensors, as the official export names them.
fn cache_names(layer: usize) -> [(String, String); 2] {
    ["key", "value"].map(|kind| {
        (
            format!("past_key_values.{layer}.{kind}"),
            format!("present.{layer}.{kind}"),
        )
    })
}

/// Builds the decoder graph of `config` from `checkpoint`, its weights written to `weights`.
pub fn decoder(
    config: &TextConfig,
    checkpoint: &Checkpoint<'_>,
    precision: Precision,
    weights: &mut WeightsFile,
) -> Result<GraphProto, BuildError> {
    let float = match precision {
        Precision::Fp16 => data_type::FLOAT16,
        Precision::Fp32 | Precision::Int8 | Precision::Int4 => data_type::FLOAT,
    };
    let mut b = Builder {
        nodes: Vec::new(),
        initializers: Vec::new(),
        weights,
        precision,
        float,
    };
    let TextConfig {
        hidden,
        intermediate,
        heads,
        kv_heads,
        head_dim,
        vocab,
        ..
    } = *config;
    let p = config.prefix;

    // The mask's row sums less one (each sequence's last valid position) and its width.
    let axis1 = b.constant_i64("const.axis1", &[1], &[1]);
    let one = b.constant_i64("const.one", &[], &[1]);
    let index1 = b.constant_i64("const.index1", &[], &[1]);
    let sums = b.one(
        "ReduceSum",
        "mask.sum",
        &["attention_mask", &axis1],
        vec![("keepdims", Attribute::Int(0))],
    );
    let last = b.one("Sub", "mask.last", &[&sums, &one], vec![]);
    let seqlens_k = b.one(
        "Cast",
        "mask.seqlens_k",
        &[&last],
        vec![("to", Attribute::Int(data_type::INT32 as i64))],
    );
    let shape = b.one("Shape", "mask.shape", &["attention_mask"], vec![]);
    let width = b.one(
        "Gather",
        "mask.width",
        &[&shape, &index1],
        vec![("axis", Attribute::Int(0))],
    );
    let total = b.one(
        "Cast",
        "mask.total",
        &[&width],
        vec![("to", Attribute::Int(data_type::INT32 as i64))],
    );

    let (cos, sin) = rotary_caches(config);
    let half = head_dim / 2;
    let cos = b.weight_float("rotary.cos", &[config.max_positions, half], &cos)?;
    let sin = b.weight_float("rotary.sin", &[config.max_positions, half], &sin)?;

    let q_size = heads * head_dim;
    let kv_size = kv_heads * head_dim;
    let embeds = b.cast("inputs_embeds.cast", "inputs_embeds", data_type::FLOAT16);
    let mut stream = embeds.clone();
    let mut residual: Option<String> = None;
    for layer in 0..config.layers {
        let l = format!("{p}layers.{layer}.");
        let name = format!("layers.{layer}");
        let norm = checkpoint.tensor(&format!("{l}input_layernorm.weight"), &[hidden])?;
        let norm = b.weight_float(&format!("{name}.input_layernorm.weight"), &[hidden], &norm)?;
        let (normed, sum) = match &residual {
            None => {
                let out = b.one(
                    "SimplifiedLayerNormalization",
                    &format!("{name}.input_layernorm"),
                    &[&stream, &norm],
                    vec![
                        eps_attr(config),
                        ("axis", Attribute::Int(-1)),
                        ("stash_type", Attribute::Int(1)),
                    ],
                );
                (out, stream.clone())
            }
            Some(residual) => b.skip_norm(
                &format!("{name}.input_layernorm"),
                &stream,
                residual,
                &norm,
                config,
            ),
        };

        let mut qkv =
            checkpoint.tensor(&format!("{l}self_attn.q_proj.weight"), &[q_size, hidden])?;
        qkv.extend(checkpoint.tensor(&format!("{l}self_attn.k_proj.weight"), &[kv_size, hidden])?);
        qkv.extend(checkpoint.tensor(&format!("{l}self_attn.v_proj.weight"), &[kv_size, hidden])?);
        let qkv = b.linear(
            &format!("{name}.qkv_proj"),
            &normed,
            &qkv,
            q_size + 2 * kv_size,
            hidden,
        )?;
        let [(past_key, present_key), (past_value, present_value)] = cache_names(layer);
        let heads_attributes = vec![
            ("num_heads", Attribute::Int(heads as i64)),
            ("kv_num_heads", Attribute::Int(kv_heads as i64)),
        ];
        // An f32 cache: Lookout's own attention operator; a half-precision one (a graph meant for
        // accelerators): ONNX Runtime's GroupQueryAttention.
        let attention = if precision == Precision::Fp16 {
            let mut attributes = heads_attributes;
            attributes.extend([
                ("do_rotary", Attribute::Int(1)),
                ("rotary_interleaved", Attribute::Int(0)),
            ]);
            b.node(
                "GroupQueryAttention",
                &format!("{name}.attention"),
                &[
                    &qkv,
                    "",
                    "",
                    &past_key,
                    &past_value,
                    &seqlens_k,
                    &total,
                    &cos,
                    &sin,
                ],
                3,
                attributes,
            )
        } else {
            b.node(
                attention::NAME,
                &format!("{name}.attention"),
                &[&qkv, &past_key, &past_value, &seqlens_k, &cos, &sin],
                3,
                heads_attributes,
            )
        };
        rename_output(&mut b.nodes, 1, &present_key);
        rename_output(&mut b.nodes, 2, &present_value);
        let o = checkpoint.tensor(&format!("{l}self_attn.o_proj.weight"), &[hidden, q_size])?;
        let attended = b.linear(&format!("{name}.o_proj"), &attention[0], &o, hidden, q_size)?;

        let norm = checkpoint.tensor(&format!("{l}post_attention_layernorm.weight"), &[hidden])?;
        let norm = b.weight_float(
            &format!("{name}.post_attention_layernorm.weight"),
            &[hidden],
            &norm,
        )?;
        let (normed, sum) = b.skip_norm(
            &format!("{name}.post_attention_layernorm"),
            &attended,
            &sum,
            &norm,
            config,
        );

        let mut gate_up =
            checkpoint.tensor(&format!("{l}mlp.gate_proj.weight"), &[intermediate, hidden])?;
        gate_up
            .extend(checkpoint.tensor(&format!("{l}mlp.up_proj.weight"), &[intermediate, hidden])?);
        let gate_up = b.linear(
            &format!("{name}.gate_up_proj"),
            &normed,
            &gate_up,
            2 * intermediate,
            hidden,
        )?;
        // SiLU of the gate times up: Lookout's one-pass operator on f32 activations, ONNX Runtime's
        // Sigmoid and Muls on half-precision ones (accelerators).
        let product = if precision == Precision::Fp16 {
            let halves = b.node(
                "Split",
                &format!("{name}.mlp.split"),
                &[&gate_up],
                2,
                vec![
                    ("axis", Attribute::Int(-1)),
                    ("num_outputs", Attribute::Int(2)),
                ],
            );
            let sigmoid = b.one(
                "Sigmoid",
                &format!("{name}.mlp.sigmoid"),
                &[&halves[0]],
                vec![],
            );
            let silu = b.one(
                "Mul",
                &format!("{name}.mlp.silu"),
                &[&halves[0], &sigmoid],
                vec![],
            );
            b.one(
                "Mul",
                &format!("{name}.mlp.product"),
                &[&silu, &halves[1]],
                vec![],
            )
        } else {
            b.one(
                swiglu::NAME,
                &format!("{name}.mlp.swiglu"),
                &[&gate_up],
                vec![],
            )
        };
        let down =
            checkpoint.tensor(&format!("{l}mlp.down_proj.weight"), &[hidden, intermediate])?;
        stream = b.linear(
            &format!("{name}.down_proj"),
            &product,
            &down,
            hidden,
            intermediate,
        )?;
        residual = Some(sum);
    }

    // Only the last `num_logits_to_keep` positions reach the final norm and the LM head.
    let axes0 = b.constant_i64("const.axes0", &[1], &[0]);
    let end = b.constant_i64("const.end", &[1], &[i64::MAX]);
    let keep = b.one(
        "Unsqueeze",
        "logits.keep",
        &["num_logits_to_keep", &axes0],
        vec![],
    );
    let start = b.one("Neg", "logits.start", &[&keep], vec![]);
    let residual = residual.unwrap_or(embeds);
    let kept_stream = b.one(
        "Slice",
        "logits.stream",
        &[&stream, &start, &end, &axis1],
        vec![],
    );
    let kept_residual = b.one(
        "Slice",
        "logits.residual",
        &[&residual, &start, &end, &axis1],
        vec![],
    );
    let norm = checkpoint.tensor(&format!("{p}norm.weight"), &[hidden])?;
    let norm = b.weight_float("norm.weight", &[hidden], &norm)?;
    let (normed, _) = b.skip_norm("norm", &kept_stream, &kept_residual, &norm, config);
    let head_name = if config.tied_head {
        format!("{p}embed_tokens.weight")
    } else {
        "lm_head.weight".to_owned()
    };
    let head = checkpoint.tensor(&head_name, &[vocab, hidden])?;
    let logits = b.linear("lm_head", &normed, &head, vocab, hidden)?;
    b.cast("logits.cast", &logits, data_type::FLOAT);
    rename_output(&mut b.nodes, 0, "logits");

    let batch = Dim::Named("batch_size");
    let cache_dims = [
        batch.clone(),
        Dim::Fixed(kv_heads),
        Dim::Named("capacity"),
        Dim::Fixed(head_dim),
    ];
    let mut input = vec![
        value_info(
            "inputs_embeds",
            data_type::FLOAT,
            &[
                batch.clone(),
                Dim::Named("sequence_length"),
                Dim::Fixed(hidden),
            ],
        ),
        value_info(
            "attention_mask",
            data_type::INT64,
            &[batch.clone(), Dim::Named("total_sequence_length")],
        ),
        value_info("num_logits_to_keep", data_type::INT64, &[]),
    ];
    let mut output = vec![value_info(
        "logits",
        data_type::FLOAT,
        &[batch.clone(), Dim::Named("logits_kept"), Dim::Fixed(vocab)],
    )];
    for layer in 0..config.layers {
        for (past, present) in cache_names(layer) {
            input.push(value_info(&past, float, &cache_dims));
            output.push(value_info(&present, float, &cache_dims));
        }
    }
    Ok(GraphProto {
        node: b.nodes,
        name: "lookout_decoder".to_owned(),
        initializer: b.initializers,
        input,
        output,
    })
}

fn eps_attr(config: &TextConfig) -> (&'static str, Attribute) {
    ("epsilon", Attribute::Float(config.rms_norm_eps))
}

/// Gives the last node's output `index` the graph-level name `name`.
fn rename_output(nodes: &mut [NodeProto], index: usize, name: &str) {
    if let Some(node) = nodes.last_mut() {
        node.output[index] = name.to_owned();
    }
}
