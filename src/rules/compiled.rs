//! The compiled form of a filter: what [`super::filter::compile`] produces and every other part of the rule
//! core reads. Fields are resolved to ids, values typed, enum values interned, regexes and case-folded
//! needles prepared, and each negative operator is a positive test with a negation flag (so `notX = ¬X`
//! holds by construction).
//!
//! Also the language's operators ([`Operator`]: their names, their complements, and the field types each
//! applies to, as tabled in [`super::filter`]).
//!
//! Depends only on the catalogue and on time: evaluation ([`super::eval`]), explanations
//! ([`super::explain`]), time flips ([`super::flip`]) and the field index ([`super::index`]) read it; the
//! validator ([`super::filter`]) builds it.

use compact_str::CompactString;
use regex::Regex;
use serde_json::Value;

use super::catalogue::{Catalogue, FieldId, FieldType};
use super::time::{EpochMillis, Span};

/// Every leaf operator of the language.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    Equals,
    NotEquals,
    GreaterThan,
    GreaterThanOrEquals,
    LessThan,
    LessThanOrEquals,
    Contains,
    NotContains,
    StartsWith,
    EndsWith,
    Matches,
    In,
    NotIn,
    HasAny,
    HasAll,
    IsEmpty,
    IsNotEmpty,
    IsNull,
    IsNotNull,
    Before,
    After,
    Between,
    WithinLast,
    NotWithinLast,
}

impl Operator {
    /// All operators, in the order of the seed table.
    pub const ALL: [Operator; 24] = [
        Operator::Equals,
        Operator::NotEquals,
        Operator::GreaterThan,
        Operator::GreaterThanOrEquals,
        Operator::LessThan,
        Operator::LessThanOrEquals,
        Operator::Contains,
        Operator::NotContains,
        Operator::StartsWith,
        Operator::EndsWith,
        Operator::Matches,
        Operator::In,
        Operator::NotIn,
        Operator::HasAny,
        Operator::HasAll,
        Operator::IsEmpty,
        Operator::IsNotEmpty,
        Operator::IsNull,
        Operator::IsNotNull,
        Operator::Before,
        Operator::After,
        Operator::Between,
        Operator::WithinLast,
        Operator::NotWithinLast,
    ];

    /// The JSON spelling.
    pub fn name(self) -> &'static str {
        match self {
            Operator::Equals => "equals",
            Operator::NotEquals => "notEquals",
            Operator::GreaterThan => "greaterThan",
            Operator::GreaterThanOrEquals => "greaterThanOrEquals",
            Operator::LessThan => "lessThan",
            Operator::LessThanOrEquals => "lessThanOrEquals",
            Operator::Contains => "contains",
            Operator::NotContains => "notContains",
            Operator::StartsWith => "startsWith",
            Operator::EndsWith => "endsWith",
            Operator::Matches => "matches",
            Operator::In => "in",
            Operator::NotIn => "notIn",
            Operator::HasAny => "hasAny",
            Operator::HasAll => "hasAll",
            Operator::IsEmpty => "isEmpty",
            Operator::IsNotEmpty => "isNotEmpty",
            Operator::IsNull => "isNull",
            Operator::IsNotNull => "isNotNull",
            Operator::Before => "before",
            Operator::After => "after",
            Operator::Between => "between",
            Operator::WithinLast => "withinLast",
            Operator::NotWithinLast => "notWithinLast",
        }
    }

    /// Parses the JSON spelling (case-sensitive).
    pub fn parse(s: &str) -> Option<Operator> {
        Operator::ALL.into_iter().find(|op| op.name() == s)
    }

    /// The positive operator this one is the complement of, and whether it is negated.
    pub fn positive(self) -> (Operator, bool) {
        match self {
            Operator::NotEquals => (Operator::Equals, true),
            Operator::NotContains => (Operator::Contains, true),
            Operator::NotIn => (Operator::In, true),
            Operator::IsNotEmpty => (Operator::IsEmpty, true),
            Operator::IsNotNull => (Operator::IsNull, true),
            Operator::NotWithinLast => (Operator::WithinLast, true),
            op => (op, false),
        }
    }

    /// Whether the operator takes no value.
    pub fn is_unary(self) -> bool {
        matches!(self.positive().0, Operator::IsEmpty | Operator::IsNull)
    }

    /// Whether this operator may be used on a field of type `ty`.
    pub fn allowed_on(self, ty: &FieldType) -> bool {
        use Operator::*;
        let positive = self.positive().0;
        match ty {
            FieldType::String => matches!(
                positive,
                Equals | Contains | StartsWith | EndsWith | Matches | In | IsEmpty | IsNull
            ),
            FieldType::Enum(_) => matches!(positive, Equals | In | IsNull),
            FieldType::Number => matches!(
                positive,
                Equals
                    | GreaterThan
                    | GreaterThanOrEquals
                    | LessThan
                    | LessThanOrEquals
                    | Between
                    | In
                    | IsNull
            ),
            FieldType::Boolean => matches!(positive, Equals | IsNull),
            FieldType::Datetime => matches!(
                positive,
                Equals
                    | GreaterThan
                    | GreaterThanOrEquals
                    | LessThan
                    | LessThanOrEquals
                    | Before
                    | After
                    | Between
                    | WithinLast
                    | IsNull
            ),
            FieldType::StringArray => {
                matches!(
                    positive,
                    Equals | Contains | HasAny | HasAll | IsEmpty | IsNull
                )
            }
        }
    }
}

