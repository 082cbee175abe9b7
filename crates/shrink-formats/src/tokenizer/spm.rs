//! llama.cpp's SentencePiece tokenizer, for GGUF files whose `tokenizer.ggml.model` is `llama`
//! (Llama 2, Mistral, Phi-3, Gemma 2/3): text is cut around special tokens, spaces become "▁",
//! then adjacent pieces are merged greedily by the score of the token they form, and a character
//! with no token falls back to its `<0xXX>` byte tokens. Written from llama.cpp's
//! `llm_tokenizer_spm_session` semantics and checked against its `llama-tokenize`.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
pub(super) const NORMAL: i32 = 1;
pub(super) const UNKNOWN: i32 = 2;
pub(super) const CONTROL: i32 = 3;
pub(super) const USER_DEFINED: i32 = 4;
pub(super) const BYTE: i32 = 6;

const SPACE: &str = "\u{2581}";

#[derive(Clone, Debug)]
pub(super) struct Spm {
    tokens: Vec<String>,
    scores: Vec<f32>,
    types: Vec<i32>,
    ids: HashMap<String, u32>,
    /// The token of each byte: `<0xXX>`, else the one-byte string.
    bytes: Vec<Option<u32>>,
    /// Control, unknown and user-defined tokens, longest text first: the order in which the text
    /// is cut around them.
    specials: Vec<Special>,
    /// Prepend a space to text at the start and after a special token.
    add_space_prefix: bool,
}

#[derive(Clone, Debug)]
struct Special {
    id: u32,
    /// Only when special-token text is parsed (control and unknown tokens).
    parsed_only: bool,
    /// Drop the whitespace after it (llama.cpp sets this for Phi-3's special tokens).
    rstrip: bool,
}

/// A piece of the text after cutting around special tokens.
enum Fragment<'t> {
    Text(&'t str),
    Token(u32),
}

impl Spm {
    /// `rstrip_specials`: llama.cpp's rule for models named Phi-3 (every special token but
    /// `<unk>`, `<s>` and `<|endoftext|>`, and `</s>`, swallows the whitespace after it).
    pub(super) fn new(
        tokens: Vec<String>,
        scores: Vec<f32>,
        types: Vec<i32>,
        add_space_prefix: bool,
        rstrip_specials: bool,
    ) -> Result<Spm, String> {
        let n = tokens.len();
        if scores.len() != n || types.len() != n {
            return Err(format!(
                "{n} tokens but {} scores and {} token types",
                scores.len(),
                types.len()
            ));
        }
        if let Some(i) = scores.iter().position(|s| !s.is_finite()) {
            return Err(format!(
                "tokenizer.ggml.scores[{i}] is {}, not finite",
                scores[i]
            ));
        }
        let mut ids = HashMap::with_capacity(n);
        for (i, t) in tokens.iter().enumerate() {
            if let Some(first) = ids.insert(t.clone(), i as u32) {
                return Err(format!(
                    "tokenizer.ggml.tokens[{i}] '{t}' repeats token {first}"
                ));
            }
        }
        let mut bytes = vec![None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = ids.get(&format!("<0x{b:02X}>")).copied().or_else(|| {
                (b < 0x80)
                    .then(|| ids.get(&(b as u8 as char).to_string()).copied())
                    .flatten()
            });
        }
        let mut specials: Vec<Special> = types
            .iter()
            .enumerate()
            .filter(|(_, &t)| matches!(t, CONTROL | UNKNOWN | USER_DEFINED))
            .map(|(i, &t)| {
                let text = tokens[i].as_str();
                let rstrip = rstrip_specials
                    && (text == "</s>" || !matches!(text, "<unk>" | "<s>" | "<|endoftext|>"));
                Special {
                    id: i as u32,
                    parsed_only: t != USER_DEFINED,
                    rstrip,
                }
            })
            .filter(|s| !tokens[s.id as usize].is_empty())
            .collect();
        specials.sort_by_key(|s| std::cmp::Reverse(tokens[s.id as usize].len()));
        Ok(Spm {
            tokens,
            scores,
            types,
            ids,
            bytes,
            specials,
            add_space_prefix,
        })
    }

    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    pub(super) fn token_to_id(&self, token: &str) -> Option<u32> {
        self.ids.get(token).copied()
    }

