//! Fitted preprocessing: the transforms training fits on its training split, stored in
//! model.json and applied, identically, to every instance that arrives as named features.
//!
//! Runs on the request's tokio task while the request is decoded (it is cheap: a few
//! arithmetic operations per feature), so the rows handed to the batcher are model input.

use serde::{Deserialize, Serialize};

/// The fitted transforms of one model version.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocessing {
    /// One transform per raw feature, in the order of the signature's feature names; their
    /// outputs are concatenated into the model's input row.
    pub features: Vec<FeatureTransform>,
    /// Regression only: the model predicts `(y - shift) / scale`; answers are mapped back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<TargetTransform>,
}

/// The transform of one raw feature column.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum FeatureTransform {
    /// `((clip(x or fill)) - shift) / scale`: one value.
    Numeric {
        name: String,
        /// Value used when the feature is missing (null, absent, "", "NA", …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fill: Option<f64>,
        /// Clipping bounds `[low, high]` fitted for outliers.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        clip: Option<[f64; 2]>,
        #[serde(default)]
        shift: f64,
        #[serde(default = "one")]
        scale: f64,
    },
    /// One value per category (`one_hot`) or the category's index (`ordinal`). A category not
    /// seen in training encodes as all zeros (one-hot) or -1 (ordinal) and raises a warning.
    Categorical {
        name: String,
        encoding: Encoding,
        categories: Vec<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        fill: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    OneHot,
    Ordinal,
}

/// `y = output * scale + shift`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetTransform {
    pub shift: f64,
    pub scale: f64,
}

fn one() -> f64 {
    1.0
}

/// A raw feature value as a client sends it.
#[derive(Debug, Clone, PartialEq)]
pub enum RawValue {
    Number(f64),
    Text(String),
    Bool(bool),
    Missing,
}

/// Cells that count as missing in numeric columns (and in requests).
pub const MISSING_MARKERS: &[&str] = &["", "NA", "N/A", "NaN", "nan", "null", "NULL", "None"];

impl RawValue {
    fn is_missing(&self) -> bool {
        match self {
            RawValue::Missing => true,
            RawValue::Text(s) => MISSING_MARKERS.contains(&s.trim()),
            RawValue::Number(_) | RawValue::Bool(_) => false,
        }
    }

    /// The category a value names: numbers print without a trailing `.0`.
    fn as_category(&self) -> String {
        match self {
            RawValue::Text(s) => s.clone(),
            RawValue::Bool(b) => b.to_string(),
            RawValue::Number(n) if n.fract() == 0.0 && n.abs() < 1e15 => format!("{}", *n as i64),
            RawValue::Number(n) => n.to_string(),
            RawValue::Missing => String::new(),
        }
    }
}

impl FeatureTransform {
    pub fn name(&self) -> &str {
        match self {
            FeatureTransform::Numeric { name, .. } | FeatureTransform::Categorical { name, .. } => {
                name
            }
        }
    }

    /// Number of model-input values this feature becomes.
    pub fn width(&self) -> usize {
        match self {
            FeatureTransform::Numeric { .. } => 1,
            FeatureTransform::Categorical {
                encoding: Encoding::OneHot,
                categories,
                ..
            } => categories.len(),
            FeatureTransform::Categorical {
                encoding: Encoding::Ordinal,
                ..
            } => 1,
        }
    }

    /// Appends this feature's encoded values to `out`. `Err` says what was wrong with the
    /// value (the caller adds where); an unknown category is a warning, not an error.
    fn apply(
        &self,
        value: &RawValue,
        out: &mut Vec<f32>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        match self {
            FeatureTransform::Numeric {
                fill,
                clip,
                shift,
                scale,
                ..
            } => {
                let x = if value.is_missing() {
                    fill.ok_or("is missing and the model has no fill value for it")?
                } else {
                    match value {
                        RawValue::Number(n) => *n,
                        RawValue::Bool(b) => f64::from(u8::from(*b)),
                        RawValue::Text(s) => s
                            .trim()
                            .parse::<f64>()
                            .map_err(|_| format!("expected a number, got the string {s:?}"))?,
                        RawValue::Missing => unreachable!("handled by is_missing above"),
                    }
                };
                if !x.is_finite() {
                    return Err(format!("value {x} is not finite"));
                }
                let x = match clip {
                    Some([lo, hi]) => x.clamp(*lo, *hi),
                    None => x,
                };
                out.push(((x - shift) / scale) as f32);
            }
            FeatureTransform::Categorical {
                encoding,
                categories,
                fill,
                ..
            } => {
                let category = if value.is_missing() {
                    fill.clone()
                        .ok_or("is missing and the model has no fill value for it")?
                } else {
                    value.as_category()
                };
                let index = categories.iter().position(|c| *c == category);
                if index.is_none() {
                    warnings.push(format!("unknown category {category:?}, encoded as unknown"));
                }
                match encoding {
                    Encoding::OneHot => {
                        let start = out.len();
                        out.resize(start + categories.len(), 0.0);
                        if let Some(i) = index {
                            out[start + i] = 1.0;
                        }
                    }
                    Encoding::Ordinal => out.push(index.map_or(-1.0, |i| i as f32)),
                }
            }
        }
        Ok(())
    }
}

