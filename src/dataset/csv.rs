//! CSV input: delimiter detection, the header checks, and a scan that hands each data row to
//! a [`RowSink`]. Runs on the calling (blocking) thread and streams the file through the `csv`
//! crate's buffer; one record is held at a time.
//!
//! Fields are RFC 4180: quoted with `"`, a quote inside a quoted field doubled, delimiters and
//! line breaks allowed inside quotes. Blank lines are skipped. Cells are trimmed when typed,
//! not here.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

use csv::{ByteRecord, ReaderBuilder};

use super::table::{Cell, RowSink};
use super::{DatasetError, Delimiter};

/// The longest first line delimiter detection reads; a header is far shorter.
const MAX_HEADER_BYTES: u64 = 1 << 20;

/// Detects the delimiter from the first non-blank line: the most frequent of `,` `;` and tab
/// outside quotes, ties going in that order; comma when there is none (one column).
pub(super) fn detect_delimiter(path: &Path, start: u64) -> Result<Delimiter, DatasetError> {
    let mut file = File::open(path).map_err(DatasetError::io(path))?;
    file.seek(SeekFrom::Start(start))
        .map_err(DatasetError::io(path))?;
    let mut reader = BufReader::new(file).take(MAX_HEADER_BYTES);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(DatasetError::io(path))?;
        if n == 0 || line.iter().any(|b| !b.is_ascii_whitespace()) {
            break;
        }
    }
    Ok(delimiter_of_line(&line))
}

fn delimiter_of_line(line: &[u8]) -> Delimiter {
    let mut counts = [0usize; 3];
    let mut quoted = false;
    for &b in line {
        match b {
            b'"' => quoted = !quoted,
            b',' if !quoted => counts[0] += 1,
            b';' if !quoted => counts[1] += 1,
            b'\t' if !quoted => counts[2] += 1,
            _ => {}
        }
    }
    let candidates = [Delimiter::Comma, Delimiter::Semicolon, Delimiter::Tab];
    let mut best = 0;
    for i in 1..3 {
        if counts[i] > counts[best] {
            best = i;
        }
    }
    candidates[best]
}

/// Reads the header into `columns`, then calls `sink` for each data row; returns the number
/// of data rows.
pub(super) fn scan(
    path: &Path,
    start: u64,
    delimiter: Delimiter,
    columns: &mut Vec<String>,
    sink: &mut dyn RowSink,
) -> Result<usize, DatasetError> {
    let mut file = File::open(path).map_err(DatasetError::io(path))?;
    file.seek(SeekFrom::Start(start))
        .map_err(DatasetError::io(path))?;
    let mut reader = ReaderBuilder::new()
        .has_headers(false)
        // Ragged rows are reported by us, with the row and line.
        .flexible(true)
        .delimiter(delimiter.byte())
        .buffer_capacity(64 * 1024)
        .from_reader(file);
    let mut record = ByteRecord::new();
    let read = |reader: &mut csv::Reader<File>, record: &mut ByteRecord| {
        reader.read_byte_record(record).map_err(|e| {
            let message = format!("unreadable CSV: {e}");
            if let csv::ErrorKind::Io(source) = e.into_kind() {
                DatasetError::Io {
                    path: path.to_owned(),
                    source,
                }
            } else {
                DatasetError::Invalid(message)
            }
        })
    };
    if !read(&mut reader, &mut record)? {
        return Err(DatasetError::Invalid(
            "the file is empty: expected a header line and data rows".into(),
        ));
    }
    *columns = header(&record)?;
    let mut rows = 0;
    while read(&mut reader, &mut record)? {
        rows += 1;
        let line = line_of(&record);
        if record.len() != columns.len() {
            return Err(DatasetError::Invalid(format!(
                "row {rows} (line {line}): {} {}, the header has {}",
                record.len(),
                if record.len() == 1 { "field" } else { "fields" },
                columns.len()
            )));
        }
        let mut cells = Vec::with_capacity(columns.len());
        for (i, field) in record.iter().enumerate() {
            let text = std::str::from_utf8(field).map_err(|e| {
                DatasetError::Invalid(format!(
                    "row {rows} (line {line}), column {} ('{}'): invalid UTF-8 {}; the file must be UTF-8",
                    i + 1,
                    columns[i],
                    utf8_detail(field, &e)
                ))
            })?;
            cells.push(Cell::Text(text));
        }
        sink.row(rows, columns, &cells);
    }
    Ok(rows)
}

