//! Tokenizers against their references: transformers for tokenizer.json, and the GGUF-rebuilt
//! tokenizer against the same vocabulary.

use shrink_formats::Tokenizer;

use crate::common::fixture;

fn golden(path: &str) -> Vec<(String, Vec<u32>)> {
    let text = std::fs::read_to_string(fixture(path)).expect("golden");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    v.as_array()
        .expect("list")
        .iter()
        .map(|e| {
            (
                e["text"].as_str().expect("text").to_string(),
                e["ids"]
                    .as_array()
                    .expect("ids")
                    .iter()
                    .map(|i| i.as_u64().expect("id") as u32)
                    .collect(),
            )
        })
        .collect()
}

fn check(tok: &mut Tokenizer, cases: &[(String, Vec<u32>)], parse_special: bool) {
    assert!(!cases.is_empty());
    for (text, want) in cases {
        let got = tok.encode(text, parse_special).expect("encode");
        assert_eq!(&got, want, "tokens of {text:?}");
    }
}

#[test]
fn tokenizer_json_matches_transformers() {
    let mut tok = Tokenizer::from_file(&fixture("tiny-llama/tokenizer.json")).expect("tokenizer");
    // transformers recognises special-token text by default.
    check(&mut tok, &golden("tiny-tokenizer-golden.json"), true);
}

#[test]
fn gguf_tokenizer_matches_transformers() {
    let file =
        shrink_formats::gguf::GgufFile::open(&fixture("tiny-llama/tiny-llama.gguf")).expect("gguf");
    let mut tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    check(&mut tok, &golden("tiny-tokenizer-golden.json"), true);
}

#[test]
fn special_token_text_is_plain_text_unless_asked() {
    let mut tok = Tokenizer::from_file(&fixture("tiny-llama/tokenizer.json")).expect("tokenizer");
    let text = "a <|endoftext|> b";
    assert!(tok.encode(text, true).expect("encode").contains(&0));
    assert!(!tok.encode(text, false).expect("encode").contains(&0));
}

#[test]
fn decode_inverts_encode() {
    let mut tok = Tokenizer::from_file(&fixture("tiny-llama/tokenizer.json")).expect("tokenizer");
    for text in ["Hello there, 2024!", "  spaces\n\nand lines", "café — 東京"] {
        let ids = tok.encode(text, false).expect("encode");
        assert_eq!(tok.decode(&ids).expect("decode"), text);
    }
}

/// Each vocabulary-only GGUF of llama.cpp's source tree (`scripts/fetch-llamacpp-vocab.sh`)
/// tokenizes llama.cpp's test texts, ours and chat-like texts exactly as `llama-tokenize` does
/// (`fixtures/vocab/make_llamacpp_tokens.py`), with special-token text parsed and not.
fn check_llamacpp_vocab(name: &str) {
    let (file, cases) = llamacpp_vocab(name);
    let mut tok = Tokenizer::from_gguf(&file).expect("tokenizer");
    check_cases(name, &mut tok, &cases);
    // Decoding gives the text back (BOS/EOS, which have none, left out), but around
    // tiny-llama-spm's user-defined `<tool>`: SentencePiece prepends a space again after it, as
    // llama.cpp does, and decoding keeps that space.
    let plain = |id: &u32| Some(*id) != tok.bos_to_add() && Some(*id) != tok.eos_to_add();
    for (text, parse, ids) in &cases {
        if !parse && !text.contains("<tool>") {
            let ids: Vec<u32> = ids.iter().copied().filter(plain).collect();
            assert_eq!(&tok.decode(&ids).expect("decode"), text, "{name}: decode");
        }
    }
}

/// A vocabulary GGUF and its llama.cpp cases: (text, parse_special, ids).
fn llamacpp_vocab(
    name: &str,
) -> (
    shrink_formats::gguf::GgufFile,
    Vec<(String, bool, Vec<u32>)>,
) {
    let golden: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture(&format!("vocab/{name}.json"))).expect("golden"),
    )
    .expect("json");
    let file_name = golden["vocab"].as_str().expect("vocab");
    // Our own SentencePiece fixture's file is the one llama.cpp's converter wrote.
    let path = if name.starts_with("tiny-") {
        fixture("converter").join(file_name)
    } else {
        crate::common::repo().join("models/vocab").join(file_name)
    };
    let mut file = shrink_formats::gguf::GgufFile::open(&path)
        .unwrap_or_else(|e| panic!("{e} (run scripts/fetch-llamacpp-vocab.sh)"));
    if let Some(pre) = name.strip_suffix("-default").map(|_| "default") {
        file.metadata.insert(
            "tokenizer.ggml.pre".into(),
            shrink_formats::gguf::MetaValue::String(pre.into()),
        );
    }
    let cases: Vec<_> = golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .map(|c| {
            let ids = c["ids"].as_array().expect("ids").iter();
            (
                c["text"].as_str().expect("text").to_string(),
                c["parse_special"].as_bool().expect("parse_special"),
                ids.map(|i| i.as_u64().expect("id") as u32).collect(),
            )
        })
        .collect();
    assert!(cases.len() > 100, "{name}: {} cases", cases.len());
    (file, cases)
}

