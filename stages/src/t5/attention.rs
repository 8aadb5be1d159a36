//! T5 attention: unscaled dot products plus a learned relative-position bias (first layer of
//! each stack computes it, the others reuse it), run through `scaled_dot_product_attention`
//! with bias and mask as one float mask, or written out where that is faster
//! ([`writes_out`]). Decoding keeps keys and values in an explicit [`KvCache`] passed by
//! `&mut`.

use std::cell::RefCell;

use tch::{nn, Device, Kind, Tensor};

use super::config::T5Config;
use super::lora::{Lora, PROJECTIONS};
use crate::runtime::AttentionBackend;

/// Keys and values of one decoder layer: self-attention grows a step at a time (or, in a fixed
/// cache, is written in place at `position`), cross-attention is computed once from the encoder
/// output.
#[derive(Debug, Default)]
pub struct LayerCache {
    self_kv: Option<(Tensor, Tensor)>,
    cross_kv: Option<(Tensor, Tensor)>,
    /// For a fixed cache: the position the next step writes (one int64 on the device).
    position: Option<Tensor>,
}

/// The decoder's cache for incremental decoding, one entry per layer.
#[derive(Debug, Default)]
pub struct KvCache {
    /// Per decoder layer.
    pub layers: Vec<LayerCache>,
}

impl KvCache {
    /// An empty cache for `layers` decoder layers.
    pub fn new(layers: usize) -> Self {
        KvCache { layers: (0..layers).map(|_| LayerCache::default()).collect() }
    }

    /// A cache of fixed size for `len` positions of `shape` = (rows, heads, d_kv) per layer:
    /// each step writes its keys and values in place at [`KvCache::position`] (then moved on by
    /// the caller) and attends to all `len` positions, the later ones masked — so every step
    /// has the same shapes and reads nothing back, as a CUDA graph needs.
    pub fn fixed(layers: usize, (rows, heads, d_kv): (i64, i64, i64), len: i64, kind: Kind, device: Device) -> Self {
        let position = Tensor::zeros([1], (Kind::Int64, device));
        let buffer = || Tensor::zeros([rows, heads, len, d_kv], (kind, device));
        KvCache {
            layers: (0..layers)
                .map(|_| LayerCache {
                    self_kv: Some((buffer(), buffer())),
                    cross_kv: None,
                    position: Some(position.shallow_clone()),
                })
                .collect(),
        }
    }

    /// A fixed cache's write position (shared by its layers; the caller advances it in place).
    pub fn position(&self) -> Option<&Tensor> {
        self.layers.first().and_then(|l| l.position.as_ref())
    }

    /// Decoder positions already cached (a fixed cache: all it holds).
    pub fn len(&self) -> i64 {
        self.layers.first().and_then(|l| l.self_kv.as_ref()).map_or(0, |(k, _)| k.size()[2])
    }

    /// Keeps only batch rows `rows` (finished sequences leave; beams reorder).
    pub fn select(&mut self, rows: &Tensor) {
        let pick = |kv: &mut Option<(Tensor, Tensor)>| {
            if let Some((k, v)) = kv.take() {
                *kv = Some((k.index_select(0, rows), v.index_select(0, rows)));
            }
        };
        for l in &mut self.layers {
            pick(&mut l.self_kv);
            pick(&mut l.cross_kv);
        }
    }
}

/// Whether attention is written out (scores, an fp32 softmax, the weighted sum) rather than
/// handed to libtorch's fused kernel, for queries `q` under `backend`: `auto` writes it out on
/// the CPU in bf16 or for one query at a time (decoding; see [`AttentionBackend::Auto`]).
pub fn writes_out(backend: AttentionBackend, q: &Tensor) -> bool {
    match backend {
        AttentionBackend::Sdpa => false,
        AttentionBackend::Explicit => true,
        AttentionBackend::Auto => q.device() == Device::Cpu && (q.kind() == Kind::BFloat16 || q.size()[2] == 1),
    }
}

/// The key lengths CUDA's memory-efficient attention takes without padding its mask first (a
/// copy of the mask expanded to every row and head, per call): callers that choose their
/// lengths (the fixed decoding cache, CUDA generation batches) round up to it.
pub const KEY_MULTIPLE: usize = 16;

