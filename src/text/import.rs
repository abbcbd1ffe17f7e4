//! `kiln import --hf DIR`: a directory as Hugging Face or sentence-transformers lay it out →
//! the files of a transformer version. The settings kiln's `model.json` needs are read from
//! the sentence-transformers files when they are there, and the flags win over them:
//!
//! | setting      | flag            | sentence-transformers file                | else                         |
//! |--------------|-----------------|-------------------------------------------|------------------------------|
//! | pooling      | `--pooling`     | `1_Pooling/config.json` (`pooling_mode_*`) | `cls`                        |
//! | normalize    | `--normalize`   | a `…Normalize` module in `modules.json`    | false                        |
//! | max_length   | `--max-length`  | `sentence_bert_config.json` `max_seq_length` | `max_position_embeddings` |
//!
//! `tokenizer.json`'s own truncation and padding are not used (kiln truncates at its
//! `max_length` and pads per batch); what they said is kept in `source` for the record.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use super::format::{Architecture, Head, Pooling, TextSpec, TextTask, Truncation};
use super::format::{TEXT_FORMAT_VERSION, TRANSFORMER_KIND};
use super::{CONFIG_FILE, TOKENIZER_FILE};

/// What the flags ask for; `None`: read it from the directory.
#[derive(Debug, Default, Clone)]
pub struct ImportOptions {
    pub pooling: Option<Pooling>,
    pub normalize: Option<bool>,
    pub max_length: Option<usize>,
}

/// The files of the version to publish.
pub struct Imported {
    pub spec: TextSpec,
    pub config: Vec<u8>,
    pub tokenizer: Vec<u8>,
    pub weights: Vec<u8>,
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: cannot read: {e}", path.display()))
}

fn read_json(path: &Path) -> Result<Option<Value>, String> {
    if !path.is_file() {
        return Ok(None);
    }
    let bytes = read(path)?;
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| format!("{}: not JSON: {e}", path.display()))
}

/// Reads `dir` and decides the spec. Errors name the file and what is missing or wrong.
pub fn from_hf_dir(dir: &Path, opts: &ImportOptions) -> Result<Imported, String> {
    let config_path = dir.join(CONFIG_FILE);
    let config = read(&config_path)?;
    let config_json: Value = serde_json::from_slice(&config)
        .map_err(|e| format!("{}: not JSON: {e}", config_path.display()))?;
    let model_type = config_json["model_type"].as_str().unwrap_or("");
    let architecture = match model_type {
        "bert" => Architecture::Bert,
        other => {
            return Err(format!(
                "{}: model_type {other:?} is not supported (this kiln serves: bert)",
                config_path.display()
            ))
        }
    };
    let tokenizer = read(&dir.join(TOKENIZER_FILE)).map_err(|e| {
        format!("{e} (kiln reads the fast tokenizer's tokenizer.json, not vocab.txt)")
    })?;
    let weights_path = dir.join("model.safetensors");
    if !weights_path.is_file() {
        return Err(format!(
            "{}: not found (kiln reads safetensors weights; convert pytorch_model.bin first)",
            weights_path.display()
        ));
    }
    let weights = read(&weights_path)?;

    let mut source = serde_json::Map::new();
    source.insert("imported_from".into(), json!(dir.display().to_string()));
    let tokenizer_json: Value = serde_json::from_slice(&tokenizer)
        .map_err(|e| format!("{}: not JSON: {e}", dir.join(TOKENIZER_FILE).display()))?;
    if let Some(n) = tokenizer_json["truncation"]["max_length"].as_u64() {
        source.insert("tokenizer_json_truncation_ignored".into(), json!(n));
    }

    let pooling = match opts.pooling {
        Some(p) => {
            source.insert("pooling_from".into(), json!("--pooling"));
            p
        }
        None => match sentence_transformers_pooling(dir)? {
            Some((p, file)) => {
                source.insert("pooling_from".into(), json!(file));
                p
            }
            None => {
                source.insert("pooling_from".into(), json!("default"));
                Pooling::Cls
            }
        },
    };
    let normalize = match opts.normalize {
        Some(n) => {
            source.insert("normalize_from".into(), json!("--normalize"));
            n
        }
        None => match read_json(&dir.join("modules.json"))? {
            Some(modules) => {
                source.insert("normalize_from".into(), json!("modules.json"));
                modules.as_array().is_some_and(|ms| {
                    ms.iter().any(|m| {
                        m["type"]
                            .as_str()
                            .is_some_and(|t| t.ends_with(".Normalize"))
                    })
                })
            }
            None => false,
        },
    };
    let positions = config_json["max_position_embeddings"]
        .as_u64()
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| {
            format!(
                "{}: max_position_embeddings is missing",
                config_path.display()
            )
        })?;
    let max_length = match opts.max_length {
        Some(n) => {
            source.insert("max_length_from".into(), json!("--max-length"));
            n
        }
        None => match read_json(&dir.join("sentence_bert_config.json"))?
            .and_then(|c| c["max_seq_length"].as_u64())
            .and_then(|n| usize::try_from(n).ok())
        {
            Some(n) => {
                source.insert(
                    "max_length_from".into(),
                    json!("sentence_bert_config.json max_seq_length"),
                );
                n
            }
            None => {
                source.insert(
                    "max_length_from".into(),
                    json!("config.json max_position_embeddings"),
                );
                positions
            }
        },
    };
    if max_length > positions {
        return Err(format!(
            "max_length {max_length} is over the model's max_position_embeddings {positions}"
        ));
    }
    // A sequence classifier (a cross-encoder is one with one output): BERT's pooler and
    // a classifier layer on [CLS], classes from id2label.
    let classifier = config_json["architectures"].as_array().is_some_and(|a| {
        a.iter()
            .any(|x| x.as_str() == Some("BertForSequenceClassification"))
    });
    let (task, head, labels, pooling, normalize) = if classifier {
        source.insert(
            "head_from".into(),
            json!("config.json architectures: BertForSequenceClassification"),
        );
        (
            TextTask::Classification,
            Some(Head::BertPooler),
            id2label(&config_json).map_err(|m| format!("{}: {m}", config_path.display()))?,
            Pooling::Cls,
            false,
        )
    } else {
        (TextTask::Embedding, None, Vec::new(), pooling, normalize)
    };
    let spec = TextSpec {
        format_version: TEXT_FORMAT_VERSION,
        kind: TRANSFORMER_KIND.to_owned(),
        architecture,
        task,
        pooling,
        normalize,
        max_length,
        truncation: Truncation::Right,
        labels,
        head,
        pairs: false,
        source: Some(Value::Object(source)),
    };
    Ok(Imported {
        spec,
        config,
        tokenizer,
        weights,
    })
}

