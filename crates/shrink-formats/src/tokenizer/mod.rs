//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate, or a byte-level BPE
//! rebuilt from GGUF metadata that tokenizes exactly as llama.cpp does.

mod sentencepiece;
mod spm;
mod to_gguf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, SplitDelimiterBehavior};

use crate::gguf::{GgufFile, MetaValue, OptionalKey};

pub use sentencepiece::SentencePieceModel;
pub use to_gguf::gguf_metadata;

/// A tokenizer that cannot be read or rebuilt, naming its file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("{}: tokenizer: {}", .path.display(), .message.replace('\r', "\\r").replace('\n', "\\n"))]
    Invalid { path: PathBuf, message: String },
    #[error(transparent)]
    Gguf(#[from] crate::gguf::GgufError),
}

type Result<T> = std::result::Result<T, TokenizerError>;

/// GGUF pre-tokenizer names this module reproduces (`tokenizer.ggml.pre` of a `gpt2` model).
pub const SUPPORTED_GGUF_PRE: &str =
    "gpt-2, smollm, starcoder, refact, llama-bpe (llama3, llama-v3), qwen2, default";

/// The GPT-2 split as llama.cpp writes it (HF's ByteLevel regex without its last `\s+`, which
/// changes no split).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

/// llama.cpp's pre-tokenizer for a `tokenizer.ggml.pre` (`llm_tokenizer_bpe`): its regexes, each
/// splitting the pieces of the one before, whether a whole word in the vocabulary skips the
/// merges, and whether BOS is added when the file does not say.
pub(super) struct GgufPre {
    pub regexes: &'static [&'static str],
    /// The same split as `tokenizer.json` writes it (Hugging Face's original regex), if other.
    pub hf_regex: Option<&'static str>,
    pub ignore_merges: bool,
    pub add_bos: bool,
}

pub(super) fn gguf_pre(name: &str) -> Option<GgufPre> {
    let pre = |regexes, hf_regex, ignore_merges, add_bos| GgufPre {
        regexes,
        hf_regex,
        ignore_merges,
        add_bos,
    };
    Some(match name {
        // "gpt2": what shrink before 2026-12-03 wrote for "gpt-2".
        "gpt-2" | "gpt2" | "phi-2" => pre(&[GPT2_REGEX], None, false, false),
        "smollm" | "starcoder" | "refact" => pre(&[r"\p{N}", GPT2_REGEX], None, false, false),
        "llama-bpe" | "llama3" | "llama-v3" => pre(
            &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Some(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            true,
            true,
        ),
        "qwen2" | "deepseek-r1-qwen" => pre(
            &[
                r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ],
            Some(
                r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
            ),
            false,
            false,
        ),
        // llama.cpp's fallback when a file names none.
        "default" => pre(
            &[
                r"[\p{P}\$\+<=>\^~\|]+",
                GPT2_REGEX,
                r"\p{N}+",
                "[0-9][0-9][0-9]",
            ],
            None,
            false,
            false,
        ),
        _ => return None,
    })
}

/// The tokenizer behind a [`Tokenizer`].
#[derive(Clone)]
enum Model {
    /// A `tokenizers` pipeline: a `tokenizer.json`, or a byte-level BPE rebuilt from GGUF.
    Hf(Box<tokenizers::Tokenizer>),
    /// llama.cpp's SentencePiece from GGUF.
    Spm(spm::Spm),
}

#[derive(Clone)]
pub struct Tokenizer {
    model: Model,
    /// Prepend this id to every encoded text (GGUF's `add_bos_token`).
    bos_to_add: Option<u32>,
    /// Append this id to every encoded text (GGUF's `add_eos_token`).
    eos_to_add: Option<u32>,
    /// Let the tokenizer's own post-processor add special tokens (tokenizer.json).
    post_process: bool,
    /// The `tokenizer.*` metadata of the GGUF file it was rebuilt from (exporters write it back
    /// unchanged); `None` for a `tokenizer.json`.
    gguf_metadata: Option<BTreeMap<String, MetaValue>>,
    /// The SentencePiece `tokenizer.model` beside a `tokenizer.json`, if any: its scores are what
    /// GGUF export writes for a SentencePiece vocabulary.
    sentencepiece: Option<std::sync::Arc<SentencePieceModel>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("bos_to_add", &self.bos_to_add)
            .finish()
    }
}

