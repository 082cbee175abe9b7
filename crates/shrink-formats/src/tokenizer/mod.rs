//! Tokenizers: Hugging Face `tokenizer.json` through the `tokenizers` crate, or a byte-level BPE
//! rebuilt from GGUF metadata that tokenizes exactly as llama.cpp does.

mod to_gguf;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::gguf::{GgufFile, MetaValue};

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

/// GGUF pre-tokenizer names this module reproduces.
pub const SUPPORTED_GGUF_PRE: &str = "smollm, gpt2, default";

#[derive(Clone)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Prepend this id to every encoded text (GGUF's `add_bos_token`).
    bos_to_add: Option<u32>,
    /// Let the tokenizer's own post-processor add special tokens (tokenizer.json).
    post_process: bool,
    /// The `tokenizer.*` metadata of the GGUF file it was rebuilt from (exporters write it back
    /// unchanged); `None` for a `tokenizer.json`.
    gguf_metadata: Option<BTreeMap<String, MetaValue>>,
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
            inner,
            bos_to_add: None,
            post_process: true,
            gguf_metadata: None,
        })
    }

    /// Rebuilds the tokenizer a GGUF file describes (`tokenizer.ggml.*`).
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let err = |message: String| TokenizerError::Invalid {
            path: file.path.clone(),
            message,
        };
        let model = file.get_str("tokenizer.ggml.model")?;
        if model != "gpt2" {
            return Err(err(format!(
                "tokenizer.ggml.model '{model}' is not supported (only byte-level BPE, 'gpt2')"
            )));
        }
        let pre = file
            .get_str("tokenizer.ggml.pre")
            .map(str::to_string)
            .unwrap_or_else(|_| "default".into());
        let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
        let merges = file.get_str_array("tokenizer.ggml.merges")?;
        let types = file.get_i32_array("tokenizer.ggml.token_type").ok();
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.to_string(), i as u32))
            .collect();
        let merges: Vec<(String, String)> = merges
            .iter()
            .enumerate()
            .map(|(i, m)| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| err(format!("tokenizer.ggml.merges[{i}] '{m}' is not 'a b'")))
            })
            .collect::<Result<_>>()?;
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| err(format!("cannot build BPE: {e}")))?;
        let byte_level = ByteLevel::new(false, false, true);
        let pre_tokenizer: PreTokenizerWrapper = match pre.as_str() {
            // llama.cpp: "\p{N}" split first, then the GPT-2 pattern.
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
            "gpt2" | "default" => byte_level.into(),
            other => {
                return Err(err(format!(
                    "tokenizer.ggml.pre '{other}' is not supported ({SUPPORTED_GGUF_PRE})"
                )))
            }
        };
        let mut inner = tokenizers::Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control tokens (type 3) are special: matched only when the caller asks for it.
        let special: Vec<AddedToken> = types
            .iter()
            .flat_map(|t| t.iter().enumerate())
            .filter(|(_, &ty)| ty == 3)
            .filter_map(|(i, _)| tokens.get(i))
            .map(|t| AddedToken::from(t.to_string(), true))
            .collect();
        inner.add_special_tokens(&special);
        let add_bos = file
            .get_bool("tokenizer.ggml.add_bos_token")
            .unwrap_or(false);
        let bos = file.get_u32("tokenizer.ggml.bos_token_id").ok();
        let gguf_metadata = file
            .metadata
            .iter()
            .filter(|(k, _)| k.starts_with("tokenizer."))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Tokenizer {
            inner,
            bos_to_add: if add_bos { bos } else { None },
            post_process: false,
            gguf_metadata: Some(gguf_metadata),
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
        self.inner.set_encode_special_tokens(!parse_special);
        let enc = self
            .inner
            .encode(text, self.post_process)
            .map_err(|e| e.to_string())?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.bos_to_add);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    pub fn decode(&self, ids: &[u32]) -> std::result::Result<String, String> {
        self.inner.decode(ids, false).map_err(|e| e.to_string())
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The underlying `tokenizers` value (exporters serialise it as `tokenizer.json`).
    pub fn inner(&self) -> &tokenizers::Tokenizer {
        &self.inner
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
}