/// The line a record starts on (1-based).
fn line_of(record: &ByteRecord) -> u64 {
    record.position().map_or(0, |p| p.line())
}

fn utf8_detail(field: &[u8], e: &std::str::Utf8Error) -> String {
    let at = e.valid_up_to();
    format!("(byte 0x{:02X} at byte {} of the field)", field[at], at + 1)
}

/// Checks the header and returns the trimmed column names.
fn header(record: &ByteRecord) -> Result<Vec<String>, DatasetError> {
    let line = line_of(record);
    let mut names = Vec::with_capacity(record.len());
    for (i, field) in record.iter().enumerate() {
        let name = std::str::from_utf8(field).map_err(|e| {
            DatasetError::Invalid(format!(
                "the header (line {line}), column {}: invalid UTF-8 {}; the file must be UTF-8",
                i + 1,
                utf8_detail(field, &e)
            ))
        })?;
        names.push(name.trim().to_owned());
    }
    if names.iter().all(|n| n.is_empty()) {
        return Err(DatasetError::Invalid(format!(
            "the header (line {line}) is blank: the first line must name the columns"
        )));
    }
    if let Some(i) = names.iter().position(|n| n.is_empty()) {
        return Err(DatasetError::Invalid(format!(
            "the header (line {line}): column {} has an empty name",
            i + 1
        )));
    }
    for (j, name) in names.iter().enumerate() {
        if let Some(i) = names[..j].iter().position(|n| n == name) {
            return Err(DatasetError::Invalid(format!(
                "the header (line {line}): column name '{name}' appears twice, as columns {} and {}",
                i + 1,
                j + 1
            )));
        }
    }
    // Integer names (`0,1,2`, as pandas writes unnamed columns) are names; a line of numbers
    // with a fraction among them is a data row, so the header is missing.
    let numbers = names.iter().filter(|n| n.parse::<f64>().is_ok()).count();
    let fractional = names
        .iter()
        .any(|n| n.parse::<f64>().is_ok() && !n.bytes().all(|b| b.is_ascii_digit() || b == b'-'));
    if numbers == names.len() && fractional {
        let shown: Vec<&str> = names.iter().take(4).map(String::as_str).collect();
        return Err(DatasetError::Invalid(format!(
            "the header (line {line}) looks like a data row (every field is a number: {}{}): the first line must name the columns",
            shown.join(", "),
            if names.len() > 4 { ", …" } else { "" }
        )));
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::super::table::tests::{read, write_temp};
    use super::super::table::{read_table, ColumnType, ColumnValues, Source};
    use super::*;

    fn err(text: &[u8]) -> String {
        let f = write_temp(text);
        read_table(f.path(), None, None).unwrap_err().to_string()
    }

    fn levels(t: &super::super::Table, name: &str) -> Vec<String> {
        match &t.column(name).unwrap().values {
            ColumnValues::Category { codes, levels } => {
                codes.iter().map(|&c| levels[c as usize].clone()).collect()
            }
            other => panic!("not a category: {other:?}"),
        }
    }

    #[test]
    fn detects_the_delimiter_from_the_header() {
        assert_eq!(delimiter_of_line(b"a,b,c\n"), Delimiter::Comma);
        assert_eq!(delimiter_of_line(b"a;b;c\n"), Delimiter::Semicolon);
        assert_eq!(delimiter_of_line(b"a\tb\tc\n"), Delimiter::Tab);
        // Delimiters inside quotes do not count.
        assert_eq!(delimiter_of_line(b"\"a,b,c\";d;e\n"), Delimiter::Semicolon);
        assert_eq!(delimiter_of_line(b"single\n"), Delimiter::Comma);

        for (text, d) in [
            ("a;b\n1,5;2\n", Delimiter::Semicolon),
            ("a\tb\n1\t2\n", Delimiter::Tab),
            ("\n\nx,y\n1,2\n", Delimiter::Comma),
        ] {
            let f = write_temp(text.as_bytes());
            let s = Source::open(f.path(), None, None).unwrap();
            assert_eq!(s.delimiter, Some(d), "{text:?}");
        }
        let t = read("a;b\n1,5;2\n").unwrap();
        // "1,5" with a semicolon delimiter is one (non-numeric) cell.
        assert_eq!(t.column("a").unwrap().dtype, ColumnType::Category);
        let t = read("a\tb\n1.5\t2\n").unwrap();
        assert_eq!(t.columns.len(), 2);
        assert_eq!(t.column("b").unwrap().dtype, ColumnType::Integer);
    }

    #[test]
    fn an_explicit_delimiter_wins() {
        let f = write_temp(b"a,b;c\n1,2;3\n");
        let t = read_table(f.path(), None, Some(Delimiter::Semicolon)).unwrap();
        let names: Vec<&str> = t.columns.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a,b", "c"]);
    }

    #[test]
    fn quoted_fields_keep_delimiters_quotes_and_newlines() {
        let t = read(
            "name,\"note, long\",n\n\
             \"Smith, J\",\"said \"\"hi\"\"\",1\n\
             plain,\"two\nlines\",2\n\
             \"x\",\"\",3\n",
        )
        .unwrap();
        assert_eq!(t.columns[1].name, "note, long");
        assert_eq!(levels(&t, "name"), ["Smith, J", "plain", "x"]);
        let note = t.column("note, long").unwrap();
        assert_eq!(note.missing, 1);
        match &note.values {
            ColumnValues::Category { levels, .. } => {
                assert_eq!(levels, &["said \"hi\"", "two\nlines"])
            }
            other => panic!("{other:?}"),
        }
        // The multi-line row counts as one row; the next starts on line 5.
        let e = err(b"a,b\n1,\"x\ny\"\n2\n");
        assert_eq!(e, "row 2 (line 4): 1 field, the header has 2");
    }

    #[test]
    fn a_utf8_bom_is_skipped() {
        let t = {
            let f = write_temp(b"\xEF\xBB\xBFa,b\n1,x\n");
            read_table(f.path(), None, None).unwrap()
        };
        assert_eq!(t.columns[0].name, "a");
        assert_eq!(t.columns[0].dtype, ColumnType::Integer);
        assert_eq!(
            err(b"\xFF\xFEa\x00"),
            "the file is UTF-16 (it starts with a UTF-16 byte order mark): send UTF-8"
        );
    }

    #[test]
    fn crlf_and_blank_lines() {
        let t = read("a,b\r\n1,2\r\n\r\n3,4\r\n").unwrap();
        assert_eq!(t.n_rows, 2);
        assert_eq!(t.column("b").unwrap().dtype, ColumnType::Integer);
    }

    #[test]
    fn bad_input_names_row_and_column() {
        assert_eq!(
            err(b"a,b,c,d,e\n1,2,3,4,5\n1,2,3,4\n"),
            "row 2 (line 3): 4 fields, the header has 5"
        );
        assert_eq!(
            err(b"a,b\n1,2\n1,2,3\n"),
            "row 2 (line 3): 3 fields, the header has 2"
        );
        assert_eq!(
            err(b"a,b\n1,2\n3,caf\xE9\n"),
            "row 2 (line 3), column 2 ('b'): invalid UTF-8 (byte 0xE9 at byte 4 of the field); the file must be UTF-8"
        );
        assert_eq!(
            err(b"a,\xFFb\n1,2\n"),
            "the header (line 1), column 2: invalid UTF-8 (byte 0xFF at byte 1 of the field); the file must be UTF-8"
        );
        for empty in [&b""[..], b"\xEF\xBB\xBF", b"\n\n  \r\n"] {
            assert_eq!(
                err(empty),
                "the file is empty: expected a header line and data rows"
            );
        }
        assert_eq!(
            err(b" , ,\n1,2,3\n"),
            "the header (line 1) is blank: the first line must name the columns"
        );
        assert_eq!(
            err(b"a,,c\n1,2,3\n"),
            "the header (line 1): column 2 has an empty name"
        );
        assert_eq!(
            err(b"a,b,c,b\n1,2,3,4\n"),
            "the header (line 1): column name 'b' appears twice, as columns 2 and 4"
        );
        assert_eq!(
            err(b"5.1,3.5,1.4,0.2,0\n4.9,3.0,1.4,0.2,0\n"),
            "the header (line 1) looks like a data row (every field is a number: 5.1, 3.5, 1.4, 0.2, …): the first line must name the columns"
        );
        assert_eq!(err(b"a,b\n"), "the file has a header but no data rows");
        // Integer names are fine (pandas writes unnamed columns so).
        let t = read("0,1\n0.5,2\n").unwrap();
        assert_eq!(t.columns[1].name, "1");
    }
}
