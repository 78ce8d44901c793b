//! Firmware targeting: versions, the resolution precedence, and rollout-target events. Pure: no IO.
//!
//! **Resolution** — what a device should run, by precedence:
//! 1. a development device never receives automatic updates (no target, reason `development`);
//! 2. a device locked to a version keeps it (reason `locked`);
//! 3. otherwise the highest version released to any group the device belongs to (reason `group`, with the
//!    deciding group; on equal versions the group with the smallest id decides, so the answer is stable);
//! 4. otherwise the org's default release (reason `default`);
//! 5. otherwise none (reason `none`).
//!
//! **Events** — a rollout-target event is emitted exactly when the resolved *version* changes (including to or
//! from none). A change of reason or deciding group with the same version (say, a device leaves one group
//! releasing 2.0 but is still in another releasing 2.0, or gets locked to the version it was already
//! targeted) is stored but is not an event: the dispatcher has nothing to do. [`rollout`] builds the event
//! ([`RolloutTarget`]): its CloudEvents document, headers and outbox message.
//!
//! **Versions** — an org uses one kind: integers (compared numerically, as in the seed product) or semantic
//! versions (compared by semver precedence: build metadata ignored, pre-releases before their release).

use std::cmp::Ordering;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

pub mod confirm;
pub mod progress;
pub mod rollout;

pub use rollout::{event_id, rollout_event, RolloutTarget, EVENT_TYPE};

/// The kind of versions an org uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionKind {
    Integer,
    Semver,
}

impl VersionKind {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionKind::Integer => "integer",
            VersionKind::Semver => "semver",
        }
    }
}

/// A parsed firmware version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Version {
    Integer(u64),
    Semver(semver::Version),
}

/// Why a version string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VersionError {
    #[error("version must not be empty")]
    Empty,
    #[error("version {0:?} is neither a whole number nor a semantic version (MAJOR.MINOR.PATCH)")]
    Unrecognised(String),
    #[error("version {version:?} is {found}, but this org's releases use {expected} versions")]
    MixedKinds {
        version: String,
        found: &'static str,
        expected: &'static str,
    },
}

/// Longest version string accepted.
pub const MAX_VERSION_LEN: usize = 128;

impl Version {
    /// Parses a version of either kind: a whole number (`42`) or a semantic version (`2.4.1`, `v2.4.1-rc.1`).
    pub fn parse(s: &str) -> Result<Version, VersionError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(VersionError::Empty);
        }
        if s.len() > MAX_VERSION_LEN {
            return Err(VersionError::Unrecognised(s.chars().take(32).collect()));
        }
        if s.bytes().all(|b| b.is_ascii_digit()) {
            return s
                .parse::<u64>()
                .map(Version::Integer)
                .map_err(|_| VersionError::Unrecognised(s.to_string()));
        }
        let bare = s.strip_prefix('v').unwrap_or(s);
        semver::Version::parse(bare)
            .map(Version::Semver)
            .map_err(|_| VersionError::Unrecognised(s.to_string()))
    }

    /// Parses and requires `kind` (an org never mixes kinds).
    pub fn parse_as(s: &str, kind: VersionKind) -> Result<Version, VersionError> {
        let v = Version::parse(s)?;
        if v.kind() != kind {
            return Err(VersionError::MixedKinds {
                version: s.to_string(),
                found: v.kind().as_str(),
                expected: kind.as_str(),
            });
        }
        Ok(v)
    }

    /// The version's kind.
    pub fn kind(&self) -> VersionKind {
        match self {
            Version::Integer(_) => VersionKind::Integer,
            Version::Semver(_) => VersionKind::Semver,
        }
    }
}

impl Ord for Version {
    /// Integers numerically; semantic versions by semver precedence (build metadata ignored). Kinds never mix
    /// within an org; across kinds, integers order first (only for a total order).
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (Version::Integer(a), Version::Integer(b)) => a.cmp(b),
            (Version::Semver(a), Version::Semver(b)) => a.cmp_precedence(b),
            (Version::Integer(_), Version::Semver(_)) => Ordering::Less,
            (Version::Semver(_), Version::Integer(_)) => Ordering::Greater,
        }
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Version::Integer(n) => write!(f, "{n}"),
            Version::Semver(v) => write!(f, "{v}"),
        }
    }
}

/// Why a device has its target.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reason {
    Development,
    Locked,
    Group,
    Default,
    None,
}

