//! The waves a relay round produces its rows in: at most one row per (topic, key) in flight, so a failed
//! delivery can never be overtaken by a later row of its key. Pure: no IO.

use std::collections::HashSet;

use crate::store::outbox::Unpublished;

/// Splits a batch into waves: each wave holds at most one row per (topic, key), the earliest not yet
/// produced; once a row fails, the later rows of its key are held back. Keyless rows have no order and all
/// go in the first wave.
#[derive(Debug)]
pub(super) struct Waves<'a> {
    rows: Vec<(&'a str, Option<&'a [u8]>)>,
    /// Indexes not yet produced, in id order.
    remaining: Vec<usize>,
    /// (topic, key) of rows that failed this round.
    blocked: HashSet<(&'a str, &'a [u8])>,
    /// Rows dropped from the round because their key is blocked.
    pub(super) held_back: usize,
}

impl<'a> Waves<'a> {
    /// The waves of `rows`, which are in id order.
    pub(super) fn new(rows: &'a [Unpublished]) -> Self {
        Self::from_keys(
            rows.iter()
                .map(|r| (r.message.topic.as_str(), r.message.key.as_deref()))
                .collect(),
        )
    }

    /// The waves of rows given by their (topic, key), in id order.
    fn from_keys(rows: Vec<(&'a str, Option<&'a [u8]>)>) -> Self {
        Self {
            remaining: (0..rows.len()).collect(),
            rows,
            blocked: HashSet::new(),
            held_back: 0,
        }
    }

    /// The next wave's row indexes, in id order, or `None` when the round is done.
    pub(super) fn next_wave(&mut self) -> Option<Vec<usize>> {
        let mut wave = Vec::new();
        let mut later = Vec::new();
        let mut in_wave = HashSet::new();
        for &index in &self.remaining {
            match self.rows[index] {
                (_, None) => wave.push(index),
                (topic, Some(key)) => {
                    if self.blocked.contains(&(topic, key)) {
                        self.held_back += 1;
                    } else if in_wave.insert((topic, key)) {
                        wave.push(index);
                    } else {
                        later.push(index);
                    }
                }
            }
        }
        self.remaining = later;
        (!wave.is_empty()).then_some(wave)
    }

    /// Records that the row at `index` failed: its key's later rows are held back.
    pub(super) fn failed(&mut self, index: usize) {
        if let (topic, Some(key)) = self.rows[index] {
            self.blocked.insert((topic, key));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys<'a>(rows: &[(&'a str, Option<&'a str>)]) -> Vec<(&'a str, Option<&'a [u8]>)> {
        rows.iter()
            .map(|(t, k)| (*t, k.map(str::as_bytes)))
            .collect()
    }

    #[test]
    fn a_wave_holds_at_most_one_row_per_topic_and_key_and_keyless_rows_go_first() {
        let rows = keys(&[
            ("t", Some("a")),
            ("t", Some("a")),
            ("t", Some("b")),
            ("u", Some("a")),
            ("t", None),
            ("t", Some("a")),
            ("t", None),
        ]);
        let mut waves = Waves::from_keys(rows);
        assert_eq!(waves.next_wave(), Some(vec![0, 2, 3, 4, 6]));
        assert_eq!(waves.next_wave(), Some(vec![1]));
        assert_eq!(waves.next_wave(), Some(vec![5]));
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 0);
    }

    #[test]
    fn after_a_failure_the_later_rows_of_that_key_are_held_back() {
        let rows = keys(&[
            ("t", Some("a")),
            ("t", Some("b")),
            ("t", Some("a")),
            ("t", Some("b")),
            ("t", Some("a")),
        ]);
        let mut waves = Waves::from_keys(rows);
        assert_eq!(waves.next_wave(), Some(vec![0, 1]));
        waves.failed(0);
        assert_eq!(waves.next_wave(), Some(vec![3]));
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 2);
    }

    #[test]
    fn a_keyless_failure_holds_nothing_back() {
        let mut waves = Waves::from_keys(keys(&[("t", None), ("t", None)]));
        assert_eq!(waves.next_wave(), Some(vec![0, 1]));
        waves.failed(0);
        assert_eq!(waves.next_wave(), None);
        assert_eq!(waves.held_back, 0);
    }

    proptest! {
        /// Against a simple reference: each key's produced rows are a prefix of its rows in id order,
        /// produced one per wave; the prefix stops right after its first failure; and every row is either
        /// produced or held back.
        #[test]
        fn waves_produce_each_key_in_order_and_stop_it_at_its_first_failure(
            rows in proptest::collection::vec((0u8..2, proptest::option::of(0u8..4)), 0..40),
            failing in proptest::collection::hash_set(0usize..40, 0..10),
        ) {
            let owned: Vec<(String, Option<Vec<u8>>)> = rows
                .iter()
                .map(|(t, k)| (format!("topic-{t}"), k.map(|k| vec![k])))
                .collect();
            let keyed: Vec<(&str, Option<&[u8]>)> =
                owned.iter().map(|(t, k)| (t.as_str(), k.as_deref())).collect();
            let mut waves = Waves::from_keys(keyed.clone());
            let mut produced: Vec<(usize, usize)> = Vec::new(); // (wave, index)
            let mut wave_number = 0;
            while let Some(wave) = waves.next_wave() {
                prop_assert!(wave.windows(2).all(|w| w[0] < w[1]), "a wave is in id order");
                let mut seen = HashSet::new();
                for &index in &wave {
                    if let (t, Some(k)) = keyed[index] {
                        prop_assert!(seen.insert((t, k)), "one row per key in a wave");
                    }
                    produced.push((wave_number, index));
                }
                for &index in &wave {
                    if failing.contains(&index) {
                        waves.failed(index);
                    }
                }
                wave_number += 1;
            }
            prop_assert_eq!(produced.len() + waves.held_back, keyed.len());
            // Reference: per key, walk its rows in id order; produce until (and including) the first failure.
            let distinct: HashSet<(&str, &[u8])> =
                keyed.iter().filter_map(|(t, k)| k.map(|k| (*t, k))).collect();
            for (topic, key) in distinct {
                let rows_of_key: Vec<usize> = (0..keyed.len())
                    .filter(|&i| keyed[i] == (topic, Some(key)))
                    .collect();
                let mut expected = Vec::new();
                for &i in &rows_of_key {
                    expected.push(i);
                    if failing.contains(&i) {
                        break;
                    }
                }
                let actual: Vec<(usize, usize)> = produced
                    .iter()
                    .copied()
                    .filter(|(_, i)| keyed[*i] == (topic, Some(key)))
                    .collect();
                prop_assert_eq!(actual.iter().map(|(_, i)| *i).collect::<Vec<_>>(), expected);
                prop_assert!(actual.windows(2).all(|w| w[0].0 < w[1].0), "one wave after another");
            }
            // Keyless rows are all produced, in the first wave.
            for (i, (_, key)) in keyed.iter().enumerate() {
                if key.is_none() {
                    prop_assert!(produced.contains(&(0, i)));
                }
            }
        }
    }
}
