//! Peak memory of a stage. Resident memory: `VmHWM` in /proc/self/status, reset by writing `5`
//! to /proc/self/clear_refs (Linux; elsewhere nothing is measured). A model stage runs in a
//! worker process of its own, which reports its peak when it ends; the other stages run in the
//! runner, so their peak is the runner's while they ran: their own when they ran alone (the
//! executor resets the mark when a stage starts with nothing else running), an upper bound when
//! stages overlapped. GPU memory: sampled through NVML (the driver's library, loaded at run
//! time; absent without an NVIDIA driver) every 20 ms while a GPU stage runs, on the GPU it is
//! pinned to — what `nvidia-smi` shows for the stage's process there, CUDA context and
//! libtorch's cached blocks included.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::Nvml;

use crate::run::gpus::{Gpu, NvmlId};

/// Starts a new peak from the current resident size.
pub fn reset_peak() {
    // Best effort: without the file (not Linux) the peak covers the whole process.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The peak resident size since the last reset, in MB (2^20 bytes).
pub fn peak_mb() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?.trim();
    Some(kb.parse::<f64>().ok()? / 1024.0)
}

/// Samples a process's GPU memory on a thread until [`GpuSampler::stop`].
pub struct GpuSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<u64>,
}

impl GpuSampler {
    /// Starts sampling process `pid` on `gpu` (every GPU when `None`); `None` where NVML finds
    /// no NVIDIA GPU.
    pub fn start(gpu: Option<&Gpu>, pid: u32) -> Option<GpuSampler> {
        let nvml = Nvml::init().ok()?;
        if nvml.device_count().ok()? == 0 {
            return None;
        }
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let gpu = gpu.map(|g| g.nvml.clone());
        let thread = std::thread::spawn(move || {
            let devices: Vec<_> = match &gpu {
                Some(NvmlId::Index(i)) => nvml.device_by_index(*i).into_iter().collect(),
                Some(NvmlId::Uuid(u)) => nvml.device_by_uuid(u.as_str()).into_iter().collect(),
                None => (0..nvml.device_count().unwrap_or(0)).filter_map(|i| nvml.device_by_index(i).ok()).collect(),
            };
            let used = || devices.iter().filter_map(|d| d.memory_info().ok()).map(|m| m.used).sum::<u64>();
            let baseline = used();
            let mut peak = 0;
            loop {
                let mine: Vec<u64> = devices
                    .iter()
                    .filter_map(|d| d.running_compute_processes().ok())
                    .flatten()
                    .filter(|p| p.pid == pid)
                    .map(|p| match p.used_gpu_memory {
                        UsedGpuMemory::Used(b) => b,
                        UsedGpuMemory::Unavailable => 0,
                    })
                    .collect();
                // In a container the driver lists host PIDs: then count what the devices use
                // beyond what they used when sampling began.
                let now = if mine.is_empty() { used().saturating_sub(baseline) } else { mine.iter().sum() };
                peak = peak.max(now);
                if flag.load(Ordering::Relaxed) {
                    return peak;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        Some(GpuSampler { stop, thread })
    }

    /// The peak seen, in MB (2^20 bytes).
    pub fn stop(self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap_or(0) as f64 / (1u64 << 20) as f64
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_an_allocation_and_resets() {
        reset_peak();
        let before = peak_mb().expect("VmHWM on Linux");
        // Kept from the optimizer, which would otherwise drop an allocation nothing reads.
        let block = std::hint::black_box(vec![1u8; 300 << 20]);
        let during = peak_mb().expect("VmHWM");
        assert!(during - before > 250.0, "{before} MB → {during} MB after touching 300 MB");
        drop(block);
        reset_peak();
        assert!(peak_mb().expect("VmHWM") < during - 250.0, "the reset brings the peak down");
    }

    #[test]
    fn without_an_nvidia_driver_gpu_memory_is_not_measured() {
        // On a machine with a GPU the sampler runs and reports a figure; here (CI) it is absent.
        match GpuSampler::start(None, std::process::id()) {
            Some(s) => assert!(s.stop() >= 0.0),
            None => assert!(Nvml::init().is_err() || Nvml::init().unwrap().device_count().unwrap_or(0) == 0),
        }
    }
}
