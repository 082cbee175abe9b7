//! Errors of the front ends. Each names the file and the field, tensor or offset at fault.

use std::path::PathBuf;

use shrink_arch::ConfigError;
use shrink_formats::gguf::GgufError;
use shrink_formats::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: not a model: expected a .gguf file or a directory with config.json", .path.display())]
    UnknownFormat { path: PathBuf },
    #[error("{}: invalid JSON: {}", .path.display(), line(.message))]
    Json { path: PathBuf, message: String },
    #[error("{}: field '{}': {}", .path.display(), line(.field), line(.message))]
    Config {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}: unsupported architecture '{}' (supported: {supported})", .path.display(), line(.arch))]
    UnsupportedArch {
        path: PathBuf,
        arch: String,
        supported: String,
    },
    #[error("{}: invalid safetensors file: {}", .path.display(), line(.message))]
    Safetensors { path: PathBuf, message: String },
    #[error("{}: tensor '{}': {}", .path.display(), line(.tensor), line(.message))]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error(transparent)]
    Tokenizer(Box<TokenizerError>),
    #[error("{}: the imported graph fails verification:\n{errors}", .path.display())]
    Verify {
        path: PathBuf,
        errors: shrink_ir::VerifyErrors,
    },
}

impl ImportError {
    /// An architecture's refusal of a config, as an error of the file it came from.
    pub fn config(path: &std::path::Path, e: ConfigError) -> ImportError {
        match e {
            ConfigError::Field { field, message } => ImportError::Config {
                path: path.to_path_buf(),
                field,
                message,
            },
            ConfigError::UnknownModelType {
                model_type,
                supported,
            } => ImportError::UnsupportedArch {
                path: path.to_path_buf(),
                arch: model_type,
                supported,
            },
            ConfigError::Gguf(e) => ImportError::Gguf(*e),
        }
    }
}

impl From<TokenizerError> for ImportError {
    fn from(e: TokenizerError) -> Self {
        ImportError::Tokenizer(Box::new(e))
    }
}

/// A message on one line: it may quote a file's text, line breaks included.
fn line(s: &str) -> String {
    s.replace('\r', "\\r").replace('\n', "\\n")
}

pub type Result<T> = std::result::Result<T, ImportError>;
