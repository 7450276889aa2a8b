//! The clock, seeded randomness, latency histograms and the rounding of
//! figures that every scenario shares.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Latencies in microseconds.
pub type Hist = Histogram<u32>;

/// The one time base of the process: send times in message texts and
/// receive times are both measured from it.
pub fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

pub fn now_us() -> u64 {
    epoch().elapsed().as_micros() as u64
}

/// SplitMix64: small, fast, and the same sequence for the same `--seed`.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) ^ 0x9e37_79b9_7f4a_7c15)
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn percent(&mut self, pct: f64) -> bool {
        self.unit() * 100.0 < pct
    }
    /// Exponentially distributed wait with the given mean (a Poisson process).
    pub fn exp(&mut self, mean_s: f64) -> Duration {
        Duration::from_secs_f64((-mean_s * (1.0 - self.unit()).ln()).clamp(0.0, 86_400.0))
    }
}

pub fn new_hist() -> Hist {
    // 2 significant digits (1 % resolution) keeps a histogram per connection small.
    let mut hist = Histogram::new_with_bounds(1, 3_600_000_000, 2)
        .expect("constant histogram bounds are valid");
    hist.auto(true);
    hist
}

pub fn record(hist: &mut Hist, us: u64) {
    hist.saturating_record(us.max(1));
}

pub fn merge(into: &mut Hist, from: &Hist) {
    // Same bounds everywhere and auto-resize on: adding cannot fail.
    let _ = into.add(from);
}

pub fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

/// Rounded to 3 decimals, for JSON and the summary.
pub fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

pub fn mib(kib: u64) -> f64 {
    r3(kib as f64 / 1024.0)
}

pub fn hist_text(hist: &Hist) -> String {
    if hist.is_empty() {
        return "no samples".into();
    }
    format!(
        "p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms (n={})",
        ms(hist.value_at_quantile(0.5)),
        ms(hist.value_at_quantile(0.9)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.max()),
        hist.len()
    )
}
