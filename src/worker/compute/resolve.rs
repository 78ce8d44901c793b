//! Firmware resolution: every device the batch touched, or a release change affects, has its target
//! re-resolved ([`crate::firmware`]'s precedence, through the registry's releases); a changed target is
//! stored, and a changed *version* is a rollout-target event ([`super::outbox`]).

use foldhash::{HashSet, HashSetExt};

use crate::firmware::Target;

use super::causes::Cause;
use super::work::Work;

impl Work<'_> {
    /// Re-resolves the firmware target of every device the batch touched or a release change affects; a
    /// changed target is stored, and a changed *version* is a rollout-target event in the outbox.
    pub(super) fn resolve_firmware(&mut self) {
        // Each device once: the batch's devices (those the batch touched before this point), then a release
        // change's devices unless the batch holds them already or one of them came earlier.
        let touched = self.touched.len();
        for index in 0..touched {
            let Some((id, _)) = self.touched.get(index) else {
                continue;
            };
            if let Some(target) = self.changed_target(id) {
                let id: Box<str> = id.into();
                self.retarget(&id, target, None);
            }
        }
        let mut seen = HashSet::new();
        for (id, cause) in std::mem::take(&mut self.resolve) {
            let first = self.touched.index_of(&id).is_none_or(|i| i >= touched);
            if first && seen.insert(id.clone()) {
                if let Some(target) = self.changed_target(&id) {
                    self.retarget(&id, target, Some(cause));
                }
            }
        }
    }

    /// Device `id`'s resolved target, if it differs from the one it has.
    fn changed_target(&self, id: &str) -> Option<Target> {
        let device = self.current(id)?;
        let target = self.registry.resolve(
            &device.org,
            id,
            (device.development, device.firmware_lock.as_deref()),
            device.target.release,
            device.memberships.iter().map(|m| m.slot),
        );
        (target != device.target).then_some(target)
    }

    /// Stores a device's new target; a changed version is a rollout-target event, carrying the last cause
    /// that touched the device in the batch (else `cause`).
    fn retarget(&mut self, id: &str, target: Target, cause: Option<Cause>) {
        let last = self
            .touched
            .index_of(id)
            .and_then(|i| self.touched.get(i))
            .and_then(|(_, t)| t.cause.clone());
        let cause = last
            .or(cause)
            // Every path that touches a device records its cause; should one not, the instant of
            // re-resolution is the truthful cause.
            .unwrap_or_else(|| self.timer_cause());
        let Some(index) = self.touch(id) else {
            return;
        };
        if let Some(touched) = self.touched.get_mut(index) {
            touched.retargeted = true;
        }
        let Some(device) = self.devices.get_mut(id) else {
            return;
        };
        let previous = std::mem::replace(&mut device.target, target.clone());
        if previous.release != target.release {
            // Another release targets it: it has not reached this one's target yet.
            device.reached = false;
        }
        if !previous.is_rollout_change(&target) {
            return;
        }
        device.target_sequence += 1;
        let sequence = device.target_sequence;
        let org = device.org.clone();
        self.rollout(&org, id, sequence, &previous, &target, &cause);
    }
}
