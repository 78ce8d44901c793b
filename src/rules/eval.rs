//! Evaluating compiled filters: the hot path, explanations, and time flips.
//!
//! [`CompiledFilter::evaluate`] short-circuits and does not allocate: attribute lookup is a binary search,
//! case-insensitive ASCII comparisons work byte-wise, and the rare non-ASCII `contains` lower-cases into a
//! reused thread-local buffer. [`CompiledFilter::explain`] evaluates every leaf (no short-circuit) and says
//! why each was true or false. [`CompiledFilter::next_flip`] tells when the result can next change with no
//! attribute change.

use std::cell::RefCell;

use serde::Serialize;
use serde_json::Value;

use super::attrs::{value_to_json, AttrValue, Attributes};
use super::catalogue::{Catalogue, FieldId};
use super::compare::{normalised, same_set};
use super::filter::{norm, CompiledFilter, Leaf, Needle, Node, NumPred, Test, TimeRef};
use super::time::{first_true_after, format_millis, EpochMillis, Unit, DAY_MS, MAX_MILLIS};

impl CompiledFilter {
    /// Whether a device with these attributes matches at `now`.
    #[inline]
    pub fn evaluate(&self, attrs: &Attributes, now: EpochMillis) -> bool {
        eval_node(&self.root, attrs, now)
    }

    /// Evaluates every condition and says why the device does or does not match.
    pub fn explain(
        &self,
        attrs: &Attributes,
        now: EpochMillis,
        catalogue: &Catalogue,
    ) -> Explanation {
        let root = explain_node(&self.root, attrs, now, catalogue, "$");
        Explanation {
            matches: root.result(),
            evaluated_at: format_millis(now),
            root,
        }
    }