impl Reason {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Development => "development",
            Reason::Locked => "locked",
            Reason::Group => "group",
            Reason::Default => "default",
            Reason::None => "none",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Reason> {
        Some(match s {
            "development" => Reason::Development,
            "locked" => Reason::Locked,
            "group" => Reason::Group,
            "default" => Reason::Default,
            "none" => Reason::None,
            _ => return None,
        })
    }
}

/// A device's resolved firmware target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The version to run, as released (or locked); `None` for no target. Shared with the release (many
    /// devices hold the same version).
    pub version: Option<Arc<str>>,
    pub reason: Reason,
    /// The group whose release decided, for reason `group`.
    pub group: Option<Uuid>,
    /// The release that decided, for reasons `group` and `default` (`None` when its id is not known, as
    /// in a release's dry run): whose progress the device counts in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release: Option<Uuid>,
}

impl Target {
    /// No target.
    pub fn none() -> Self {
        Self {
            version: None,
            reason: Reason::None,
            group: None,
            release: None,
        }
    }

    /// Whether moving from `self` to `next` is a rollout event: the version changed.
    pub fn is_rollout_change(&self, next: &Target) -> bool {
        self.version != next.version
    }

    /// Whether a device with this target that reports running `running` (its `firmwareVersion`; `None` when
    /// it reports none) would download firmware: the target names a version the device does not run. A
    /// device without a target downloads nothing; one that reports no version downloads its target.
    pub fn downloads_on(&self, running: Option<&str>) -> bool {
        match (self.version.as_deref(), running) {
            (None, _) => false,
            (Some(_), None) => true,
            (Some(target), Some(running)) => !same_version(target, running),
        }
    }

    /// The JSON form used in events and the API.
    pub fn to_json(&self) -> Value {
        json!({"version": self.version, "reason": self.reason.as_str(), "groupId": self.group})
    }
}

/// Whether two version strings name the same firmware: equal as written (surrounding spaces aside), or
/// equal as parsed versions — `v2.4.1` is `2.4.1` and `007` is `7`, but a semantic version's pre-release and
/// build metadata both count (`2.4.1+b7` is another build than `2.4.1`), and an integer is never a semantic
/// version (`2` is not `2.0.0`).
pub fn same_version(a: &str, b: &str) -> bool {
    let (a, b) = (a.trim(), b.trim());
    // `Version`'s equality compares every part (its ordering, by precedence, ignores build metadata).
    a == b || matches!((Version::parse(a), Version::parse(b)), (Ok(x), Ok(y)) if x == y)
}

/// A release to a group, as resolution needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRelease {
    pub group: Uuid,
    pub version: Version,
    /// As written by the operator (what the event carries).
    pub label: Arc<str>,
    /// Which of the target's devices it selects.
    pub staging: Staging,
}

impl GroupRelease {
    /// A release of `label` (parsed: `version`) to `group` (nil for the default) that selects every
    /// device of it.
    pub fn whole(group: Uuid, version: Version, label: Arc<str>) -> Self {
        Self {
            group,
            version,
            label,
            staging: Staging::WHOLE,
        }
    }

    /// A release not yet written, as a dry run or a plan counts it: no id yet, active at its first stage,
    /// which selects `share` basis points of the target.
    pub fn proposed(group: Uuid, version: Version, label: Arc<str>, share: u16) -> Self {
        Self {
            group,
            version,
            label,
            staging: Staging {
                share,
                ..Staging::WHOLE
            },
        }
    }

    /// Whether the release selects the device: an active release, when its current stage does (see
    /// [`stage_bucket`]); a paused one, only when it already targets the device; one rolled back, never.
    pub fn selects(&self, facts: &DeviceFacts<'_>) -> bool {
        match self.staging.state {
            ReleaseState::Active => self.stage_selects(facts.id),
            ReleaseState::Paused => {
                !self.staging.release.is_nil() && facts.current == Some(self.staging.release)
            }
            ReleaseState::RolledBack => false,
        }
    }

    /// Whether the release's current stage selects device `device_id`, whatever its state.
    pub fn stage_selects(&self, device_id: &str) -> bool {
        self.staging.share >= WHOLE_SHARE
            || stage_bucket(self.group, &self.label, device_id) < self.staging.share
    }

    /// Its id, when known.
    pub fn id(&self) -> Option<Uuid> {
        (!self.staging.release.is_nil()).then_some(self.staging.release)
    }
}

