//! Facts about the machine learning runtime for run manifests: the libtorch actually loaded
//! (its version and CUDA version, read from `version.py` beside the library), CUDA devices, and
//! GPU names from the NVIDIA driver.

use std::collections::BTreeMap;

/// libtorch, CUDA and GPU facts, by name.
pub fn describe() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    #[cfg(feature = "torch")]
    {
        out.insert("cuda_available".into(), tch::Cuda::is_available().to_string());
        out.insert("cuda_devices".into(), tch::Cuda::device_count().to_string());
        out.insert("torch_threads".into(), tch::get_num_threads().to_string());
        if tch::Cuda::is_available() {
            out.insert("cudnn".into(), tch::utils::version_cudnn().to_string());
        }
        // The libtorch this process loaded (not necessarily the one it was built against).
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        if let Some(lib) = maps.split_whitespace().find(|w| w.ends_with("/libtorch_cpu.so")) {
            let version_py = std::path::Path::new(lib).parent().and_then(|l| l.parent()).map(|t| t.join("version.py"));
            let text = version_py.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default();
            for line in text.lines() {
                for (key, name) in [("__version__", "libtorch"), ("cuda", "libtorch_cuda")] {
                    if let Some(v) = line
                        .strip_prefix(key)
                        .and_then(|r| r.trim().strip_prefix(':').or(Some(r)))
                        .and_then(|r| r.split_once('='))
                    {
                        let v = v.1.trim().trim_matches(['\'', '"']);
                        if !v.is_empty() && v != "None" {
                            out.insert(name.into(), v.to_string());
                        }
                    }
                }
            }
            out.insert("libtorch_path".into(), lib.to_string());
        }
    }
    #[cfg(not(feature = "torch"))]
    out.insert("libtorch".into(), "not built in (no `torch` feature)".into());
    let gpus: Vec<String> = std::fs::read_dir("/proc/driver/nvidia/gpus")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|g| std::fs::read_to_string(g.path().join("information")).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("Model:").map(|m| m.trim().to_string())))
        .collect();
    if !gpus.is_empty() {
        out.insert("gpus".into(), gpus.join(", "));
    }
    out
}
