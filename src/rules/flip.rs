//! Time flips: when a filter's result can next change with no attribute change.
//!
//! [`CompiledFilter::next_flip`] answers for one filter and one device; [`FlipTable`] answers for many filters
//! at once, with no evaluation (the worker's wake-ups).

use super::attrs::{AttrValue, Attributes};
use super::catalogue::FieldId;
use super::compiled::{CompiledFilter, Leaf, Node, NodeRef, NumPred, Test, TimeRef};
use super::eval::{days_since, eval_leaf, num};
use super::time::{first_true_after, EpochMillis, Unit, DAY_MS, MAX_MILLIS};

impl CompiledFilter {
    /// The earliest instant after `now` at which the result can change with no attribute change, or `None`
    /// when it cannot. The result is constant on `[now, flip)`; at `flip` it may (not must) change, and the
    /// caller re-evaluates and asks again.
    pub fn next_flip(&self, attrs: &Attributes, now: EpochMillis) -> Option<EpochMillis> {
        if !self.is_time_dependent() {
            return None;
        }
        node_flip(self.root(), attrs, now).1
    }
}

/// The instants at which any time-relative condition of a set of filters can change truth for a device,
/// found with no evaluation: the worker's wake-ups (see [`FlipTable::next`]).
///
/// A fixed-length condition (`withinLast 2 hours`, `before 3 days ago`, `after 1 week from now`) changes
/// truth at its field's value plus a constant, and a `daysSince…` one at the value plus a whole number of
/// days next to one of its constants; so per field, the table keeps those constants, sorted, and a
/// device's next wake-up is one binary search per time field it has. Conditions on calendar months
/// (whose length varies) are asked one by one.
///
/// Every instant at which a condition changes truth is a wake-up, so no filter's result changes between
/// two consecutive ones. Not every wake-up changes a result (a condition may change truth with no effect on
/// its group, or a `daysSince` constant may be crossed where the count's truth does not change): the caller
/// re-evaluates then and asks again.
#[derive(Debug, Default, Clone)]
pub struct FlipTable {
    /// Per source field (sorted by field): offsets from the field's value, sorted and de-duplicated.
    fields: Vec<(FieldId, Vec<EpochMillis>)>,
    /// Conditions on calendar months, each asked with [`leaf_flip`].
    calendar: Vec<Leaf>,
}

impl FlipTable {
    /// The table of the time-relative conditions of `filters`.
    pub fn new<'a>(filters: impl IntoIterator<Item = &'a CompiledFilter>) -> Self {
        let mut fields: Vec<(FieldId, Vec<EpochMillis>)> = Vec::new();
        let mut calendar = Vec::new();
        for leaf in filters.into_iter().flat_map(|f| f.time_leaves.iter()) {
            let mut offsets = Vec::new();
            if !leaf_offsets(leaf, &mut offsets) {
                calendar.push(leaf.clone());
                continue;
            }
            match fields.iter_mut().find(|(f, _)| *f == leaf.field) {
                Some((_, all)) => all.extend(offsets),
                None => fields.push((leaf.field, offsets)),
            }
        }
        fields.sort_by_key(|(f, _)| *f);
        for (_, offsets) in &mut fields {
            offsets.sort_unstable();
            offsets.dedup();
        }
        Self { fields, calendar }
    }

    /// Whether no condition can change truth with time alone.
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.calendar.is_empty()
    }

    /// The earliest instant after `now` at which a condition of the table can change truth for `attrs`, or
    /// `None` when none can.
    pub fn next(&self, attrs: &Attributes, now: EpochMillis) -> Option<EpochMillis> {
        let mut next: Option<EpochMillis> = None;
        let mut consider = |t: EpochMillis| {
            if t > now && t <= MAX_MILLIS && next.is_none_or(|n| t < n) {
                next = Some(t);
            }
        };
        for (field, offsets) in &self.fields {
            let Some(AttrValue::Time(v)) = attrs.get(*field) else {
                continue;
            };
            // The first offset that lands after `now` (v + c is non-decreasing in c).
            let i = offsets.partition_point(|c| v.saturating_add(*c) <= now);
            if let Some(c) = offsets.get(i) {
                consider(v.saturating_add(*c));
            }
        }
        for leaf in &self.calendar {
            if let Some(t) = leaf_flip(leaf, attrs, now) {
                consider(t);
            }
        }
        next
    }
}

