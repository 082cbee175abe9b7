//! The text form of the IR: a printer and a parser that round-trip.
//!
//! ```text
//! shrink-ir 1
//! meta architecture = "llama"
//! param model.norm.weight: f32[576]
//! %0: i64[b, s] = input() name="tokens"
//! %1: f32[b, s, 576] = embedding(%0) weight=model.embed_tokens.weight
//! %2, %3 = ...
//! output(%9) name="logits"
//! ```
//! One op per line in a deterministic topological order; values are renumbered `%0, %1, …` in
//! order of definition, so two graphs that differ only in construction history print the same.
//! Lines starting with `;` are comments. No tensor contents are printed.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::graph::{Graph, NodeId, ValueId};
use crate::op::{Activation, AttentionSpec, Lora, NormKind, Op, Rope, RopeScaling};
use crate::quant::QuantScheme;
use crate::types::{DType, Dim, ParamType, ValueType};

pub const HEADER: &str = "shrink-ir 1";

/// Value numbering of a printed graph.
pub struct Printer<'g> {
    graph: &'g Graph,
    numbers: HashMap<ValueId, usize>,
    order: Vec<NodeId>,
    /// Sparsity of parameters that have a mask (`print_model`), printed on their lines.
    sparsity: BTreeMap<String, f64>,
}

impl<'g> Printer<'g> {
    pub fn new(graph: &'g Graph) -> Self {
        // A cyclic graph still prints (in id order) so the verifier can show it.
        let order = graph.order().unwrap_or_else(|_| graph.node_ids());
        let mut numbers = HashMap::new();
        for id in &order {
            if let Some(n) = graph.node(*id) {
                for v in &n.outputs {
                    let k = numbers.len();
                    numbers.insert(*v, k);
                }
            }
        }
        Printer {
            graph,
            numbers,
            order,
            sparsity: BTreeMap::new(),
        }
    }

    /// How a value is written: `%N`, or `%undef<raw>` for a value no node defines.
    pub fn value_name(&self, v: ValueId) -> String {
        match self.numbers.get(&v) {
            Some(n) if self.graph.producer(v).is_some() => format!("%{n}"),
            _ => format!("%undef{}", v.raw()),
        }
    }

    /// The line of one node, as the printer writes it.
    pub fn node_line(&self, id: NodeId) -> String {
        let Some(node) = self.graph.node(id) else {
            return format!("<removed {id}>");
        };
        let mut s = String::new();
        if !node.outputs.is_empty() {
            let outs: Vec<String> = node
                .outputs
                .iter()
                .map(|v| {
                    let ty = self
                        .graph
                        .value_type(*v)
                        .map(|t| t.to_string())
                        .unwrap_or_else(|| "?".into());
                    format!("{}: {ty}", self.value_name(*v))
                })
                .collect();
            let _ = write!(s, "{} = ", outs.join(", "));
        }
        let ins: Vec<String> = node.inputs.iter().map(|v| self.value_name(*v)).collect();
        let _ = write!(s, "{}({})", node.op.name(), ins.join(", "));
        for (k, v) in attrs(&node.op) {
            let _ = write!(s, " {k}={v}");
        }
        s
    }

    /// The whole graph as text.
    pub fn print(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "{HEADER}");
        for (k, v) in &self.graph.meta {
            let _ = writeln!(s, "meta {} = {}", word(k), quote(v));
        }
        for (name, ty) in self.graph.params() {
            let _ = write!(s, "param {}: {ty}", word(name));
            if let Some(f) = self.sparsity.get(name) {
                let _ = write!(s, " sparsity={f:.4}");
            }
            s.push('\n');
        }
        for id in &self.order {
            let _ = writeln!(s, "{}", self.node_line(*id));
        }
        s
    }
}

/// Prints a graph in the text form.
pub fn print(graph: &Graph) -> String {
    Printer::new(graph).print()
}

/// Prints a model's graph, with the fraction of pruned entries on the line of every parameter
/// that has a sparsity mask (`param w: f32[64, 160] sparsity=0.5000`). The parser reads the
/// annotation and drops it: masks live in the weight store, not in the graph.
pub fn print_model(model: &crate::Model) -> String {
    let mut p = Printer::new(&model.graph);
    p.sparsity = model
        .weights
        .masks()
        .map(|(name, m)| (name.clone(), m.sparsity()))
        .collect();
    p.print()
}