/// Whether a release selects devices: an operator (or a halt threshold) may pause it, and a halt may roll
/// it back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseState {
    /// Selects the devices its stage selects.
    #[default]
    Active,
    /// Selects no further device: only those it already targets keep it.
    Paused,
    /// Selects no device: every device it targeted resolves as if it did not exist.
    RolledBack,
}

impl ReleaseState {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseState::Active => "active",
            ReleaseState::Paused => "paused",
            ReleaseState::RolledBack => "rolled_back",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<ReleaseState> {
        Some(match s {
            "active" => ReleaseState::Active,
            "paused" => ReleaseState::Paused,
            "rolled_back" => ReleaseState::RolledBack,
            _ => return None,
        })
    }
}

/// A release's stage: which share of its target's devices it selects, by a stable hash of the release and
/// the device ([`stage_bucket`]). Raising the share only adds devices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Staging {
    /// The release's id (what its rollout-target events name; nil when unknown).
    pub release: Uuid,
    /// The current stage: an index into the release's stages.
    pub stage: u16,
    /// The share of the target's devices the stage selects, in basis points (10,000: every device).
    pub share: u16,
    /// Whether it selects devices at all.
    pub state: ReleaseState,
}

/// Basis points of a whole target.
pub const WHOLE_SHARE: u16 = 10_000;

impl Staging {
    /// Every device of the target, at once.
    pub const WHOLE: Staging = Staging {
        release: Uuid::nil(),
        stage: 0,
        share: WHOLE_SHARE,
        state: ReleaseState::Active,
    };
}

/// Where a device falls in a release's stages: a number below 10,000, the same on every worker, in every
/// process and every version of cohort. The release is named by its target and version — the group's id
/// (the nil UUID for the org's default) and the version as released — so a dry run, made before the
/// release has an id, selects exactly the devices the release will. It is FNV-1a (64 bits) over the
/// group id's 16 bytes, the version's UTF-8 bytes, a zero byte and the device id's UTF-8 bytes, mixed by
/// SplitMix64's finalizer, modulo 10,000. A stage whose share is `s` basis points selects the devices
/// whose bucket is below `s`: a device selected at 10% stays selected at 50%, and another version (or
/// another group) selects another 10%.
pub fn stage_bucket(group: Uuid, version: &str, device_id: &str) -> u16 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes = group
        .as_bytes()
        .iter()
        .chain(version.as_bytes())
        .chain(&[0]);
    for byte in bytes.chain(device_id.as_bytes()) {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    let mut z = hash.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^= z >> 31;
    (z % u64::from(WHOLE_SHARE)) as u16
}

/// What resolution needs to know about a device.
#[derive(Clone, Debug, Default)]
pub struct DeviceFacts<'a> {
    /// The device's id (which stages of a staged release select it).
    pub id: &'a str,
    pub development: bool,
    pub lock: Option<&'a str>,
    /// The release that targets it now, if any (a paused release keeps the devices it targets).
    pub current: Option<Uuid>,
}

