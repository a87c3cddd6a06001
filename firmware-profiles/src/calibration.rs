//! Decode speed from a calibration rather than from bandwidth alone.
//!
//! On CPUs a decode step is compute-bound long before it is bandwidth-bound: the step time grows
//! with the number of sequences in it (each row pays its own share of the matrix products,
//! the output head above all with a large vocabulary), so `bandwidth ÷ bytes` overestimates
//! several-fold. A [`Calibration`] holds step times that `appld --measure` timed on the machine
//! itself (real llama.cpp, the engine's own context parameters) at a few batch sizes; the step
//! time at any other batch size comes from a least-squares line through them, and the decode
//! speed of `n` concurrent streams follows: each running stream gets one token per step.

use serde::{Deserialize, Serialize};

/// One measured batch size.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationPoint {
    /// Sequences decoding together.
    pub batch: u32,
    /// Median step time: `llama_decode` plus sampling, milliseconds.
    pub step_ms: f64,
}

/// Step times measured on one machine for one model and engine shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// The model file's name and size, to recognise it.
    pub model: String,
    pub model_bytes: u64,
    pub threads: u32,
    pub slots: u32,
    pub ctx_per_slot: u32,
    /// Tokens in each sequence's context while the steps were timed.
    pub context: u32,
    /// The CPU, as /proc/cpuinfo names it.
    pub cpu: String,
    /// The machine's 1-minute load average when the calibration ran: other work on the machine
    /// slows the measurement and the later run alike, but not always equally.
    pub load_avg_1m: Option<f64>,
    pub points: Vec<CalibrationPoint>,
}

/// Predicted decode speed for a number of concurrent streams.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DecodePrediction {
    pub streams: u32,
    /// Streams decoding at once: `streams`, capped at the slots.
    pub running: u32,
    pub step_ms: f64,
    /// Tokens per second of one running stream.
    pub per_stream_tok_s: f64,
    /// Tokens per second of all running streams together.
    pub aggregate_tok_s: f64,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CalibrationError {
    #[error("the calibration has no measured step times; run `applctl check --measure` again")]
    NoPoints,
    #[error("the calibration has a step time of {step_ms} ms at batch {batch}; times must be positive and batches at least 1")]
    BadPoint { batch: u32, step_ms: f64 },
    #[error("a prediction needs at least one stream")]
    NoStreams,
}

impl Calibration {
    fn check(&self) -> Result<(), CalibrationError> {
        if self.points.is_empty() {
            return Err(CalibrationError::NoPoints);
        }
        for p in &self.points {
            if p.batch == 0 || !(p.step_ms.is_finite() && p.step_ms > 0.0) {
                return Err(CalibrationError::BadPoint {
                    batch: p.batch,
                    step_ms: p.step_ms,
                });
            }
        }
        Ok(())
    }

    /// Step time at `batch` sequences, milliseconds: the least-squares line through the measured
    /// points (a step never gets cheaper with more rows, and never cheaper than the cheapest
    /// measured step); with a single point, that step time at every batch size.
    pub fn step_ms(&self, batch: u32) -> Result<f64, CalibrationError> {
        self.check()?;
        let n = self.points.len() as f64;
        let mean_b = self.points.iter().map(|p| f64::from(p.batch)).sum::<f64>() / n;
        let mean_t = self.points.iter().map(|p| p.step_ms).sum::<f64>() / n;
        let var_b: f64 = self
            .points
            .iter()
            .map(|p| (f64::from(p.batch) - mean_b).powi(2))
            .sum();
        let slope = if var_b > 0.0 {
            let cov: f64 = self
                .points
                .iter()
                .map(|p| (f64::from(p.batch) - mean_b) * (p.step_ms - mean_t))
                .sum();
            (cov / var_b).max(0.0)
        } else {
            0.0
        };
        let floor = self
            .points
            .iter()
            .map(|p| p.step_ms)
            .fold(f64::INFINITY, f64::min);
        Ok((mean_t + slope * (f64::from(batch) - mean_b)).max(floor))
    }

