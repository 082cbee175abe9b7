//! SentencePiece's `tokenizer.model`, the protobuf `ModelProto` that Llama 2, Mistral, Phi-3 and
//! Gemma checkpoints ship beside `tokenizer.json`: its pieces with their scores and types, which
//! llama.cpp's converter writes into GGUF (`tokenizer.json` has no scores).

use std::path::Path;

use prost::Message;

use super::TokenizerError;

/// SentencePiece's piece types (`ModelProto.SentencePiece.Type`).
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;
/// `TrainerSpec.ModelType`.
const BPE: i32 = 2;

#[derive(Clone, PartialEq, Message)]
struct ModelProto {
    #[prost(message, repeated, tag = "1")]
    pieces: Vec<PieceProto>,
    #[prost(message, optional, tag = "2")]
    trainer_spec: Option<TrainerSpec>,
    #[prost(message, optional, tag = "3")]
    normalizer_spec: Option<NormalizerSpec>,
}

#[derive(Clone, PartialEq, Message)]
struct PieceProto {
    #[prost(string, optional, tag = "1")]
    piece: Option<String>,
    #[prost(float, optional, tag = "2")]
    score: Option<f32>,
    #[prost(int32, optional, tag = "3")]
    kind: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct TrainerSpec {
    #[prost(int32, optional, tag = "3")]
    model_type: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
struct NormalizerSpec {
    #[prost(bool, optional, tag = "3")]
    add_dummy_prefix: Option<bool>,
}

/// A piece of the model: its text, score and SentencePiece type.
#[derive(Clone, Debug, PartialEq)]
pub struct Piece {
    pub text: String,
    pub score: f32,
    pub kind: i32,
}

impl Piece {
    /// The GGUF token type llama.cpp's converter gives it (`_create_vocab_sentencepiece`):
    /// SentencePiece's own, except that a user-defined piece is written as a normal token.
    pub fn gguf_type(&self) -> i32 {
        match self.kind {
            UNKNOWN | CONTROL | UNUSED | BYTE => self.kind,
            _ => NORMAL,
        }
    }
}

/// A `tokenizer.model`, with its bytes (written back unchanged by the Hugging Face exporter).
#[derive(Clone, Debug)]
pub struct SentencePieceModel {
    pub pieces: Vec<Piece>,
    /// The normaliser prepends a space ("▁") to the text.
    pub add_dummy_prefix: bool,
    pub bytes: Vec<u8>,
}

impl SentencePieceModel {
    pub fn read(path: &Path) -> Result<SentencePieceModel, TokenizerError> {
        let err = |message: String| TokenizerError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let bytes = std::fs::read(path).map_err(|e| err(e.to_string()))?;
        let proto = ModelProto::decode(bytes.as_slice())
            .map_err(|e| err(format!("not a SentencePiece model: {e}")))?;
        let model_type = proto
            .trainer_spec
            .as_ref()
            .and_then(|t| t.model_type)
            .unwrap_or(1);
        if model_type != BPE {
            return Err(err(format!(
                "SentencePiece model_type {model_type} is not supported (BPE, 2: llama.cpp's \
                 'llama' tokenizer merges pieces as BPE does)"
            )));
        }
        if proto.pieces.is_empty() {
            return Err(err("the model has no pieces".into()));
        }
        let pieces = proto
            .pieces
            .into_iter()
            .enumerate()
            .map(|(i, p)| {
                let kind = p.kind.unwrap_or(NORMAL);
                let score = p.score.unwrap_or(0.0);
                if !(NORMAL..=BYTE).contains(&kind) {
                    return Err(err(format!("piece {i} has type {kind}, not 1 to 6")));
                }
                if !score.is_finite() {
                    return Err(err(format!("piece {i} has score {score}")));
                }
                Ok(Piece {
                    text: p.piece.unwrap_or_default(),
                    score,
                    kind,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let add_dummy_prefix = proto
            .normalizer_spec
            .and_then(|n| n.add_dummy_prefix)
            .unwrap_or(true);
        Ok(SentencePieceModel {
            pieces,
            add_dummy_prefix,
            bytes,
        })
    }

    /// The id of the unknown piece, if any.
    pub fn unknown_id(&self) -> Option<u32> {
        self.pieces
            .iter()
            .position(|p| p.kind == UNKNOWN)
            .map(|i| i as u32)
    }
}

/// Whether the converter takes an added token for a control token though it is not marked
/// special (`does_token_look_special`).
pub(super) fn looks_special(text: &str) -> bool {
    matches!(text, "<pad>" | "<mask>" | "<2mass>" | "[@BOS@]")
        || (text.starts_with("<|") && text.ends_with("|>"))
        || (text.starts_with("<\u{ff5c}") && text.ends_with("\u{ff5c}>"))
        || (text.starts_with("<unused") && text.ends_with('>'))
}

/// The token types of GGUF for an added token: control or user-defined.
pub(super) const GGUF_CONTROL: i32 = CONTROL;
pub(super) const GGUF_USER_DEFINED: i32 = USER_DEFINED;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pieces_and_refuses_what_is_not_a_bpe_model() {
        let proto = |model_type| ModelProto {
            pieces: vec![
                PieceProto {
                    piece: Some("<unk>".into()),
                    score: Some(0.0),
                    kind: Some(UNKNOWN),
                },
                PieceProto {
                    piece: Some("\u{2581}a".into()),
                    score: Some(-1.5),
                    kind: None,
                },
            ],
            trainer_spec: Some(TrainerSpec {
                model_type: Some(model_type),
            }),
            normalizer_spec: Some(NormalizerSpec {
                add_dummy_prefix: Some(false),
            }),
        };
        let dir = std::env::temp_dir().join(format!("shrink-sp-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("tokenizer.model");
        std::fs::write(&path, proto(BPE).encode_to_vec()).unwrap();
        let m = SentencePieceModel::read(&path).unwrap();
        assert_eq!(m.pieces[1].text, "\u{2581}a");
        assert_eq!(m.pieces[1].gguf_type(), NORMAL);
        assert_eq!(m.unknown_id(), Some(0));
        assert!(!m.add_dummy_prefix);
        std::fs::write(&path, proto(1).encode_to_vec()).unwrap();
        let e = SentencePieceModel::read(&path).unwrap_err().to_string();
        assert!(e.contains("model_type 1"), "{e}");
        std::fs::write(&path, b"\xff\xff\xff").unwrap();
        let e = SentencePieceModel::read(&path).unwrap_err().to_string();
        assert!(e.contains("not a SentencePiece model"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
