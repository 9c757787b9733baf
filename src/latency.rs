//! Latency samples and their percentiles, for the commands that measure (`refresh-demo`,
//! `bench`).
//!
//! Percentiles use the nearest-rank method and are reported in milliseconds rounded to the
//! microsecond. [`Latencies`] keeps each sample as whole microseconds in a `u32` (4 bytes,
//! up to 71 minutes), so a long benchmark run holds millions of samples in a few megabytes
//! without losing anything the reports show.

use std::time::Duration;

/// The 0-based index of the `p`-th percentile (0..=1) in `len` sorted samples, by nearest
/// rank; `None` when there are none.
fn nearest_rank(len: usize, p: f64) -> Option<usize> {
    if len == 0 {
        return None;
    }
    Some(((p * len as f64).ceil() as usize).clamp(1, len) - 1)
}

fn round_ms(seconds: f64) -> f64 {
    (seconds * 1e6).round() / 1e3
}

/// The `p`-th percentile (0..=1) of sorted latencies, in milliseconds (0 when empty).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    nearest_rank(sorted.len(), p).map_or(0.0, |i| round_ms(sorted[i].as_secs_f64()))
}

/// Compact latency samples: whole microseconds, saturating at `u32::MAX`.
#[derive(Debug, Default, Clone)]
pub struct Latencies {
    micros: Vec<u32>,
    sorted: bool,
}

impl Latencies {
    /// An empty set with room for `capacity` samples.
    pub fn with_capacity(capacity: usize) -> Latencies {
        Latencies {
            micros: Vec::with_capacity(capacity),
            sorted: true,
        }
    }

    /// Records one sample.
    pub fn push(&mut self, latency: Duration) {
        let micros = u32::try_from(latency.as_micros()).unwrap_or(u32::MAX);
        self.micros.push(micros);
        self.sorted = false;
    }

    /// Moves every sample of `other` into `self`.
    pub fn append(&mut self, other: &mut Latencies) {
        self.micros.append(&mut other.micros);
        self.sorted = self.micros.len() <= 1;
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        self.micros.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.micros.is_empty()
    }

    /// Sorts the samples; percentiles need it.
    pub fn sort(&mut self) {
        if !self.sorted {
            self.micros.sort_unstable();
            self.sorted = true;
        }
    }

    /// The `p`-th percentile (0..=1) in milliseconds (0 when empty).
    ///
    /// # Panics
    ///
    /// In debug builds, if [`Latencies::sort`] was not called after the last change.
    pub fn percentile_ms(&self, p: f64) -> f64 {
        debug_assert!(self.sorted, "sort() before asking for percentiles");
        nearest_rank(self.micros.len(), p).map_or(0.0, |i| f64::from(self.micros[i]) / 1e3)
    }

    /// The largest sample in milliseconds (0 when empty).
    pub fn max_ms(&self) -> f64 {
        self.micros
            .iter()
            .max()
            .map_or(0.0, |&us| f64::from(us) / 1e3)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank() {
        let sorted: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile_ms(&sorted, 0.50), 50.0);
        assert_eq!(percentile_ms(&sorted, 0.99), 99.0);
        assert_eq!(percentile_ms(&[], 0.99), 0.0);
        assert_eq!(percentile_ms(&sorted[..1], 0.99), 1.0);
    }

    #[test]
    fn compact_samples_agree_with_durations() {
        let durations: Vec<Duration> = (1..=1000).rev().map(Duration::from_micros).collect();
        let mut a = Latencies::default();
        let mut b = Latencies::with_capacity(10);
        for (i, d) in durations.iter().enumerate() {
            if i % 2 == 0 { &mut a } else { &mut b }.push(*d);
        }
        a.append(&mut b);
        assert!(b.is_empty());
        a.sort();
        let mut sorted = durations.clone();
        sorted.sort();
        for p in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(a.percentile_ms(p), percentile_ms(&sorted, p), "p = {p}");
        }
        assert_eq!(a.len(), 1000);
        assert_eq!(a.max_ms(), 1.0);
        assert_eq!(Latencies::default().max_ms(), 0.0);
    }

    #[test]
    fn huge_samples_saturate() {
        let mut l = Latencies::default();
        l.push(Duration::from_secs(100_000));
        l.sort();
        assert_eq!(l.max_ms(), f64::from(u32::MAX) / 1e3);
    }
}
