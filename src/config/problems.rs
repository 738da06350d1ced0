//! Config problems: collected, not thrown, so that `keygate -t` lists them all at once.

use std::fmt;
use std::path::{Path, PathBuf};

/// One thing wrong with a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's dotted path, e.g. `cache.ttl_s` or `upstream.peers[1]`; empty for the file.
    pub field: String,
    /// The 1-based line in the file, where it could be found.
    pub line: Option<usize>,
    pub message: String,
}

impl Problem {
    pub fn new(field: &str, line: Option<usize>, message: impl Into<String>) -> Self {
        Problem { field: field.to_string(), line, message: message.into() }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.message)
    }
}

/// Every problem found in one file.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub problems: Vec<Problem>,
}

impl ConfigErrors {
    pub fn new(path: &Path, problems: Vec<Problem>) -> Self {
        ConfigErrors { path: path.to_path_buf(), problems }
    }

    pub fn single(path: &Path, problem: Problem) -> Self {
        ConfigErrors::new(path, vec![problem])
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "{}: {count} problem{}", self.path.display(), if count == 1 { "" } else { "s" })?;
        for problem in &self.problems {
            write!(f, "\n  {}: {problem}", self.path.display())?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// The problems found so far, and the text they are located in.
pub(super) struct Problems<'t> {
    text: &'t str,
    found: Vec<Problem>,
}

impl<'t> Problems<'t> {
    pub fn new(text: &'t str) -> Self {
        Problems { text, found: Vec::new() }
    }

    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        let line = line_of(self.text, field);
        self.found.push(Problem::new(field, line, message));
    }

    /// A serde error inside section `field`: points at the offending sub-field when the message
    /// names one (``unknown field `x` ``, ``missing field `x` ``).
    pub fn add_shape_error(&mut self, field: &str, message: &str) {
        let named = message.split('`').nth(1).filter(|_| message.contains("field `"));
        let line = named
            .and_then(|sub| line_of(self.text, &format!("{field}.{sub}")))
            .or_else(|| line_of(self.text, field));
        let path = match named {
            Some(sub) if message.starts_with("unknown field") => format!("{field}.{sub}"),
            _ => field.to_string(),
        };
        self.found.push(Problem::new(&path, line, message));
    }

    /// Records `message` about `field` unless `ok`.
    pub fn ensure(&mut self, ok: bool, field: &str, message: impl Into<String>) {
        if !ok {
            self.add(field, message);
        }
    }

    /// A field users must write, absent from top-level `section` when `None`: reported as serde
    /// reports a missing field, under the section.
    pub fn given<T>(&mut self, section: &str, name: &str, value: Option<T>) -> Option<T> {
        if value.is_none() {
            self.add_shape_error(section, &format!("missing field `{name}`"));
        }
        value
    }

    pub fn is_empty(&self) -> bool {
        self.found.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.found
    }
}

/// Finds the line of a dotted field path by its keys' indentation. Indexes (`[2]`) are dropped:
/// the line of the list itself is close enough for a reader.
fn line_of(text: &str, field: &str) -> Option<usize> {
    let lines: Vec<&str> = text.lines().collect();
    let mut start = 0;
    let mut outer: Option<usize> = None;
    let mut found = None;
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let name = part.split('[').next().unwrap_or(part);
        let mut hit = None;
        for (n, line) in lines.iter().enumerate().skip(start) {
            let stripped = line.trim_start();
            if stripped.is_empty() || stripped.starts_with('#') {
                continue;
            }
            let depth = line.len() - stripped.len();
            if outer.is_some_and(|o| depth <= o) {
                break; // left the enclosing section
            }
            let key = stripped.trim_start_matches("- ");
            if key.strip_prefix(name).is_some_and(|rest| rest.starts_with(':')) {
                hit = Some((n, depth));
                break;
            }
        }
        let (n, depth) = hit?;
        found = Some(n + 1);
        start = n + 1;
        outer = Some(depth);
    }
    found
}

#[cfg(test)]
mod tests {
    use super::line_of;

    #[test]
    fn finds_nested_fields_by_indentation() {
        let text = "listen: [a]\ncache:\n  ttl_s: 1\nstore:\n  redis:\n    ttl_s: 2\n";
        assert_eq!(line_of(text, "cache"), Some(2));
        assert_eq!(line_of(text, "cache.ttl_s"), Some(3));
        assert_eq!(line_of(text, "store.redis.ttl_s"), Some(6));
        assert_eq!(line_of(text, "store.redis.url"), None);
        assert_eq!(line_of(text, "cache.redis"), None);
    }
}
