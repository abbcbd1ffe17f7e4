//! schemathesis (PyPI) against a scratch server, with and without API keys: requests
//! generated from `/openapi.json` (valid and invalid ones, and sequences that follow the
//! document's links), every answer checked against the document (`--checks all`: no server
//! error, documented statuses, content types, headers and schemas, invalid input refused,
//! valid input accepted, auth enforced as declared, 405 with `Allow` for undeclared methods).
//! The exceptions kiln answers by design are in tests/schemathesis/schemathesis.toml, each
//! with its reason. Needs `KILN_TEST_SCHEMATHESIS` (scripts/setup/50-schemathesis.sh).

use std::path::Path;
use std::process::Command;

use crate::util::*;

/// Bounds that keep both runs within about two minutes on two cores.
const MAX_EXAMPLES: &str = "8";
const MAX_SECONDS: &str = "40";

/// A scratch models directory: a plain MLP, a tabular classifier with named features and a
/// regression model, so every verb has a model it applies to.
fn models() -> tempfile::TempDir {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "mlp", 1, &mlp_spec(6));
    fixture(models.path(), "tab", 1, &tabular_spec());
    fixture(models.path(), "reg", 1, &regression_spec());
    models
}

/// Runs schemathesis against `s`; panics with its report when any check fails.
async fn run(st: &str, s: &Server, key: Option<&str>) {
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/schemathesis.toml");
    let mut cmd = Command::new(st);
    cmd.arg("--config-file")
        .arg(&config)
        .args(["--no-color", "run"])
        .arg(s.url("/openapi.json"))
        .args(["--checks", "all", "--max-examples", MAX_EXAMPLES])
        // One worker: hypothesis parses lambdas' source with `ast.parse`, which CPython 3.11
        // can fail from two threads at once ("AST constructor recursion depth mismatch").
        .args(["--max-time", MAX_SECONDS, "--workers", "1", "--seed", "7"])
        .args(["--generation-database", "none", "--no-shrink"]);
    if let Some(key) = key {
        cmd.args(["--header", &format!("Authorization: Bearer {key}")]);
    }
    // schemathesis writes nothing into the repository: its working directory is a scratch one.
    let scratch = tempfile::tempdir().unwrap();
    cmd.current_dir(scratch.path());
    let out = tokio::task::spawn_blocking(move || cmd.output())
        .await
        .unwrap()
        .expect("schemathesis runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "schemathesis found failures ({}):\n{report}",
        if key.is_some() {
            "with API keys"
        } else {
            "without API keys"
        }
    );
    assert!(report.contains("Tested:"), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_nothing_with_and_without_keys() {
    let Some(st) = external("KILN_TEST_SCHEMATHESIS", "schemathesis") else {
        return;
    };
    let dir = models();
    let open = Server::start(dir.path(), "").await;
    run(&st, &open, None).await;
    drop(open);

    let dir = models();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    use kiln::auth::Scope;
    let key = kiln::auth::new_key(
        keyfile.path(),
        "schemathesis",
        &[Scope::Predict, Scope::Train, Scope::Admin],
    )
    .unwrap();
    let keyed = Server::start(
        dir.path(),
        &format!("api_keys = {:?}", keyfile.path().display().to_string()),
    )
    .await;
    run(&st, &keyed, Some(&key)).await;
}
