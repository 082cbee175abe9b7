//! `tokenizer.*` GGUF metadata for a tokenizer: written back unchanged when it came from a GGUF
//! file, built from the `tokenizer.json` form otherwise (byte-level BPE only, as llama.cpp's
//! `gpt2` tokenizer model).

use std::collections::BTreeMap;

use super::{gguf_pre, Tokenizer};
use crate::gguf::MetaValue;
use serde_json::Value;

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;

/// The key/values, in the order they are written. `vocab_size` is the model's (its embedding
/// rows): the token list must have exactly that many entries. `bos`/`eos` come from the graph.
pub fn gguf_metadata(
    tok: &Tokenizer,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Vec<(String, MetaValue)>, String> {
    if let Some(m) = tok.gguf_metadata() {
        return from_gguf(m, vocab_size);
    }
    let text = tok
        .hf()
        .ok_or("a SentencePiece tokenizer not read from GGUF cannot be written to GGUF")?
        .to_string(false)
        .map_err(|e| format!("cannot serialise: {e}"))?;
    let json: Value =
        serde_json::from_str(&text).map_err(|e| format!("cannot read its own JSON: {e}"))?;
    match tok.sentencepiece() {
        Some(sp) => from_sentencepiece(sp, &json, vocab_size, bos, eos),
        None => from_json(&json, vocab_size, bos, eos),
    }
}

/// A SentencePiece vocabulary as llama.cpp's converter writes it (`_set_vocab_sentencepiece`):
/// the pieces of `tokenizer.model` with their scores, padded to the model's vocabulary with
/// unused `[PAD{id}]` tokens; each added token of `tokenizer.json` (standing for
/// tokenizer_config.json's `added_tokens_decoder`, the same list) as a control token when special
/// or special-looking, else user-defined, with score -1000; BOS/EOS added as its post-processor
/// adds them.
fn from_sentencepiece(
    sp: &super::SentencePieceModel,
    j: &Value,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Vec<(String, MetaValue)>, String> {
    use super::sentencepiece::{looks_special, GGUF_CONTROL, GGUF_USER_DEFINED};
    if sp.pieces.len() > vocab_size {
        return Err(format!(
            "tokenizer.model has {} pieces but the model's vocabulary has {vocab_size}",
            sp.pieces.len()
        ));
    }
    let mut tokens: Vec<String> = (0..vocab_size).map(|i| format!("[PAD{i}]")).collect();
    let mut scores = vec![-10000f32; vocab_size];
    let mut types = vec![UNUSED; vocab_size];
    for (i, p) in sp.pieces.iter().enumerate() {
        tokens[i] = p.text.clone();
        scores[i] = p.score;
        types[i] = p.gguf_type();
    }
    for a in j
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let (Some(id), Some(text)) = (
            a.get("id").and_then(Value::as_u64),
            a.get("content").and_then(Value::as_str),
        ) else {
            return Err(format!("added token {a} has no id or content"));
        };
        let Some(i) = usize::try_from(id).ok().filter(|&i| i < vocab_size) else {
            return Err(format!(
                "added token '{text}' has id {id}, outside the model's vocabulary of {vocab_size}"
            ));
        };
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        if special || looks_special(text) {
            types[i] = GGUF_CONTROL;
            tokens[i] = text.to_string();
        } else {
            types[i] = GGUF_USER_DEFINED;
            tokens[i] = text.replace('\u{2581}', " ");
        }
        scores[i] = -1000.0;
    }
    let (add_bos, add_eos) = post_adds(j.get("post_processor").unwrap_or(&Value::Null))?;
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::String).collect());
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("llama".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            MetaValue::String("default".into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens)),
        (
            "tokenizer.ggml.scores".to_string(),
            MetaValue::Array(scores.into_iter().map(MetaValue::F32).collect()),
        ),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
    ];
    let ids = [
        ("bos_token_id", add_bos.or(bos)),
        ("eos_token_id", add_eos.or(eos)),
        ("unknown_token_id", sp.unknown_id()),
    ];
    for (key, id) in ids {
        if let Some(id) = id {
            out.push((format!("tokenizer.ggml.{key}"), MetaValue::U32(id)));
        }
    }
    out.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(add_bos.is_some()),
    ));
    if add_eos.is_some() {
        out.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(true)));
    }
    // llama.cpp prepends the space unless told otherwise.
    if !sp.add_dummy_prefix {
        out.push((
            "tokenizer.ggml.add_space_prefix".into(),
            MetaValue::Bool(false),
        ));
    }
    Ok(out)
}

