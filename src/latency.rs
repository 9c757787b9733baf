//! Latencies and their percentiles, for the commands that measure (`refresh-demo`, `bench`).
//!
//! [`Latencies`] is a fixed-size HDR histogram (the `hdrhistogram` crate) of whole
//! microseconds from 1 µs to one hour, kept to 3 significant digits: memory is the same
//! (about 190 KB) after a second or a week of samples. Percentiles use the nearest-rank
//! method; a value reported is exact to the microsecond below 2.048 ms and within 0.1 %
//! above (the top of the bucket the sample fell in), in milliseconds rounded to the
//! microsecond. A sample over an hour counts as an hour.

use std::fmt;
use std::time::Duration;

use hdrhistogram::Histogram;

/// The largest latency kept apart, in microseconds (one hour); longer ones count as this.
const HIGHEST_MICROS: u64 = 3_600_000_000;

/// Significant digits kept: 3 keeps every microsecond below 2,048 µs and 0.1 % above.
const SIGNIFICANT_DIGITS: u8 = 3;

/// Latency samples in a fixed-size histogram: constant memory for any number of them.
#[derive(Clone)]
pub struct Latencies {
    histogram: Histogram<u64>,
}

impl Default for Latencies {
    fn default() -> Latencies {
        Latencies {
            histogram: Histogram::new_with_bounds(1, HIGHEST_MICROS, SIGNIFICANT_DIGITS)
                .expect("constant bounds that hdrhistogram accepts"),
        }
    }
}

impl fmt::Debug for Latencies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The histogram's own Debug would print every one of its ~23,000 counters.
        f.debug_struct("Latencies")
            .field("len", &self.len())
            .field("p50_ms", &self.percentile_ms(0.50))
            .field("max_ms", &self.max_ms())
            .finish()
    }
}

impl Latencies {
    /// Records one sample (whole microseconds; below 1 µs counts as 1 µs, above an hour as
    /// an hour).
    pub fn push(&mut self, latency: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.histogram.saturating_record(micros.max(1));
    }

    /// Moves every sample of `other` into `self`, leaving `other` empty.
    pub fn append(&mut self, other: &mut Latencies) {
        self.histogram
            .add(&other.histogram)
            .expect("histograms of the same bounds add up");
        other.histogram.reset();
    }

    /// How many samples there are.
    pub fn len(&self) -> usize {
        usize::try_from(self.histogram.len()).unwrap_or(usize::MAX)
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.histogram.is_empty()
    }

    /// Nothing to do: a histogram is always ready for percentiles. Kept so that callers
    /// written for sorted samples need no change.
    pub fn sort(&mut self) {}

    /// The `p`-th percentile (0..=1) by nearest rank, in milliseconds (0 when empty).
    pub fn percentile_ms(&self, p: f64) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        micros_to_ms(self.histogram.value_at_quantile(p.clamp(0.0, 1.0)))
    }

    /// The largest sample in milliseconds (0 when empty).
    pub fn max_ms(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        micros_to_ms(self.histogram.max())
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(samples: impl IntoIterator<Item = Duration>) -> Latencies {
        let mut latencies = Latencies::default();
        for sample in samples {
            latencies.push(sample);
        }
        latencies
    }

    #[test]
    fn percentiles_use_nearest_rank_exactly_below_2ms() {
        let l = from((1..=1000).rev().map(Duration::from_micros));
        assert_eq!(l.len(), 1000);
        assert_eq!(l.percentile_ms(0.50), 0.5);
        assert_eq!(l.percentile_ms(0.99), 0.99);
        assert_eq!(l.percentile_ms(0.999), 0.999);
        assert_eq!(l.percentile_ms(1.0), 1.0);
        assert_eq!(l.max_ms(), 1.0);
        assert_eq!(from([Duration::from_micros(7)]).percentile_ms(0.99), 0.007);
        let empty = Latencies::default();
        assert!(empty.is_empty());
        assert_eq!((empty.percentile_ms(0.5), empty.max_ms()), (0.0, 0.0));
    }

    #[test]
    fn percentiles_above_2ms_stay_within_a_tenth_of_a_percent() {
        let l = from((1..=100).map(Duration::from_millis));
        for (p, exact) in [(0.5, 50.0), (0.99, 99.0), (1.0, 100.0)] {
            let got = l.percentile_ms(p);
            assert!(
                got >= exact && got <= exact * 1.001,
                "p{p}: {got} for {exact}"
            );
        }
        let max = l.max_ms();
        assert!((100.0..=100.1).contains(&max), "{max}");
    }

    #[test]
    fn append_moves_every_sample() {
        let mut a = from((1..=500).map(Duration::from_micros));
        let mut b = from((501..=1000).map(Duration::from_micros));
        a.append(&mut b);
        assert!(b.is_empty());
        assert_eq!(a.len(), 1000);
        assert_eq!(a.percentile_ms(0.5), 0.5);
        assert_eq!(a.max_ms(), 1.0);
    }

    #[test]
    fn memory_does_not_grow_with_samples() {
        // The histogram is allocated once; a million samples add counts, not memory.
        let mut l = Latencies::default();
        let size = l.histogram.distinct_values();
        for i in 0..1_000_000u64 {
            l.push(Duration::from_micros(i % 5_000 + 1));
        }
        assert_eq!(l.histogram.distinct_values(), size);
        assert!(size * 8 < 200_000, "{size} counters");
        assert_eq!(l.len(), 1_000_000);
    }

    #[test]
    fn extreme_samples_saturate() {
        let l = from([Duration::ZERO, Duration::from_secs(100_000)]);
        assert_eq!(l.len(), 2);
        assert_eq!(l.percentile_ms(0.0), 0.001);
        let max = l.max_ms();
        assert!((3_600_000.0..=3_604_000.0).contains(&max), "{max}");
    }
}