    /// Decode speed with `streams` requests in flight; streams beyond the slots wait their turn.
    pub fn predict(&self, streams: u32) -> Result<DecodePrediction, CalibrationError> {
        if streams == 0 {
            return Err(CalibrationError::NoStreams);
        }
        let running = streams.min(self.slots.max(1));
        let step_ms = self.step_ms(running)?;
        let per_stream = 1e3 / step_ms;
        Ok(DecodePrediction {
            streams,
            running,
            step_ms,
            per_stream_tok_s: per_stream,
            aggregate_tok_s: per_stream * f64::from(running),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cal(points: &[(u32, f64)]) -> Calibration {
        Calibration {
            model: "m.gguf".into(),
            model_bytes: 1,
            threads: 2,
            slots: 8,
            ctx_per_slot: 2048,
            context: 48,
            cpu: "cpu".into(),
            load_avg_1m: Some(0.5),
            points: points
                .iter()
                .map(|&(batch, step_ms)| CalibrationPoint { batch, step_ms })
                .collect(),
        }
    }

    #[test]
    fn two_points_give_a_line_and_streams_past_the_slots_wait() {
        // 25 ms alone, 80 ms for 8: 40 tok/s alone, 100 tok/s for 8 together.
        let c = cal(&[(1, 25.0), (8, 80.0)]);
        let cases = [
            // (streams, running, step ms, per-stream tok/s, aggregate tok/s)
            (1, 1, 25.0, 40.0, 40.0),
            (8, 8, 80.0, 12.5, 100.0),
            (
                4,
                4,
                25.0 + 3.0 * 55.0 / 7.0,
                1e3 / (25.0 + 3.0 * 55.0 / 7.0),
                4e3 / (25.0 + 3.0 * 55.0 / 7.0),
            ),
            (16, 8, 80.0, 12.5, 100.0),
        ];
        for (streams, running, step, per, agg) in cases {
            let p = c.predict(streams).expect("predicts");
            assert_eq!(p.running, running, "{streams} streams");
            assert!((p.step_ms - step).abs() < 1e-9, "{streams}: {p:?}");
            assert!((p.per_stream_tok_s - per).abs() < 1e-9, "{streams}: {p:?}");
            assert!((p.aggregate_tok_s - agg).abs() < 1e-9, "{streams}: {p:?}");
        }
    }

    #[test]
    fn noisy_points_are_fitted_and_never_predict_a_step_below_the_cheapest() {
        let c = cal(&[(1, 30.0), (2, 28.0), (8, 90.0)]);
        assert!(c.step_ms(1).expect("fit") >= 28.0);
        let at8 = c.step_ms(8).expect("fit");
        assert!((80.0..=95.0).contains(&at8), "{at8}");
        // One point: the same step time at any batch size.
        assert_eq!(cal(&[(1, 20.0)]).step_ms(8), Ok(20.0));
        // A decreasing fit is flattened rather than predicting cheaper steps for more rows.
        assert_eq!(cal(&[(1, 30.0), (8, 20.0)]).step_ms(8), Ok(25.0));
    }

    #[test]
    fn bad_calibrations_are_refused_with_a_reason() {
        assert_eq!(cal(&[]).predict(1), Err(CalibrationError::NoPoints));
        assert_eq!(
            cal(&[(1, 0.0)]).predict(1),
            Err(CalibrationError::BadPoint {
                batch: 1,
                step_ms: 0.0
            })
        );
        assert_eq!(
            cal(&[(1, 10.0)]).predict(0),
            Err(CalibrationError::NoStreams)
        );
    }

    #[test]
    fn a_calibration_survives_json() {
        let c = cal(&[(1, 25.0), (8, 80.0)]);
        let back: Calibration =
            serde_json::from_str(&serde_json::to_string(&c).expect("json")).expect("parse");
        assert_eq!(back, c);
    }
}
