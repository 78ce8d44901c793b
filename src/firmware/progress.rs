//! Rollout progress: where each device a release targets stands, from what it reports, and the halt
//! thresholds a release's counts are held to. Pure: no IO.
//!
//! **Standing** — a device a release targets (its resolved target names the release) stands, by what it
//! reports now:
//! 1. `failed` when it reports the release's failure signal (an attribute and a value, say
//!    `custom.otaStatus = "failed"`), whatever version it runs: an explicit failure report wins;
//! 2. `running` when it reports running the target (`firmwareVersion`, compared as
//!    [`super::same_version`] does);
//! 3. `reverted` when it reported running the target since the release targeted it, and now reports
//!    another version (or none);
//! 4. `previous` otherwise: it has not reported the target yet.
//!
//! Whether it reached the target is the one thing a device's report cannot say again, so it is kept with
//! the device (and reset when another release comes to target it).
//!
//! **Counts** — a release's counts are the number of devices it targets in each standing; `previous` is
//! what the others leave of `targeted`. A release whose targeted devices all run the target is complete.
//!
//! **Thresholds** — a release may name limits on failures and reverts, each as a count or as a share of
//! the devices it targets; the first one its counts reach halts it ([`Thresholds::crossed`]).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::same_version;

/// Where a device a release targets stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Standing {
    Previous,
    Running,
    Failed,
    Reverted,
}

impl Standing {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Standing::Previous => "previous",
            Standing::Running => "running",
            Standing::Failed => "failed",
            Standing::Reverted => "reverted",
        }
    }

    /// Parses the stored spelling.
    pub fn parse(s: &str) -> Option<Standing> {
        Some(match s {
            "previous" => Standing::Previous,
            "running" => Standing::Running,
            "failed" => Standing::Failed,
            "reverted" => Standing::Reverted,
            _ => return None,
        })
    }
}

/// A targeted device's standing from what it reports: the version it runs (`None`: it reports none),
/// whether it reports the failure signal, and whether it reached the target before. Returns the standing
/// and whether it has reached the target now.
pub fn standing(
    target: &str,
    running: Option<&str>,
    failed: bool,
    reached: bool,
) -> (Standing, bool) {
    let runs = running.is_some_and(|r| same_version(target, r));
    let reached = reached || runs;
    let standing = if failed {
        Standing::Failed
    } else if runs {
        Standing::Running
    } else if reached {
        Standing::Reverted
    } else {
        Standing::Previous
    };
    (standing, reached)
}

/// A release's counts (or a change of them: each field may then be negative).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Counts {
    pub targeted: i64,
    pub running: i64,
    pub failed: i64,
    pub reverted: i64,
}

impl Counts {
    /// Devices targeted that have not reported the target yet.
    pub fn previous(&self) -> i64 {
        self.targeted - self.running - self.failed - self.reverted
    }

    /// Counts one device in `standing` in (`sign` 1) or out (`sign` -1).
    pub fn add(&mut self, standing: Standing, sign: i64) {
        self.targeted += sign;
        match standing {
            Standing::Previous => {}
            Standing::Running => self.running += sign,
            Standing::Failed => self.failed += sign,
            Standing::Reverted => self.reverted += sign,
        }
    }

    /// Whether nothing changed.
    pub fn is_zero(&self) -> bool {
        *self == Counts::default()
    }

    /// Whether every device the release targets runs the target (and it targets some).
    pub fn complete(&self) -> bool {
        self.targeted > 0 && self.running == self.targeted
    }
}

/// What a device reports when an update failed: an attribute and its value (`custom.otaStatus`,
/// `"failed"`), as the API takes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FailureSignal {
    /// A field of the catalogue (`custom.*` included).
    pub attribute: String,
    /// The value that means failure, compared for equality with what the device reports.
    pub value: Value,
}

/// A release's halt thresholds: any one reached halts it. A count is reached when the release counts at
/// least that many devices; a rate, when at least one device counts and their share of the targeted
/// devices is at least the rate.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Thresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_rate: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reverts: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revert_rate: Option<f64>,
    /// Whether a halt also rolls the release back: every device it targets resolves as if it did not
    /// exist (one rollout-target event each), instead of keeping it.
    #[serde(default)]
    pub rollback: bool,
}

/// A threshold the counts reached.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Crossed {
    /// `failures`, `failureRate`, `reverts` or `revertRate`.
    pub threshold: String,
    /// The threshold's value.
    pub limit: f64,
    /// What the counts had reached.
    pub reached: f64,
}

impl Thresholds {
    /// Refuses thresholds that name nothing, counts of zero and rates outside (0, 1].
    pub fn check(&self) -> Result<(), String> {
        let rates = [
            ("failureRate", self.failure_rate),
            ("revertRate", self.revert_rate),
        ];
        for (name, rate) in rates {
            if rate.is_some_and(|r| !(r > 0.0 && r <= 1.0)) {
                return Err(format!("halt.{name} must be above 0 and at most 1"));
            }
        }
        for (name, count) in [("failures", self.failures), ("reverts", self.reverts)] {
            if count == Some(0) {
                return Err(format!("halt.{name} must be at least 1"));
            }
        }
        if self.failures.is_none()
            && self.failure_rate.is_none()
            && self.reverts.is_none()
            && self.revert_rate.is_none()
        {
            return Err(
                "halt names no threshold (failures, failureRate, reverts, revertRate)".into(),
            );
        }
        Ok(())
    }

