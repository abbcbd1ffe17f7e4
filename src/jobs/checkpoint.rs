//! Checkpoints on disk (and, with `--object-store`, mirrored there: [`Mirror`]): `<data>/checkpoints/<job>/ckpt/{tensors.safetensors, meta.json,
//! epoch.json}` (`epoch.json`: the epoch's history entry, so that a crash between the
//! checkpoint and the history row loses neither),
//! replaced after every epoch by writing `ckpt.tmp` and renaming, so a crash at any moment
//! leaves one complete checkpoint (`ckpt`, or `ckpt.old` mid-swap). The files are fsynced
//! before the rename, as a published version's are: after a power loss a renamed
//! checkpoint holds its data, not empty files. Runs on the job's thread.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::training::trainer::{Checkpoint, CheckpointMeta, EpochEvent};

const TENSORS: &str = "tensors.safetensors";
const META: &str = "meta.json";
const EVENT: &str = "epoch.json";

/// Writes `ck` as the job's checkpoint, with `event`, its epoch's history entry.
pub fn save(dir: &Path, ck: &Checkpoint, event: &EpochEvent) -> Result<(), String> {
    let tmp = dir.join("ckpt.tmp");
    let cur = dir.join("ckpt");
    let old = dir.join("ckpt.old");
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut all: HashMap<String, Tensor> = HashMap::new();
    for (k, v) in &ck.weights {
        all.insert(format!("w.{k}"), v.clone());
    }
    for (k, v) in &ck.optimizer {
        all.insert(format!("o.{k}"), v.clone());
    }
    for (k, v) in ck.best_weights.iter().flatten() {
        all.insert(format!("b.{k}"), v.clone());
    }
    candle_core::safetensors::save(&all, tmp.join(TENSORS))
        .map_err(|e| format!("saving the checkpoint: {e}"))?;
    let meta = serde_json::to_vec(&ck.meta).expect("checkpoint meta serializes");
    std::fs::write(tmp.join(META), meta).map_err(|e| format!("saving the checkpoint: {e}"))?;
    let event = serde_json::to_vec(event).expect("epoch events serialize");
    std::fs::write(tmp.join(EVENT), event).map_err(|e| format!("saving the checkpoint: {e}"))?;
    for file in [tmp.join(TENSORS), tmp.join(META), tmp.join(EVENT)] {
        std::fs::File::open(&file)
            .and_then(|f| f.sync_all())
            .map_err(|e| format!("syncing the checkpoint {}: {e}", file.display()))?;
    }
    sync_dir(&tmp).map_err(|e| format!("syncing {}: {e}", tmp.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    if cur.exists() {
        std::fs::rename(&cur, &old).map_err(|e| format!("rotating the checkpoint: {e}"))?;
    }
    std::fs::rename(&tmp, &cur).map_err(|e| format!("installing the checkpoint: {e}"))?;
    // The renames themselves: without this a power loss may bring back the previous one.
    sync_dir(dir).map_err(|e| format!("syncing {}: {e}", dir.display()))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// Flushes a directory's entries (names created, renamed) to the disk. Only Unix opens a
/// directory as a file; elsewhere the rename is as durable as the platform makes it.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(path)?.sync_all()?;
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// The job's latest complete checkpoint, if any.
pub fn load(dir: &Path) -> Result<Option<Checkpoint>, String> {
    for name in ["ckpt", "ckpt.old"] {
        let d = dir.join(name);
        if !d.join(META).is_file() || !d.join(TENSORS).is_file() {
            continue;
        }
        let meta: CheckpointMeta =
            serde_json::from_slice(&std::fs::read(d.join(META)).map_err(|e| e.to_string())?)
                .map_err(|e| format!("checkpoint {}: {e}", d.display()))?;
        let tensors = candle_core::safetensors::load(d.join(TENSORS), &Device::Cpu)
            .map_err(|e| format!("checkpoint {}: {e}", d.display()))?;
        let (mut weights, mut optimizer, mut best) = (HashMap::new(), Vec::new(), HashMap::new());
        for (k, v) in tensors {
            if let Some(n) = k.strip_prefix("w.") {
                weights.insert(n.to_owned(), v);
            } else if let Some(n) = k.strip_prefix("o.") {
                optimizer.push((n.to_owned(), v));
            } else if let Some(n) = k.strip_prefix("b.") {
                best.insert(n.to_owned(), v);
            }
        }
        return Ok(Some(Checkpoint {
            epoch: meta.epoch,
            weights,
            optimizer,
            best_weights: (!best.is_empty()).then_some(best),
            meta,
        }));
    }
    Ok(None)
}

/// The history entry of the epoch the latest complete checkpoint holds (the one [`load`]
/// reads), if it has one.
pub fn load_event(dir: &Path) -> Option<EpochEvent> {
    ["ckpt", "ckpt.old"]
        .iter()
        .map(|name| dir.join(name))
        .find(|d| d.join(META).is_file() && d.join(TENSORS).is_file())
        .and_then(|d| std::fs::read(d.join(EVENT)).ok())
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
}

/// Removes a job's checkpoints (after it finished).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

/// Checkpoints mirrored to object storage (`--object-store`), so that a job taken over by
/// another replica resumes from its last epoch, whatever machine it ran on:
///
/// ```text
/// <prefix>/checkpoints/<job>/<epoch>/{tensors.safetensors, meta.json, epoch.json}
/// <prefix>/checkpoints/<job>/latest      the epoch of the last complete upload
/// ```
///
/// Each epoch's files are uploaded under the epoch's own key first, then `latest` is
/// replaced (one object, written whole) and the previous epoch's objects removed: a reader
/// following `latest` always finds a complete checkpoint. Object store errors (after the
/// client's bounded retries) fail the job with the reason.
pub struct Mirror {
    objects: crate::remote::Objects,
    runtime: tokio::runtime::Handle,
}

impl Mirror {
    /// Must be called within the server's runtime; its methods block (job threads).
    pub fn new(objects: crate::remote::Objects) -> Mirror {
        Mirror {
            objects,
            runtime: tokio::runtime::Handle::current(),
        }
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }

    /// Uploads the checkpoint [`save`] just wrote in `dir` (the job's directory).
    pub fn upload(&self, job: &str, dir: &Path, epoch: u32) -> Result<(), String> {
        let cur = dir.join("ckpt");
        let upload = async {
            for file in [TENSORS, META, EVENT] {
                let bytes = std::fs::read(cur.join(file))
                    .map_err(|e| format!("{}: {e}", cur.join(file).display()))?;
                self.objects
                    .put(&format!("checkpoints/{job}/{epoch}/{file}"), bytes.into())
                    .await
                    .map_err(|e| format!("uploading the checkpoint: {e}"))?;
            }
            let previous = self.latest(job).await?;
            self.objects
                .put(
                    &format!("checkpoints/{job}/latest"),
                    epoch.to_string().into_bytes().into(),
                )
                .await
                .map_err(|e| format!("uploading the checkpoint: {e}"))?;
            if let Some(p) = previous.filter(|p| *p != epoch) {
                if let Err(e) = self
                    .objects
                    .delete_all(&format!("checkpoints/{job}/{p}"))
                    .await
                {
                    tracing::warn!(job, error = %e, "cannot remove an older checkpoint");
                }
            }
            Ok(())
        };
        self.block(upload)
    }

    async fn latest(&self, job: &str) -> Result<Option<u32>, String> {
        match self.objects.get(&format!("checkpoints/{job}/latest")).await {
            Ok(b) => Ok(std::str::from_utf8(&b)
                .ok()
                .and_then(|s| s.trim().parse().ok())),
            Err(crate::remote::ObjectError::NotFound { .. }) => Ok(None),
            Err(e) => Err(format!("reading the checkpoint: {e}")),
        }
    }

    /// Brings the job's latest checkpoint from the object store into `dir` when this
    /// machine has none or an older one; then [`load`] reads it as usual.
    pub fn fetch(&self, job: &str, dir: &Path) -> Result<(), String> {
        let Some(epoch) = self.block(self.latest(job))? else {
            return Ok(());
        };
        if load_event(dir).is_some_and(|e| e.epoch >= epoch) {
            return Ok(());
        }
        let tmp = dir.join("ckpt.tmp");
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
        for file in [TENSORS, META, EVENT] {
            let bytes = self
                .block(
                    self.objects
                        .get(&format!("checkpoints/{job}/{epoch}/{file}")),
                )
                .map_err(|e| format!("downloading the checkpoint: {e}"))?;
            std::fs::write(tmp.join(file), &bytes)
                .map_err(|e| format!("{}: {e}", tmp.join(file).display()))?;
        }
        let (cur, old) = (dir.join("ckpt"), dir.join("ckpt.old"));
        let _ = std::fs::remove_dir_all(&old);
        let _ = std::fs::remove_dir_all(&cur);
        std::fs::rename(&tmp, &cur).map_err(|e| format!("installing the checkpoint: {e}"))?;
        tracing::info!(job, epoch, "checkpoint downloaded from the object store");
        Ok(())
    }

    /// Removes the job's checkpoints from the object store (after it finished).
    pub fn remove(&self, job: &str) {
        if let Err(e) = self.block(self.objects.delete_all(&format!("checkpoints/{job}"))) {
            tracing::warn!(job, error = %e, "cannot remove the job's checkpoints from the object store");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::rng::{streams, Rng};

    fn checkpoint(epoch: u32) -> Checkpoint {
        let t = |v: f32| Tensor::from_vec(vec![v; 4], (2, 2), &Device::Cpu).unwrap();
        let rng = Rng::with_stream(7, streams::SHUFFLE).state();
        Checkpoint {
            epoch,
            weights: HashMap::from([("0.weight".to_owned(), t(epoch as f32))]),
            optimizer: vec![("optim.m.0.weight".to_owned(), t(0.5))],
            best_weights: None,
            meta: CheckpointMeta {
                epoch,
                shuffle_rng: rng,
                dropout_rng: rng,
                best: Some((0.25, epoch)),
                best_tie: None,
                wait: 0,
                served: None,
                stage: None,
            },
        }
    }

    fn event(epoch: u32) -> EpochEvent {
        EpochEvent {
            epoch,
            epochs: 5,
            loss: 0.5,
            val_loss: None,
            metrics: Default::default(),
            learning_rate: 0.01,
            samples_per_sec: 100.0,
            epoch_seconds: 0.1,
            eta_seconds: 0.3,
            trial: None,
            stage: None,
            stage_epoch: None,
        }
    }

    /// Each save replaces the last one whole (tensors, state and the epoch's history entry)
    /// and leaves no temporary directory; removing them after the job leaves nothing.
    #[test]
    fn the_latest_save_is_what_loads() {
        let dir = tempfile::tempdir().unwrap();
        let ck = dir.path().join("job_a");
        assert!(load(&ck).unwrap().is_none());
        assert!(load_event(&ck).is_none());
        save(&ck, &checkpoint(1), &event(1)).unwrap();
        save(&ck, &checkpoint(2), &event(2)).unwrap();
        assert_eq!(load_event(&ck).map(|e| e.epoch), Some(2));
        let back = load(&ck).unwrap().unwrap();
        assert_eq!((back.epoch, back.meta.best), (2, Some((0.25, 2))));
        let w = back.weights["0.weight"].flatten_all().unwrap();
        assert_eq!(w.to_vec1::<f32>().unwrap(), [2.0; 4]);
        assert_eq!(back.optimizer.len(), 1);
        let names: Vec<String> = std::fs::read_dir(&ck)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, ["ckpt"]);
        remove(&ck);
        assert!(!ck.exists());
    }
}
