//! Dequantization of GGML blocks to f32 (filled in below).
