//! Blocks written byte by byte from ggml's documented layouts (ggml-common.h), with the expected
//! values worked out by hand in the comments. f16 constants: 0x3C00 = 1.0, 0x3800 = 0.5,
//! 0x3400 = 0.25, 0xBC00 = -1.0.

use super::*;

const HALF: [u8; 2] = [0x00, 0x38]; // f16 0.5
const QUARTER: [u8; 2] = [0x00, 0x34]; // f16 0.25
const ONE: [u8; 2] = [0x00, 0x3C]; // f16 1.0
const MINUS_ONE: [u8; 2] = [0x00, 0xBC]; // f16 -1.0

fn decode(ty: GgmlType, block: &[u8]) -> Vec<f32> {
    assert_eq!(block.len(), ty.block_bytes(), "test block size for {ty}");
    dequantize_to_vec(ty, block, ty.block_len()).unwrap()
}

/// Checks the listed (index, value) pairs exactly: every expected value is exactly representable.
fn check(ty: GgmlType, got: &[f32], want: &[(usize, f32)]) {
    for &(i, v) in want {
        assert_eq!(got[i], v, "{ty} element {i}");
    }
}

#[test]
fn plain_floats() {
    // f32 1.5 = 0x3FC00000, f16 -2.0 = 0xC000, bf16 1.0 = 0x3F80, bf16 -3.0 = 0xC040.
    let got = decode_n(GgmlType::F32, &[0, 0, 0xC0, 0x3F, 0, 0, 0, 0], 2);
    assert_eq!(got, [1.5, 0.0]);
    let got = decode_n(GgmlType::F16, &[0x00, 0x3C, 0x00, 0xC0], 2);
    assert_eq!(got, [1.0, -2.0]);
    let got = decode_n(GgmlType::BF16, &[0x80, 0x3F, 0x40, 0xC0], 2);
    assert_eq!(got, [1.0, -3.0]);
}

fn decode_n(ty: GgmlType, bytes: &[u8], n: usize) -> Vec<f32> {
    dequantize_to_vec(ty, bytes, n).unwrap()
}

#[test]
fn q4_0_block() {
    // d = 0.5, x = 0.5 * (q - 8). Byte j: low nibble is element j, high nibble element j + 16.
    let mut b = [0x88u8; 18]; // q = 8 everywhere -> 0
    b[..2].copy_from_slice(&HALF);
    b[2] = 0x3A; // element 0: q=10 -> 1.0; element 16: q=3 -> -2.5
    b[2 + 15] = 0xF0; // element 15: q=0 -> -4.0; element 31: q=15 -> 3.5
    let y = decode(GgmlType::Q4_0, &b);
    check(
        GgmlType::Q4_0,
        &y,
        &[
            (0, 1.0),
            (16, -2.5),
            (15, -4.0),
            (31, 3.5),
            (1, 0.0),
            (17, 0.0),
        ],
    );
}

#[test]
fn q4_1_block() {
    // d = 0.5, m = -1.0, x = 0.5 * q - 1.
    let mut b = [0u8; 20]; // q = 0 -> -1.0
    b[..2].copy_from_slice(&HALF);
    b[2..4].copy_from_slice(&MINUS_ONE);
    b[4] = 0x3A; // element 0: q=10 -> 4.0; element 16: q=3 -> 0.5
    b[4 + 15] = 0xF0; // element 15: q=0 -> -1.0; element 31: q=15 -> 6.5
    let y = decode(GgmlType::Q4_1, &b);
    check(
        GgmlType::Q4_1,
        &y,
        &[
            (0, 4.0),
            (16, 0.5),
            (15, -1.0),
            (31, 6.5),
            (1, -1.0),
            (30, -1.0),
        ],
    );
}

/// qh = bits 0, 15, 16, 31 set: the fifth bit of elements 0, 15, 16 and 31.
const QH_5: [u8; 4] = [0x01, 0x80, 0x01, 0x80];

