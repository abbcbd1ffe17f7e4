//! Datasets: uploaded CSV or JSON files, checked, typed and profiled, stored under
//! `<data_dir>/datasets/<id>/`, and read back as a typed [`Table`] for training.
//!
//! # Nouns
//! - A *dataset* is one uploaded file plus its `meta.json` ([`DatasetInfo`]), immutable once
//!   stored; its *id* is `ds_` followed by 16 random lowercase hex digits.
//! - A *row* is a data row, numbered from 1 (the CSV header is not counted; its line number in
//!   the file is reported beside it, because quoted fields may span lines).
//! - A cell is *missing* when it is absent, JSON `null` or one of
//!   [`MISSING_MARKERS`] (after trimming), and *invalid* when it
//!   sits in a numeric column but does not parse as a number (a typo such as `l.3` or `6,3`).
//!   Both read as `NaN` in the table and are counted apart in the [`Profile`].
//!
//! # Type inference
//! Each column gets one [`ColumnType`], decided from all its non-missing cells:
//! - *boolean* when every one is `true`/`false` (any case) or a JSON boolean;
//! - numeric when at least one parses as a finite number and at least 90 % of them do
//!   (`invalid * 10 <= non_missing`): *integer* when every parsed cell is written as an integer
//!   (`-12`, not `12.0` or `1e3`) of magnitude at most 2^53, *float* otherwise;
//! - *float* when the column has no non-missing cell at all;
//! - *category* otherwise; its levels are the trimmed texts, sorted.
//!
//! JSON strings are read exactly as CSV cells are (`"5.1"` is a number); JSON numbers are
//! integers when written without a fraction or exponent.
//!
//! # Threads
//! Everything that touches the file system or parses is blocking and runs on tokio's blocking
//! pool: an upload's chunks go over a bounded channel to a blocking task ([`AsyncUpload`]) that
//! writes them, then parses and profiles the file; other calls go through
//! [`DatasetStore::run_blocking`]. Nothing here holds a lock: a dataset is written under a
//! temporary name and becomes visible only once its `meta.json` is in place.

mod csv;
mod json;
mod profile;
pub mod remote;
mod store;
mod table;
mod upload;

use std::path::{Path, PathBuf};

/// Cells that count as missing in numeric columns, in datasets and (through
/// `preprocess`) in requests.
pub const MISSING_MARKERS: &[&str] = &["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"];

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use profile::{Categories, ColumnProfile, ColumnSummary, Profile};
pub use store::{DatasetInfo, DatasetStore, DEFAULT_MAX_UPLOAD_BYTES};
pub use table::{read_table, Column, ColumnType, ColumnValues, InvalidCell, Table, MISSING_CODE};
pub use upload::{AsyncUpload, Upload, UploadOptions};

/// Why a dataset operation failed. These errors know nothing of HTTP; the status each one
/// should map to is given with it.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
    /// The file is not a dataset we can read (empty, ragged, not UTF-8, bad header, bad JSON…)
    /// or an option is wrong. The message names the row and column where one applies.
    /// HTTP: 400.
    #[error("{0}")]
    Invalid(String),
    /// A dataset id that can never exist (not `ds_` + 16 lowercase hex digits); refused before
    /// the file system is touched. HTTP: 400 (or 404, if ids are to be opaque).
    #[error("invalid dataset id {0:?}: expected ds_ followed by 16 lowercase hex digits")]
    InvalidId(String),
    /// The upload passed the byte limit; nothing of it is kept. HTTP: 413.
    #[error("the upload is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    /// No dataset with that id. HTTP: 404.
    #[error("dataset {0} not found")]
    NotFound(String),
    /// Reading or writing the store failed. HTTP: 500.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A stored `meta.json` cannot be read back. HTTP: 500.
    #[error("{}: corrupt dataset metadata: {message}", path.display())]
    Corrupt { path: PathBuf, message: String },
    /// An upload was used after it failed or finished, or its task died. HTTP: 500.
    #[error("{0}")]
    Internal(String),
    /// The shared storage (object store, catalog database) failed or cannot be reached,
    /// after bounded retries; nothing half-done is left visible. HTTP: 503 with Retry-After.
    #[error("{0}")]
    Unavailable(String),
}

