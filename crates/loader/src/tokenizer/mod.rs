//! The tokenizer stored in a GGUF file's metadata, matching llama.cpp's `llama_tokenize` and
//! `llama_detokenize` id for id.
//!
//! Two vocabulary kinds: byte-level BPE (`tokenizer.ggml.model = "gpt2"`, split by the regexes
//! of `tokenizer.ggml.pre`, see [`pretok`]) and SentencePiece-style BPE over scores
//! (`"llama"`, see [`spm`]). Special tokens (control, user-defined, unknown) are cut out of the
//! text first, as llama.cpp's `tokenizer_st_partition` does.
//!
//! An unknown `tokenizer.ggml.pre` is not an error here (llama.cpp refuses the file): the
//! tokenizer falls back to llama.cpp's default split regexes and logs a warning, since most
//! models stay usable that way with slightly different token boundaries.

mod bpe;
mod detok;
mod hf;
mod pretok;
mod shield;
mod spm;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, HashSet};
use std::ops::Range;

use crate::{Error, Gguf, Result, Value};
use detok::{clean_up_spaces, piece_of};
use pretok::{PreConfig, PreTokenizer};
pub use shield::{unshield, SHIELD};

/// Token attributes, as llama.cpp's `llama_token_attr` bits.
mod attr {
    pub const UNKNOWN: u32 = 1 << 0;
    pub const UNUSED: u32 = 1 << 1;
    pub const NORMAL: u32 = 1 << 2;
    pub const CONTROL: u32 = 1 << 3;
    pub const USER_DEFINED: u32 = 1 << 4;
    pub const BYTE: u32 = 1 << 5;
    pub const LSTRIP: u32 = 1 << 7;
    pub const RSTRIP: u32 = 1 << 8;

    /// From the GGUF `tokenizer.ggml.token_type` value.
    pub fn from_type(t: i64) -> u32 {
        match t {
            1 => NORMAL,
            2 => UNKNOWN,
            3 => CONTROL,
            4 => USER_DEFINED,
            5 => UNUSED,
            6 => BYTE,
            _ => 0,
        }
    }
}

/// Token texts llama.cpp treats as end of generation whatever the file says.
const EOG_NAMES: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Fill-in-the-middle tokens llama.cpp also stops on (pad, repository, file separator).
const FIM_EOG_NAMES: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];

#[derive(Debug)]
enum Model {
    /// Byte-level BPE with its split regexes.
    Bpe {
        pre: PreTokenizer,
        merges: bpe::Merges,
        ignore_merges: bool,
    },
    /// SentencePiece-style BPE over scores.
    Spm,
    /// A `tokenizer.json` run by the `tokenizers` crate.
    Hf(Box<hf::HfModel>),
}

#[derive(Debug, Clone)]
struct TokenData {
    text: String,
    score: f32,
    attr: u32,
}

/// A tokenizer built from GGUF metadata. Cheap to share behind an `Arc`; all methods take `&self`.
#[derive(Debug)]
pub struct Tokenizer {
    model: Model,
    tokens: Vec<TokenData>,
    token_to_id: HashMap<String, u32>,
    /// Raw bytes of each token's piece, control tokens as their text (llama.cpp's piece cache).
    pieces: Vec<Vec<u8>>,
    /// Tokens cut out of the text before tokenizing, longest first.
    special_tokens: Vec<u32>,
    eog: HashSet<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    unk: Option<u32>,
    pad: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    clean_spaces: bool,
}

/// A piece of the input after special tokens are cut out.
enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

fn meta_strings<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    g.get_array(key)?
        .iter()
        .map(|v| {
            v.as_str()
                .ok_or_else(|| Error::Tokenizer(format!("`{key}` holds a non-string value")))
        })
        .collect()
}

