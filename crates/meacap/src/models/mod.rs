//! One file per network. Each has a `Config` deserialised from the checkpoint's own `config.json`
//! and modules whose field names mirror the checkpoint's keys, built from [`Weights`] the way
//! candle-transformers builds from a `VarBuilder`: `Block::load(&w.pp("h").pp(i), &cfg)`.
//! Every size comes from the config or the weights, so tiny test models and other sizes load too.

pub mod bert;
pub mod clip;
pub mod gpt2;
pub mod t5;
pub mod viecap;

use burn::prelude::*;
use burn::tensor::activation;

use std::sync::Arc;

use crate::{activations, norms};
use crate::device::is_cpu;
use crate::error::{Error, Result};
use crate::rowmatmul::PackedMatrix;
use crate::weights::Weights;

/// Parses a model's `config.json` into its config struct, naming the model on failure.
pub(crate) fn parse_config<T: serde::de::DeserializeOwned>(model: &str, bytes: &[u8]) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| Error::Config {
        model: model.to_string(),
        file: "config.json".to_string(),
        message: e.to_string(),
    })
}

/// A dense layer, `x · W (+ b)`.
#[derive(Clone, Debug)]
pub struct Linear {
    weight: LinearWeight,
    pub bias: Option<Tensor<1>>,
}

/// How a dense layer keeps `W [in, out]`: on the CPU backend packed for [`crate::rowmatmul`]'s
/// kernels (the only copy: the same memory as the tensor), elsewhere as a device tensor (an
/// output-major view, `[out, in]` storage transposed).
#[derive(Clone, Debug)]
enum LinearWeight {
    Packed(Arc<PackedMatrix>),
    Tensor(Tensor<2>),
}

impl Linear {
    /// PyTorch `nn.Linear`: `weight` is `[out, in]`. Also an output head tied to an embedding
    /// table `[vocab, d]` (see [`Self::tied_embedding`]).
    pub fn load(w: &Weights, d_in: usize, d_out: usize, bias: bool) -> Result<Self> {
        let weight = if is_cpu(w.device()) {
            // Sizes as stored: a 0 in a config means "any" to the shape check.
            let (data, shape) = w.get_host("weight", &[d_out, d_in])?;
            LinearWeight::Packed(Arc::new(PackedMatrix::from_output_major(data, shape[1], shape[0])))
        } else {
            LinearWeight::Tensor(w.get::<2>("weight", [d_out, d_in])?.transpose())
        };
        let bias = if bias { Some(w.get::<1>("bias", [d_out])?) } else { None };
        Ok(Self { weight, bias })
    }

    /// `nn.Linear` with the output size taken from the checkpoint (`[out, in]`).
    pub fn load_infer(w: &Weights, d_in: usize, bias: bool) -> Result<Self> {
        let d_out = w.shape("weight").and_then(|s| s.first().copied()).unwrap_or(0);
        Self::load(w, d_in, d_out, bias)
    }

    /// HF `Conv1D` (GPT-2): `weight` is `[in, out]`. On GPUs it is stored transposed (`[out, in]`,
    /// like `nn.Linear`) and used through a view, so every device weight has one layout.
    pub fn load_conv1d(w: &Weights, d_in: usize, d_out: usize) -> Result<Self> {
        let weight = if is_cpu(w.device()) {
            let (data, shape) = w.get_host("weight", &[d_in, d_out])?;
            LinearWeight::Packed(Arc::new(PackedMatrix::from_input_major(&data, shape[0], shape[1])))
        } else {
            LinearWeight::Tensor(w.get_transposed("weight", [d_in, d_out])?.transpose())
        };
        Ok(Self { weight, bias: Some(w.get::<1>("bias", [d_out])?) })
    }

    pub fn d_out(&self) -> usize {
        match &self.weight {
            LinearWeight::Packed(w) => w.d_out(),
            LinearWeight::Tensor(w) => w.dims()[1],
        }
    }

    /// The weights of output features `ids` `[batch, seq]` → `[batch, seq, in]`: the lookup of
    /// an embedding table this layer is tied to (GPT-2's `wte`), so the table is kept once.
    pub fn tied_embedding(&self, ids: Tensor<2, Int>) -> Tensor<3> {
        match &self.weight {
            LinearWeight::Packed(w) => {
                let [b, t] = ids.dims();
                // Ids come from tokenizers and decoding: within the vocabulary (an id past it
                // panics, as burn's `select` does).
                cpu_tensor(w.output_rows(&host_indices(ids)), [b, t, w.d_in()])
            }
            LinearWeight::Tensor(w) => embed(&w.clone().transpose(), ids),
        }
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_then(x, None)
    }

