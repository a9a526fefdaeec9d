//! Parse, don't validate (habit 4): an OpenAI request becomes a [`ValidRequest`] here, or a 400
//! naming the field and the limit ("`max_tokens` must be <= 4096. Given: 5000"). Nothing reaches
//! the engine without passing through this file: `ValidRequest` and `ValidPrompt` have private
//! fields, so no other module can build one.

use std::sync::Arc;

use tokenfab_engine::{check_token_id, EngineHandle, EngineRequest};
use tokenfab_loader::{ChatTemplate, Tokenizer};
use tokenfab_structured::Grammars;
use tokenfab_types::{SamplingParams, TokenId};

use crate::budget::{self, WorkBudget};
use crate::error::{shown_number, ApiError, ApiResult};
use crate::messages;
use crate::openai::{
    ChatCompletionRequest, ChatMessageIn, CompletionRequest, PromptInput, SamplingFields,
    StringOrList,
};
use crate::tools::{ChatParse, RequestTools, ToolSetup};

/// Where validation gets the model's grammar compiler (built on first use).
pub trait GrammarSource: Sync {
    fn grammars(&self) -> Result<Arc<Grammars>, tokenfab_structured::Error>;
}

impl GrammarSource for EngineHandle {
    fn grammars(&self) -> Result<Arc<Grammars>, tokenfab_structured::Error> {
        EngineHandle::grammars(self)
    }
}

impl GrammarSource for Arc<Grammars> {
    fn grammars(&self) -> Result<Arc<Grammars>, tokenfab_structured::Error> {
        Ok(self.clone())
    }
}

/// Most alternatives per token in logprobs (OpenAI's limit).
pub const MAX_LOGPROBS: usize = 20;
/// Most choices per prompt.
pub const MAX_N: usize = 128;
/// Most stop strings, and the longest one in bytes.
pub const MAX_STOP: usize = 64;
pub const MAX_STOP_LEN: usize = 1024;

/// What validation needs to know about the model and the server's limits.
pub struct Limits<'a> {
    pub tokenizer: &'a Tokenizer,
    pub template: Option<&'a ChatTemplate>,
    /// The model's context length.
    pub context_len: usize,
    /// Tokens the KV pool holds: one request can never use more.
    pub kv_cache_tokens: usize,
    pub vocab_size: usize,
    /// The served model id; a request's `model` must equal it.
    pub model_id: &'a str,
    /// Largest `max_tokens`, and the cap of the default.
    pub max_tokens_limit: usize,
    /// Most prompt tokens of one prompt (`--max-prompt-tokens`; the context bounds it anyway).
    pub max_prompt_tokens: usize,
    /// Compiles structured-output constraints and tool grammars.
    pub grammars: &'a dyn GrammarSource,
    /// How tools reach prompts and how outputs are parsed.
    pub tools: ToolSetup,
    /// What one request may ask for in all (budget.rs).
    pub work: WorkBudget,
    /// Parse special-token text inside message contents and names (`--special-tokens-in-messages`);
    /// off: it stays text (messages.rs).
    pub special_tokens_in_messages: bool,
}

impl Limits<'_> {
    /// The most tokens one sequence (prompt + completion) may hold.
    fn seq_limit(&self) -> usize {
        self.context_len.min(self.kv_cache_tokens)
    }
}

/// One prompt, tokenized, with its completion budget.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidPrompt {
    text: String,
    tokens: Vec<TokenId>,
    max_tokens: usize,
}

impl ValidPrompt {
    pub fn text(&self) -> &str {
        &self.text
    }
    /// (n,) never empty, every id in the vocabulary.
    pub fn tokens(&self) -> &[TokenId] {
        &self.tokens
    }
    /// Tokens to generate; 0 only with `echo` (the prompt's logprobs alone).
    pub fn max_tokens(&self) -> usize {
        self.max_tokens
    }
}

/// A request that fits the model: everything the routes need to submit and to answer.
#[derive(Debug, Clone)]
pub struct ValidRequest {
    prompts: Vec<ValidPrompt>,
    n: usize,
    stream: bool,
    include_usage: bool,
    echo: bool,
    logprobs: Option<usize>,
    tokens_as_ids: bool,
    /// Chat: how the output splits into content, reasoning and tool calls.
    parse: ChatParse,
    /// Everything of the engine request but the prompt and `max_tokens`.
    template: EngineRequest,
}

