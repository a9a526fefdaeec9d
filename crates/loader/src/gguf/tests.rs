use super::*;

fn sample() -> Vec<u8> {
    let mut w = GgufWriter::new();
    w.meta("general.architecture", Value::String("llama".into()))
        .meta("llama.block_count", Value::U32(2))
        .meta("some.float", Value::F32(1.5))
        .meta("some.bool", Value::Bool(true))
        .meta("some.i64", Value::I64(-7))
        .meta(
            "tokenizer.ggml.tokens",
            Value::Array(
                ValueType::String,
                vec![Value::String("a".into()), Value::String("é".into())],
            ),
        )
        .meta(
            "nested",
            Value::Array(
                ValueType::Array,
                vec![Value::Array(
                    ValueType::U8,
                    vec![Value::U8(1), Value::U8(2)],
                )],
            ),
        )
        .tensor_f32("t.weight", &[4, 2], &[0., 1., 2., 3., 4., 5., 6., 7.])
        .tensor_f32("u", &[3], &[9., 8., 7.]);
    w.to_bytes()
}

#[test]
fn round_trips_every_value_type_and_tensor() {
    let g = Gguf::from_bytes(sample()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.architecture().unwrap(), "llama");
    assert_eq!(g.get_u64("llama.block_count").unwrap(), 2);
    assert_eq!(g.get_f64("some.float").unwrap(), 1.5);
    assert!(g.get_bool("some.bool").unwrap());
    assert_eq!(g.get("some.i64").unwrap().as_i64(), Some(-7));
    assert_eq!(
        g.get_array("tokenizer.ggml.tokens").unwrap()[1].as_str(),
        Some("é")
    );
    assert_eq!(
        g.get_array("nested").unwrap()[0].as_array().unwrap().len(),
        2
    );
    let t = g.tensor("t.weight").unwrap();
    assert_eq!(t.dims, vec![4, 2]);
    assert_eq!(t.n_elements(), 8);
    let bytes = g.tensor_bytes(t);
    assert_eq!(f32::from_le_bytes(bytes[12..16].try_into().unwrap()), 3.0);
    let u = g.tensor("u").unwrap();
    assert_eq!(u.offset % 32, 0);
    assert_eq!(
        f32::from_le_bytes(g.tensor_bytes(u)[0..4].try_into().unwrap()),
        9.0
    );
}

#[test]
fn typed_getters_name_the_key() {
    let g = Gguf::from_bytes(sample()).unwrap();
    let e = g.get_str("llama.block_count").unwrap_err().to_string();
    assert!(
        e.contains("llama.block_count") && e.contains("string"),
        "{e}"
    );
    let e = g.get_u64("missing.key").unwrap_err().to_string();
    assert!(e.contains("missing.key"), "{e}");
    assert_eq!(g.opt("missing.key", Gguf::get_u64).unwrap(), None);
    assert!(g.opt("some.float", Gguf::get_str).is_err());
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    let full = sample();
    for len in 0..full.len() {
        let r = Gguf::from_bytes(full[..len].to_vec());
        assert!(r.is_err(), "truncated to {len} bytes parsed");
    }
}

#[test]
fn bit_flips_never_panic() {
    let full = sample();
    // Deterministic: flip each bit of the header and metadata region, plus a spread of others.
    for i in 0..full.len() {
        for bit in [0u8, 3, 7] {
            let mut b = full.clone();
            b[i] ^= 1 << bit;
            let _ = Gguf::from_bytes(b); // Ok or Err, but no panic.
        }
    }
}

#[test]
fn hostile_counts_are_rejected_before_allocation() {
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&u64::MAX.to_le_bytes()); // tensors
    b.extend_from_slice(&0u64.to_le_bytes());
    let e = Gguf::from_bytes(b).unwrap_err().to_string();
    assert!(e.contains("tensor count"), "{e}");

    // A string array claiming 2^40 entries.
    let mut b = Vec::new();
    b.extend_from_slice(b"GGUF");
    b.extend_from_slice(&3u32.to_le_bytes());
    b.extend_from_slice(&0u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.extend_from_slice(&1u64.to_le_bytes());
    b.push(b'k');
    b.extend_from_slice(&9u32.to_le_bytes());
    b.extend_from_slice(&8u32.to_le_bytes());
    b.extend_from_slice(&(1u64 << 40).to_le_bytes());
    let e = Gguf::from_bytes(b).unwrap_err().to_string();
    assert!(e.contains("length of array `k`"), "{e}");
}

#[test]
fn header_errors_are_clear() {
    let e = Gguf::from_bytes(b"GGML\x03\0\0\0".to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("magic"), "{e}");
    let e = Gguf::from_bytes(b"GGUF\x01\0\0\0".to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("v1"), "{e}");
    let e = Gguf::from_bytes(b"GGUF\0\0\0\x03".to_vec())
        .unwrap_err()
        .to_string();
    assert!(e.contains("big-endian"), "{e}");
}

#[test]
fn tensor_out_of_bounds_or_misaligned_is_rejected() {
    let mut w = GgufWriter::new();
    w.tensor("q", &[64], GgmlType::Q4_1, vec![0u8; 40]);
    let mut bytes = w.to_bytes();
    assert!(Gguf::from_bytes(bytes.clone()).is_ok());
    bytes.truncate(bytes.len() - 1);
    let e = Gguf::from_bytes(bytes).unwrap_err().to_string();
    assert!(e.contains("tensor `q` data"), "{e}");

    let mut w = GgufWriter::new();
    w.tensor("q", &[33], GgmlType::Q4_1, vec![0u8; 40]);
    let e = Gguf::from_bytes(w.to_bytes()).unwrap_err().to_string();
    assert!(e.contains("multiple of Q4_1"), "{e}");
}