fn meta_numbers(
    g: &Gguf,
    key: &str,
    n: usize,
    conv: impl Fn(&Value) -> Option<f64>,
) -> Result<Option<Vec<f64>>> {
    let Some(arr) = g.opt(key, Gguf::get_array)? else {
        return Ok(None);
    };
    if arr.len() < n {
        return Err(Error::Tokenizer(format!(
            "`{key}` has {} entries, the vocabulary {n}",
            arr.len()
        )));
    }
    arr.iter()
        .map(|v| {
            conv(v).ok_or_else(|| Error::Tokenizer(format!("`{key}` holds a non-numeric value")))
        })
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// The vocabulary of `tokenizer.ggml.tokens`, `scores` and `token_type`.
fn gguf_tokens(g: &Gguf) -> Result<Vec<TokenData>> {
    let texts = meta_strings(g, "tokenizer.ggml.tokens")?;
    let n = texts.len();
    if n == 0 || n > u32::MAX as usize {
        return Err(Error::Tokenizer(format!("vocabulary of {n} tokens")));
    }
    let scores = meta_numbers(g, "tokenizer.ggml.scores", n, Value::as_f64)?;
    let types = meta_numbers(g, "tokenizer.ggml.token_type", n, |v| {
        v.as_i64().map(|x| x as f64)
    })?;
    Ok(texts
        .iter()
        .enumerate()
        .map(|(i, t)| TokenData {
            text: if t.is_empty() {
                format!("[EMPTY_{i}]")
            } else {
                t.to_string()
            },
            score: scores.as_ref().map_or(0.0, |s| s[i] as f32),
            attr: types
                .as_ref()
                .map_or(attr::NORMAL, |t| attr::from_type(t[i] as i64)),
        })
        .collect())
}

/// An optional token id key; an id outside the vocabulary is ignored, as llama.cpp does.
fn meta_id(g: &Gguf, key: &str, n: usize) -> Option<Option<u32>> {
    let v = g.get(key)?;
    match v.as_u64() {
        Some(id) if (id as usize) < n => Some(Some(id as u32)),
        _ => {
            tracing::warn!(
                "tokenizer: `{key}` = {v:?} is not a token id of this vocabulary; ignored"
            );
            None
        }
    }
}

impl Tokenizer {
    /// Builds the tokenizer from `tokenizer.ggml.*` metadata, or from a whole `tokenizer.json`
    /// under `tokenizer.huggingface.json` when the file has no `tokenizer.ggml.model` (a Hugging
    /// Face checkpoint, see [`crate::hf`]).
    pub fn from_gguf(g: &Gguf) -> Result<Tokenizer> {
        let hf_json = g.opt("tokenizer.huggingface.json", Gguf::get_str)?;
        let (kind, mut hf, mut tokens) =
            match (g.opt("tokenizer.ggml.model", Gguf::get_str)?, hf_json) {
                (Some(kind), _) => (kind, None, gguf_tokens(g)?),
                (None, Some(json)) => {
                    let hf::HfVocab {
                        model,
                        tokens,
                        unk,
                        add_space_prefix,
                    } = hf::load(json)?;
                    ("huggingface", Some((model, unk, add_space_prefix)), tokens)
                }
                (None, None) => return Err(Error::MissingKey("tokenizer.ggml.model".into())),
            };
        let n = tokens.len();
        let pre_name = g.opt("tokenizer.ggml.pre", Gguf::get_str)?;
        // A later duplicate text wins, as in llama.cpp's map.
        let token_to_id: HashMap<String, u32> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.text.clone(), i as u32))
            .collect();

        // Defaults by vocabulary kind (llama.cpp `llama_vocab::impl::load`).
        let (model, mut bos, mut eos, mut unk, mut add_bos, add_space_prefix_default, clean_spaces) =
            match kind {
                "gpt2" => {
                    let merges =
                        bpe::Merges::new(meta_strings(g, "tokenizer.ggml.merges")?.into_iter());
                    let cfg = match pre_name {
                    None => {
                        tracing::warn!("tokenizer: no `tokenizer.ggml.pre`; using llama.cpp's default split regexes");
                        PreConfig::default_bpe()
                    }
                    Some(p) => PreConfig::for_pre(p).unwrap_or_else(|| {
                        tracing::warn!(
                            "tokenizer: unknown pre-tokenizer `{p}`; falling back to llama.cpp's default split \
                             regexes (token boundaries may differ from the model's own tokenizer)"
                        );
                        PreConfig::default_bpe()
                    }),
                };
                    let model = Model::Bpe {
                        pre: PreTokenizer::new(&cfg)?,
                        merges,
                        ignore_merges: cfg.ignore_merges,
                    };
                    (
                        model,
                        Some(11),
                        Some(11),
                        None,
                        cfg.add_bos,
                        false,
                        cfg.clean_spaces,
                    )
                }
                "llama" => (Model::Spm, Some(1), Some(2), Some(0), true, true, false),
                "huggingface" => {
                    let (model, unk, add_space_prefix) = hf.take().expect("set with the kind");
                    let clean = g
                        .opt("tokenizer.huggingface.clean_spaces", Gguf::get_bool)?
                        .unwrap_or(false);
                    (
                        Model::Hf(Box::new(model)),
                        None,
                        None,
                        unk,
                        false,
                        add_space_prefix,
                        clean,
                    )
                }
                other => {
                    return Err(Error::Tokenizer(format!(
                        "tokenizer model `{other}` is not supported (supported: gpt2, llama)"
                    )))
                }
            };
        let in_range = |id: Option<u32>| id.filter(|&i| (i as usize) < n);
        bos = in_range(bos);
        eos = in_range(eos);
        unk = in_range(unk);
        let mut pad = None;
        let mut eot = None;
        let mut eom = None;
        for (key, slot) in [
            ("tokenizer.ggml.bos_token_id", &mut bos),
            ("tokenizer.ggml.eos_token_id", &mut eos),
            ("tokenizer.ggml.eot_token_id", &mut eot),
            ("tokenizer.ggml.eom_token_id", &mut eom),
            ("tokenizer.ggml.unknown_token_id", &mut unk),
            ("tokenizer.ggml.padding_token_id", &mut pad),
        ] {
            if let Some(id) = meta_id(g, key, n) {
                *slot = id;
            }
        }
        if let Some(b) = g.opt("tokenizer.ggml.add_bos_token", Gguf::get_bool)? {
            add_bos = b;
        }
        let add_eos = g
            .opt("tokenizer.ggml.add_eos_token", Gguf::get_bool)?
            .unwrap_or(false);
        let add_space_prefix = g
            .opt("tokenizer.ggml.add_space_prefix", Gguf::get_bool)?
            .unwrap_or(add_space_prefix_default);

        let force_control =
            |id: u32, tokens: &mut [TokenData]| tokens[id as usize].attr |= attr::CONTROL;
        // End-of-turn and end-of-message tokens recognized by name when the file gives none.
        if eot.is_none() {
            const EOT_NAMES: &[&str] = &[
                "<|eot_id|>",
                "<|im_end|>",
                "<|end|>",
                "<end_of_turn>",
                "<|endoftext|>",
                "<|end_of_text|>",
                "<EOT>",
                "_<EOT>",
                "[EOT]",
                "<｜end▁of▁sentence｜>",
                "<end_of_utterance>",
            ];
            eot = EOT_NAMES.iter().find_map(|t| token_to_id.get(*t).copied());
        }
        if eom.is_none() {
            eom = token_to_id.get("<|eom_id|>").copied();
        }
        for id in [eot, eom].into_iter().flatten() {
            force_control(id, &mut tokens);
        }
        let mut eog = HashSet::new();
        for names in FIM_EOG_NAMES {
            if let Some(id) = names.iter().find_map(|t| token_to_id.get(*t).copied()) {
                force_control(id, &mut tokens);
                eog.insert(id);
            }
        }
        for t in &mut tokens {
            if t.attr & attr::CONTROL != 0 && t.text.contains("unused") {
                t.attr |= attr::UNUSED;
            }
        }
        for name in EOG_NAMES {
            if let Some(&id) = token_to_id.get(*name) {
                force_control(id, &mut tokens);
                eog.insert(id);
            }
        }
        for name in ["<|channel|>", "<|message|>", "<|start|>", "<|constrain|>"] {
            if let Some(&id) = token_to_id.get(name) {
                tokens[id as usize].attr = attr::USER_DEFINED;
            }
        }
        eog.extend([eos, eot, eom].into_iter().flatten());
        // generation_config.json's `eos_token_id` list (Hugging Face checkpoints).
        if let Some(ids) = g.opt("tokenizer.ggml.eog_token_ids", Gguf::get_array)? {
            eog.extend(
                ids.iter()
                    .filter_map(Value::as_u64)
                    .filter(|&i| (i as usize) < n)
                    .map(|i| i as u32),
            );
        }
        let named =
            |eog: &HashSet<u32>, t: &str| token_to_id.get(t).copied().filter(|id| eog.contains(id));
        // gpt-oss style: `<|end|>` ends a message, not the generation, when `<|return|>` and
        // `<|call|>` exist; `</s>` is an ordinary token next to `<|tool_response>`.
        if let Some(end) = named(&eog, "<|end|>") {
            let has = |t: &str| named(&eog, t).is_some();
            if (has("<|return|>") && has("<|call|>"))
                || ((has("<|call|>") || has("<|calls|>")) && has("<|flush|>"))
            {
                eog.remove(&end);
                tokens[end as usize].attr = attr::USER_DEFINED;
            }
        }
        if let Some(s) = named(&eog, "</s>") {
            if named(&eog, "<|tool_response>").is_some() || named(&eog, "<|plamo:eos|>").is_some() {
                eog.remove(&s);
                tokens[s as usize].attr = attr::NORMAL;
            }
        }

        let mut special_tokens: Vec<u32> = (0..n as u32)
            .filter(|&i| {
                tokens[i as usize].attr & (attr::CONTROL | attr::USER_DEFINED | attr::UNKNOWN) != 0
            })
            .collect();
        special_tokens.sort_by_key(|&i| std::cmp::Reverse(tokens[i as usize].text.len()));

        let pieces = (0..n).map(|i| piece_of(&model, &tokens[i])).collect();

        // Phi-3's special tokens swallow the whitespace after them (llama.cpp keys this on the
        // model name).
        let name = g
            .opt("general.name", Gguf::get_str)?
            .unwrap_or("")
            .to_lowercase();
        if name.contains("phi-3") || name.contains("phi3") {
            for &id in &special_tokens {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            if let Some(&id) = token_to_id.get("</s>") {
                tokens[id as usize].attr |= attr::RSTRIP;
            }
            for t in ["<unk>", "<s>", "<|endoftext|>"] {
                if let Some(&id) = token_to_id.get(t) {
                    tokens[id as usize].attr &= !attr::RSTRIP;
                }
            }
        }

        Ok(Tokenizer {
            model,
            tokens,
            token_to_id,
            pieces,
            special_tokens,
            eog,
            bos,
            eos,
            eot,
            eom,
            unk,
            pad,
            add_bos,
            add_eos,
            add_space_prefix,
            clean_spaces,
        })
    }

    /// Token ids of `text`, as llama.cpp's `llama_tokenize(vocab, text, add_special, parse_special)`.
    ///
    /// `add_special` adds BOS/EOS only where the model's `add_bos_token`/`add_eos_token` say so;
    /// `parse_special` turns control-token text (`<|im_start|>`...) into those tokens, otherwise
    /// it is tokenized as plain text (user-defined tokens are always cut out).
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        self.encode_inner(text, add_special, parse_special, false)
    }

    /// `encode`; with `unshield`, [`SHIELD`]s are dropped from the text fragments left after
    /// special tokens are cut out (see `shield.rs`).
    fn encode_inner(
        &self,
        text: &str,
        add_special: bool,
        parse_special: bool,
        unshield: bool,
    ) -> Result<Vec<u32>> {
        if let Model::Hf(m) = &self.model {
            // The `tokenizers` pipeline cuts added tokens out itself (with their strip flags).
            let mut out = Vec::with_capacity(text.len() / 3 + 2);
            if add_special && self.add_bos {
                out.extend(self.bos);
            }
            if unshield && text.contains(SHIELD) {
                m.encode_shielded(text, &mut out)?;
            } else {
                m.encode(text, parse_special, &mut out)?;
            }
            if add_special && self.add_eos {
                out.extend(self.eos);
            }
            return Ok(out);
        }
        let frag = |r: &Range<usize>| {
            if unshield {
                shield::unshield(&text[r.clone()])
            } else {
                std::borrow::Cow::Borrowed(&text[r.clone()])
            }
        };
        let fragments = if text.is_empty() {
            Vec::new()
        } else {
            self.partition(text, parse_special)
        };
        let mut out = Vec::with_capacity(text.len() / 3 + 2);
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match &self.model {
            Model::Spm => {
                let mut prev_special = true;
                let mut buf = String::new();
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && prev_special {
                                buf.push(' ');
                            }
                            buf.push_str(&frag(r));
                            let escaped = buf.replace(' ', "\u{2581}");
                            spm::tokenize(self, &escaped, &mut out);
                            prev_special = false;
                        }
                        Fragment::Token(id) => {
                            out.push(*id);
                            prev_special = true;
                        }
                    }
                }
            }
            Model::Hf(_) => unreachable!("encoded above"),
            Model::Bpe {
                pre,
                merges,
                ignore_merges,
            } => {
                for f in &fragments {
                    match f {
                        Fragment::Text(r) => {
                            let chunk = frag(r);
                            let chunk: &str = &chunk;
                            for word in pre.split(chunk) {
                                let encoded = bpe::byte_encode(&chunk[word]);
                                if *ignore_merges {
                                    if let Some(&id) = self.token_to_id.get(&encoded) {
                                        out.push(id);
                                        continue;
                                    }
                                }
                                let mut symbols = Vec::new();
                                bpe::merge_word(merges, &encoded, &mut symbols);
                                for s in &symbols {
                                    match self.token_to_id.get(*s) {
                                        Some(&id) => out.push(id),
                                        // llama.cpp looks up each byte of the piece as a
                                        // one-byte token; only ASCII bytes can be one.
                                        None => out.extend(
                                            s.bytes().filter(u8::is_ascii).filter_map(|b| {
                                                self.token_to_id
                                                    .get(char::from(b).encode_utf8(&mut [0; 4])
                                                        as &str)
                                                    .copied()
                                            }),
                                        ),
                                    }
                                }
                            }
                        }
                        Fragment::Token(id) => out.push(*id),
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Cuts special tokens out of `text` (llama.cpp `tokenizer_st_partition`).
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = vec![Fragment::Text(0..text.len())];
        for &id in &self.special_tokens {
            let tok = &self.tokens[id as usize];
            if !parse_special && tok.attr & (attr::CONTROL | attr::UNKNOWN) != 0 {
                continue;
            }
            let pat = tok.text.as_str();
            if !frags
                .iter()
                .any(|f| matches!(f, Fragment::Text(r) if text[r.clone()].contains(pat)))
            {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let mut start = r.start;
                while let Some(pos) = text[start..r.end].find(pat) {
                    let m = start + pos;
                    let mut left_end = m;
                    if tok.attr & attr::LSTRIP != 0 {
                        while left_end > start
                            && text.as_bytes()[left_end - 1].is_ascii_whitespace_c()
                        {
                            left_end -= 1;
                        }
                    }
                    if left_end > start {
                        next.push(Fragment::Text(start..left_end));
                    }
                    next.push(Fragment::Token(id));
                    start = m + pat.len();
                    if tok.attr & attr::RSTRIP != 0 {
                        while start < r.end && text.as_bytes()[start].is_ascii_whitespace_c() {
                            start += 1;
                        }
                    }
                }
                if start < r.end {
                    next.push(Fragment::Text(start..r.end));
                }
            }
            frags = next;
        }
        frags
    }

    /// The text of `ids` (invalid UTF-8 replaced), as llama.cpp's `llama_detokenize` with
    /// `remove_special = unparse_special = ... `: `skip_special` drops control and unknown
    /// tokens (and a leading BOS / trailing EOS the model adds itself).
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        let mut ids = ids;
        let mut remove_space = self.add_space_prefix;
        if skip_special && self.add_bos && ids.first().is_some_and(|&i| Some(i) == self.bos) {
            remove_space = false;
            ids = &ids[1..];
        }
        if skip_special && self.add_eos && ids.last().is_some_and(|&i| Some(i) == self.eos) {
            ids = &ids[..ids.len() - 1];
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            let Some(piece) = self.pieces.get(id as usize) else {
                continue;
            };
            if skip_special && self.is_special(id) {
                remove_space = false;
                continue;
            }
            let piece = if remove_space {
                piece.strip_prefix(b" ").unwrap_or(piece)
            } else {
                piece
            };
            bytes.extend_from_slice(piece);
            remove_space = false;
        }
        if self.clean_spaces {
            clean_up_spaces(&mut bytes);
        }
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// The raw bytes of one token's piece (possibly a partial UTF-8 sequence), for incremental
    /// detokenization. Control tokens give their text; an unknown id gives nothing.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        self.token_piece(id).to_vec()
    }

    /// [`Tokenizer::token_bytes`] without the copy.
    pub fn token_piece(&self, id: u32) -> &[u8] {
        self.pieces.get(id as usize).map_or(&[], Vec::as_slice)
    }

    /// Control or unknown tokens: the ones `decode(.., skip_special = true)` leaves out.
    pub fn is_special(&self, id: u32) -> bool {
        self.tokens
            .get(id as usize)
            .is_some_and(|t| t.attr & (attr::CONTROL | attr::UNKNOWN) != 0)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The vocabulary kind, as `tokenizer.ggml.model` names it: `gpt2` (byte-level BPE) or
    /// `llama` (SentencePiece); `huggingface` for a checkpoint's tokenizer.json.
    pub fn kind(&self) -> &'static str {
        match self.model {
            Model::Bpe { .. } => "gpt2",
            Model::Spm => "llama",
            Model::Hf(_) => "huggingface",
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    /// End-of-turn token (`<|eot_id|>`, `<|im_end|>`...), from the file or found by name.
    pub fn eot_id(&self) -> Option<u32> {
        self.eot
    }

    /// End-of-message token (`<|eom_id|>`).
    pub fn eom_id(&self) -> Option<u32> {
        self.eom
    }

    pub fn unk_id(&self) -> Option<u32> {
        self.unk
    }

    pub fn pad_id(&self) -> Option<u32> {
        self.pad
    }

    /// Whether generating `id` ends the generation: EOS, EOT, EOM and the tokens llama.cpp
    /// treats as such by name (`<|im_end|>`, `<|eot_id|>`, `<|endoftext|>`, `<end_of_turn>`...).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// All end-of-generation ids, sorted.
    pub fn eog_ids(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether `encode(.., add_special = true, ..)` starts with BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }

    /// Whether `encode(.., add_special = true, ..)` ends with EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    pub fn token_to_id(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    pub fn id_to_token(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| t.text.as_str())
    }
}

impl spm::SpmVocab for Tokenizer {
    fn text_to_token(&self, text: &str) -> Option<u32> {
        self.token_to_id.get(text).copied()
    }

    fn score(&self, id: u32) -> f32 {
        self.tokens[id as usize].score
    }

    fn byte_to_token(&self, byte: u8) -> Option<u32> {
        self.token_to_id
            .get(&format!("<0x{byte:02X}>"))
            .or_else(|| {
                self.token_to_id
                    .get(char::from(byte).encode_utf8(&mut [0; 4]) as &str)
            })
            .copied()
    }
}

/// C's `isspace` in the "C" locale.
trait CSpace {
    fn is_ascii_whitespace_c(&self) -> bool;
}

impl CSpace for u8 {
    fn is_ascii_whitespace_c(&self) -> bool {
        matches!(self, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
    }
}
