//! A batch's third input kind: the devices whose time flips came due. Each is re-evaluated against its
//! org's time-dependent groups, with the batch's instant as the cause.

use super::work::Work;

impl Work<'_> {
    /// Re-evaluates a device whose time flip came due.
    pub(super) fn timer(&mut self, id: &str) {
        let registry = self.registry;
        let Some(device) = self.current(id) else {
            return;
        };
        let Some((_, org)) = registry.org(&device.org) else {
            return;
        };
        self.stats.timer_evaluations += 1;
        let cause = self.timer_cause();
        self.reconcile_slots(id, &org.time_groups, &cause);
        // Taken into the batch even when nothing changed: a flip instant is when the result *may* change,
        // and the device's next flip must be scheduled from here either way (installing the batch does it).
        // A device the batch leaves as stored is not written.
        self.touch(id);
    }
}
