//! Percentiles and medians of measured samples.

use std::time::Duration;

/// The usual figures of a latency distribution.
#[derive(Debug, Clone, Copy)]
pub struct Summary {
    /// The median.
    pub p50: Duration,
    /// The 99th percentile.
    pub p99: Duration,
}

impl Summary {
    /// Summarises `samples`, sorting them in place. An empty slice gives
    /// zeros, so a scenario sized too small to sample still reports.
    pub fn of(samples: &mut [Duration]) -> Self {
        samples.sort_unstable();
        Summary {
            p50: percentile(samples, 50.0),
            p99: percentile(samples, 99.0),
        }
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample with
/// at least `p`% of the samples at or below it.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    // Nearest rank is ceil(p/100 * n), 1-based. The float is at most n, so
    // the cast cannot truncate anything that matters.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The median of values from several runs; the mean of the middle two for an
/// even count.
pub fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn nearest_rank_percentiles() {
        let mut samples = ms(&(1..=100).rev().collect::<Vec<_>>());
        let s = Summary::of(&mut samples);
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(percentile(&ms(&[7]), 99.0), Duration::from_millis(7));
        assert_eq!(percentile(&[], 50.0), Duration::ZERO);
    }

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
