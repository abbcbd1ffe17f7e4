//! The profile of a dataset: rows, duplicates and per-column counts and statistics. Computed
//! once from the [`Table`] at upload (on the blocking thread that parsed it) and stored in
//! `meta.json`; its JSON form is the one the API returns:
//!
//! ```json
//! {"rows": 150, "duplicates": 0, "columns": [
//!   {"name": "sepal_length", "dtype": "float", "missing": 0, "invalid": 0,
//!    "min": 4.3, "max": 7.9, "mean": 5.84, "std": 0.83},
//!   {"name": "species", "dtype": "category", "missing": 0,
//!    "categories": {"setosa": 50, "versicolor": 50, "virginica": 50}}]}
//! ```
//!
//! Float, integer and boolean (0/1) columns carry `invalid`, `min`, `max`, `mean` and `std`
//! over their valid cells (`null` when there are none; `std` also when there is only one).
//! `std` is the *sample* standard deviation (divisor n − 1, as pandas' `describe`). Integer
//! columns with at most 20 distinct values add `"distinct": n`; a numeric column with invalid
//! cells adds `"invalid_examples": [{"row": 27, "value": "6,3"}, …]` (at most 5).
//! `categories` lists the levels by count, most frequent first, at most 100 of them; when
//! there are more, `"distinct"` gives their number.

use std::collections::HashSet;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use utoipa::ToSchema;

use super::table::{Column, ColumnType, ColumnValues, InvalidCell, Table, MISSING_CODE};

/// Integer columns with at most this many distinct values report the number.
const FEW_DISTINCT: usize = 20;

/// At most this many category levels are listed.
const MAX_CATEGORIES: usize = 100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Profile {
    pub rows: usize,
    /// Rows that exactly repeat an earlier row.
    pub duplicates: usize,
    pub columns: Vec<ColumnProfile>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ColumnProfile {
    pub name: String,
    pub dtype: ColumnType,
    /// Missing cells, not counting invalid ones.
    pub missing: usize,
    #[serde(flatten)]
    pub summary: ColumnSummary,
}

/// The part of a column's profile that depends on its type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum ColumnSummary {
    /// Float, integer and boolean columns.
    Numeric {
        invalid: usize,
        min: Option<f64>,
        max: Option<f64>,
        mean: Option<f64>,
        /// Sample standard deviation (n − 1).
        std: Option<f64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        distinct: Option<usize>,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        invalid_examples: Vec<InvalidCell>,
    },
    Category {
        /// Level → count, most frequent first.
        #[schema(value_type = std::collections::BTreeMap<String, usize>)]
        categories: Categories,
        /// Set only when `categories` does not list every level.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        distinct: Option<usize>,
    },
}

/// Level → count, kept in order (a JSON object in the profile).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Categories(pub Vec<(String, usize)>);

// === impl Profile ===

impl Profile {
    pub fn of(table: &Table) -> Profile {
        Profile {
            rows: table.n_rows,
            duplicates: table.duplicates(),
            columns: table.columns.iter().map(column_profile).collect(),
        }
    }

    pub fn column(&self, name: &str) -> Option<&ColumnProfile> {
        self.columns.iter().find(|c| c.name == name)
    }
}

fn column_profile(c: &Column) -> ColumnProfile {
    let summary = match &c.values {
        ColumnValues::Numeric(values) => numeric_summary(c, values),
        ColumnValues::Category { codes, levels } => category_summary(codes, levels),
    };
    ColumnProfile {
        name: c.name.clone(),
        dtype: c.dtype,
        missing: c.missing,
        summary,
    }
}

