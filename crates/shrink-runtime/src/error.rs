use shrink_ir::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("the model does not verify:\n{0}")]
    Verify(#[from] shrink_ir::VerifyErrors),
    #[error("{node}: {message}")]
    Node { node: NodeId, message: String },
    #[error("parameter '{name}': {message}")]
    Param { name: String, message: String },
    #[error("token id {id} is outside the vocabulary ({vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {len} tokens exceeds the model's {max} positions")]
    TooLong { len: usize, max: usize },
    #[error("{0}")]
    Input(String),
    #[error("device: {0}")]
    Device(String),
}

pub type Result<T> = std::result::Result<T, RuntimeError>;
