//! Evaluating a candidate only as far as a change requires.
//!
//! When the field index returns a group, it has already checked the conditions a change reached against
//! the old and the new value, so it knows their truth now ([`LeafTruths`]). An AND one of whose
//! conditions is now false is false, and an OR one of whose conditions is now true is true, with no
//! attribute lookup; only where the known truths do not decide the result are the other conditions
//! evaluated, and a condition whose truth is known is never evaluated again.

use super::{eval_at, eval_leaf};
use crate::rules::attrs::Attributes;
use crate::rules::compiled::{children, CompiledFilter, Extent, Node};
use crate::rules::time::EpochMillis;

/// The truth of some of a filter's conditions for a device's current attributes, known without
/// evaluating them: what [`crate::rules::FieldIndex::candidates_with_truths`] reports for each candidate.
///
/// Conditions are numbered in the order they are written (depth first), from 0; the first 64 can be
/// known, the others are always evaluated.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct LeafTruths {
    /// Bit `i`: condition `i`'s truth is known.
    known: u64,
    /// Bit `i`: condition `i` is true (meaningful only where `known` has it).
    truth: u64,
}

impl LeafTruths {
    /// No condition known: evaluation reads every condition it needs.
    pub const NONE: LeafTruths = LeafTruths { known: 0, truth: 0 };

    /// The number of conditions whose truth can be known (the first ones of a filter).
    pub const CAPACITY: usize = 64;

    /// Condition `leaf`'s truth, if known.
    #[inline]
    pub fn get(self, leaf: usize) -> Option<bool> {
        (leaf < Self::CAPACITY && self.known >> leaf & 1 == 1).then(|| self.truth >> leaf & 1 == 1)
    }

    /// Records condition `leaf`'s truth (ignored for a condition beyond [`LeafTruths::CAPACITY`]).
    #[inline]
    pub fn set(&mut self, leaf: usize, truth: bool) {
        if leaf < Self::CAPACITY {
            let bit = 1u64 << leaf;
            self.known |= bit;
            if truth {
                self.truth |= bit;
            } else {
                self.truth &= !bit;
            }
        }
    }

    /// Whether no condition's truth is known.
    #[inline]
    pub fn is_empty(self) -> bool {
        self.known == 0
    }

    /// Whether the truth of some condition of a group is known.
    #[inline]
    fn any_in(self, span: &Extent) -> bool {
        let below = |n: u16| match 1u64.checked_shl(u32::from(n)) {
            Some(bit) => bit - 1,
            None => u64::MAX,
        };
        self.known & below(span.end_leaf) & !below(span.first_leaf) != 0
    }
}

impl CompiledFilter {
    /// Whether a device with these attributes matches at `now`, given the truth of some of its conditions
    /// for the same attributes at the same `now`: exactly [`CompiledFilter::evaluate`]'s result, reading
    /// only the conditions the known ones leave undecided.
    ///
    /// `known` must be true facts about `attrs` at `now` (the field index's, for the values a change left
    /// in `attrs`); a condition numbered beyond the filter's is ignored.
    #[inline]
    pub fn evaluate_with(&self, attrs: &Attributes, now: EpochMillis, known: LeafTruths) -> bool {
        if known.is_empty() {
            return self.evaluate(attrs, now);
        }
        eval_known(&self.nodes, 0, attrs, now, known)
    }
}

/// The result of the node at `at` decided by the known truths alone, or `None`.
fn partial(nodes: &[Node], at: usize, known: LeafTruths) -> Option<bool> {
    let (span, deciding) = match &nodes[at] {
        Node::Leaf(leaf) => return known.get(usize::from(leaf.number)),
        Node::All(span) => (span, false),
        Node::Any(span) => (span, true),
    };
    if !known.any_in(span) {
        return None;
    }
    // Kleene logic: an AND is false if a child is false and true if every child is true (an OR the
    // reverse).
    let mut unknown = false;
    for child in children(nodes, at) {
        match partial(nodes, child, known) {
            Some(truth) if truth == deciding => return Some(deciding),
            Some(_) => {}
            None => unknown = true,
        }
    }
    (!unknown).then_some(!deciding)
}

fn eval_known(
    nodes: &[Node],
    at: usize,
    attrs: &Attributes,
    now: EpochMillis,
    known: LeafTruths,
) -> bool {
    let (span, deciding) = match &nodes[at] {
        Node::Leaf(leaf) => {
            return known
                .get(usize::from(leaf.number))
                .unwrap_or_else(|| eval_leaf(leaf, attrs, now))
        }
        Node::All(span) => (span, false),
        Node::Any(span) => (span, true),
    };
    if !known.any_in(span) {
        return eval_at(nodes, at, attrs, now);
    }
    if let Some(truth) = partial(nodes, at, known) {
        return truth;
    }
    // Undecided: no child is known to decide, so evaluate the children in order until one does.
    for child in children(nodes, at) {
        if eval_known(nodes, child, attrs, now, known) == deciding {
            return deciding;
        }
    }
    !deciding
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::eval::tests::Case;
    use crate::rules::filter::compile;
    use serde_json::json;

    #[test]
    fn known_truths_decide_without_reading_attributes() {
        let c = Case::new();
        let f = compile(
            &json!({"operator": "AND", "conditions": [
                {"field": "status", "operator": "equals", "value": "online"},
                {"operator": "OR", "conditions": [
                    {"field": "uptimeSeconds", "operator": "greaterThan", "value": 10},
                    {"field": "hostname", "operator": "startsWith", "value": "gw"}
                ]}
            ]}),
            &c.catalogue,
        )
        .unwrap();
        // The device does not match at all; the "known" truths below are deliberately not facts about it,
        // to show which conditions evaluation read.
        let device = c.attrs(json!({"status": "offline", "uptimeSeconds": 1, "hostname": "db"}));
        let mut known = LeafTruths::NONE;
        known.set(0, true);
        known.set(1, true);
        assert!(
            f.evaluate_with(&device, 0, known),
            "AND of a true condition and an OR with a true condition is true without reading anything"
        );
        let mut known = LeafTruths::NONE;
        known.set(2, true);
        assert!(
            !f.evaluate_with(&device, 0, known),
            "status is still read, and is false"
        );
        known.set(0, true);
        assert!(f.evaluate_with(&device, 0, known));
        let mut known = LeafTruths::NONE;
        known.set(1, false);
        known.set(2, false);
        assert!(!f.evaluate_with(&device, 0, known));
    }

    #[test]
    fn conditions_beyond_the_capacity_are_evaluated() {
        let mut known = LeafTruths::NONE;
        known.set(LeafTruths::CAPACITY, true);
        assert!(known.is_empty());
        assert_eq!(known.get(LeafTruths::CAPACITY), None);
        known.set(63, false);
        assert_eq!(known.get(63), Some(false));
        known.set(63, true);
        assert_eq!(known.get(63), Some(true));
    }
}
