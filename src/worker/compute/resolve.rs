//! Firmware resolution: every device the batch touched, or a release change affects, has its target
//! re-resolved ([`crate::firmware`]'s precedence, through the registry's releases); a changed target is
//! stored, and a changed *version* is a rollout-target event ([`super::outbox`]).

use foldhash::{HashSet, HashSetExt};

use super::causes::Cause;
use super::work::Work;

impl Work<'_> {
    /// Re-resolves the firmware target of every device the batch touched or a release change affects; a
    /// changed target is stored, and a changed *version* is a rollout-target event in the outbox.
    pub(super) fn resolve_firmware(&mut self) {
        let registry = self.registry;
        let mut ids: Vec<(Box<str>, Option<Cause>)> =
            self.devices.keys().map(|id| (id.clone(), None)).collect();
        // Each device once: the batch's devices are distinct keys; a release change's devices are added
        // unless the batch already holds them or one of them came earlier.
        let mut seen = HashSet::new();
        for (id, cause) in std::mem::take(&mut self.resolve) {
            if !self.devices.contains_key(&id) && seen.insert(id.clone()) {
                ids.push((id, Some(cause)));
            }
        }
        for (id, cause) in ids {
            let Some(device) = self.current(&id) else {
                continue;
            };
            let target = registry.resolve(
                &device.org,
                device.development,
                device.firmware_lock.as_deref(),
                device.memberships.iter().map(|m| m.slot),
            );
            if target == device.target {
                continue;
            }
            let previous = device.target.clone();
            let cause = self
                .causes
                .get(&id)
                .cloned()
                .or(cause)
                // Every path that touches a device records its cause; should one not, the instant of
                // re-resolution is the truthful cause.
                .unwrap_or_else(|| self.timer_cause());
            let Some(device) = self.held(&id) else {
                continue;
            };
            let rollout = previous.is_rollout_change(&target);
            device.target = target.clone();
            if !rollout {
                continue;
            }
            device.target_sequence += 1;
            let sequence = device.target_sequence;
            let org = device.org.clone();
            self.rollout(&org, &id, sequence, &previous, &target, &cause);
        }
    }
}