impl Tokenizer {
    /// Reads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        let inner =
            tokenizers::Tokenizer::from_file(path).map_err(|e| TokenizerError::Invalid {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        Ok(Tokenizer {
            model: Model::Hf(Box::new(inner)),
            bos_to_add: None,
            eos_to_add: None,
            post_process: true,
            gguf_metadata: None,
            sentencepiece: None,
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes (`tokenizer.ggml.*`) as llama.cpp reads it:
    /// byte-level BPE (`gpt2`) with the pre-tokenizers of [`SUPPORTED_GGUF_PRE`], or
    /// SentencePiece (`llama`).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let err = |message: String| TokenizerError::Invalid {
            path: file.path.clone(),
            message,
        };
        let opt = |key: &str| file.metadata.contains_key(key);
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let types = if opt("tokenizer.ggml.token_type") {
            file.get_i32_array("tokenizer.ggml.token_type")?
        } else {
            vec![spm::NORMAL; tokens.len()]
        };
        if types.len() != tokens.len() {
            return Err(err(format!(
                "tokenizer.ggml.token_type has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        let types = control_by_name(&tokens, types);
        let (model, add_bos_default) = match file.get_str("tokenizer.ggml.model")? {
            "gpt2" => {
                let (inner, add_bos) = bpe_from_gguf(file, &tokens, &types).map_err(err)?;
                (Model::Hf(Box::new(inner)), add_bos)
            }
            "llama" => {
                let scores = file.get_f32_array("tokenizer.ggml.scores")?;
                let add_space_prefix = if opt("tokenizer.ggml.add_space_prefix") {
                    file.get_bool("tokenizer.ggml.add_space_prefix")?
                } else {
                    true
                };
                // llama.cpp marks the special tokens of a model named Phi-3 as eating the
                // whitespace after them.
                let name = file
                    .get_str("general.name")
                    .optional()?
                    .unwrap_or_default()
                    .to_lowercase();
                let phi3 = name.contains("phi-3") || name.contains("phi3");
                let tokens = tokens.iter().map(|t| t.to_string()).collect();
                let spm =
                    spm::Spm::new(tokens, scores, types, add_space_prefix, phi3).map_err(err)?;
                (Model::Spm(spm), true)
            }
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.model '{other}' is not supported (byte-level BPE 'gpt2', \
                     SentencePiece 'llama')"
                )))
            }
        };
        let flag = |key: &str, default: bool| -> Result<bool> {
            Ok(if opt(key) {
                file.get_bool(key)?
            } else {
                default
            })
        };
        let special = |key: &str, wanted: bool| -> Result<Option<u32>> {
            if !wanted {
                return Ok(None);
            }
            let id = file.get_u32(key)?;
            if id as usize >= tokens.len() {
                return Err(err(format!(
                    "{key} is {id}, outside the {} tokens",
                    tokens.len()
                )));
            }
            Ok(Some(id))
        };
        let bos_to_add = special(
            "tokenizer.ggml.bos_token_id",
            flag("tokenizer.ggml.add_bos_token", add_bos_default)?,
        )?;
        let eos_to_add = special(
            "tokenizer.ggml.eos_token_id",
            flag("tokenizer.ggml.add_eos_token", false)?,
        )?;
        let gguf_metadata = file
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Tokenizer {
            model,
            bos_to_add,
            eos_to_add,
            post_process: false,
            gguf_metadata: Some(gguf_metadata),
            sentencepiece: None,
        })
    }

    /// Token ids of `text`. With `parse_special`, special-token text becomes its token (as a
    /// chat prompt wants); without, it is ordinary text (as llama.cpp's perplexity tool and
    /// evaluation data want).
    pub fn encode(
        &mut self,
        text: &str,
        parse_special: bool,
    ) -> std::result::Result<Vec<u32>, String> {
        let body = match &mut self.model {
            Model::Hf(inner) => {
                inner.set_encode_special_tokens(!parse_special);
                let enc = inner
                    .encode(text, self.post_process)
                    .map_err(|e| e.to_string())?;
                enc.get_ids().to_vec()
            }
            Model::Spm(spm) => spm.encode(text, parse_special)?,
        };
        let mut ids = Vec::with_capacity(body.len() + 2);
        ids.extend(self.bos_to_add);
        ids.extend(body);
        ids.extend(self.eos_to_add);
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        match &self.model {
            Model::Hf(inner) => inner.decode(ids, false).map_err(|e| e.to_string()),
            Model::Spm(spm) => spm.decode(ids),
        }
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Hf(inner) => inner.get_vocab_size(true),
            Model::Spm(spm) => spm.len(),
        }
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::Hf(inner) => inner.token_to_id(token),
            Model::Spm(spm) => spm.token_to_id(token),
        }
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        match &self.model {
            Model::Hf(inner) => inner.id_to_token(id),
            Model::Spm(spm) => spm.id_to_token(id).map(str::to_string),
        }
    }

    /// The `tokenizers` pipeline of a `tokenizer.json` or a byte-level BPE; `None` for
    /// llama.cpp's SentencePiece (see [`Tokenizer::to_hf`]).
    pub fn hf(&self) -> Option<&tokenizers::Tokenizer> {
        match &self.model {
            Model::Hf(inner) => Some(inner),
            Model::Spm(_) => None,
        }
    }

    /// This tokenizer as a `tokenizers` pipeline, the form exporters serialise as
    /// `tokenizer.json`: the pipeline itself, or llama.cpp's SentencePiece written as the BPE
    /// with byte fallback that tokenizes the same (BOS and EOS stay outside, as
    /// [`Tokenizer::bos_to_add`] says).
    pub fn to_hf(
        &self,
    ) -> std::result::Result<std::borrow::Cow<'_, tokenizers::Tokenizer>, String> {
        match &self.model {
            Model::Hf(inner) => Ok(std::borrow::Cow::Borrowed(inner)),
            Model::Spm(spm) => spm.to_hf().map(std::borrow::Cow::Owned),
        }
    }

    /// The `tokenizer.*` key/values (`tokenizer.ggml.*`, and `tokenizer.chat_template` where
    /// present) of the GGUF file this tokenizer was rebuilt from, exactly as read; `None` when it
    /// came from a `tokenizer.json`.
    pub fn gguf_metadata(&self) -> Option<&BTreeMap<String, MetaValue>> {
        self.gguf_metadata.as_ref()
    }

    /// The id prepended to every encoded text outside the tokenizer's own post-processor (a GGUF
    /// file's `add_bos_token`), if any.
    pub fn bos_to_add(&self) -> Option<u32> {
        self.bos_to_add
    }

    /// This tokenizer with the SentencePiece model its `tokenizer.json` was made from.
    pub fn with_sentencepiece(mut self, model: SentencePieceModel) -> Tokenizer {
        self.sentencepiece = Some(std::sync::Arc::new(model));
        self
    }

    /// The SentencePiece `tokenizer.model` this tokenizer came with, if any.
    pub fn sentencepiece(&self) -> Option<&SentencePieceModel> {
        self.sentencepiece.as_deref()
    }

    /// The id appended to every encoded text outside the tokenizer's own post-processor (a GGUF
    /// file's `add_eos_token`), if any.
    pub fn eos_to_add(&self) -> Option<u32> {
        self.eos_to_add
    }
}

