//! JSON input: an array of records (objects), keys naming columns, scanned one record at a
//! time on the calling (blocking) thread; the array itself is never held in memory.
//!
//! Columns are the union of all keys, in order of first appearance; a record without a key
//! has a missing cell there. Values are numbers, strings, booleans or `null`.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::io::{BufReader, Seek, SeekFrom};
use std::path::Path;

use serde::de::{DeserializeSeed, Error as _, MapAccess, SeqAccess, Visitor};
use serde::Deserializer as _;
use serde_json::Value;

use super::table::{Cell, RowSink};
use super::DatasetError;

/// Fills `columns` (it may come in with the columns of an earlier scan of the same file) and
/// calls `sink` for each record; returns the number of records.
pub(super) fn scan(
    path: &Path,
    start: u64,
    columns: &mut Vec<String>,
    sink: &mut dyn RowSink,
) -> Result<usize, DatasetError> {
    let mut file = File::open(path).map_err(DatasetError::io(path))?;
    file.seek(SeekFrom::Start(start))
        .map_err(DatasetError::io(path))?;
    let mut de = serde_json::Deserializer::from_reader(BufReader::with_capacity(64 * 1024, file));
    let mut scan = Scan {
        index: columns
            .iter()
            .enumerate()
            .map(|(i, c)| (c.clone(), i))
            .collect(),
        columns,
        sink,
        rows: 0,
        failure: None,
    };
    let result = (&mut de).deserialize_seq(Records(&mut scan));
    // A record the sink refused stops the parser with a placeholder error; ours is the real one.
    if let Some(failure) = scan.failure.take() {
        return Err(failure);
    }
    let json_error = |e: serde_json::Error| {
        if e.is_io() {
            DatasetError::Io {
                path: path.to_owned(),
                source: e.into(),
            }
        } else {
            DatasetError::Invalid(format!("invalid JSON: {e}"))
        }
    };
    result.map_err(json_error)?;
    de.end().map_err(json_error)?;
    Ok(scan.rows)
}

struct Scan<'a> {
    columns: &'a mut Vec<String>,
    index: HashMap<String, usize>,
    sink: &'a mut dyn RowSink,
    rows: usize,
    failure: Option<DatasetError>,
}

impl Scan<'_> {
    fn record(&mut self, row: usize, record: &[(String, Value)]) -> Result<(), DatasetError> {
        let mut cells = vec![Cell::Absent; self.columns.len()];
        for (key, value) in record {
            if key.trim().is_empty() {
                return Err(DatasetError::Invalid(format!(
                    "row {row}: a key is empty; every key names a column"
                )));
            }
            let i = match self.index.get(key) {
                Some(&i) => i,
                None => {
                    self.columns.push(key.clone());
                    self.index.insert(key.clone(), self.columns.len() - 1);
                    cells.push(Cell::Absent);
                    self.columns.len() - 1
                }
            };
            if !matches!(cells[i], Cell::Absent) {
                return Err(DatasetError::Invalid(format!(
                    "row {row}: key '{key}' appears twice"
                )));
            }
            cells[i] = match value {
                Value::Null => Cell::Null,
                Value::Bool(b) => Cell::Bool(*b),
                Value::Number(n) => Cell::Number(n),
                Value::String(s) => Cell::Text(s),
                Value::Array(_) | Value::Object(_) => {
                    return Err(DatasetError::Invalid(format!(
                        "row {row}, column '{key}': nested arrays and objects are not supported; a value is a number, string, boolean or null"
                    )))
                }
            };
        }
        self.sink.row(row, self.columns, &cells);
        Ok(())
    }
}

/// The top-level array.
struct Records<'s, 'a>(&'s mut Scan<'a>);