fn attrs(op: &Op) -> Vec<(&'static str, String)> {
    let mut a = Vec::new();
    match op {
        Op::Input { name } | Op::Output { name } => a.push(("name", quote(name))),
        Op::Embedding { weight } | Op::PositionEmbedding { weight } => {
            a.push(("weight", word(weight)))
        }
        Op::Norm {
            eps,
            weight,
            bias,
            group,
            ..
        } => {
            a.push(("eps", format!("{eps:?}")));
            a.push(("weight", word(weight)));
            if let Some(b) = bias {
                a.push(("bias", word(b)));
            }
            if let Some(g) = group {
                a.push(("group", g.to_string()));
            }
        }
        Op::Linear { weight, bias, lora } => {
            a.push(("weight", word(weight)));
            if let Some(b) = bias {
                a.push(("bias", word(b)));
            }
            if let Some(l) = lora {
                a.push(("lora_a", word(&l.a)));
                a.push(("lora_b", word(&l.b)));
                a.push(("lora_scale", format!("{:?}", l.scale)));
                a.push(("lora_dropout", format!("{:?}", l.dropout)));
            }
        }
        Op::Split { sizes } => {
            let s: Vec<String> = sizes.iter().map(|n| n.to_string()).collect();
            a.push(("sizes", format!("[{}]", s.join(", "))));
        }
        Op::Attention(at) => {
            a.push(("heads", at.heads.to_string()));
            a.push(("kv_heads", at.kv_heads.to_string()));
            a.push(("head_dim", at.head_dim.to_string()));
            if let Some(r) = at.rope {
                a.push(("rope_theta", format!("{:?}", r.theta)));
                a.push(("rope_dim", r.dim.to_string()));
                match r.scaling {
                    RopeScaling::None => {}
                    RopeScaling::Linear { factor } => {
                        a.push(("rope_scaling", "linear".into()));
                        a.push(("rope_factor", format!("{factor:?}")));
                    }
                    RopeScaling::Llama3 {
                        factor,
                        low_freq_factor,
                        high_freq_factor,
                        original_context,
                    } => {
                        a.push(("rope_scaling", "llama3".into()));
                        a.push(("rope_factor", format!("{factor:?}")));
                        a.push(("rope_low_freq_factor", format!("{low_freq_factor:?}")));
                        a.push(("rope_high_freq_factor", format!("{high_freq_factor:?}")));
                        a.push(("rope_original_context", original_context.to_string()));
                    }
                    RopeScaling::Yarn {
                        factor,
                        original_context,
                        beta_fast,
                        beta_slow,
                        attention_factor,
                        truncate,
                    } => {
                        a.push(("rope_scaling", "yarn".into()));
                        a.push(("rope_factor", format!("{factor:?}")));
                        a.push(("rope_original_context", original_context.to_string()));
                        a.push(("rope_beta_fast", format!("{beta_fast:?}")));
                        a.push(("rope_beta_slow", format!("{beta_slow:?}")));
                        a.push(("rope_attention_factor", format!("{attention_factor:?}")));
                        a.push(("rope_truncate", truncate.to_string()));
                    }
                }
            }
            a.push(("causal", at.causal.to_string()));
            if let Some(w) = at.window {
                a.push(("window", w.to_string()));
            }
            if let Some(s) = at.scale {
                a.push(("scale", format!("{s:?}")));
            }
            if let Some(c) = at.softcap {
                a.push(("softcap", format!("{c:?}")));
            }
        }
        Op::Activation(_) | Op::Add | Op::Mul => {}
        Op::Scale { factor } => a.push(("factor", format!("{factor:?}"))),
        Op::SoftCap { cap } => a.push(("cap", format!("{cap:?}"))),
    }
    a
}

fn is_word_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+')
}

/// A name as a bare word when it can be one, else quoted.
fn word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(is_word_char) {
        s.to_string()
    } else {
        quote(s)
    }
}

fn quote(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    for c in s.chars() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}

// ---------------------------------------------------------------------------------------------
// Parser

/// A syntax error at a line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{col}: {message}")]
pub struct ParseError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Value(String),
    Word(String),
    Str(String),
    Sym(char),
}

