//! Instrumentations of the pass manager: IR dumps and reproducers (printing lives in the CLI).

use std::path::{Path, PathBuf};

use shrink_ir::{Graph, Model};
use shrink_passes::Pass;

use crate::manager::{Instrumentation, PassRecord};

fn dump_name(index: usize, pass: &str) -> String {
    format!("{:02}_{pass}.ir", index + 1)
}

/// `--dump-ir DIR`: `00_input.ir`, then `NN_<pass>.ir` after each pass, each headed by the pass
/// and its options. On a failing pass, a reproducer: the IR before it
/// (`NN_<pass>.before.ir`) and `NN_<pass>.reproducer.ron`, a pipeline that runs the passes up to
/// and including the failing one on the same model.
pub struct IrDump {
    pub dir: PathBuf,
    /// Canonical text of the pipeline's passes, for the reproducer.
    pub pass_lines: Vec<String>,
    pub model: PathBuf,
    pub written: Vec<PathBuf>,
}

impl IrDump {
    pub fn new(dir: &Path, model: &Path, pass_lines: Vec<String>) -> Result<IrDump, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        Ok(IrDump {
            dir: dir.to_path_buf(),
            pass_lines,
            model: model.to_path_buf(),
            written: Vec::new(),
        })
    }

    fn write(&mut self, name: &str, text: &str) -> Result<(), String> {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        self.written.push(path);
        Ok(())
    }
}

impl Instrumentation for IrDump {
    fn start(&mut self, model: &Model, _ppl: Option<f64>) -> Result<(), String> {
        let text = format!(
            "; input model: {}\n{}",
            self.model.display(),
            shrink_ir::text::print(&model.graph)
        );
        self.write("00_input.ir", &text)
    }

    fn after_pass(
        &mut self,
        index: usize,
        pass: &dyn Pass,
        model: &Model,
        record: &PassRecord,
    ) -> Result<(), String> {
        let text = format!(
            "; after pass {}: {} {}\n; params {} bytes {} ({:.3} bits/weight)\n{}",
            index + 1,
            pass.name(),
            pass.options(),
            record.params,
            record.bytes,
            record.bits_per_weight,
            shrink_ir::text::print_model(model)
        );
        self.write(&dump_name(index, pass.name()), &text)
    }

    fn pass_failed(&mut self, index: usize, pass: &dyn Pass, before: &Graph, error: &str) {
        let stem = format!("{:02}_{}", index + 1, pass.name());
        let ir = format!(
            "; before pass {}: {} {}\n; failed: {}\n{}",
            index + 1,
            pass.name(),
            pass.options(),
            error.replace('\n', "\n; "),
            shrink_ir::text::print(before)
        );
        let mut ron = format!(
            "// Reproducer: pass {} ({}) failed on this model.\n(\n    model: {:?},\n    passes: [\n",
            index + 1,
            pass.name(),
            self.model.display().to_string()
        );
        for line in self.pass_lines.iter().take(index + 1) {
            ron += &format!("        {line},\n");
        }
        ron += "    ],\n)\n";
        // Best effort: the run is failing already; its error is what gets reported.
        let _ = self.write(&format!("{stem}.before.ir"), &ir);
        let _ = self.write(&format!("{stem}.reproducer.ron"), &ron);
    }
}