/// A validated, compiled filter: evaluate it with [`CompiledFilter::evaluate`].
#[derive(Clone, Debug)]
pub struct CompiledFilter {
    /// The filter's nodes in one allocation, in written order (each group before its conditions, depth
    /// first), operands inline where they fit: evaluating touches one contiguous run of memory, not a
    /// tree of boxes. Never empty: the root group comes first.
    pub(crate) nodes: Box<[Node]>,
    /// What explanations show of each condition, by condition number: only explanations read it, so it is
    /// kept apart from what evaluation reads.
    pub(crate) meta: Box<[LeafMeta]>,
    /// Stored fields the result depends on (a computed field counts as its source), sorted.
    fields_used: Vec<FieldId>,
    /// The same, as names, sorted: what is stored as `filter_fields_used`.
    field_names: Vec<String>,
    /// Whether the result can change with time alone (relative datetimes, daysSince…).
    time_dependent: bool,
    /// The leaves whose truth can change with time alone (see [`crate::rules::FlipTable`]).
    pub(crate) time_leaves: Box<[Leaf]>,
    /// The filter as written (validated, so it has exactly the accepted shape).
    source: Value,
}

/// A node of the flat layout ([`CompiledFilter::nodes`]): a group, followed by its children, each followed
/// by its own nodes.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    All(Extent),
    Any(Extent),
    Leaf(Leaf),
}

/// The extent of a group in the flat layout.
#[derive(Copy, Clone, Debug)]
pub(crate) struct Extent {
    /// One past the group's last node.
    pub(crate) end: u32,
    /// The numbers of its conditions: `first_leaf..end_leaf` (conditions are numbered in written order).
    pub(crate) first_leaf: u16,
    pub(crate) end_leaf: u16,
}

/// A compiled leaf: the field, the positive test, and whether the result is negated.
#[derive(Clone, Debug)]
pub(crate) struct Leaf {
    pub(crate) field: FieldId,
    pub(crate) negate: bool,
    /// Its number among the filter's conditions, in written order from 0: its [`LeafMeta`], and its place
    /// in [`crate::rules::LeafTruths`].
    pub(crate) number: u16,
    pub(crate) test: Test,
}

/// The filter as the compiler builds it, before [`CompiledFilter::new`] lays it out flat.
#[derive(Debug)]
pub(crate) enum Tree {
    All(Vec<Tree>),
    Any(Vec<Tree>),
    Leaf(Leaf, LeafMeta),
}

/// A node of a compiled filter, for the walks that recurse (explanations, time flips, index keys).
#[derive(Copy, Clone, Debug)]
pub(crate) struct NodeRef<'a> {
    nodes: &'a [Node],
    at: usize,
}

impl<'a> NodeRef<'a> {
    /// The node itself.
    #[inline]
    pub(crate) fn node(self) -> &'a Node {
        &self.nodes[self.at]
    }

    /// Its children, in order (none for a leaf).
    #[inline]
    pub(crate) fn children(self) -> impl Iterator<Item = NodeRef<'a>> {
        let nodes = self.nodes;
        children(nodes, self.at).map(move |at| NodeRef { nodes, at })
    }
}

/// The positions of the children of the node at `at` (none for a leaf).
#[inline]
pub(crate) fn children(nodes: &[Node], at: usize) -> impl Iterator<Item = usize> + '_ {
    let end = subtree_end(nodes, at);
    let mut next = at + 1;
    std::iter::from_fn(move || {
        (next < end).then(|| {
            let child = next;
            next = subtree_end(nodes, child);
            child
        })
    })
}

/// One past the last node of the subtree at `at`.
#[inline]
fn subtree_end(nodes: &[Node], at: usize) -> usize {
    match nodes.get(at) {
        Some(Node::All(span) | Node::Any(span)) => span.end as usize,
        _ => at + 1,
    }
}