struct Lexer {
    toks: Vec<(Tok, usize)>,
    pos: usize,
    line: usize,
    end_col: usize,
}

impl Lexer {
    fn new(text: &str, line: usize) -> Result<Self, ParseError> {
        let err = |col: usize, m: &str| ParseError {
            line,
            col,
            message: m.to_string(),
        };
        let chars: Vec<char> = text.chars().collect();
        let mut toks = Vec::new();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            let col = i + 1;
            if c.is_whitespace() {
                i += 1;
            } else if c == '%' {
                let start = i + 1;
                i += 1;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                if i == start {
                    return Err(err(col, "expected a value name after '%'"));
                }
                toks.push((Tok::Value(chars[start..i].iter().collect()), col));
            } else if c == '"' {
                let mut s = String::new();
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(err(col, "unterminated string")),
                        Some('"') => break,
                        Some('\\') => {
                            match chars.get(i + 1) {
                                Some('n') => s.push('\n'),
                                Some(&e @ ('"' | '\\')) => s.push(e),
                                _ => return Err(err(i + 1, "unknown escape in string")),
                            }
                            i += 2;
                        }
                        Some(&ch) => {
                            s.push(ch);
                            i += 1;
                        }
                    }
                }
                i += 1;
                toks.push((Tok::Str(s), col));
            } else if is_word_char(c) {
                let start = i;
                while i < chars.len() && is_word_char(chars[i]) {
                    i += 1;
                }
                toks.push((Tok::Word(chars[start..i].iter().collect()), col));
            } else if "=:,()[]".contains(c) {
                toks.push((Tok::Sym(c), col));
                i += 1;
            } else {
                return Err(err(col, &format!("unexpected character '{c}'")));
            }
        }
        Ok(Lexer {
            toks,
            pos: 0,
            line,
            end_col: chars.len() + 1,
        })
    }

    fn col(&self) -> usize {
        self.toks.get(self.pos).map_or(self.end_col, |t| t.1)
    }

    fn error(&self, message: impl Into<String>) -> ParseError {
        ParseError {
            line: self.line,
            col: self.col(),
            message: message.into(),
        }
    }

    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos).map(|t| &t.0)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).map(|t| t.0.clone());
        self.pos += 1;
        t
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(&Tok::Sym(c)) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(format!("expected '{c}'")))
        }
    }

    fn word(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Word(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    /// A bare word or a quoted string.
    fn name(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Word(w)) | Some(Tok::Str(w)) => {
                let w = w.clone();
                self.pos += 1;
                Ok(w)
            }
            _ => Err(self.error(format!("expected {what}"))),
        }
    }

    fn string(&mut self, what: &str) -> Result<String, ParseError> {
        match self.peek() {
            Some(Tok::Str(s)) => {
                let s = s.clone();
                self.pos += 1;
                Ok(s)
            }
            _ => Err(self.error(format!("expected {what} as a quoted string"))),
        }
    }

    fn done(&self) -> Result<(), ParseError> {
        if self.pos < self.toks.len() {
            Err(self.error("unexpected text at end of line"))
        } else {
            Ok(())
        }
    }

    /// `dtype[d, d, …]`, or `scheme[d, …]` for a quantized parameter when `quant_ok`; dims as
    /// the closure reads them.
    fn typed<D>(
        &mut self,
        quant_ok: bool,
        dim: impl Fn(&str) -> Option<D>,
    ) -> Result<(DType, Option<QuantScheme>, Vec<D>), ParseError> {
        let w = self.word("a type such as f32[…]")?;
        let col = self.col().saturating_sub(w.len());
        let (dtype, quant) = match DType::from_name(&w) {
            Some(d) => (d, None),
            None if quant_ok => match w.parse::<QuantScheme>() {
                Ok(q) => (DType::F32, Some(q)),
                Err(e) => {
                    return Err(ParseError {
                        line: self.line,
                        col,
                        message: format!("unknown dtype '{w}' and not a {e}"),
                    })
                }
            },
            None => {
                return Err(ParseError {
                    line: self.line,
                    col,
                    message: format!("unknown dtype '{w}'"),
                })
            }
        };
        self.expect('[')?;
        let mut dims = Vec::new();
        if !self.eat(']') {
            loop {
                let w = self.word("a dimension")?;
                let d = dim(&w).ok_or_else(|| self.error(format!("bad dimension '{w}'")))?;
                dims.push(d);
                if self.eat(']') {
                    break;
                }
                self.expect(',')?;
            }
        }
        Ok((dtype, quant, dims))
    }
}