fn from_gguf(
    m: &BTreeMap<String, MetaValue>,
    vocab_size: usize,
) -> Result<Vec<(String, MetaValue)>, String> {
    let n = m
        .get("tokenizer.ggml.tokens")
        .and_then(MetaValue::as_array)
        .map(<[MetaValue]>::len)
        .ok_or("tokenizer.ggml.tokens is missing")?;
    if n != vocab_size {
        return Err(format!(
            "tokenizer.ggml.tokens has {n} entries but the model's vocabulary has {vocab_size}"
        ));
    }
    Ok(m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
}

fn field<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(v, |v, k| v.get(k))
}

/// llama.cpp's pre-tokenizer name for the `pre_tokenizer` of a `tokenizer.json`.
fn pre_name(pre: &Value, ignore_merges: bool) -> Result<&'static str, String> {
    let ty = |v: &Value| {
        v.get("type")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let byte_level_ok = |v: &Value| {
        ty(v) == "ByteLevel"
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
            && !v
                .get("add_prefix_space")
                .and_then(Value::as_bool)
                .unwrap_or(false)
    };
    if byte_level_ok(pre) {
        return Ok("gpt-2");
    }
    if ty(pre) == "Sequence" {
        let steps = pre
            .get("pretokenizers")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        if let [d, b] = steps {
            let digits = ty(d) == "Digits"
                && d.get("individual_digits").and_then(Value::as_bool) == Some(true);
            if digits && byte_level_ok(b) {
                return Ok("smollm");
            }
        }
        // Regex splits (isolated, not inverted), then bytes without ByteLevel's own regex: the
        // form of Llama 3's and Qwen2's tokenizer.json, and of the tokenizers shrink rebuilds
        // from GGUF.
        if let [splits @ .., last] = steps {
            let bytes_only = ty(last) == "ByteLevel"
                && last.get("use_regex").and_then(Value::as_bool) == Some(false)
                && !last
                    .get("add_prefix_space")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            let regexes: Option<Vec<&str>> = splits
                .iter()
                .map(|s| {
                    let plain = ty(s) == "Split"
                        && s.get("behavior").and_then(Value::as_str) == Some("Isolated")
                        && s.get("invert").and_then(Value::as_bool) != Some(true);
                    plain
                        .then(|| field(s, "pattern.Regex").and_then(Value::as_str))
                        .flatten()
                })
                .collect();
            if let (true, Some(regexes)) = (bytes_only, regexes) {
                for name in SPLIT_PRE {
                    let Some(p) = gguf_pre(name) else { continue };
                    let hf = p.hf_regex.map(|r| vec![r]);
                    if regexes == p.regexes || Some(&regexes) == hf.as_ref() {
                        if p.ignore_merges != ignore_merges {
                            return Err(format!(
                                "its pre-tokenizer is llama.cpp's '{name}', which has \
                                 ignore_merges {}, but the BPE has {ignore_merges}",
                                p.ignore_merges
                            ));
                        }
                        return Ok(name);
                    }
                }
            }
        }
    }
    Err(format!(
        "pre-tokenizer {pre} has no llama.cpp equivalent shrink knows (ByteLevel with its regex \
         and no prefix space: 'gpt-2'; Digits(individual) then ByteLevel: 'smollm'; the regex \
         splits of 'llama-bpe', 'qwen2' or 'default' then ByteLevel without its regex)"
    ))
}

/// The GGUF pre-tokenizers written as regex splits, in the order they are recognised.
const SPLIT_PRE: [&str; 3] = ["llama-bpe", "qwen2", "default"];

