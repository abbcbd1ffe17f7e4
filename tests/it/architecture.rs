//! The crate's layering, checked on its source: every module may use only modules of a
//! lower layer, so the import graph has no cycle and no upward arrow, and the error module
//! imports no domain. `lib.rs` (the server's assembly) and the binary's `main.rs` and `cli/`
//! sit above everything and are not checked.
//!
//! Reading the source (every `crate::<module>` path, grouped imports included, comments
//! skipped) rather than asking the compiler keeps this test free of tools; a path it cannot
//! see would be one spelled without `crate::`, which the code does not do.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules by layer, lowest first. A module may use modules of lower layers only.
const LAYERS: &[&[&str]] = &[
    // Connections to the engines replicas share (object storage, PostgreSQL).
    &["remote"],
    // Base: know nothing of kiln.
    &["error", "device", "shutdown", "metrics", "dataset"],
    &["config", "preprocess"],
    &["model", "telemetry"],
    // Pretrained transformers (tokenizer, encoder, pooling) beside the layer-list models.
    &["text"],
    // A version's queue and workers; where versions live.
    &["batcher", "store"],
    // Loaded versions; one training run.
    &["registry", "training"],
    // Predictions in model terms; the job system.
    &["serving", "jobs"],
    // The edges' machinery.
    &["auth", "server"],
    &["state"],
    &["api"],
    // The gRPC edge: its tensors are decoded and encoded by api::v2's protocol-independent
    // halves, its errors mapped from api::error's table.
    &["grpc"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// Every `.rs` file under `dir`.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source without comments (line, block and doc comments), strings kept.
fn strip_comments(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_str = false;
    while i < b.len() {
        if in_str {
            out.push(b[i]);
            if b[i] == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            in_str = b[i] != b'"';
            i += 1;
        } else if b[i] == b'"' && !b[..i].ends_with(b"'") {
            in_str = true;
            out.push(b'"');
            i += 1;
        } else if b[i..].starts_with(b"//") {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if b[i..].starts_with(b"/*") {
            i = text[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The top-level modules a source file names through `crate::`.
fn uses(text: &str) -> BTreeSet<String> {
    let text = strip_comments(text);
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // `crate::{a::b, c}`: the first segment of each entry, nested braces skipped.
            let mut depth = 0;
            let mut entry_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => entry_start = true,
                    c if entry_start && !c.is_whitespace() => {
                        out.insert(ident(&group[i..]));
                        entry_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            out.insert(ident(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

/// module → (the modules it uses, one file that uses each).
fn graph() -> BTreeMap<String, BTreeMap<String, String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for file in files {
        let rel = file.strip_prefix(&src).unwrap();
        let first = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let module = first.trim_end_matches(".rs").to_owned();
        if ["lib", "main", "cli"].contains(&module.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&file).unwrap();
        let entry = graph.entry(module.clone()).or_default();
        for used in uses(&text) {
            if used != module {
                entry
                    .entry(used)
                    .or_insert_with(|| rel.display().to_string());
            }
        }
    }
    graph
}

#[test]
fn every_module_uses_only_lower_layers() {
    let mut wrong = Vec::new();
    for (module, used) in graph() {
        let Some(layer) = layer_of(&module) else {
            wrong.push(format!(
                "module '{module}' is in no layer: add it to LAYERS in tests/it/architecture.rs"
            ));
            continue;
        };
        for (target, file) in used {
            match layer_of(&target) {
                None => wrong.push(format!(
                    "{file}: '{module}' uses '{target}', which is in no layer (lib.rs's items are the top)"
                )),
                Some(t) if t >= layer => wrong.push(format!(
                    "{file}: '{module}' (layer {layer}) uses '{target}' (layer {t}): an arrow that does not point down"
                )),
                Some(_) => {}
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_error_module_imports_no_domain() {
    let g = graph();
    assert_eq!(
        g.get("error").map(|u| u.keys().collect::<Vec<_>>()),
        Some(vec![]),
        "src/error.rs must not import other kiln modules"
    );
}

#[test]
fn the_reader_sees_grouped_imports_and_skips_comments() {
    let text = "use crate::{a::b, c, d::{e, f}};\n// crate::nope\n/* crate::nor */ let x = crate::g::h;\nlet s = \"// not a comment\"; crate::i";
    let got: Vec<String> = uses(text).into_iter().collect();
    assert_eq!(got, ["a", "c", "d", "g", "i"]);
}

#[test]
fn v2_serves_through_the_core_not_through_v1s_handlers() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api/v2");
    let mut files = Vec::new();
    sources(&dir, &mut files);
    assert!(!files.is_empty(), "src/api/v2/ has no sources");
    for file in files {
        let text = strip_comments(&std::fs::read_to_string(&file).unwrap());
        assert!(
            !text.contains("predict::"),
            "{}: the V2 handlers must not import from api/predict.rs (use crate::serving)",
            file.display()
        );
    }
}