    /// `act(self.forward(x))`. On the CPU backend the activation runs in place on the layer's
    /// fresh output (one pass, no second buffer: a memory-build batch's 2,560 x 2,048 activations
    /// are 21 MB).
    pub fn forward_act<const D: usize>(&self, x: Tensor<D>, act: Activation) -> Tensor<D> {
        self.forward_then(x, Some(act))
    }

    fn forward_then<const D: usize>(&self, x: Tensor<D>, act: Option<Activation>) -> Tensor<D> {
        let mut dims = x.dims();
        let d_in = dims[D - 1];
        let rows: usize = dims[..D - 1].iter().product();
        let x = x.reshape([rows, d_in]);
        dims[D - 1] = self.d_out();
        let in_place = act.and_then(Activation::on_cpu);
        let (y, applied) = match &self.weight {
            LinearWeight::Packed(w) => match packed_on_cpu(&x, w, self.bias.as_ref(), in_place) {
                Some(y) => (y, in_place.is_some()),
                // Not an f32 CPU tensor (not something the models make): the weight unpacked
                // onto `x`'s device.
                None => {
                    let t = Tensor::<2>::from_data(TensorData::new(w.to_output_major(), [w.d_out(), w.d_in()]), &x.device());
                    (project_on_device(x, &t.transpose(), self.bias.as_ref()), false)
                }
            },
            LinearWeight::Tensor(w) => (project_on_device(x, w, self.bias.as_ref()), false),
        };
        let y = y.reshape(dims);
        match act {
            Some(act) if !applied => act.forward(y),
            _ => y,
        }
    }
}

/// `x [rows, d_in] · weight [d_in, d_out] (+ bias)` with burn's ops (GPUs).
fn project_on_device(x: Tensor<2>, weight: &Tensor<2>, bias: Option<&Tensor<1>>) -> Tensor<2> {
    let y = x.matmul(weight.clone());
    match bias {
        Some(b) => y + b.clone().unsqueeze::<2>(),
        None => y,
    }
}

/// `x · w (+ bias)` by [`crate::rowmatmul`]'s kernels, `then` applied in place to the result; `None`
/// unless `x` and `bias` are f32 CPU-backend tensors.
fn packed_on_cpu(x: &Tensor<2>, w: &PackedMatrix, bias: Option<&Tensor<1>>, then: Option<fn(&mut [f32])>) -> Option<Tensor<2>> {
    let [rows, _] = x.dims();
    let x = flex_f32_contiguous(x)?;
    let bias = match bias {
        Some(b) => Some(flex_f32_contiguous(b)?),
        None => None,
    };
    let bias = match &bias {
        Some(b) => Some(b.as_slice::<f32>()?),
        None => None,
    };
    let mut y = w.matmul(x.as_slice::<f32>()?, rows, bias);
    if let Some(f) = then {
        f(&mut y);
    }
    Some(cpu_tensor(y, [rows, w.d_out()]))
}

/// The CPU backend's tensor behind `x` when it is an f32 flex tensor (`None` on GPUs and for
/// other dtypes, which take burn's ops).
fn flex_f32<const D: usize>(x: &Tensor<D>) -> Option<burn::backend::flex::FlexTensor> {
    let t = x.clone().try_into_primitive::<burn::backend::Flex>().ok()?;
    (t.dtype() == burn::tensor::DType::F32).then_some(t)
}

/// [`flex_f32`], laid out contiguously (a copy only for views).
fn flex_f32_contiguous<const D: usize>(x: &Tensor<D>) -> Option<burn::backend::flex::FlexTensor> {
    let t = flex_f32(x)?;
    Some(if t.is_contiguous() { t } else { t.to_contiguous() })
}

/// A host result as a CPU-backend tensor (no copy).
fn cpu_tensor<const D: usize>(data: Vec<f32>, dims: [usize; D]) -> Tensor<D> {
    use burn::backend::{flex::FlexTensor, Flex};
    Tensor::from_primitive::<Flex>(FlexTensor::from_data(TensorData::new(data, dims)))
}

/// `f` applied on the host to a copy of `x` when `x` is on the CPU backend; `None` elsewhere or
/// when `f` declines (returns `None`).
fn on_cpu_copy<const D: usize>(x: &Tensor<D>, f: impl FnOnce(&mut [f32]) -> Option<()>) -> Option<Tensor<D>> {
    let mut y = flex_f32_contiguous(x)?.as_slice::<f32>()?.to_vec();
    f(&mut y)?;
    Some(cpu_tensor(y, x.dims()))
}

/// An elementwise function from [`activations`] applied on the host when `x` is on the CPU
/// backend; `None` elsewhere.
fn map_on_cpu<const D: usize>(x: &Tensor<D>, f: fn(&mut [f32])) -> Option<Tensor<D>> {
    on_cpu_copy(x, |y| Some(f(y)))
}