/// The offsets from the field's value at which a time-relative leaf can change truth; `false` when they
/// are not constant (calendar months).
///
/// A relative comparison is `r(t) > v` (or `>=`) with `r(t) = t + d` clamped to the supported range; for
/// `v` within that range it changes truth only at `t = v − d` (`+ 1` when strict), so the offset is
/// `1 − d` or `−d` (clamping moves no crossing: it only removes some). A `daysSince` count is `k` from
/// `v + k` days on, and its predicate changes only next to its constants (as in [`days_flip`]).
fn leaf_offsets(leaf: &Leaf, out: &mut Vec<EpochMillis>) -> bool {
    // r(t) = t + d: `ago` and `withinLast` shift back, `fromNow` forward.
    let mut relative = |at: &TimeRef, strict: bool| -> bool {
        let d = match at {
            TimeRef::At(_) => return true,
            TimeRef::Ago(span) => span.fixed_ms().map(|ms| -ms),
            TimeRef::FromNow(span) => span.fixed_ms(),
        };
        let Some(d) = d else {
            return false;
        };
        out.push(i64::from(strict) - d);
        true
    };
    match &leaf.test {
        Test::WithinLast(span) => relative(&TimeRef::Ago(*span), true),
        Test::Before(at) => relative(at, true),
        Test::After(at) => relative(at, false),
        Test::DaysSince(pred) => {
            let constants: &[f64] = match pred {
                NumPred::Eq(c)
                | NumPred::Gt(c)
                | NumPred::Ge(c)
                | NumPred::Lt(c)
                | NumPred::Le(c) => std::slice::from_ref(c),
                NumPred::Between(a, b) => &[*a, *b],
                NumPred::In(set) => set,
            };
            for c in constants {
                let f = c
                    .floor()
                    .clamp(i64::MIN as f64 / 2.0, i64::MAX as f64 / 2.0)
                    as i64;
                out.extend(
                    [f, f + 1, f + 2]
                        .into_iter()
                        .filter_map(|k| k.checked_mul(DAY_MS)),
                );
            }
            true
        }
        _ => true,
    }
}

/// `(result at now, earliest instant after now at which the result can change)`.
fn node_flip(
    node: NodeRef<'_>,
    attrs: &Attributes,
    now: EpochMillis,
) -> (bool, Option<EpochMillis>) {
    match node.node() {
        Node::Leaf(leaf) => (eval_leaf(leaf, attrs, now), leaf_flip(leaf, attrs, now)),
        Node::All(_) | Node::Any(_) => {
            let and = matches!(node.node(), Node::All(_));
            // The children that decide the result: for AND those that are false, for OR those that are true.
            // The result holds until every deciding child has changed (the latest of their flips, or never
            // if one of them never changes); with no deciding child, every child agrees with the result, and
            // it changes as soon as any child does. One pass, no allocation: this runs for every device an
            // event touches, for each of its org's time-dependent groups.
            let mut deciding = false;
            let mut deciding_never = false;
            let mut deciding_latest = EpochMillis::MIN;
            let mut earliest: Option<EpochMillis> = None;
            for child in node.children() {
                let (r, f) = node_flip(child, attrs, now);
                if r != and {
                    deciding = true;
                    match f {
                        Some(f) => deciding_latest = deciding_latest.max(f),
                        None => deciding_never = true,
                    }
                }
                if let Some(f) = f {
                    earliest = Some(earliest.map_or(f, |e| e.min(f)));
                }
            }
            let result = deciding != and;
            let flip = if deciding {
                (!deciding_never).then_some(deciding_latest)
            } else {
                earliest
            };
            (result, flip)
        }
    }
}