#[test]
fn q5_0_block() {
    // d = 0.5, x = 0.5 * (q - 16), q = nibble | 16 * qh bit.
    let mut b = [0u8; 22]; // q = 0 -> -8.0
    b[..2].copy_from_slice(&HALF);
    b[2..6].copy_from_slice(&QH_5);
    b[6] = 0x3A; // e0: 10|16=26 -> 5.0; e16: 3|16=19 -> 1.5
    b[6 + 1] = 0x21; // e1: 1 (no high bit) -> -7.5; e17: 2 -> -7.0
    b[6 + 15] = 0xF0; // e15: 0|16=16 -> 0.0; e31: 15|16=31 -> 7.5
    let y = decode(GgmlType::Q5_0, &b);
    let want = [
        (0, 5.0),
        (16, 1.5),
        (1, -7.5),
        (17, -7.0),
        (15, 0.0),
        (31, 7.5),
        (2, -8.0),
        (30, -8.0),
    ];
    check(GgmlType::Q5_0, &y, &want);
}

#[test]
fn q5_1_block() {
    // d = 0.5, m = 1.0, x = 0.5 * q + 1, same bits as the Q5_0 test.
    let mut b = [0u8; 24]; // q = 0 -> 1.0
    b[..2].copy_from_slice(&HALF);
    b[2..4].copy_from_slice(&ONE);
    b[4..8].copy_from_slice(&QH_5);
    b[8] = 0x3A; // e0: 26 -> 14.0; e16: 19 -> 10.5
    b[8 + 1] = 0x21; // e1: 1 -> 1.5; e17: 2 -> 2.0
    b[8 + 15] = 0xF0; // e15: 16 -> 9.0; e31: 31 -> 16.5
    let y = decode(GgmlType::Q5_1, &b);
    let want = [
        (0, 14.0),
        (16, 10.5),
        (1, 1.5),
        (17, 2.0),
        (15, 9.0),
        (31, 16.5),
        (2, 1.0),
    ];
    check(GgmlType::Q5_1, &y, &want);
}

#[test]
fn q8_0_block() {
    // d = 0.25, x = 0.25 * q with q signed.
    let mut b = [0u8; 34];
    b[..2].copy_from_slice(&QUARTER);
    b[2] = 4; // e0 -> 1.0
    b[3] = 0xFD; // e1: -3 -> -0.75
    b[2 + 31] = 0x80; // e31: -128 -> -32.0
    let y = decode(GgmlType::Q8_0, &b);
    check(
        GgmlType::Q8_0,
        &y,
        &[(0, 1.0), (1, -0.75), (31, -32.0), (2, 0.0)],
    );
}

#[test]
fn q2_k_block() {
    // Layout: scales[16] @0 (low nibble scale, high nibble min), qs[64] @16, d @80, dmin @82.
    // d = 0.5, dmin = 0.25: x = 0.5*sc*q - 0.25*m. Element (half, j, h, l) = 128 half + 32 j +
    // 16 h + l uses sub-block 8 half + 2 j + h and bits 2j..2j+2 of qs[32 half + 16 h + l].
    let mut b = [0u8; 84];
    b[80..82].copy_from_slice(&HALF);
    b[82..84].copy_from_slice(&QUARTER);
    b[0] = 0x21; // sub 0: sc 1, m 2 -> dl 0.5, ml 0.5
    b[1] = 0x03; // sub 1: dl 1.5, ml 0
    b[2] = 0x11; // sub 2: dl 0.5, ml 0.25
    b[4] = 0x01; // sub 4: dl 0.5, ml 0
    b[6] = 0x02; // sub 6: dl 1.0, ml 0
    b[7] = 0x1F; // sub 7: dl 7.5, ml 0.25
    b[8] = 0x42; // sub 8: dl 1.0, ml 1.0
    b[15] = 0xF1; // sub 15: dl 0.5, ml 3.75
    b[16] = 0xE7; // 0b11_10_01_11: e0 q3 (sub0) -> 1.0; e32 q1 (sub2) -> 0.25;
                  // e64 q2 (sub4) -> 1.0; e96 q3 (sub6) -> 3.0
    b[16 + 16] = 0x02; // e16 q2 (sub1) -> 3.0
    b[16 + 31] = 0xC0; // e127 = 96+16+15, q3 (sub7) -> 22.25; e31 q0 (sub1) -> 0
    b[16 + 32] = 0x03; // e128 q3 (sub8) -> 2.0
    b[16 + 63] = 0xFF; // e255 q3 (sub15) -> -2.25
    let y = decode(GgmlType::Q2K, &b);
    let want = [
        (0, 1.0),
        (32, 0.25),
        (64, 1.0),
        (96, 3.0),
        (16, 3.0),
        (127, 22.25),
        (31, 0.0),
        (128, 2.0),
        (255, -2.25),
        (1, -0.5),    // sub 0, q 0 -> -ml
        (129, -1.0),  // sub 8, q 0
        (240, -3.75), // sub 15, q 0 (qs[48])
    ];
    check(GgmlType::Q2K, &y, &want);
}

