//! `shrink` as a library: the stage crates, re-exported for tools that embed them.
pub use shrink_arch as arch;
pub use shrink_export as export;
pub use shrink_formats as formats;
pub use shrink_import as import;
pub use shrink_ir as ir;
pub use shrink_passes as passes;
pub use shrink_pipeline as pipeline;
pub use shrink_runtime as runtime;
