//! Distributions: a mergeable sketch of values with exponential (base-2 logarithmic) buckets,
//! laid out exactly like an OpenTelemetry exponential histogram, so that the OTLP exporter sends
//! its buckets as they are and the Push API reports quantiles from the same data.
//!
//! Bucket `i` at scale `s` holds the values in `(base^i, base^(i+1)]` with `base = 2^(2^-s)`.
//! A sketch starts at [`MAX_SCALE`] (6: base ≈ 1.0109, a quantile is within ≈ 0.54 % of a value
//! seen). Each sign keeps at most [`MAX_BUCKETS`] contiguous buckets; a value or a merge that
//! would need more lowers the scale (two neighbouring buckets become one), which doubles the range
//! and the relative error. Count, sum, min and max are exact. Zero, values closer to zero than
//! `f64::MIN_POSITIVE`, and negative zero land in the zero bucket; NaN and infinities are not
//! recorded (they would poison the sum).
//!
//! The sketch crosses process boundaries (the socket, the journal) in its own wire form,
//! [`SketchWire`]: every field is validated when it is turned back into a sketch, so a forged
//! message can neither make the leader index out of range nor allocate without bound.

use serde::{Deserialize, Serialize};

use crate::cbor::FromCbor;

/// The scale a new sketch starts at.
pub const MAX_SCALE: i32 = 6;
/// The lowest scale a sketch may fall to (base 2^1024: every finite value fits in a few buckets).
pub const MIN_SCALE: i32 = -10;
/// Buckets per sign, at most.
pub const MAX_BUCKETS: usize = 2048;

/// The largest bucket index magnitude a finite `f64` can have at `scale` (its binary exponent is
/// within ±1075), with room to spare. Offsets beyond it are forged.
fn max_index(scale: i32) -> i64 {
    if scale >= 0 {
        1100 << scale
    } else {
        (1100 >> -scale) + 1
    }
}

/// Contiguous bucket counts of one sign: `counts[k]` is the count of bucket `offset + k`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    offset: i32,
    counts: Vec<u64>,
}

impl Buckets {
    /// Index of the first bucket.
    pub fn offset(&self) -> i32 {
        self.offset
    }

    /// Counts from [`offset`](Self::offset) up.
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }

    /// The index range `(low, high)` held, if any.
    fn range(&self) -> Option<(i64, i64)> {
        let low = i64::from(self.offset);
        (!self.counts.is_empty()).then(|| (low, low + self.counts.len() as i64 - 1))
    }

    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(n);
            return;
        }
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            self.counts.splice(0..0, std::iter::repeat(0).take(grow));
            self.offset = index;
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            self.counts.resize(at + 1, 0);
        }
        self.counts[at] = self.counts[at].saturating_add(n);
    }

    /// Merges neighbouring buckets: the scale falls by `by`.
    fn downscale(&mut self, by: u32) {
        if by == 0 || self.counts.is_empty() {
            return;
        }
        let old = std::mem::take(&mut self.counts);
        let old_offset = self.offset;
        for (k, n) in old.into_iter().enumerate() {
            if n > 0 {
                self.add((old_offset + k as i32) >> by, n);
            }
        }
        if self.counts.is_empty() {
            self.offset = old_offset >> by;
        }
    }
}

