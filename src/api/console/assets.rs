//! The console's static files, embedded in the binary at build time: its own scripts and
//! stylesheet (`assets/console/`) and the vendored uPlot (`assets/vendor/uplot/`, fetched
//! and checked by `assets/vendor/fetch.sh`). Each has a content hash, computed once: the
//! pages name assets with it (`?v=`) and it is the ETag.

use std::sync::LazyLock;

use sha2::{Digest, Sha256};

pub(super) struct Asset {
    pub name: &'static str,
    pub content_type: &'static str,
    pub bytes: &'static [u8],
    /// The first 16 hex digits of the content's SHA-256.
    pub hash: String,
}

const JS: &str = "text/javascript; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

macro_rules! embedded {
    ($($name:literal => $path:literal, $type:expr;)+) => {
        [$(($name, $type, include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/", $path)) as &'static [u8])),+]
    };
}

static ASSETS: LazyLock<Vec<Asset>> = LazyLock::new(|| {
    embedded! {
        "console.js" => "console/console.js", JS;
        "charts.js" => "console/charts.js", JS;
        "console.css" => "console/console.css", CSS;
        "uPlot.iife.min.js" => "vendor/uplot/uPlot.iife.min.js", JS;
        "uPlot.min.css" => "vendor/uplot/uPlot.min.css", CSS;
        "uPlot.LICENSE.txt" => "vendor/uplot/LICENSE", TEXT;
    }
    .into_iter()
    .map(|(name, content_type, bytes)| {
        let digest = Sha256::digest(bytes);
        let hash = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        Asset {
            name,
            content_type,
            bytes,
            hash,
        }
    })
    .collect()
});

pub(super) fn find(name: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name)
}

/// The URL a page names an asset by: with its content hash, so it can be cached for good.
pub(super) fn url(name: &str) -> String {
    let asset = find(name).expect("pages name only embedded assets");
    format!("/console/assets/{}?v={}", asset.name, asset.hash)
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_asset_is_embedded_and_named_by_its_hash() {
        for name in [
            "console.js",
            "charts.js",
            "console.css",
            "uPlot.iife.min.js",
            "uPlot.min.css",
        ] {
            let a = super::find(name).unwrap();
            assert!(!a.bytes.is_empty(), "{name}");
            assert_eq!(a.hash.len(), 16);
            assert!(super::url(name).ends_with(&a.hash));
        }
        assert!(super::find("../Cargo.toml").is_none());
    }
}