/// The earliest instant after `now` at which the leaf's truth differs from its truth at `now`.
fn leaf_flip(leaf: &Leaf, attrs: &Attributes, now: EpochMillis) -> Option<EpochMillis> {
    let Some(AttrValue::Time(v)) = attrs.get(leaf.field) else {
        return None;
    };
    let v = *v;
    // Each relative comparison is "r(t) > v" (or ">=") for a reference instant r(t) that moves with time.
    let flip_when = |r: &dyn Fn(EpochMillis) -> EpochMillis, strict: bool, calendar: bool| {
        let p = |t: EpochMillis| if strict { r(t) > v } else { r(t) >= v };
        if calendar {
            calendar_flip(now, &p)
        } else if p(now) {
            // Fixed-length spans: r never decreases, so the predicate goes false → true once and stays.
            None
        } else {
            // Away from the supported range's ends, r(t) = t + (r(now) − now): the boundary in closed form,
            // taken when it checks out (the first instant that satisfies p); bisection otherwise (saturation).
            let guess = v
                .checked_sub(r(now) - now)
                .and_then(|g| g.checked_add(i64::from(strict)));
            match guess {
                Some(g) if g > now && g <= MAX_MILLIS && p(g) && !p(g - 1) => Some(g),
                _ => first_true_after(now, MAX_MILLIS, p),
            }
        }
    };
    let months = |at: &TimeRef| matches!(at, TimeRef::Ago(s) | TimeRef::FromNow(s) if s.unit == Unit::Months);
    match &leaf.test {
        // withinLast: v >= before(now) is true until before(t) > v.
        Test::WithinLast(span) => flip_when(&|t| span.before(t), true, span.unit == Unit::Months),
        // before: v < r(t) becomes true when r(t) > v.
        Test::Before(at) if !matches!(at, TimeRef::At(_)) => {
            flip_when(&|t| at.resolve(t), true, months(at))
        }
        // after: v > r(t) becomes false when r(t) >= v.
        Test::After(at) if !matches!(at, TimeRef::At(_)) => {
            flip_when(&|t| at.resolve(t), false, months(at))
        }
        Test::DaysSince(pred) => days_flip(pred, v, now),
        _ => None,
    }
}