/// A mergeable sketch of one distribution's values.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, FromCbor)]
#[serde(try_from = "SketchWire", into = "SketchWire")]
pub struct Sketch {
    scale: i32,
    zero_count: u64,
    positive: Buckets,
    negative: Buckets,
    count: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Default for Sketch {
    fn default() -> Self {
        Sketch {
            scale: MAX_SCALE,
            zero_count: 0,
            positive: Buckets::default(),
            negative: Buckets::default(),
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }
}

/// The bucket index of a positive, normal `value` at `scale`: the `i` with
/// `base^i < value <= base^(i+1)`. Exact powers of two are computed from the bits, not `log2`.
fn bucket_index(value: f64, scale: i32) -> i32 {
    let bits = value.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let power_of_two = bits & ((1u64 << 52) - 1) == 0;
    let index = if scale > 0 {
        if power_of_two {
            (exponent << scale) - 1
        } else {
            (value.log2() * f64::from(1u32 << scale)).ceil() as i64 - 1
        }
    } else {
        // At scale 0 the index is the exponent (one less for an exact power of two); lower scales
        // merge 2^-scale of those.
        (exponent - i64::from(power_of_two)) >> -scale
    };
    index.clamp(-max_index(scale), max_index(scale)) as i32
}

/// The lower and upper bound of bucket `index` at `scale`.
fn bucket_bounds(index: i32, scale: i32) -> (f64, f64) {
    let width = (-f64::from(scale)).exp2();
    (
        (f64::from(index) * width).exp2(),
        ((f64::from(index) + 1.0) * width).exp2(),
    )
}

impl Sketch {
    pub fn new() -> Sketch {
        Sketch::default()
    }

    /// Records one value. NaN and infinities are ignored (see the module doc).
    pub fn add(&mut self, value: f64) {
        self.add_n(value, 1);
    }

    /// Records `value` `n` times (a histogram bucket of another format, a sampled timer).
    pub fn add_n(&mut self, value: f64, n: u64) {
        if !value.is_finite() || n == 0 {
            return;
        }
        self.count = self.count.saturating_add(n);
        self.sum += value * n as f64;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        let magnitude = value.abs();
        if magnitude < f64::MIN_POSITIVE {
            self.zero_count = self.zero_count.saturating_add(n);
            return;
        }
        let index = bucket_index(magnitude, self.scale);
        let store = if value > 0.0 {
            &self.positive
        } else {
            &self.negative
        };
        let needed = Self::downscale_needed(store.range(), (i64::from(index), i64::from(index)));
        if needed > 0 {
            self.downscale(needed);
        }
        let index = bucket_index(magnitude, self.scale);
        if value > 0.0 {
            self.positive.add(index, n);
        } else {
            self.negative.add(index, n);
        }
    }

    /// Replaces sum, min and max with exact values known from elsewhere (a histogram of another
    /// format whose values were recorded at bucket representatives). Non-finite values are ignored.
    pub fn set_exact(&mut self, sum: f64, min: Option<f64>, max: Option<f64>) {
        if self.count == 0 {
            return;
        }
        if sum.is_finite() {
            self.sum = sum;
        }
        if let Some(min) = min.filter(|m| m.is_finite()) {
            self.min = min;
        }
        if let Some(max) = max.filter(|m| m.is_finite()) {
            self.max = max;
        }
    }

    /// How far the scale must fall for `range` and `extra` (index ranges at the current scale) to
    /// fit in [`MAX_BUCKETS`].
    fn downscale_needed(range: Option<(i64, i64)>, extra: (i64, i64)) -> u32 {
        let (mut low, mut high) = match range {
            Some((l, h)) => (l.min(extra.0), h.max(extra.1)),
            None => extra,
        };
        let mut by = 0;
        while high - low + 1 > MAX_BUCKETS as i64 {
            low >>= 1;
            high >>= 1;
            by += 1;
        }
        by
    }

    fn downscale(&mut self, by: u32) {
        let by = by.min((self.scale - MIN_SCALE) as u32);
        self.positive.downscale(by);
        self.negative.downscale(by);
        self.scale -= by as i32;
    }

    /// Adds `other`'s values to this sketch (both end at the lower of the two scales, or lower
    /// still if the union needs more than [`MAX_BUCKETS`]).
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        let scale = self.scale.min(other.scale);
        self.downscale((self.scale - scale) as u32);
        let shift = (other.scale - scale) as u32;
        let shifted = |b: &Buckets| b.range().map(|(l, h)| (l >> shift, h >> shift));
        let mut extra = 0;
        for (mine, theirs) in [
            (self.positive.range(), shifted(&other.positive)),
            (self.negative.range(), shifted(&other.negative)),
        ] {
            if let Some(theirs) = theirs {
                extra = extra.max(Self::downscale_needed(mine, theirs));
            }
        }
        self.downscale(extra);
        let shift = (other.scale - self.scale) as u32;
        for (mine, theirs) in [
            (&mut self.positive, &other.positive),
            (&mut self.negative, &other.negative),
        ] {
            for (k, &n) in theirs.counts.iter().enumerate() {
                if n > 0 {
                    mine.add((theirs.offset + k as i32) >> shift, n);
                }
            }
        }
        self.zero_count = self.zero_count.saturating_add(other.zero_count);
        self.count = self.count.saturating_add(other.count);
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// The smallest value recorded (`None` when empty).
    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    /// The largest value recorded (`None` when empty).
    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// The smallest and largest value as held, also when empty: [`SketchWire`]'s `min` and
    /// `max`, for writers of it that borrow the sketch.
    pub fn min_max_held(&self) -> (f64, f64) {
        (self.min, self.max)
    }

    pub fn scale(&self) -> i32 {
        self.scale
    }

    pub fn zero_count(&self) -> u64 {
        self.zero_count
    }

    pub fn positive(&self) -> &Buckets {
        &self.positive
    }

    pub fn negative(&self) -> &Buckets {
        &self.negative
    }

    /// The value at quantile `q` (0.0 … 1.0), within the sketch's relative error of a value seen;
    /// `None` when empty or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 || !(0.0..=1.0).contains(&q) {
            return None;
        }
        // The extremes are known exactly.
        if q == 0.0 {
            return Some(self.min);
        }
        if q == 1.0 {
            return Some(self.max);
        }
        let rank = (q * (self.count - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        // Negative values from the most negative (highest index) up, then zero, then positive.
        let estimate = |index: i32| {
            let (low, high) = bucket_bounds(index, self.scale);
            2.0 * low * high / (low + high)
        };
        let negatives = self.negative.counts.iter().enumerate().rev();
        for (k, &n) in negatives {
            seen = seen.saturating_add(n);
            if seen > rank {
                let v = -estimate(self.negative.offset + k as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        seen = seen.saturating_add(self.zero_count);
        if seen > rank {
            return Some(0.0_f64.clamp(self.min, self.max));
        }
        for (k, &n) in self.positive.counts.iter().enumerate() {
            seen = seen.saturating_add(n);
            if seen > rank {
                let v = estimate(self.positive.offset + k as i32);
                return Some(v.clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }
}

/// The wire and journal form of a [`Sketch`]: plain fields, validated by `TryFrom`. The bucket
/// vectors are bounded while they are read: a longer one is refused before it is allocated.
#[derive(Debug, Clone, Serialize, Deserialize, FromCbor)]
pub struct SketchWire {
    pub scale: i32,
    pub zero_count: u64,
    pub positive_offset: i32,
    #[cbor(max_len = MAX_BUCKETS)]
    pub positive: Vec<u64>,
    pub negative_offset: i32,
    #[cbor(max_len = MAX_BUCKETS)]
    pub negative: Vec<u64>,
    pub count: u64,
    pub sum: f64,
    pub min: f64,
    pub max: f64,
}

impl From<Sketch> for SketchWire {
    fn from(s: Sketch) -> SketchWire {
        SketchWire {
            scale: s.scale,
            zero_count: s.zero_count,
            positive_offset: s.positive.offset,
            positive: s.positive.counts,
            negative_offset: s.negative.offset,
            negative: s.negative.counts,
            count: s.count,
            sum: s.sum,
            min: s.min,
            max: s.max,
        }
    }
}

impl TryFrom<SketchWire> for Sketch {
    type Error = String;

    fn try_from(w: SketchWire) -> Result<Sketch, String> {
        if !(MIN_SCALE..=MAX_SCALE).contains(&w.scale) {
            return Err(format!(
                "sketch scale {} outside {MIN_SCALE}..={MAX_SCALE}",
                w.scale
            ));
        }
        let mut total = w.zero_count;
        for (name, offset, counts) in [
            ("positive", w.positive_offset, &w.positive),
            ("negative", w.negative_offset, &w.negative),
        ] {
            if counts.len() > MAX_BUCKETS {
                return Err(format!(
                    "sketch has {} {name} buckets (at most {MAX_BUCKETS})",
                    counts.len()
                ));
            }
            let last = i64::from(offset) + counts.len() as i64 - 1;
            let bound = max_index(w.scale);
            if i64::from(offset) < -bound || last > bound {
                return Err(format!("sketch {name} offset {offset} out of range"));
            }
            for &n in counts {
                total = total
                    .checked_add(n)
                    .ok_or_else(|| "sketch bucket counts overflow".to_owned())?;
            }
        }
        if total != w.count {
            return Err(format!(
                "sketch count {} is not the sum of its buckets ({total})",
                w.count
            ));
        }
        if w.sum.is_nan() {
            return Err("sketch sum is NaN".to_owned());
        }
        if w.count > 0 && !(w.min.is_finite() && w.max.is_finite() && w.min <= w.max) {
            return Err(format!(
                "sketch min {} / max {} are not a range",
                w.min, w.max
            ));
        }
        let buckets = |offset: i32, counts: Vec<u64>| Buckets {
            offset: if counts.is_empty() { 0 } else { offset },
            counts,
        };
        let empty = w.count == 0;
        Ok(Sketch {
            scale: w.scale,
            zero_count: w.zero_count,
            positive: buckets(w.positive_offset, w.positive),
            negative: buckets(w.negative_offset, w.negative),
            count: w.count,
            sum: if empty { 0.0 } else { w.sum },
            min: if empty { f64::INFINITY } else { w.min },
            max: if empty { f64::NEG_INFINITY } else { w.max },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sketch_of(values: impl IntoIterator<Item = f64>) -> Sketch {
        let mut s = Sketch::new();
        for v in values {
            s.add(v);
        }
        s
    }

    #[test]
    fn count_sum_min_max_are_exact_and_quantiles_within_the_error() {
        let s = sketch_of((1..=1000).map(f64::from));
        assert_eq!(
            (s.count(), s.sum(), s.min(), s.max()),
            (1000, 500_500.0, Some(1.0), Some(1000.0))
        );
        for (q, exact) in [(0.5, 500.0), (0.9, 900.0), (0.99, 990.0)] {
            let got = s.quantile(q).unwrap();
            assert!((got - exact).abs() / exact < 0.01, "q{q}: {got} vs {exact}");
        }
        assert_eq!(s.quantile(0.0), Some(1.0));
        assert_eq!(s.quantile(1.0), Some(1000.0));
        assert_eq!(s.quantile(1.5), None);
        assert_eq!(Sketch::new().quantile(0.5), None);
    }

    #[test]
    fn bucket_bounds_hold_their_values_including_powers_of_two() {
        for scale in [MAX_SCALE, 3, 0, -2, MIN_SCALE] {
            for v in [
                1.0, 2.0, 3.0, 0.5, 1e-300, 1e300, 1024.0, 1.0000001, 123.456,
            ] {
                let i = bucket_index(v, scale);
                let (low, high) = bucket_bounds(i, scale);
                if scale > -2 && v < 1e200 && v > 1e-200 {
                    assert!(
                        low < v * (1.0 + 1e-12) && v <= high * (1.0 + 1e-12),
                        "{v} at scale {scale}: bucket {i} = ({low}, {high}]"
                    );
                }
            }
        }
        // The upper bound is inclusive: exactly 2.0 is in (1, 2] at scale 0, index 0.
        assert_eq!(bucket_index(2.0, 0), 0);
        assert_eq!(bucket_index(2.0000001, 0), 1);
        assert_eq!(bucket_index(1.0, MAX_SCALE), -1);
        assert_eq!(bucket_index(4.0, -1), 0);
    }

    #[test]
    fn zero_negative_and_non_finite_values() {
        let s = sketch_of([0.0, -0.0, -5.0, -1.0, 2.0, f64::NAN, f64::INFINITY]);
        assert_eq!(s.count(), 5);
        assert_eq!(s.zero_count(), 2);
        assert_eq!(s.sum(), -4.0);
        assert_eq!((s.min(), s.max()), (Some(-5.0), Some(2.0)));
        let q0 = s.quantile(0.0).unwrap();
        assert!((q0 + 5.0).abs() < 0.05, "{q0}");
        assert_eq!(s.quantile(0.5), Some(0.0));
    }

    #[test]
    fn a_wide_range_downscales_and_stays_bounded() {
        let s = sketch_of([1e-300, 1.0, 1e300]);
        assert!(s.scale() < MAX_SCALE);
        assert!(s.positive().counts().len() <= MAX_BUCKETS);
        assert_eq!(s.count(), 3);
        assert_eq!(s.quantile(1.0), Some(1e300));
    }

    #[test]
    fn merging_equals_adding_everything_to_one_sketch() {
        let a_values: Vec<f64> = (1..=500).map(|v| f64::from(v) * 0.37).collect();
        let b_values: Vec<f64> = (1..=500).map(|v| f64::from(v) * 1e6).collect();
        let mut merged = sketch_of(a_values.iter().copied());
        merged.merge(&sketch_of(b_values.iter().copied()));
        let together = sketch_of(a_values.iter().chain(&b_values).copied());
        assert_eq!(merged.count(), together.count());
        assert_eq!(merged.scale(), together.scale());
        assert_eq!(merged.positive(), together.positive());
        // A sketch at a lower scale merges into one at a higher scale, and the other way round.
        let mut low = sketch_of([1e-300, 1e300]);
        low.merge(&sketch_of([5.0, 6.0]));
        assert_eq!(low.count(), 4);
        let mut high = sketch_of([5.0, 6.0]);
        high.merge(&sketch_of([1e-300, 1e300]));
        assert_eq!(high, low);
        let mut empty = Sketch::new();
        empty.merge(&Sketch::new());
        assert_eq!(empty, Sketch::new());
    }

    #[test]
    fn the_wire_form_round_trips_and_rejects_forgeries() {
        let s = sketch_of([1.0, 2.0, -3.0, 0.0]);
        let bytes = serde_cbor::to_vec(&s).unwrap();
        let back: Sketch = serde_cbor::from_slice(&bytes).unwrap();
        assert_eq!(back, s);

        let good = SketchWire::from(s);
        let forged = |f: &dyn Fn(&mut SketchWire)| {
            let mut w = good.clone();
            f(&mut w);
            Sketch::try_from(w)
        };
        assert!(forged(&|_| {}).is_ok());
        assert!(forged(&|w| w.scale = 7).is_err());
        assert!(forged(&|w| w.scale = -11).is_err());
        assert!(forged(&|w| w.count = 99).is_err());
        assert!(forged(&|w| w.positive = vec![1; MAX_BUCKETS + 1]).is_err());
        assert!(forged(&|w| w.positive_offset = i32::MAX).is_err());
        assert!(forged(&|w| w.positive_offset = max_index(MAX_SCALE) as i32).is_err());
        assert!(forged(&|w| w.negative_offset = i32::MIN).is_err());
        assert!(forged(&|w| w.sum = f64::NAN).is_err());
        assert!(forged(&|w| w.min = 10.0).is_err());
        assert!(forged(&|w| {
            w.positive = vec![u64::MAX, 2];
            w.count = 1;
        })
        .is_err());
        // Through CBOR too: a forged message never becomes a sketch.
        let mut w = good.clone();
        w.count = 1;
        let bytes = serde_cbor::to_vec(&w).unwrap();
        assert!(serde_cbor::from_slice::<Sketch>(&bytes).is_err());
    }

    #[test]
    fn merging_a_validated_extreme_sketch_never_panics() {
        let mut w = SketchWire::from(sketch_of([1.0]));
        w.scale = MIN_SCALE;
        w.positive_offset = -(max_index(MIN_SCALE) as i32);
        w.positive = vec![0; 2 * max_index(MIN_SCALE) as usize + 1];
        w.positive[0] = 1;
        let extreme = Sketch::try_from(w).unwrap();
        let mut s = sketch_of([1e10, 1e-10]);
        s.merge(&extreme);
        s.merge(&sketch_of([3.0]));
        assert_eq!(s.count(), 4);
        assert!(s.positive().counts().len() <= MAX_BUCKETS);
    }
}
