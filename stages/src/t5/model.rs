//! T5ForConditionalGeneration: a shared embedding, an encoder stack, a decoder stack and the
//! language-model head (untied in FLAN-T5; tied and scaled by d_model^-0.5 in classic T5).
//! Variable names follow transformers', so its safetensors files load as they are.

use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use super::attention::{attention_kernel, writes_out, KvCache, LayerBias};
use super::block::{Block, BlockInputs};
use super::config::T5Config;
use super::layer_norm::LayerNorm;
use crate::runtime::AttentionBackend;

/// The most negative finite value of `kind`: masked attention scores.
pub fn mask_value(kind: Kind) -> f64 {
    match kind {
        Kind::BFloat16 => -3.3895313892515355e38,
        Kind::Half => -65504.0,
        _ => f32::MIN as f64,
    }
}

/// A stack of blocks with the final norm.
#[derive(Debug)]
pub struct Stack {
    /// The blocks, in order.
    pub blocks: Vec<Block>,
    final_norm: LayerNorm,
    dropout: f64,
}

impl Stack {
    fn new(path: nn::Path, c: &T5Config, is_decoder: bool) -> Self {
        let layers = if is_decoder { c.decoder_layers() } else { c.num_layers };
        let blocks = (0..layers).map(|i| Block::new(&path / "block" / i, c, is_decoder, i)).collect();
        Stack {
            blocks,
            final_norm: LayerNorm::new(&path / "final_layer_norm", c.d_model, c.layer_norm_epsilon),
            dropout: c.dropout_rate,
        }
    }

    fn forward(&self, embedded: &Tensor, inputs: &BlockInputs, mut cache: Option<&mut KvCache>) -> Tensor {
        let mut h = embedded.dropout(self.dropout, inputs.train);
        for (i, block) in self.blocks.iter().enumerate() {
            let layer = cache.as_deref_mut().map(|c| &mut c.layers[i]);
            h = block.forward(&h, inputs, layer);
        }
        self.final_norm.forward(&h).dropout(self.dropout, inputs.train)
    }
}

/// The encoder-decoder model.
#[derive(Debug)]
pub struct T5 {
    /// Its configuration.
    pub config: T5Config,
    shared: nn::Embedding,
    /// The encoder stack.
    pub encoder: Stack,
    /// The decoder stack.
    pub decoder: Stack,
    lm_head: Option<nn::Linear>,
    /// How attention is computed (`auto`: the fastest measured for the device; the stages set
    /// the process's [`crate::RuntimeOptions::attention`]).
    pub attention: AttentionBackend,
}