    /// The earliest instant after `now` at which the result can change with no attribute change, or `None`
    /// when it cannot. The result is constant on `[now, flip)`; at `flip` it may (not must) change, and the
    /// caller re-evaluates and asks again.
    pub fn next_flip(&self, attrs: &Attributes, now: EpochMillis) -> Option<EpochMillis> {
        if !self.is_time_dependent() {
            return None;
        }
        node_flip(&self.root, attrs, now).1
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

/// Collects the leaves whose truth can change with time alone: those [`leaf_flip`] can answer for.
pub(crate) fn collect_time_leaves(node: &Node, out: &mut Vec<Leaf>) {
    match node {
        Node::All(children) | Node::Any(children) => {
            children.iter().for_each(|c| collect_time_leaves(c, out))
        }
        Node::Leaf(leaf) => {
            let relative = |at: &TimeRef| !matches!(at, TimeRef::At(_));
            let timed = match &leaf.test {
                Test::WithinLast(_) | Test::DaysSince(_) => true,
                Test::Before(at) | Test::After(at) => relative(at),
                _ => false,
            };
            if timed {
                out.push(leaf.clone());
            }
        }
    }
}

#[inline]
fn eval_node(node: &Node, attrs: &Attributes, now: EpochMillis) -> bool {
    match node {
        Node::All(children) => children.iter().all(|c| eval_node(c, attrs, now)),
        Node::Any(children) => children.iter().any(|c| eval_node(c, attrs, now)),
        Node::Leaf(leaf) => eval_leaf(leaf, attrs, now),
    }
}

#[inline]
fn eval_leaf(leaf: &Leaf, attrs: &Attributes, now: EpochMillis) -> bool {
    test(&leaf.test, attrs.get(leaf.field), now) != leaf.negate
}

/// The positive test on one attribute value (`None` = missing).
#[inline]
pub(crate) fn test(test: &Test, value: Option<&AttrValue>, now: EpochMillis) -> bool {
    use AttrValue as V;
    match (test, value) {
        (Test::IsNull, v) => v.is_none(),
        (Test::StrEmpty, None) | (Test::ListEmpty, None) => true,
        (Test::StrEmpty, Some(V::Str(s))) => s.is_empty(),
        (Test::ListEmpty, Some(V::StrList(items))) => items.is_empty(),
        (_, None) => false,
        (Test::StrEq(want), Some(V::Str(s))) => **want == **s,
        (Test::StrIn(set), Some(V::Str(s))) => set.binary_search_by(|x| (**x).cmp(&**s)).is_ok(),
        (Test::StrContains(n), Some(V::Str(s))) => contains_ci(s, n),
        (Test::StrStartsWith(n), Some(V::Str(s))) => starts_with_ci(s, n),
        (Test::StrEndsWith(n), Some(V::Str(s))) => ends_with_ci(s, n),
        (Test::StrMatches(re), Some(V::Str(s))) => re.is_match(s),
        (Test::EnumEq(want), Some(V::Enum(e))) => want == e,
        (Test::EnumIn(set), Some(V::Enum(e))) => set.binary_search(e).is_ok(),
        (Test::BoolEq(want), Some(V::Bool(b))) => want == b,
        (Test::Num(pred), Some(V::Num(x))) => num(pred, *x),
        (Test::DaysSince(pred), Some(V::Time(t))) => num(pred, days_since(*t, now) as f64),
        (Test::Before(at), Some(V::Time(t))) => *t < at.resolve(now),
        (Test::After(at), Some(V::Time(t))) => *t > at.resolve(now),
        (Test::TimeEq(want), Some(V::Time(t))) => want == t,
        (Test::TimeBetween(from, to), Some(V::Time(t))) => from <= t && t <= to,
        (Test::WithinLast(span), Some(V::Time(t))) => *t >= span.before(now),
        (Test::ListContains(n), Some(V::StrList(items))) => items.iter().any(|s| eq_ci(s, n)),
        (Test::ListHasAny(set), Some(V::StrList(items))) => items
            .iter()
            .any(|s| set.binary_search_by(|x| (**x).cmp(&**s)).is_ok()),
        (Test::ListHasAll(set), Some(V::StrList(items))) => {
            set.iter().all(|want| items.iter().any(|s| **s == **want))
        }
        (Test::ListEq(set), Some(V::StrList(items))) => same_set(items, set),
        // A value of another type than the test expects (a catalogue change since it was stored) never
        // satisfies a positive test.
        _ => false,
    }
}

#[inline]
fn num(pred: &NumPred, x: f64) -> bool {
    let x = norm(x);
    match pred {
        NumPred::Eq(c) => x == *c,
        NumPred::Gt(c) => x > *c,
        NumPred::Ge(c) => x >= *c,
        NumPred::Lt(c) => x < *c,
        NumPred::Le(c) => x <= *c,
        NumPred::Between(a, b) => *a <= x && x <= *b,
        NumPred::In(set) => set.binary_search_by(|c| c.total_cmp(&x)).is_ok(),
    }
}

/// Whole days from `t` to `now` (floored, negative when `t` is in the future).
#[inline]
pub fn days_since(t: EpochMillis, now: EpochMillis) -> i64 {
    now.saturating_sub(t).div_euclid(DAY_MS)
}

thread_local! {
    /// Reused buffer for lower-casing non-ASCII haystacks, so `contains` never allocates in steady state.
    static LOWER_BUF: RefCell<String> = const { RefCell::new(String::new()) };
}

fn contains_ci(hay: &str, needle: &Needle) -> bool {
    let n = needle.lower.as_bytes();
    if hay.is_ascii() && needle.lower.is_ascii() {
        let h = hay.as_bytes();
        if n.is_empty() {
            return true;
        }
        return h.len() >= n.len() && h.windows(n.len()).any(|w| w.eq_ignore_ascii_case(n));
    }
    LOWER_BUF.with(|buf| {
        let mut buf = buf.borrow_mut();
        buf.clear();
        buf.extend(hay.chars().flat_map(char::to_lowercase));
        buf.contains(&*needle.lower)
    })
}

fn starts_with_ci(hay: &str, needle: &Needle) -> bool {
    if hay.is_ascii() && needle.lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.lower.as_bytes());
        return h.len() >= n.len() && h[..n.len()].eq_ignore_ascii_case(n);
    }
    let mut hay = hay.chars().flat_map(char::to_lowercase);
    needle.lower.chars().all(|c| hay.next() == Some(c))
}