/// The CPU-backend tensor behind a vector of length `len` (`None` elsewhere or for another length).
fn cpu_vector(v: &Tensor<1>, len: usize) -> Option<burn::backend::flex::FlexTensor> {
    (v.dims()[0] == len).then(|| flex_f32_contiguous(v))?
}

/// LayerNorm over the last dimension (biased variance, as PyTorch).
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Tensor<1>,
    pub bias: Tensor<1>,
    pub eps: f64,
}

impl LayerNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        // Some old BERT checkpoints call them gamma/beta.
        let (wn, bn) = if !w.contains("weight") && w.contains("gamma") { ("gamma", "beta") } else { ("weight", "bias") };
        Ok(Self { weight: w.get::<1>(wn, [dim])?, bias: w.get::<1>(bn, [dim])?, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dim = x.dims()[D - 1];
        if let Some(y) = on_cpu_copy(&x, |y| Some(norms::layer_norm(y, cpu_vector(&self.weight, dim)?.as_slice()?, cpu_vector(&self.bias, dim)?.as_slice()?, self.eps as f32))) {
            return y;
        }
        let mean = x.clone().mean_dim(D - 1);
        let centered = x - mean;
        let var = centered.clone().powi_scalar(2).mean_dim(D - 1);
        let normed = centered / (var + self.eps).sqrt();
        normed * broadcast_last::<D>(&self.weight) + broadcast_last::<D>(&self.bias)
    }
}

/// T5's RMS norm: no mean subtraction, no bias.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Tensor<1>,
    pub eps: f64,
}

impl RmsNorm {
    pub fn load(w: &Weights, dim: usize, eps: f64) -> Result<Self> {
        Ok(Self { weight: w.get::<1>("weight", [dim])?, eps })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let dim = x.dims()[D - 1];
        if let Some(y) = on_cpu_copy(&x, |y| Some(norms::rms_norm(y, cpu_vector(&self.weight, dim)?.as_slice()?, self.eps as f32))) {
            return y;
        }
        let var = x.clone().powi_scalar(2).mean_dim(D - 1);
        x / (var + self.eps).sqrt() * broadcast_last::<D>(&self.weight)
    }
}

/// A `[n]` vector reshaped to `[1, .., 1, n]` for broadcasting against a rank-`D` tensor.
fn broadcast_last<const D: usize>(v: &Tensor<1>) -> Tensor<D> {
    let mut dims = [1usize; D];
    dims[D - 1] = v.dims()[0];
    v.clone().reshape(dims)
}

/// Rows of an embedding table for a `[batch, seq]` id tensor → `[batch, seq, dim]`.
pub fn embed(table: &Tensor<2>, ids: Tensor<2, Int>) -> Tensor<3> {
    let [b, t] = ids.dims();
    let d = table.dims()[1];
    table.clone().select(0, ids.reshape([b * t])).reshape([b, t, d])
}

/// Host ids → a `[batch, seq]` Int tensor (rows must have equal length).
pub fn ids_tensor(ids: &[Vec<u32>], device: &Device) -> Tensor<2, Int> {
    let b = ids.len();
    let t = ids.first().map_or(0, Vec::len);
    let flat: Vec<i64> = ids.iter().flat_map(|row| row.iter().map(|&x| x as i64)).collect();
    Tensor::<1, Int>::from_ints(flat.as_slice(), device).reshape([b, t])
}

/// Batch row indices → a `[rows]` Int tensor for `select(0, ...)`.
pub fn rows_tensor(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let rows: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::<1, Int>::from_ints(rows.as_slice(), device)
}

/// Host indices from an Int tensor of ids or rows (a negative one becomes `usize::MAX`, out of
/// any range, so the lookup that follows rejects it as it would any index past the end).
pub(crate) fn host_indices<const D: usize>(ids: Tensor<D, Int>) -> Vec<usize> {
    ids.into_data().iter::<i64>().map(|id| usize::try_from(id).unwrap_or(usize::MAX)).collect()
}

/// Keeps (and possibly repeats) the batch rows `rows` of every cached key and value.
pub(crate) fn select_cached_rows(layers: &mut [(Tensor<4>, Tensor<4>)], rows: Tensor<1, Int>) {
    for (k, v) in layers {
        *k = k.clone().select(0, rows.clone());
        *v = v.clone().select(0, rows.clone());
    }
}

/// `[batch, seq, heads*dim]` → `[batch, heads, seq, dim]`.
pub fn split_heads(x: Tensor<3>, heads: usize) -> Tensor<4> {
    let [b, t, d] = x.dims();
    x.reshape([b, t, heads, d / heads]).swap_dims(1, 2)
}