#[test]
fn q3_k_scale_unpacking() {
    // Wanted 6-bit scales: s0=33, s1=34, s7=31, s8=40, s15=0, all others 32 (0b10_0000).
    // Low nibbles: bytes 0..8 hold s0..s7 (low) and s8..s15 (high nibble).
    // Top two bits: byte 8+k holds s_k, s_{4+k}, s_{8+k}, s_{12+k} at bits 0, 2, 4, 6.
    let s = [
        0x81, 0x02, 0, 0, 0, 0, 0, 0x0F, //
        0xAA, 0xAA, 0xAA, 0x26, // k=3: s3 = 2, s7 = 1, s11 = 2, s15 = 0
    ];
    let got = dequant::q3_k_scales(&s);
    let mut want = [0i8; 16];
    (want[0], want[1], want[7], want[8], want[15]) = (1, 2, -1, 8, -32);
    assert_eq!(got, want);
}

#[test]
fn q3_k_block() {
    // Layout: hmask[32] @0, qs[64] @32, scales[12] @96, d @108. d = 0.5; scales as in
    // q3_k_scale_unpacking (minus 32): sub0 1, sub1 2, sub7 -1, sub8 8, sub15 -32, others 0.
    // Element (half, j, h, l): low bits (qs[32 half + 16 h + l] >> 2j) & 3, minus 4 unless bit
    // 4 half + j of hmask[16 h + l] is set.
    let mut b = [0u8; 110];
    b[96..108].copy_from_slice(&[0x81, 0x02, 0, 0, 0, 0, 0, 0x0F, 0xAA, 0xAA, 0xAA, 0x26]);
    b[108..110].copy_from_slice(&HALF);
    b[0] = 0x11; // hmask[0]: bit 0 (e0) and bit 4 (e128)
    b[16] = 0x01; // hmask[16]: bit 0 (e16)
    b[31] = 0x80; // hmask[31]: bit 7 (e255)
    b[32] = 0x03; // e0: q 3, high set -> 0.5*1*3 = 1.5
    b[32 + 1] = 0x01; // e1: q 1, high clear -> 1-4 = -3 -> -1.5
    b[32 + 16] = 0x02; // e16: 2 -> 0.5*2*2 = 2.0; e112 (sub7, >>6 = 0, clear) -> 0.5*-1*-4 = 2.0
    b[32 + 31] = 0x40; // e127 (sub7): q 1, clear -> -3 -> 0.5*-1*-3 = 1.5
    b[64] = 0x03; // e128 (sub8): q 3, set -> 0.5*8*3 = 12.0
    b[64 + 31] = 0x80; // e255 (sub15): q 2, set -> 0.5*-32*2 = -32.0
    let y = decode(GgmlType::Q3K, &b);
    let want = [
        (0, 1.5),
        (1, -1.5),
        (16, 2.0),
        (112, 2.0),
        (127, 1.5),
        (128, 12.0),
        (255, -32.0),
        (240, 64.0), // sub15, qs[48] 0, hmask[16] bit 7 clear -> 0.5*-32*-4
        (32, 0.0),   // sub2, scale 0
    ];
    check(GgmlType::Q3K, &y, &want);
}

/// Q4_K/Q5_K scale bytes for (sc, m) per sub-block: 0:(1,2) 1:(63,0) 3:(5,1) 4:(17,34) 7:(63,48),
/// others (0,0). Sub-blocks 4..7 split: low nibbles in bytes 8..12, top bits in bytes 0..8.
const K4_SCALES: [u8; 12] = [
    0x41, // sc0 = 1, top bits = sc4 >> 4 = 1
    0x3F, // sc1 = 63
    0x00, //
    0xC5, // sc3 = 5, top bits = sc7 >> 4 = 3
    0x82, // m0 = 2, top bits = m4 >> 4 = 2
    0x00, 0x00, //
    0xC1, // m3 = 1, top bits = m7 >> 4 = 3
    0x21, // sc4 low 1, m4 low 2
    0x00, 0x00, //
    0x0F, // sc7 low 15, m7 low 0
];

