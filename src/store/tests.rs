//! The local directory store: atomic publish, numbering, names, scanning, delete; and
//! `validate_and_publish`.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::*;

fn spec() -> ModelSpec {
    serde_json::from_value(serde_json::json!({
        "format_version": 1, "task": "regression", "input": {"shape": [2]},
        "layers": [{"type": "dense", "units": 1}]
    }))
    .unwrap()
}

fn weights() -> HashMap<String, Tensor> {
    let mut w = HashMap::new();
    w.insert(
        "0.weight".to_string(),
        Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap(),
    );
    w.insert(
        "0.bias".to_string(),
        Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
    );
    w
}

fn files() -> ModelFiles {
    ModelFiles::trained(&spec(), &weights()).unwrap()
}

/// Every entry under `dir`, sorted (hidden ones too).
fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn listed(store: &LocalDir) -> Vec<(String, Vec<u64>)> {
    store
        .scan_blocking()
        .into_iter()
        .map(|(m, vs)| (m, vs.into_keys().collect()))
        .collect()
}

#[test]
fn model_names() {
    for ok in ["iris", "a", "m-1.2_x", &"x".repeat(64)] {
        assert!(valid_model_name(ok), "{ok}");
    }
    for bad in [
        "",
        ".hidden",
        "-x",
        "a/b",
        "a..b",
        "a b",
        &"x".repeat(65),
        "é",
    ] {
        assert!(!valid_model_name(bad), "{bad}");
    }
}

#[test]
fn publish_numbers_versions_after_the_highest_and_leaves_no_staging() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    assert_eq!(store.publish_blocking("m", &files()).unwrap(), 1);
    // A version directory without model.json still holds its number.
    std::fs::create_dir_all(root.path().join("m/7")).unwrap();
    assert_eq!(store.publish_blocking("m", &files()).unwrap(), 8);
    assert_eq!(store.publish_blocking("m", &files()).unwrap(), 9);
    assert_eq!(entries(&root.path().join("m")), ["1", "7", "8", "9"]);
    assert_eq!(listed(&store), [("m".to_owned(), vec![1, 8, 9])]);
    // What was published reads back byte for byte, and loads.
    let f = files();
    let stored = store.read_blocking("m", 9).unwrap();
    assert_eq!(stored.files.spec, f.spec);
    assert_eq!(stored.files.weights, f.weights);
    assert_eq!(stored.location, root.path().join("m/9"));
    assert_eq!(stored.files.spec_origin, root.path().join("m/9/model.json"));
    load_and_warm(&stored.files, &Device::Cpu).unwrap();
    assert_eq!(
        store.location("m", 9),
        root.path().join("m/9").display().to_string()
    );
}

#[test]
fn a_publish_that_dies_before_the_rename_leaves_no_visible_version() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    // Staged in full, then the process "dies": nothing runs after the staging.
    let staged = store.stage("m", &files()).unwrap();
    let staging = staged.dir.clone();
    std::mem::forget(staged);
    assert!(staging.join("model.json").is_file());
    assert!(staging.join("model.safetensors").is_file());
    assert!(listed(&store).is_empty());
    assert_eq!(
        store.versions_blocking("m").unwrap(),
        Some(Versions::new()),
        "the model directory exists, with no version"
    );
    assert!(matches!(
        store.read_blocking("m", 1),
        Err(StoreError::VersionNotFound { .. })
    ));
    // The next publish is not confused by the leftover.
    assert_eq!(store.publish_blocking("m", &files()).unwrap(), 1);
    assert_eq!(listed(&store), [("m".to_owned(), vec![1])]);

    // A publish that fails after staging (here: dropped before its commit) cleans up.
    let staged = store.stage("m", &files()).unwrap();
    let staging = staged.dir.clone();
    drop(staged);
    assert!(!staging.exists());
    assert_eq!(listed(&store), [("m".to_owned(), vec![1])]);
}

#[test]
fn a_failed_write_publishes_nothing() {
    let root = tempfile::tempdir().unwrap();
    // The model's "directory" is a file: nothing can be staged under it.
    std::fs::write(root.path().join("m"), b"not a directory").unwrap();
    let store = LocalDir::new(root.path());
    let err = store.publish_blocking("m", &files()).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(err.to_string().contains("cannot create"), "{err}");
    assert_eq!(entries(root.path()), ["m"]);
}

