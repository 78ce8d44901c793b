//! The leaf scan: conditions no value or interval index can find (text search, regexes, relative time,
//! null and emptiness tests, array tests), checked one by one against a change's old and new value.
//!
//! Many groups share a condition (`hostname startsWith "gw-"` in a hundred filters), so the scan keeps
//! each distinct condition once, with the groups that have it, and checks it once per change. A field's
//! distinct regexes are also compiled into one [`RegexSet`], which tells in one pass over a value which of
//! them match, instead of one search per regex.

use foldhash::HashMap;
use regex::{RegexSet, RegexSetBuilder};

use super::keys::{Listing, Truth};
use crate::rules::attrs::AttrValue;
use crate::rules::compiled::Test;
use crate::rules::eval::test;
use crate::rules::time::EpochMillis;

/// Above this many distinct regexes on one field, each is run on its own: a set's automaton grows with
/// every pattern, and compiling it again on every edit would cost more than it saves.
const MAX_SET_PATTERNS: usize = 256;

/// The most memory one field's regex set may take once compiled; a larger set is not built.
const SET_COMPILED_BYTES: usize = 16 << 20;

/// What makes two conditions the same, for the conditions that are often shared; `None` for the others,
/// which are kept apart (they are still correct, just checked once per group).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Key {
    Contains(Box<str>),
    StartsWith(Box<str>),
    EndsWith(Box<str>),
    Matches(Box<str>),
    ListContains(Box<str>),
    StrEmpty,
    ListEmpty,
    IsNull,
}

fn key(t: &Test) -> Option<Key> {
    Some(match t {
        Test::StrContains(n) => Key::Contains(n.lower.as_str().into()),
        Test::StrStartsWith(n) => Key::StartsWith(n.lower.as_str().into()),
        Test::StrEndsWith(n) => Key::EndsWith(n.lower.as_str().into()),
        Test::StrMatches(re) => Key::Matches(re.as_str().into()),
        Test::ListContains(n) => Key::ListContains(n.lower.as_str().into()),
        Test::StrEmpty => Key::StrEmpty,
        Test::ListEmpty => Key::ListEmpty,
        Test::IsNull => Key::IsNull,
        _ => return None,
    })
}

/// One distinct condition and the groups that have it.
#[derive(Clone, Debug)]
struct Shared {
    test: Test,
    /// The groups with this condition (a group with it twice is listed twice).
    listings: Vec<Listing>,
    /// Its position in the field's regex set, when it is a regex in the set.
    in_set: Option<usize>,
}

/// The scanned conditions on one field.
#[derive(Clone, Debug, Default)]
pub(super) struct Scan {
    shared: Vec<Shared>,
    /// Condition → its position in `shared`, for the conditions that have a [`Key`].
    positions: HashMap<Key, usize>,
    /// The distinct regexes of `shared`, in one set (`None` when there are none, too many, or the set
    /// could not be compiled: then each is run alone).
    regexes: Option<RegexSet>,
}

impl Scan {
    /// Lists condition `t` of a group.
    pub(super) fn insert(&mut self, listing: Listing, t: &Test) {
        let key = key(t);
        if let Some(i) = key.as_ref().and_then(|k| self.positions.get(k)) {
            if let Some(shared) = self.shared.get_mut(*i) {
                shared.listings.push(listing);
                return;
            }
        }
        if let Some(key) = key {
            self.positions.insert(key, self.shared.len());
        }
        let regex = matches!(t, Test::StrMatches(_));
        self.shared.push(Shared {
            test: t.clone(),
            listings: vec![listing],
            in_set: None,
        });
        if regex {
            self.compile_regexes();
        }
    }

    /// Removes every condition of the group in `slot`.
    pub(super) fn remove(&mut self, slot: u32) {
        let before = self.shared.len();
        for shared in &mut self.shared {
            shared.listings.retain(|l| l.slot != slot);
        }
        self.shared.retain(|s| !s.listings.is_empty());
        if self.shared.len() != before {
            self.positions.clear();
            for (i, shared) in self.shared.iter().enumerate() {
                if let Some(k) = key(&shared.test) {
                    self.positions.insert(k, i);
                }
            }
            self.compile_regexes();
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.shared.is_empty()
    }

    /// Compiles the distinct regexes into one set, and records each one's position in it.
    fn compile_regexes(&mut self) {
        self.regexes = None;
        self.shared.iter_mut().for_each(|s| s.in_set = None);
        let regexes: Vec<usize> = (0..self.shared.len())
            .filter(|i| matches!(self.shared[*i].test, Test::StrMatches(_)))
            .collect();
        if regexes.is_empty() || regexes.len() > MAX_SET_PATTERNS {
            return;
        }
        let patterns = regexes.iter().filter_map(|i| match &self.shared[*i].test {
            Test::StrMatches(re) => Some(re.as_str()),
            _ => None,
        });
        let Ok(set) = RegexSetBuilder::new(patterns)
            .size_limit(SET_COMPILED_BYTES)
            .dfa_size_limit(SET_COMPILED_BYTES)
            .build()
        else {
            return;
        };
        for (position, i) in regexes.iter().enumerate() {
            if let Some(shared) = self.shared.get_mut(*i) {
                shared.in_set = Some(position);
            }
        }
        self.regexes = Some(set);
    }

    /// Calls `emit` with every listed condition whose positive test differs in truth between `old` and
    /// `new` at `now`, and its truth for `new` (a slot may repeat).
    #[inline]
    pub(super) fn changed(
        &self,
        old: Option<&AttrValue>,
        new: Option<&AttrValue>,
        now: EpochMillis,
        mut emit: impl FnMut(Listing, Truth),
    ) {
        let matched = |value: Option<&AttrValue>| match (&self.regexes, value) {
            (Some(set), Some(AttrValue::Str(s))) => Some(set.matches(s.as_str())),
            _ => None,
        };
        let (old_set, new_set) = (matched(old), matched(new));
        for shared in &self.shared {
            let (was, is) = match (shared.in_set, &old_set, &new_set) {
                (Some(i), old_set, new_set) => (
                    // A value that is not a string matches no regex (as `test` says).
                    old_set.as_ref().is_some_and(|m| m.matched(i)),
                    new_set.as_ref().is_some_and(|m| m.matched(i)),
                ),
                (None, _, _) => (test(&shared.test, old, now), test(&shared.test, new, now)),
            };
            if was != is {
                shared.listings.iter().for_each(|l| emit(*l, Truth::Is(is)));
            }
        }
    }
}
