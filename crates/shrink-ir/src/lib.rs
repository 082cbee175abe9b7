//! The graph IR of shrink: a model as a dataflow graph of coarse ops over typed values, with a
//! weight store beside it. No tensor library here: passes reason about structure and names, the
//! runtime crate executes.
//!
//! - [`types`]: dtypes, dims, value and parameter types
//! - [`op`]: the ops and their type inference
//! - [`lora`]: LoRA adapters attached to linears (find, attach, detach)
//! - [`graph`]: the graph (petgraph underneath, typed ids on top)
//! - [`weights`]: the weight store (and the sparsity masks of pruned parameters)
//! - [`quant`]: quantized parameter formats (schemes, packing, dequantization)
//! - [`text`]: printer and parser of the text form
//! - [`verify`]: the verifier (its module doc lists the invariants)

pub mod graph;
pub mod lora;
pub mod model;
pub mod op;
pub mod quant;
pub mod text;
pub mod types;
pub mod verify;
pub mod weights;

pub use graph::{Graph, Node, NodeId, ValueId};
pub use model::{Model, SizeStats};
pub use op::{Activation, AttentionSpec, Lora, NormKind, Op, Rope, RopeScaling};
pub use quant::QuantScheme;
pub use types::{DType, Dim, ParamType, ValueType};
pub use verify::{verify_graph, verify_model, Verified, VerifyError, VerifyErrors};
pub use weights::{SparsityMask, TensorData, WeightStore};