#[test]
fn concurrent_publishers_take_distinct_numbers() {
    let root = tempfile::tempdir().unwrap();
    // Two stores over one directory stand for two processes (each has its own lock).
    let stores = [LocalDir::new(root.path()), LocalDir::new(root.path())];
    let mut got: Vec<u64> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let store = stores[i % 2].clone();
                s.spawn(move || store.publish_blocking("m", &files()).unwrap())
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    got.sort_unstable();
    assert_eq!(got, (1..=8).collect::<Vec<_>>());
    assert_eq!(entries(&root.path().join("m")).len(), 8);
}

#[test]
fn invalid_names_are_refused_before_anything_is_touched() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path().join("models"));
    for name in ["..", "../x", "a/b", ".hidden", "", "a..b"] {
        let refused = |r: Result<(), StoreError>| {
            assert!(
                matches!(&r, Err(StoreError::InvalidName(n)) if n == name),
                "{name}: {r:?}"
            );
        };
        refused(store.publish_blocking(name, &files()).map(drop));
        refused(store.read_blocking(name, 1).map(drop));
        refused(store.versions_blocking(name).map(drop));
        refused(store.delete_version_blocking(name, 1));
        refused(store.delete_model_blocking(name));
    }
    assert!(
        entries(root.path()).is_empty(),
        "{:?}",
        entries(root.path())
    );
}

#[test]
fn scan_lists_versions_only() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    assert!(listed(&LocalDir::new(root.path().join("missing"))).is_empty());
    store.publish_blocking("good", &files()).unwrap();
    let good = root.path().join("good");
    // Unfinished hand publishes, non-canonical numbers, files and empty directories.
    for junk in ["3.tmp", ".4.tmp", "007", "0", "-1", "latest", "5"] {
        std::fs::create_dir_all(good.join(junk)).unwrap();
        if junk != "5" {
            std::fs::write(good.join(junk).join("model.json"), b"{}").unwrap();
        }
    }
    std::fs::write(good.join("6"), b"a file, not a directory").unwrap();
    // Invalid model names, a trash directory, a file, a model with no version yet.
    for junk in [".deleted-x-1-2/1", ".hidden/1", "a b/1", "empty"] {
        std::fs::create_dir_all(root.path().join(junk)).unwrap();
    }
    std::fs::write(root.path().join(".deleted-x-1-2/1/model.json"), b"{}").unwrap();
    std::fs::write(root.path().join(".hidden/1/model.json"), b"{}").unwrap();
    std::fs::write(root.path().join("a b/1/model.json"), b"{}").unwrap();
    std::fs::write(root.path().join("file"), b"x").unwrap();
    assert_eq!(listed(&store), [("good".to_owned(), vec![1])]);
    assert_eq!(
        store.versions_blocking("empty").unwrap(),
        Some(Versions::new())
    );
    assert_eq!(store.versions_blocking("nothing").unwrap(), None);
}

#[test]
fn a_changed_file_changes_the_revision() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    store.publish_blocking("m", &files()).unwrap();
    let before = store.scan_blocking()["m"][&1].clone();
    assert_eq!(store.read_blocking("m", 1).unwrap().revision, before);
    std::fs::write(root.path().join("m/1/model.json"), b"{\"changed\": true}").unwrap();
    assert_ne!(store.scan_blocking()["m"][&1], before);
}

#[test]
fn delete_removes_at_once_and_leaves_no_trash() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    for _ in 0..3 {
        store.publish_blocking("m", &files()).unwrap();
    }
    store.publish_blocking("other", &files()).unwrap();
    store.delete_version_blocking("m", 2).unwrap();
    assert_eq!(
        listed(&store),
        [("m".to_owned(), vec![1, 3]), ("other".to_owned(), vec![1])]
    );
    assert!(matches!(
        store.delete_version_blocking("m", 2),
        Err(StoreError::VersionNotFound { version: 2, .. })
    ));
    assert!(matches!(
        store.delete_version_blocking("ghost", 1),
        Err(StoreError::VersionNotFound { .. })
    ));
    store.delete_model_blocking("m").unwrap();
    assert_eq!(listed(&store), [("other".to_owned(), vec![1])]);
    assert!(matches!(
        store.delete_model_blocking("m"),
        Err(StoreError::ModelNotFound(n)) if n == "m"
    ));
    assert_eq!(entries(root.path()), ["other"]);
}

