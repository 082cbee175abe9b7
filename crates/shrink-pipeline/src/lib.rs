//! Pipelines: RON files that declare a model, passes with options, an evaluation and an output
//! ([`file`]); the pass manager that runs them, verifying after each pass ([`manager`]); its
//! instrumentation ([`instrument`]); and whole runs from load to export ([`run`]).

pub mod file;
pub mod instrument;
pub mod manager;
pub mod run;

pub use file::{EvalSpec, OutputFormat, PassEntry, Pipeline, PipelineError};
pub use manager::{run_passes, Instrumentation, ManagerError, PassRecord, RunContext};
pub use run::{evaluate, plan, run, EvalRecord, PlanRow, RunError, RunOptions, RunReport};
