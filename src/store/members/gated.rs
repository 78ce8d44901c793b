//! Static changes gated by the org's retarget cap: a batch added to or removed from a static group that
//! carries a live release retargets the devices whose resolved firmware it changes. Decided in one
//! transaction that holds the org's release lock (taken first, as releases take it) and the group's row:
//! the batch is written, its impact computed over the devices it actually changed, the gate passed, and
//! then it is announced and committed — or, a dry run, rolled back.

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use super::{announce, static_in, MemberError, Partial, StaticChange};
use crate::store::firmware::{self, Impact, Mode};
use crate::store::retarget_cap::{self, Confirmation};

/// What a gated static change did, or would do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticConfirmed {
    /// The devices changed, skipped and refused (for a dry run, as the write would report them).
    pub change: StaticChange,
    /// The changed devices whose resolved firmware changes because they join or leave the group.
    pub impact: Impact,
    /// A dry run's token confirming the change with this impact, when it exceeds the org's retarget cap.
    pub confirmation_token: Option<String>,
}

/// Adds (`removal: false`) or removes the devices to or from a static group as [`super::add_static_with`]
/// and [`super::remove_static_with`] do, gated by the org's retarget cap (up to `sample` devices listed in
/// the impact); [`Mode::DryRun`] writes nothing and answers what the change would do.
#[allow(clippy::too_many_arguments)]
pub async fn change_static_confirmed(
    pool: &PgPool,
    org_id: &str,
    group_id: Uuid,
    device_ids: &[String],
    actor: &str,
    partial: Partial,
    removal: bool,
    sample: usize,
    confirmation: &Confirmation,
    mode: Mode,
) -> Result<StaticConfirmed, MemberError> {
    let mut tx = pool.begin().await?;
    firmware::lock_org(&mut tx, org_id).await?;
    let target = (org_id, group_id);
    let change = static_in(&mut tx, target, device_ids, actor, partial, removal).await?;
    let impact =
        firmware::batch_impact(&mut tx, org_id, group_id, &change.changed, removal, sample).await?;
    let described = format!(
        "{} group {group_id} {}",
        if removal { "remove from" } else { "add to" },
        devices_digest(&change.changed)
    );
    let confirmation_token = retarget_cap::gate(
        pool,
        &mut tx,
        org_id,
        &described,
        &impact,
        confirmation,
        mode,
    )
    .await?;
    match mode {
        Mode::DryRun => tx.rollback().await?,
        Mode::Write => {
            announce(&mut tx, org_id, group_id, &change, removal).await?;
            tx.commit().await?;
        }
    }
    Ok(StaticConfirmed {
        change,
        impact,
        confirmation_token,
    })
}

/// A digest of the devices a batch changes, whatever order the request named them in.
fn devices_digest(devices: &[String]) -> String {
    let mut sorted: Vec<&str> = devices.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut hasher = Sha256::new();
    for id in sorted {
        hasher.update((id.len() as u64).to_be_bytes());
        hasher.update(id.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_digest_names_the_same_devices_alike_in_any_order() {
        let ids = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            devices_digest(&ids(&["b", "a"])),
            devices_digest(&ids(&["a", "b"]))
        );
        assert_ne!(
            devices_digest(&ids(&["a", "b"])),
            devices_digest(&ids(&["a", "b", "c"]))
        );
        assert_ne!(
            devices_digest(&ids(&["ab"])),
            devices_digest(&ids(&["a", "b"]))
        );
    }
}