#[test]
fn k4_scale_unpacking() {
    let want = [
        (1, 2),
        (63, 0),
        (0, 0),
        (5, 1),
        (17, 34),
        (0, 0),
        (0, 0),
        (63, 48),
    ];
    for (j, w) in want.iter().enumerate() {
        assert_eq!(dequant::scale_min_k4(j, &K4_SCALES), *w, "sub-block {j}");
    }
}

#[test]
fn q4_k_block() {
    // Layout: d @0, dmin @2, scales[12] @4, qs[128] @16. d = 0.5, dmin = 0.25, so per sub-block
    // (d*sc, dmin*m): 0 (0.5, 0.5), 1 (31.5, 0), 3 (2.5, 0.25), 4 (8.5, 8.5), 7 (31.5, 12).
    // Group g = qs[32g..32g+32]: low nibbles are elements 64g.., high nibbles 64g+32...
    let mut b = [0u8; 144];
    b[..2].copy_from_slice(&HALF);
    b[2..4].copy_from_slice(&QUARTER);
    b[4..16].copy_from_slice(&K4_SCALES);
    b[16] = 0x3A; // e0 (sub0): 0.5*10-0.5 = 4.5; e32 (sub1): 31.5*3 = 94.5
    b[16 + 31] = 0xF1; // e31: 0.5*1-0.5 = 0; e63: 31.5*15 = 472.5
    b[16 + 32] = 0x4F; // e64 (sub2) 0; e96 (sub3): 2.5*4-0.25 = 9.75
    b[16 + 64] = 0x52; // e128 (sub4): 8.5*2-8.5 = 8.5; e160 (sub5) 0
    b[16 + 96] = 0xA0; // e192 (sub6) 0; e224 (sub7): 31.5*10-12 = 303
    b[16 + 127] = 0xF3; // e223 (sub6) 0; e255 (sub7): 31.5*15-12 = 460.5
    let y = decode(GgmlType::Q4K, &b);
    let want = [
        (0, 4.5),
        (32, 94.5),
        (31, 0.0),
        (63, 472.5),
        (64, 0.0),
        (96, 9.75),
        (128, 8.5),
        (160, 0.0),
        (192, 0.0),
        (224, 303.0),
        (223, 0.0),
        (255, 460.5),
        (129, -8.5), // sub4, q 0
        (1, -0.5),   // sub0, q 0
    ];
    check(GgmlType::Q4K, &y, &want);
}

#[test]
fn q5_k_block() {
    // Layout: d @0, dmin @2, scales[12] @4, qh[32] @16, qs[128] @48; scales as the Q4_K test.
    // Bit 2g of qh[l] adds 16 to element 64g+l, bit 2g+1 to element 64g+32+l.
    let mut b = [0u8; 176];
    b[..2].copy_from_slice(&HALF);
    b[2..4].copy_from_slice(&QUARTER);
    b[4..16].copy_from_slice(&K4_SCALES);
    b[16] = 0b1001_0001; // qh[0]: e0 (bit 0), e128 (bit 4), e224 (bit 7)
    b[16 + 31] = 0b0000_0010; // qh[31]: e63 (bit 1)
    b[48] = 0x3A; // e0: 0.5*(10+16)-0.5 = 12.5; e32: 31.5*3 = 94.5 (bit 1 clear)
    b[48 + 31] = 0xF1; // e31: 0.5*1-0.5 = 0; e63: 31.5*(15+16) = 976.5
    b[48 + 64] = 0x52; // e128: 8.5*(2+16)-8.5 = 144.5
    b[48 + 96] = 0xA0; // e224: 31.5*(10+16)-12 = 807
    b[48 + 127] = 0xF3; // e255: 31.5*15-12 = 460.5 (qh[31] bit 7 clear)
    let y = decode(GgmlType::Q5K, &b);
    let want = [
        (0, 12.5),
        (32, 94.5),
        (31, 0.0),
        (63, 976.5),
        (128, 144.5),
        (224, 807.0),
        (255, 460.5),
        (129, -8.5),
    ];
    check(GgmlType::Q5K, &y, &want);
}

