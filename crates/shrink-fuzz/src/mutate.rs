//! Mutations: byte-level havoc, integers planted at the offsets a format's structure gives,
//! JSON values rewritten field by field, and text edits that keep or break UTF-8 and comments.

use rand::rngs::StdRng;
use rand::Rng;
use serde_json::Value;

/// Integers at the edges where size arithmetic breaks.
pub const INTERESTING: [u64; 16] = [
    0,
    1,
    2,
    3,
    7,
    255,
    256,
    65_535,
    1 << 24,
    (1 << 31) - 1,
    1 << 31,
    u32::MAX as u64,
    1 << 32,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

pub fn interesting(rng: &mut StdRng) -> u64 {
    let v = INTERESTING[rng.random_range(0..INTERESTING.len())];
    match rng.random_range(0..4) {
        0 => v.wrapping_add(1),
        1 => v.wrapping_sub(1),
        _ => v,
    }
}

/// One random byte-level edit.
pub fn havoc(rng: &mut StdRng, data: &mut Vec<u8>) {
    if data.is_empty() {
        data.push(rng.random());
        return;
    }
    let n = data.len();
    match rng.random_range(0..9) {
        0 => {
            let i = rng.random_range(0..n);
            data[i] ^= 1 << rng.random_range(0..8);
        }
        1 => {
            let i = rng.random_range(0..n);
            data[i] = [0u8, 0xff, 0x7f, 0x80, b'"', b'\n', b'/'][rng.random_range(0..7)];
        }
        2 => {
            let i = rng.random_range(0..n);
            data[i] = rng.random();
        }
        3 => {
            let at = rng.random_range(0..n);
            plant(rng, data, at);
        }
        4 => {
            // Cut short: a truncated download.
            let keep = rng.random_range(0..n);
            data.truncate(keep);
        }
        5 => {
            let i = rng.random_range(0..n);
            let len = rng.random_range(1..=(n - i).min(64));
            data.drain(i..i + len);
        }
        6 => {
            let i = rng.random_range(0..=n);
            let len = rng.random_range(1..=16);
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            data.splice(i..i, bytes);
        }
        7 => {
            // Duplicate a chunk elsewhere.
            let i = rng.random_range(0..n);
            let len = rng.random_range(1..=(n - i).min(128));
            let chunk = data[i..i + len].to_vec();
            let j = rng.random_range(0..=data.len());
            data.splice(j..j, chunk);
        }
        _ => {
            // Append garbage.
            let len = rng.random_range(1..=32);
            data.extend((0..len).map(|_| rng.random::<u8>()));
        }
    }
}

/// Writes an interesting little-endian u32 or u64 at `at`.
pub fn plant(rng: &mut StdRng, data: &mut [u8], at: usize) {
    let v = interesting(rng);
    let bytes = if rng.random_bool(0.5) {
        (v as u32).to_le_bytes().to_vec()
    } else {
        v.to_le_bytes().to_vec()
    };
    for (k, b) in bytes.into_iter().enumerate() {
        if let Some(slot) = data.get_mut(at + k) {
            *slot = b;
        }
    }
}

/// A JSON value of any kind that a config field might be mistaken for.
fn odd_value(rng: &mut StdRng) -> Value {
    match rng.random_range(0..12) {
        0 => Value::Null,
        1 => Value::Bool(rng.random()),
        2 => Value::from(interesting(rng)),
        3 => Value::from(-(interesting(rng) as i64).abs().max(1)),
        4 => serde_json::Number::from_f64([1e-30, 1e30, 0.5, -1.0, 1e308][rng.random_range(0..5)])
            .map_or(Value::Null, Value::Number),
        5 => Value::from("NaN"),
        6 => Value::from("é\u{1F600}"),
        7 => Value::Array(vec![]),
        8 => Value::Array(
            (0..rng.random_range(1..5))
                .map(|_| Value::from(interesting(rng)))
                .collect(),
        ),
        9 => Value::Object(serde_json::Map::new()),
        10 => Value::from(rng.random_range(0..5u64)),
        _ => Value::from("default"),
    }
}

/// Every path to a leaf or container in `v`, as keys/indices.
fn paths(v: &Value, prefix: &mut Vec<PathKey>, out: &mut Vec<Vec<PathKey>>) {
    out.push(prefix.clone());
    match v {
        Value::Object(m) => {
            for (k, child) in m {
                prefix.push(PathKey::Key(k.clone()));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        Value::Array(a) => {
            // Long arrays (vocabularies, merges): a few elements only.
            for (i, child) in a.iter().enumerate().take(4) {
                prefix.push(PathKey::Index(i));
                paths(child, prefix, out);
                prefix.pop();
            }
        }
        _ => {}
    }
}

#[derive(Clone)]
enum PathKey {
    Key(String),
    Index(usize),
}

fn get_mut<'a>(v: &'a mut Value, path: &[PathKey]) -> Option<&'a mut Value> {
    let mut cur = v;
    for k in path {
        cur = match (k, cur) {
            (PathKey::Key(k), Value::Object(m)) => m.get_mut(k)?,
            (PathKey::Index(i), Value::Array(a)) => a.get_mut(*i)?,
            _ => return None,
        };
    }
    Some(cur)
}

/// Rewrites one field of `v`: a new value, a removal, a number nudged, or a field of
/// `extra_keys` (fields the parsers know) added at the top level.
pub fn json(rng: &mut StdRng, v: &mut Value, extra_keys: &[&str]) {
    if rng.random_range(0..4) == 0 && !extra_keys.is_empty() {
        if let Value::Object(m) = v {
            let k = extra_keys[rng.random_range(0..extra_keys.len())];
            let value = if rng.random_bool(0.3) {
                let mut inner = serde_json::Map::new();
                let k2 = extra_keys[rng.random_range(0..extra_keys.len())];
                inner.insert(k2.to_string(), odd_value(rng));
                Value::Object(inner)
            } else {
                odd_value(rng)
            };
            m.insert(k.to_string(), value);
            return;
        }
    }
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    let path = all[rng.random_range(0..all.len())].clone();
    match rng.random_range(0..4) {
        0 if !path.is_empty() => {
            let (last, parent) = path.split_last().expect("non-empty");
            if let Some(p) = get_mut(v, parent) {
                match (p, last) {
                    (Value::Object(m), PathKey::Key(k)) => {
                        m.remove(k);
                    }
                    (Value::Array(a), PathKey::Index(i)) if *i < a.len() => {
                        a.remove(*i);
                    }
                    _ => {}
                }
            }
        }
        1 => {
            if let Some(Value::Number(n)) = get_mut(v, &path).map(|x| &*x) {
                let x = n.as_u64().unwrap_or(1);
                let nudged = match rng.random_range(0..4) {
                    0 => x.wrapping_add(1),
                    1 => x.wrapping_sub(1),
                    2 => x.wrapping_mul(1 << rng.random_range(1..40)),
                    _ => 0,
                };
                if let Some(slot) = get_mut(v, &path) {
                    *slot = Value::from(nudged);
                }
            } else if let Some(slot) = get_mut(v, &path) {
                *slot = odd_value(rng);
            }
        }
        _ => {
            if let Some(slot) = get_mut(v, &path) {
                *slot = odd_value(rng);
            }
        }
    }
}

/// Fragments that text parsers trip on: multi-byte characters, every comment form, raw
/// strings, escapes, deep nesting.
const FRAGMENTS: [&str; 22] = [
    "é",
    "\u{1F600}",
    "\u{FEFF}",
    "/* é */",
    "/* /* nested */ */",
    "// ü\n",
    "/*",
    "*/",
    "\"",
    "\\",
    "r#\"x\"#",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    "\n",
    "\t",
    "18446744073709551616",
    "-1",
    "1e309",
];

/// One edit of a text, at a character boundary or (rarely) anywhere, keeping it a `String`
/// only as far as bytes allow.
pub fn text(rng: &mut StdRng, data: &mut Vec<u8>, words: &[&str]) {
    if rng.random_range(0..4) == 0 {
        havoc(rng, data);
        return;
    }
    let boundaries: Vec<usize> = match std::str::from_utf8(data) {
        Ok(s) => s.char_indices().map(|(i, _)| i).chain([s.len()]).collect(),
        Err(_) => (0..=data.len()).collect(),
    };
    let at = boundaries[rng.random_range(0..boundaries.len())];
    match rng.random_range(0..5) {
        0 | 1 => {
            let f = FRAGMENTS[rng.random_range(0..FRAGMENTS.len())];
            data.splice(at..at, f.bytes());
        }
        2 if !words.is_empty() => {
            let w = words[rng.random_range(0..words.len())];
            data.splice(at..at, w.bytes());
        }
        3 => {
            // Replace the run of digits or letters starting here.
            let end = data[at..]
                .iter()
                .position(|b| !b.is_ascii_alphanumeric() && *b != b'_' && *b != b'.')
                .map_or(data.len(), |p| at + p);
            let with = if rng.random_bool(0.5) {
                interesting(rng).to_string()
            } else {
                words
                    .get(rng.random_range(0..words.len().max(1)))
                    .unwrap_or(&"x")
                    .to_string()
            };
            data.splice(at..end, with.bytes());
        }
        _ => {
            // Delete up to the next boundary or a few characters.
            let later: Vec<usize> = boundaries
                .iter()
                .copied()
                .filter(|&b| b > at)
                .take(8)
                .collect();
            if let Some(&end) = later.get(rng.random_range(0..later.len().max(1))) {
                data.drain(at..end);
            }
        }
    }
}