/// Resolves a device's target from its facts, the releases of the groups it belongs to, and the org's
/// default release. A staged release whose current stage does not select the device is passed over, as if
/// it did not exist.
pub fn resolve<'r>(
    facts: &DeviceFacts<'_>,
    releases: impl IntoIterator<Item = &'r GroupRelease>,
    default: Option<&'r GroupRelease>,
) -> Target {
    if facts.development {
        return Target {
            version: None,
            reason: Reason::Development,
            group: None,
            release: None,
        };
    }
    if let Some(lock) = facts.lock {
        return Target {
            version: Some(lock.into()),
            reason: Reason::Locked,
            group: None,
            release: None,
        };
    }
    let best = releases
        .into_iter()
        .filter(|r| r.selects(facts))
        .max_by(|a, b| {
            a.version
                .cmp(&b.version)
                .then_with(|| b.group.cmp(&a.group))
        });
    if let Some(best) = best {
        return Target {
            version: Some(best.label.clone()),
            reason: Reason::Group,
            group: Some(best.group),
            release: best.id(),
        };
    }
    match default.filter(|d| d.selects(facts)) {
        Some(d) => Target {
            version: Some(d.label.clone()),
            reason: Reason::Default,
            group: None,
            release: d.id(),
        },
        None => Target::none(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    fn release(group: u128, version: &str) -> GroupRelease {
        GroupRelease::whole(Uuid::from_u128(group), v(version), version.into())
    }

    /// A device's bucket is a contract with every staged release in flight: these values, computed from
    /// the documented formula by a separate implementation, must never change.
    #[test]
    fn buckets_are_the_documented_hash() {
        let group = Uuid::from_u128(1);
        for (group, version, device, bucket) in [
            (group, "2", "dev-00000", 1348),
            (group, "2", "dev-00001", 3650),
            (group, "2", "gw-17", 3549),
            (group, "1.2.3", "gw-17", 1092),
            (Uuid::nil(), "2", "dev-00000", 2286),
            (Uuid::nil(), "1.2.3", "gw-17", 4569),
        ] {
            assert_eq!(
                stage_bucket(group, version, device),
                bucket,
                "{version} {device}"
            );
        }
    }

    #[test]
    fn a_stage_selects_the_devices_hashed_below_its_share_and_a_larger_one_only_adds() {
        let group = Uuid::from_u128(1);
        let devices: Vec<String> = (0..20_000).map(|i| format!("dev-{i:05}")).collect();
        let staged = |share| GroupRelease {
            staging: Staging {
                release: Uuid::from_u128(0x5eed),
                stage: 0,
                share,
                state: ReleaseState::Active,
            },
            ..release(1, "2")
        };
        let (ten, half) = (staged(1_000), staged(5_000));
        let mut selected = 0;
        for device in &devices {
            let bucket = stage_bucket(group, "2", device);
            assert_eq!(ten.stage_selects(device), bucket < 1_000);
            assert!(
                !ten.stage_selects(device) || half.stage_selects(device),
                "{device}"
            );
            selected += usize::from(ten.stage_selects(device));
        }
        // About a tenth, and a different tenth for another version.
        assert!((1_800..2_200).contains(&selected), "{selected}");
        let moved = devices
            .iter()
            .filter(|d| {
                (stage_bucket(group, "2", d) < 1_000) != (stage_bucket(group, "3", d) < 1_000)
            })
            .count();
        assert!(moved > 3_000, "{moved}");
        assert!(devices.iter().all(|d| release(1, "2").stage_selects(d)));
    }

    #[test]
    fn a_device_a_stage_does_not_select_resolves_as_if_the_release_did_not_exist() {
        let staged = GroupRelease {
            staging: Staging {
                release: Uuid::from_u128(7),
                stage: 0,
                share: 2_500,
                state: ReleaseState::Active,
            },
            ..release(1, "3")
        };
        let bucket = |device: &str| stage_bucket(Uuid::from_u128(1), "3", device);
        let releases = [staged, release(2, "2")];
        let default = release(0, "1");
        for i in 0..200 {
            let device = format!("d{i}");
            let facts = DeviceFacts {
                id: &device,
                ..DeviceFacts::default()
            };
            let t = resolve(&facts, &releases, Some(&default));
            let want = if bucket(&device) < 2_500 { "3" } else { "2" };
            assert_eq!(t.version.as_deref(), Some(want));
            let t = resolve(&facts, &releases[..1], Some(&default));
            let want = if bucket(&device) < 2_500 { "3" } else { "1" };
            assert_eq!(t.version.as_deref(), Some(want));
        }
    }

    #[test]
    fn a_paused_release_keeps_only_its_devices_and_a_rolled_back_one_none() {
        let id = Uuid::from_u128(0x77);
        let with_state = |state| GroupRelease {
            staging: Staging {
                release: id,
                state,
                ..Staging::WHOLE
            },
            ..release(1, "3")
        };
        let default = release(0, "1");
        let facts = |current| DeviceFacts {
            id: "d",
            current,
            ..DeviceFacts::default()
        };
        let version = |state, current| {
            let t = resolve(&facts(current), &[with_state(state)], Some(&default));
            (t.version.as_deref().map(str::to_string), t.release)
        };
        let (three, one) = (Some("3".to_string()), Some("1".to_string()));
        assert_eq!(
            version(ReleaseState::Active, None),
            (three.clone(), Some(id))
        );
        assert_eq!(version(ReleaseState::Paused, Some(id)), (three, Some(id)));
        assert_eq!(version(ReleaseState::Paused, None), (one.clone(), None));
        let other = Some(Uuid::from_u128(0x78));
        assert_eq!(version(ReleaseState::Paused, other), (one.clone(), None));
        assert_eq!(version(ReleaseState::RolledBack, Some(id)), (one, None));
        for state in [
            ReleaseState::Active,
            ReleaseState::Paused,
            ReleaseState::RolledBack,
        ] {
            assert_eq!(ReleaseState::parse(state.as_str()), Some(state));
        }
    }

    #[test]
    fn integers_compare_numerically_and_semvers_by_precedence() {
        assert!(v("10") > v("9"));
        assert!(v("2.10.0") > v("2.9.9"));
        assert!(v("2.0.0") > v("2.0.0-rc.1"));
        assert_eq!(v("1.2.3+build.5").cmp(&v("1.2.3")), Ordering::Equal);
        assert_eq!(v("v1.2.3"), v("1.2.3"));
        assert_eq!(Version::parse(""), Err(VersionError::Empty));
        assert!(Version::parse("1.2").is_err());
        assert!(Version::parse("banana").is_err());
        assert!(Version::parse("99999999999999999999999").is_err());
    }

    #[test]
    fn an_org_does_not_mix_kinds() {
        assert_eq!(
            Version::parse_as("2.0.0", VersionKind::Integer),
            Err(VersionError::MixedKinds {
                version: "2.0.0".into(),
                found: "semver",
                expected: "integer"
            })
        );
        assert!(Version::parse_as("7", VersionKind::Integer).is_ok());
    }

    #[test]
    fn precedence_is_development_lock_group_default_none() {
        let releases = [release(1, "2"), release(2, "5")];
        let default = release(0, "1");
        let dev = DeviceFacts {
            development: true,
            lock: Some("3"),
            ..DeviceFacts::default()
        };
        assert_eq!(
            resolve(&dev, &releases, Some(&default)).reason,
            Reason::Development
        );
        let locked = DeviceFacts {
            development: false,
            lock: Some("3"),
            ..DeviceFacts::default()
        };
        let t = resolve(&locked, &releases, Some(&default));
        assert_eq!(
            (t.version.as_deref(), t.reason),
            (Some("3"), Reason::Locked)
        );
        let plain = DeviceFacts::default();
        let t = resolve(&plain, &releases, Some(&default));
        assert_eq!(
            (t.version.as_deref(), t.reason, t.group),
            (Some("5"), Reason::Group, Some(Uuid::from_u128(2)))
        );
        let t = resolve(&plain, &[], Some(&default));
        assert_eq!(
            (t.version.as_deref(), t.reason),
            (Some("1"), Reason::Default)
        );
        assert_eq!(resolve(&plain, &[], None), Target::none());
    }

    #[test]
    fn equal_versions_are_decided_by_the_smallest_group_id() {
        let releases = [
            release(9, "2.0.0"),
            release(3, "2.0.0+other"),
            release(5, "1.0.0"),
        ];
        let t = resolve(&DeviceFacts::default(), &releases, None);
        assert_eq!(t.group, Some(Uuid::from_u128(3)));
    }

    #[test]
    fn only_a_version_change_is_a_rollout_event() {
        let a = Target {
            version: Some("2".into()),
            reason: Reason::Group,
            group: Some(Uuid::from_u128(1)),
            release: None,
        };
        let b = Target {
            version: Some("2".into()),
            reason: Reason::Locked,
            group: None,
            release: None,
        };
        assert!(!a.is_rollout_change(&b));
        assert!(a.is_rollout_change(&Target::none()));
    }

    #[test]
    fn the_same_version_is_the_same_firmware_however_written_but_not_another_build() {
        assert!(same_version("2.4.1", "v2.4.1"));
        assert!(same_version(" 7", "007"));
        assert!(same_version("beta-build", "beta-build"));
        assert!(!same_version("2.4.1", "2.4.2"));
        assert!(!same_version("2.4.1+b7", "2.4.1"));
        assert!(!same_version("2.4.1-rc.1", "2.4.1"));
        assert!(!same_version("2", "2.0.0"));
        assert!(!same_version("10", "9"));
        assert!(!same_version("banana", "2.4.1"));
    }

    #[test]
    fn a_device_downloads_a_target_it_does_not_report_running() {
        let target = |version: Option<&str>| Target {
            version: version.map(Into::into),
            reason: Reason::Default,
            group: None,
            release: None,
        };
        assert!(!target(Some("1")).downloads_on(Some("1")));
        assert!(!target(Some("v1.0.0")).downloads_on(Some("1.0.0")));
        assert!(target(Some("2")).downloads_on(Some("1")));
        assert!(
            target(Some("2")).downloads_on(None),
            "a device that reports no version downloads its target"
        );
        assert!(
            !target(None).downloads_on(Some("1")),
            "no target, nothing to download"
        );
        assert!(!target(None).downloads_on(None));
    }
}
