//! The web console (docs/console.md): its pages and assets over HTTP (types, security
//! headers, caching, the `/` redirect, open pages beside keyed data), and the whole flow in
//! headless Chromium through WebDriver (`KILN_TEST_CHROMEDRIVER`, scripts/setup/60-chromium.sh).

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::util::{external, Server};
use crate::webdriver::Browser;

const PAGES: &[&str] = &[
    "/console",
    "/console/models",
    "/console/datasets",
    "/console/training",
    "/console/evaluate",
    "/console/models/iris",
    "/console/datasets/ds_0123456789abcdef",
    "/console/training/job_0123456789abcdef",
];

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A models directory holding a copy of the shipped iris model.
fn models_with_iris() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let to = dir.path().join("iris/1");
    std::fs::create_dir_all(&to).unwrap();
    for entry in std::fs::read_dir(repo().join("models/iris/1")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    dir
}

fn assert_secured(r: &reqwest::Response, what: &str) {
    let h = r.headers();
    let csp = h["content-security-policy"].to_str().unwrap();
    for part in [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ] {
        assert!(csp.contains(part), "{what}: CSP {csp} lacks {part}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{what}: {csp}"
    );
    assert!(
        !csp.contains("http:") && !csp.contains("https:"),
        "{what}: no other origin: {csp}"
    );
    assert_eq!(h["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(h["x-frame-options"], "DENY", "{what}");
    assert_eq!(h["referrer-policy"], "no-referrer", "{what}");
}

/// The `src`/`href` of every asset a page names.
fn asset_urls(html: &str) -> Vec<String> {
    let mut out = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for (i, _) in html.match_indices(attr) {
            let rest = &html[i + attr.len()..];
            let url = &rest[..rest.find('"').unwrap()];
            if url.starts_with("/console/assets/") {
                out.push(url.replace("&amp;", "&"));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_and_assets_answer_with_their_types_and_security_headers() {
    let models = models_with_iris();
    let s = Server::start(models.path(), "").await;
    let mut assets = std::collections::BTreeSet::new();
    for page in PAGES {
        let r = s.client.get(s.url(page)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{page}");
        assert_eq!(
            r.headers()["content-type"],
            "text/html; charset=utf-8",
            "{page}"
        );
        assert_secured(&r, page);
        let html = r.text().await.unwrap();
        assert!(html.starts_with("<!DOCTYPE html>"), "{page}");
        // No inline scripts or styles: every script has a src, nothing has a style attribute.
        assert!(
            !html.contains("<script>") && !html.contains("<style"),
            "{page}"
        );
        assert!(!html.contains(" style="), "{page}");
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "{page}: no other origin"
        );
        let urls = asset_urls(&html);
        assert!(
            urls.iter().any(|u| u.contains("console.js?v=")),
            "{page}: {urls:?}"
        );
        assert!(
            urls.iter().any(|u| u.contains("uPlot.iife.min.js?v=")),
            "{page}"
        );
        assets.extend(urls);
    }
    // The page says which one it is; its script reads that.
    let html = s
        .client
        .get(s.url("/console/training/job_0123456789abcdef"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        html.contains("data-page=\"job\"") && html.contains("data-id=\"job_0123456789abcdef\"")
    );

    for url in &assets {
        let r = s.client.get(s.url(url)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{url}");
        let ty = r.headers()["content-type"].to_str().unwrap().to_owned();
        let want = if url.contains(".js?") {
            "text/javascript; charset=utf-8"
        } else {
            "text/css; charset=utf-8"
        };
        assert_eq!(ty, want, "{url}");
        assert_secured(&r, url);
        assert_eq!(
            r.headers()["cache-control"],
            "public, max-age=31536000, immutable",
            "{url}"
        );
        let etag = r.headers()["etag"].to_str().unwrap().to_owned();
        assert!(url.ends_with(etag.trim_matches('"')), "{url} {etag}");
        assert!(!r.bytes().await.unwrap().is_empty());
        // Revalidation.
        let r = s
            .client
            .get(s.url(url))
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 304, "{url}");
        // Named without its hash (typed by hand): revalidated, not cached for good.
        let bare = url.split('?').next().unwrap();
        let r = s.client.get(s.url(bare)).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["cache-control"], "no-cache", "{bare}");
    }
    // The vendored library's licence is served beside it.
    let r = s
        .client
        .get(s.url("/console/assets/uPlot.LICENSE.txt"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("MIT License"));

    // Unknown pages and assets: the JSON 404 of every unknown route, still with the headers.
    for path in [
        "/console/nope",
        "/console/assets/nope.js",
        "/console/assets/..%2FCargo.toml",
        "/console/nope/x",
        "/console/models/a%20b",
        "/console/models/a%3Cb",
    ] {
        let r = s.client.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 404, "{path}");
        assert_secured(&r, path);
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "route_not_found", "{path}");
    }
    // Pages are GET only.
    let r = s
        .client
        .post(s.url("/console/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_root_sends_browsers_to_the_console_and_nobody_else() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let chromium = "text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,image/apng,*/*;q=0.8";
    for accept in [chromium, "text/html"] {
        let r = client
            .get(s.url("/"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "{accept}");
        assert_eq!(r.headers()["location"], "/console");
        let r = client
            .head(s.url("/"))
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 303, "HEAD {accept}");
    }
    // curl (`*/*`), no Accept, JSON clients: the 404 they always got.
    for accept in [
        Some("*/*"),
        None,
        Some("application/json"),
        Some("application/json, text/html;q=0.5"),
    ] {
        let mut req = client.get(s.url("/"));
        if let Some(a) = accept {
            req = req.header("accept", a);
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 404, "{accept:?}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["code"], "route_not_found");
        assert_eq!(e["error"], "no route for GET /");
    }
    // Only `/` and only reads.
    let r = client
        .post(s.url("/"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = client
        .get(s.url("/other"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_api_keys_the_pages_are_open_and_the_data_needs_a_key() {
    let models = models_with_iris();
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    let predict = kiln::auth::new_key(keyfile.path(), "p", &[kiln::auth::Scope::Predict]).unwrap();
    let toml = format!("api_keys = {:?}", keyfile.path().display().to_string());
    let s = Server::start(models.path(), &toml).await;
    for page in PAGES {
        let r = s.client.get(s.url(page)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{page} holds no data: open");
        assert_secured(&r, page);
    }
    let html = s
        .client
        .get(s.url("/console"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // The page holds no model data, only the form that asks for a key.
    assert!(!html.contains("setosa") && html.contains("key-dialog"));
    for url in asset_urls(&html) {
        assert_eq!(
            s.client.get(s.url(&url)).send().await.unwrap().status(),
            200,
            "{url}"
        );
    }
    // What the console's scripts call is the API, with its keys.
    let r = s.client.get(s.url("/v1/models")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = s
        .client
        .get(s.url("/v1/models"))
        .bearer_auth(&predict)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = s
        .client
        .get(s.url("/v1/datasets"))
        .bearer_auth(&predict)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "a predict key does not list datasets");
    s.stop().await;
}

/// Where screenshots go: `KILN_CONSOLE_SCREENSHOTS=docs/console` regenerates the docs' ones.
fn screenshot_dir() -> Option<PathBuf> {
    std::env::var_os("KILN_CONSOLE_SCREENSHOTS").map(|d| {
        let d = PathBuf::from(d);
        let d = if d.is_absolute() { d } else { repo().join(d) };
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

/// Nothing on the page so far was blocked by the CSP (console.js counts violations).
async fn assert_csp_clean(b: &Browser) {
    let n = b
        .eval("return document.body.dataset.cspViolations || '0'", vec![])
        .await;
    assert_eq!(
        n,
        json!("0"),
        "the CSP blocked something on {}",
        b.url().await
    );
}

async fn shot(b: &Browser, dir: &Option<PathBuf>, name: &str) {
    if let Some(d) = dir {
        b.screenshot(&d.join(format!("{name}.png"))).await;
    }
}

/// The whole console in a real browser: upload iris, train, watch the curves, predict with
/// an explanation, evaluate; then the key dialog of a keyed server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_in_headless_chromium() {
    let Some(driver) = external(
        "KILN_TEST_CHROMEDRIVER",
        "chromedriver (Debian's chromium-driver)",
    ) else {
        return;
    };
    let chromium = std::env::var("KILN_TEST_CHROMIUM")
        .ok()
        .filter(|v| !v.is_empty());
    let shots = screenshot_dir();
    let models = models_with_iris();
    let s = Server::start(models.path(), "").await;
    let b = Browser::start(&driver, chromium.as_deref()).await;

    // `/` → the console's models page, with the shipped iris and its live statistics.
    b.goto(&s.url("/")).await;
    assert!(b.url().await.ends_with("/console"), "{}", b.url().await);
    b.wait_for(
        "the models table",
        20,
        "return document.querySelectorAll('#models-table tbody tr').length",
    )
    .await;
    assert!(b.text("#models-table").await.contains("iris"));

    assert_csp_clean(&b).await;
    // Upload iris through the drop zone's file input.
    b.goto(&s.url("/console/datasets")).await;
    let csv = repo().join("examples/data/iris.csv");
    b.type_into("#upload-file", csv.to_str().unwrap()).await;
    let id = b
        .wait_for(
            "the upload",
            30,
            "return document.querySelector('#uploaded-link')?.textContent",
        )
        .await;
    let id = id.as_str().unwrap().to_owned();
    assert!(id.starts_with("ds_"), "{id}");
    b.wait_for(
        "the datasets table",
        10,
        "return document.querySelectorAll('#datasets-table tbody tr').length",
    )
    .await;
    shot(&b, &shots, "datasets").await;

    assert_csp_clean(&b).await;
    // Its profile.
    b.click("#uploaded-link").await;
    let rows = b
        .wait_for(
            "the profile",
            20,
            "return document.querySelectorAll('#profile-table tbody tr').length",
        )
        .await;
    assert_eq!(rows, json!(5), "iris has 5 columns");
    let profile = b.text("#profile-table").await;
    assert!(
        profile.contains("species") && profile.contains("category") && profile.contains("setosa"),
        "{profile}"
    );
    shot(&b, &shots, "dataset").await;

    assert_csp_clean(&b).await;
    // Start a job from the form: few epochs, one row per step so the curve has time to grow.
    b.click("#train-link").await;
    b.wait_for(
        "the target column",
        20,
        "return document.querySelector('#train-target').value === 'species'",
    )
    .await;
    b.clear("#train-model").await;
    b.type_into("#train-model", "iris_web").await;
    b.click("details summary").await;
    b.type_into("#train-epochs", "12").await;
    b.type_into("#train-batch", "4").await;
    b.type_into(
        "#train-extra",
        r#"{"training": {"early_stopping": null, "refit": false}}"#,
    )
    .await;
    shot(&b, &shots, "training").await;
    b.click("#train-form button[type=submit]").await;
    b.wait_for(
        "the job page",
        20,
        "return location.pathname.startsWith('/console/training/job_')",
    )
    .await;
    // The curve grows epoch by epoch (never fewer points than before), to all 12.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (points, state) = {
            let v = b
                .eval("return [Number(document.querySelector('#loss-chart').dataset.points || 0), document.querySelector('#job-state').textContent]", vec![])
                .await;
            (v[0].as_u64().unwrap(), v[1].as_str().unwrap().to_owned())
        };
        if seen.last() != Some(&points) {
            seen.push(points);
        }
        if state == "succeeded" && points == 12 {
            break;
        }
        assert!(
            state != "failed" && state != "cancelled",
            "the job ended {state}"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the job did not succeed: {state}, points {seen:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
    assert!(
        b.eval(
            "return Number(document.querySelector('#metric-chart').dataset.points)",
            vec![]
        )
        .await
            == json!(12)
    );
    b.wait_for(
        "the confusion matrix",
        10,
        "return document.querySelector('#job-confusion table')",
    )
    .await;
    b.wait_for(
        "the cleaning report",
        10,
        "return document.querySelectorAll('#job-columns tbody tr').length === 4",
    )
    .await;
    assert!(b.text("#job-metrics").await.contains("accuracy"));
    assert!(
        b.text("#job-cancel").await.is_empty(),
        "no cancel on a finished job"
    );
    shot(&b, &shots, "job").await;

    assert_csp_clean(&b).await;
    // The new model: predict from the form, with the explanation's bars.
    b.goto(&s.url("/console/models/iris_web")).await;
    let fields = b
        .wait_for(
            "the predict form",
            20,
            "return document.querySelectorAll('#predict-fields input').length",
        )
        .await;
    assert_eq!(fields, json!(4));
    for (name, value) in [
        ("sepal_length", "6.7"),
        ("sepal_width", "3.0"),
        ("petal_length", "5.2"),
        ("petal_width", "2.3"),
    ] {
        let css = format!("#predict-fields input[name={name}]");
        b.clear(&css).await;
        b.type_into(&css, value).await;
    }
    b.click("#predict-form button[type=submit]").await;
    let bars = b
        .wait_for(
            "the explanation bars",
            30,
            "return document.querySelectorAll('#explain-chart .bar-row').length",
        )
        .await;
    assert_eq!(bars, json!(4));
    let label = b.text("#predicted-label").await;
    assert!(
        ["setosa", "versicolor", "virginica"].contains(&label.as_str()),
        "{label}"
    );
    let chart = b.text("#explain-chart").await;
    assert!(
        chart.contains("petal_width") && chart.contains("sepal_length"),
        "{chart}"
    );
    assert!(b.text("#signature").await.contains("classification"));
    b.eval(
        "document.querySelector('#predict-form').scrollIntoView()",
        vec![],
    )
    .await;
    shot(&b, &shots, "model").await;

    assert_csp_clean(&b).await;
    // Evaluate the new version on the uploaded dataset.
    b.goto(&s.url(&format!(
        "/console/evaluate?model=iris_web&version=1&dataset={id}"
    )))
    .await;
    b.wait_for("the form", 20, "return document.querySelector('#eval-dataset').value !== '' && document.querySelector('#eval-version').value === '1'").await;
    b.click("#eval-form button[type=submit]").await;
    b.wait_for(
        "the confusion matrix",
        30,
        "return document.querySelector('#eval-confusion table')",
    )
    .await;
    let metrics = b.text("#eval-metrics").await;
    assert!(
        metrics.contains("accuracy") && metrics.contains("log_loss"),
        "{metrics}"
    );
    shot(&b, &shots, "evaluate").await;

    assert_csp_clean(&b).await;

    // A regression model (trained over the API): its evaluation draws the residuals.
    let csv = std::fs::read(repo().join("tests/data/diabetes_train.csv")).unwrap();
    let r = s
        .client
        .post(s.url("/v1/datasets?name=diabetes"))
        .header("content-type", "text/csv")
        .body(csv)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let ds: Value = r.json().await.unwrap();
    let ds = ds["id"].as_str().unwrap().to_owned();
    let spec = json!({"model": "diabetes", "dataset": ds, "target": "target",
                      "training": {"epochs": 5, "early_stopping": null, "refit": false}});
    let (status, job) = s.post("/v1/training-jobs", &spec).await;
    assert_eq!(status, 202, "{job}");
    let job = job["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (_, j) = s.get(&format!("/v1/training-jobs/{job}")).await;
        if j["state"] == "succeeded" {
            break;
        }
        assert!(j["state"] == "queued" || j["state"] == "running", "{j}");
        assert!(std::time::Instant::now() < deadline, "{j}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    b.goto(&s.url(&format!("/console/evaluate?model=diabetes&dataset={ds}")))
        .await;
    b.wait_for("the form", 20, "return document.querySelector('#eval-dataset').value !== '' && document.querySelector('#eval-model').value === 'diabetes'").await;
    b.click("#eval-form button[type=submit]").await;
    b.wait_for(
        "the residual plot",
        30,
        "return document.querySelector('#eval-residuals canvas')",
    )
    .await;
    let metrics = b.text("#eval-metrics").await;
    assert!(
        metrics.contains("rmse") && metrics.contains("r2"),
        "{metrics}"
    );
    shot(&b, &shots, "residuals").await;
    assert_csp_clean(&b).await;

    b.goto(&s.url("/console")).await;
    b.wait_for(
        "the three models",
        20,
        "return document.querySelectorAll('#models-table tbody tr').length === 3",
    )
    .await;
    shot(&b, &shots, "models").await;
    assert_csp_clean(&b).await;
    s.stop().await;

    // A keyed server: the console asks for a key, then shows the data.
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    let key = kiln::auth::new_key(keyfile.path(), "p", &[kiln::auth::Scope::Predict]).unwrap();
    let toml = format!("api_keys = {:?}", keyfile.path().display().to_string());
    let models = models_with_iris();
    let s = Server::start(models.path(), &toml).await;
    b.goto(&s.url("/console/models")).await;
    b.wait_for(
        "the key dialog",
        20,
        "return document.querySelector('#key-dialog').open",
    )
    .await;
    shot(&b, &shots, "key").await;
    b.type_into("#key-input", &key).await;
    b.click("#key-form button[type=submit]").await;
    b.wait_for(
        "the models table",
        20,
        "return document.querySelectorAll('#models-table tbody tr').length",
    )
    .await;
    let stored = b
        .eval("return sessionStorage.getItem('kiln.apiKey')", vec![])
        .await;
    assert_eq!(stored, json!(key));
    let local = b.eval("return localStorage.length", vec![]).await;
    assert_eq!(local, json!(0), "the key is never kept beyond the tab");
    s.stop().await;
}

/// The vendored files are the ones `assets/vendor/fetch.sh` fetched and recorded.
#[test]
fn vendored_files_match_their_recorded_sha256() {
    use sha2::{Digest, Sha256};
    let dir = repo().join("assets/vendor");
    let sums = std::fs::read_to_string(dir.join("SHA256SUMS")).unwrap();
    let mut checked = 0;
    for line in sums.lines().filter(|l| !l.trim().is_empty()) {
        let (sum, file) = line.split_once("  ").unwrap();
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let got: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(got, sum, "{file} differs from what fetch.sh recorded");
        checked += 1;
    }
    assert!(checked >= 3, "{sums}");
    // The licence travels with the library.
    assert!(sums.contains("uplot/LICENSE"));
}