impl Preprocessing {
    /// Width of the model input row this preprocessing produces.
    pub fn width(&self) -> usize {
        self.features.iter().map(FeatureTransform::width).sum()
    }

    /// Encodes one instance whose features are looked up by name. `Err` names the feature.
    /// Warnings (unknown categories) are prefixed with the feature name.
    pub fn apply<'a>(
        &self,
        lookup: impl Fn(&str) -> Option<&'a RawValue>,
        out: &mut Vec<f32>,
        warnings: &mut Vec<String>,
    ) -> Result<(), String> {
        for f in &self.features {
            let value = lookup(f.name()).unwrap_or(&RawValue::Missing);
            let before = warnings.len();
            f.apply(value, out, warnings)
                .map_err(|e| format!("feature '{}' {e}", f.name()))?;
            for w in &mut warnings[before..] {
                *w = format!("feature '{}': {w}", f.name());
            }
        }
        Ok(())
    }

    /// Maps a regression output back to the target's original units.
    pub fn untransform_target(&self, y: f32) -> f32 {
        match self.target {
            Some(t) => (f64::from(y) * t.scale + t.shift) as f32,
            None => y,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep() -> Preprocessing {
        serde_json::from_str(
            r#"{"features": [
                {"kind": "numeric", "name": "x", "fill": 2.0, "shift": 1.0, "scale": 2.0, "clip": [-10, 10]},
                {"kind": "categorical", "name": "c", "encoding": "one_hot", "categories": ["a", "b", "1"]},
                {"kind": "categorical", "name": "o", "encoding": "ordinal", "categories": ["lo", "hi"], "fill": "lo"}
            ], "target": {"shift": 100.0, "scale": 10.0}}"#,
        )
        .unwrap()
    }

    fn run(values: &[(&str, RawValue)]) -> Result<(Vec<f32>, Vec<String>), String> {
        let p = prep();
        let mut out = Vec::new();
        let mut warnings = Vec::new();
        p.apply(
            |name| values.iter().find(|(n, _)| *n == name).map(|(_, v)| v),
            &mut out,
            &mut warnings,
        )?;
        Ok((out, warnings))
    }

    #[test]
    fn encodes_scales_clips_and_fills() {
        let (out, w) = run(&[
            ("x", RawValue::Number(5.0)),
            ("c", RawValue::Text("b".into())),
            ("o", RawValue::Text("hi".into())),
        ])
        .unwrap();
        assert_eq!(out, vec![2.0, 0.0, 1.0, 0.0, 1.0]);
        assert!(w.is_empty());
        // Missing x is filled with 2 → 0.5; a number names category "1"; o filled with "lo".
        let (out, _) = run(&[
            ("x", RawValue::Text("NA".into())),
            ("c", RawValue::Number(1.0)),
        ])
        .unwrap();
        assert_eq!(out, vec![0.5, 0.0, 0.0, 1.0, 0.0]);
        // Clipped at 10 → 4.5.
        let (out, _) = run(&[
            ("x", RawValue::Number(1e6)),
            ("c", RawValue::Text("a".into())),
        ])
        .unwrap();
        assert_eq!(out[0], 4.5);
        assert_eq!(prep().width(), 5);
        assert_eq!(prep().untransform_target(0.5), 105.0);
    }

    #[test]
    fn unknown_category_is_a_warning_and_bad_values_are_errors() {
        let (out, w) = run(&[
            ("x", RawValue::Number(1.0)),
            ("c", RawValue::Text("zzz".into())),
        ])
        .unwrap();
        assert_eq!(&out[1..4], &[0.0, 0.0, 0.0]);
        assert_eq!(w.len(), 1);
        assert!(
            w[0].contains("feature 'c'") && w[0].contains("zzz"),
            "{w:?}"
        );
        let err = run(&[
            ("x", RawValue::Text("abc".into())),
            ("c", RawValue::Text("a".into())),
        ])
        .unwrap_err();
        assert!(err.contains("feature 'x'") && err.contains("abc"), "{err}");
        let err = run(&[("x", RawValue::Number(1.0))]).unwrap_err();
        assert!(err.contains("feature 'c' is missing"), "{err}");
    }
}