/// Lays `tree` out in written order, numbering its conditions.
fn flatten(tree: Tree, nodes: &mut Vec<Node>, meta: &mut Vec<LeafMeta>) {
    let (and, children) = match tree {
        Tree::Leaf(mut leaf, m) => {
            leaf.number = number(meta.len());
            meta.push(m);
            nodes.push(Node::Leaf(leaf));
            return;
        }
        Tree::All(children) => (true, children),
        Tree::Any(children) => (false, children),
    };
    let at = nodes.len();
    let first_leaf = number(meta.len());
    // Its extent is known once its children are laid out.
    nodes.push(Node::All(Extent {
        end: 0,
        first_leaf,
        end_leaf: first_leaf,
    }));
    for child in children {
        flatten(child, nodes, meta);
    }
    let extent = Extent {
        end: u32::try_from(nodes.len()).unwrap_or(u32::MAX),
        first_leaf,
        end_leaf: number(meta.len()),
    };
    nodes[at] = if and {
        Node::All(extent)
    } else {
        Node::Any(extent)
    };
}

/// A condition number. Filters have at most 256 conditions, far below the type's range.
fn number(n: usize) -> u16 {
    u16::try_from(n).unwrap_or(u16::MAX)
}

/// What an explanation shows about a leaf.
#[derive(Clone, Debug)]
pub(crate) struct LeafMeta {
    pub(crate) path: String,
    pub(crate) field_name: String,
    pub(crate) operator: Operator,
    pub(crate) value: Value,
}

/// A positive test on one attribute value. A test on a missing attribute is false, except `IsNull` and the
/// `…Empty` tests. Strings of up to 24 bytes are held inline.
#[derive(Clone, Debug)]
pub(crate) enum Test {
    StrEq(CompactString),
    /// Sorted and de-duplicated, for binary search.
    StrIn(Box<[Box<str>]>),
    StrContains(Needle),
    StrStartsWith(Needle),
    StrEndsWith(Needle),
    /// Boxed: a regex is larger than every other operand, and rare.
    StrMatches(Box<Regex>),
    /// Missing or `""`.
    StrEmpty,
    EnumEq(u16),
    /// Sorted and de-duplicated.
    EnumIn(Box<[u16]>),
    BoolEq(bool),
    Num(NumPred),
    /// A computed `daysSince…` number; the leaf's field is the source datetime.
    DaysSince(NumPred),
    Before(TimeRef),
    After(TimeRef),
    /// The same instant (millisecond precision).
    TimeEq(EpochMillis),
    /// Inclusive at both ends.
    TimeBetween(EpochMillis, EpochMillis),
    WithinLast(Span),
    /// Some element equals the needle ignoring case.
    ListContains(Needle),
    /// Sorted and de-duplicated.
    ListHasAny(Box<[Box<str>]>),
    /// Sorted and de-duplicated.
    ListHasAll(Box<[Box<str>]>),
    /// The same set of strings: sorted and de-duplicated; order and repeats in the array are ignored.
    ListEq(Box<[Box<str>]>),
    /// Missing or `[]`.
    ListEmpty,
    IsNull,
}

/// A numeric predicate. Constants are finite and `-0.0` is normalised to `0.0`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum NumPred {
    Eq(f64),
    Gt(f64),
    Ge(f64),
    Lt(f64),
    Le(f64),
    /// Inclusive at both ends; `from <= to`.
    Between(f64, f64),
    /// Sorted (total order) and de-duplicated.
    In(Box<[f64]>),
}

/// The instant a `before`/`after` condition compares with.
#[derive(Copy, Clone, Debug, PartialEq)]
pub(crate) enum TimeRef {
    At(EpochMillis),
    Ago(Span),
    FromNow(Span),
}

impl TimeRef {
    /// The instant referred to at `now`.
    #[inline]
    pub(crate) fn resolve(self, now: EpochMillis) -> EpochMillis {
        match self {
            TimeRef::At(t) => t,
            TimeRef::Ago(span) => span.before(now),
            TimeRef::FromNow(span) => span.after(now),
        }
    }
}

/// A case-insensitive needle, lower-cased once at compile time (char-wise simple lower-casing, the same
/// mapping as `char::to_lowercase`); inline up to 24 bytes.
#[derive(Clone, Debug)]
pub(crate) struct Needle {
    pub(crate) lower: CompactString,
}

impl Needle {
    pub(super) fn new(s: &str) -> Self {
        Self {
            lower: lower_chars(s).into(),
        }
    }
}

/// Char-wise lower-casing, used for every case-insensitive comparison (and by the reference evaluator).
pub fn lower_chars(s: &str) -> String {
    s.chars().flat_map(char::to_lowercase).collect()
}

/// Normalises `-0.0` to `0.0` so that equal numbers have equal bits.
#[inline]
pub(crate) fn norm(x: f64) -> f64 {
    x + 0.0
}