/// `[batch, heads, seq, dim]` → `[batch, seq, heads*dim]`.
pub fn merge_heads(x: Tensor<4>) -> Tensor<3> {
    let [b, h, t, d] = x.dims();
    x.swap_dims(1, 2).reshape([b, t, h * d])
}

/// Scaled dot-product attention with an optional additive bias (masks, T5 position bias),
/// softmax in f32 as the reference implementations do.
pub fn attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, scale: f64, bias: Option<Tensor<4>>) -> Tensor<4> {
    let mut scores = q.matmul(k.swap_dims(2, 3));
    if scale != 1.0 {
        scores = scores * scale;
    }
    if let Some(bias) = bias {
        scores = scores + bias;
    }
    activation::softmax(scores, 3).matmul(v)
}

/// Additive causal mask `[1, 1, q_len, past + q_len]`: query i (at absolute position past + i)
/// sees keys 0..=past + i. Large negative rather than -inf, as HF does (finfo.min).
pub fn causal_mask(q_len: usize, past: usize, device: &Device) -> Tensor<4> {
    let k_len = past + q_len;
    let mut data = vec![0f32; q_len * k_len];
    for i in 0..q_len {
        for j in (past + i + 1)..k_len {
            data[i * k_len + j] = f32::MIN;
        }
    }
    Tensor::<1>::from_floats(data.as_slice(), device).reshape([1, 1, q_len, k_len])
}

/// Additive padding mask `[batch, 1, 1, seq]` from a 0/1 attention mask.
pub fn padding_mask(mask: &[Vec<u32>], device: &Device) -> Tensor<4> {
    let b = mask.len();
    let t = mask.first().map_or(0, Vec::len);
    let data: Vec<f32> = mask.iter().flat_map(|row| row.iter().map(|&m| if m == 0 { f32::MIN } else { 0.0 })).collect();
    Tensor::<1>::from_floats(data.as_slice(), device).reshape([b, 1, 1, t])
}

/// QuickGELU (CLIP): `x * sigmoid(1.702 x)` (vectorised on the CPU: [`activations`]).
pub fn quick_gelu<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = map_on_cpu(&x, activations::quick_gelu) {
        return y;
    }
    x.clone() * activation::sigmoid(x * 1.702)
}

/// tanh-approximate GELU (`gelu_new`, GPT-2 and T5 v1.1). `x*x*x` rather than `powf(3)`: a
/// float power of a negative base is undefined on some GPU backends.
pub fn gelu_new<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    if let Some(y) = map_on_cpu(&x, activations::gelu_tanh) {
        return y;
    }
    const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;
    let cube = x.clone() * x.clone() * x.clone();
    let inner = (x.clone() + cube * 0.044715) * SQRT_2_OVER_PI;
    x * (inner.tanh() + 1.0) * 0.5
}

/// Activation functions named in HF configs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    Gelu,
    GeluNew,
    #[serde(alias = "gelu_pytorch_tanh")]
    GeluFast,
    QuickGelu,
    Relu,
}

impl Activation {
    pub fn forward<const D: usize>(self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Activation::Gelu => map_on_cpu(&x, activations::gelu_erf).unwrap_or_else(|| activation::gelu(x)),
            Activation::GeluNew | Activation::GeluFast => gelu_new(x),
            Activation::QuickGelu => quick_gelu(x),
            Activation::Relu => activation::relu(x),
        }
    }

    /// The in-place CPU form from [`activations`] (`None`: burn's op everywhere).
    fn on_cpu(self) -> Option<fn(&mut [f32])> {
        match self {
            Activation::Gelu => Some(activations::gelu_erf),
            Activation::GeluNew | Activation::GeluFast => Some(activations::gelu_tanh),
            Activation::QuickGelu => Some(activations::quick_gelu),
            Activation::Relu => None,
        }
    }
}

/// Reads a whole tensor back to the host as f32. Asynchronous because WebGPU maps buffers
/// asynchronously; natively and on the CPU backend it completes at once.
pub async fn read_f32<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>> {
    x.into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))?
        .try_into_vec_as::<f32>()
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))
}

/// Reads an Int tensor back to the host (see [`read_f32`]).
pub async fn read_i64<const D: usize>(x: Tensor<D, Int>) -> Result<Vec<i64>> {
    x.into_data_async()
        .await
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))?
        .try_into_vec_as::<i64>()
        .map_err(|e| Error::Device(format!("reading a tensor back: {e:?}")))
}

/// [`read_f32`], blocking (see [`crate::device::block_on`]).
pub fn to_vec<const D: usize>(x: Tensor<D>) -> Result<Vec<f32>> {
    crate::device::block_on(read_f32(x))
}

/// [`read_i64`], blocking.
pub fn to_vec_int<const D: usize>(x: Tensor<D, Int>) -> Result<Vec<i64>> {
    crate::device::block_on(read_i64(x))
}