fn parse_dim(w: &str) -> Option<Dim> {
    match w {
        "b" => Some(Dim::Batch),
        "s" => Some(Dim::Seq),
        _ => w.parse().ok().map(Dim::Fixed),
    }
}

/// Attributes of one op line, each taken once.
struct Attrs {
    map: BTreeMap<String, (Tok, usize)>,
    line: usize,
    end_col: usize,
}

impl Attrs {
    fn err(&self, key: &str, message: String) -> ParseError {
        ParseError {
            line: self.line,
            col: self.map.get(key).map_or(self.end_col, |t| t.1),
            message,
        }
    }

    fn take(&mut self, key: &str) -> Result<Option<Tok>, ParseError> {
        Ok(self.map.remove(key).map(|t| t.0))
    }

    fn need(&mut self, key: &str, op: &str) -> Result<Tok, ParseError> {
        self.take(key)?
            .ok_or_else(|| self.err(key, format!("{op} needs attribute '{key}'")))
    }

    fn name(&mut self, key: &str, op: &str) -> Result<String, ParseError> {
        let col = self.map.get(key).map(|t| t.1);
        match self.need(key, op)? {
            Tok::Word(w) | Tok::Str(w) => Ok(w),
            _ => Err(ParseError {
                line: self.line,
                col: col.unwrap_or(self.end_col),
                message: format!("attribute '{key}' must be a name"),
            }),
        }
    }

    fn opt_name(&mut self, key: &str, op: &str) -> Result<Option<String>, ParseError> {
        if self.map.contains_key(key) {
            self.name(key, op).map(Some)
        } else {
            Ok(None)
        }
    }

    fn num<T: std::str::FromStr>(&mut self, key: &str, op: &str) -> Result<T, ParseError> {
        let col = self.map.get(key).map_or(self.end_col, |t| t.1);
        match self.need(key, op)? {
            Tok::Word(w) => w.parse().map_err(|_| ParseError {
                line: self.line,
                col,
                message: format!("attribute '{key}' has bad number '{w}'"),
            }),
            _ => Err(ParseError {
                line: self.line,
                col,
                message: format!("attribute '{key}' must be a number"),
            }),
        }
    }

    fn finish(self) -> Result<(), ParseError> {
        match self.map.into_iter().next() {
            Some((k, (_, col))) => Err(ParseError {
                line: self.line,
                col,
                message: format!("unknown attribute '{k}'"),
            }),
            None => Ok(()),
        }
    }
}

/// Parses the text form into a graph. The result is not verified: run the verifier on it.
pub fn parse(text: &str) -> Result<Graph, ParseError> {
    let mut graph = Graph::new();
    let mut names: HashMap<String, ValueId> = HashMap::new();
    let mut seen_header = false;
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with(';') {
            continue;
        }
        if !seen_header {
            if line != HEADER {
                return Err(ParseError {
                    line: line_no,
                    col: 1,
                    message: format!("expected the header '{HEADER}'"),
                });
            }
            seen_header = true;
            continue;
        }
        let mut lx = Lexer::new(raw, line_no)?;
        match lx.peek() {
            Some(Tok::Word(w)) if w == "meta" => {
                lx.next();
                let k = lx.name("a meta key")?;
                lx.expect('=')?;
                let v = lx.string("the meta value")?;
                lx.done()?;
                graph.meta.insert(k, v);
            }
            Some(Tok::Word(w)) if w == "param" => {
                lx.next();
                let name = lx.name("a parameter name")?;
                lx.expect(':')?;
                let (dtype, quant, shape) = lx.typed(true, |w| w.parse::<usize>().ok())?;
                // `print_model`'s annotation of a pruned parameter: checked, then dropped.
                if lx.peek() == Some(&Tok::Word("sparsity".into())) {
                    lx.next();
                    lx.expect('=')?;
                    let col = lx.col();
                    let f = lx.word("a fraction")?;
                    if !f.parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)) {
                        return Err(ParseError {
                            line: line_no,
                            col,
                            message: format!("sparsity '{f}' is not a fraction in [0, 1]"),
                        });
                    }
                }
                lx.done()?;
                if graph.param(&name).is_some() {
                    return Err(ParseError {
                        line: line_no,
                        col: 1,
                        message: format!("parameter '{name}' declared twice"),
                    });
                }
                let ty = ParamType {
                    dtype,
                    shape,
                    quant,
                };
                if let Some(q) = quant {
                    q.check_shape(&ty.shape).map_err(|e| ParseError {
                        line: line_no,
                        col: 1,
                        message: format!("parameter '{name}': {e}"),
                    })?;
                }
                graph.declare_param(name, ty);
            }
            _ => parse_node(&mut lx, &mut graph, &mut names)?,
        }
    }
    if !seen_header {
        return Err(ParseError {
            line: 1,
            col: 1,
            message: format!("empty input: expected the header '{HEADER}'"),
        });
    }
    Ok(graph)
}

