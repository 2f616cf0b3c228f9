//! Label selectors: the `labelSelector` query syntax (`app=web,tier!=db,env in (a,b),!legacy`)
//! and the structured `matchLabels`/`matchExpressions` form, both compiled to one [`Selector`].

use std::collections::BTreeMap;
use std::fmt;

use crate::meta::LabelSelector;
use crate::names::{self, NameError};

/// Why a selector is malformed: its query syntax, or one requirement of its structured form.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SelectorError {
    #[error("selector {selector:?}: trailing ','")]
    TrailingComma { selector: String },
    #[error("selector {selector:?}: expected ',' before {rest:?}")]
    ExpectedComma { selector: String, rest: String },
    #[error("expected a label key at {0:?}")]
    ExpectedKey(String),
    #[error("expected '(' after {operator:?} for key {key:?}")]
    ExpectedOpenParen { operator: &'static str, key: String },
    #[error("missing ')' for key {0:?}")]
    MissingCloseParen(String),
    #[error("unexpected {text:?} after key {key:?}")]
    Unexpected { text: String, key: String },
    /// A label key or value of a requirement.
    #[error(transparent)]
    Name(#[from] NameError),
    #[error("must be non-empty for In and NotIn")]
    ValuesRequired,
    #[error("must be empty for Exists and DoesNotExist")]
    ValuesForbidden,
    #[error("unsupported operator {0:?}: must be In, NotIn, Exists or DoesNotExist")]
    UnsupportedOperator(String),
}

/// A structured selector that does not compile: the field path of the bad part and why.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {source}")]
pub struct LabelSelectorError {
    /// e.g. `spec.selector.matchExpressions[0].operator`.
    pub path: String,
    pub source: SelectorError,
}

/// One requirement of a selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    /// `key=value` or `key==value`.
    Equals(String, String),
    /// `key!=value`: also true when the key is absent.
    NotEquals(String, String),
    /// `key in (a,b)`.
    In(String, Vec<String>),
    /// `key notin (a,b)`: also true when the key is absent.
    NotIn(String, Vec<String>),
    /// `key`.
    Exists(String),
    /// `!key`.
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        match self {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::NotEquals(k, v) => labels.get(k) != Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|l| vs.contains(l)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|l| !vs.contains(l)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        }
    }
}

/// A conjunction of requirements; the empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
}

impl Selector {
    /// The selector that matches every object.
    pub fn everything() -> Self {
        Selector::default()
    }

    /// Whether it has no requirement.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// Parses the query syntax used by `labelSelector=` and `bramble get -l`.
    pub fn parse(text: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        let mut rest = text.trim();
        while !rest.is_empty() {
            let (req, after) = parse_requirement(rest)?;
            requirements.push(req);
            rest = after.trim_start();
            if let Some(r) = rest.strip_prefix(',') {
                rest = r.trim_start();
                if rest.is_empty() {
                    return Err(SelectorError::TrailingComma {
                        selector: text.to_string(),
                    });
                }
            } else if !rest.is_empty() {
                return Err(SelectorError::ExpectedComma {
                    selector: text.to_string(),
                    rest: rest.to_string(),
                });
            }
        }
        Ok(Selector { requirements })
    }

    /// Compiles a structured selector; errors carry the field path below `path`.
    pub fn from_label_selector(
        sel: &LabelSelector,
        path: &str,
    ) -> Result<Self, LabelSelectorError> {
        let at = |path: String| {
            move |e: NameError| LabelSelectorError {
                path,
                source: e.into(),
            }
        };
        let mut requirements = Vec::new();
        for (k, v) in &sel.match_labels {
            names::label_key(k).map_err(at(format!("{path}.matchLabels")))?;
            names::label_value(v).map_err(at(format!("{path}.matchLabels[{k}]")))?;
            requirements.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, expr) in sel.match_expressions.iter().enumerate() {
            let p = format!("{path}.matchExpressions[{i}]");
            names::label_key(&expr.key).map_err(at(format!("{p}.key")))?;
            let key = expr.key.clone();
            let values = expr.values.clone();
            let req = match expr.operator.as_str() {
                "In" | "NotIn" => {
                    if values.is_empty() {
                        return Err(LabelSelectorError {
                            path: format!("{p}.values"),
                            source: SelectorError::ValuesRequired,
                        });
                    }
                    for v in &values {
                        names::label_value(v).map_err(at(format!("{p}.values")))?;
                    }
                    if expr.operator == "In" {
                        Requirement::In(key, values)
                    } else {
                        Requirement::NotIn(key, values)
                    }
                }
                "Exists" | "DoesNotExist" => {
                    if !values.is_empty() {
                        return Err(LabelSelectorError {
                            path: format!("{p}.values"),
                            source: SelectorError::ValuesForbidden,
                        });
                    }
                    if expr.operator == "Exists" {
                        Requirement::Exists(key)
                    } else {
                        Requirement::DoesNotExist(key)
                    }
                }
                other => {
                    return Err(LabelSelectorError {
                        path: format!("{p}.operator"),
                        source: SelectorError::UnsupportedOperator(other.to_string()),
                    });
                }
            };
            requirements.push(req);
        }
        Ok(Selector { requirements })
    }

    /// A selector of `key=value` pairs, as a Service's `spec.selector`.
    pub fn from_map(map: &BTreeMap<String, String>) -> Self {
        Selector {
            requirements: map
                .iter()
                .map(|(k, v)| Requirement::Equals(k.clone(), v.clone()))
                .collect(),
        }
    }
}