impl ValidRequest {
    pub fn prompts(&self) -> &[ValidPrompt] {
        &self.prompts
    }
    /// Choices per prompt; choice index = prompt index * n + i.
    pub fn n(&self) -> usize {
        self.n
    }
    pub fn stream(&self) -> bool {
        self.stream
    }
    /// Streams end with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.include_usage
    }
    /// Completions: return the prompt before the completion.
    pub fn echo(&self) -> bool {
        self.echo
    }
    /// Per generated token: its logprob and this many alternatives.
    pub fn logprobs(&self) -> Option<usize> {
        self.logprobs
    }
    /// Completions: spell logprob tokens as `token_id:<id>`.
    pub fn tokens_as_ids(&self) -> bool {
        self.tokens_as_ids
    }

    /// Chat: how the output splits into content, reasoning and tool calls.
    pub fn chat_parse(&self) -> ChatParse {
        self.parse
    }

    pub fn num_choices(&self) -> usize {
        self.prompts.len() * self.n
    }

    /// The engine requests in choice order (seed + i for choice i of a prompt, when seeded).
    pub fn engine_requests(&self) -> Vec<EngineRequest> {
        let mut out = Vec::with_capacity(self.num_choices());
        for p in &self.prompts {
            for i in 0..self.n {
                let mut r = self.template.clone();
                r.prompt_tokens = p.tokens.clone();
                r.max_tokens = p.max_tokens;
                r.sampling.seed = r.sampling.seed.map(|s| s.wrapping_add(i as u64));
                out.push(r);
            }
        }
        out
    }
}

#[cfg(test)]
impl ValidRequest {
    /// One prompt ("hi", tokens [1, 2], `max_tokens` 4) for the stream machines' tests.
    pub(crate) fn for_tests(n: usize, echo: bool, logprobs: Option<usize>, usage: bool) -> Self {
        Self {
            prompts: vec![ValidPrompt {
                text: "hi".into(),
                tokens: vec![1, 2],
                max_tokens: 4,
            }],
            n,
            stream: true,
            include_usage: usage,
            echo,
            logprobs,
            tokens_as_ids: false,
            parse: ChatParse::default(),
            template: EngineRequest::default(),
        }
    }

    /// The same with a chat output parse (tool calls, reasoning).
    pub(crate) fn with_parse(mut self, parse: ChatParse) -> Self {
        self.parse = parse;
        self
    }
}

/// A request's `model` must name the served model; absent is fine.
pub fn check_model(model: Option<&str>, model_id: &str) -> ApiResult<()> {
    match model {
        Some(m) if m != model_id => Err(ApiError::ModelNotFound(m.to_string())),
        _ => Ok(()),
    }
}

fn in_range(field: &str, v: f64, lo: f64, hi: f64, shown: &str) -> ApiResult<()> {
    if v.is_finite() && v >= lo && v <= hi {
        Ok(())
    } else {
        Err(ApiError::invalid(
            field,
            format!("`{field}` must be in {shown}. Given: {}", shown_number(v)),
        ))
    }
}

/// The shared sampling fields, checked; `max_tokens` still unresolved (it needs the prompt).
#[derive(Debug, Clone)]
pub struct ValidSampling {
    pub request: EngineRequest,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
}

