//! The typed in-memory [`Table`] training reads, and how a file becomes one.
//!
//! Reading runs on the calling thread and blocks (callers on tokio use the blocking pool). It
//! makes two passes over the file so that no untyped copy of the data is ever held: the first
//! pass only counts, per column, how many cells are missing, numbers, integers, booleans or
//! text, which decides each column's [`ColumnType`] (the rule is in the [module
//! docs](super)); the second pass stores every cell in its typed form and marks duplicate rows.

use std::borrow::Cow;
use std::collections::hash_map::{DefaultHasher, RandomState};
use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::hash::{BuildHasher, Hash, Hasher};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::profile::Profile;
use super::MISSING_MARKERS;
use super::{DatasetError, Delimiter, Format};

/// The code of a missing cell in a category column.
pub const MISSING_CODE: u32 = u32::MAX;

/// At most this many invalid cells are kept per column as examples for a report.
const INVALID_EXAMPLES: usize = 5;

/// Integers above this magnitude are not exact in an `f64`, so such columns are floats.
const MAX_EXACT_INTEGER: f64 = 9_007_199_254_740_992.0; // 2^53

/// The type inferred for a column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Float,
    Integer,
    /// Stored as 0.0 / 1.0.
    Boolean,
    Category,
}

impl ColumnType {
    /// Float, integer and boolean columns hold [`ColumnValues::Numeric`].
    pub fn is_numeric(self) -> bool {
        match self {
            ColumnType::Float | ColumnType::Integer | ColumnType::Boolean => true,
            ColumnType::Category => false,
        }
    }
}

/// An unparseable cell in a numeric column, kept as an example for reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct InvalidCell {
    /// 1-based data row.
    pub row: usize,
    /// The cell as written (trimmed).
    pub value: String,
}

/// A typed table: every column has one value per row.
#[derive(Debug, Clone)]
pub struct Table {
    pub n_rows: usize,
    pub columns: Vec<Column>,
    /// `duplicate[i]`: row `i` (0-based) repeats an earlier row exactly.
    duplicate: Vec<bool>,
}

/// One typed column.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub dtype: ColumnType,
    pub values: ColumnValues,
    /// Cells absent, `null` or a missing marker (`""`, `NA`, …). Not counting `invalid`.
    pub missing: usize,
    /// Cells of a numeric column that do not parse as numbers (typos). Always 0 for
    /// categories.
    pub invalid: usize,
    /// The first few invalid cells, in row order.
    pub invalid_examples: Vec<InvalidCell>,
}

/// The values of a column, one per row.
#[derive(Debug, Clone, PartialEq)]
pub enum ColumnValues {
    /// Float, integer and boolean (0/1) columns. `NaN` marks a missing or invalid cell.
    Numeric(Vec<f64>),
    /// Category columns: an index into `levels` (sorted), or [`MISSING_CODE`].
    Category {
        codes: Vec<u32>,
        levels: Vec<String>,
    },
}

// === impl Table ===

impl Table {
    pub fn column(&self, name: &str) -> Option<&Column> {
        self.columns.iter().find(|c| c.name == name)
    }

    /// One flag per row: `true` for every row that exactly repeats an earlier one (the first
    /// occurrence is `false`). Rows are equal when every cell holds the same value after
    /// typing: numbers compare by value (`5` equals `5.0`), missing equals missing whatever
    /// the marker, an invalid cell equals only the same text.
    pub fn duplicate_rows(&self) -> &[bool] {
        &self.duplicate
    }

    /// The number of rows that repeat an earlier row.
    pub fn duplicates(&self) -> usize {
        self.duplicate.iter().filter(|d| **d).count()
    }

    pub fn profile(&self) -> Profile {
        Profile::of(self)
    }

