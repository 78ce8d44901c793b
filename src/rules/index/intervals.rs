//! Interval indexes: the threshold conditions on one numeric or datetime field, found by the values a
//! change crosses.
//!
//! Every threshold test holds on one interval of its field's values: `greaterThan c` on `(c, ∞)`,
//! `lessThanOrEquals c` on `(−∞, c]`, `between a b` on `[a, b]`, an absolute `before t` on `(−∞, t)`, and
//! so on. Its truth can only change where the value passes one of the interval's finite ends. An end is a
//! [`Cut`]: a point between two values, just below `c` (separating `x < c` from `x ≥ c`) or just above it
//! (separating `x ≤ c` from `x > c`). [`Thresholds`] keeps every end of every condition on a field in one
//! array sorted by cut, so a change `old → new` finds the cuts lying between the two values with two binary
//! searches, and only those conditions are checked. A change that crosses no cut changes no threshold
//! condition's truth, whatever the number of conditions.

use std::cmp::Ordering;

use super::keys::{Listing, Truth};

/// A value type with an order and values below and above every value an attribute can hold.
pub(crate) trait Point: Copy + PartialEq + PartialOrd + std::fmt::Debug {
    /// Below every attribute value: a lower end here excludes nothing.
    const LOWEST: Self;
    /// Above every attribute value: an upper end here excludes nothing.
    const HIGHEST: Self;
    /// A total order on the values (numbers are finite and `-0.0` is normalised away).
    fn order(self, other: Self) -> Ordering;
}

impl Point for f64 {
    const LOWEST: Self = f64::NEG_INFINITY;
    const HIGHEST: Self = f64::INFINITY;
    fn order(self, other: Self) -> Ordering {
        self.total_cmp(&other)
    }
}

impl Point for i64 {
    const LOWEST: Self = i64::MIN;
    const HIGHEST: Self = i64::MAX;
    fn order(self, other: Self) -> Ordering {
        self.cmp(&other)
    }
}

/// A point between values: just below `at` (`above == false`) or just above it.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Cut<T> {
    pub(crate) at: T,
    pub(crate) above: bool,
}

impl<T: Point> Cut<T> {
    /// Just below `at`: separates `x < at` from `x ≥ at`.
    pub(crate) fn below(at: T) -> Self {
        Self { at, above: false }
    }

    /// Just above `at`: separates `x ≤ at` from `x > at`.
    pub(crate) fn above(at: T) -> Self {
        Self { at, above: true }
    }

    /// Whether the cut lies below the value `x`.
    #[inline]
    fn is_below(self, x: T) -> bool {
        match self.at.order(x) {
            Ordering::Less => true,
            Ordering::Equal => !self.above,
            Ordering::Greater => false,
        }
    }

    fn order(self, other: Self) -> Ordering {
        self.at.order(other.at).then(self.above.cmp(&other.above))
    }

    /// Whether the cut can separate two attribute values (the open ends never do).
    fn is_finite(self) -> bool {
        self != Cut::below(T::LOWEST) && self != Cut::above(T::HIGHEST)
    }
}

/// The values a positive threshold test holds for: those above `lower` and below `upper`.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) struct Interval<T> {
    pub(crate) lower: Cut<T>,
    pub(crate) upper: Cut<T>,
}

impl<T: Point> Interval<T> {
    /// Values above `lower`, with no upper end.
    pub(crate) fn from(lower: Cut<T>) -> Self {
        Self {
            lower,
            upper: Cut::above(T::HIGHEST),
        }
    }

    /// Values below `upper`, with no lower end.
    pub(crate) fn to(upper: Cut<T>) -> Self {
        Self {
            lower: Cut::below(T::LOWEST),
            upper,
        }
    }

    /// `x ∈ [from, to]`.
    pub(crate) fn closed(from: T, to: T) -> Self {
        Self {
            lower: Cut::below(from),
            upper: Cut::above(to),
        }
    }

    /// Whether the test holds for `x` (`None`: a missing value or one of another type, for which a
    /// positive threshold test never holds).
    #[inline]
    pub(crate) fn contains(&self, x: Option<T>) -> bool {
        x.is_some_and(|x| self.lower.is_below(x) && !self.upper.is_below(x))
    }
}

/// One end of one condition: listed in cut order.
#[derive(Clone, Debug)]
struct End<T> {
    cut: Cut<T>,
    listing: Listing,
    interval: Interval<T>,
}

