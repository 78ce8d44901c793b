//! The fleet file: an org's groups and releases, by name, as a team keeps them in git (YAML or JSON;
//! its JSON Schema is `schemas/fleet.schema.json`).
//!
//! ```yaml
//! org: acme
//! groups:
//!   fleet:
//!     members: [gw-1, gw-2]          # a static group: exactly these devices
//!   linux-online:
//!     parent: fleet                  # by name
//!     filter:                        # a dynamic group: Breeze's filterConditions
//!       operator: AND
//!       conditions:
//!         - {field: osType, operator: equals, value: linux}
//! releases:
//!   linux-online: {version: "2.4.1", stages: [10, 100]}
//! defaultRelease: {version: "2.4.0"}
//! ```
//!
//! Groups and releases the file does not name are left as they are.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::firmware::progress::{FailureSignal, Thresholds};
use crate::rules::{compile, Catalogue};
use crate::store::firmware::{check_stages, stages_from_percents};

/// Most groups one file names.
pub const MAX_GROUPS: usize = 1_000;
/// Most devices one static group lists.
pub const MAX_MEMBERS: usize = 10_000;
/// Largest file read.
pub const MAX_FILE_BYTES: u64 = 16 * 1024 * 1024;

/// An org's groups and releases.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FleetFile {
    /// The org the file describes.
    pub org: String,
    /// Groups by name.
    #[serde(default)]
    pub groups: BTreeMap<String, GroupSpec>,
    /// Releases by the name of the group they target.
    #[serde(default)]
    pub releases: BTreeMap<String, ReleaseSpec>,
    /// The org's default release.
    #[serde(default)]
    pub default_release: Option<ReleaseSpec>,
}

/// A group: dynamic (`filter`) or static (`members`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GroupSpec {
    /// A dynamic group's filter (`{"operator", "conditions"}`, nested).
    #[serde(default)]
    pub filter: Option<Value>,
    /// A static group's devices, exactly.
    #[serde(default)]
    pub members: Option<Vec<String>>,
    /// The parent group, by name (absent: none).
    #[serde(default)]
    pub parent: Option<String>,
}

/// A release: a version, its stages and how it watches its devices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ReleaseSpec {
    pub version: String,
    /// Percentages of the target's devices, increasing (absent: all at once).
    #[serde(default)]
    pub stages: Option<Vec<f64>>,
    #[serde(default)]
    pub failure: Option<FailureSignal>,
    #[serde(default)]
    pub halt: Option<Thresholds>,
    #[serde(default)]
    pub soak_seconds: Option<u32>,
}

impl ReleaseSpec {
    /// Its stages in basis points.
    pub fn stages(&self) -> Result<Vec<u16>, String> {
        let stages = match &self.stages {
            Some(percents) => stages_from_percents(percents)?,
            None => vec![crate::firmware::WHOLE_SHARE],
        };
        check_stages(&stages).map_err(|e| e.to_string())?;
        Ok(stages)
    }
}

impl FleetFile {
    /// Reads a file as YAML (JSON is YAML too).
    pub fn parse(text: &str) -> Result<FleetFile, String> {
        serde_yaml_ng::from_str(text).map_err(|e| format!("not a fleet file: {e}"))
    }

    /// Every problem the file has on its own (without the org's live state): empty names, a group both
    /// static and dynamic (or neither), a filter that does not compile, a release to a group the file does
    /// not name, stages that are not increasing percentages, a version that does not parse.
    pub fn check(&self, catalogue: &Catalogue) -> Vec<String> {
        let mut problems = Vec::new();
        if self.org.trim().is_empty() {
            problems.push("org: must name the org".to_string());
        }
        if self.groups.len() > MAX_GROUPS {
            problems.push(format!("groups: at most {MAX_GROUPS}"));
        }
        for (name, group) in &self.groups {
            let at = format!("groups.{name}");
            if name.trim().is_empty() || name.len() > 255 {
                problems.push(format!("{at}: a name is 1 to 255 characters"));
            }
            match (&group.filter, &group.members) {
                (Some(filter), None) => {
                    if let Err(errors) = compile(filter, catalogue) {
                        for e in errors.iter().take(10) {
                            problems.push(format!("{at}.filter{}: {}", e.path, e.message));
                        }
                    }
                }
                (None, Some(members)) => {
                    if members.len() > MAX_MEMBERS {
                        problems.push(format!("{at}.members: at most {MAX_MEMBERS}"));
                    }
                    if members.iter().any(|m| m.trim().is_empty()) {
                        problems.push(format!("{at}.members: a device id must not be empty"));
                    }
                }
                _ => problems.push(format!(
                    "{at}: give a filter (a dynamic group) or members (a static group), not both"
                )),
            }
            if group.parent.as_deref() == Some(name.as_str()) {
                problems.push(format!("{at}.parent: a group cannot be its own parent"));
            }
        }
        let releases = self
            .releases
            .iter()
            .map(|(name, r)| (format!("releases.{name}"), r))
            .chain(
                self.default_release
                    .iter()
                    .map(|r| ("defaultRelease".to_string(), r)),
            );
        for (at, release) in releases {
            if let Err(e) = crate::firmware::Version::parse(&release.version) {
                problems.push(format!("{at}.version: {e}"));
            }
            if let Err(e) = release.stages() {
                problems.push(format!("{at}: {e}"));
            }
            if let Some(halt) = &release.halt {
                if let Err(e) = halt.check() {
                    problems.push(format!("{at}: {e}"));
                }
            }
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_names_groups_and_releases_and_says_what_is_wrong_with_it() {
        let file = FleetFile::parse(
            "org: acme\ngroups:\n  fleet: {members: [a, b]}\n  linux:\n    parent: fleet\n    filter:\n      \
             operator: AND\n      conditions: [{field: osType, operator: equals, value: linux}]\n\
             releases:\n  linux: {version: '2', stages: [10, 100]}\n",
        )
        .unwrap();
        assert_eq!(file.groups.len(), 2);
        assert_eq!(
            file.releases["linux"].stages().unwrap(),
            vec![1_000, 10_000]
        );
        assert!(file.check(&Catalogue::default()).is_empty());
        let bad = FleetFile::parse(
            "org: ''\ngroups:\n  both: {members: [a], filter: {operator: AND, conditions: []}}\n  \
             wrong: {filter: {operator: AND, conditions: [{field: nope, operator: equals, value: 1}]}}\n\
             releases:\n  wrong: {version: 'banana', stages: [50, 10]}\n",
        )
        .unwrap();
        let problems = bad.check(&Catalogue::default());
        for says in [
            "org:",
            "groups.both",
            "groups.wrong.filter",
            "releases.wrong.version",
            "stages",
        ] {
            assert!(
                problems.iter().any(|p| p.contains(says)),
                "{says}: {problems:?}"
            );
        }
        assert!(FleetFile::parse("org: acme\nunknown: 1\n").is_err());
    }
}
