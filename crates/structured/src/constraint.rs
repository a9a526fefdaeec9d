//! Constraints a request may carry and their compilation into llguidance parsers: once per
//! distinct constraint (a small cache), under fuel, size and wall-clock limits, so a hostile
//! schema or grammar fails with a named error instead of hanging the server.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use llguidance::api::{ParserLimits, TopLevelGrammar};
use llguidance::toktrie::TokEnv;
use llguidance::{Matcher, ParserFactory};
use serde_json::{json, Value};
use tokenfab_loader::Tokenizer;

use crate::error::ConstraintKind;
use crate::matcher::RequestMatcher;
use crate::schema::prepare_schema;
use crate::{tokenizer, Error, Result};

/// What a request constrains its output to.
#[derive(Debug, Clone, PartialEq)]
pub enum Constraint {
    /// `response_format: {"type": "json_object"}`: any JSON object.
    JsonObject,
    /// `response_format: {"type": "json_schema"}` or vLLM's `structured_outputs.json`.
    /// `strict`: objects that do not say otherwise get `additionalProperties: false`, as
    /// OpenAI's strict mode produces no keys beyond `properties`.
    JsonSchema { schema: Value, strict: bool },
    /// vLLM's `structured_outputs.regex`: the whole output matches (Rust `regex` syntax).
    Regex(String),
    /// vLLM's `structured_outputs.choice`: the output is exactly one of the strings.
    Choice(Vec<String>),
    /// vLLM's `structured_outputs.grammar`: a Lark grammar (llguidance's dialect).
    Grammar(String),
    /// A tool-calling grammar built by [`crate::tools`].
    Tools(ToolGrammar),
}

/// A Lark grammar for tool calls; only [`crate::tools`] builds one.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolGrammar(pub(crate) String);

impl ToolGrammar {
    /// The Lark source, for logs and tests.
    pub fn source(&self) -> &str {
        &self.0
    }
}

impl Constraint {
    pub fn kind(&self) -> ConstraintKind {
        match self {
            Constraint::JsonObject => ConstraintKind::JsonObject,
            Constraint::JsonSchema { .. } => ConstraintKind::JsonSchema,
            Constraint::Regex(_) => ConstraintKind::Regex,
            Constraint::Choice(_) => ConstraintKind::Choice,
            Constraint::Grammar(_) => ConstraintKind::Grammar,
            Constraint::Tools(_) => ConstraintKind::Tools,
        }
    }

    /// The cache key; also the size that [`Limits::max_source_bytes`] bounds.
    fn key(&self) -> String {
        let body = match self {
            Constraint::JsonObject => String::new(),
            Constraint::JsonSchema { schema, strict } => format!("{strict}\0{schema}"),
            Constraint::Regex(s) | Constraint::Grammar(s) => s.clone(),
            Constraint::Choice(c) => serde_json::to_string(c).unwrap_or_default(),
            Constraint::Tools(g) => g.0.clone(),
        };
        format!("{}\0{body}", self.kind())
    }

    fn to_grammar(&self) -> Result<TopLevelGrammar> {
        Ok(match self {
            Constraint::JsonObject => {
                TopLevelGrammar::from_json_schema(prepare_schema(json!({"type": "object"}), false))
            }
            Constraint::JsonSchema { schema, strict } => {
                TopLevelGrammar::from_json_schema(prepare_schema(schema.clone(), *strict))
            }
            Constraint::Regex(rx) => TopLevelGrammar::from_regex(rx),
            Constraint::Choice(choices) => {
                if choices.is_empty() {
                    return Err(Error::Invalid {
                        field: "choice",
                        message: "must list at least one string".into(),
                    });
                }
                let alts: Vec<String> = choices.iter().map(|c| regex_escape(c)).collect();
                TopLevelGrammar::from_regex(&format!("(?:{})", alts.join("|")))
            }
            Constraint::Grammar(src) | Constraint::Tools(ToolGrammar(src)) => {
                if src.trim().is_empty() {
                    return Err(Error::Invalid {
                        field: "grammar",
                        message: "is empty".into(),
                    });
                }
                TopLevelGrammar::from_lark(src.clone())
            }
        })
    }
}

