//! The graph builder the families share: parameters declared as they are used, the output head
//! and the model metadata every architecture records.

use shrink_ir::{DType, Graph, Op, ParamType, ValueId};

/// A declared linear/norm parameter set, to keep the builders short.
pub(crate) struct Builder {
    pub(crate) g: Graph,
}

/// Model-level facts every architecture records in the graph's metadata.
pub(crate) struct Meta<'a> {
    pub(crate) arch: &'a str,
    pub(crate) context_length: usize,
    pub(crate) tied: bool,
    pub(crate) bos: Option<u32>,
    pub(crate) eos: Option<u32>,
    /// Gemma 2's `final_logit_softcapping`.
    pub(crate) logit_softcap: Option<f32>,
}

impl Builder {
    /// The output head over the final hidden state `h`, the `logits` output, and the metadata.
    pub(crate) fn finish(mut self, h: ValueId, head: String, meta: &Meta<'_>) -> Graph {
        let mut logits = self.op(
            Op::Linear {
                weight: head,
                bias: None,
                lora: None,
            },
            &[h],
        );
        if let Some(cap) = meta.logit_softcap {
            logits = self.op(Op::SoftCap { cap }, &[logits]);
        }
        self.g.add_typed(
            Op::Output {
                name: "logits".into(),
            },
            &[logits],
            vec![],
        );
        let m = &mut self.g.meta;
        m.insert("architecture".into(), meta.arch.to_string());
        m.insert("context_length".into(), meta.context_length.to_string());
        m.insert("tie_word_embeddings".into(), meta.tied.to_string());
        if let Some(t) = meta.bos {
            m.insert("bos_token_id".into(), t.to_string());
        }
        if let Some(t) = meta.eos {
            m.insert("eos_token_id".into(), t.to_string());
        }
        self.g
    }

    pub(crate) fn param(&mut self, name: &str, shape: Vec<usize>) -> String {
        self.g
            .declare_param(name.to_string(), ParamType::new(DType::F32, shape));
        name.to_string()
    }

    pub(crate) fn op(&mut self, op: Op, inputs: &[ValueId]) -> ValueId {
        // The builders only make well-typed graphs from validated configs; a failure here is a
        // bug in this file, reported through the verifier by the caller.
        match self.g.add1(op, inputs) {
            Ok(v) => v,
            Err(e) => panic!("architecture builder produced an ill-typed op: {e}"),
        }
    }

    pub(crate) fn linear(
        &mut self,
        x: ValueId,
        name: &str,
        out: usize,
        inp: usize,
        bias: bool,
    ) -> ValueId {
        let weight = self.param(&format!("{name}.weight"), vec![out, inp]);
        let bias = bias.then(|| self.param(&format!("{name}.bias"), vec![out]));
        self.op(
            Op::Linear {
                weight,
                bias,
                lora: None,
            },
            &[x],
        )
    }
}
