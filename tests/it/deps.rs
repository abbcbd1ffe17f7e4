//! The dependency tree as kiln's speed needs it: one version of each `gemm` crate, so that
//! the `x86-v4` feature kiln's Cargo.toml asks for reaches the copy candle's matmul calls
//! (docs/candle.md). A second version would build fine and silently lose the AVX-512 kernels.

use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct Lock {
    #[serde(default)]
    package: Vec<Package>,
}

#[derive(serde::Deserialize)]
struct Package {
    name: String,
    version: String,
    #[serde(default)]
    dependencies: Vec<String>,
}

/// What is wrong with the `gemm` crates of a `Cargo.lock`, in words; empty when nothing is.
fn gemm_problems(lock: &str) -> Vec<String> {
    let lock: Lock = toml::from_str(lock).expect("Cargo.lock is TOML");
    let mut versions: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &lock.package {
        if p.name == "gemm" || p.name.starts_with("gemm-") {
            versions.entry(&p.name).or_default().push(&p.version);
        }
    }
    let mut problems: Vec<String> = versions
        .iter()
        .filter(|(_, v)| v.len() > 1)
        .map(|(name, v)| {
            format!(
                "Cargo.lock holds {name} {}: kiln's `gemm` requirement in Cargo.toml (the one \
                 with the x86-v4 feature) must resolve to the version candle-core uses, or \
                 candle's matmul keeps only its AVX2 kernels (docs/candle.md). Set it to \
                 candle-core's (`cargo tree -i {name}` shows who asks for which), then \
                 `cargo update -p gemm`.",
                v.join(" and ")
            )
        })
        .collect();
    if !versions.contains_key("gemm") {
        problems.push("Cargo.lock holds no `gemm` at all: is kiln still on candle?".into());
    }
    let candle_uses_gemm = lock
        .package
        .iter()
        .filter(|p| p.name == "candle-core")
        .all(|p| {
            p.dependencies
                .iter()
                .any(|d| d.split(' ').next() == Some("gemm"))
        });
    if !candle_uses_gemm {
        problems.push(
            "candle-core no longer depends on `gemm`: the x86-v4 feature in kiln's Cargo.toml \
             does nothing now; remove it (and this test) or find what candle's matmul calls."
                .into(),
        );
    }
    problems
}

#[test]
fn one_version_of_each_gemm_crate() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock");
    let lock = std::fs::read_to_string(&path).expect("Cargo.lock is committed");
    let problems = gemm_problems(&lock);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_second_gemm_version_is_reported() {
    let lock = r#"
version = 4

[[package]]
name = "candle-core"
version = "0.11.1"
dependencies = ["gemm 0.17.1", "half"]

[[package]]
name = "gemm"
version = "0.17.1"

[[package]]
name = "gemm"
version = "0.19.0"

[[package]]
name = "gemm-common"
version = "0.19.0"
"#;
    let problems = gemm_problems(lock);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].contains("gemm 0.17.1 and 0.19.0") && problems[0].contains("cargo update"),
        "{}",
        problems[0]
    );
    let clean = r#"
[[package]]
name = "candle-core"
version = "0.11.1"
dependencies = ["gemm"]

[[package]]
name = "gemm"
version = "0.19.0"
"#;
    assert!(gemm_problems(clean).is_empty());
    let without = clean.replace("[\"gemm\"]", "[]");
    assert!(gemm_problems(&without)[0].contains("no longer depends on `gemm`"));
}