fn ends_with_ci(hay: &str, needle: &Needle) -> bool {
    if hay.is_ascii() && needle.lower.is_ascii() {
        let (h, n) = (hay.as_bytes(), needle.lower.as_bytes());
        return h.len() >= n.len() && h[h.len() - n.len()..].eq_ignore_ascii_case(n);
    }
    let mut hay = hay.chars().rev().flat_map(|c| c.to_lowercase().rev());
    needle.lower.chars().rev().all(|c| hay.next() == Some(c))
}

fn eq_ci(s: &str, needle: &Needle) -> bool {
    if s.is_ascii() && needle.lower.is_ascii() {
        return s.eq_ignore_ascii_case(&needle.lower);
    }
    s.chars()
        .flat_map(char::to_lowercase)
        .eq(needle.lower.chars())
}

/// Why a device does or does not match a filter.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Explanation {
    /// The filter's result.
    pub matches: bool,
    /// The `now` used for time-based conditions (RFC 3339, UTC).
    pub evaluated_at: String,
    /// The evaluated tree.
    pub root: ExplainNode,
}

/// One node of an explanation.
#[derive(Clone, Debug, Serialize, PartialEq)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ExplainNode {
    Group {
        path: String,
        operator: &'static str,
        result: bool,
        conditions: Vec<ExplainNode>,
    },
    Condition {
        path: String,
        field: String,
        operator: &'static str,
        value: Value,
        /// The device's value (for a computed field, the computed number); `null` when missing.
        actual: Value,
        result: bool,
        /// A sentence for people.
        reason: String,
    },
}

impl ExplainNode {
    /// The node's result.
    pub fn result(&self) -> bool {
        match self {
            ExplainNode::Group { result, .. } | ExplainNode::Condition { result, .. } => *result,
        }
    }
}

fn explain_node(
    node: &Node,
    attrs: &Attributes,
    now: EpochMillis,
    catalogue: &Catalogue,
    path: &str,
) -> ExplainNode {
    match node {
        Node::All(children) | Node::Any(children) => {
            let and = matches!(node, Node::All(_));
            // Paths of children come from their own metadata (leaves) or are derived by position (groups).
            let conditions: Vec<ExplainNode> = children
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    explain_node(c, attrs, now, catalogue, &format!("{path}.conditions[{i}]"))
                })
                .collect();
            let result = if and {
                conditions.iter().all(ExplainNode::result)
            } else {
                conditions.iter().any(ExplainNode::result)
            };
            ExplainNode::Group {
                path: path.to_string(),
                operator: if and { "AND" } else { "OR" },
                result,
                conditions,
            }
        }
        Node::Leaf(leaf) => explain_leaf(leaf, attrs, now, catalogue),
    }
}

