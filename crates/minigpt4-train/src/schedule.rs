//! Learning-rate schedule: linear warm-up from `warmup_lr` to `lr`, then a half cosine down to
//! `min_lr` at `total_steps`. LAVIS's `LinearWarmupCosineLRScheduler` does the same with the
//! cosine stepped once per epoch; here it moves every optimizer step.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub warmup_lr: f64,
    pub lr: f64,
    pub min_lr: f64,
    pub warmup_steps: usize,
    pub total_steps: usize,
}

impl LrSchedule {
    /// The rate for optimizer update `step` (0-based: the first update uses `at(0)`).
    ///
    /// * `step < warmup_steps`: `warmup_lr + (lr - warmup_lr) · step / warmup_steps`
    /// * afterwards: `min_lr + (lr - min_lr) · ½ (1 + cos(π · p))`, `p = (step - warmup) / (total - warmup)`
    pub fn at(&self, step: usize) -> f64 {
        if step < self.warmup_steps {
            return self.warmup_lr + (self.lr - self.warmup_lr) * step as f64 / self.warmup_steps as f64;
        }
        let span = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let p = ((step - self.warmup_steps) as f64 / span as f64).min(1.0);
        self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + (std::f64::consts::PI * p).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-12)
    }

    #[test]
    fn stage1_key_steps() {
        let s = LrSchedule { warmup_lr: 1e-6, lr: 1e-4, min_lr: 8e-5, warmup_steps: 5000, total_steps: 20000 };
        assert!(close(s.at(0), 1e-6));
        assert!(close(s.at(2500), 1e-6 + (1e-4 - 1e-6) * 0.5));
        assert!(close(s.at(4999), 1e-6 + (1e-4 - 1e-6) * 4999.0 / 5000.0));
        assert!(close(s.at(5000), 1e-4));
        // Halfway through the cosine: the mean of peak and floor.
        assert!(close(s.at(12500), 9e-5));
        assert!(close(s.at(20000), 8e-5));
        assert!(s.at(19999) > 8e-5 && s.at(19999) < 8e-5 + 1e-12 * 1e6);
    }

    #[test]
    fn stage2_key_steps() {
        let s = LrSchedule { warmup_lr: 1e-6, lr: 3e-5, min_lr: 1e-5, warmup_steps: 200, total_steps: 1000 };
        assert!(close(s.at(0), 1e-6));
        assert!(close(s.at(100), 1e-6 + (3e-5 - 1e-6) / 2.0));
        assert!(close(s.at(200), 3e-5));
        assert!(close(s.at(600), 2e-5));
        assert!(close(s.at(1000), 1e-5));
        // Monotone: up during warm-up, down after.
        for i in 1..200 {
            assert!(s.at(i) > s.at(i - 1));
        }
        for i in 201..1000 {
            assert!(s.at(i) < s.at(i - 1));
        }
    }

    #[test]
    fn no_warmup_and_past_the_end() {
        let s = LrSchedule { warmup_lr: 1e-6, lr: 1e-3, min_lr: 0.0, warmup_steps: 0, total_steps: 10 };
        assert!(close(s.at(0), 1e-3));
        assert_eq!(s.at(10), 0.0);
        assert_eq!(s.at(50), 0.0);
    }
}