impl T5 {
    /// A model with transformers' random initialization, its variables under `path`.
    pub fn new(path: &nn::Path, config: T5Config) -> Self {
        let c = &config;
        let emb = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 1.0 }, ..Default::default() };
        let shared = nn::embedding(path / "shared", c.vocab_size, c.d_model, emb);
        let encoder = Stack::new(path / "encoder", c, false);
        let decoder = Stack::new(path / "decoder", c, true);
        let lm_head = (!c.tie_word_embeddings).then(|| nn::Linear {
            ws: (path / "lm_head").var("weight", &[c.vocab_size, c.d_model], nn::Init::Randn { mean: 0.0, stdev: 1.0 }),
            bs: None,
        });
        T5 { config, shared, encoder, decoder, lm_head, attention: AttentionBackend::Auto }
    }

    /// Sets every dropout rate (the config's `dropout_rate` otherwise).
    pub fn set_dropout(&mut self, p: f64) {
        self.config.dropout_rate = p;
        for stack in [&mut self.encoder, &mut self.decoder] {
            stack.dropout = p;
            stack.blocks.iter_mut().for_each(|b| b.set_dropout(p));
        }
    }

    fn device_kind(&self) -> (Device, Kind) {
        (self.shared.ws.device(), self.shared.ws.kind())
    }

    /// `(batch, 1, 1, src)` additive mask from a 1/0 attention mask.
    fn extended_mask(&self, mask: &Tensor) -> Tensor {
        let (_, kind) = self.device_kind();
        let keep: Tensor = mask.to_kind(kind);
        (-keep + 1.0).unsqueeze(1).unsqueeze(1) * mask_value(kind)
    }

    /// The encoder's self-attention bias `(batch, heads, src, src)`: relative positions plus the
    /// padding mask.
    fn encoder_bias(&self, attention_mask: &Tensor) -> Tensor {
        let s = attention_mask.size()[1];
        self.encoder.blocks[0].self_attn.compute_bias(s, s, 0) + self.extended_mask(attention_mask)
    }

    /// The decoder's self-attention bias for `t` new positions after those `cache` holds:
    /// relative positions plus the causal mask, `(1, heads, t, keys)`.
    fn decoder_bias(&self, t: i64, cache: Option<&KvCache>) -> Tensor {
        let (device, kind) = self.device_kind();
        let first = &self.decoder.blocks[0].self_attn;
        match cache.and_then(|c| c.position().map(|p| (p.shallow_clone(), c.len()))) {
            // A fixed cache: one query at the position it holds; later positions are masked.
            Some((position, k)) => {
                assert_eq!(t, 1, "a fixed cache decodes one token at a time");
                let later = Tensor::arange(k, (Kind::Int64, device)).gt_tensor(&position);
                first.compute_bias_at(&position, k) + (later.to_kind(kind) * mask_value(kind)).view([1, 1, 1, k])
            }
            None => {
                let offset = cache.map_or(0, |c| c.len());
                let k = offset + t;
                let causal = Tensor::ones([t, k], (kind, device)).triu(offset + 1) * mask_value(kind);
                first.compute_bias(t, k, offset) + causal.unsqueeze(0).unsqueeze(0)
            }
        }
    }

    /// Which kernel libtorch's `scaled_dot_product_attention` picks for each kind of attention
    /// in this model, on its device, with inputs in the compute precision `kind` and laid out
    /// as [`Attention::forward`](super::attention::Attention) lays them out. `training`: with
    /// the config's dropout and a bias that takes gradients (full fine-tuning); otherwise
    /// decoding, one query against a fixed cache. On CUDA `math` means the fallback that
    /// computes in fp32; the fused kernels are `efficient` and `cudnn`; `written out` is this
    /// model's own form ([`AttentionBackend`]).
    pub fn attention_kernels(&self, kind: Kind, training: bool) -> Vec<(&'static str, &'static str)> {
        let (device, _) = self.device_kind();
        let c = &self.config;
        let (b, s, t) = (2, 64, if training { 16 } else { 1 });
        let heads = |len: i64| {
            Tensor::randn([b, len, c.num_heads * c.d_kv], (kind, device))
                .view([b, len, c.num_heads, c.d_kv])
                .transpose(1, 2)
        };
        let p = if training { c.dropout_rate } else { 0.0 };
        // As the forward pass hands it over: cast to the products' precision, gradients flowing
        // into the relative-position embedding when training.
        let mask = |bias: Tensor| (if training { bias.detach().set_requires_grad(true) } else { bias }).to_kind(kind);
        let padding = Tensor::ones([b, s], (Kind::Int64, device));
        // The decoder's bias reads only the cache's position and length: one layer is enough.
        let cache = KvCache::fixed(1, (b, c.num_heads, c.d_kv), s, kind, device);
        let (self_q, self_kv) = if training { (heads(t), heads(t)) } else { (heads(1), heads(s).contiguous()) };
        let decoder_bias = if training { self.decoder_bias(t, None) } else { self.decoder_bias(1, Some(&cache)) };
        let cross_kv = heads(s).contiguous();
        // Where this model writes attention out, libtorch picks nothing.
        let kernel = |q: &Tensor, kv: &Tensor, bias: Tensor| {
            if writes_out(self.attention, q) {
                "written out"
            } else {
                attention_kernel(q, kv, &mask(bias), p)
            }
        };
        let mut kernels = vec![
            ("decoder self", kernel(&self_q, &self_kv, decoder_bias)),
            ("cross", kernel(&heads(t), &cross_kv, self.extended_mask(&padding))),
        ];
        if training {
            let x = heads(s);
            kernels.insert(0, ("encoder self", kernel(&x, &x, self.encoder_bias(&padding))));
        }
        kernels
    }

    /// Encoder output `(batch, src, d_model)` for token ids and their 1/0 mask.
    pub fn encode(&self, input_ids: &Tensor, attention_mask: &Tensor, train: bool) -> Tensor {
        self.encode_with(input_ids, self.encoder_bias(attention_mask), train)
    }

    /// Encoder output for token ids under a self-attention bias (relative positions and mask).
    fn encode_with(&self, input_ids: &Tensor, bias: Tensor, train: bool) -> Tensor {
        let bias = LayerBias::new(bias);
        let inputs = BlockInputs { self_bias: &bias, encoder: None, attention: self.attention, train };
        self.encoder.forward(&input_ids.apply(&self.shared), &inputs, None)
    }

    /// [`T5::encode`] (inference) a few rows at a time, each pass padded only to its own
    /// longest row and at most `max_tokens` padded tokens: on the CPU, passes that fit the
    /// caches are faster than one large pass (measured: 100 DialogSum dialogues, flan-t5-base
    /// shape, 2 cores, bf16: 14 s in 1k-token passes vs 24 s in one 16k-token pass). Rows do
    /// not interact and padding is masked, so the output is the same; positions past a row's
    /// end are zeros. Rows are expected longest first (the `generate` stage sorts them).
    pub fn encode_in_chunks(&self, input_ids: &Tensor, attention_mask: &Tensor, max_tokens: i64) -> Tensor {
        let (b, s) = input_ids.size2().expect("(batch, src)");
        let lengths: Vec<i64> = Vec::try_from(attention_mask.sum_dim_intlist(1, false, Kind::Int64)).expect("lengths");
        let mut parts = Vec::new();
        let mut r = 0;
        while r < b {
            let longest = lengths[r as usize..].iter().copied().max().unwrap_or(s).max(1);
            let n = (max_tokens / longest).clamp(1, b - r);
            let longest = lengths[r as usize..(r + n) as usize].iter().copied().max().unwrap_or(s).max(1);
            let ids = input_ids.narrow(0, r, n).narrow(1, 0, longest);
            let out = self.encode(&ids, &attention_mask.narrow(0, r, n).narrow(1, 0, longest), false);
            parts.push(out.constant_pad_nd([0, 0, 0, s - longest]));
            r += n;
        }
        Tensor::cat(&parts, 0)
    }

    /// Logits `(batch, tgt, vocab)` for decoder inputs; with a cache, the inputs continue the
    /// cached positions (one token at a time when generating).
    pub fn decode(
        &self,
        decoder_ids: &Tensor,
        encoder_out: &Tensor,
        attention_mask: &Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let bias = self.decoder_bias(decoder_ids.size()[1], cache.as_deref());
        self.decode_with(decoder_ids, encoder_out, bias, self.extended_mask(attention_mask), cache, train)
    }

    /// Logits for decoder inputs under a self-attention bias and a cross-attention mask.
    fn decode_with(
        &self,
        decoder_ids: &Tensor,
        encoder_out: &Tensor,
        bias: Tensor,
        enc_mask: Tensor,
        cache: Option<&mut KvCache>,
        train: bool,
    ) -> Tensor {
        let (bias, enc_mask) = (LayerBias::new(bias), LayerBias::new(enc_mask));
        let inputs =
            BlockInputs { self_bias: &bias, encoder: Some((encoder_out, &enc_mask)), attention: self.attention, train };
        let h = self.decoder.forward(&decoder_ids.apply(&self.shared), &inputs, cache);
        match &self.lm_head {
            Some(head) => head.forward(&h),
            // Classic T5 ties the head to the embedding and rescales.
            None => (h * (self.config.d_model as f64).powf(-0.5)).matmul(&self.shared.ws.tr()),
        }
    }

    /// Labels shifted right behind the decoder start token, ignored positions as padding.
    pub fn shift_right(&self, labels: &Tensor) -> Tensor {
        let b = labels.size()[0];
        let start = Tensor::full([b, 1], self.config.decoder_start_token_id, (Kind::Int64, labels.device()));
        let shifted = Tensor::cat(&[start, labels.narrow(1, 0, labels.size()[1] - 1)], 1);
        shifted.masked_fill(&shifted.eq(-100), self.config.pad_token_id)
    }

    /// Mean cross-entropy over label positions that are not -100, computed in fp32.
    pub fn loss(&self, input_ids: &Tensor, attention_mask: &Tensor, labels: &Tensor, train: bool) -> Tensor {
        let enc = self.encode(input_ids, attention_mask, train);
        let logits = self.decode(&self.shift_right(labels), &enc, attention_mask, None, train);
        self.mean_cross_entropy(&logits, labels)
    }

    /// [`T5::loss`] of packed rows: each row holds several examples one after the other, the
    /// positions of each numbered by `source_segments` and `label_segments` (1, 2, … within a
    /// row; 0 for padding). Every position attends only within its own example, and its labels
    /// only to its own source; T5's bias depends on relative positions only, so an example
    /// computes what it computes alone in a row of its own (the loss within float rounding:
    /// `packing_changes_rows_not_the_loss_or_gradients`).
    pub fn packed_loss(
        &self,
        input_ids: &Tensor,
        source_segments: &Tensor,
        labels: &Tensor,
        label_segments: &Tensor,
        train: bool,
    ) -> Tensor {
        let (s, t) = (input_ids.size()[1], labels.size()[1]);
        let encoder_bias = self.encoder.blocks[0].self_attn.compute_bias(s, s, 0)
            + self.segment_mask(source_segments, source_segments);
        let enc = self.encode_with(input_ids, encoder_bias, train);
        let decoder_bias = self.decoder_bias(t, None) + self.segment_mask(label_segments, label_segments);
        let cross = self.segment_mask(label_segments, source_segments);
        let decoder_ids = self.shift_right_in_segments(labels, label_segments);
        let logits = self.decode_with(&decoder_ids, &enc, decoder_bias, cross, None, train);
        self.mean_cross_entropy(&logits, labels)
    }

    /// `(batch, 1, q, k)` additive mask: query positions attend to keys of their own segment.
    /// Padding queries (segment 0) attend to everything, so that no row of scores is entirely
    /// masked (bf16 would turn it into NaN); nothing reads their outputs.
    fn segment_mask(&self, queries: &Tensor, keys: &Tensor) -> Tensor {
        let (_, kind) = self.device_kind();
        let q = queries.unsqueeze(2);
        let other = q.ne_tensor(&keys.unsqueeze(1)).logical_and(&q.ne(0));
        other.to_kind(kind).unsqueeze(1) * mask_value(kind)
    }

    /// [`T5::shift_right`] within each segment: every example's labels start again behind the
    /// decoder start token.
    fn shift_right_in_segments(&self, labels: &Tensor, segments: &Tensor) -> Tensor {
        let previous = segments.constant_pad_nd([1, 0]).narrow(1, 0, segments.size()[1]);
        self.shift_right(labels).masked_fill(&previous.ne_tensor(segments), self.config.decoder_start_token_id)
    }

    fn mean_cross_entropy(&self, logits: &Tensor, labels: &Tensor) -> Tensor {
        let v = self.config.vocab_size;
        logits.to_kind(Kind::Float).view([-1, v]).cross_entropy_loss::<Tensor>(
            &labels.view([-1]),
            None,
            Reduction::Mean,
            -100,
            0.0,
        )
    }
}