fn check_cases(name: &str, tok: &mut Tokenizer, cases: &[(String, bool, Vec<u32>)]) {
    let mut wrong = Vec::new();
    for (text, parse, want) in cases {
        let got = tok.encode(text, *parse).expect("encode");
        if &got != want {
            wrong.push(format!(
                "{text:?} (parse_special {parse}):\n  got  {got:?}\n  want {want:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{name}: {} of {} differ from llama.cpp:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// Llama 3's and Qwen2's tokenizers as their tokenizer.json writes them (Hugging Face's
/// original regex, with `(?i:…)`) tokenize as llama.cpp does, and GGUF export names their
/// pre-tokenizer so that llama.cpp's rebuild from that metadata tokenizes the same again.
#[test]
fn hub_tokenizer_json_of_llama3_and_qwen2_round_trips_through_gguf() {
    use shrink_formats::gguf::MetaValue;
    for (name, pre) in [("llama-bpe", "llama-bpe"), ("qwen2", "qwen2")] {
        let (mut file, cases) = llamacpp_vocab(name);
        let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
        let mut json: serde_json::Value =
            serde_json::from_str(&tok.hf().expect("bpe").to_string(false).expect("json"))
                .expect("json");
        let split = &mut json["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"];
        let hub = split.as_str().expect("regex").replace(
            "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])",
            "(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        );
        assert_ne!(split.as_str(), Some(hub.as_str()));
        *split = serde_json::Value::String(hub);
        let dir = crate::common::scratch(&format!("tokenizer-{name}"));
        let path = dir.join("tokenizer.json");
        std::fs::write(&path, json.to_string()).expect("write");
        let mut hub_tok = Tokenizer::from_file(&path).expect("tokenizer.json");
        // tokenizer.json adds BOS through its post-processor, which this one has none of.
        let bos = tok.bos_to_add();
        let no_bos: Vec<_> = cases
            .iter()
            .map(|(t, p, ids)| {
                let ids = ids.iter().copied().skip(usize::from(bos.is_some()));
                (t.clone(), *p, ids.collect())
            })
            .collect();
        check_cases(name, &mut hub_tok, &no_bos);
        let meta = shrink_formats::tokenizer::gguf_metadata(&hub_tok, tok.vocab_size(), bos, None)
            .expect("gguf metadata");
        let get = |k: &str| {
            meta.iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            get("tokenizer.ggml.pre"),
            Some(MetaValue::String(pre.into()))
        );
        file.metadata.retain(|k, _| !k.starts_with("tokenizer."));
        file.metadata.extend(meta);
        let mut again = Tokenizer::from_gguf(&file).expect("rebuilt");
        check_cases(name, &mut again, &no_bos);
    }
}

#[test]
fn gguf_gpt2_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("gpt-2");
}

#[test]
fn gguf_default_pre_tokenizer_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("gpt-2-default");
}

#[test]
fn gguf_starcoder_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("starcoder");
}

#[test]
fn gguf_llama3_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("llama-bpe");
}

#[test]
fn gguf_qwen2_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("qwen2");
}

#[test]
fn gguf_sentencepiece_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("llama-spm");
}

#[test]
fn gguf_phi3_sentencepiece_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("phi-3");
}

#[test]
fn gguf_sentencepiece_of_llama_cpps_converter_tokenizes_as_llama_cpp() {
    check_llamacpp_vocab("tiny-llama-spm");
}