/// The byte-level BPE of a `gpt2` GGUF tokenizer, and whether its pre-tokenizer adds BOS when
/// the file does not say.
fn bpe_from_gguf(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i32],
) -> std::result::Result<(tokenizers::Tokenizer, bool), String> {
    let pre_name = if file.metadata.contains_key("tokenizer.ggml.pre") {
        file.get_str("tokenizer.ggml.pre")
            .map_err(|e| e.to_string())?
            .to_string()
    } else {
        "default".to_string()
    };
    let pre = gguf_pre(&pre_name).ok_or_else(|| {
        format!("tokenizer.ggml.pre '{pre_name}' is not supported ({SUPPORTED_GGUF_PRE})")
    })?;
    let merges = file
        .get_str_array("tokenizer.ggml.merges")
        .map_err(|e| e.to_string())?;
    let vocab: tokenizers::models::bpe::Vocab = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.to_string(), i as u32))
        .collect();
    if vocab.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.tokens has {} entries but {} distinct tokens",
            tokens.len(),
            vocab.len()
        ));
    }
    let merges: Vec<(String, String)> = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| format!("tokenizer.ggml.merges[{i}] '{m}' is not 'a b'"))
        })
        .collect::<std::result::Result<_, String>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(pre.ignore_merges)
        .build()
        .map_err(|e| format!("cannot build BPE: {e}"))?;
    let pre_tokenizer: PreTokenizerWrapper = match pre_name.as_str() {
        // The forms tokenizer.json gives these two (the same splits as llama.cpp's regexes).
        "gpt-2" | "gpt2" | "phi-2" => ByteLevel::new(false, false, true).into(),
        "smollm" | "starcoder" | "refact" => Sequence::new(vec![
            Digits::new(true).into(),
            ByteLevel::new(false, false, true).into(),
        ])
        .into(),
        _ => {
            let mut steps = Vec::with_capacity(pre.regexes.len() + 1);
            for r in pre.regexes {
                let split = Split::new(
                    SplitPattern::Regex((*r).to_string()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| format!("pre-tokenizer regex {r}: {e}"))?;
                steps.push(split.into());
            }
            steps.push(ByteLevel::new(false, false, false).into());
            Sequence::new(steps).into()
        }
    };
    let mut inner = tokenizers::Tokenizer::new(bpe);
    inner.with_pre_tokenizer(Some(pre_tokenizer));
    inner.with_decoder(Some(ByteLevelDecoder::default()));
    // Control tokens are matched only when the caller parses special tokens; user-defined ones
    // always, as llama.cpp cuts the text around both before the BPE.
    let added = |ty: i32, special: bool| -> Vec<AddedToken> {
        types
            .iter()
            .zip(tokens)
            .filter(|(&t, _)| t == ty)
            .map(|(_, tok)| AddedToken::from(tok.to_string(), special))
            .collect()
    };
    inner.add_special_tokens(&added(spm::CONTROL, true));
    inner.add_tokens(&added(spm::USER_DEFINED, false));
    Ok((inner, pre.add_bos))
}

