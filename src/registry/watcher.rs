//! The watcher task: scans the models directory every `poll_interval` and brings the
//! registry in line with it and with each model's version policy.
//!
//! A version directory is a positive integer name holding `model.json`; anything else
//! (`3.tmp`, `.tmp-3`, files) is ignored, which is what makes publish-by-rename atomic: a
//! publisher writes `<name>/<v>.tmp/` and renames it to `<name>/<v>/` when complete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{valid_model_name, Fingerprint, Registry, Slot, VersionState};
use crate::config::VersionPolicy;
use crate::model::{SPEC_FILE, WEIGHTS_FILE};

/// What one scan found: model → version → (directory, fingerprint).
type Found = BTreeMap<String, BTreeMap<u64, (PathBuf, Fingerprint)>>;

/// Starts the watcher: an initial sync (after which readiness may flip), then one per poll.
pub fn spawn_watcher(registry: Arc<Registry>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let poll = registry.config.poll_interval;
        registry.sync().await;
        registry.mark_initial_load_done();
        tracing::info!(models = registry.list().len(), "initial model load done");
        loop {
            tokio::time::sleep(poll).await;
            registry.sync().await;
        }
    })
}

fn scan(root: &Path) -> Found {
    let mut found = Found::new();
    let Ok(models) = std::fs::read_dir(root) else {
        return found;
    };
    for m in models.flatten() {
        let name = m.file_name().to_string_lossy().into_owned();
        if !m.path().is_dir() || !valid_model_name(&name) {
            continue;
        }
        let Ok(versions) = std::fs::read_dir(m.path()) else {
            continue;
        };
        let mut vs = BTreeMap::new();
        for v in versions.flatten() {
            let vname = v.file_name().to_string_lossy().into_owned();
            let Some(version) = vname
                .parse::<u64>()
                .ok()
                .filter(|n| *n > 0 && vname.bytes().all(|b| b.is_ascii_digit()))
            else {
                continue;
            };
            let dir = v.path();
            if !dir.join(SPEC_FILE).is_file() {
                continue;
            }
            vs.insert(version, (dir.clone(), fingerprint(&dir)));
        }
        if !vs.is_empty() {
            found.insert(name, vs);
        }
    }
    found
}

fn fingerprint(dir: &Path) -> Fingerprint {
    [SPEC_FILE, WEIGHTS_FILE]
        .iter()
        .map(|f| match std::fs::metadata(dir.join(f)) {
            Ok(m) => (m.len(), m.modified().ok()),
            Err(_) => (0, None),
        })
        .collect()
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
    /// One pass: load what is new (or failed and changed), then unload what the directory
    /// or the policy no longer serves. A replaced version is unloaded only after its
    /// successor is AVAILABLE, so requests never see a gap.
    pub(crate) async fn sync(self: &Arc<Self>) {
        let _one_at_a_time = self.sync_lock.lock().await;
        let root = self.config.models_dir.clone();
        let found = tokio::task::spawn_blocking(move || scan(&root))
            .await
            .unwrap_or_default();
        for (name, versions) in &found {
            let policy = self.config.policy_for(name);
            let present: BTreeSet<u64> = versions.keys().copied().collect();
            if self.is_unloaded(name) {
                self.end_all(name, versions);
                continue;
            }
            let current = self.snapshot().remove(name).unwrap_or_default();
            for v in wanted(&policy, &present) {
                let (dir, fp) = &versions[&v];
                let needs_load = match current.get(&v) {
                    None
                    | Some(Slot {
                        state: VersionState::End,
                        ..
                    }) => true,
                    // A failed version is retried only once its files change.
                    Some(Slot {
                        state: VersionState::Failed(_),
                        fingerprint,
                    }) => fingerprint != fp,
                    Some(_) => false,
                };
                // `latest` loads only the highest version that can load: stop at the first
                // one that is (or just became) available.
                if needs_load {
                    self.load_version(name, v, dir, fp.clone()).await;
                }
                if policy == VersionPolicy::Latest
                    && matches!(self.state_of(name, v), Some(VersionState::Available(_)))
                {
                    break;
                }
            }
            self.retire(name, &policy, &present);
        }
        // Models whose directory vanished.
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        models.retain(|name, _| found.contains_key(name));
    }

    /// Every version of an operator-unloaded model is END (and listed as such).
    fn end_all(&self, name: &str, versions: &BTreeMap<u64, (PathBuf, Fingerprint)>) {
        let mut models = self
            .models
            .write()
            .expect("registry lock is never poisoned");
        let slots = models.entry(name.to_owned()).or_default();
        slots.retain(|v, _| versions.contains_key(v));
        for (v, (_, fp)) in versions {
            let slot = slots.entry(*v).or_insert_with(|| Slot {
                state: VersionState::End,
                fingerprint: fp.clone(),
            });
            if slot.state.loaded().is_some() {
                tracing::info!(model = name, version = *v, "version unloaded by request");
            }
            slot.state = VersionState::End;
        }
    }

    fn state_of(&self, name: &str, version: u64) -> Option<VersionState> {
        let models = self.models.read().expect("registry lock is never poisoned");
        models.get(name)?.get(&version).map(|s| s.state.clone())
    }

    /// Removes versions whose directory is gone and ENDs those the policy no longer serves.
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
