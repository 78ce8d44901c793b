//! The rule benchmarks' shapes, shared by `benches/rules.rs` and `benches/atree.rs` so that both build the
//! same groups and devices from the same seeds: a catalogue of 100 number and 100 string custom fields
//! (`custom.n<i>`, `custom.s<i>`), the 20 words string values are drawn from, and the generator both draw
//! with.

use cohort::rules::catalogue::{CatalogueConfig, CustomFieldConfig, DeclaredType};
use cohort::rules::{AttrValue, Attributes, Catalogue, CompiledFilter};

/// The instant every benchmark evaluates at: 2024-06-15T12:00:00Z.
pub const NOW: i64 = 1_718_452_800_000;
/// Custom number fields `custom.n0`…; then as many string fields `custom.s0`….
pub const NUMBER_FIELDS: usize = 100;
pub const STRING_FIELDS: usize = 100;
/// What string values are drawn from.
pub const WORDS: &[&str] = &[
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
];

/// Whether the full sizes apply: `cargo bench` passes `--bench`; `cargo test` only checks that the
/// benchmarks run, with small ones.
pub fn benchmarking() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// The harness's generator ([`crate::rng::Rng`]), drawing indices and words.
pub struct Rng(crate::rng::Rng);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(crate::rng::Rng::new(seed))
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        self.0.below(n as u64) as usize
    }

    /// One of [`WORDS`].
    pub fn word(&mut self) -> &'static str {
        WORDS[self.below(WORDS.len())]
    }
}

/// The catalogue: the built-in fields and the declared custom ones.
pub fn catalogue() -> Catalogue {
    let custom_fields = (0..NUMBER_FIELDS)
        .map(|i| (format!("n{i}"), DeclaredType::Number))
        .chain((0..STRING_FIELDS).map(|i| (format!("s{i}"), DeclaredType::String)))
        .map(|(key, ty)| CustomFieldConfig {
            key,
            ty,
            values: vec![],
            description: String::new(),
        })
        .collect();
    Catalogue::from_config(&CatalogueConfig {
        custom_fields,
        ..Default::default()
    })
    .expect("valid catalogue")
}

/// A random value for the `field`-th custom field: a number below 100, or one of [`WORDS`].
pub fn random_value(rng: &mut Rng, field: usize) -> AttrValue {
    if field < NUMBER_FIELDS {
        AttrValue::Num(rng.below(100) as f64)
    } else {
        AttrValue::Str(rng.word().into())
    }
}

/// The groups of `filters` a device with `attrs` is in at [`NOW`], one bit per group.
pub fn memberships(filters: &[CompiledFilter], attrs: &Attributes) -> Vec<u64> {
    let mut bits = vec![0u64; filters.len().div_ceil(64)];
    for (g, f) in filters.iter().enumerate() {
        if f.evaluate(attrs, NOW) {
            bits[g / 64] |= 1 << (g % 64);
        }
    }
    bits
}