impl fmt::Display for Selector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            match r {
                Requirement::Equals(k, v) => write!(f, "{k}={v}")?,
                Requirement::NotEquals(k, v) => write!(f, "{k}!={v}")?,
                Requirement::In(k, vs) => write!(f, "{k} in ({})", vs.join(","))?,
                Requirement::NotIn(k, vs) => write!(f, "{k} notin ({})", vs.join(","))?,
                Requirement::Exists(k) => write!(f, "{k}")?,
                Requirement::DoesNotExist(k) => write!(f, "!{k}")?,
            }
        }
        Ok(())
    }
}

fn is_key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/')
}

fn take_key(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !is_key_char(c)).unwrap_or(s.len());
    s.split_at(end)
}

fn parse_requirement(s: &str) -> Result<(Requirement, &str), SelectorError> {
    if let Some(rest) = s.strip_prefix('!') {
        let (key, after) = take_key(rest.trim_start());
        names::label_key(key)?;
        return Ok((Requirement::DoesNotExist(key.to_string()), after));
    }
    let (key, after) = take_key(s);
    if key.is_empty() {
        return Err(SelectorError::ExpectedKey(s.to_string()));
    }
    names::label_key(key)?;
    let key = key.to_string();
    let after = after.trim_start();
    let value_of = |rest: &str| -> Result<(String, usize), NameError> {
        let rest_trim = rest.trim_start();
        let skipped = rest.len() - rest_trim.len();
        let (v, _) = take_key(rest_trim);
        names::label_value(v)?;
        Ok((v.to_string(), skipped + v.len()))
    };
    for (op, ctor) in [
        (
            "==",
            Requirement::Equals as fn(String, String) -> Requirement,
        ),
        ("!=", Requirement::NotEquals),
        ("=", Requirement::Equals),
    ] {
        if let Some(rest) = after.strip_prefix(op) {
            let (v, used) = value_of(rest)?;
            return Ok((ctor(key, v), &rest[used..]));
        }
    }
    for (word, negate) in [("notin", true), ("in", false)] {
        if let Some(rest) = after.strip_prefix(word) {
            if !rest.starts_with([' ', '(']) {
                continue;
            }
            let rest = rest.trim_start();
            let inner = rest
                .strip_prefix('(')
                .ok_or_else(|| SelectorError::ExpectedOpenParen {
                    operator: word,
                    key: key.clone(),
                })?;
            let close = inner
                .find(')')
                .ok_or_else(|| SelectorError::MissingCloseParen(key.clone()))?;
            let mut values = Vec::new();
            for v in inner[..close].split(',') {
                let v = v.trim();
                names::label_value(v)?;
                values.push(v.to_string());
            }
            let req = if negate {
                Requirement::NotIn(key, values)
            } else {
                Requirement::In(key, values)
            };
            return Ok((req, &inner[close + 1..]));
        }
    }
    if after.is_empty() || after.starts_with(',') {
        return Ok((Requirement::Exists(key), after));
    }
    Err(SelectorError::Unexpected {
        text: after.to_string(),
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::LabelSelectorRequirement;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_operator() {
        let s =
            Selector::parse("app=web, tier!=db,env in (prod, staging),zone notin (z1),gpu,!legacy")
                .unwrap();
        assert_eq!(s.requirements.len(), 6);
        let good = labels(&[("app", "web"), ("tier", "fe"), ("env", "prod"), ("gpu", "")]);
        assert!(s.matches(&good));
        let mut bad = good.clone();
        bad.insert("legacy".into(), "1".into());
        assert!(!s.matches(&bad));
        let mut bad = good.clone();
        bad.insert("env".into(), "dev".into());
        assert!(!s.matches(&bad));
        let mut bad = good;
        bad.insert("zone".into(), "z1".into());
        assert!(!s.matches(&bad));
        assert!(
            Selector::parse("app==web")
                .unwrap()
                .matches(&labels(&[("app", "web")]))
        );
    }

    #[test]
    fn absent_keys_satisfy_negations() {
        let s = Selector::parse("a!=x,b notin (y)").unwrap();
        assert!(s.matches(&BTreeMap::new()));
    }

    #[test]
    fn empty_matches_everything_and_display_round_trips() {
        assert!(Selector::parse("").unwrap().matches(&labels(&[("x", "y")])));
        let text = "app=web,env in (a,b),!old";
        assert_eq!(Selector::parse(text).unwrap().to_string(), text);
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "app=",
            "=web",
            "app=web,",
            "app in a",
            "app in (a",
            "app web",
            "Bad Key=1",
            "a=-x",
        ] {
            let r = Selector::parse(bad);
            // `app=` selects the empty value, which is a legal label value.
            if bad == "app=" {
                assert!(r.is_ok());
                continue;
            }
            assert!(r.is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn structured_form() {
        let sel = LabelSelector {
            match_labels: [("app".to_string(), "web".to_string())].into(),
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "In".into(),
                values: vec!["prod".into()],
            }],
        };
        let s = Selector::from_label_selector(&sel, "spec.selector").unwrap();
        assert!(s.matches(&labels(&[("app", "web"), ("env", "prod")])));
        assert!(!s.matches(&labels(&[("app", "web")])));
        let bad = LabelSelector {
            match_expressions: vec![LabelSelectorRequirement {
                key: "env".into(),
                operator: "Near".into(),
                values: vec![],
            }],
            ..Default::default()
        };
        let e = Selector::from_label_selector(&bad, "spec.selector").unwrap_err();
        assert_eq!(e.path, "spec.selector.matchExpressions[0].operator");
        assert_eq!(
            e.source.to_string(),
            r#"unsupported operator "Near": must be In, NotIn, Exists or DoesNotExist"#
        );
    }
}
