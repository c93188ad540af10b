//! The metric type registry as the validator sees it: a snapshot of
//! `metrics_ingest.metric_types`, loaded by the SQL layer.

use std::collections::BTreeMap;

/// How a metric's value is given and stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// A finite number within optional bounds.
    Number,
    /// true/false, 0/1, "true"/"false", "0"/"1"; stored as 0 or 1.
    Boolean,
    /// A number within bounds, or one of the type's labels (mapped to its score, label kept).
    Score,
}

impl ValueKind {
    pub fn parse(text: &str) -> Option<ValueKind> {
        match text {
            "number" => Some(ValueKind::Number),
            "boolean" => Some(ValueKind::Boolean),
            "score" => Some(ValueKind::Score),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricTypeRule {
    pub name: String,
    pub kind: ValueKind,
    pub min: Option<f64>,
    pub max: Option<f64>,
    /// Label → score, for `Score` types. Matched case-insensitively.
    pub labels: Vec<(String, f64)>,
}

#[derive(Debug, Clone, Default)]
pub struct Registry {
    /// By name, in byte order: found by binary search, a few comparisons of
    /// short names (cheaper than hashing one, for the handful of types a
    /// registry holds, and every metric of every element is looked up).
    rules: Vec<MetricTypeRule>,
    /// The same names, for error messages that list what is known.
    names: Vec<String>,
    /// Whether the catalog has 0.3.0's users and platform column: if not (the
    /// library runs against an older catalog before ALTER EXTENSION UPDATE),
    /// `platform`, `name` and `email` are unknown fields, kept in `attributes`.
    profiles: bool,
}

impl Registry {
    pub fn new(rules: impl IntoIterator<Item = MetricTypeRule>) -> Registry {
        // By name (a name given twice keeps its last rule), in byte order.
        let rules: Vec<MetricTypeRule> = rules
            .into_iter()
            .map(|r| (r.name.clone(), r))
            .collect::<BTreeMap<_, _>>()
            .into_values()
            .collect();
        let names = rules.iter().map(|r| r.name.clone()).collect();
        Registry {
            rules,
            names,
            profiles: true,
        }
    }

    /// The same registry for a catalog without users (before 0.3.0).
    pub fn without_profiles(mut self) -> Registry {
        self.profiles = false;
        self
    }

    pub fn profiles(&self) -> bool {
        self.profiles
    }

    /// The registry `metric_types` ships with; the pure tests use it, and the SQL
    /// seed rows in sql/ must say the same (a pg_test compares them).
    pub fn builtin() -> Registry {
        let labels = vec![
            ("negative".to_string(), -1.0),
            ("neutral".to_string(), 0.0),
            ("positive".to_string(), 1.0),
        ];
        Registry::new([
            MetricTypeRule {
                name: "talked_time".into(),
                kind: ValueKind::Number,
                min: Some(0.0),
                max: None,
                labels: vec![],
            },
            MetricTypeRule {
                name: "microphone_used".into(),
                kind: ValueKind::Boolean,
                min: None,
                max: None,
                labels: vec![],
            },
            MetricTypeRule {
                name: "speaker_used".into(),
                kind: ValueKind::Boolean,
                min: None,
                max: None,
                labels: vec![],
            },
            MetricTypeRule {
                name: "voice_sentiment".into(),
                kind: ValueKind::Score,
                min: Some(-1.0),
                max: Some(1.0),
                labels,
            },
        ])
    }

    pub fn get(&self, name: &str) -> Option<&MetricTypeRule> {
        self.rules
            .binary_search_by(|r| r.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.rules[i])
    }

    pub fn names(&self) -> &[String] {
        &self.names
    }
}