impl CompiledFilter {
    /// Stored fields the result depends on, sorted.
    pub fn fields_used(&self) -> &[FieldId] {
        &self.fields_used
    }

    /// Field names the result depends on, sorted: the group's `filter_fields_used`.
    pub fn field_names(&self) -> &[String] {
        &self.field_names
    }

    /// The stored attributes evaluation reads: the fields used, with each computed field replaced by its
    /// source (`daysSinceLastSeen` reads `lastSeenAt`). A reader that loads only these loses nothing.
    pub fn stored_field_names(&self, catalogue: &Catalogue) -> Vec<String> {
        let mut names: Vec<String> = self
            .fields_used()
            .iter()
            .map(|&id| match catalogue.computed(id) {
                Some(super::catalogue::Computed::DaysSince(source)) => {
                    catalogue.name(source).into()
                }
                None => catalogue.name(id).into(),
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Whether the result can change with no attribute change.
    pub fn is_time_dependent(&self) -> bool {
        self.time_dependent
    }

    /// The filter as written.
    pub fn source(&self) -> &Value {
        &self.source
    }

    /// A compiled filter from its validated parts: the tree laid out flat, and the leaves whose truth can
    /// change with time alone collected from it.
    pub(super) fn new(
        root: Tree,
        fields_used: Vec<FieldId>,
        field_names: Vec<String>,
        time_dependent: bool,
        source: Value,
    ) -> Self {
        let (mut nodes, mut meta) = (Vec::new(), Vec::new());
        flatten(root, &mut nodes, &mut meta);
        let time_leaves = leaves(&nodes)
            .filter(|leaf| is_timed(leaf))
            .cloned()
            .collect();
        Self {
            nodes: nodes.into(),
            meta: meta.into(),
            fields_used,
            field_names,
            time_dependent,
            time_leaves,
            source,
        }
    }
}

/// Whether the leaf's truth can change with time alone: those [`super::flip`] computes flips for.
fn is_timed(leaf: &Leaf) -> bool {
    let relative = |at: &TimeRef| !matches!(at, TimeRef::At(_));
    match &leaf.test {
        Test::WithinLast(_) | Test::DaysSince(_) => true,
        Test::Before(at) | Test::After(at) => relative(at),
        _ => false,
    }
}

impl CompiledFilter {
    /// The root group.
    #[inline]
    pub(crate) fn root(&self) -> NodeRef<'_> {
        NodeRef {
            nodes: &self.nodes,
            at: 0,
        }
    }

    /// The filter's conditions in written order (the layout's order, a depth-first walk's), for the
    /// passes that read conditions alone, not how they combine.
    pub(crate) fn leaves(&self) -> impl Iterator<Item = &Leaf> {
        leaves(&self.nodes)
    }
}

/// The conditions of a flat layout, in order.
fn leaves(nodes: &[Node]) -> impl Iterator<Item = &Leaf> {
    nodes.iter().filter_map(|node| match node {
        Node::Leaf(leaf) => Some(leaf),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::filter::compile;
    use serde_json::json;

    #[test]
    fn a_filter_is_laid_out_flat_in_written_order() {
        let c = Catalogue::default();
        let f = compile(
            &json!({"operator": "OR", "conditions": [
                {"operator": "AND", "conditions": [
                    {"field": "status", "operator": "equals", "value": "online"},
                    {"field": "tags", "operator": "contains", "value": "prod"}
                ]},
                {"field": "osType", "operator": "equals", "value": "rtos"}
            ]}),
            &c,
        )
        .unwrap();
        let shape: Vec<String> = f
            .nodes
            .iter()
            .map(|n| match n {
                Node::All(e) => format!("all..{} {}..{}", e.end, e.first_leaf, e.end_leaf),
                Node::Any(e) => format!("any..{} {}..{}", e.end, e.first_leaf, e.end_leaf),
                Node::Leaf(l) => format!("leaf {} {}", l.number, f.meta[l.number as usize].path),
            })
            .collect();
        assert_eq!(
            shape,
            [
                "any..5 0..3",
                "all..4 0..2",
                "leaf 0 $.conditions[0].conditions[0]",
                "leaf 1 $.conditions[0].conditions[1]",
                "leaf 2 $.conditions[1]",
            ]
        );
        let root: Vec<usize> = children(&f.nodes, 0).collect();
        assert_eq!(root, [1, 4]);
        assert_eq!(children(&f.nodes, 1).collect::<Vec<_>>(), [2, 3]);
        assert_eq!(children(&f.nodes, 2).count(), 0);
    }

    #[test]
    fn nodes_stay_small_enough_to_share_cache_lines() {
        assert!(
            std::mem::size_of::<Node>() <= 48,
            "{}",
            std::mem::size_of::<Node>()
        );
    }
}