/// Texts llama.cpp takes for end-of-generation, end-of-turn or fill-in-the-middle tokens
/// (`llama_vocab::impl::load`): whatever type the file gives them, it makes them control tokens,
/// which only parsed special-token text produces.
const CONTROL_BY_NAME: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<\u{ff5c}end\u{2581}of\u{2581}sentence\u{ff5c}>",
    "[e~[",
    "<MID>",
    "<PAD>",
    "<PRE>",
    "<REPO>",
    "<SUF>",
    "<fim-middle>",
    "<fim-pad>",
    "<fim-prefix>",
    "<fim-repo>",
    "<fim-suffix>",
    "<fim_middle>",
    "<fim_pad>",
    "<fim_prefix>",
    "<fim_suffix>",
    "<reponame>",
    "<|code_middle|>",
    "<|code_prefix|>",
    "<|code_suffix|>",
    "<|file_sep|>",
    "<|fim_middle|>",
    "<|fim_pad|>",
    "<|fim_prefix|>",
    "<|fim_repo|>",
    "<|fim_suffix|>",
    "<|middle|>",
    "<|prefix|>",
    "<|repo_name|>",
    "<|suffix|>",
    "<\u{ff5c}fim\u{2581}begin\u{ff5c}>",
    "<\u{ff5c}fim\u{2581}end\u{ff5c}>",
    "<\u{ff5c}fim\u{2581}hole\u{ff5c}>",
    "[PAD]",
    "\u{2581}<MID>",
    "\u{2581}<PRE>",
    "\u{2581}<SUF>",
];

/// The token types llama.cpp tokenizes with: the file's, with [`CONTROL_BY_NAME`] made control
/// (`</s>` stays as it is where `<|tool_response>` or `<|plamo:eos|>` marks a normal one).
fn control_by_name(tokens: &[&str], mut types: Vec<i32>) -> Vec<i32> {
    let normal_eos = tokens
        .iter()
        .any(|t| matches!(*t, "<|tool_response>" | "<|plamo:eos|>"));
    for (t, ty) in tokens.iter().zip(types.iter_mut()) {
        if CONTROL_BY_NAME.contains(t) && !(normal_eos && *t == "</s>") {
            *ty = spm::CONTROL;
        }
    }
    types
}