fn explain_leaf(
    leaf: &Leaf,
    attrs: &Attributes,
    now: EpochMillis,
    catalogue: &Catalogue,
) -> ExplainNode {
    let meta = &leaf.meta;
    let value = attrs.get(leaf.field);
    let result = eval_leaf(leaf, attrs, now);
    let op = meta.operator.name();
    let (actual, reason) = match (&leaf.test, value) {
        (_, None) => {
            let source = catalogue.name(leaf.field);
            let what = if *source == *meta.field_name {
                format!("{} is missing", meta.field_name)
            } else {
                format!("{} is missing (computed from {source})", meta.field_name)
            };
            (Value::Null, format!("{what}, so {op} is {result}"))
        }
        (Test::DaysSince(_), Some(AttrValue::Time(t))) => {
            let days = days_since(*t, now);
            (
                Value::from(days),
                format!(
                    "{} is {days} ({} was {}), so {op} {} is {result}",
                    meta.field_name,
                    catalogue.name(leaf.field),
                    format_millis(*t),
                    describe_value(&meta.value)
                ),
            )
        }
        (test, Some(v)) => {
            let actual = value_to_json(catalogue, leaf.field, v);
            let detail = match test {
                Test::Before(at) | Test::After(at) if !matches!(at, TimeRef::At(_)) => {
                    format!(
                        " (that is {} at evaluation)",
                        format_millis(at.resolve(now))
                    )
                }
                Test::WithinLast(span) => format!(" (since {})", format_millis(span.before(now))),
                Test::TimeEq(_) | Test::Before(_) | Test::After(_) => normalised(&meta.value),
                Test::ListEq(_) => " (in any order, repeats ignored)".to_string(),
                Test::StrContains(_)
                | Test::StrStartsWith(_)
                | Test::StrEndsWith(_)
                | Test::ListContains(_) => " (ignoring case)".to_string(),
                _ => String::new(),
            };
            let reason = if matches!(leaf.test, Test::IsNull | Test::StrEmpty | Test::ListEmpty) {
                format!("{} is {actual}, so {op} is {result}", meta.field_name)
            } else {
                format!(
                    "{} is {actual}, so {op} {}{detail} is {result}",
                    meta.field_name,
                    describe_value(&meta.value)
                )
            };
            (actual, reason)
        }
    };
    ExplainNode::Condition {
        path: meta.path.clone(),
        field: meta.field_name.clone(),
        operator: op,
        value: meta.value.clone(),
        actual,
        result,
        reason,
    }
}

/// A filter value as a person would write it: `7 days`, `3 months from now`, `from 1 to 5`; other values
/// as JSON.
fn describe_value(value: &Value) -> String {
    let Some(obj) = value.as_object() else {
        return value.to_string();
    };
    if let (Some(amount), Some(unit)) = (obj.get("amount"), obj.get("unit").and_then(Value::as_str))
    {
        let direction = match obj.get("direction").and_then(Value::as_str) {
            Some("fromNow") => " from now",
            Some(_) => " ago",
            None => "",
        };
        return format!("{amount} {unit}{direction}");
    }
    if let (Some(from), Some(to)) = (obj.get("from"), obj.get("to")) {
        return format!("from {from} to {to}");
    }
    value.to_string()
}

