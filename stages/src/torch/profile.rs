//! Where a training step's time goes, when profiling is on (`--profile`,
//! [`crate::RuntimeOptions::profile`]): the loop marks the end of each
//! phase; at a mark the profile first notes how long the host took to *issue* the phase's work,
//! then waits for the device and notes how much longer the device needed. Waiting at every
//! phase slows the step (host and device no longer overlap), so the figures are a breakdown,
//! not a speed. A device wait near zero means the device kept up with the host — or that the
//! host was held back by a full launch queue; comparing batch sizes tells the two apart.

use std::time::{Duration, Instant};

use tch::Device;

use super::device::synchronize;

/// Per phase: time to issue its work on the host, and the device's time beyond that.
pub struct StepProfile {
    device: Device,
    last: Instant,
    phases: Vec<(&'static str, Duration, Duration)>,
    steps: u64,
}

impl StepProfile {
    /// A profile of the steps on `device`.
    pub fn new(device: Device) -> Self {
        StepProfile { device, last: Instant::now(), phases: Vec::new(), steps: 0 }
    }

    /// Starts a step (after the device has finished everything before it).
    pub fn start(&mut self) {
        synchronize(self.device);
        self.steps += 1;
        self.last = Instant::now();
    }

    /// Ends phase `name`.
    pub fn mark(&mut self, name: &'static str) {
        let issued = self.last.elapsed();
        synchronize(self.device);
        let done = self.last.elapsed();
        match self.phases.iter_mut().find(|p| p.0 == name) {
            Some(p) => {
                p.1 += issued;
                p.2 += done - issued;
            }
            None => self.phases.push((name, issued, done - issued)),
        }
        self.last = Instant::now();
    }

    /// A table: per phase, mean milliseconds per step issuing and waiting for the device.
    pub fn report(&self) -> String {
        let n = self.steps.max(1) as f64;
        let ms = |d: Duration| d.as_secs_f64() * 1e3 / n;
        let mut out = format!("step profile ({} steps, {:?}): ms per step\n", self.steps, self.device);
        out += &format!("{:<18} {:>8} {:>14}\n", "phase", "issue", "device after");
        let (mut issue, mut device) = (0.0, 0.0);
        for (name, i, d) in &self.phases {
            out += &format!("{name:<18} {:>8.1} {:>14.1}\n", ms(*i), ms(*d));
            issue += ms(*i);
            device += ms(*d);
        }
        out + &format!("{:<18} {issue:>8.1} {device:>14.1}\n", "step")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_add_up_per_step() {
        let mut p = StepProfile::new(Device::Cpu);
        for _ in 0..2 {
            p.start();
            std::thread::sleep(Duration::from_millis(4));
            p.mark("forward");
            p.mark("backward");
        }
        let report = p.report();
        assert_eq!(p.phases.iter().map(|x| x.0).collect::<Vec<_>>(), ["forward", "backward"]);
        assert!(p.phases[0].1 >= Duration::from_millis(8), "{report}");
        assert!(report.starts_with("step profile (2 steps, Cpu)"), "{report}");
        assert_eq!(report.lines().count(), 5, "{report}");
    }
}