/// Checks the fields both generation routes share. `max_tokens` is the route's choice between
/// `max_tokens` and `max_completion_tokens`.
pub fn sampling(
    f: &SamplingFields,
    max_tokens: Option<(&str, i64)>,
    vocab_size: usize,
    max_tokens_limit: usize,
) -> ApiResult<ValidSampling> {
    let mut s = SamplingParams::default();
    if let Some(t) = f.temperature {
        in_range("temperature", t, 0.0, 2.0, "[0, 2]")?;
        s.temperature = t as f32;
    }
    if let Some(p) = f.top_p {
        if !(p > 0.0 && p <= 1.0) {
            return Err(ApiError::invalid(
                "top_p",
                format!("`top_p` must be in (0, 1]. Given: {}", shown_number(p)),
            ));
        }
        s.top_p = p as f32;
    }
    if let Some(k) = f.top_k {
        if k < -1 {
            return Err(ApiError::invalid(
                "top_k",
                format!("`top_k` must be -1 (disabled), 0 (disabled) or positive. Given: {k}"),
            ));
        }
        s.top_k = k.max(0) as usize;
    }
    if let Some(m) = f.min_p {
        in_range("min_p", m, 0.0, 1.0, "[0, 1]")?;
        s.min_p = m as f32;
    }
    if let Some(r) = f.repetition_penalty {
        if !(r > 0.0 && r <= 10.0) {
            return Err(ApiError::invalid(
                "repetition_penalty",
                format!(
                    "`repetition_penalty` must be in (0, 10]. Given: {}",
                    shown_number(r)
                ),
            ));
        }
        s.repetition_penalty = r as f32;
    }
    if let Some(p) = f.presence_penalty {
        in_range("presence_penalty", p, -2.0, 2.0, "[-2, 2]")?;
        s.presence_penalty = p as f32;
    }
    if let Some(p) = f.frequency_penalty {
        in_range("frequency_penalty", p, -2.0, 2.0, "[-2, 2]")?;
        s.frequency_penalty = p as f32;
    }
    s.seed = f.seed.map(|v| v as u64);

    let stop = match &f.stop {
        None => vec![],
        Some(StringOrList::One(s)) => vec![s.clone()],
        Some(StringOrList::Many(v)) => v.clone(),
    };
    if stop.len() > MAX_STOP {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` must have at most {MAX_STOP} strings. Given: {}",
                stop.len()
            ),
        ));
    }
    if let Some(bad) = stop.iter().find(|s| s.is_empty() || s.len() > MAX_STOP_LEN) {
        return Err(ApiError::invalid(
            "stop",
            format!(
                "`stop` strings must be 1 to {MAX_STOP_LEN} bytes long. Given one of {} bytes",
                bad.len()
            ),
        ));
    }
    let token = |field, id| check_token_id(field, id, vocab_size).map_err(ApiError::from);
    let stop_token_ids = f
        .stop_token_ids
        .iter()
        .flatten()
        .map(|&id| token("stop_token_ids", id))
        .collect::<ApiResult<Vec<_>>>()?;
    let mut logit_bias = Vec::new();
    for (k, &b) in f.logit_bias.iter().flatten() {
        let id: i64 = k.trim().parse().map_err(|_| {
            ApiError::invalid(
                "logit_bias",
                format!("`logit_bias` keys must be token ids. Given: {k:?}"),
            )
        })?;
        let id = token("logit_bias", id)?;
        in_range("logit_bias", b, -100.0, 100.0, "[-100, 100]")?;
        logit_bias.push((id, b as f32));
    }
    let n = match f.n {
        None => 1,
        Some(n) if (1..=MAX_N as i64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::invalid(
                "n",
                format!("`n` must be in [1, {MAX_N}]. Given: {n}"),
            ))
        }
    };
    let max_tokens = match max_tokens {
        None => None,
        Some((field, m)) if m < 0 => {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be >= 0. Given: {m}"),
            ))
        }
        Some((field, m)) if m as u64 > max_tokens_limit as u64 => {
            return Err(ApiError::invalid(
                field,
                format!("`{field}` must be <= {max_tokens_limit}. Given: {m}"),
            ))
        }
        Some((_, m)) => Some(m as usize),
    };
    let stream = f.stream.unwrap_or(false);
    if f.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "stream_options",
            "`stream_options` can only be given when `stream` is true.",
        ));
    }
    let include_usage = f.stream_options.as_ref().is_some_and(|o| o.include_usage);
    Ok(ValidSampling {
        request: EngineRequest {
            sampling: s,
            stop,
            stop_token_ids,
            ignore_eos: f.ignore_eos.unwrap_or(false),
            logit_bias,
            ..Default::default()
        },
        n,
        stream,
        include_usage,
        max_tokens,
    })
}

/// The completion budget of one prompt: the request's `max_tokens`, or what the context leaves
/// (capped by `max_tokens_limit`). Prompt + completion must fit the context and the KV pool.
pub fn fit_max_tokens(
    prompt_len: usize,
    requested: Option<usize>,
    allow_zero: bool,
    l: &Limits,
) -> ApiResult<usize> {
    if prompt_len > l.max_prompt_tokens {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "The prompt must be <= {} tokens. Given: {prompt_len}",
                l.max_prompt_tokens
            ),
        ));
    }
    let limit = l.seq_limit();
    let (what, what_cap) = if l.kv_cache_tokens < l.context_len {
        ("the KV cache holds", "The KV cache holds")
    } else {
        (
            "this model's maximum context length is",
            "This model's maximum context length is",
        )
    };
    // A prompt-only request (echo, `max_tokens` 0) may fill the limit; others need 1 more.
    let prompt_only = allow_zero && requested == Some(0);
    if prompt_len > limit || (prompt_len == limit && !prompt_only) {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "The prompt is {prompt_len} tokens long, but {what} {limit} tokens \
                 (prompt plus at least 1 completion token)."
            ),
        ));
    }
    match requested {
        None => Ok((limit - prompt_len).min(l.max_tokens_limit)),
        Some(0) if !allow_zero => Err(ApiError::invalid(
            "max_tokens",
            "`max_tokens` must be >= 1 (0 is allowed only with `echo`). Given: 0",
        )),
        Some(m) if prompt_len + m > limit => Err(ApiError::invalid(
            "max_tokens",
            format!(
                "{what_cap} {limit} tokens. However, you requested {} tokens ({prompt_len} in \
                 the prompt, {m} for the completion). Reduce the prompt or `max_tokens`.",
                prompt_len + m
            ),
        )),
        Some(m) => Ok(m),
    }
}

/// Renders messages through the chat template (with the request's tools, see `tools.rs`) and
/// tokenizes them (the template's special-token text parsed, the messages' and tools' not:
/// messages.rs). A BOS the template already wrote is not added a second time. A rendering that
/// cannot be `max_tokens` tokens or fewer is refused untokenized.
pub fn chat_prompt(
    messages: &[ChatMessageIn],
    add_generation_prompt: bool,
    tools: Option<&RequestTools>,
    max_tokens: usize,
    l: &Limits,
) -> ApiResult<(String, Vec<TokenId>)> {
    if messages.is_empty() {
        return Err(ApiError::invalid(
            "messages",
            "`messages` must hold at least 1 message. Given: 0",
        ));
    }
    let template = l.template.ok_or_else(|| {
        ApiError::bad_request(
            "This model has no chat template; use /v1/completions with a plain prompt.",
        )
    })?;
    let msgs = messages::template_messages(messages, template, l)?;
    let tools = tools.map(|t| messages::shielded_tools(t, l)).transpose()?;
    let text = crate::tools::render(
        template,
        &msgs,
        tools.as_ref(),
        &l.tools,
        add_generation_prompt,
    )
    .map_err(|e| ApiError::invalid("messages", format!("The chat template failed: {e}")))?;
    let bos_written = l.tokenizer.add_bos()
        && l.tokenizer
            .bos_id()
            .and_then(|b| l.tokenizer.id_to_token(b))
            .is_some_and(|b| !b.is_empty() && text.starts_with(b));
    budget::check_text("messages", &text, max_tokens, l)?;
    let tokens = messages::encode_rendered(l.tokenizer, &text, !bos_written, l)?;
    Ok((
        tokenfab_loader::tokenizer::unshield(&text).into_owned(),
        tokens,
    ))
}

/// A completion prompt's tokens (special-token text parsed), refused before tokenizing when it
/// cannot fit.
fn encode(l: &Limits, text: &str) -> ApiResult<Vec<TokenId>> {
    budget::check_text("prompt", text, l.max_prompt_tokens.min(l.seq_limit()), l)?;
    l.tokenizer
        .encode(text, true, true)
        .map_err(|e| ApiError::Internal(format!("tokenizing a prompt: {e}")))
}

fn nonempty(tokens: Vec<TokenId>, field: &str) -> ApiResult<Vec<TokenId>> {
    if tokens.is_empty() {
        Err(ApiError::invalid(
            field,
            format!("`{field}` must not be empty."),
        ))
    } else {
        Ok(tokens)
    }
}

fn check_logprobs(field: &str, v: i64) -> ApiResult<usize> {
    if (0..=MAX_LOGPROBS as i64).contains(&v) {
        Ok(v as usize)
    } else {
        Err(ApiError::invalid(
            field,
            format!("`{field}` must be in [0, {MAX_LOGPROBS}]. Given: {v}"),
        ))
    }
}

/// `POST /v1/chat/completions`.
pub fn chat(
    req: &ChatCompletionRequest,
    f: &SamplingFields,
    l: &Limits,
) -> ApiResult<ValidRequest> {
    check_model(req.model.as_deref(), l.model_id)?;
    let mt = match (req.max_completion_tokens, f.max_tokens) {
        (Some(m), _) => Some(("max_completion_tokens", m)),
        (None, Some(m)) => Some(("max_tokens", m)),
        (None, None) => None,
    };
    let vs = sampling(f, mt, l.vocab_size, l.max_tokens_limit)?;
    let logprobs = match (req.logprobs.unwrap_or(false), req.top_logprobs) {
        (false, Some(_)) => {
            return Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs` set to true.",
            ))
        }
        (false, None) => None,
        (true, top) => Some(check_logprobs("top_logprobs", top.unwrap_or(0))?),
    };
    let tools = crate::tools::parse(req)?;
    let answer = crate::structured::constraint(f)?;
    let grammar = crate::tools::output_constraint(tools.as_ref(), answer, l)?;
    let (text, tokens) = chat_prompt(
        &req.messages,
        req.add_generation_prompt.unwrap_or(true),
        tools.as_ref(),
        l.max_prompt_tokens.min(l.seq_limit()),
        l,
    )?;
    let tokens = nonempty(tokens, "messages")?;
    let max_tokens = fit_max_tokens(tokens.len(), vs.max_tokens, false, l)?;
    let mut template = vs.request;
    template.logprobs = logprobs;
    template.grammar = grammar;
    let v = ValidRequest {
        prompts: vec![ValidPrompt {
            text,
            tokens,
            max_tokens,
        }],
        n: vs.n,
        stream: vs.stream,
        include_usage: vs.include_usage,
        echo: false,
        logprobs,
        tokens_as_ids: false,
        parse: crate::tools::chat_parse(tools.as_ref(), l),
        template,
    };
    budget::check(&v, f, l)?;
    Ok(v)
}

