//! API keys: every route the router declares is checked (health open; 401 without or with
//! an unknown key; 403 with a key lacking the route's scope; through with the right key), and
//! a known path with a method it does not serve answers 405 only to an admin key.

use serde_json::{json, Value};

use crate::util::*;

fn concrete(path: &str) -> String {
    path.replace("{name}", "mlp")
        .replace("{version}", "1")
        .replace("{id}", "job_0000000000000000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_checks_its_key_and_scope() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "mlp", 1, &mlp_spec(6));
    // The walk deletes "mlp" with the admin key; "other" serves the final check.
    fixture(models.path(), "other", 1, &mlp_spec(6));
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    use kiln::auth::Scope;
    let predict = kiln::auth::new_key(keyfile.path(), "p", &[Scope::Predict]).unwrap();
    let train = kiln::auth::new_key(keyfile.path(), "t", &[Scope::Train]).unwrap();
    let admin = kiln::auth::new_key(keyfile.path(), "a", &[Scope::Admin]).unwrap();
    let toml = format!("api_keys = {:?}", keyfile.path().display().to_string());
    let s = Server::start(models.path(), &toml).await;
    // The route table is the router's own declaration (`kiln::api::routes`): each route's
    // rule is what this walk checks the running server enforces.
    let all = kiln::api::routes();
    assert!(all.len() >= 34, "{all:?}");
    for route in &all {
        let (method, path) = (route.method, route.path);
        let url = s.url(&concrete(path));
        let call = |key: Option<&str>| {
            let mut req = s.client.request(method.parse().unwrap(), &url);
            if let Some(k) = key {
                req = req.bearer_auth(k);
            }
            async move { req.send().await.unwrap().status().as_u16() }
        };
        match route.rule {
            kiln::auth::Rule::Open => {
                assert_ne!(call(None).await, 401, "{method} {path} is a health check");
            }
            kiln::auth::Rule::Scope(scope) => {
                assert_eq!(call(None).await, 401, "{method} {path} without a key");
                assert_eq!(
                    call(Some("kiln_wrong")).await,
                    401,
                    "{method} {path} with an unknown key"
                );
                let (right, wrong) = match scope {
                    Scope::Predict => (&predict, &train),
                    Scope::Train => (&train, &admin),
                    Scope::Admin => (&admin, &predict),
                };
                assert_eq!(
                    call(Some(wrong)).await,
                    403,
                    "{method} {path} with a key lacking '{}'",
                    scope.as_str()
                );
                let got = call(Some(right)).await;
                assert!(
                    got != 401 && got != 403,
                    "{method} {path} refused the right key: {got}"
                );
            }
        }
    }
    let put = |key: Option<&str>| {
        let mut req = s.client.put(s.url("/v1/datasets"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(put(None).await, 401);
    assert_eq!(put(Some(&train)).await, 403);
    assert_eq!(put(Some(&admin)).await, 405);
    // The error body names the problem; 401 says how to authenticate.
    let r = s.client.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["code"], "unauthorized");
    let r = s
        .client
        .post(s.url("/v1/models/other:predict"))
        .bearer_auth(&predict)
        .json(&json!({"instances": [[1, 2, 3, 4, 5, 6]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[test]
fn keys_new_prints_the_key_once_and_stores_only_its_hash() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keys.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args([
            "keys",
            "new",
            "--name",
            "ci",
            "--scopes",
            "predict,train",
            "--file",
        ])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(key.starts_with("kiln_") && key.len() > 40, "{key}");
    let stored = std::fs::read_to_string(&file).unwrap();
    assert!(!stored.contains(&key));
    let keys = kiln::auth::Keys::load(&file).unwrap();
    assert_eq!(keys.find(&key).unwrap().name, "ci");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["keys", "new", "--name", "x", "--scopes", "root", "--file"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