impl<'de> Visitor<'de> for Records<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array of records (one object per row)")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        loop {
            let row = self.0.rows + 1;
            let Some(record) = seq.next_element_seed(Record { row })? else {
                return Ok(());
            };
            self.0.rows = row;
            if let Err(e) = self.0.record(row, &record) {
                self.0.failure = Some(e);
                return Err(A::Error::custom("stopped at a refused record"));
            }
        }
    }
}

/// One record, its keys in document order (a `serde_json::Map` would sort them).
struct Record {
    row: usize,
}

impl<'de> DeserializeSeed<'de> for Record {
    type Value = Vec<(String, Value)>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Record {
    type Value = Vec<(String, Value)>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "row {} to be an object (one record)", self.row)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(entry) = map.next_entry::<String, Value>()? {
            out.push(entry);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::{read, write_temp};
    use super::super::table::{read_table, ColumnType, ColumnValues};
    use super::super::Format;

    fn err(text: &str) -> String {
        let f = write_temp(text.as_bytes());
        read_table(f.path(), Some(Format::Json), None)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn reads_records() {
        let t = read(
            r#"[
              {"x": 1.5, "n": 3, "b": true, "s": "red", "t": "2.5"},
              {"x": 2, "n": -1, "b": false, "s": "blue", "t": "NA"},
              {"n": 7, "x": null, "b": null, "s": null, "t": "3", "late": "z"}
            ]"#,
        )
        .unwrap();
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["x", "n", "b", "s", "t", "late"]);
        use ColumnType::*;
        let types: Vec<ColumnType> = t.columns.iter().map(|c| c.dtype).collect();
        assert_eq!(types, [Float, Integer, Boolean, Category, Float, Category]);
        let x = t.column("x").unwrap();
        assert_eq!(x.missing, 1);
        match &x.values {
            ColumnValues::Numeric(v) => {
                assert_eq!(v[..2], [1.5, 2.0]);
                assert!(v[2].is_nan());
            }
            other => panic!("{other:?}"),
        }
        match &t.column("b").unwrap().values {
            ColumnValues::Numeric(v) => assert_eq!((v[0], v[1], v[2].is_nan()), (1.0, 0.0, true)),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.column("t").unwrap().missing, 1);
        // Absent from the first two records: missing there.
        assert_eq!(t.column("late").unwrap().missing, 2);
        assert_eq!(t.n_rows, 3);
    }

    #[test]
    fn bad_records_name_row_and_column() {
        assert_eq!(
            err(r#"[{"a": 1}, {"a": [1, 2]}]"#),
            "row 2, column 'a': nested arrays and objects are not supported; a value is a number, string, boolean or null"
        );
        assert_eq!(
            err(r#"[{"a": 1}, {"a": 2, "a": 3}]"#),
            "row 2: key 'a' appears twice"
        );
        assert_eq!(
            err(r#"[{"a": 1, "": 2}]"#),
            "row 1: a key is empty; every key names a column"
        );
        assert_eq!(
            err(r#"[{"a": 1}, 5]"#),
            "invalid JSON: invalid type: integer `5`, expected row 2 to be an object (one record) at line 1 column 13"
        );
        assert_eq!(
            err(r#"{"a": 1}"#),
            "invalid JSON: invalid type: map, expected a JSON array of records (one object per row) at line 1 column 1"
        );
        assert_eq!(
            err("[]"),
            "the file has no records: expected a non-empty array"
        );
        assert!(err(r#"[{"a": 1}] x"#).starts_with("invalid JSON: trailing characters"));
        assert!(err(r#"[{"a": 1},"#).starts_with("invalid JSON: EOF while parsing"));
        assert_eq!(
            err("  \n"),
            "the file is empty: expected a header line and data rows"
        );
    }

    #[test]
    fn detects_json_and_skips_a_bom() {
        let f = write_temp(b"\xEF\xBB\xBF [{\"a\": 1}]");
        let t = read_table(f.path(), None, None).unwrap();
        assert_eq!(t.columns[0].dtype, ColumnType::Integer);
    }
}