/// `POST /v1/completions`.
pub fn completion(
    req: &CompletionRequest,
    f: &SamplingFields,
    l: &Limits,
) -> ApiResult<ValidRequest> {
    check_model(req.model.as_deref(), l.model_id)?;
    let vs = sampling(
        f,
        f.max_tokens.map(|m| ("max_tokens", m)),
        l.vocab_size,
        l.max_tokens_limit,
    )?;
    let logprobs = req
        .logprobs
        .map(|v| check_logprobs("logprobs", v))
        .transpose()?;
    let echo = req.echo.unwrap_or(false);
    let ids = |v: &[i64]| -> ApiResult<Vec<TokenId>> {
        v.iter()
            .map(|&id| check_token_id("prompt", id, l.vocab_size).map_err(ApiError::from))
            .collect()
    };
    let raw: Vec<(String, Vec<TokenId>)> = match &req.prompt {
        PromptInput::Text(s) => vec![(s.clone(), encode(l, s)?)],
        PromptInput::Texts(v) => v
            .iter()
            .map(|s| Ok((s.clone(), encode(l, s)?)))
            .collect::<ApiResult<_>>()?,
        PromptInput::Ids(v) => {
            let t = ids(v)?;
            vec![(l.tokenizer.decode(&t, false), t)]
        }
        PromptInput::IdLists(v) => v
            .iter()
            .map(|x| {
                let t = ids(x)?;
                Ok((l.tokenizer.decode(&t, false), t))
            })
            .collect::<ApiResult<_>>()?,
    };
    if raw.is_empty() {
        return Err(ApiError::invalid("prompt", "`prompt` must not be empty."));
    }
    let prompts = raw
        .into_iter()
        .map(|(text, tokens)| {
            let tokens = nonempty(tokens, "prompt")?;
            let max_tokens = fit_max_tokens(tokens.len(), vs.max_tokens, echo, l)?;
            Ok(ValidPrompt {
                text,
                tokens,
                max_tokens,
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    let mut template = vs.request;
    template.logprobs = logprobs;
    if echo {
        template.prompt_logprobs = logprobs;
    }
    template.grammar = crate::structured::constraint(f)?
        .map(|(c, field)| crate::structured::compile(&c, field, l))
        .transpose()?;
    let v = ValidRequest {
        prompts,
        n: vs.n,
        stream: vs.stream,
        include_usage: vs.include_usage,
        echo,
        logprobs,
        tokens_as_ids: req.return_tokens_as_token_ids.unwrap_or(false),
        parse: ChatParse::default(),
        template,
    };
    budget::check(&v, f, l)?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::{parse, parse_body};

    fn fields(json: &str) -> SamplingFields {
        parse(&parse_body(json.as_bytes()).unwrap()).unwrap()
    }

    fn err(json: &str) -> String {
        sampling(&fields(json), None, 100, 4096)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn out_of_range_values_name_field_and_limit() {
        assert_eq!(
            err(r#"{"temperature": 3}"#),
            "`temperature` must be in [0, 2]. Given: 3"
        );
        assert_eq!(
            err(r#"{"top_p": 0}"#),
            "`top_p` must be in (0, 1]. Given: 0"
        );
        assert!(err(r#"{"n": 0}"#).starts_with("`n` must be in [1, 128]"));
        assert!(err(r#"{"logit_bias": {"5": 101}}"#).contains("[-100, 100]"));
        assert!(err(r#"{"logit_bias": {"x": 1}}"#).contains("keys must be token ids"));
        assert!(err(r#"{"logit_bias": {"100": 1}}"#).contains("[0, 100)"));
        assert!(err(r#"{"stop_token_ids": [-1]}"#).contains("stop_token_ids"));
        assert!(err(r#"{"stop": ""}"#).contains("`stop` strings"));
        assert!(err(r#"{"stream_options": {"include_usage": true}}"#).contains("stream"));
        let e = sampling(&fields("{}"), Some(("max_tokens", 5000)), 100, 4096).unwrap_err();
        assert_eq!(e.to_string(), "`max_tokens` must be <= 4096. Given: 5000");
    }

    #[test]
    fn good_values_reach_the_engine_request() {
        let v = sampling(
            &fields(
                r#"{"temperature": 0.7, "top_k": -1, "top_p": 0.9, "seed": 3, "stop": "\n",
                    "logit_bias": {"7": -100}, "n": 2, "stream": true,
                    "stream_options": {"include_usage": true}, "ignore_eos": true}"#,
            ),
            Some(("max_tokens", 7)),
            100,
            4096,
        )
        .unwrap();
        let r = &v.request;
        assert_eq!(r.sampling.temperature, 0.7);
        assert_eq!(r.sampling.top_k, 0);
        assert_eq!(r.sampling.seed, Some(3));
        assert_eq!(r.stop, ["\n"]);
        assert_eq!(r.logit_bias, [(7, -100.0)]);
        assert!(r.ignore_eos && v.stream && v.include_usage);
        assert_eq!((v.n, v.max_tokens), (2, Some(7)));
    }

    #[test]
    fn seeds_differ_per_choice_and_max_tokens_reaches_the_engine_as_given() {
        let mut v = ValidRequest::for_tests(3, true, None, false);
        v.prompts[0].max_tokens = 0;
        v.template.sampling.seed = Some(10);
        let rs = v.engine_requests();
        let seeds: Vec<_> = rs.iter().map(|r| r.sampling.seed).collect();
        assert_eq!(seeds, [Some(10), Some(11), Some(12)]);
        assert!(rs
            .iter()
            .all(|r| r.max_tokens == 0 && r.prompt_tokens == [1, 2]));
    }

    #[test]
    fn model_must_match() {
        assert!(check_model(None, "m").is_ok());
        assert!(check_model(Some("m"), "m").is_ok());
        assert!(matches!(
            check_model(Some("x"), "m"),
            Err(ApiError::ModelNotFound(_))
        ));
    }
}
