//! Validation errors that name the object, the field path and the reason.

use std::fmt;

/// One invalid field: `spec.replicas: must be >= 0, got -1`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Dotted path with list indices, e.g. `spec.template.spec.containers[0].image`.
    pub path: String,
    pub message: String,
}

impl FieldError {
    /// A field error at `path`.
    pub fn new(path: &str, message: impl Into<String>) -> Self {
        FieldError {
            path: path.to_string(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// An object (or document) that cannot be accepted, with every reason found.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct Invalid {
    /// What was invalid: `deployment "web"`, `document 2`, `manifest`.
    pub what: String,
    pub errors: Vec<FieldError>,
}

impl Invalid {
    /// An error with one reason.
    pub fn single(what: &str, path: &str, message: impl Into<String>) -> Self {
        Invalid {
            what: what.to_string(),
            errors: vec![FieldError::new(path, message)],
        }
    }
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.what)?;
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}