/// The kernel libtorch's `scaled_dot_product_attention` picks for these inputs (its
/// `_fused_sdp_choice`), as T5 calls it: unscaled, not causal, the bias as a float mask.
pub fn attention_kernel(q: &Tensor, kv: &Tensor, mask: &Tensor, dropout: f64) -> &'static str {
    // ATen's `SDPBackend` numbering.
    match Tensor::internal_fused_sdp_choice(q, kv, kv, Some(mask), dropout, false, Some(1.0), false) {
        0 => "math",
        1 => "flash",
        2 => "efficient",
        3 => "cudnn",
        _ => "other",
    }
}

/// The bias every layer of a stack adds to its attention scores (relative positions plus mask,
/// or a cross-attention mask), cast once per forward pass to the precision the layers ask for.
/// Each layer used to cast it itself: under autocast on CUDA the fp32 bias of a 16,384-token
/// batch went to bf16 once per layer, and backward cast each layer's gradient back to fp32 and
/// summed the twelve there — about 10 GB of memory traffic per step for the encoder alone.
/// Cast once, the layers' gradients meet in the compute precision and go back in one cast.
pub struct LayerBias {
    bias: Tensor,
    cast: RefCell<Option<Tensor>>,
}

impl LayerBias {
    /// A bias for the layers of one forward pass.
    pub fn new(bias: Tensor) -> Self {
        LayerBias { bias, cast: RefCell::new(None) }
    }

    /// The bias in `kind`: itself, or its cast, made at the first layer that asks.
    fn as_kind(&self, kind: Kind) -> Tensor {
        if self.bias.kind() == kind {
            return self.bias.shallow_clone();
        }
        let mut cast = self.cast.borrow_mut();
        match &*cast {
            Some(t) if t.kind() == kind => t.shallow_clone(),
            _ => {
                let t = self.bias.to_kind(kind);
                *cast = Some(t.shallow_clone());
                t
            }
        }
    }
}