/// A seeded tiny model with a 100-token vocabulary, for unit tests.
#[cfg(test)]
pub(crate) fn tiny() -> (nn::VarStore, T5) {
    tch::manual_seed(0);
    let vs = nn::VarStore::new(Device::Cpu);
    let mut c = T5Config::preset("tiny").unwrap();
    c.vocab_size = 100;
    let m = T5::new(&vs.root(), c);
    (vs, m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch() -> (Tensor, Tensor, Tensor) {
        let x = Tensor::from_slice(&[5i64, 6, 7, 8, 9, 1, 11, 12, 1, 0, 0, 0]).view([2, 6]);
        let mask = x.ne(0).to_kind(Kind::Int64);
        let dec = Tensor::from_slice(&[0i64, 3, 4, 5, 6, 7, 0, 8, 9, 10, 11, 12]).view([2, 6]);
        (x, mask, dec)
    }

    #[test]
    fn step_by_step_decoding_with_the_cache_equals_a_full_forward() {
        let (_vs, m) = tiny();
        let (x, mask, dec) = batch();
        tch::no_grad(|| {
            let enc = m.encode(&x, &mask, false);
            let full = m.decode(&dec, &enc, &mask, None, false);
            let mut cache = KvCache::new(m.decoder.blocks.len());
            for t in 0..6 {
                let step = m.decode(&dec.narrow(1, t, 1), &enc, &mask, Some(&mut cache), false);
                let want = full.narrow(1, t, 1);
                // Relative to the logits' scale (random-init logits reach ~50).
                let diff = (step - &want).abs().max().double_value(&[]) / want.abs().max().double_value(&[]);
                assert!(diff < 1e-6, "step {t}: relative {diff}");
            }
            assert_eq!(cache.len(), 6);
        });
    }

    /// The speed paths change nothing but rounding: explicit attention vs libtorch's fused
    /// kernel, and the CPU's chunked encoder vs one pass (issue: numerics unchanged).
    #[test]
    fn the_fast_paths_give_the_plain_paths_results() {
        use crate::t5::decode::{generate, Strategy};
        let (_vs, mut m) = tiny();
        let (x, mask, dec) = batch();
        let rel = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
        tch::no_grad(|| {
            m.attention = AttentionBackend::Sdpa;
            let plain_loss = m.loss(&x, &mask, &dec, false).double_value(&[]);
            let plain_enc = m.encode(&x, &mask, false);
            let plain_logits = m.decode(&dec, &plain_enc, &mask, None, false);
            let plain_greedy = generate(&m, &x, &mask, 12, &Strategy::Greedy);
            m.attention = AttentionBackend::Explicit;
            let loss = m.loss(&x, &mask, &dec, false).double_value(&[]);
            assert!((loss - plain_loss).abs() < 1e-5 * plain_loss.abs(), "loss {loss} vs {plain_loss}");
            let logits = m.decode(&dec, &m.encode(&x, &mask, false), &mask, None, false);
            assert!(rel(&logits, &plain_logits) < 1e-6, "logits: relative {}", rel(&logits, &plain_logits));
            assert_eq!(generate(&m, &x, &mask, 12, &Strategy::Greedy), plain_greedy);
            // One row per pass, each padded to its own length; padded positions come back zero.
            let chunked = m.encode_in_chunks(&x, &mask, 1);
            let real = mask.unsqueeze(-1).to_kind(Kind::Float);
            assert!(rel(&(&chunked * &real), &(&plain_enc * &real)) < 1e-6);
            assert_eq!(chunked.narrow(0, 1, 1).narrow(1, 3, 3).abs().max().double_value(&[]), 0.0);
            m.attention = AttentionBackend::Auto;
            assert_eq!(generate(&m, &x, &mask, 12, &Strategy::Greedy), plain_greedy);
        });
    }

    /// Every attention bias reaches the kernels with contiguous keys, so CUDA runs its fused
    /// attention kernels on them. Before, the relative-position bias was a permuted view, and on
    /// CUDA every self-attention fell back to the math path in fp32 (72 fp32 matrix products
    /// and their casts per training step of flan-t5-base, in an H200 trace). The CPU accepts any
    /// layout, so there the test checks the layout; with CUDA, also the kernels libtorch picks.
    #[test]
    fn attention_biases_are_contiguous_so_cuda_runs_fused_kernels() {
        let (_vs, m) = tiny();
        let (_, mask, _) = batch();
        let last_stride = |t: &Tensor| *t.stride().last().unwrap();
        tch::no_grad(|| {
            assert_eq!(last_stride(&m.encoder_bias(&mask)), 1, "encoder");
            assert_eq!(last_stride(&m.decoder_bias(5, None)), 1, "decoder");
            let mut cache = KvCache::new(m.decoder.blocks.len());
            let enc = m.encode(&Tensor::ones([2, 6], (Kind::Int64, Device::Cpu)), &mask, false);
            let _ = m.decode(&Tensor::zeros([2, 3], (Kind::Int64, Device::Cpu)), &enc, &mask, Some(&mut cache), false);
            assert_eq!(last_stride(&m.decoder_bias(1, Some(&cache))), 1, "decoder, growing cache");
            let fixed = KvCache::fixed(2, (2, 4, 16), 8, Kind::Float, Device::Cpu);
            assert_eq!(last_stride(&m.decoder_bias(1, Some(&fixed))), 1, "decoder, fixed cache");
        });
        if !tch::Cuda::is_available() {
            eprintln!("no CUDA device: the attention kernels' choice is not checked");
            return;
        }
        let vs = nn::VarStore::new(Device::Cuda(0));
        let mut c = T5Config::preset("tiny").unwrap();
        c.vocab_size = 100;
        let m = T5::new(&vs.root(), c);
        for training in [true, false] {
            let kernels = m.attention_kernels(Kind::BFloat16, training);
            assert!(kernels.iter().all(|(_, k)| *k != "math"), "training {training}: {kernels:?}");
        }
    }

    #[test]
    fn dropout_only_in_training() {
        let (_vs, m) = tiny();
        let (x, mask, dec) = batch();
        let run = |train| m.loss(&x, &mask, &dec, train).double_value(&[]);
        assert_eq!(run(false), run(false));
        assert_ne!(run(true), run(true));
    }

    #[test]
    fn loss_ignores_padded_label_positions() {
        let (_vs, m) = tiny();
        let (x, mask, _) = batch();
        let x = x.narrow(0, 0, 1);
        let mask = mask.narrow(0, 0, 1);
        let labels = Tensor::from_slice(&[3i64, 4, 5, 1]).view([1, 4]);
        let padded = Tensor::from_slice(&[3i64, 4, 5, 1, -100, -100]).view([1, 6]);
        let a = m.loss(&x, &mask, &labels, false).double_value(&[]);
        let b = m.loss(&x, &mask, &padded, false).double_value(&[]);
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        // Padding with the pad id instead (the lab's bug) changes the loss.
        let pad_trained = Tensor::from_slice(&[3i64, 4, 5, 1, 0, 0]).view([1, 6]);
        assert!((m.loss(&x, &mask, &pad_trained, false).double_value(&[]) - a).abs() > 1e-3);
    }
}
