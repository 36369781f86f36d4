//! Backpressure: Spark Streaming's PID rate estimator (`PIDRateEstimator`, SPARK-7398). After each
//! batch it compares the rate the batch was admitted at with the rate it was processed at, and
//! sets the next admission rate to cut the difference (proportional term), work off the backlog
//! accumulated as scheduling delay (integral term) and damp changes (derivative term).

/// Estimates how many records per second the job can process.
#[derive(Debug, Clone)]
pub struct PidRateEstimator {
    batch_interval_ms: u64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    first_run: bool,
    latest_time_ms: u64,
    latest_rate: f64,
    latest_error: f64,
}

impl PidRateEstimator {
    /// An estimator with Spark's defaults: proportional 1.0, integral 0.2, derivative 0.0,
    /// minimum rate 100 records/s.
    pub fn new(batch_interval_ms: u64) -> Self {
        Self::with_gains(batch_interval_ms, 1.0, 0.2, 0.0, 100.0)
    }

    /// An estimator with these gains and floor (negative gains and a non-positive floor are
    /// raised to 0 and 1).
    pub fn with_gains(
        batch_interval_ms: u64,
        proportional: f64,
        integral: f64,
        derivative: f64,
        min_rate: f64,
    ) -> Self {
        Self {
            batch_interval_ms: batch_interval_ms.max(1),
            proportional: proportional.max(0.0),
            integral: integral.max(0.0),
            derivative: derivative.max(0.0),
            min_rate: if min_rate > 0.0 { min_rate } else { 1.0 },
            first_run: true,
            latest_time_ms: 0,
            latest_rate: -1.0,
            latest_error: -1.0,
        }
    }

    /// The latest estimate, once there is one.
    pub fn rate(&self) -> Option<f64> {
        (!self.first_run && self.latest_rate > 0.0).then_some(self.latest_rate)
    }

    /// Feeds the outcome of a batch that finished at `time_ms`: `records` processed in
    /// `processing_ms`, after waiting `scheduling_delay_ms` to start. Returns the new rate
    /// (records/s), or `None` when the batch says nothing (empty, instantaneous, or out of
    /// order) or it is the first one (which only sets the starting point).
    pub fn update(&mut self, time_ms: u64, records: u64, processing_ms: u64, scheduling_delay_ms: u64) -> Option<f64> {
        if time_ms <= self.latest_time_ms || records == 0 || processing_ms == 0 {
            return None;
        }
        let since_update_s = (time_ms - self.latest_time_ms) as f64 / 1000.0;
        let processing_rate = records as f64 / processing_ms as f64 * 1000.0;
        let error = self.latest_rate - processing_rate;
        // The backlog, as a rate: how far behind the batches are, relative to the interval.
        let historical_error = scheduling_delay_ms as f64 * processing_rate / self.batch_interval_ms as f64;
        let d_error = (error - self.latest_error) / since_update_s;
        let new_rate = (self.latest_rate
            - self.proportional * error
            - self.integral * historical_error
            - self.derivative * d_error)
            .max(self.min_rate);
        self.latest_time_ms = time_ms;
        if self.first_run {
            self.latest_rate = processing_rate;
            self.latest_error = 0.0;
            self.first_run = false;
            None
        } else {
            self.latest_rate = new_rate;
            self.latest_error = error;
            Some(new_rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_batch_only_sets_the_starting_rate() {
        let mut pid = PidRateEstimator::new(1_000);
        assert_eq!(pid.update(1_000, 10_000, 500, 0), None);
        assert_eq!(pid.rate(), Some(20_000.0));
    }

    #[test]
    fn a_steady_job_keeps_its_rate() {
        let mut pid = PidRateEstimator::new(1_000);
        pid.update(1_000, 10_000, 1_000, 0);
        // Processing at exactly the admitted rate, no delay: nothing to correct.
        assert_eq!(pid.update(2_000, 10_000, 1_000, 0), Some(10_000.0));
    }

    #[test]
    fn falling_behind_lowers_the_rate_and_never_below_the_floor() {
        let mut pid = PidRateEstimator::new(1_000);
        pid.update(1_000, 10_000, 1_000, 0);
        // Admitted 10,000/s but processed only 5,000/s, and batches start 2 s late:
        // 10,000 - 1.0 * 5,000 - 0.2 * (2,000 * 5,000 / 1,000) = 3,000.
        assert_eq!(pid.update(2_000, 10_000, 2_000, 2_000), Some(3_000.0));
        // Far behind: the floor holds.
        assert_eq!(pid.update(3_000, 100, 10_000, 60_000), Some(100.0));
    }

    #[test]
    fn empty_instant_or_stale_batches_change_nothing() {
        let mut pid = PidRateEstimator::new(1_000);
        pid.update(1_000, 10_000, 1_000, 0);
        assert_eq!(pid.update(2_000, 0, 1_000, 0), None);
        assert_eq!(pid.update(2_000, 10, 0, 0), None);
        assert_eq!(pid.update(500, 10, 10, 0), None);
        assert_eq!(pid.rate(), Some(10_000.0));
    }

    #[test]
    fn spare_capacity_raises_the_rate() {
        let mut pid = PidRateEstimator::new(1_000);
        pid.update(1_000, 1_000, 1_000, 0); // starting point: 1,000/s
                                            // The same batch processed ten times as fast: 1,000 - (1,000 - 10,000) = 10,000.
        assert_eq!(pid.update(2_000, 1_000, 100, 0), Some(10_000.0));
    }
}