#[test]
fn q6_k_block() {
    // Layout: ql[128] @0, qh[64] @128, scales[16] (i8) @192, d @208. d = 0.5, x = 0.5*sc*(q-32)
    // with element i using scale i/16. Per half h: ql[64h + l] low/high nibble -> elements
    // 128h + l / 128h + 64 + l; ql[64h + 32 + l] -> 128h + 32 + l / 128h + 96 + l; qh[32h + l]
    // bits 0-1, 2-3, 4-5, 6-7 are the top bits of 128h + l, +32, +64, +96.
    let mut b = [0u8; 210];
    b[208..210].copy_from_slice(&HALF);
    let sc: [(usize, i8); 7] = [(0, 1), (1, -2), (2, 5), (4, 3), (6, 2), (7, 4), (8, -1)];
    for (i, s) in sc {
        b[192 + i] = s as u8;
    }
    b[192 + 15] = 0x80; // scale 15 = -128
    b[0] = 0x21; // e0 low 1, e64 low 2
    b[32] = 0x0F; // e32 low 15, e96 low 0
    b[128] = 0xC6; // qh[0] = 0b11_00_01_10: e0 +2<<4, e32 +1<<4, e64 +0, e96 +3<<4
                   // e0: 1|32=33 -> 1 -> 0.5*1*1 = 0.5; e32: 15|16=31 -> -1 -> 0.5*5*-1 = -2.5
                   // e64: 2 -> -30 -> 0.5*3*-30 = -45; e96: 48 -> 16 -> 0.5*2*16 = 16
                   // e16: all zero -> -32, scale 1 = -2 -> 32
    b[63] = 0xF0; // e127 high nibble 15
    b[128 + 31] = 0xC0; // qh[31] bits 6-7 = 3: e127 = 15|48 = 63 -> 31 -> 0.5*4*31 = 62
    b[64] = 0x07; // e128 low 7
    b[128 + 32] = 0x01; // qh[32] bits 0-1 = 1: e128 = 7|16 = 23 -> -9 -> 0.5*-1*-9 = 4.5
    b[127] = 0x10; // e255 high nibble 1
    b[128 + 63] = 0x80; // qh[63] bits 6-7 = 2: e255 = 1|32 = 33 -> 1 -> 0.5*-128*1 = -64
    let y = decode(GgmlType::Q6K, &b);
    let want = [
        (0, 0.5),
        (32, -2.5),
        (64, -45.0),
        (96, 16.0),
        (16, 32.0),
        (127, 62.0),
        (128, 4.5),
        (255, -64.0),
        (240, 2048.0), // scale -128, q 0 -> -32: 0.5*-128*-32
    ];
    check(GgmlType::Q6K, &y, &want);
}

#[test]
fn q8_k_block() {
    // Layout: d (f32) @0, qs[256] (i8) @4, bsums @260. d = 0.5 (0x3F000000).
    let mut b = [0u8; 292];
    b[..4].copy_from_slice(&[0, 0, 0, 0x3F]);
    b[4] = 3; // e0 -> 1.5
    b[4 + 255] = 0xFE; // e255: -2 -> -1.0
    let y = decode(GgmlType::Q8K, &b);
    check(GgmlType::Q8K, &y, &[(0, 1.5), (255, -1.0), (1, 0.0)]);
}

#[test]
fn q4_0_quantizer_hand_case() {
    // x_j = 0.25 * (j % 16 - 8): the largest magnitude is -2.0 (first at j = 0), so d = -2/-8 =
    // 0.25, id = 4 and q = trunc(x*4 + 8.5) = j % 16 exactly.
    let x: Vec<f32> = (0..32).map(|j| 0.25 * ((j % 16) as f32 - 8.0)).collect();
    let mut out = vec![0xEE]; // quantize appends
    quantize(GgmlType::Q4_0, &x, &mut out).unwrap();
    assert_eq!(out.len(), 1 + 18);
    assert_eq!(out[0], 0xEE);
    assert_eq!(&out[1..3], &QUARTER);
    for j in 0..16 {
        assert_eq!(out[3 + j], (j as u8) | ((j as u8) << 4), "byte {j}");
    }
}

#[test]
fn q8_0_quantizer_hand_case() {
    // amax = 127 -> d = 1.0 exactly; q = roundf(x), halves away from zero as C's roundf.
    let mut x = [0f32; 32];
    x[0] = -127.0;
    x[1] = 2.5; // 3, not 2 (ties-to-even would give 2)
    x[2] = -2.5; // -3
    x[31] = 0.49; // 0
    let mut out = Vec::new();
    quantize(GgmlType::Q8_0, &x, &mut out).unwrap();
    assert_eq!(&out[..2], &ONE);
    assert_eq!(out[2] as i8, -127);
    assert_eq!(out[3] as i8, 3);
    assert_eq!(out[4] as i8, -3);
    assert_eq!(out[2 + 31] as i8, 0);
}
