//! The watcher task: asks the store for its catalog every `poll_interval` (and at once when
//! the store reports a change, see `ModelStore::changes`) and brings the registry in line
//! with it and with each model's version policy. This is what serves a
//! version an operator dropped into the models directory by hand; kiln's own publishers
//! (uploads, jobs) load their new version at once through `Registry::load_version`.

use std::collections::BTreeSet;
use std::sync::Arc;

use super::{Registry, Slot, VersionState};
use crate::config::VersionPolicy;
use crate::store::Versions;

/// Starts the watcher: an initial sync (after which readiness may flip), then one per poll.
pub fn spawn_watcher(registry: Arc<Registry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = registry.config.poll_interval;
        let mut changes = registry.store.changes();
        registry.sync().await;
        registry.mark_initial_load_done();
        tracing::info!(models = registry.list().len(), "initial model load done");
        loop {
            // A shared catalog's notification (another replica published or deleted) syncs
            // at once; the poll is the fallback.
            match changes.as_mut() {
                Some(rx) => {
                    tokio::select! {
                        _ = tokio::time::sleep(poll) => {}
                        changed = rx.changed() => {
                            if changed.is_err() {
                                changes = None;
                            }
                        }
                    }
                }
                None => tokio::time::sleep(poll).await,
            }
            registry.sync().await;
        }
    })
}

/// The versions a policy serves among those found, highest first for `latest`.
fn wanted(policy: &VersionPolicy, found: &BTreeSet<u64>) -> Vec<u64> {
    match policy {
        VersionPolicy::Latest => found.iter().rev().copied().collect(),
        VersionPolicy::All => found.iter().copied().collect(),
        VersionPolicy::Specific(list) => {
            list.iter().filter(|v| found.contains(v)).copied().collect()
        }
    }
}

impl Registry {
    /// One pass over every model: load what is new (or failed and changed), then unload what
    /// the store or the policy no longer serves. A replaced version is unloaded only after
    /// its successor is AVAILABLE, so requests never see a gap.
    pub(crate) async fn sync(self: &Arc<Self>) {
        let _one_at_a_time = self.sync_lock.lock().await;
        let catalog = match self.store.scan().await {
            Ok(c) => {
                self.set_scan_error(None);
                c
            }
            Err(e) => {
                // Keep serving what is loaded; the next poll tries again.
                tracing::error!(error = %e, "cannot list the model store");
                self.set_scan_error(Some(e.to_string()));
                return;
            }
        };
        for (name, versions) in &catalog {
            self.sync_model(name, Some(versions), None).await;
        }
        // Models that left the store.
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        models.retain(|name, _| catalog.contains_key(name));
    }

    /// Brings one model in line with its versions in the store (`None`: the model is gone).
    /// With `only`, no other version is loaded (a publisher loading its new version), though
    /// the policy still retires what that version replaces. The caller holds `sync_lock`.
    pub(super) async fn sync_model(
        self: &Arc<Self>,
        name: &str,
        versions: Option<&Versions>,
        only: Option<u64>,
    ) {
        let Some(versions) = versions.filter(|v| !v.is_empty()) else {
            self.models
                .write()
                .expect("registry lock is never poisoned")
                .remove(name);
            return;
        };
        let policy = self.config.policy_for(name);
        let present: BTreeSet<u64> = versions.keys().copied().collect();
        if self.is_unloaded(name) {
            self.end_all(name, versions);
            return;
        }
        let current = self.snapshot().remove(name).unwrap_or_default();
        for v in wanted(&policy, &present) {
            let revision = &versions[&v];
            let needs_load = match current.get(&v) {
                None
                | Some(Slot {
                    state: VersionState::End,
                    ..
                }) => true,
                // A failed version is retried only once its files change.
                Some(Slot {
                    state: VersionState::Failed(_),
                    revision: loaded_from,
                }) => loaded_from != revision,
                Some(_) => false,
            };
            // `latest` loads only the highest version that can load: stop at the first
            // one that is (or just became) available.
            if needs_load && only.is_none_or(|o| o == v) {
                self.load(name, v, revision.clone()).await;
            }
            if policy == VersionPolicy::Latest
                && matches!(self.state_of(name, v), Some(VersionState::Available(_)))
            {
                break;
            }
        }
        self.retire(name, &policy, &present);
    }

    /// Every version of an operator-unloaded model is END (and listed as such).
    fn end_all(&self, name: &str, versions: &Versions) {
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        let slots = models.entry(name.to_owned()).or_default();
        slots.retain(|v, _| versions.contains_key(v));
        for (v, revision) in versions {
            let slot = slots.entry(*v).or_insert_with(|| Slot {
                state: VersionState::End,
                revision: revision.clone(),
            });
            if slot.state.loaded().is_some() {
                tracing::info!(model = name, version = *v, "version unloaded by request");
            }
            slot.state = VersionState::End;
        }
    }

    pub(super) fn state_of(&self, name: &str, version: u64) -> Option<VersionState> {
        let models = self.models.read().expect("registry lock is never poisoned");
        models.get(name)?.get(&version).map(|s| s.state.clone())
    }

    /// Removes versions that left the store and ENDs those the policy no longer serves.
    fn retire(&self, name: &str, policy: &VersionPolicy, present: &BTreeSet<u64>) {
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        let Some(versions) = models.get_mut(name) else {
            return;
        };
        versions.retain(|v, _| present.contains(v));
        let keep: BTreeSet<u64> = match policy {
            VersionPolicy::Latest => versions
                .iter()
                .rev()
                .find(|(_, s)| matches!(s.state, VersionState::Available(_)))
                .map(|(v, _)| *v)
                .into_iter()
                .collect(),
            VersionPolicy::All => present.clone(),
            VersionPolicy::Specific(list) => list.iter().copied().collect(),
        };
        for (v, slot) in versions.iter_mut() {
            if matches!(slot.state, VersionState::Available(_)) && !keep.contains(v) {
                tracing::info!(
                    model = name,
                    version = *v,
                    "version retired by the version policy"
                );
                slot.state = VersionState::End;
            }
        }
    }
}