/// `(result at now, earliest instant after now at which the result can change)`.
fn node_flip(node: &Node, attrs: &Attributes, now: EpochMillis) -> (bool, Option<EpochMillis>) {
    match node {
        Node::Leaf(leaf) => (eval_leaf(leaf, attrs, now), leaf_flip(leaf, attrs, now)),
        Node::All(children) | Node::Any(children) => {
            let and = matches!(node, Node::All(_));
            // The children that decide the result: for AND those that are false, for OR those that are true.
            // The result holds until every deciding child has changed (the latest of their flips, or never
            // if one of them never changes); with no deciding child, every child agrees with the result, and
            // it changes as soon as any child does. One pass, no allocation: this runs for every device an
            // event touches, for each of its org's time-dependent groups.
            let mut deciding = false;
            let mut deciding_never = false;
            let mut deciding_latest = EpochMillis::MIN;
            let mut earliest: Option<EpochMillis> = None;
            for child in children {
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
    use super::*;
    use crate::rules::filter::compile;
    use crate::rules::time::parse_datetime;
    use serde_json::json;

    fn t(s: &str) -> EpochMillis {
        parse_datetime(s).unwrap()
    }

    struct Case {
        catalogue: Catalogue,
    }

    impl Case {
        fn new() -> Self {
            Self {
                catalogue: Catalogue::default(),
            }
        }

        fn attrs(&self, doc: Value) -> Attributes {
            Attributes::from_json(doc.as_object().unwrap(), &self.catalogue).unwrap()
        }

        fn leaf(&self, field: &str, op: &str, value: Value) -> CompiledFilter {
            let cond = if value.is_null() {
                json!({"field": field, "operator": op})
            } else {
                json!({"field": field, "operator": op, "value": value})
            };
            compile(
                &json!({"operator": "AND", "conditions": [cond]}),
                &self.catalogue,
            )
            .unwrap_or_else(|e| panic!("{field} {op}: {e:?}"))
        }

        /// Evaluates `field op value` against each device document and returns the results.
        fn run(
            &self,
            field: &str,
            op: &str,
            value: Value,
            devices: &[Value],
            now: &str,
        ) -> Vec<bool> {
            let f = self.leaf(field, op, value);
            devices
                .iter()
                .map(|d| f.evaluate(&self.attrs(d.clone()), t(now)))
                .collect()
        }
    }

    const NOW: &str = "2024-06-15T12:00:00Z";

    #[test]
    fn string_operators() {
        let c = Case::new();
        let devices = [
            json!({"hostname": "Web-01"}),
            json!({"hostname": "db-01"}),
            json!({"hostname": ""}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("hostname", op, v, &devices, NOW);
        assert_eq!(r("equals", json!("Web-01")), [true, false, false, false]);
        assert_eq!(
            r("equals", json!("web-01")),
            [false, false, false, false],
            "equals is case-sensitive"
        );
        assert_eq!(r("notEquals", json!("Web-01")), [false, true, true, true]);
        assert_eq!(r("contains", json!("EB-0")), [true, false, false, false]);
        assert_eq!(r("notContains", json!("EB-0")), [false, true, true, true]);
        assert_eq!(r("startsWith", json!("WEB")), [true, false, false, false]);
        assert_eq!(r("endsWith", json!("-01")), [true, true, false, false]);
        assert_eq!(
            r("matches", json!("^[a-z]+-\\d+$")),
            [false, true, false, false]
        );
        assert_eq!(
            r("matches", json!("b-0")),
            [true, true, false, false],
            "unanchored"
        );
        assert_eq!(r("in", json!(["db-01", "x"])), [false, true, false, false]);
        assert_eq!(r("in", json!([])), [false, false, false, false]);
        assert_eq!(r("notIn", json!([])), [true, true, true, true]);
        assert_eq!(r("isEmpty", Value::Null), [false, false, true, true]);
        assert_eq!(r("isNotEmpty", Value::Null), [true, true, false, false]);
        assert_eq!(r("isNull", Value::Null), [false, false, false, true]);
        assert_eq!(r("isNotNull", Value::Null), [true, true, true, false]);
    }

    #[test]
    fn case_insensitive_operators_fold_non_ascii_text() {
        let c = Case::new();
        let devices = [
            json!({"displayName": "Straße ÄRGER"}),
            json!({"displayName": "ärger"}),
        ];
        let r = |op: &str, v: Value| c.run("displayName", op, v, &devices, NOW);
        assert_eq!(r("contains", json!("äRg")), [true, true]);
        assert_eq!(
            r("startsWith", json!("STRASSE")),
            [false, false],
            "no full case folding"
        );
        assert_eq!(r("startsWith", json!("STRAßE")), [true, false]);
        assert_eq!(r("endsWith", json!("ÄRGER")), [true, true]);
    }

    #[test]
    fn enum_number_and_boolean_operators() {
        let c = Case::new();
        let statuses = [
            json!({"status": "online"}),
            json!({"status": "offline"}),
            json!({}),
        ];
        assert_eq!(
            c.run("status", "equals", json!("online"), &statuses, NOW),
            [true, false, false]
        );
        assert_eq!(
            c.run(
                "status",
                "notIn",
                json!(["online", "maintenance"]),
                &statuses,
                NOW
            ),
            [false, true, true]
        );
        let numbers = [
            json!({"uptimeSeconds": 10}),
            json!({"uptimeSeconds": 10.5}),
            json!({"uptimeSeconds": -0.0}),
            json!({}),
        ];
        let n = |op: &str, v: Value| c.run("uptimeSeconds", op, v, &numbers, NOW);
        assert_eq!(
            n("equals", json!(10.0)),
            [true, false, false, false],
            "numbers compare numerically"
        );
        assert_eq!(
            n("equals", json!(0)),
            [false, false, true, false],
            "-0 equals 0"
        );
        assert_eq!(n("greaterThan", json!(10)), [false, true, false, false]);
        assert_eq!(
            n("greaterThanOrEquals", json!(10)),
            [true, true, false, false]
        );
        assert_eq!(n("lessThan", json!(10)), [false, false, true, false]);
        assert_eq!(n("lessThanOrEquals", json!(10)), [true, false, true, false]);
        assert_eq!(
            n("between", json!({"from": 10, "to": 10.5})),
            [true, true, false, false],
            "inclusive"
        );
        assert_eq!(n("in", json!([10.5, 0])), [false, true, true, false]);
        assert_eq!(n("notIn", json!([10.5, 0])), [true, false, false, true]);
        let cat = Catalogue::from_config(&crate::rules::catalogue::CatalogueConfig {
            custom_fields: vec![crate::rules::catalogue::CustomFieldConfig {
                key: "beta".into(),
                ty: crate::rules::catalogue::DeclaredType::Boolean,
                values: vec![],
                description: String::new(),
            }],
            ..Default::default()
        })
        .unwrap();
        let f = compile(
            &json!({"operator": "AND", "conditions": [{"field": "custom.beta", "operator": "notEquals", "value": true}]}),
            &cat,
        )
        .unwrap();
        let a = |d: Value| Attributes::from_json(d.as_object().unwrap(), &cat).unwrap();
        assert!(!f.evaluate(&a(json!({"custom.beta": true})), 0));
        assert!(f.evaluate(&a(json!({"custom.beta": false})), 0));
        assert!(f.evaluate(&a(json!({})), 0));
    }

    #[test]
    fn array_operators() {
        let c = Case::new();
        let devices = [
            json!({"tags": ["Prod", "eu"]}),
            json!({"tags": []}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("tags", op, v, &devices, NOW);
        assert_eq!(
            r("contains", json!("prod")),
            [true, false, false],
            "element equality ignoring case"
        );
        assert_eq!(
            r("contains", json!("pro")),
            [false, false, false],
            "not a substring"
        );
        assert_eq!(r("notContains", json!("prod")), [false, true, true]);
        assert_eq!(
            r("hasAny", json!(["prod", "eu"])),
            [true, false, false],
            "exact"
        );
        assert_eq!(r("hasAny", json!([])), [false, false, false]);
        assert_eq!(r("hasAll", json!(["Prod", "eu"])), [true, false, false]);
        assert_eq!(
            r("hasAll", json!([])),
            [true, true, false],
            "hasAll [] holds for any present array"
        );
        assert_eq!(
            r("isEmpty", Value::Null),
            [false, true, true],
            "a missing array is empty"
        );
        assert_eq!(r("isNotEmpty", Value::Null), [true, false, false]);
        assert_eq!(r("isNull", Value::Null), [false, false, true]);
    }

    #[test]
    fn datetime_operators() {
        let c = Case::new();
        let devices = [
            json!({"lastSeenAt": "2024-06-15T11:00:00Z"}),
            json!({"lastSeenAt": "2024-06-08T12:00:00Z"}),
            json!({"lastSeenAt": "2024-06-08T11:59:59.999Z"}),
            json!({}),
        ];
        let r = |op: &str, v: Value| c.run("lastSeenAt", op, v, &devices, NOW);
        let week = json!({"amount": 7, "unit": "days"});
        assert_eq!(
            r("withinLast", week.clone()),
            [true, true, false, false],
            "boundary is inclusive"
        );
        assert_eq!(r("notWithinLast", week.clone()), [false, false, true, true]);
        assert_eq!(
            r("before", week.clone()),
            [false, false, true, false],
            "strict"
        );
        assert_eq!(r("after", week), [true, false, false, false], "strict");
        assert_eq!(
            r("before", json!("2024-06-08T14:00:00+02:00")),
            [false, false, true, false],
            "offsets normalised"
        );
        assert_eq!(
            r(
                "between",
                json!({"from": "2024-06-08T12:00:00Z", "to": "2024-06-15T11:00:00Z"})
            ),
            [true, true, false, false]
        );
        assert_eq!(r("after", json!("now")), [false, false, false, false]);
        let future = [json!({"lastSeenAt": "2024-07-01T00:00:00Z"})];
        assert_eq!(
            c.run(
                "lastSeenAt",
                "before",
                json!({"amount": 1, "unit": "months", "direction": "fromNow"}),
                &future,
                NOW
            ),
            [true]
        );
    }

    #[test]
    fn within_last_months_are_calendar_months() {
        let c = Case::new();
        let devices = [
            json!({"lastSeenAt": "2024-02-29T10:00:00Z"}),
            json!({"lastSeenAt": "2024-02-29T09:59:59Z"}),
        ];
        let month = json!({"amount": 1, "unit": "months"});
        // One calendar month before 2024-03-31T10:00 is 2024-02-29T10:00 (clamped to the month's end).
        assert_eq!(
            c.run(
                "lastSeenAt",
                "withinLast",
                month,
                &devices,
                "2024-03-31T10:00:00Z"
            ),
            [true, false]
        );
    }

    #[test]
    fn days_since_is_computed_at_evaluation_time() {
        let c = Case::new();
        let devices = [json!({"lastSeenAt": "2024-06-10T13:00:00Z"}), json!({})];
        // 4 days and 23 hours ago: 4 whole days.
        assert_eq!(
            c.run("daysSinceLastSeen", "equals", json!(4), &devices, NOW),
            [true, false]
        );
        assert_eq!(
            c.run("daysSinceLastSeen", "greaterThan", json!(4), &devices, NOW),
            [false, false]
        );
        assert_eq!(
            c.run("daysSinceLastSeen", "isNull", Value::Null, &devices, NOW),
            [false, true]
        );
    }

    #[test]
    fn nested_groups_combine_with_and_or() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "OR", "conditions": [
                {"operator": "AND", "conditions": [
                    {"field": "status", "operator": "equals", "value": "online"},
                    {"field": "tags", "operator": "contains", "value": "prod"}
                ]},
                {"field": "osType", "operator": "equals", "value": "rtos"}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        let e = |d: Value| f.evaluate(&c.attrs(d), 0);
        assert!(e(json!({"status": "online", "tags": ["prod"]})));
        assert!(!e(json!({"status": "online", "tags": ["dev"]})));
        assert!(e(json!({"osType": "rtos"})));
    }

    #[test]
    fn explanations_say_why() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "AND", "conditions": [
                {"field": "hostname", "operator": "startsWith", "value": "web"},
                {"field": "daysSinceLastSeen", "operator": "lessThan", "value": 3},
                {"field": "custom.rack", "operator": "equals", "value": "r1"}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        let attrs = c.attrs(json!({"hostname": "WEB-9", "lastSeenAt": "2024-06-14T00:00:00Z"}));
        let ex = f.explain(&attrs, t(NOW), &c.catalogue);
        assert!(!ex.matches);
        assert_eq!(ex.matches, f.evaluate(&attrs, t(NOW)));
        let ExplainNode::Group { conditions, .. } = &ex.root else {
            panic!("root is a group")
        };
        let reasons: Vec<(String, bool)> = conditions
            .iter()
            .map(|n| match n {
                ExplainNode::Condition { reason, result, .. } => (reason.clone(), *result),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            reasons[0],
            (
                "hostname is \"WEB-9\", so startsWith \"web\" (ignoring case) is true".into(),
                true
            )
        );
        assert_eq!(
            reasons[1],
            (
                "daysSinceLastSeen is 1 (lastSeenAt was 2024-06-14T00:00:00.000Z), so lessThan 3 is true".into(),
                true
            )
        );
        assert_eq!(
            reasons[2],
            ("custom.rack is missing, so equals is false".into(), false)
        );
        let json = serde_json::to_value(&ex).unwrap();
        assert_eq!(json["root"]["conditions"][2]["path"], "$.conditions[2]");
        assert_eq!(json["root"]["kind"], "group");
    }

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