impl DatasetError {
    /// Wraps an I/O error with the path it concerns: `.map_err(DatasetError::io(&path))`.
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> DatasetError + '_ {
        move |source| DatasetError::Io {
            path: path.to_owned(),
            source,
        }
    }
}

/// The format of an uploaded file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Delimited text with a header line (RFC 4180 quoting).
    Csv,
    /// A JSON array of objects, one per row.
    Json,
}

impl Format {
    /// The format a `Content-Type` value names, parameters ignored: `text/csv`,
    /// `application/csv`, `text/x-csv`, `text/tab-separated-values` → CSV; `application/json`
    /// and `*/*+json` → JSON. Anything else (`application/octet-stream`, `text/plain`, none)
    /// → `None`: the upload then detects the format from its first byte.
    pub fn from_media_type(content_type: &str) -> Option<Format> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        match essence.as_str() {
            "text/csv" | "application/csv" | "text/x-csv" | "text/tab-separated-values" => {
                Some(Format::Csv)
            }
            "application/json" => Some(Format::Json),
            e if e.ends_with("+json") => Some(Format::Json),
            _ => None,
        }
    }

    /// Parses `csv` or `json` (any case), as a query parameter would give it.
    pub fn parse(s: &str) -> Result<Format, DatasetError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "csv" | "tsv" => Ok(Format::Csv),
            "json" => Ok(Format::Json),
            _ => Err(DatasetError::Invalid(format!(
                "unknown dataset format {s:?}: expected csv or json"
            ))),
        }
    }

    /// The name the stored file gets in the dataset's directory.
    pub fn file_name(self) -> &'static str {
        match self {
            Format::Csv => "data.csv",
            Format::Json => "data.json",
        }
    }
}

/// The field delimiter of a CSV file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Delimiter {
    Comma,
    Semicolon,
    Tab,
}

impl Delimiter {
    /// Parses `comma`/`,`, `semicolon`/`;` or `tab`/`\t` (the character or the two-character
    /// escape).
    pub fn parse(s: &str) -> Result<Delimiter, DatasetError> {
        match s {
            "\t" | "\\t" => return Ok(Delimiter::Tab),
            _ => {}
        }
        match s.trim().to_ascii_lowercase().as_str() {
            "comma" | "," => Ok(Delimiter::Comma),
            "semicolon" | ";" => Ok(Delimiter::Semicolon),
            "tab" => Ok(Delimiter::Tab),
            _ => Err(DatasetError::Invalid(format!(
                "unknown delimiter {s:?}: expected comma, semicolon or tab"
            ))),
        }
    }

    pub fn byte(self) -> u8 {
        match self {
            Delimiter::Comma => b',',
            Delimiter::Semicolon => b';',
            Delimiter::Tab => b'\t',
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_types_name_formats() {
        assert_eq!(
            Format::from_media_type("text/csv; charset=utf-8"),
            Some(Format::Csv)
        );
        assert_eq!(
            Format::from_media_type("Application/JSON"),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_media_type("application/vnd.api+json"),
            Some(Format::Json)
        );
        assert_eq!(
            Format::from_media_type("text/tab-separated-values"),
            Some(Format::Csv)
        );
        assert_eq!(Format::from_media_type("application/octet-stream"), None);
        assert_eq!(Format::parse("JSON").unwrap(), Format::Json);
        assert!(Format::parse("xlsx")
            .unwrap_err()
            .to_string()
            .contains("xlsx"));
    }

    #[test]
    fn delimiters_parse() {
        assert_eq!(Delimiter::parse(",").unwrap(), Delimiter::Comma);
        assert_eq!(Delimiter::parse("Semicolon").unwrap(), Delimiter::Semicolon);
        assert_eq!(Delimiter::parse("\t").unwrap(), Delimiter::Tab);
        assert_eq!(Delimiter::parse("\\t").unwrap(), Delimiter::Tab);
        assert!(matches!(
            Delimiter::parse("|"),
            Err(DatasetError::Invalid(_))
        ));
    }
}