/// A classifier's class names in output order, from config.json's `id2label` (`{"0":
/// "negative", …}`); none when it has no such map.
fn id2label(config: &Value) -> Result<Vec<String>, String> {
    let Some(map) = config["id2label"].as_object() else {
        return Ok(Vec::new());
    };
    let mut labels: Vec<(usize, String)> = map
        .iter()
        .map(|(k, v)| {
            let i = k
                .parse::<usize>()
                .map_err(|_| format!("id2label key {k:?} is not a class index"))?;
            Ok((i, v.as_str().unwrap_or_default().to_owned()))
        })
        .collect::<Result<_, String>>()?;
    labels.sort();
    if labels.iter().enumerate().any(|(i, (k, _))| i != *k) {
        return Err("id2label's keys are not 0, 1, …".into());
    }
    Ok(labels.into_iter().map(|(_, l)| l).collect())
}

/// The pooling a sentence-transformers directory declares: the `Pooling` module's path in
/// `modules.json` (else `1_Pooling`), its `config.json`'s `pooling_mode_*` flag.
fn sentence_transformers_pooling(dir: &Path) -> Result<Option<(Pooling, String)>, String> {
    let module_dir = read_json(&dir.join("modules.json"))?
        .and_then(|modules| {
            modules.as_array().and_then(|ms| {
                ms.iter().find_map(|m| {
                    m["type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with(".Pooling"))
                        .then(|| m["path"].as_str().map(PathBuf::from))
                        .flatten()
                })
            })
        })
        .unwrap_or_else(|| PathBuf::from("1_Pooling"));
    let file = module_dir.join("config.json");
    let Some(cfg) = read_json(&dir.join(&file))? else {
        return Ok(None);
    };
    let on = |k: &str| cfg[k].as_bool().unwrap_or(false);
    let pooling = if on("pooling_mode_mean_tokens") {
        Pooling::Mean
    } else if on("pooling_mode_cls_token") {
        Pooling::Cls
    } else {
        let modes: Vec<&str> = cfg
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| k.starts_with("pooling_mode") && v.as_bool() == Some(true))
            .map(|(k, _)| k.as_str())
            .collect();
        return Err(format!(
            "{}: pooling {modes:?} is not supported (kiln pools by cls or mean); pass --pooling",
            dir.join(&file).display()
        ));
    };
    Ok(Some((pooling, file.display().to_string())))
}
