//! The GPUs a run may pin stages to: those `CUDA_VISIBLE_DEVICES` lists, else every GPU NVML
//! sees (none without an NVIDIA driver). The executor runs one `Gpu` stage per GPU at once,
//! each pinned to its own (one at a time on a machine without GPUs, where they run on the CPU).

use nvml_wrapper::Nvml;

/// One GPU: its CUDA index (how libtorch numbers the visible devices) and how NVML finds it
/// (for its memory figures).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    /// The index a stage pinned to it uses: `cuda:N`.
    pub cuda: usize,
    /// NVML's name for it.
    pub nvml: NvmlId,
}

/// How NVML finds a GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NvmlId {
    /// NVML's index (PCI bus order; CUDA's order too unless `CUDA_DEVICE_ORDER` says otherwise
    /// on a machine with mixed cards).
    Index(u32),
    /// A `GPU-…` or `MIG-…` UUID, as `CUDA_VISIBLE_DEVICES` may name it.
    Uuid(String),
}

impl Gpu {
    /// GPU `i`, numbered the same for CUDA and NVML (what a machine without
    /// `CUDA_VISIBLE_DEVICES` has; also the tests' fake devices).
    pub fn numbered(i: usize) -> Gpu {
        Gpu { cuda: i, nvml: NvmlId::Index(u32::try_from(i).unwrap_or(u32::MAX)) }
    }
}

/// The GPUs this process may use.
pub fn visible() -> Vec<Gpu> {
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(list) => parse_visible(&list),
        Err(_) => {
            let count = Nvml::init().ok().and_then(|n| n.device_count().ok()).unwrap_or(0);
            (0..count as usize).map(Gpu::numbered).collect()
        }
    }
}

/// `CUDA_VISIBLE_DEVICES` as CUDA reads it: comma-separated indices or UUIDs, up to the first
/// entry that is neither (`-1` and the empty string hide every GPU).
fn parse_visible(list: &str) -> Vec<Gpu> {
    let mut gpus = Vec::new();
    for entry in list.split(',').map(str::trim) {
        let nvml = if let Ok(i) = entry.parse::<u32>() {
            NvmlId::Index(i)
        } else if entry.starts_with("GPU-") || entry.starts_with("MIG-") {
            NvmlId::Uuid(entry.to_string())
        } else {
            break;
        };
        gpus.push(Gpu { cuda: gpus.len(), nvml });
    }
    gpus
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuda_visible_devices_is_read_as_cuda_reads_it() {
        assert_eq!(
            parse_visible("2,0"),
            vec![Gpu { cuda: 0, nvml: NvmlId::Index(2) }, Gpu { cuda: 1, nvml: NvmlId::Index(0) }]
        );
        assert_eq!(
            parse_visible("GPU-8f3a, 1"),
            vec![Gpu { cuda: 0, nvml: NvmlId::Uuid("GPU-8f3a".into()) }, Gpu { cuda: 1, nvml: NvmlId::Index(1) }]
        );
        // CUDA stops at the first entry it cannot read.
        assert_eq!(parse_visible("1,-1,0"), vec![Gpu { cuda: 0, nvml: NvmlId::Index(1) }]);
        assert!(parse_visible("").is_empty());
        assert!(parse_visible("-1").is_empty());
    }
}
