//! Rollout progress: after firmware is resolved, every device the batch touched stands again in the
//! release its target names ([`crate::firmware::progress`]), and the batch counts the difference between
//! where each stood at its start and where it stands now, per release. The counts are written with the
//! batch ([`crate::store::firmware::progress`]); a device newly failed or reverted is an increment whose
//! cause a halt names, in the order the batch made them.

use foldhash::HashMap;
use uuid::Uuid;

use super::causes::Cause;
use super::touched::Start;
use super::work::Work;
use crate::firmware::progress::{Counts, Standing};
use crate::rules::FieldId;
use crate::store::batch::{Increment, ReleaseProgress};

impl Work<'_> {
    /// Stands every touched device in its release again and adds each one's move to the batch's counts.
    pub(super) fn track_progress(&mut self) {
        let running = self.registry.catalogue().builtin("firmwareVersion");
        let mut by_release: HashMap<Uuid, usize> = HashMap::default();
        let mut increments: Vec<(usize, Standing, usize, Option<Cause>)> = Vec::new();
        // Every input is applied: the recorded old values are final, and sorted they say per device
        // which attributes the batch changed.
        self.touched.seal();
        for index in 0..self.touched.len() {
            let Some((id, touched)) = self.touched.get(index) else {
                continue;
            };
            if !touched.retargeted && self.inputs_unchanged(index, running) {
                // Same target, same report: the same standing (a fleet's heartbeats end here).
                continue;
            }
            let Some(device) = self.devices.get_mut(id) else {
                continue;
            };
            device.stand(self.registry, running);
            let before = self.touched.progress_at_start(index);
            let after = device.progress();
            if before == after {
                continue;
            }
            let mut slot = |release: Uuid, progress: &mut Vec<ReleaseProgress>| {
                *by_release.entry(release).or_insert_with(|| {
                    progress.push(ReleaseProgress {
                        release,
                        delta: Counts::default(),
                        increments: Vec::new(),
                    });
                    progress.len() - 1
                })
            };
            if let Some((release, standing)) = before {
                let at = slot(release, &mut self.progress);
                self.progress[at].delta.add(standing, -1);
            }
            if let Some((release, standing)) = after {
                let at = slot(release, &mut self.progress);
                self.progress[at].delta.add(standing, 1);
                if matches!(standing, Standing::Failed | Standing::Reverted) {
                    increments.push((at, standing, index, touched.cause.clone()));
                }
            }
        }
        for (at, standing, index, cause) in increments {
            let cause = match cause {
                Some(cause) => cause,
                None => self.timer_cause(),
            };
            let document = self.document(&cause);
            let device_id = self.touched.get(index).map_or("", |(id, _)| id).to_string();
            self.progress[at].increments.push(Increment {
                standing,
                device_id,
                cause: document,
            });
        }
        self.progress.retain(|p| !p.delta.is_zero());
    }

    /// Whether held device `index` changed none of what its standing reads in the batch: the version it
    /// reports (field `running`) and its release's failure signal.
    fn inputs_unchanged(&self, index: usize, running: Option<FieldId>) -> bool {
        let Start::Saved { scalars, olds, .. } = self.touched.started(index) else {
            return false;
        };
        let signal = scalars
            .progress()
            .and_then(|(release, _)| self.registry.failure_signal(release))
            .map(|(field, _)| *field);
        olds.iter()
            .all(|(_, field, _)| Some(*field) != running && Some(*field) != signal)
    }
}
