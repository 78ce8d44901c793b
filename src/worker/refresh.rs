//! The control log, read by the pipeline: the group definitions, orgs and releases loaded at start, the
//! LISTEN for new entries, and the refresh that applies each new entry's definition change to the registry
//! and queues the entry for every owned partition (which applies it in its next batch).

use anyhow::Context as _;
use sqlx::postgres::PgListener;

use super::pipeline::Pipeline;
use crate::store::control::{self, ControlEntry, StagingEntry};
use crate::store::{self, StoreError};

impl Pipeline {
    /// Loads every org, group definition and live release, and sets the registry's position to the
    /// control log's head at the definitions' snapshot.
    pub(super) async fn load_definitions(&mut self) -> anyhow::Result<()> {
        let pool = self.pool.clone();
        let (groups, orgs, head) = self
            .retry("loading group definitions", || {
                store::groups::load_definitions(&pool)
            })
            .await
            .context("failed to load group definitions")?;
        for org in &orgs {
            self.registry.add_org(org);
        }
        for def in &groups {
            self.registry.upsert(def);
        }
        // Releases are read after the definitions' snapshot; a release changed in between is applied again
        // from the control log, which is idempotent.
        let releases = self
            .retry("loading firmware releases", || {
                store::firmware::live_releases(&pool)
            })
            .await
            .context("failed to load firmware releases")?;
        self.registry.load_releases(&releases);
        self.registry.position = head;
        tracing::info!(
            orgs = orgs.len(),
            groups = groups.len(),
            control_position = head,
            "definitions loaded"
        );
        Ok(())
    }

    /// Listens for control-log notifications; None (logged) if the database cannot be reached.
    pub(super) async fn listen(&self) -> Option<PgListener> {
        match PgListener::connect_with(&self.pool).await {
            Ok(mut listener) => match listener.listen(control::CHANNEL).await {
                Ok(()) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for control-log notifications");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "cannot connect the control-log listener");
                None
            }
        }
    }

    /// Reads new control-log entries, applies their definition changes to the registry and queues them for
    /// every owned partition.
    pub(super) async fn refresh_control(&mut self) -> Result<(), StoreError> {
        loop {
            let entries = control::read_after(&self.pool, self.registry.position, 1000).await?;
            if entries.is_empty() {
                return Ok(());
            }
            for entry in entries {
                match &entry.entry {
                    ControlEntry::OrgCreated { org_id } => self.registry.add_org(org_id),
                    ControlEntry::GroupUpserted(def) => {
                        self.registry.upsert(def);
                    }
                    ControlEntry::GroupDeleted { group_id, .. } => {
                        self.registry.delete(*group_id);
                    }
                    ControlEntry::ReleaseChanged {
                        org_id,
                        group_id,
                        version,
                        staging,
                    } => {
                        let failure = staging.as_ref().and_then(|s| s.failure.as_ref());
                        let staging = StagingEntry::of(staging.as_ref());
                        self.registry.set_release(
                            org_id,
                            *group_id,
                            version.as_deref(),
                            staging,
                            failure,
                        );
                    }
                    // Per-device entries: only the partitions holding the devices act on them.
                    ControlEntry::Pinned { .. }
                    | ControlEntry::Unpinned { .. }
                    | ControlEntry::StaticMembers { .. }
                    | ControlEntry::DeviceSettings { .. }
                    | ControlEntry::Reevaluate { .. } => {}
                }
                self.registry.position = entry.id;
                for state in self.partitions.values_mut() {
                    if entry.id > state.claim.control_position {
                        state.pending_control.push_back(entry.clone());
                    }
                }
            }
        }
    }
}