/// A Hugging Face model with a SentencePiece `tokenizer.model` (tiny-llama-spm) exports to GGUF
/// with the tokenizer metadata llama.cpp's converter writes for it, key for key, so llama.cpp
/// tokenizes shrink's file as it tokenizes the converter's; its Hugging Face export keeps the
/// `tokenizer.model`.
#[test]
fn sentencepiece_tokenizer_exports_to_gguf_as_llama_cpps_converter_writes_it() {
    use shrink_formats::gguf::GgufFile;
    let loaded = shrink_import::load(&fixture("tiny-llama-spm")).expect("load");
    let tok = loaded.tokenizer.expect("tokenizer");
    assert_eq!(
        tok.sentencepiece().expect("tokenizer.model").pieces.len(),
        640
    );
    let proof = loaded.model.verify().expect("verify");
    let dir = crate::common::scratch("sentencepiece-gguf");
    let path = dir.join("tiny-llama-spm.gguf");
    shrink_export::gguf::write(&loaded.model, &proof, &tok, &path).expect("export");
    let ours = GgufFile::open(&path).expect("ours");
    let theirs = GgufFile::open(&fixture("converter/tiny-llama-spm.gguf")).expect("converter");
    let keys = |f: &GgufFile| -> Vec<String> {
        f.metadata
            .keys()
            .filter(|k| k.starts_with("tokenizer."))
            .cloned()
            .collect()
    };
    // The converter also writes add_sep_token (false), which only BERT-style vocabularies read.
    let mut want = keys(&theirs);
    want.retain(|k| k != "tokenizer.ggml.add_sep_token");
    assert_eq!(keys(&ours), want);
    for k in &want {
        assert_eq!(ours.metadata[k], theirs.metadata[k], "{k}");
    }
    let (_, cases) = llamacpp_vocab("tiny-llama-spm");
    let mut again = Tokenizer::from_gguf(&ours).expect("tokenizer");
    check_cases("shrink's GGUF of tiny-llama-spm", &mut again, &cases);

    let hf = dir.join("hf");
    shrink_export::hf::write(&loaded.model, &proof, Some(&tok), &hf).expect("hf export");
    assert_eq!(
        std::fs::read(hf.join("tokenizer.model")).expect("tokenizer.model"),
        std::fs::read(fixture("tiny-llama-spm/tokenizer.model")).expect("fixture")
    );
}

/// llama.cpp's SentencePiece, written as tokenizer.json (a BPE with byte fallback), tokenizes
/// each SentencePiece vocabulary's llama.cpp cases as llama-tokenize does, BOS and EOS added as
/// the GGUF says (export writes them as the post-processor).
#[test]
fn sentencepiece_from_gguf_written_as_tokenizer_json_tokenizes_as_llama_cpp() {
    for name in ["llama-spm", "phi-3", "tiny-llama-spm"] {
        let (file, cases) = llamacpp_vocab(name);
        let tok = Tokenizer::from_gguf(&file).expect("tokenizer");
        let json = tok
            .to_hf()
            .expect("tokenizer.json")
            .to_string(false)
            .expect("json");
        let path = crate::common::scratch(&format!("spm-json-{name}")).join("tokenizer.json");
        std::fs::write(&path, json).expect("write");
        let mut back = Tokenizer::from_file(&path).expect("read back");
        let mut wrong = Vec::new();
        for (text, parse, want) in &cases {
            let mut got: Vec<u32> = tok.bos_to_add().into_iter().collect();
            got.extend(back.encode(text, *parse).expect("encode"));
            got.extend(tok.eos_to_add());
            if &got != want {
                wrong.push(format!(
                    "{text:?} (parse_special {parse}): {got:?} != {want:?}"
                ));
            }
        }
        assert!(
            wrong.is_empty(),
            "{name}: {} of {} differ:\n{}",
            wrong.len(),
            cases.len(),
            wrong.join("\n")
        );
    }
}

/// A GGUF model with a SentencePiece tokenizer (llama.cpp's converter's tiny-llama-spm) exports
/// to a Hugging Face directory whose tokenizer.json gives llama.cpp's tokens, BOS included.
#[test]
fn sentencepiece_gguf_model_exports_to_hugging_face_with_its_tokens() {
    let loaded = shrink_import::load(&fixture("converter/tiny-llama-spm.gguf")).expect("load");
    let proof = loaded.model.verify().expect("verify");
    let tok = loaded.tokenizer.as_ref().expect("tokenizer");
    let dir = crate::common::scratch("spm-gguf-to-hf");
    shrink_export::hf::write(&loaded.model, &proof, Some(tok), &dir).expect("hf export");
    let back = shrink_import::load(&dir).expect("reload");
    let (_, cases) = llamacpp_vocab("tiny-llama-spm");
    check_cases(
        "the Hugging Face export of tiny-llama-spm's GGUF",
        &mut back.tokenizer.expect("tokenizer"),
        &cases,
    );
}
