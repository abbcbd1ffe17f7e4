//! Publishing a trained model: a new version directory written beside the others as
//! `.<v>.tmp-<job>` and renamed to `<v>` when complete — exactly how the registry's watcher
//! expects versions to appear (docs/model-format.md), so no half-written version is ever
//! visible or loaded.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use candle_core::Tensor;

use crate::model::format::ModelSpec;
use crate::model::{SPEC_FILE, WEIGHTS_FILE};

/// Serializes version numbering between jobs of this process.
static PUBLISH: Mutex<()> = Mutex::new(());

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("publishing into {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("publishing: {0}")]
    Tensors(#[from] candle_core::Error),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
    move |source| PublishError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The highest numeric version directory of a model (0 if none).
pub fn latest_version(model_dir: &Path) -> u64 {
    std::fs::read_dir(model_dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let n = e.file_name().to_string_lossy().into_owned();
                    n.bytes()
                        .all(|b| b.is_ascii_digit())
                        .then(|| n.parse::<u64>().ok())
                        .flatten()
                })
                .max()
                .unwrap_or(0)
        })
        .unwrap_or(0)
}

/// Writes `spec` and `weights` as the next version of `name`; returns the version.
pub fn publish(
    models_dir: &Path,
    name: &str,
    spec: &ModelSpec,
    weights: &HashMap<String, Tensor>,
    tag: &str,
) -> Result<u64, PublishError> {
    let json = serde_json::to_vec_pretty(spec).expect("model specs serialize");
    publish_with(models_dir, name, tag, |tmp| {
        std::fs::write(tmp.join(SPEC_FILE), &json).map_err(io(tmp))?;
        candle_core::safetensors::save(weights, tmp.join(WEIGHTS_FILE))?;
        Ok(())
    })
}

/// Publishes files as they were given (an upload): `model.json` and `model.safetensors`.
pub fn publish_files(
    models_dir: &Path,
    name: &str,
    spec_json: &[u8],
    weights: &[u8],
    tag: &str,
) -> Result<u64, PublishError> {
    publish_with(models_dir, name, tag, |tmp| {
        std::fs::write(tmp.join(SPEC_FILE), spec_json).map_err(io(tmp))?;
        std::fs::write(tmp.join(WEIGHTS_FILE), weights).map_err(io(tmp))?;
        Ok(())
    })
}

fn publish_with(
    models_dir: &Path,
    name: &str,
    tag: &str,
    write: impl FnOnce(&Path) -> Result<(), PublishError>,
) -> Result<u64, PublishError> {
    let _guard = PUBLISH
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let model_dir = models_dir.join(name);
    std::fs::create_dir_all(&model_dir).map_err(io(&model_dir))?;
    let mut version = latest_version(&model_dir) + 1;
    let tmp = model_dir.join(format!(".{version}.tmp-{tag}"));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        write(&tmp)?;
        // Readable by a server running as another user; durable before they become visible.
        for f in [SPEC_FILE, WEIGHTS_FILE] {
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(tmp.join(f), std::fs::Permissions::from_mode(0o644))
                    .map_err(io(&tmp))?;
            }
            std::fs::File::open(tmp.join(f))
                .and_then(|f| f.sync_all())
                .map_err(io(&tmp))?;
        }
        loop {
            let target = model_dir.join(version.to_string());
            match std::fs::rename(&tmp, &target) {
                Ok(()) => return Ok(version),
                // Another process published this number meanwhile: take the next.
                Err(_) if target.exists() => version += 1,
                Err(e) => return Err(io(&target)(e)),
            }
        }
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_versions_and_leaves_no_temporary_directory() {
        let dir = tempfile::tempdir().unwrap();
        let spec: ModelSpec = serde_json::from_value(serde_json::json!({
            "format_version": 1, "task": "regression", "input": {"shape": [2]},
            "layers": [{"type": "dense", "units": 1}]
        }))
        .unwrap();
        let mut w = HashMap::new();
        w.insert(
            "0.weight".to_string(),
            Tensor::zeros((1, 2), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        w.insert(
            "0.bias".to_string(),
            Tensor::zeros(1, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap(),
        );
        std::fs::create_dir_all(dir.path().join("m/7")).unwrap();
        assert_eq!(publish(dir.path(), "m", &spec, &w, "t").unwrap(), 8);
        assert_eq!(publish(dir.path(), "m", &spec, &w, "t").unwrap(), 9);
        let names: Vec<String> = std::fs::read_dir(dir.path().join("m"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(names.iter().all(|n| !n.contains("tmp")), "{names:?}");
        crate::registry::load_and_warm(&dir.path().join("m/9"), &candle_core::Device::Cpu).unwrap();
    }
}
