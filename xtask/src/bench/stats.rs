//! Medians and spread of a row's samples: what the table and
//! `results.json` report for each side. Nothing here knows about VMMs.

use serde::Serialize;

/// The summary of one side of a row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Every sample, in the order measured.
    pub samples: Vec<f64>,
}

impl Stats {
    /// `None` without samples (or with a NaN, which no measurement makes).
    pub fn of(samples: &[f64]) -> Option<Stats> {
        if samples.is_empty() || samples.iter().any(|s| s.is_nan()) {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        };
        Some(Stats {
            n,
            median,
            min: sorted[0],
            max: sorted[n - 1],
            samples: samples.to_vec(),
        })
    }

    /// "12.3 (10.1–15.0)" with `digits` decimals.
    pub fn cell(&self, digits: usize) -> String {
        if self.n == 1 {
            return format!("{:.digits$}", self.median);
        }
        format!(
            "{:.digits$} ({:.digits$}–{:.digits$})",
            self.median, self.min, self.max
        )
    }
}

/// vmctl's median over the peer's, when both exist and the peer's is not 0.
pub fn ratio(vmctl: Option<&Stats>, peer: Option<&Stats>) -> Option<f64> {
    let (a, b) = (vmctl?, peer?);
    (b.median != 0.0).then(|| a.median / b.median)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_spread() {
        let s = Stats::of(&[5.0, 1.0, 3.0]).unwrap();
        assert_eq!((s.n, s.median, s.min, s.max), (3, 3.0, 1.0, 5.0));
        assert_eq!(s.samples, vec![5.0, 1.0, 3.0], "kept in measured order");
        assert_eq!(Stats::of(&[4.0, 1.0, 3.0, 2.0]).unwrap().median, 2.5);
        assert_eq!(s.cell(1), "3.0 (1.0–5.0)");
        assert_eq!(Stats::of(&[7.25]).unwrap().cell(1), "7.2");
        assert_eq!(Stats::of(&[]), None);
        assert_eq!(Stats::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios() {
        let a = Stats::of(&[10.0]).unwrap();
        let b = Stats::of(&[40.0]).unwrap();
        assert_eq!(ratio(Some(&a), Some(&b)), Some(0.25));
        assert_eq!(ratio(Some(&a), None), None);
        assert_eq!(ratio(Some(&a), Stats::of(&[0.0]).as_ref()), None);
    }
}