/// The threshold conditions on one field, as their ends sorted by cut.
#[derive(Clone, Debug, Default)]
pub(crate) struct Thresholds<T> {
    ends: Vec<End<T>>,
}

impl<T: Point> Thresholds<T> {
    /// Lists a condition of a group.
    pub(crate) fn insert(&mut self, listing: Listing, interval: Interval<T>) {
        for cut in [interval.lower, interval.upper] {
            if !cut.is_finite() {
                continue;
            }
            let at = self
                .ends
                .partition_point(|e| e.cut.order(cut) != Ordering::Greater);
            self.ends.insert(
                at,
                End {
                    cut,
                    listing,
                    interval,
                },
            );
        }
    }

    /// Removes every condition of the group in `slot`.
    pub(crate) fn remove(&mut self, slot: u32) {
        self.ends.retain(|e| e.listing.slot != slot);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Calls `emit` with each condition whose truth differs between `old` and `new` (`None`: missing or
    /// of another type), and its truth for `new`. Each such condition is emitted at least once; a slot may
    /// repeat.
    #[inline]
    pub(crate) fn changed(
        &self,
        old: Option<T>,
        new: Option<T>,
        mut emit: impl FnMut(Listing, Truth),
    ) {
        let ends: &[End<T>] = match (old, new) {
            (Some(a), Some(b)) => {
                let (lo, hi) = match a.order(b) {
                    Ordering::Less => (a, b),
                    Ordering::Greater => (b, a),
                    Ordering::Equal => return,
                };
                // The ends lying between the two values: those below `hi` but not below `lo`.
                let from = self.ends.partition_point(|e| e.cut.is_below(lo));
                let to = self.ends.partition_point(|e| e.cut.is_below(hi));
                self.ends.get(from..to).unwrap_or_default()
            }
            (None, None) => return,
            // One side holds no value of the type: every condition true for the other one changes.
            _ => &self.ends,
        };
        for end in ends {
            let is = end.interval.contains(new);
            if end.interval.contains(old) != is {
                emit(end.listing, Truth::Is(is));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn changed(t: &Thresholds<f64>, old: Option<f64>, new: Option<f64>) -> Vec<u32> {
        let mut out = Vec::new();
        t.changed(old, new, |l, _| out.push(l.slot));
        out.sort_unstable();
        out.dedup();
        out
    }

    #[test]
    fn a_change_reaches_only_the_conditions_whose_ends_it_crosses() {
        let mut t = Thresholds::default();
        t.insert(Listing::group(1), Interval::from(Cut::above(10.0))); // > 10
        t.insert(Listing::group(2), Interval::from(Cut::below(10.0))); // >= 10
        t.insert(Listing::group(3), Interval::to(Cut::below(10.0))); // < 10
        t.insert(Listing::group(4), Interval::to(Cut::above(10.0))); // <= 10
        t.insert(Listing::group(5), Interval::closed(10.0, 20.0));
        assert_eq!(changed(&t, Some(0.0), Some(5.0)), Vec::<u32>::new());
        assert_eq!(changed(&t, Some(5.0), Some(10.0)), [2, 3, 5]);
        assert_eq!(changed(&t, Some(10.0), Some(11.0)), [1, 4]);
        assert_eq!(changed(&t, Some(11.0), Some(10.0)), [1, 4]);
        assert_eq!(changed(&t, Some(20.0), Some(21.0)), [5]);
        assert_eq!(
            changed(&t, Some(5.0), Some(25.0)),
            [1, 2, 3, 4],
            "both ends of `between` crossed: no change"
        );
        assert_eq!(changed(&t, None, Some(10.0)), [2, 4, 5]);
        assert_eq!(changed(&t, Some(0.0), None), [3, 4]);
        t.remove(2);
        assert_eq!(changed(&t, Some(5.0), Some(10.0)), [3, 5]);
    }

    #[test]
    fn integer_ends_at_the_extremes_are_never_crossed() {
        let mut t = Thresholds::default();
        t.insert(
            Listing::group(1),
            Interval::<i64>::from(Cut::below(i64::MIN)),
        );
        t.insert(Listing::group(2), Interval::<i64>::to(Cut::above(i64::MAX)));
        assert!(t.is_empty());
        let mut out = Vec::new();
        t.changed(Some(i64::MIN), Some(i64::MAX), |l, _| out.push(l.slot));
        assert!(out.is_empty());
    }
}