    /// The first threshold `counts` reach, in the order failures, failure rate, reverts, revert rate.
    pub fn crossed(&self, counts: &Counts) -> Option<Crossed> {
        let share = |n: i64| {
            if counts.targeted > 0 {
                n as f64 / counts.targeted as f64
            } else {
                0.0
            }
        };
        let by_count = |name: &str, limit: Option<u64>, n: i64| {
            let limit = limit?;
            (n >= 0 && n as u64 >= limit).then(|| Crossed {
                threshold: name.to_string(),
                limit: limit as f64,
                reached: n as f64,
            })
        };
        let by_rate = |name: &str, limit: Option<f64>, n: i64| {
            let limit = limit?;
            (n > 0 && share(n) >= limit).then(|| Crossed {
                threshold: name.to_string(),
                limit,
                reached: share(n),
            })
        };
        by_count("failures", self.failures, counts.failed)
            .or_else(|| by_rate("failureRate", self.failure_rate, counts.failed))
            .or_else(|| by_count("reverts", self.reverts, counts.reverted))
            .or_else(|| by_rate("revertRate", self.revert_rate, counts.reverted))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_stands_by_what_it_reports_and_remembers_reaching_the_target() {
        assert_eq!(
            standing("2", Some("1"), false, false),
            (Standing::Previous, false)
        );
        assert_eq!(
            standing("2", None, false, false),
            (Standing::Previous, false)
        );
        assert_eq!(
            standing("2", Some("v2"), false, false).0,
            Standing::Previous
        );
        assert_eq!(
            standing("2", Some("002"), false, false),
            (Standing::Running, true)
        );
        assert_eq!(
            standing("2.0.0", Some("v2.0.0"), false, false),
            (Standing::Running, true)
        );
        assert_eq!(
            standing("2", Some("1"), false, true),
            (Standing::Reverted, true)
        );
        assert_eq!(standing("2", None, false, true), (Standing::Reverted, true));
        assert_eq!(
            standing("2", Some("1"), true, false),
            (Standing::Failed, false)
        );
        assert_eq!(
            standing("2", Some("2"), true, false),
            (Standing::Failed, true)
        );
        assert_eq!(
            standing("2", Some("1"), true, true),
            (Standing::Failed, true)
        );
    }

    #[test]
    fn counts_move_by_standing_and_previous_is_what_is_left() {
        let mut c = Counts::default();
        c.add(Standing::Previous, 1);
        c.add(Standing::Running, 1);
        c.add(Standing::Failed, 1);
        c.add(Standing::Reverted, 1);
        assert_eq!((c.targeted, c.previous()), (4, 1));
        c.add(Standing::Previous, -1);
        c.add(Standing::Failed, -1);
        c.add(Standing::Reverted, -1);
        assert!(c.complete());
        c.add(Standing::Running, -1);
        assert!(c.is_zero() && !c.complete());
    }

    #[test]
    fn a_threshold_is_reached_by_count_or_by_share() {
        let t = Thresholds {
            failures: Some(3),
            revert_rate: Some(0.5),
            ..Thresholds::default()
        };
        assert_eq!(t.check(), Ok(()));
        let counts = |targeted, failed, reverted| Counts {
            targeted,
            running: 0,
            failed,
            reverted,
        };
        assert_eq!(t.crossed(&counts(10, 2, 4)), None);
        let c = t.crossed(&counts(10, 3, 0)).unwrap();
        assert_eq!(
            (c.threshold.as_str(), c.limit, c.reached),
            ("failures", 3.0, 3.0)
        );
        let c = t.crossed(&counts(10, 0, 5)).unwrap();
        assert_eq!((c.threshold.as_str(), c.reached), ("revertRate", 0.5));
        assert_eq!(t.crossed(&counts(0, 0, 0)), None);
        let rate = Thresholds {
            failure_rate: Some(0.1),
            ..Thresholds::default()
        };
        assert_eq!(rate.crossed(&counts(100, 9, 0)), None);
        assert!(rate.crossed(&counts(100, 10, 0)).is_some());
    }

    #[test]
    fn thresholds_that_cannot_be_met_sensibly_are_refused() {
        assert!(Thresholds::default().check().is_err());
        let zero = Thresholds {
            failures: Some(0),
            ..Thresholds::default()
        };
        assert!(zero.check().is_err());
        for rate in [0.0, -0.1, 1.5, f64::NAN] {
            let t = Thresholds {
                failure_rate: Some(rate),
                ..Thresholds::default()
            };
            assert!(t.check().is_err(), "{rate}");
        }
    }
}
