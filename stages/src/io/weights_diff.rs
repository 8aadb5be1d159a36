//! How far apart two safetensors files' weights are, tensor by tensor, read with the
//! `safetensors` crate (no libtorch): what `audit --reproduce` says of two runs' checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;

use crate::error::StageError;

/// Per tensor of two safetensors files: the largest absolute difference. Tensors missing from
/// either file, of another shape, or of a type that is not floating point count as infinitely
/// different.
pub fn differences(a: &Path, b: &Path) -> Result<Vec<(String, f64)>, StageError> {
    let read = |p: &Path| std::fs::read(p).map_err(|e| StageError::io(p, e));
    let (bytes_a, bytes_b) = (read(a)?, read(b)?);
    let (x, y) = (parse(a, &bytes_a)?, parse(b, &bytes_b)?);
    let x: BTreeMap<String, TensorView> = x.tensors().into_iter().collect();
    let y: BTreeMap<String, TensorView> = y.tensors().into_iter().collect();
    let mut names: Vec<&String> = x.keys().chain(y.keys()).collect();
    names.sort();
    names.dedup();
    Ok(names
        .into_iter()
        .map(|n| {
            let d = match (x.get(n), y.get(n)) {
                (Some(p), Some(q)) if p.shape() == q.shape() => match (values(p), values(q)) {
                    (Some(p), Some(q)) => p.iter().zip(&q).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max),
                    _ => f64::INFINITY,
                },
                _ => f64::INFINITY,
            };
            (n.clone(), d)
        })
        .collect())
}

fn parse<'a>(path: &Path, bytes: &'a [u8]) -> Result<SafeTensors<'a>, StageError> {
    SafeTensors::deserialize(bytes).map_err(|e| StageError::Data {
        location: path.display().to_string(),
        message: format!("not a safetensors file: {e}"),
    })
}

/// A floating-point tensor's values; `None` for other types.
fn values(t: &TensorView) -> Option<Vec<f64>> {
    let data = t.data();
    Some(match t.dtype() {
        Dtype::F64 => data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes"))).collect(),
        Dtype::F32 => data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes")) as f64).collect(),
        Dtype::BF16 => data.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        Dtype::F16 => data.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64()).collect(),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use safetensors::tensor::serialize_to_file;

    fn write(path: &Path, tensors: &[(&str, Dtype, Vec<u8>, Vec<usize>)]) {
        let views: Vec<(String, TensorView)> = tensors
            .iter()
            .map(|(n, d, bytes, shape)| (n.to_string(), TensorView::new(*d, shape.clone(), bytes).unwrap()))
            .collect();
        serialize_to_file(views, &None, path).unwrap();
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn differences_are_per_tensor_and_missing_or_reshaped_ones_are_infinite() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.safetensors"), dir.path().join("b.safetensors"));
        let bf16 = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect() };
        write(
            &a,
            &[
                ("w", Dtype::F32, f32s(&[1.0, 2.0, 3.0]), vec![3]),
                ("h", Dtype::BF16, bf16(&[1.0, 2.0]), vec![2]),
                ("only_a", Dtype::F32, f32s(&[0.0]), vec![1]),
                ("shape", Dtype::F32, f32s(&[0.0, 0.0]), vec![2]),
            ],
        );
        write(
            &b,
            &[
                ("w", Dtype::F32, f32s(&[1.0, 2.5, 3.0]), vec![3]),
                ("h", Dtype::BF16, bf16(&[1.0, 2.0]), vec![2]),
                ("shape", Dtype::F32, f32s(&[0.0, 0.0]), vec![1, 2]),
            ],
        );
        let d: BTreeMap<String, f64> = differences(&a, &b).unwrap().into_iter().collect();
        assert_eq!(d["w"], 0.5);
        assert_eq!(d["h"], 0.0);
        assert_eq!(d["only_a"], f64::INFINITY);
        assert_eq!(d["shape"], f64::INFINITY);
        assert_eq!(d.len(), 4);
    }
}