/// Escapes every regex metacharacter so `s` matches itself.
fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 2);
    for c in s.chars() {
        if c.is_ascii_punctuation() {
            out.push('\\');
            out.push(c);
        } else if c == '\n' {
            out.push_str("\\n");
        } else if c == '\r' {
            out.push_str("\\r");
        } else if c == '\t' {
            out.push_str("\\t");
        } else {
            out.push(c);
        }
    }
    out
}

/// Bounds on compiling and decoding.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Longest schema / regex / grammar text accepted, in bytes.
    pub max_source_bytes: usize,
    /// Wall-clock limit on one compile (including the first mask).
    pub compile_timeout: Duration,
    /// llguidance's fuel and size limits: grammar size, lexer states, work per mask.
    pub parser: ParserLimits,
    /// Compiled constraints kept for reuse (64 clients sending one schema compile it once).
    pub cache_entries: usize,
    /// Lexer caches per compiled constraint (see [`Compiled`]); default: rayon's threads.
    pub lexer_shards: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_source_bytes: 512 << 10,
            compile_timeout: Duration::from_secs(2),
            parser: ParserLimits::default(),
            cache_entries: 64,
            lexer_shards: rayon::current_num_threads().clamp(1, 16),
        }
    }
}

/// A constraint compiled and started. Its matchers share lexer caches (llguidance builds lexer
/// states lazily, and a fresh cache makes each request pay for them again: 4-5x the mask time
/// of a warm one on the bench) in a few shards, one per rayon thread, each behind its own
/// mutex; [`crate::compute_masks`] runs the rows of one shard in sequence and the shards in
/// parallel, so no row waits on a lock. A cache changes timing, never a mask.
pub struct Compiled {
    /// (shards,) started templates (first mask computed), never advanced.
    shards: Vec<Shard>,
    next: AtomicUsize,
    vocab: usize,
}

struct Shard {
    template: Mutex<Matcher>,
    /// Unique over the process: the lexer-cache group of the shard's matchers.
    group: u64,
}

static NEXT_GROUP: AtomicU64 = AtomicU64::new(0);

impl Compiled {
    fn new(template: Matcher, shards: usize, vocab: usize) -> Self {
        let mut all = Vec::with_capacity(shards);
        for _ in 1..shards.max(1) {
            all.push(template.deep_clone());
        }
        all.push(template);
        Compiled {
            shards: all
                .into_iter()
                .map(|m| Shard {
                    template: Mutex::new(m),
                    group: NEXT_GROUP.fetch_add(1, Ordering::Relaxed),
                })
                .collect(),
            next: AtomicUsize::new(0),
            vocab,
        }
    }

    /// A fresh matcher for one request, at the start of the output. Requests share no parse
    /// state, only (per shard) the lexer cache.
    pub fn matcher(&self) -> RequestMatcher {
        let shard = &self.shards[self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len()];
        let m = shard
            .template
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        RequestMatcher::new(m, self.vocab, shard.group)
    }
}

struct CacheEntry {
    compiled: Arc<Compiled>,
    last_used: u64,
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, CacheEntry>,
    clock: u64,
}

/// Everything constrained decoding needs for one model, built once when the model loads: the
/// token trie, llguidance's parser factory and the compile cache. Share it behind an `Arc`.
pub struct Grammars {
    factory: Arc<ParserFactory>,
    env: TokEnv,
    tokenizer: Arc<Tokenizer>,
    limits: Limits,
    vocab: usize,
    cache: Mutex<Cache>,
}