fn parse_node(
    lx: &mut Lexer,
    graph: &mut Graph,
    names: &mut HashMap<String, ValueId>,
) -> Result<(), ParseError> {
    // Results.
    let mut results: Vec<(String, ValueType, usize)> = Vec::new();
    if matches!(lx.peek(), Some(Tok::Value(_))) {
        loop {
            let col = lx.col();
            let Some(Tok::Value(name)) = lx.next() else {
                return Err(lx.error("expected a result such as %3"));
            };
            lx.expect(':')?;
            let (dtype, _, shape) = lx.typed(false, parse_dim)?;
            results.push((name, ValueType { dtype, shape }, col));
            if lx.eat('=') {
                break;
            }
            lx.expect(',')?;
        }
    }
    // Op and operands.
    let op_col = lx.col();
    let op_name = lx.word("an op name")?;
    lx.expect('(')?;
    let mut operands = Vec::new();
    if !lx.eat(')') {
        loop {
            let col = lx.col();
            match lx.next() {
                Some(Tok::Value(v)) => {
                    let id = names.get(&v).copied().ok_or_else(|| ParseError {
                        line: lx.line,
                        col,
                        message: format!("use of undefined value %{v}"),
                    })?;
                    operands.push(id);
                }
                _ => {
                    return Err(ParseError {
                        line: lx.line,
                        col,
                        message: "expected an operand such as %3".into(),
                    })
                }
            }
            if lx.eat(')') {
                break;
            }
            lx.expect(',')?;
        }
    }
    // Attributes.
    let mut attrs = Attrs {
        map: BTreeMap::new(),
        line: lx.line,
        end_col: lx.end_col,
    };
    while lx.peek().is_some() {
        let col = lx.col();
        let key = lx.word("an attribute name")?;
        lx.expect('=')?;
        let vcol = lx.col();
        let value = if lx.eat('[') {
            let mut items = Vec::new();
            if !lx.eat(']') {
                loop {
                    items.push(lx.word("a list item")?);
                    if lx.eat(']') {
                        break;
                    }
                    lx.expect(',')?;
                }
            }
            Tok::Word(format!("[{}]", items.join(",")))
        } else {
            lx.next()
                .ok_or_else(|| lx.error(format!("attribute '{key}' has no value")))?
        };
        if attrs.map.insert(key.clone(), (value, vcol)).is_some() {
            return Err(ParseError {
                line: lx.line,
                col,
                message: format!("attribute '{key}' given twice"),
            });
        }
    }
    let op = build_op(&op_name, &mut attrs).map_err(|mut e| {
        if e.col == 0 {
            e.col = op_col;
        }
        e
    })?;
    attrs.finish()?;
    let declared: Vec<ValueType> = results.iter().map(|r| r.1.clone()).collect();
    let ids = graph.add_typed(op, &operands, declared);
    for ((name, _, col), id) in results.into_iter().zip(ids) {
        if names.insert(name.clone(), id).is_some() {
            return Err(ParseError {
                line: lx.line,
                col,
                message: format!("value %{name} defined twice"),
            });
        }
    }
    Ok(())
}