fn numeric_summary(c: &Column, values: &[f64]) -> ColumnSummary {
    let valid = || values.iter().copied().filter(|v| !v.is_nan());
    let n = valid().count();
    let (min, max, mean, std) = if n == 0 {
        (None, None, None, None)
    } else {
        let min = valid().fold(f64::INFINITY, f64::min);
        let max = valid().fold(f64::NEG_INFINITY, f64::max);
        let mean = valid().sum::<f64>() / n as f64;
        let std = (n >= 2).then(|| {
            let ss: f64 = valid().map(|v| (v - mean) * (v - mean)).sum();
            (ss / (n - 1) as f64).sqrt()
        });
        (Some(min), Some(max), Some(mean), std)
    };
    let distinct = match c.dtype {
        ColumnType::Integer => {
            let mut seen = HashSet::new();
            for v in valid() {
                seen.insert(v.to_bits());
                if seen.len() > FEW_DISTINCT {
                    break;
                }
            }
            (seen.len() <= FEW_DISTINCT).then_some(seen.len())
        }
        ColumnType::Float | ColumnType::Boolean | ColumnType::Category => None,
    };
    ColumnSummary::Numeric {
        invalid: c.invalid,
        min,
        max,
        mean,
        std,
        distinct,
        invalid_examples: c.invalid_examples.clone(),
    }
}

fn category_summary(codes: &[u32], levels: &[String]) -> ColumnSummary {
    let mut counts = vec![0usize; levels.len()];
    for &code in codes {
        if code != MISSING_CODE {
            counts[code as usize] += 1;
        }
    }
    let mut listed: Vec<(String, usize)> = levels.iter().cloned().zip(counts).collect();
    // Most frequent first; `levels` is sorted, and the sort is stable, so ties stay by name.
    listed.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    let distinct = (listed.len() > MAX_CATEGORIES).then_some(listed.len());
    listed.truncate(MAX_CATEGORIES);
    ColumnSummary::Category {
        categories: Categories(listed),
        distinct,
    }
}

// === impl Categories ===

impl Serialize for Categories {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (level, count) in &self.0 {
            map.serialize_entry(level, count)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Categories {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct InOrder;
        impl<'de> Visitor<'de> for InOrder {
            type Value = Categories;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of category counts")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Categories, A::Error> {
                let mut out = Vec::new();
                while let Some(entry) = map.next_entry::<String, usize>()? {
                    out.push(entry);
                }
                Ok(Categories(out))
            }
        }
        d.deserialize_map(InOrder)
    }
}