/// What the post-processor adds around a single sequence: (BOS id, EOS id), each if any.
fn post_adds(pp: &Value) -> Result<(Option<u32>, Option<u32>), String> {
    let ty = pp.get("type").and_then(Value::as_str).unwrap_or("");
    match ty {
        "" if pp.is_null() => Ok((None, None)),
        "ByteLevel" => Ok((None, None)),
        "Sequence" => {
            let mut out = (None, None);
            for p in pp
                .get("processors")
                .and_then(Value::as_array)
                .map(Vec::as_slice)
                .unwrap_or(&[])
            {
                let (b, e) = post_adds(p)?;
                out = (out.0.or(b), out.1.or(e));
            }
            Ok(out)
        }
        "TemplateProcessing" => {
            let single = pp
                .get("single")
                .and_then(Value::as_array)
                .ok_or("post-processor TemplateProcessing has no 'single' template")?;
            let special_id = |piece: &Value| -> Result<Option<u32>, String> {
                let Some(name) = field(piece, "SpecialToken.id").and_then(Value::as_str) else {
                    return Ok(None);
                };
                let ids = pp
                    .get("special_tokens")
                    .and_then(|s| s.get(name))
                    .and_then(|s| s.get("ids"))
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("post-processor special token '{name}' has no ids"))?;
                match ids.as_slice() {
                    [id] => id
                        .as_u64()
                        .and_then(|i| u32::try_from(i).ok())
                        .map(Some)
                        .ok_or_else(|| format!("post-processor token '{name}' has id {id}")),
                    _ => Err(format!(
                        "post-processor special token '{name}' is {} ids; only one is supported",
                        ids.len()
                    )),
                }
            };
            let first = single.first().map(special_id).transpose()?.flatten();
            let last = if single.len() > 1 {
                single.last().map(special_id).transpose()?.flatten()
            } else {
                None
            };
            Ok((first, last))
        }
        other => Err(format!(
            "post-processor '{other}' is not supported (TemplateProcessing, ByteLevel, Sequence)"
        )),
    }
}

