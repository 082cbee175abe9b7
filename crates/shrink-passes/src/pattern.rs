//! Name patterns over parameter names: `*` matches any run of characters, `?` one character.

use serde::{Deserialize, Serialize};

/// Include/exclude patterns: a name is selected when it matches an include pattern and no
/// exclude pattern.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Patterns {
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl Patterns {
    pub fn selects(&self, name: &str) -> bool {
        self.include.iter().any(|p| glob(p, name)) && !self.exclude.iter().any(|p| glob(p, name))
    }
}

/// Whether `name` matches `pattern` as a whole.
pub fn glob(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Classic two-pointer wildcard match with backtracking to the last `*`.
    let (mut i, mut j) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some((i, j));
            i += 1;
        } else if let Some((si, sj)) = star {
            i = si + 1;
            j = sj + 1;
            star = Some((si, sj + 1));
        } else {
            return false;
        }
    }
    while i < p.len() && p[i] == '*' {
        i += 1;
    }
    i == p.len()
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn wildcards() {
        assert!(glob("*", "model.norm.weight"));
        assert!(glob("*.mlp.*", "model.layers.3.mlp.down_proj.weight"));
        assert!(glob(
            "model.layers.?.*",
            "model.layers.3.mlp.up_proj.weight"
        ));
        assert!(!glob(
            "model.layers.?.*",
            "model.layers.12.mlp.up_proj.weight"
        ));
        assert!(glob("*down_proj*", "model.layers.12.mlp.down_proj.weight"));
        assert!(!glob("*.bias", "model.layers.0.self_attn.q_proj.weight"));
        assert!(glob("", "") && !glob("", "a") && glob("a*b*c", "aXbYc") && !glob("a*b*c", "aXbY"));
    }
}
