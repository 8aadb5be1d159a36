//! Peak resident memory of this process: `VmHWM` in /proc/self/status, reset by writing `5` to
//! /proc/self/clear_refs (Linux; elsewhere nothing is measured). Stages run in one process, so
//! a stage's peak is the process's peak while it ran: its own when it ran alone (the executor
//! resets the mark when a stage starts with nothing else running), an upper bound when stages
//! overlapped. GPU memory is not counted here.

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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_an_allocation_and_resets() {
        reset_peak();
        let before = peak_mb().expect("VmHWM on Linux");
        let block = vec![1u8; 300 << 20];
        let during = peak_mb().expect("VmHWM");
        assert!(during - before > 250.0, "{before} MB → {during} MB after touching 300 MB");
        drop(block);
        reset_peak();
        assert!(peak_mb().expect("VmHWM") < during - 250.0, "the reset brings the peak down");
    }
}