/// The earliest instant after `now` at which `p` differs from `p(now)`, for `p(t) = r(t) > v` (or `>=`) where
/// `r` shifts `t` by calendar months.
///
/// A calendar-month shift clamps the day to the month's end and keeps the time of day, so it is *not*
/// monotone: one month before 2024-03-29T23:00Z is 02-29T23:00, but one month before 03-30T00:00Z is
/// 02-29T00:00. It is, however, strictly increasing within each UTC day, and never decreases from one day's
/// start to the next (nor from one day's last instant to the next's). So:
/// - if `p(now)` holds, `p` stays true for the rest of the day and can only fail at the next midnight; if it
///   holds there, it holds for ever after;
/// - otherwise `p` first holds either later today (found by bisection within the day) or on the first later
///   day whose last instant satisfies it (found by bisection over days), at the first instant of that day
///   that does.
fn calendar_flip(now: EpochMillis, p: &dyn Fn(EpochMillis) -> bool) -> Option<EpochMillis> {
    let next_midnight = now.div_euclid(DAY_MS).checked_add(1)?.checked_mul(DAY_MS)?;
    if next_midnight > MAX_MILLIS {
        return None;
    }
    if p(now) {
        return (!p(next_midnight)).then_some(next_midnight);
    }
    // Later today.
    if let Some(t) = first_true_after(now, next_midnight - 1, p) {
        return Some(t);
    }
    // A later day: the first whose last instant satisfies p (day maxima never decrease).
    let last_day = MAX_MILLIS.div_euclid(DAY_MS);
    let first_day = next_midnight.div_euclid(DAY_MS);
    let day_end = |day: i64| (day * DAY_MS + DAY_MS - 1).min(MAX_MILLIS);
    if !p(day_end(last_day)) {
        return None;
    }
    let (mut lo, mut hi) = (first_day, last_day);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if p(day_end(mid)) {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    let start = lo * DAY_MS;
    if p(start) {
        Some(start)
    } else {
        first_true_after(start, day_end(lo), p)
    }
}

/// The next instant at which `pred(days_since(v, t))` changes. The day count is a step function that
/// becomes `k` at `v + k·DAY_MS`; the predicate's truth can only change at a day count next to one of its
/// constants, so only those counts are tried.
fn days_flip(pred: &NumPred, v: EpochMillis, now: EpochMillis) -> Option<EpochMillis> {
    let d0 = days_since(v, now);
    let at_d0 = num(pred, d0 as f64);
    let constants: Vec<f64> = match pred {
        NumPred::Eq(c) | NumPred::Gt(c) | NumPred::Ge(c) | NumPred::Lt(c) | NumPred::Le(c) => {
            vec![*c]
        }
        NumPred::Between(a, b) => vec![*a, *b],
        NumPred::In(set) => set.to_vec(),
    };
    let mut candidates: Vec<i64> = constants
        .iter()
        .flat_map(|c| {
            let f = c
                .floor()
                .clamp(i64::MIN as f64 / 2.0, i64::MAX as f64 / 2.0) as i64;
            [f, f + 1, f + 2]
        })
        .filter(|k| *k > d0)
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    let k = candidates
        .into_iter()
        .find(|k| num(pred, *k as f64) != at_d0)?;
    let at = v.checked_add(k.checked_mul(DAY_MS)?)?;
    (at <= MAX_MILLIS).then_some(at)
}

#[cfg(test)]
mod tests {
    use crate::rules::eval::tests::{t, Case, NOW};
    use crate::rules::filter::compile;
    use serde_json::json;

    #[test]
    fn within_last_flips_when_the_window_passes() {
        let c = Case::new();
        let f = c.leaf(
            "lastSeenAt",
            "withinLast",
            json!({"amount": 2, "unit": "hours"}),
        );
        let attrs = c.attrs(json!({"lastSeenAt": "2024-06-15T11:00:00Z"}));
        let flip = f.next_flip(&attrs, t(NOW)).unwrap();
        assert_eq!(flip, t("2024-06-15T13:00:00.001Z"));
        assert!(f.evaluate(&attrs, flip - 1));
        assert!(!f.evaluate(&attrs, flip));
        assert_eq!(f.next_flip(&attrs, flip), None, "never true again");
    }

    #[test]
    fn calendar_month_flips_are_exact() {
        let c = Case::new();
        let f = c.leaf(
            "lastSeenAt",
            "withinLast",
            json!({"amount": 1, "unit": "months"}),
        );
        let attrs = c.attrs(json!({"lastSeenAt": "2024-01-31T00:00:00Z"}));
        let flip = f.next_flip(&attrs, t("2024-02-10T00:00:00Z")).unwrap();
        // Every instant in February is at most one month after a January instant ≤ the 29th...
        // the first instant whose month-earlier is after Jan 31 00:00 is Mar 1 00:00:00.000.
        assert_eq!(flip, t("2024-03-01T00:00:00Z"));
        assert!(f.evaluate(&attrs, flip - 1));
        assert!(!f.evaluate(&attrs, flip));
    }

    #[test]
    fn days_since_flips_at_day_boundaries() {
        let c = Case::new();
        let f = c.leaf("daysSinceLastSeen", "between", json!({"from": 3, "to": 5}));
        let attrs = c.attrs(json!({"lastSeenAt": "2024-06-14T12:00:00Z"}));
        let now = t(NOW); // 1 day
        let first = f.next_flip(&attrs, now).unwrap();
        assert_eq!(first, t("2024-06-17T12:00:00Z"));
        assert!(f.evaluate(&attrs, first));
        let second = f.next_flip(&attrs, first).unwrap();
        assert_eq!(second, t("2024-06-20T12:00:00Z"));
        assert!(!f.evaluate(&attrs, second));
        assert_eq!(f.next_flip(&attrs, second), None);
    }

    #[test]
    fn groups_flip_only_when_the_deciding_children_do() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "OR", "conditions": [
                {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 1, "unit": "hours"}},
                {"field": "lastSeenAt", "operator": "withinLast", "value": {"amount": 3, "unit": "hours"}},
                {"field": "status", "operator": "equals", "value": "online"}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        let attrs = c.attrs(json!({"lastSeenAt": NOW}));
        // Both windows hold; the OR stays true until the longer one passes.
        assert_eq!(
            f.next_flip(&attrs, t(NOW)),
            Some(t("2024-06-15T15:00:00.001Z"))
        );
        let online = c.attrs(json!({"lastSeenAt": NOW, "status": "online"}));
        assert_eq!(
            f.next_flip(&online, t(NOW)),
            None,
            "a true child that never changes holds the OR"
        );
        let static_filter = c.leaf("hostname", "equals", json!("x"));
        assert_eq!(static_filter.next_flip(&attrs, t(NOW)), None);
    }
}