    pub(super) fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(String::as_str)
    }

    pub(super) fn encode(&self, text: &str, parse_special: bool) -> Result<Vec<u32>, String> {
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_special = true;
        for fragment in self.partition(text, parse_special) {
            match fragment {
                Fragment::Text(t) => {
                    let mut s = String::with_capacity(t.len() + 3);
                    if self.add_space_prefix && after_special {
                        s.push(' ');
                    }
                    s.push_str(t);
                    self.merge(&s.replace(' ', SPACE), &mut out)?;
                    after_special = false;
                }
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
            }
        }
        Ok(out)
    }

    /// Cuts `text` around every special token, longest first, as llama.cpp does.
    fn partition<'t>(&self, text: &'t str, parse_special: bool) -> Vec<Fragment<'t>> {
        let mut frags = if text.is_empty() {
            Vec::new()
        } else {
            vec![Fragment::Text(text)]
        };
        for sp in &self.specials {
            if sp.parsed_only && !parse_special {
                continue;
            }
            let needle = self.tokens[sp.id as usize].as_str();
            let mut next = Vec::with_capacity(frags.len());
            for f in frags {
                let Fragment::Text(mut rest) = f else {
                    next.push(f);
                    continue;
                };
                while let Some(at) = rest.find(needle) {
                    if at > 0 {
                        next.push(Fragment::Text(&rest[..at]));
                    }
                    next.push(Fragment::Token(sp.id));
                    rest = &rest[at + needle.len()..];
                    if sp.rstrip {
                        rest = rest.trim_start_matches(|c: char| c.is_ascii_whitespace());
                    }
                }
                if !rest.is_empty() {
                    next.push(Fragment::Text(rest));
                }
            }
            frags = next;
        }
        frags
    }

    /// Greedy merging by score (ties to the leftmost pair), then bytes for what has no token.
    fn merge(&self, text: &str, out: &mut Vec<u32>) -> Result<(), String> {
        let mut syms: Vec<Symbol> = text
            .char_indices()
            .map(|(start, c)| Symbol {
                start,
                len: c.len_utf8(),
                prev: None,
                next: None,
            })
            .collect();
        let n = syms.len();
        for (i, s) in syms.iter_mut().enumerate() {
            s.prev = i.checked_sub(1);
            s.next = (i + 1 < n).then_some(i + 1);
        }
        let mut queue = BinaryHeap::new();
        let bigram = |syms: &[Symbol], left: usize, right: usize| -> Option<Bigram> {
            let start = syms[left].start;
            let size = syms[left].len + syms[right].len;
            let id = *self.ids.get(&text[start..start + size])?;
            Some(Bigram {
                score: self.scores[id as usize],
                left,
                right,
                size,
            })
        };
        for i in 1..n {
            queue.extend(bigram(&syms, i - 1, i));
        }
        while let Some(b) = queue.pop() {
            let (l, r) = (&syms[b.left], &syms[b.right]);
            if l.len == 0 || r.len == 0 || l.len + r.len != b.size {
                continue;
            }
            let right_next = r.next;
            syms[b.left].len = b.size;
            syms[b.right].len = 0;
            syms[b.left].next = right_next;
            if let Some(rn) = right_next {
                syms[rn].prev = Some(b.left);
            }
            if let Some(p) = syms[b.left].prev {
                queue.extend(bigram(&syms, p, b.left));
            }
            if let Some(rn) = right_next {
                queue.extend(bigram(&syms, b.left, rn));
            }
        }
        let mut at = (n > 0).then_some(0);
        while let Some(i) = at {
            let s = &syms[i];
            let piece = &text[s.start..s.start + s.len];
            match self.ids.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for &b in piece.as_bytes() {
                        out.push(self.bytes[b as usize].ok_or_else(|| {
                            format!("byte 0x{b:02X} of '{piece}' has no token (no <0x{b:02X}>)")
                        })?);
                    }
                }
            }
            at = s.next;
        }
        Ok(())
    }

    /// Text of `ids`: "▁" as a space, byte tokens as their bytes, the space the encoder
    /// prepended removed.
    pub(super) fn decode(&self, ids: &[u32]) -> Result<String, String> {
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let text = self
                .id_to_token(id)
                .ok_or_else(|| format!("token id {id} is outside the vocabulary"))?;
            match self.types[id as usize] {
                BYTE => bytes.push(
                    text.strip_prefix("<0x")
                        .and_then(|h| h.strip_suffix('>'))
                        .and_then(|h| u8::from_str_radix(h, 16).ok())
                        .ok_or_else(|| format!("byte token {id} '{text}' is not <0xXX>"))?,
                ),
                NORMAL | USER_DEFINED => bytes.extend(text.replace(SPACE, " ").bytes()),
                _ => bytes.extend(text.bytes()),
            }
        }
        let start = usize::from(self.add_space_prefix && bytes.first() == Some(&b' '));
        Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
    }
}