/// Which cache slot an attention layer uses.
pub enum CacheSlot<'a> {
    /// No cache (encoder, training).
    None,
    /// Decoder self-attention: append this step's keys and values.
    SelfAttn(&'a mut LayerCache),
    /// Decoder cross-attention: compute once, then reuse.
    Cross(&'a mut LayerCache),
}

/// One T5 attention module (`SelfAttention` or `EncDecAttention`).
#[derive(Debug)]
pub struct Attention {
    q: nn::Linear,
    k: nn::Linear,
    v: nn::Linear,
    o: nn::Linear,
    /// Low-rank adapters on q, k, v, o (in that order), when LoRA is applied.
    lora: [Option<Lora>; 4],
    relative_bias: Option<nn::Embedding>,
    n_heads: i64,
    d_kv: i64,
    bidirectional: bool,
    num_buckets: i64,
    max_distance: i64,
    dropout: f64,
}

fn linear(path: nn::Path, i: i64, o: i64, std: f64) -> nn::Linear {
    let ws = path.var("weight", &[o, i], nn::Init::Randn { mean: 0.0, stdev: std });
    nn::Linear { ws, bs: None }
}

impl Attention {
    /// An attention module at `path`; `relative_bias` for the first layer of a stack.
    pub fn new(path: nn::Path, c: &T5Config, is_decoder: bool, relative_bias: bool) -> Self {
        let inner = c.num_heads * c.d_kv;
        // transformers' initialization, so random-init models match theirs in scale.
        let d = c.d_model as f64;
        let relative_bias = relative_bias.then(|| {
            let cfg = nn::EmbeddingConfig {
                ws_init: nn::Init::Randn { mean: 0.0, stdev: d.powf(-0.5) },
                ..Default::default()
            };
            nn::embedding(&path / "relative_attention_bias", c.relative_attention_num_buckets, c.num_heads, cfg)
        });
        Attention {
            q: linear(&path / "q", c.d_model, inner, (d * c.d_kv as f64).powf(-0.5)),
            k: linear(&path / "k", c.d_model, inner, d.powf(-0.5)),
            v: linear(&path / "v", c.d_model, inner, d.powf(-0.5)),
            o: linear(&path / "o", inner, c.d_model, (inner as f64).powf(-0.5)),
            lora: Default::default(),
            relative_bias,
            n_heads: c.num_heads,
            d_kv: c.d_kv,
            bidirectional: !is_decoder,
            num_buckets: c.relative_attention_num_buckets,
            max_distance: c.relative_attention_max_distance,
            dropout: c.dropout_rate,
        }
    }

    /// Sets the attention-probability dropout.
    pub fn set_dropout(&mut self, p: f64) {
        self.dropout = p;
    }

    /// Adds an adapter to projection `name` (`q`, `k`, `v` or `o`); returns its base layer's
    /// (in, out) features.
    pub fn add_lora(&mut self, name: &str, make: impl FnOnce(i64, i64) -> Lora) -> Option<(i64, i64)> {
        let i = PROJECTIONS.iter().position(|p| *p == name)?;
        let (out_f, in_f) = self.base(i).ws.size2().expect("2-d weight");
        self.lora[i] = Some(make(in_f, out_f));
        Some((in_f, out_f))
    }

    fn base(&self, i: usize) -> &nn::Linear {
        [&self.q, &self.k, &self.v, &self.o][i]
    }

    /// Folds each adapter into its base weight (`W += scale · B A`, in the weight's precision)
    /// and removes it: the same projection at inference, without the adapter's two extra
    /// products. The weights change in place (in their variable store too).
    pub fn fold_lora(&mut self) {
        for i in 0..PROJECTIONS.len() {
            if let Some(l) = self.lora[i].take() {
                let w = &self.base(i).ws;
                tch::no_grad(|| {
                    let _ = w.shallow_clone().g_add_(&l.delta().to_kind(w.kind()));
                });
            }
        }
    }

    /// Projection `i` of `x`: the base layer plus its adapter.
    fn project(&self, i: usize, x: &Tensor, train: bool) -> Tensor {
        use tch::nn::Module;
        let y = self.base(i).forward(x);
        match &self.lora[i] {
            Some(l) => y + l.forward(x, train),
            None => y,
        }
    }

    /// Relative position → bucket, as Mesh TensorFlow and transformers compute it.
    fn bucket(&self, relative: &Tensor) -> Tensor {
        let mut num_buckets = self.num_buckets;
        let mut buckets = relative.zeros_like();
        let relative = if self.bidirectional {
            num_buckets /= 2;
            buckets += relative.gt(0).to_kind(Kind::Int64) * num_buckets;
            relative.abs()
        } else {
            -relative.clamp_max(0)
        };
        let max_exact = num_buckets / 2;
        let is_small = relative.lt(max_exact);
        let large = (relative.to_kind(Kind::Float) / max_exact as f64).log()
            / (self.max_distance as f64 / max_exact as f64).ln()
            * (num_buckets - max_exact) as f64;
        let large = (large.to_kind(Kind::Int64) + max_exact).clamp_max(num_buckets - 1);
        buckets + relative.where_self(&is_small, &large)
    }

    /// The bias `(1, heads, q_len, k_len)` for queries starting at position `offset`.
    pub fn compute_bias(&self, q_len: i64, k_len: i64, offset: i64) -> Tensor {
        let device = self.bias_device();
        let context = Tensor::arange(q_len, (Kind::Int64, device)).unsqueeze(1) + offset;
        self.bias_from(&context, k_len)
    }

    /// The bias `(1, heads, 1, k_len)` for one query at `position` (one int64 on the device).
    pub fn compute_bias_at(&self, position: &Tensor, k_len: i64) -> Tensor {
        self.bias_from(&position.view([1, 1]), k_len)
    }

    fn bias_device(&self) -> Device {
        self.relative_bias.as_ref().expect("only the first layer computes the bias").ws.device()
    }

    /// The bias for query positions `context` `(q, 1)` against keys `0..k_len`, contiguous:
    /// the embedding gives `(q, k, heads)`, and a permuted view of it would leave the key
    /// dimension strided by `heads` — in the bias and in every sum made from it. CUDA's fused
    /// attention kernels (memory-efficient, cuDNN) refuse a mask whose last dimension is not
    /// contiguous, and libtorch then falls back to its math path, which on CUDA computes bf16
    /// attention in fp32 (casts of queries, keys and values, fp32 products).
    fn bias_from(&self, context: &Tensor, k_len: i64) -> Tensor {
        let emb = self.relative_bias.as_ref().expect("only the first layer computes the bias");
        let memory = Tensor::arange(k_len, (Kind::Int64, self.bias_device())).unsqueeze(0);
        let buckets = self.bucket(&(memory - context));
        buckets.apply(emb).permute([2, 0, 1]).contiguous().unsqueeze(0)
    }

    fn heads(&self, x: &Tensor) -> Tensor {
        let (b, t, _) = x.size3().expect("(batch, time, features)");
        x.view([b, t, self.n_heads, self.d_kv]).transpose(1, 2)
    }

    /// Attends from `x` to itself (or to `kv_source` for cross-attention). `bias` is the
    /// relative-position bias plus mask, broadcastable to `(batch, heads, q, k)`.
    pub fn forward(
        &self,
        x: &Tensor,
        kv_source: Option<&Tensor>,
        bias: &LayerBias,
        cache: CacheSlot,
        backend: AttentionBackend,
        train: bool,
    ) -> Tensor {
        let (b, t, _) = x.size3().expect("(batch, time, features)");
        let q = self.heads(&self.project(0, x, train));
        let project =
            |src: &Tensor| (self.heads(&self.project(1, src, train)), self.heads(&self.project(2, src, train)));
        let (k, v) = match cache {
            CacheSlot::None => project(kv_source.unwrap_or(x)),
            CacheSlot::SelfAttn(layer) if layer.position.is_some() => {
                let (k, v) = project(x);
                let (kb, vb) = layer.self_kv.as_ref().expect("a fixed cache is allocated");
                let at = layer.position.as_ref().expect("just checked");
                let _ = kb.shallow_clone().index_copy_(2, at, &k);
                let _ = vb.shallow_clone().index_copy_(2, at, &v);
                (kb.shallow_clone(), vb.shallow_clone())
            }
            CacheSlot::SelfAttn(layer) => {
                let (k, v) = project(x);
                let (k, v) = match layer.self_kv.take() {
                    Some((pk, pv)) => (Tensor::cat(&[pk, k], 2), Tensor::cat(&[pv, v], 2)),
                    None => (k, v),
                };
                layer.self_kv = Some((k.shallow_clone(), v.shallow_clone()));
                (k, v)
            }
            CacheSlot::Cross(layer) => {
                if layer.cross_kv.is_none() {
                    // Stored contiguous: every decoding step reads them, and a strided layout
                    // would be copied again at each step.
                    let (k, v) = project(kv_source.expect("cross-attention has a source"));
                    layer.cross_kv = Some((k.contiguous(), v.contiguous()));
                }
                let (k, v) = layer.cross_kv.as_ref().expect("just set");
                (k.shallow_clone(), v.shallow_clone())
            }
        };
        // T5 does not scale scores by 1/sqrt(d_kv): scale = 1.
        let p = if train { self.dropout } else { 0.0 };
        let out = if writes_out(backend, &q) {
            let scores = q.matmul(&k.transpose(-1, -2)).to_kind(Kind::Float) + bias.as_kind(Kind::Float);
            scores.softmax(-1, Kind::Float).dropout(p, train).to_kind(q.kind()).matmul(&v)
        } else {
            let mask = bias.as_kind(q.kind());
            Tensor::scaled_dot_product_attention(&q, &k, &v, Some(&mask), p, false, Some(1.0), false)
        };
        self.project(3, &out.transpose(1, 2).reshape([b, t, self.n_heads * self.d_kv]), train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stacks_bias_is_cast_once_for_all_its_layers() {
        let bias = LayerBias::new(Tensor::randn([1, 2, 3, 3], (Kind::Float, Device::Cpu)));
        let own = bias.as_kind(Kind::Float);
        assert_eq!(own.data_ptr(), bias.bias.data_ptr(), "no cast to its own precision");
        let (first, second) = (bias.as_kind(Kind::BFloat16), bias.as_kind(Kind::BFloat16));
        assert_eq!(first.kind(), Kind::BFloat16);
        assert_eq!(first.data_ptr(), second.data_ptr(), "the later layers reuse the first cast");
    }
}