    /// A table from columns built by hand (tests, derived tables): checks that every column
    /// has the same number of values and valid codes, and marks duplicate rows. Without the
    /// source text, invalid cells count as missing ones when rows are compared.
    pub fn new(columns: Vec<Column>) -> Result<Table, DatasetError> {
        let n_rows = columns.first().map_or(0, |c| c.values.len());
        for c in &columns {
            if c.values.len() != n_rows {
                return Err(DatasetError::Invalid(format!(
                    "column '{}' has {} values, column '{}' has {n_rows}",
                    c.name,
                    c.values.len(),
                    columns[0].name
                )));
            }
            if let ColumnValues::Category { codes, levels } = &c.values {
                if let Some(row) = codes
                    .iter()
                    .position(|&k| k != MISSING_CODE && k as usize >= levels.len())
                {
                    return Err(DatasetError::Invalid(format!(
                        "column '{}', row {}: code {} but only {} levels",
                        c.name,
                        row + 1,
                        codes[row],
                        levels.len()
                    )));
                }
            }
        }
        let mut repeats = Repeats::new(n_rows);
        let duplicate = (0..n_rows)
            .map(|row| {
                let mut h = repeats.row_hasher();
                for c in &columns {
                    h.add(&c.values.key(row));
                }
                repeats.is_repeat(h)
            })
            .collect();
        Ok(Table {
            n_rows,
            columns,
            duplicate,
        })
    }
}