impl std::fmt::Debug for Grammars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Grammars")
            .field("vocab", &self.vocab)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl Grammars {
    /// Builds the trie over `tokenizer`'s vocabulary for logits rows of `n_vocab` entries.
    pub fn new(tokenizer: Arc<Tokenizer>, n_vocab: usize, limits: Limits) -> Result<Self> {
        let env = tokenizer::tok_env(tokenizer.clone(), n_vocab)?;
        let mut factory =
            ParserFactory::new_simple(&env).map_err(|e| Error::Tokenizer(e.to_string()))?;
        factory.quiet();
        *factory.limits_mut() = limits.parser.clone();
        Ok(Grammars {
            factory: Arc::new(factory),
            env,
            tokenizer,
            limits,
            vocab: n_vocab,
            cache: Mutex::new(Cache::default()),
        })
    }

    /// Width of the masks (the logits row).
    pub fn vocab_size(&self) -> usize {
        self.vocab
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The id of `text` when it is a single special (control) token, which a grammar must
    /// name as `<[id]>` because free text never spells it.
    pub(crate) fn special_token(&self, text: &str) -> Option<u32> {
        let id = self.tokenizer.token_to_id(text)?;
        self.env.tok_trie().is_special_token(id).then_some(id)
    }

    /// Compiles `c` (or takes it from the cache). Errors are the client's: see [`Error`].
    pub fn compile(&self, c: &Constraint) -> Result<Arc<Compiled>> {
        let key = c.key();
        let kind = c.kind();
        if key.len() > self.limits.max_source_bytes {
            return Err(Error::TooLarge {
                kind,
                size: key.len(),
                limit: self.limits.max_source_bytes,
            });
        }
        if let Some(hit) = self.cache_get(&key) {
            return Ok(hit);
        }
        let grammar = c.to_grammar()?;
        let (tx, rx) = mpsc::channel();
        let factory = self.factory.clone();
        // A separate thread so the wall-clock limit holds whatever llguidance does; fuel limits
        // end an abandoned compile soon after.
        std::thread::Builder::new()
            .name("grammar-compile".into())
            .spawn(move || {
                let _ = tx.send(start_matcher(&factory, grammar));
            })
            .map_err(|e| Error::Matcher(format!("cannot start a compile thread: {e}")))?;
        let matcher = match rx.recv_timeout(self.limits.compile_timeout) {
            Ok(r) => r.map_err(|message| Error::Compile { kind, message })?,
            Err(_) => {
                return Err(Error::CompileTimeout {
                    kind,
                    limit_ms: self.limits.compile_timeout.as_millis() as u64,
                })
            }
        };
        let compiled = Arc::new(Compiled::new(matcher, self.limits.lexer_shards, self.vocab));
        self.cache_put(key, compiled.clone());
        Ok(compiled)
    }

    fn cache_get(&self, key: &str) -> Option<Arc<Compiled>> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache.clock += 1;
        let now = cache.clock;
        cache.entries.get_mut(key).map(|e| {
            e.last_used = now;
            e.compiled.clone()
        })
    }

    fn cache_put(&self, key: String, compiled: Arc<Compiled>) {
        if self.limits.cache_entries == 0 {
            return;
        }
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.entries.len() >= self.limits.cache_entries {
            // Evict the least recently used entry (a linear scan over a few dozen).
            if let Some(oldest) = cache
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone())
            {
                cache.entries.remove(&oldest);
            }
        }
        cache.clock += 1;
        let last_used = cache.clock;
        cache.entries.insert(
            key,
            CacheEntry {
                compiled,
                last_used,
            },
        );
    }
}

/// Compiles, starts and computes the first mask, so grammars that can produce nothing fail at
/// compile time (400) rather than on the first step.
fn start_matcher(
    factory: &ParserFactory,
    grammar: TopLevelGrammar,
) -> std::result::Result<Matcher, String> {
    let parser = factory.create_parser(grammar).map_err(|e| e.to_string())?;
    let mut m = Matcher::new(Ok(parser));
    let mask = m.compute_mask().map_err(|e| e.to_string())?;
    if mask.is_zero() {
        return Err("the grammar allows no output at all".into());
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regex_escape_escapes_metacharacters() {
        assert_eq!(regex_escape("a.b*(c)"), "a\\.b\\*\\(c\\)");
        assert_eq!(regex_escape("x y\n"), "x y\\n");
        assert_eq!(regex_escape("é"), "é");
    }

    #[test]
    fn cache_keys_tell_constraints_apart() {
        let a = Constraint::JsonSchema {
            schema: json!({"type": "string"}),
            strict: false,
        };
        let b = Constraint::JsonSchema {
            schema: json!({"type": "string"}),
            strict: true,
        };
        assert_ne!(a.key(), b.key());
        assert_ne!(
            Constraint::Regex("a".into()).key(),
            Constraint::Grammar("a".into()).key()
        );
    }
}