#[cfg(test)]
mod tests {
    use super::super::table::read_table;
    use super::super::table::tests::{read, shared_dataset};
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() <= 1e-9 * b.abs().max(1.0))
    }

    /// Expected values are computed here from the file with a plain `split(',')` (the file has
    /// no quoting) and textbook formulas, independently of the table code.
    #[test]
    fn iris_train_profile_matches_an_independent_computation() {
        let path = shared_dataset("iris_train.csv");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut lines = text.lines();
        let names: Vec<&str> = lines.next().unwrap().split(',').collect();
        let rows: Vec<Vec<f64>> = lines
            .map(|l| l.split(',').map(|c| c.parse().unwrap()).collect())
            .collect();
        assert_eq!((rows.len(), names.len()), (120, 5));

        let profile = read_table(&path, None, None).unwrap().profile();
        assert_eq!((profile.rows, profile.duplicates), (120, 1));
        assert_eq!(profile.columns.len(), 5);
        for (j, name) in names.iter().enumerate() {
            let col: Vec<f64> = rows.iter().map(|r| r[j]).collect();
            let n = col.len() as f64;
            let mean = col.iter().sum::<f64>() / n;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1.0);
            let min = col.iter().cloned().fold(f64::MAX, f64::min);
            let max = col.iter().cloned().fold(f64::MIN, f64::max);
            let c = profile.column(name).unwrap();
            assert_eq!(c.missing, 0);
            let ColumnSummary::Numeric {
                invalid,
                min: pmin,
                max: pmax,
                mean: pmean,
                std: pstd,
                distinct,
                ..
            } = &c.summary
            else {
                panic!("{name} is not numeric");
            };
            assert_eq!(*invalid, 0);
            assert!(close(*pmin, min) && close(*pmax, max), "{name}");
            assert!(close(*pmean, mean), "{name}: {pmean:?} vs {mean}");
            assert!(
                close(*pstd, var.sqrt()),
                "{name}: {pstd:?} vs {}",
                var.sqrt()
            );
            if *name == "label" {
                assert_eq!(c.dtype, ColumnType::Integer);
                assert_eq!(*distinct, Some(3));
                // 40 rows per class (README): mean 1, min 0, max 2.
                assert!(close(*pmean, 1.0) && close(*pmin, 0.0) && close(*pmax, 2.0));
            } else {
                assert_eq!(c.dtype, ColumnType::Float, "{name}");
                assert_eq!(*distinct, None);
            }
        }
        // A spot check from `awk -F, 'NR>1' iris_train.csv` on the same file: 4.3 and 7.9.
        let sl = profile.column("sepal_length_cm").unwrap();
        let ColumnSummary::Numeric { min, max, .. } = &sl.summary else {
            panic!("not numeric");
        };
        assert_eq!((*min, *max), (Some(4.3), Some(7.9)));
    }

    #[test]
    fn serializes_in_the_api_shape() {
        let t =
            read("x,species,flag,n\n1.5,setosa,true,1\n2.5,versicolor,false,2\n,setosa,true,3\n")
                .unwrap();
        let p = t.profile();
        let json = serde_json::to_string(&p).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"rows":3,"duplicates":0,"columns":["#,
                r#"{"name":"x","dtype":"float","missing":1,"invalid":0,"min":1.5,"max":2.5,"mean":2.0,"std":0.7071067811865476},"#,
                r#"{"name":"species","dtype":"category","missing":0,"categories":{"setosa":2,"versicolor":1}},"#,
                r#"{"name":"flag","dtype":"boolean","missing":0,"invalid":0,"min":0.0,"max":1.0,"mean":0.6666666666666666,"std":0.5773502691896258},"#,
                r#"{"name":"n","dtype":"integer","missing":0,"invalid":0,"min":1.0,"max":3.0,"mean":2.0,"std":1.0,"distinct":3}]}"#
            )
        );
        let back: Profile = serde_json::from_str(&json).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn empty_and_single_value_columns_have_null_statistics() {
        let t = read("a,b\n,1\nNA,\n").unwrap();
        let json = serde_json::to_value(t.profile()).unwrap();
        let a = &json["columns"][0];
        assert_eq!(a["dtype"], "float");
        assert_eq!(a["missing"], 2);
        assert!(a["min"].is_null() && a["mean"].is_null() && a["std"].is_null());
        let b = &json["columns"][1];
        assert_eq!((b["min"].as_f64(), b["std"].is_null()), (Some(1.0), true));
    }

    #[test]
    fn invalid_examples_and_many_categories() {
        let t = read_table(&shared_dataset("iris_dirty.csv"), None, None).unwrap();
        let json = serde_json::to_value(t.profile()).unwrap();
        assert_eq!(json["duplicates"], 4);
        assert_eq!(
            json["columns"][0]["invalid_examples"],
            serde_json::json!([{"row": 27, "value": "6,3"}])
        );

        let mut text = String::from("id\n");
        for i in 0..150 {
            text.push_str(&format!("k{i:03}\n"));
        }
        text.push_str("k149\n");
        let p = read(&text).unwrap().profile();
        let ColumnSummary::Category {
            categories,
            distinct,
        } = &p.columns[0].summary
        else {
            panic!("not a category");
        };
        assert_eq!(*distinct, Some(150));
        assert_eq!(categories.0.len(), MAX_CATEGORIES);
        assert_eq!(categories.0[0], ("k149".to_string(), 2));
        assert_eq!(categories.0[1], ("k000".to_string(), 1));
    }
}
