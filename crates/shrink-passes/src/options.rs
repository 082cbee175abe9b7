//! Typed pass options from RON, and their canonical text.

use ron::value::RawValue;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Parses a pass's options; `None` gives every option its default. Errors carry positions
/// relative to the start of `raw`.
pub fn parse_options<O: DeserializeOwned + Default>(
    raw: Option<&RawValue>,
) -> Result<O, ron::error::SpannedError> {
    match raw {
        None => Ok(O::default()),
        // As the pipeline file: `Some(x)` may be written `x`.
        Some(r) => ron::Options::default()
            .with_default_extension(ron::extensions::Extensions::IMPLICIT_SOME)
            .from_str(r.get_ron()),
    }
}

/// Options as canonical RON on one line, every field present, in declaration order (option
/// structs declare their fields sorted by name; a test holds every registered pass to that).
pub fn canonical_ron<O: Serialize>(options: &O) -> String {
    match ron::to_string(options) {
        Ok(compact) => spaced(&compact),
        Err(e) => format!("<unprintable options: {e}>"),
    }
}

/// `(a:1,b:[x,y])` → `(a: 1, b: [x, y])`, leaving string literals alone.
fn spaced(compact: &str) -> String {
    let mut out = String::with_capacity(compact.len() + 16);
    let mut in_str = false;
    let mut escaped = false;
    for c in compact.chars() {
        out.push(c);
        if in_str {
            match (escaped, c) {
                (false, '\\') => escaped = true,
                (false, '"') => in_str = false,
                _ => escaped = false,
            }
        } else if c == '"' {
            in_str = true;
        } else if c == ',' || c == ':' {
            out.push(' ');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::Registry;

    /// Field names of a canonical options text, at the top level.
    fn keys(text: &str) -> Vec<String> {
        let inner = text.trim_start_matches('(').trim_end_matches(')');
        let (mut depth, mut start, mut keys) = (0i32, 0usize, Vec::new());
        for (i, c) in inner.char_indices() {
            match c {
                '(' | '[' => depth += 1,
                ')' | ']' => depth -= 1,
                ',' if depth == 0 => start = i + 1,
                ':' if depth == 0 => keys.push(inner[start..i].trim().to_string()),
                _ => {}
            }
        }
        keys
    }

    #[test]
    fn every_pass_prints_sorted_options_that_parse_back() {
        for info in Registry::builtin().iter() {
            let pass = (info.build)(None).expect("defaults build");
            let text = pass.options();
            let k = keys(&text);
            let mut sorted = k.clone();
            sorted.sort();
            assert_eq!(k, sorted, "{}: options not sorted: {text}", info.name);
            let raw = ron::value::RawValue::from_ron(&text).expect("raw");
            let again = (info.build)(Some(raw)).expect("canonical options parse");
            assert_eq!(again.options(), text, "{}", info.name);
        }
    }
}
