//! API keys: a key file lists each key's name, SHA-256 and scopes (never the key itself).
//! With keys configured, every route but the health checks and `/openapi.json` needs
//! `Authorization: Bearer <key>`: 401 for a missing or unknown key, 403 for a key without
//! the route's scope. Each route's [`Rule`] is declared with the route itself, in
//! `api::router`'s groups (`api::access`).

use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Inference and model metadata.
    Predict,
    /// Datasets and training jobs.
    Train,
    /// Model management (upload, delete, load, unload) and metrics.
    Admin,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Predict => "predict",
            Scope::Train => "train",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(s: &str) -> Option<Scope> {
        match s.trim() {
            "predict" => Some(Scope::Predict),
            "train" => Some(Scope::Train),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }
}

/// What a route needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    /// No key needed (health checks, the OpenAPI document).
    Open,
    Scope(Scope),
}

/// One entry of the key file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyEntry {
    pub name: String,
    /// Lowercase hex SHA-256 of the key.
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyFile {
    #[serde(default)]
    keys: Vec<KeyEntry>,
}

/// The loaded keys (hashes only).
#[derive(Debug, Clone)]
pub struct Keys {
    entries: Vec<(KeyEntry, [u8; 32])>,
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key file {path}: {message}")]
    File { path: String, message: String },
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

impl Keys {
    /// Loads a key file (TOML: `[[keys]] name, sha256, scopes`).
    pub fn load(path: &Path) -> Result<Keys, KeyError> {
        let err = |message: String| KeyError::File {
            path: path.display().to_string(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let file: KeyFile = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let mut entries = Vec::with_capacity(file.keys.len());
        for k in file.keys {
            let hash = unhex(&k.sha256)
                .ok_or_else(|| err(format!("key '{}': sha256 must be 64 hex digits", k.name)))?;
            entries.push((k, hash));
        }
        if entries.is_empty() {
            return Err(err("no keys: every request would be refused".into()));
        }
        Ok(Keys { entries })
    }

    /// The entry a presented key belongs to. Every stored hash is compared, in constant time.
    pub fn find(&self, key: &str) -> Option<&KeyEntry> {
        let presented = sha256(key.as_bytes());
        let mut found = None;
        for (entry, hash) in &self.entries {
            if bool::from(presented.ct_eq(hash)) {
                found = Some(entry);
            }
        }
        found
    }
}

/// Creates a random key, appends its entry to `file` (creating it) and returns the key.
pub fn new_key(file: &Path, name: &str, scopes: &[Scope]) -> Result<String, KeyError> {
    use rand::RngCore;
    let err = |message: String| KeyError::File {
        path: file.display().to_string(),
        message,
    };
    if name.is_empty() || name.contains(['"', '\n', '\\']) {
        return Err(err(format!("invalid key name {name:?}")));
    }
    if scopes.is_empty() {
        return Err(err("a key needs at least one scope".into()));
    }
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("kiln_{}", hex(&bytes));
    if file.exists() {
        let existing = Keys::load(file).ok();
        if existing.is_some_and(|k| k.entries.iter().any(|(e, _)| e.name == name)) {
            return Err(err(format!("a key named '{name}' already exists")));
        }
    }
    let scopes_toml = scopes
        .iter()
        .map(|s| format!("\"{}\"", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ");
    let entry = format!(
        "\n[[keys]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [{scopes_toml}]\n",
        hex(&sha256(key.as_bytes()))
    );
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(file)
        .map_err(|e| err(e.to_string()))?;
    f.write_all(entry.as_bytes())
        .map_err(|e| err(e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_keys_verify_and_only_their_hash_is_stored() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keys.toml");
        let a = new_key(&file, "ci", &[Scope::Predict, Scope::Train]).unwrap();
        let b = new_key(&file, "ops", &[Scope::Admin]).unwrap();
        assert!(new_key(&file, "ci", &[Scope::Predict]).is_err());
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(!text.contains(&a) && !text.contains(&b));
        let keys = Keys::load(&file).unwrap();
        assert_eq!(keys.find(&a).unwrap().name, "ci");
        assert_eq!(keys.find(&b).unwrap().scopes, vec![Scope::Admin]);
        assert!(keys.find("kiln_nope").is_none());
        assert!(keys.find("").is_none());
    }
}
