//! Errors of the back ends. Each is one line naming the output path and the field, tensor or
//! step at fault.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Creating, writing, syncing or renaming a file failed.
    #[error("{}: {what}: {source}", .path.display())]
    Io {
        path: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The output format cannot express this model (architecture, layout, option).
    #[error("{}: {message}", .path.display())]
    Unsupported { path: PathBuf, message: String },
    /// The graph is not the shape of the architecture it claims (config recovery failed).
    #[error("{}: cannot read the {arch} config back from the graph: {message}", .path.display())]
    Graph {
        path: PathBuf,
        arch: String,
        message: String,
    },
    /// A value written to a config or metadata field.
    #[error("{}: field '{field}': {message}", .path.display())]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
    #[error("{}: tensor '{tensor}': {message}", .path.display())]
    Tensor {
        path: PathBuf,
        tensor: String,
        message: String,
    },
    #[error("{}: tokenizer: {message}", .path.display())]
    Tokenizer { path: PathBuf, message: String },
}

pub type Result<T> = std::result::Result<T, ExportError>;
