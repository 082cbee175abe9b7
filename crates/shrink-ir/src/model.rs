//! A model: the graph and the weight store beside it.

use crate::graph::Graph;
use crate::verify::{verify_model, Verified, VerifyErrors};
use crate::weights::WeightStore;

#[derive(Clone, Debug, Default)]
pub struct Model {
    pub graph: Graph,
    pub weights: WeightStore,
}

/// Size figures of a model, from what is stored.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SizeStats {
    /// Elements of all declared parameters (a tied parameter counts once).
    pub params: u64,
    /// Bytes the parameters take in storage.
    pub bytes: u64,
    /// Entries pruned (set in a sparsity mask).
    pub pruned: u64,
}

impl SizeStats {
    /// Pruned entries as a fraction of all parameters.
    pub fn sparsity(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.pruned as f64 / self.params as f64
        }
    }

    pub fn bits_per_weight(&self) -> f64 {
        if self.params == 0 {
            0.0
        } else {
            self.bytes as f64 * 8.0 / self.params as f64
        }
    }
}

impl Model {
    pub fn verify(&self) -> Result<Verified, VerifyErrors> {
        verify_model(self)
    }

    pub fn size(&self) -> SizeStats {
        let mut s = SizeStats {
            params: 0,
            bytes: 0,
            pruned: 0,
        };
        for (name, ty) in self.graph.params() {
            s.params += ty.numel() as u64;
            s.bytes += self
                .weights
                .get(name)
                .map_or(ty.storage_bytes().unwrap_or(0) as u64, |t| {
                    t.nbytes() as u64
                });
            s.pruned += self.weights.mask(name).map_or(0, |m| m.count() as u64);
        }
        s
    }
}