fn from_json(
    j: &Value,
    vocab_size: usize,
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<Vec<(String, MetaValue)>, String> {
    let model = j.get("model").ok_or("no 'model'")?;
    let mty = model.get("type").and_then(Value::as_str).unwrap_or("");
    if mty != "BPE" {
        return Err(format!(
            "model type '{mty}' is not supported for GGUF (byte-level BPE only)"
        ));
    }
    if model.get("byte_fallback").and_then(Value::as_bool) == Some(true) {
        return Err("BPE byte_fallback is not supported for GGUF (byte-level BPE only)".into());
    }
    for k in ["continuing_subword_prefix", "end_of_word_suffix"] {
        match model.get(k) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.is_empty() => {}
            Some(v) => return Err(format!("BPE option {k} = {v} is not supported for GGUF")),
        }
    }
    if !j.get("normalizer").is_none_or(Value::is_null) {
        return Err(format!(
            "normalizer {} is not supported for GGUF (byte-level BPE has none)",
            j["normalizer"]
        ));
    }
    let ignore_merges = model
        .get("ignore_merges")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let pre = pre_name(
        j.get("pre_tokenizer").unwrap_or(&Value::Null),
        ignore_merges,
    )?;

    // Tokens by id: the BPE vocabulary, then the added tokens.
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab_size];
    let mut put = |id: u64, text: &str, ty: i32| -> Result<(), String> {
        let i = usize::try_from(id)
            .ok()
            .filter(|&i| i < vocab_size)
            .ok_or_else(|| {
                format!(
                    "token '{text}' has id {id}, outside the model's vocabulary of {vocab_size}"
                )
            })?;
        tokens[i] = Some((text.to_string(), ty));
        Ok(())
    };
    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or("BPE model has no vocab")?;
    for (t, id) in vocab {
        let id = id
            .as_u64()
            .ok_or_else(|| format!("vocab entry '{t}' has id {id}"))?;
        put(id, t, NORMAL)?;
    }
    for a in j
        .get("added_tokens")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
    {
        let id = a
            .get("id")
            .and_then(Value::as_u64)
            .ok_or("added token without an id")?;
        let text = a
            .get("content")
            .and_then(Value::as_str)
            .ok_or("added token without content")?;
        let special = a.get("special").and_then(Value::as_bool).unwrap_or(false);
        put(id, text, if special { CONTROL } else { USER_DEFINED })?;
    }
    let (texts, types): (Vec<MetaValue>, Vec<MetaValue>) = tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| {
            let (text, ty) = t.unwrap_or_else(|| (format!("[PAD{i}]"), UNUSED));
            (MetaValue::String(text), MetaValue::I32(ty))
        })
        .unzip();

    let merges: Vec<MetaValue> = model
        .get("merges")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let pair = match m {
                Value::String(s) => s.clone(),
                Value::Array(p) => match p.as_slice() {
                    [Value::String(a), Value::String(b)] => {
                        if a.contains(' ') || b.contains(' ') {
                            return Err(format!("merge {i} {m} has a space in a part"));
                        }
                        format!("{a} {b}")
                    }
                    _ => return Err(format!("merge {i} is {m}, expected two strings")),
                },
                _ => return Err(format!("merge {i} is {m}, expected \"a b\" or [a, b]")),
            };
            Ok(MetaValue::String(pair))
        })
        .collect::<Result<_, String>>()?;

    let (add_bos, add_eos) = post_adds(j.get("post_processor").unwrap_or(&Value::Null))?;
    let bos = add_bos.or(bos);
    let mut out = vec![
        (
            "tokenizer.ggml.model".to_string(),
            MetaValue::String("gpt2".into()),
        ),
        (
            "tokenizer.ggml.pre".to_string(),
            MetaValue::String(pre.into()),
        ),
        ("tokenizer.ggml.tokens".to_string(), MetaValue::Array(texts)),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(types),
        ),
        (
            "tokenizer.ggml.merges".to_string(),
            MetaValue::Array(merges),
        ),
    ];
    if let Some(b) = bos {
        out.push(("tokenizer.ggml.bos_token_id".into(), MetaValue::U32(b)));
    }
    if let Some(e) = add_eos.or(eos) {
        out.push(("tokenizer.ggml.eos_token_id".into(), MetaValue::U32(e)));
    }
    out.push((
        "tokenizer.ggml.add_bos_token".into(),
        MetaValue::Bool(add_bos.is_some()),
    ));
    if add_eos.is_some() {
        out.push(("tokenizer.ggml.add_eos_token".into(), MetaValue::Bool(true)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pre_tokenizer_names() {
        let bl = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
        assert_eq!(pre_name(&bl, false).unwrap(), "gpt-2");
        let seq = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, bl]});
        assert_eq!(pre_name(&seq, false).unwrap(), "smollm");
        let split = json!({"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": "x"}}, {"type": "ByteLevel", "use_regex": false}]});
        assert!(pre_name(&split, false)
            .unwrap_err()
            .contains("no llama.cpp equivalent"));
        let prefix = json!({"type": "ByteLevel", "add_prefix_space": true, "use_regex": true});
        assert!(pre_name(&prefix, false).is_err());
    }

    #[test]
    fn post_processor_bos() {
        assert_eq!(post_adds(&Value::Null).unwrap(), (None, None));
        let t = json!({"type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}});
        assert_eq!(post_adds(&t).unwrap(), (Some(1), None));
        let seq = json!({"type": "Sequence", "processors": [{"type": "ByteLevel"}, t]});
        assert_eq!(post_adds(&seq).unwrap(), (Some(1), None));
        assert!(post_adds(&json!({"type": "BertProcessing"})).is_err());
    }

    fn tiny(merges: Value) -> Value {
        json!({
            "normalizer": null,
            "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "use_regex": true},
            "post_processor": null,
            "added_tokens": [
                {"id": 3, "content": "<s>", "special": true},
                {"id": 4, "content": "<tool>", "special": false}
            ],
            "model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": merges}
        })
    }

    #[test]
    fn tokens_are_padded_typed_and_merges_joined() {
        let get = |m: &[(String, MetaValue)], k: &str| {
            m.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone())
        };
        let strs = |v: &[&str]| {
            MetaValue::Array(v.iter().map(|s| MetaValue::String(s.to_string())).collect())
        };
        for merges in [json!([["a", "b"]]), json!(["a b"])] {
            let m = from_json(&tiny(merges), 6, Some(3), Some(3)).unwrap();
            assert_eq!(
                get(&m, "tokenizer.ggml.tokens"),
                Some(strs(&["a", "b", "ab", "<s>", "<tool>", "[PAD5]"]))
            );
            let types = [1, 1, 1, 3, 4, 5].map(MetaValue::I32).to_vec();
            assert_eq!(
                get(&m, "tokenizer.ggml.token_type"),
                Some(MetaValue::Array(types))
            );
            assert_eq!(get(&m, "tokenizer.ggml.merges"), Some(strs(&["a b"])));
            assert_eq!(
                get(&m, "tokenizer.ggml.pre"),
                Some(MetaValue::String("gpt-2".into()))
            );
            assert_eq!(
                get(&m, "tokenizer.ggml.bos_token_id"),
                Some(MetaValue::U32(3))
            );
            assert_eq!(
                get(&m, "tokenizer.ggml.add_bos_token"),
                Some(MetaValue::Bool(false))
            );
        }
        let e = from_json(&tiny(json!([])), 4, None, None).unwrap_err();
        assert!(
            e.contains("'<tool>' has id 4, outside the model's vocabulary of 4"),
            "{e}"
        );
        let mut j = tiny(json!([]));
        j["model"]["type"] = json!("Unigram");
        assert!(from_json(&j, 6, None, None)
            .unwrap_err()
            .contains("Unigram"));
        let mut j = tiny(json!([]));
        j["normalizer"] = json!({"type": "NFC"});
        assert!(from_json(&j, 6, None, None)
            .unwrap_err()
            .contains("normalizer"));
    }
}