impl ColumnValues {
    /// The number of rows.
    pub fn len(&self) -> usize {
        match self {
            ColumnValues::Numeric(v) => v.len(),
            ColumnValues::Category { codes, .. } => codes.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// `row` (0-based) as [`Table::new`] compares it.
    fn key(&self, row: usize) -> CellKey<'static> {
        match self {
            ColumnValues::Numeric(v) if v[row].is_nan() => CellKey::Missing,
            ColumnValues::Numeric(v) => CellKey::number(v[row]),
            ColumnValues::Category { codes, .. } if codes[row] == MISSING_CODE => CellKey::Missing,
            ColumnValues::Category { codes, .. } => CellKey::Level(codes[row]),
        }
    }
}

/// Reads a CSV or JSON file into a typed table. `format` and `delimiter` are detected when
/// `None` (JSON when the first non-blank byte is `[` or `{`; the delimiter from the header).
pub fn read_table(
    path: &Path,
    format: Option<Format>,
    delimiter: Option<Delimiter>,
) -> Result<Table, DatasetError> {
    Source::open(path, format, delimiter)?.read_table()
}

// === reading ===

/// One cell as a file gives it, before typing.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cell<'a> {
    /// A JSON record without this key.
    Absent,
    Null,
    /// A CSV field or a JSON string, untrimmed.
    Text(&'a str),
    Number(&'a serde_json::Number),
    Bool(bool),
}

/// Receives the rows of a scan. `columns` may grow between rows (JSON records introduce keys);
/// `cells` has one entry per column known so far.
pub(crate) trait RowSink {
    fn row(&mut self, row: usize, columns: &[String], cells: &[Cell<'_>]);
}

/// A file whose format (and CSV delimiter) is known, ready to be scanned.
#[derive(Debug, Clone)]
pub(crate) struct Source {
    path: PathBuf,
    /// Bytes to skip: 3 after a UTF-8 byte order mark, else 0.
    start: u64,
    pub(crate) format: Format,
    /// `Some` exactly for CSV.
    pub(crate) delimiter: Option<Delimiter>,
}

impl Source {
    /// Looks at the start of the file: refuses empty and UTF-16 files, skips a UTF-8 BOM, and
    /// settles the format and delimiter that were not given.
    pub(crate) fn open(
        path: &Path,
        format: Option<Format>,
        delimiter: Option<Delimiter>,
    ) -> Result<Source, DatasetError> {
        let file = File::open(path).map_err(DatasetError::io(path))?;
        let mut reader = BufReader::new(file);
        let head = reader.fill_buf().map_err(DatasetError::io(path))?;
        if head.starts_with(&[0xFF, 0xFE]) || head.starts_with(&[0xFE, 0xFF]) {
            return Err(DatasetError::Invalid(
                "the file is UTF-16 (it starts with a UTF-16 byte order mark): send UTF-8".into(),
            ));
        }
        let start = if head.starts_with(&[0xEF, 0xBB, 0xBF]) {
            3
        } else {
            0
        };
        reader.consume(start);
        let first = loop {
            let buf = reader.fill_buf().map_err(DatasetError::io(path))?;
            if buf.is_empty() {
                break None;
            }
            if let Some(p) = buf.iter().position(|b| !b.is_ascii_whitespace()) {
                break Some(buf[p]);
            }
            let n = buf.len();
            reader.consume(n);
        };
        let Some(first) = first else {
            return Err(DatasetError::Invalid(
                "the file is empty: expected a header line and data rows".into(),
            ));
        };
        let format = format.unwrap_or(if first == b'[' || first == b'{' {
            Format::Json
        } else {
            Format::Csv
        });
        let delimiter = match (format, delimiter) {
            (Format::Csv, Some(d)) => Some(d),
            (Format::Csv, None) => Some(super::csv::detect_delimiter(path, start as u64)?),
            (Format::Json, None) => None,
            (Format::Json, Some(_)) => {
                return Err(DatasetError::Invalid(
                    "a delimiter applies to CSV files only, and this one is JSON".into(),
                ))
            }
        };
        Ok(Source {
            path: path.to_owned(),
            start: start as u64,
            format,
            delimiter,
        })
    }

    /// Calls `sink` once per data row and returns the number of rows. `columns` is filled
    /// from the header (CSV) or grows with the keys met (JSON, in order of first appearance).
    fn scan(
        &self,
        columns: &mut Vec<String>,
        sink: &mut dyn RowSink,
    ) -> Result<usize, DatasetError> {
        match (self.format, self.delimiter) {
            (Format::Csv, Some(d)) => super::csv::scan(&self.path, self.start, d, columns, sink),
            (Format::Csv, None) => unreachable!("Source::open gives every CSV source a delimiter"),
            (Format::Json, _) => super::json::scan(&self.path, self.start, columns, sink),
        }
    }

    /// Pass 1 infers the column types, pass 2 fills them.
    pub(crate) fn read_table(&self) -> Result<Table, DatasetError> {
        let mut columns = Vec::new();
        let mut inference = Inference::default();
        let rows = self.scan(&mut columns, &mut inference)?;
        if rows == 0 {
            return Err(DatasetError::Invalid(match self.format {
                Format::Csv => "the file has a header but no data rows".into(),
                Format::Json => "the file has no records: expected a non-empty array".into(),
            }));
        }
        let types: Vec<ColumnType> = inference.stats.iter().map(Stats::decide).collect();
        let mut builder = Builder::new(&types, rows);
        let mut again = columns.clone();
        let rows_again = self.scan(&mut again, &mut builder)?;
        if rows_again != rows || again != columns {
            return Err(DatasetError::Internal(format!(
                "{} changed while it was read",
                self.path.display()
            )));
        }
        Ok(builder.finish(columns, types))
    }
}

/// What a cell is, before its column's type is known.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Token {
    Missing,
    Number { value: f64, integer: bool },
    Bool(bool),
    Text,
}

fn classify(cell: Cell<'_>) -> Token {
    match cell {
        Cell::Absent | Cell::Null => Token::Missing,
        Cell::Bool(b) => Token::Bool(b),
        Cell::Number(n) => match n.as_f64() {
            Some(value) if value.is_finite() => Token::Number {
                value,
                integer: (n.is_i64() || n.is_u64()) && value.abs() <= MAX_EXACT_INTEGER,
            },
            _ => Token::Text,
        },
        Cell::Text(s) => classify_text(s.trim()),
    }
}

fn classify_text(s: &str) -> Token {
    if MISSING_MARKERS.contains(&s) {
        return Token::Missing;
    }
    if let Ok(value) = s.parse::<f64>() {
        // `parse` also accepts "inf" and "infinity": not data we can train on.
        if value.is_finite() {
            let digits = s.strip_prefix(['+', '-']).unwrap_or(s);
            let integer = !digits.is_empty()
                && digits.bytes().all(|b| b.is_ascii_digit())
                && value.abs() <= MAX_EXACT_INTEGER;
            return Token::Number { value, integer };
        }
    }
    if s.eq_ignore_ascii_case("true") {
        Token::Bool(true)
    } else if s.eq_ignore_ascii_case("false") {
        Token::Bool(false)
    } else {
        Token::Text
    }
}

/// The text of a non-missing cell, as a category level or an invalid example.
fn cell_text(cell: Cell<'_>) -> Cow<'_, str> {
    match cell {
        Cell::Text(s) => Cow::Borrowed(s.trim()),
        Cell::Number(n) => Cow::Owned(n.to_string()),
        Cell::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
        Cell::Absent | Cell::Null => Cow::Borrowed(""),
    }
}

// === pass 1: inference ===

/// What pass 1 counts in a column.
#[derive(Debug, Clone, Default)]
struct Stats {
    missing: usize,
    numbers: usize,
    /// Numbers not written as integers.
    fractional: usize,
    bools: usize,
    texts: usize,
}

impl Stats {
    /// The rule in the module docs.
    fn decide(&self) -> ColumnType {
        let present = self.numbers + self.bools + self.texts;
        if present == 0 {
            ColumnType::Float
        } else if self.bools == present {
            ColumnType::Boolean
        } else if self.numbers > 0 && (present - self.numbers) * 10 <= present {
            if self.fractional == 0 {
                ColumnType::Integer
            } else {
                ColumnType::Float
            }
        } else {
            ColumnType::Category
        }
    }
}

#[derive(Default)]
struct Inference {
    stats: Vec<Stats>,
}

impl RowSink for Inference {
    fn row(&mut self, row: usize, columns: &[String], cells: &[Cell<'_>]) {
        // A column first seen in this row was missing from every earlier one.
        self.stats.resize(
            columns.len(),
            Stats {
                missing: row - 1,
                ..Stats::default()
            },
        );
        for (stats, cell) in self.stats.iter_mut().zip(cells) {
            match classify(*cell) {
                Token::Missing => stats.missing += 1,
                Token::Number { integer, .. } => {
                    stats.numbers += 1;
                    stats.fractional += usize::from(!integer);
                }
                Token::Bool(_) => stats.bools += 1,
                Token::Text => stats.texts += 1,
            }
        }
    }
}

// === pass 2: typed values ===

enum Values {
    Numeric(Vec<f64>),
    Category {
        codes: Vec<u32>,
        /// Level → code in order of first appearance; sorted in `finish`.
        index: HashMap<String, u32>,
    },
}

struct ColumnBuilder {
    dtype: ColumnType,
    values: Values,
    missing: usize,
    invalid: usize,
    invalid_examples: Vec<InvalidCell>,
}

/// What a cell contributes to its row's identity for duplicate detection.
#[derive(Hash)]
enum CellKey<'a> {
    Missing,
    Number(u64),
    Invalid(Cow<'a, str>),
    Level(u32),
}

impl CellKey<'_> {
    fn number(v: f64) -> CellKey<'static> {
        // +0.0 and -0.0 are the same value.
        CellKey::Number(if v == 0.0 { 0 } else { v.to_bits() })
    }
}

/// Finds rows that repeat an earlier one. Two independently keyed hashers give each row a
/// 128-bit key: a false duplicate needs a collision of both (probability about
/// rows² / 2^129), and no earlier row has to be kept to compare against.
struct Repeats {
    hashers: [RandomState; 2],
    seen: HashSet<u128>,
}

struct RowHasher([DefaultHasher; 2]);

impl Repeats {
    fn new(rows: usize) -> Repeats {
        Repeats {
            hashers: [RandomState::new(), RandomState::new()],
            seen: HashSet::with_capacity(rows),
        }
    }

    fn row_hasher(&self) -> RowHasher {
        RowHasher([
            self.hashers[0].build_hasher(),
            self.hashers[1].build_hasher(),
        ])
    }

    fn is_repeat(&mut self, h: RowHasher) -> bool {
        let [a, b] = h.0;
        !self
            .seen
            .insert((u128::from(a.finish()) << 64) | u128::from(b.finish()))
    }
}

impl RowHasher {
    fn add(&mut self, key: &CellKey<'_>) {
        for h in &mut self.0 {
            key.hash(h);
        }
    }
}

struct Builder {
    columns: Vec<ColumnBuilder>,
    repeats: Repeats,
    duplicate: Vec<bool>,
}

impl Builder {
    fn new(types: &[ColumnType], rows: usize) -> Builder {
        let columns = types
            .iter()
            .map(|&dtype| ColumnBuilder {
                dtype,
                values: if dtype.is_numeric() {
                    Values::Numeric(Vec::with_capacity(rows))
                } else {
                    Values::Category {
                        codes: Vec::with_capacity(rows),
                        index: HashMap::new(),
                    }
                },
                missing: 0,
                invalid: 0,
                invalid_examples: Vec::new(),
            })
            .collect();
        Builder {
            columns,
            repeats: Repeats::new(rows),
            duplicate: Vec::with_capacity(rows),
        }
    }

    fn finish(self, names: Vec<String>, types: Vec<ColumnType>) -> Table {
        let n_rows = self.duplicate.len();
        let columns = self
            .columns
            .into_iter()
            .zip(names)
            .zip(types)
            .map(|((c, name), dtype)| Column {
                name,
                dtype,
                values: match c.values {
                    Values::Numeric(v) => ColumnValues::Numeric(v),
                    Values::Category { codes, index } => sorted_levels(codes, index),
                },
                missing: c.missing,
                invalid: c.invalid,
                invalid_examples: c.invalid_examples,
            })
            .collect();
        Table {
            n_rows,
            columns,
            duplicate: self.duplicate,
        }
    }
}

/// Renumbers codes so that levels are in sorted order.
fn sorted_levels(codes: Vec<u32>, index: HashMap<String, u32>) -> ColumnValues {
    let mut levels: Vec<(String, u32)> = index.into_iter().collect();
    levels.sort();
    let mut remap = vec![0u32; levels.len()];
    for (new, (_, old)) in levels.iter().enumerate() {
        remap[*old as usize] = new as u32;
    }
    let codes = codes
        .into_iter()
        .map(|c| {
            if c == MISSING_CODE {
                c
            } else {
                remap[c as usize]
            }
        })
        .collect();
    ColumnValues::Category {
        codes,
        levels: levels.into_iter().map(|(l, _)| l).collect(),
    }
}

impl ColumnBuilder {
    /// Stores one cell and returns what it adds to the row's identity.
    fn push<'a>(&mut self, row: usize, cell: Cell<'a>) -> CellKey<'a> {
        let token = classify(cell);
        match &mut self.values {
            Values::Numeric(values) => {
                let value = match (self.dtype, token) {
                    (_, Token::Missing) => None,
                    (ColumnType::Boolean, Token::Bool(b)) => Some(f64::from(u8::from(b))),
                    (ColumnType::Float | ColumnType::Integer, Token::Number { value, .. }) => {
                        Some(value)
                    }
                    // The inference rule leaves at most 10 % of a numeric column here.
                    _ => {
                        let text = cell_text(cell);
                        self.invalid += 1;
                        if self.invalid_examples.len() < INVALID_EXAMPLES {
                            self.invalid_examples.push(InvalidCell {
                                row,
                                value: text.clone().into_owned(),
                            });
                        }
                        values.push(f64::NAN);
                        return CellKey::Invalid(text);
                    }
                };
                match value {
                    Some(v) => {
                        values.push(v);
                        CellKey::number(v)
                    }
                    None => {
                        self.missing += 1;
                        values.push(f64::NAN);
                        CellKey::Missing
                    }
                }
            }
            Values::Category { codes, index } => {
                if token == Token::Missing {
                    self.missing += 1;
                    codes.push(MISSING_CODE);
                    return CellKey::Missing;
                }
                let text = cell_text(cell);
                let code = match index.get(text.as_ref()) {
                    Some(&code) => code,
                    None => {
                        let code = index.len() as u32;
                        index.insert(text.into_owned(), code);
                        code
                    }
                };
                codes.push(code);
                CellKey::Level(code)
            }
        }
    }
}

impl RowSink for Builder {
    fn row(&mut self, row: usize, _columns: &[String], cells: &[Cell<'_>]) {
        let mut h = self.repeats.row_hasher();
        for (column, cell) in self.columns.iter_mut().zip(cells) {
            h.add(&column.push(row, *cell));
        }
        self.duplicate.push(self.repeats.is_repeat(h));
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::io::Write;

    use super::*;

    /// `tests/data/<name>`: copies of the project's shared data sets (see its README).
    pub(crate) fn shared_dataset(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data")
            .join(name)
    }

    pub(crate) fn write_temp(bytes: &[u8]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        f
    }

    pub(crate) fn read(text: &str) -> Result<Table, DatasetError> {
        let f = write_temp(text.as_bytes());
        read_table(f.path(), None, None)
    }

    fn numeric(t: &Table, name: &str) -> Vec<f64> {
        match &t.column(name).unwrap().values {
            ColumnValues::Numeric(v) => v.clone(),
            other => panic!("{name} is not numeric: {other:?}"),
        }
    }

    fn dtypes(t: &Table) -> Vec<ColumnType> {
        t.columns.iter().map(|c| c.dtype).collect()
    }

    #[test]
    fn classifies_cells() {
        assert_eq!(classify_text("NA"), Token::Missing);
        assert_eq!(classify_text(""), Token::Missing);
        assert_eq!(
            classify_text("-12"),
            Token::Number {
                value: -12.0,
                integer: true
            }
        );
        for s in ["12.0", "1e3", ".5", "5."] {
            assert!(
                matches!(classify_text(s), Token::Number { integer: false, .. }),
                "{s}"
            );
        }
        for s in ["l.3", "3.O", "0.2.", "6,3", "inf", "infinity", "12abc"] {
            assert_eq!(classify_text(s), Token::Text, "{s}");
        }
        assert_eq!(classify_text("TRUE"), Token::Bool(true));
        assert_eq!(classify_text("False"), Token::Bool(false));
    }

    #[test]
    fn infers_column_types() {
        let t = read(
            "i,f,b,c,m,e\n\
             1,1.5,true,red,1,\n\
             -2,2,FALSE,blue,2,NA\n\
             3,,true,red,3,\n\
             NA,4e1,,green,4,null\n",
        )
        .unwrap();
        use ColumnType::*;
        assert_eq!(
            dtypes(&t),
            [Integer, Float, Boolean, Category, Integer, Float]
        );
        assert_eq!(numeric(&t, "i")[..3], [1.0, -2.0, 3.0]);
        assert!(numeric(&t, "i")[3].is_nan());
        assert_eq!(t.column("i").unwrap().missing, 1);
        assert_eq!(numeric(&t, "f")[3], 40.0);
        assert_eq!(numeric(&t, "b")[..3], [1.0, 0.0, 1.0]);
        assert_eq!(t.column("b").unwrap().missing, 1);
        assert_eq!(
            t.column("c").unwrap().values,
            ColumnValues::Category {
                codes: vec![2, 0, 2, 1],
                levels: vec!["blue".into(), "green".into(), "red".into()]
            }
        );
        assert_eq!(t.column("e").unwrap().missing, 4);
    }

    #[test]
    fn mostly_numeric_columns_count_typos_as_invalid() {
        // 9 numbers and 1 typo: 90 % parse, so numeric with one invalid cell.
        let mut text = String::from("x,y\n");
        for i in 0..9 {
            text.push_str(&format!("{i}.5,{i}\n"));
        }
        text.push_str("l.3,oops\n");
        let t = read(&text).unwrap();
        let x = t.column("x").unwrap();
        assert_eq!((x.dtype, x.missing, x.invalid), (ColumnType::Float, 0, 1));
        assert_eq!(
            x.invalid_examples,
            [InvalidCell {
                row: 10,
                value: "l.3".into()
            }]
        );
        assert!(numeric(&t, "x")[9].is_nan());
        assert_eq!(t.column("y").unwrap().dtype, ColumnType::Integer);
        assert_eq!(t.column("y").unwrap().invalid, 1);

        // 8 of 9 (89 %) is not enough: a category.
        let t = read("x\n1\n2\n3\n4\n5\n6\n7\n8\nabc\n").unwrap();
        let x = t.column("x").unwrap();
        assert_eq!((x.dtype, x.invalid), (ColumnType::Category, 0));
    }

    #[test]
    fn marks_duplicate_rows_after_the_first() {
        let t = read("a,b\n1,x\n2,y\n1.0,x\n1,x\n,y\nNA,y\n").unwrap();
        assert_eq!(t.duplicate_rows(), [false, false, true, true, false, true]);
        assert_eq!(t.duplicates(), 3);
    }

    #[test]
    fn tables_built_by_hand() {
        let col = |name: &str, values| Column {
            name: name.into(),
            dtype: ColumnType::Float,
            values,
            missing: 0,
            invalid: 0,
            invalid_examples: Vec::new(),
        };
        let t = Table::new(vec![
            col(
                "x",
                ColumnValues::Numeric(vec![1.0, f64::NAN, 1.0, f64::NAN, -0.0]),
            ),
            col(
                "c",
                ColumnValues::Category {
                    codes: vec![0, MISSING_CODE, 0, MISSING_CODE, 1],
                    levels: vec!["a".into(), "b".into()],
                },
            ),
        ])
        .unwrap();
        assert_eq!(t.n_rows, 5);
        assert_eq!(t.duplicate_rows(), [false, false, true, true, false]);

        let e = Table::new(vec![
            col("x", ColumnValues::Numeric(vec![1.0])),
            col("y", ColumnValues::Numeric(vec![])),
        ])
        .unwrap_err();
        assert_eq!(e.to_string(), "column 'y' has 0 values, column 'x' has 1");
        let e = Table::new(vec![col(
            "c",
            ColumnValues::Category {
                codes: vec![0, 2],
                levels: vec!["a".into()],
            },
        )])
        .unwrap_err();
        assert_eq!(e.to_string(), "column 'c', row 2: code 2 but only 1 levels");
    }

    /// The README's row and column counts, and "every other column is a numeric feature".
    #[test]
    fn every_shared_dataset_reads_as_numbers() {
        for (file, rows, cols) in [
            ("wine_train.csv", 142, 14),
            ("breast_cancer_train.csv", 455, 31),
            ("diabetes_train.csv", 353, 11),
            ("digits_train.csv", 1437, 65),
        ] {
            let t = read_table(&shared_dataset(file), None, None).unwrap();
            assert_eq!((t.n_rows, t.columns.len()), (rows, cols), "{file}");
            for c in &t.columns {
                assert!(c.dtype.is_numeric(), "{file}: {} is {:?}", c.name, c.dtype);
                assert_eq!((c.missing, c.invalid), (0, 0), "{file}: {}", c.name);
            }
        }
    }

    #[test]
    fn iris_train_has_one_duplicate() {
        let t = read_table(&shared_dataset("iris_train.csv"), None, None).unwrap();
        assert_eq!((t.n_rows, t.columns.len(), t.duplicates()), (120, 5, 1));
        use ColumnType::*;
        assert_eq!(dtypes(&t), [Float, Float, Float, Float, Integer]);
    }

    /// Every number here is from `iris_dirty.csv`'s notes (`tests/data/README.md`).
    #[test]
    fn iris_dirty_counts_match_its_readme() {
        let path = shared_dataset("iris_dirty.csv");
        let t = read_table(&path, None, None).unwrap();
        assert_eq!(t.n_rows, 123);
        use ColumnType::*;
        assert_eq!(dtypes(&t), [Float, Float, Float, Float, Integer]);

        /// (column, empty rows, NA rows, typo rows with their text)
        type Expected<'a> = (&'a str, &'a [usize], &'a [usize], &'a [(usize, &'a str)]);
        let expected: [Expected; 4] = [
            ("sepal_length_cm", &[44], &[105], &[(27, "6,3")]),
            ("sepal_width_cm", &[4], &[58], &[(80, "3.O")]),
            ("petal_length_cm", &[19], &[], &[(63, "l.3")]),
            ("petal_width_cm", &[91], &[11], &[(114, "0.2.")]),
        ];
        let raw = std::fs::read_to_string(&path).unwrap();
        let raw: Vec<Vec<&str>> = raw
            .lines()
            .skip(1)
            .map(|l| l.split(',').collect())
            .collect();
        let (mut empty, mut na, mut invalid) = (0, 0, 0);
        for (name, empties, nas, typos) in expected {
            let c = t.column(name).unwrap();
            let i = t.columns.iter().position(|c| c.name == name).unwrap();
            assert_eq!(c.missing, empties.len() + nas.len(), "{name}");
            assert_eq!(c.invalid, typos.len(), "{name}");
            let examples: Vec<(usize, &str)> = c
                .invalid_examples
                .iter()
                .map(|e| (e.row, e.value.as_str()))
                .collect();
            assert_eq!(examples, typos, "{name}");
            let v = numeric(&t, name);
            let nan_rows: Vec<usize> = (0..v.len())
                .filter(|&r| v[r].is_nan())
                .map(|r| r + 1)
                .collect();
            let mut want: Vec<usize> = empties.iter().chain(nas).copied().collect();
            want.extend(typos.iter().map(|(r, _)| *r));
            want.sort();
            assert_eq!(nan_rows, want, "{name}");
            // The markers really are what the README says (the quoted "6,3" row splits in
            // two here, but it is not one of these rows).
            for &r in empties {
                assert_eq!(raw[r - 1][i], "", "{name} row {r}");
            }
            for &r in nas {
                assert_eq!(raw[r - 1][i], "NA", "{name} row {r}");
            }
            empty += empties.len();
            na += nas.len();
            invalid += c.invalid;
        }
        assert_eq!((empty, na, invalid), (4, 3, 4));
        assert_eq!(t.columns.iter().map(|c| c.missing).sum::<usize>(), 7);
        assert_eq!(t.column("label").unwrap().missing, 0);
        // The outlier is kept as a value (row 35).
        assert_eq!(numeric(&t, "sepal_length_cm")[34], 57.0);
        // 3 injected copies (rows 7, 51, 94) + 1 natural pair (rows 48 and 62).
        let dups: Vec<usize> = (0..t.n_rows)
            .filter(|&r| t.duplicate_rows()[r])
            .map(|r| r + 1)
            .collect();
        assert_eq!(dups, [7, 51, 62, 94]);
    }
}
