//! The msgpack payload of one published batch, byte for byte what vLLM's msgspec encoder writes
//! for `KVEventBatch(ts, events, data_parallel_rank)` (`vllm/distributed/kv_events.py`).
//!
//! The batch is positional (`array_like`): `[ts, [event, ...], data_parallel_rank]`. Events are
//! tagged by their class name, in one of two encodings (`--kv-events-encoding`):
//! - `map` (vLLM since vllm-project/vllm#42892, e.g. 0.26): a map whose `"type"` key is the tag,
//!   then the fields in declaration order, defaults left out (`omit_defaults`);
//! - `array` (vLLM before it): `[tag, field, ...]` up to `lora_name`, which every positional
//!   decoder (llm-d's included) reads.

use std::fmt;
use std::str::FromStr;

use tokenfab_kv_cache::msgpack as mp;
use tokenfab_kv_cache::KvEvent;

/// How events are written inside the batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WireFormat {
    /// Tagged maps (current vLLM).
    #[default]
    Map,
    /// Tagged positional arrays (vLLM before the map encoding).
    Array,
}

impl FromStr for WireFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "map" => Ok(WireFormat::Map),
            "array" => Ok(WireFormat::Array),
            _ => Err(format!(
                "`--kv-events-encoding` must be map or array. Given: {s}"
            )),
        }
    }
}

impl fmt::Display for WireFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            WireFormat::Map => "map",
            WireFormat::Array => "array",
        })
    }
}

/// vLLM's `kv_cache_spec_kind` of a model whose every layer attends to the whole context.
const FULL_ATTENTION: &str = "full_attention";

/// Appends the msgpack of `KVEventBatch(ts, events, data_parallel_rank=0)` to `out`. `medium`
/// is where the blocks live (`"GPU"`, or `"CPU"` for tokenfab's CPU pool).
pub fn encode_batch(
    out: &mut Vec<u8>,
    ts: f64,
    events: &[KvEvent],
    format: WireFormat,
    medium: &str,
) {
    mp::array_head(out, 3);
    mp::f64(out, ts);
    mp::array_head(out, events.len());
    let mut w = EventWriter {
        out,
        keyed: format == WireFormat::Map,
    };
    for e in events {
        w.event(e, medium);
    }
    mp::uint(w.out, 0);
}

/// Writes one event's fields in vLLM's declaration order, each under its name in map encoding
/// and by position in array encoding (where only the fields up to `lora_name` are written).
struct EventWriter<'a> {
    out: &'a mut Vec<u8>,
    keyed: bool,
}

impl EventWriter<'_> {
    /// The event's head: `{"type": tag, ...}` of `n_map` entries, or `[tag, ...]` of `n_array`.
    fn head(&mut self, tag: &str, n_map: usize, n_array: usize) {
        if self.keyed {
            mp::map_head(self.out, n_map);
            mp::str(self.out, "type");
        } else {
            mp::array_head(self.out, n_array);
        }
        mp::str(self.out, tag);
    }

    fn key(&mut self, k: &str) -> &mut Vec<u8> {
        if self.keyed {
            mp::str(self.out, k);
        }
        self.out
    }

    fn event(&mut self, e: &KvEvent, medium: &str) {
        match e {
            KvEvent::Stored {
                block_hashes,
                parent_block_hash,
                token_ids,
                block_size,
            } => {
                self.head("BlockStored", 11, 8);
                hashes(self.key("block_hashes"), block_hashes);
                match parent_block_hash {
                    Some(p) => mp::uint(self.key("parent_block_hash"), *p),
                    None => mp::nil(self.key("parent_block_hash")),
                }
                let out = self.key("token_ids");
                mp::array_head(out, token_ids.len());
                token_ids.iter().for_each(|&t| mp::uint(out, u64::from(t)));
                mp::uint(self.key("block_size"), u64::from(*block_size));
                mp::nil(self.key("lora_id"));
                mp::str(self.key("medium"), medium);
                mp::nil(self.key("lora_name"));
                if self.keyed {
                    // One entry per block; tokenfab has no extra keys (no LoRA, multimodal input
                    // or cache salt).
                    let out = self.key("extra_keys");
                    mp::array_head(out, block_hashes.len());
                    block_hashes.iter().for_each(|_| mp::nil(out));
                    mp::uint(self.key("group_idx"), 0);
                    mp::str(self.key("kv_cache_spec_kind"), FULL_ATTENTION);
                }
            }
            KvEvent::Removed { block_hashes } => {
                self.head("BlockRemoved", 4, 3);
                hashes(self.key("block_hashes"), block_hashes);
                mp::str(self.key("medium"), medium);
                if self.keyed {
                    mp::uint(self.key("group_idx"), 0);
                }
            }
            KvEvent::AllCleared => self.head("AllBlocksCleared", 1, 1),
        }
    }
}

fn hashes(out: &mut Vec<u8>, h: &[u64]) {
    mp::array_head(out, h.len());
    h.iter().for_each(|&x| mp::uint(out, x));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    fn sample() -> Vec<KvEvent> {
        vec![
            KvEvent::Stored {
                block_hashes: vec![1, 15760518052499183552],
                parent_block_hash: None,
                token_ids: vec![1, 2, 300, 4],
                block_size: 2,
            },
            KvEvent::Removed {
                block_hashes: vec![7],
            },
            KvEvent::AllCleared,
        ]
    }

    /// Pinned against `msgspec.msgpack.encode(KVEventBatch(ts=1.5, events=[...],
    /// data_parallel_rank=0))` with vLLM's struct definitions (map-encoded events, as in
    /// vllm-project/vllm#42892, and the array-like ones before it).
    #[test]
    fn batches_match_msgspec() {
        let mut b = Vec::new();
        encode_batch(&mut b, 1.5, &sample(), WireFormat::Map, "GPU");
        assert_eq!(hex(&b), MAP);
        b.clear();
        encode_batch(&mut b, 1.5, &sample(), WireFormat::Array, "GPU");
        assert_eq!(hex(&b), ARRAY);
    }

    #[test]
    fn formats_parse() {
        assert_eq!("map".parse(), Ok(WireFormat::Map));
        assert_eq!("array".parse(), Ok(WireFormat::Array));
        assert!("json"
            .parse::<WireFormat>()
            .unwrap_err()
            .contains("map or array"));
    }

    const MAP: &str = concat!(
        "93cb3ff8000000000000938ba474797065ab426c6f636b53746f726564ac626c6f636b5f6861736865739201",
        "cfdab89baa7b5857c0b1706172656e745f626c6f636b5f68617368c0a9746f6b656e5f696473940102cd012c",
        "04aa626c6f636b5f73697a6502a76c6f72615f6964c0a66d656469756da3475055a96c6f72615f6e616d65c0",
        "aa65787472615f6b65797392c0c0a967726f75705f69647800b26b765f63616368655f737065635f6b696e64",
        "ae66756c6c5f617474656e74696f6e84a474797065ac426c6f636b52656d6f766564ac626c6f636b5f686173",
        "6865739107a66d656469756da3475055a967726f75705f6964780081a474797065b0416c6c426c6f636b7343",
        "6c656172656400"
    );
    const ARRAY: &str = concat!(
        "93cb3ff80000000000009398ab426c6f636b53746f7265649201cfdab89baa7b5857c0c0940102cd012c0402",
        "c0a3475055c093ac426c6f636b52656d6f7665649107a347505591b0416c6c426c6f636b73436c6561726564",
        "00"
    );
}
