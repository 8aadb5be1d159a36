//! Weights in and out: Hugging Face's `model.safetensors` into a `VarStore` (names checked,
//! dtypes converted), and a `VarStore` out as safetensors with the `{"format": "pt"}` metadata
//! transformers expects. Pickled checkpoints (`pytorch_model.bin`) are refused: they can run
//! code when loaded.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use tch::{nn, Kind, Tensor};

use crate::error::StageError;

fn tch_err(path: &Path, e: tch::TchError) -> StageError {
    StageError::torch(path.display().to_string(), e)
}

/// Copies the tensors of a safetensors file into the variables of `vs`, by name. Every variable
/// must be present with the right shape; `encoder.embed_tokens.weight` stands in for a missing
/// `shared.weight`. Extra tensors in the file are ignored.
pub fn load(vs: &nn::VarStore, path: &Path) -> Result<(), StageError> {
    load_into(vs.variables(), path)
}

/// [`load`] into any named tensors (e.g. views of a flat buffer), converting dtypes.
pub fn load_into(targets: impl IntoIterator<Item = (String, Tensor)>, path: &Path) -> Result<(), StageError> {
    let tensors: HashMap<String, Tensor> =
        Tensor::read_safetensors(path).map_err(|e| tch_err(path, e))?.into_iter().collect();
    let mut missing = Vec::new();
    // In name order, so that the first problem reported is always the same one.
    let mut targets: Vec<(String, Tensor)> = targets.into_iter().collect();
    targets.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut var) in targets {
            let src = tensors
                .get(&name)
                .or_else(|| (name == "shared.weight").then(|| tensors.get("encoder.embed_tokens.weight")).flatten());
            let Some(src) = src else {
                missing.push(name);
                continue;
            };
            if src.size() != var.size() {
                return Err(StageError::data(
                    path.display().to_string(),
                    format!("`{name}` has shape {:?}, the model expects {:?}", src.size(), var.size()),
                ));
            }
            // Weights that are not numbers compute nothing but NaN: refused on loading.
            if src.is_floating_point() && src.isfinite().all().int64_value(&[]) == 0 {
                return Err(StageError::data(
                    path.display().to_string(),
                    format!("`{name}` holds values that are not finite (NaN or infinity)"),
                ));
            }
            var.f_copy_(&src.to_kind(var.kind())).map_err(|e| tch_err(path, e))?;
        }
        Ok(())
    })?;
    if !missing.is_empty() {
        missing.sort();
        return Err(StageError::data(path.display().to_string(), format!("missing tensors: {}", missing.join(", "))));
    }
    Ok(())
}

/// A tensor's bytes for the safetensors writer.
struct View {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &View {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn view(t: &Tensor) -> Result<View, StageError> {
    let dtype = match t.kind() {
        Kind::Float => safetensors::Dtype::F32,
        Kind::BFloat16 => safetensors::Dtype::BF16,
        Kind::Half => safetensors::Dtype::F16,
        Kind::Double => safetensors::Dtype::F64,
        Kind::Int64 => safetensors::Dtype::I64,
        k => return Err(StageError::Internal(format!("cannot write tensors of kind {k:?}"))),
    };
    let t = t.to_device(tch::Device::Cpu).contiguous();
    let numel = t.numel();
    let mut data = vec![0u8; numel * t.kind().elt_size_in_bytes()];
    t.copy_data_u8(&mut data, numel);
    Ok(View { dtype, shape: t.size().iter().map(|&d| d as usize).collect(), data })
}

/// Writes named tensors as safetensors, sorted by name, with `{"format": "pt"}` metadata.
pub fn save(tensors: &BTreeMap<String, Tensor>, path: &Path) -> Result<(), StageError> {
    let views: Vec<(String, View)> = tensors
        .iter()
        .map(|(n, t)| view(t).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()?;
    let metadata = Some(HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize_to_file(views.iter().map(|(n, v)| (n.as_str(), v)), &metadata, path)
        .map_err(|source| StageError::Safetensors { path: path.to_path_buf(), source })
}

/// The names of the tensors in a safetensors file.
pub fn names(path: &Path) -> Result<Vec<String>, StageError> {
    let bytes = std::fs::read(path).map_err(|e| StageError::io(path, e))?;
    let (_, metadata) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|source| StageError::Safetensors { path: path.to_path_buf(), source })?;
    // Sorted, so that a message naming the first odd one is the same on every run.
    let mut names: Vec<String> = metadata.tensors().into_keys().collect();
    names.sort();
    Ok(names)
}

/// Every variable of `vs`, by name.
pub fn variables(vs: &nn::VarStore) -> BTreeMap<String, Tensor> {
    vs.variables().into_iter().collect()
}

/// Refuses a model folder that only has pickled weights.
pub fn refuse_pickle(dir: &Path) -> Result<(), StageError> {
    if !dir.join("model.safetensors").exists() && dir.join("pytorch_model.bin").exists() {
        return Err(StageError::data(
            dir.display().to_string(),
            "has only pickled weights (pytorch_model.bin), which can run code when loaded; convert them to model.safetensors (e.g. `model.save_pretrained(dir, safe_serialization=True)` in transformers)",
        ));
    }
    Ok(())
}