#[tokio::test]
async fn validate_and_publish_refuses_what_cannot_serve_and_stores_nothing() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    let published = validate_and_publish(&store, "m", files()).await.unwrap();
    assert_eq!(published.version, 1);
    assert!(published.unused_tensors.is_empty());

    let mut w = weights();
    w.remove("0.bias");
    let missing = ModelFiles::trained(&spec(), &w).unwrap();
    let err = validate_and_publish(&store, "m", missing)
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(err.to_string().contains("0.bias"), "{err}");
    let err = validate_and_publish(&store, "m", ModelFiles::new("{", vec![1, 2, 3]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("model.json: "), "{err}");
    let err = validate_and_publish(&store, "n", ModelFiles::new(files().spec, vec![1, 2]))
        .await
        .unwrap_err();
    assert!(err.to_string().starts_with("model.safetensors: "), "{err}");
    assert!(matches!(
        validate_and_publish(&store, "../m", files()).await,
        Err(StoreError::InvalidName(_))
    ));
    // Only the good version, and no directory for the model that never published.
    assert_eq!(entries(root.path()), ["m"]);
    assert_eq!(entries(&root.path().join("m")), ["1"]);

    // An extra tensor is reported, not refused; the trait's methods reach the same files.
    let mut w = weights();
    w.insert(
        "extra".into(),
        Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
    );
    let extra = ModelFiles::trained(&spec(), &w).unwrap();
    let published = validate_and_publish(&store, "m", extra).await.unwrap();
    assert_eq!(
        (published.version, published.unused_tensors),
        (2, vec!["extra".to_owned()])
    );
    let dyn_store: &dyn ModelStore = &store;
    assert_eq!(dyn_store.versions("m").await.unwrap().unwrap().len(), 2);
    dyn_store.delete_version("m", 1).await.unwrap();
    assert_eq!(dyn_store.scan().await.unwrap()["m"].len(), 1);
    assert!(dyn_store.read("m", 2).await.is_ok());
}

#[test]
fn a_broken_spec_is_reported_before_missing_weights() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    let dir = root.path().join("m/1");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("model.json"), b"{\"format_version\": 1, ").unwrap();
    let err = store.read_blocking("m", 1).unwrap_err();
    assert!(matches!(err, StoreError::Invalid(_)), "{err}");
    assert!(
        err.to_string().contains("model.json: invalid model.json"),
        "{err}"
    );
    std::fs::write(dir.join("model.json"), files().spec).unwrap();
    let err = store.read_blocking("m", 1).unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err}");
    assert!(
        err.to_string().contains("model.safetensors: cannot read"),
        "{err}"
    );
}

#[test]
fn leftovers_of_dead_processes_are_removed_and_live_ones_kept() {
    let root = tempfile::tempdir().unwrap();
    let store = LocalDir::new(root.path());
    store.publish_blocking("m", &files()).unwrap();
    // Ours (alive) and one of a process that cannot exist (pid above the kernel's limit).
    let ours = store.stage("m", &files()).unwrap();
    let dead = u32::MAX;
    for d in [
        format!("m/.publish-{dead}-0.tmp"),
        format!(".deleted-m-2-{dead}-7"),
        format!(".deleted-a-b-{dead}-1"),
    ] {
        std::fs::create_dir_all(root.path().join(d).join("x")).unwrap();
    }
    assert_eq!(store.remove_leftovers(), 3);
    assert_eq!(entries(root.path()), ["m"]);
    let in_m = entries(&root.path().join("m"));
    assert_eq!(in_m.len(), 2, "{in_m:?}");
    assert!(ours.dir.is_dir(), "a publish in progress is kept");
    assert_eq!(store.commit(ours).unwrap(), 2);
    assert_eq!(store.remove_leftovers(), 0);
}
