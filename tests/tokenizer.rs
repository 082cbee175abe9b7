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