fn build_op(name: &str, a: &mut Attrs) -> Result<Op, ParseError> {
    let norm = |kind, a: &mut Attrs| -> Result<Op, ParseError> {
        Ok(Op::Norm {
            kind,
            eps: a.num("eps", name)?,
            weight: a.name("weight", name)?,
            bias: a.opt_name("bias", name)?,
            group: if a.map.contains_key("group") {
                Some(a.num("group", name)?)
            } else {
                None
            },
        })
    };
    Ok(match name {
        "input" => Op::Input {
            name: a.name("name", name)?,
        },
        "output" => Op::Output {
            name: a.name("name", name)?,
        },
        "embedding" => Op::Embedding {
            weight: a.name("weight", name)?,
        },
        "position_embedding" => Op::PositionEmbedding {
            weight: a.name("weight", name)?,
        },
        "rms_norm" => norm(NormKind::Rms, a)?,
        "layer_norm" => norm(NormKind::Layer, a)?,
        "linear" => Op::Linear {
            weight: a.name("weight", name)?,
            bias: a.opt_name("bias", name)?,
            lora: match a.opt_name("lora_a", name)? {
                None => None,
                Some(la) => Some(Lora {
                    a: la,
                    b: a.name("lora_b", name)?,
                    scale: a.num("lora_scale", name)?,
                    dropout: a.num("lora_dropout", name)?,
                }),
            },
        },
        "split" => {
            let col = a.map.get("sizes").map_or(a.end_col, |t| t.1);
            let Tok::Word(list) = a.need("sizes", name)? else {
                return Err(a.err("sizes", "sizes must be a list".into()));
            };
            let inner = list.trim_start_matches('[').trim_end_matches(']');
            let sizes = inner
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| ParseError {
                    line: a.line,
                    col,
                    message: format!("bad split sizes {list}"),
                })?;
            Op::Split { sizes }
        }
        "attention" => {
            let rope = if a.map.contains_key("rope_theta") || a.map.contains_key("rope_dim") {
                let col = a.map.get("rope_scaling").map_or(a.end_col, |t| t.1);
                let scaling = match a.opt_name("rope_scaling", name)?.as_deref() {
                    None => RopeScaling::None,
                    Some("linear") => RopeScaling::Linear {
                        factor: a.num("rope_factor", name)?,
                    },
                    Some("llama3") => RopeScaling::Llama3 {
                        factor: a.num("rope_factor", name)?,
                        low_freq_factor: a.num("rope_low_freq_factor", name)?,
                        high_freq_factor: a.num("rope_high_freq_factor", name)?,
                        original_context: a.num("rope_original_context", name)?,
                    },
                    Some("yarn") => RopeScaling::Yarn {
                        factor: a.num("rope_factor", name)?,
                        original_context: a.num("rope_original_context", name)?,
                        beta_fast: a.num("rope_beta_fast", name)?,
                        beta_slow: a.num("rope_beta_slow", name)?,
                        attention_factor: a.num("rope_attention_factor", name)?,
                        truncate: a.num("rope_truncate", name)?,
                    },
                    Some(other) => {
                        return Err(ParseError {
                            line: a.line,
                            col,
                            message: format!(
                            "unknown rope_scaling '{other}' (linear, llama3, yarn, or none given)"
                        ),
                        })
                    }
                };
                Some(Rope {
                    theta: a.num("rope_theta", name)?,
                    dim: a.num("rope_dim", name)?,
                    scaling,
                })
            } else {
                None
            };
            Op::Attention(AttentionSpec {
                heads: a.num("heads", name)?,
                kv_heads: a.num("kv_heads", name)?,
                head_dim: a.num("head_dim", name)?,
                rope,
                causal: a.num("causal", name)?,
                window: if a.map.contains_key("window") {
                    Some(a.num("window", name)?)
                } else {
                    None
                },
                scale: if a.map.contains_key("scale") {
                    Some(a.num("scale", name)?)
                } else {
                    None
                },
                softcap: if a.map.contains_key("softcap") {
                    Some(a.num("softcap", name)?)
                } else {
                    None
                },
            })
        }
        "add" => Op::Add,
        "scale" => Op::Scale {
            factor: a.num("factor", name)?,
        },
        "softcap" => Op::SoftCap {
            cap: a.num("cap", name)?,
        },
        "mul" => Op::Mul,
        other => match Activation::ALL.into_iter().find(|x| x.name() == other) {
            Some(act) => Op::Activation(act),
            None => {
                return Err(ParseError {
                    line: a.line,
                    col: 0,
                    message: format!("unknown op '{other}'"),
                })
            }
        },
    })
}
