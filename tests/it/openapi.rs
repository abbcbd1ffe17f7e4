//! `GET /openapi.json`: every route the router declares is documented (and nothing else is),
//! the key schemas are there, every `$ref` resolves, and real answers fit their schemas.

use std::collections::BTreeSet;

use kiln::api::openapi::route_of;
use serde_json::{json, Value};

use crate::util::*;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

async fn document(s: &Server) -> Value {
    let r = s.client.get(s.url("/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/json");
    r.json().await.unwrap()
}

/// Every `(METHOD, path)` of the document, as written.
fn operations(doc: &Value) -> Vec<(String, String, &Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths is an object") {
        for m in METHODS {
            if let Some(op) = item.get(m) {
                out.push((m.to_uppercase(), path.clone(), op));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_document_describes_every_route_and_only_those() {
    let models = tempfile::tempdir().unwrap();
    let s = Server::start(models.path(), "").await;
    let doc = document(&s).await;
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "{}",
        doc["openapi"]
    );
    assert_eq!(doc["info"]["title"], "kiln");

    let declared: BTreeSet<(String, String)> = kiln::api::routes()
        .into_iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert!(declared.contains(&("GET".into(), "/openapi.json".into())));
    // TF Serving's verbs (`/v1/models/{name}:predict`) are one path segment to the router.
    let ops = operations(&doc);
    let documented: BTreeSet<(String, String)> = ops
        .iter()
        .map(|(m, p, _)| (m.clone(), route_of(p).to_owned()))
        .collect();
    for (method, route) in &declared {
        assert!(
            documented.contains(&(method.clone(), route.clone())),
            "{method} {route} is routed but /openapi.json does not describe it"
        );
    }
    for (method, route) in &documented {
        assert!(
            declared.contains(&(method.clone(), route.clone())),
            "/openapi.json describes {method} {route}, which no route serves"
        );
    }

    // The verbs are the paths clients type.
    for path in [
        "/v1/models/{name}:predict",
        "/v1/models/{name}:classify",
        "/v1/models/{name}:regress",
        "/v1/models/{name}/versions/{version}:predict",
        "/v1/models/{name}/versions/{version}:classify",
        "/v1/models/{name}/versions/{version}:regress",
        "/v1/training-jobs/{id}:cancel",
    ] {
        assert!(doc["paths"][path]["post"].is_object(), "{path}");
    }
    assert!(doc["paths"]["/v1/models/{name}"]["post"].is_null());

    // Operation ids are unique; every `{param}` of a path is declared on its operations.
    let mut ids = BTreeSet::new();
    for (method, path, op) in &ops {
        let id = op["operationId"]
            .as_str()
            .expect("every operation has an id");
        assert!(ids.insert(id.to_owned()), "operationId {id} is used twice");
        let params: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        for name in path
            .split('{')
            .skip(1)
            .map(|s| s.split('}').next().unwrap())
        {
            assert!(
                params.contains(&name),
                "{method} {path}: path parameter {name} is not declared"
            );
        }
        assert!(
            op["responses"].as_object().is_some_and(|r| !r.is_empty()),
            "{method} {path} documents no response"
        );
    }
}

/// Resolves every `$ref` in `v` against `doc`; returns how many there were.
fn check_refs(doc: &Value, v: &Value) -> usize {
    match v {
        Value::Object(map) => {
            let mut n = 0;
            if let Some(r) = map.get("$ref") {
                let r = r.as_str().expect("$ref is a string");
                let pointer = r.strip_prefix('#').expect("local $ref");
                assert!(doc.pointer(pointer).is_some(), "dangling $ref {r}");
                n += 1;
            }
            n + map.values().map(|x| check_refs(doc, x)).sum::<usize>()
        }
        Value::Array(items) => items.iter().map(|x| check_refs(doc, x)).sum(),
        Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_) => 0,
    }
}

/// The component schema `name` has every key of `value` among its properties, and `value`
/// has every required one (top level only: enough to catch a view and its schema drifting).
fn assert_fits(doc: &Value, name: &str, value: &Value) {
    let schema = &doc["components"]["schemas"][name];
    let props = schema["properties"]
        .as_object()
        .unwrap_or_else(|| panic!("{name} has no properties: {schema}"));
    let obj = value.as_object().unwrap_or_else(|| panic!("{value}"));
    for key in obj.keys() {
        assert!(props.contains_key(key), "{name} lacks '{key}' of {value}");
    }
    for key in schema["required"].as_array().into_iter().flatten() {
        let key = key.as_str().unwrap();
        assert!(
            obj.contains_key(key),
            "{value} lacks '{key}', required by {name}"
        );
    }
}

fn content_types(response_or_body: &Value) -> Vec<&str> {
    response_or_body["content"]
        .as_object()
        .map(|c| c.keys().map(String::as_str).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemas_come_from_the_wire_types_and_their_refs_resolve() {
    let models = tempfile::tempdir().unwrap();
    fixture(models.path(), "mlp", 1, &mlp_spec(6));
    let s = Server::start(models.path(), "").await;
    let doc = document(&s).await;
    let schemas = &doc["components"]["schemas"];
    for name in [
        "PredictRequest",
        "PredictResponse",
        "ExamplesRequest",
        "ClassifyResponse",
        "RegressResponse",
        "InferRequest",
        "InferResponse",
        "ModelMetadataResponse",
        "JobSpec",
        "JobView",
        "DatasetView",
        "LayerSpec",
        "ErrorResponse",
    ] {
        assert!(schemas[name].is_object(), "components.schemas lacks {name}");
    }
    assert!(check_refs(&doc, &doc) > 50);

    // Errors: one response per status, its codes from the server's own mapping.
    let predict = &doc["paths"]["/v1/models/{name}:predict"]["post"];
    let not_found = &predict["responses"]["404"];
    let text = not_found["description"].as_str().unwrap();
    assert!(text.contains("model_not_found"), "{text}");
    assert_eq!(
        not_found["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/ErrorResponse"
    );
    assert!(predict["responses"]["503"]["description"]
        .as_str()
        .unwrap()
        .contains("queue_full"));
    // Without API keys nothing is secured: no operation names a scope or answers 401.
    for (method, path, op) in operations(&doc) {
        assert!(
            op["security"].is_null() && op["responses"]["401"].is_null(),
            "{method} {path} of an open server"
        );
    }
    // With keys, security comes from the declared rules: every operation names its route's
    // scope, keyed routes say 401/403, health checks do not.
    let keyfile = tempfile::NamedTempFile::new().unwrap();
    std::fs::remove_file(keyfile.path()).unwrap();
    kiln::auth::new_key(keyfile.path(), "a", &[kiln::auth::Scope::Admin]).unwrap();
    let keyed = Server::start(
        models.path(),
        &format!("api_keys = {:?}", keyfile.path().display().to_string()),
    )
    .await;
    let keyed_doc = document(&keyed).await;
    let predict = &keyed_doc["paths"]["/v1/models/{name}:predict"]["post"];
    for (method, path, op) in operations(&keyed_doc) {
        let route = kiln::api::routes()
            .into_iter()
            .find(|r| r.method == method && r.path == route_of(&path))
            .unwrap_or_else(|| panic!("{method} {path} is not routed"));
        match route.rule {
            kiln::auth::Rule::Open => assert!(op["security"].is_null(), "{method} {path}"),
            kiln::auth::Rule::Scope(scope) => assert_eq!(
                op["security"],
                json!([{"api_key": [scope.as_str()]}]),
                "{method} {path}"
            ),
        }
    }
    assert_eq!(predict["security"], json!([{"api_key": ["predict"]}]));
    assert!(predict["responses"]["401"].is_object());
    let live = &keyed_doc["paths"]["/health/live"]["get"];
    assert!(live["security"].is_null() && live["responses"]["401"].is_null());
    drop(keyed);

    // Bodies that are not JSON say so.
    let infer = &doc["paths"]["/v2/models/{name}/infer"]["post"];
    assert_eq!(
        content_types(&infer["requestBody"]),
        ["application/json", "application/octet-stream"]
    );
    assert_eq!(
        content_types(&infer["responses"]["200"]),
        ["application/json", "application/octet-stream"]
    );
    let upload = &doc["paths"]["/v1/models/{name}/versions"]["post"];
    assert_eq!(
        content_types(&upload["requestBody"]),
        ["multipart/form-data"]
    );
    let datasets = &doc["paths"]["/v1/datasets"]["post"];
    assert_eq!(
        content_types(&datasets["requestBody"]),
        ["application/json", "text/csv"]
    );
    let events = &doc["paths"]["/v1/training-jobs/{id}/events"]["get"];
    assert_eq!(
        content_types(&events["responses"]["200"]),
        ["text/event-stream"]
    );
    let metrics = &doc["paths"]["/metrics"]["get"];
    assert!(
        content_types(&metrics["responses"]["200"])[0].starts_with("application/openmetrics-text")
    );

    // Real answers fit their schemas.
    let (_, body) = s.get("/v1/models").await;
    assert_fits(&doc, "ModelListResponse", &body);
    assert_fits(&doc, "ModelSummaryView", &body["models"][0]);
    assert_fits(
        &doc,
        "VersionSummaryView",
        &body["models"][0]["versions"][0],
    );
    let (_, body) = s.get("/v1/models/mlp/metadata").await;
    assert_fits(&doc, "MetadataResponse", &body);
    let (_, body) = s.get("/v2/models/mlp").await;
    assert_fits(&doc, "ModelMetadataResponse", &body);
    let (_, body) = s.get("/v2").await;
    assert_fits(&doc, "ServerMetadataResponse", &body);
    let (_, body) = s.get("/health/ready").await;
    assert_fits(&doc, "HealthResponse", &body);
    let (_, body) = s
        .post(
            "/v1/models/mlp:predict",
            &json!({"instances": [[1, 2, 3, 4, 5, 6]]}),
        )
        .await;
    assert_fits(&doc, "PredictResponse", &body);
    let request = json!({"id": "r1", "inputs": [{"name": "input", "shape": [1, 6], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}]});
    assert_fits(&doc, "InferRequest", &request);
    let (_, body) = s.post("/v2/models/mlp/infer", &request).await;
    assert_fits(&doc, "InferResponse", &body);
    assert_fits(&doc, "OutputTensorView", &body["outputs"][0]);
    let (code, body) = s.get("/v1/models/nope").await;
    assert_eq!(code, 404);
    assert_fits(&doc, "ErrorResponse", &body);
}