impl Spm {
    /// The same tokenizer as a `tokenizers` pipeline, as `tokenizer.json` writes it (Llama 2's
    /// form): BPE over the vocabulary with byte fallback, one merge for every split of a token
    /// into two tokens, ranked by the score of the token formed (ties: the lower id, then the
    /// lower left id), so that BPE's lowest-rank-first merging is this greedy merging by score;
    /// spaces as "▁", and "▁" prepended to each text segment when `add_space_prefix`; control
    /// and unknown tokens special (cut when special text is parsed), user-defined ones always
    /// cut, both matched on the raw text.
    pub(super) fn to_hf(&self) -> Result<tokenizers::Tokenizer, String> {
        use tokenizers::decoders::{
            byte_fallback::ByteFallback, fuse::Fuse, sequence::Sequence as Decoders, strip::Strip,
        };
        use tokenizers::models::bpe::BPE;
        use tokenizers::normalizers::{
            NormalizerWrapper, Prepend, Replace, Sequence as Normalizers,
        };
        use tokenizers::AddedToken;

        let mut ranked: Vec<(f32, u32, u32, &str, &str)> = Vec::new();
        for (id, t) in self.tokens.iter().enumerate() {
            for (k, _) in t.char_indices().skip(1) {
                let (l, r) = (&t[..k], &t[k..]);
                if let (Some(&li), Some(_)) = (self.ids.get(l), self.ids.get(r)) {
                    ranked.push((self.scores[id], id as u32, li, l, r));
                }
            }
        }
        ranked.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        let merges = ranked
            .into_iter()
            .map(|(.., l, r)| (l.to_string(), r.to_string()))
            .collect();
        let vocab: tokenizers::models::bpe::Vocab = self
            .tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let mut bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .byte_fallback(true)
            .fuse_unk(true);
        if let Some(i) = self.types.iter().position(|&t| t == UNKNOWN) {
            bpe = bpe.unk_token(self.tokens[i].clone());
        }
        let bpe = bpe.build().map_err(|e| format!("cannot build BPE: {e}"))?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let replace = |from: &str, to: &str| {
            Replace::new(from, to).map_err(|e| format!("cannot build a replacement: {e}"))
        };
        let space = replace(" ", SPACE)?;
        let normalizer: NormalizerWrapper = if self.add_space_prefix {
            Normalizers::new(vec![Prepend::new(SPACE.to_string()).into(), space.into()]).into()
        } else {
            space.into()
        };
        inner.with_normalizer(Some(normalizer));
        let mut decoders = vec![
            replace(SPACE, " ")?.into(),
            ByteFallback::new().into(),
            Fuse::new().into(),
        ];
        if self.add_space_prefix {
            decoders.push(Strip::new(' ', 1, 0).into());
        }
        inner.with_decoder(Some(Decoders::new(decoders)));
        let added = |parsed_only: bool| -> Vec<AddedToken> {
            self.specials
                .iter()
                .filter(|sp| sp.parsed_only == parsed_only)
                .map(|sp| {
                    AddedToken::from(self.tokens[sp.id as usize].clone(), parsed_only)
                        .normalized(false)
                        .rstrip(sp.rstrip)
                })
                .collect()
        };
        inner.add_special_tokens(&added(true));
        inner.add_tokens(&added(false));
        Ok(inner)
    }
}

struct Symbol {
    start: usize,
    /// Bytes; 0 once merged into its left neighbour.
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

struct Bigram {
    score: f32,
    left: usize,
    right: usize,
    size: usize,
}

// Max-heap order: the higher score first, then the leftmost.
impl Ord for Bigram {
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny() -> Spm {
        let tokens = ["<unk>", "<s>", "▁", "a", "b", "ab", "▁ab", "<0x63>", "<x>"];
        let scores = vec![0.0, 0.0, -1.0, -2.0, -2.0, -0.5, -0.1, 0.0, 0.0];
        let types = vec![2, 3, 1, 1, 1, 1, 1, 6, 4];
        Spm::new(
            tokens.iter().map(|t| t.to_string()).collect(),
            scores,
            types,
            true,
            false,
        )
        .unwrap()
    }

    #[test]
    fn merges_by_score_and_falls_back_to_bytes() {
        let t = tiny();
        // " ab" → "▁ab"; "c" has no token but its byte; "<x>" is user-defined: always cut.
        assert_eq!(t.encode("ab", false).unwrap(), vec![6]);
        assert_eq!(t.encode("abc<x>a", false).unwrap(), vec![6, 7, 8, 2, 3]);
        // "<s>" is text unless special tokens are parsed.
        assert_eq!(t.encode("<s>", true).unwrap(), vec![1]);
        assert!(t.encode("é", false).unwrap_err().contains("0xC3"));
        assert_eq!(t.decode(&[6, 7, 3]).unwrap(), "abca");
    }

    #[test]
    fn the_tokenizer_json_form_merges_and_cuts_as_the_original() {
        let t = tiny();
        let mut hf = t.to_hf().unwrap();
        for (text, parse) in [
            ("ab", false),
            ("abc<x>a", false),
            ("<s>ab", true),
            ("a b", false),
        ] {
            hf.set_encode_special_tokens(!parse);
            let got = hf.encode(text, false).unwrap().get_ids().to_vec();
            assert_eq!(got, t.encode(text, parse).unwrap(), "{text:?}");
        }
        // "▁ab" (-0.1) outranks "ab" (-0.5): the merges are ranked by the score formed.
        let json: serde_json::Value = serde_json::from_str(&hf.to_string(false).unwrap()).unwrap();
        assert_eq!(json["model"]["merges"][0], serde_json::json!(["▁", "ab"]));
    }

    #[test]
    fn repeated_tokens_and_bad_scores_are_refused() {
        let s = |v: &[&str]| v.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        let e = Spm::new(s(&["a", "a"]), vec![0.0; 2], vec![1; 2], true, false).unwrap_err();
        assert!(e.contains("tokens[1] 'a' repeats token 0"), "{e}");
        let e = Spm::new(s(&["a"]), vec![f32::NAN], vec![1], true, false).unwrap_err();
        assert!(e.contains("scores[0]"), "{e}");
    }
}
