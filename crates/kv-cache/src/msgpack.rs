//! The few MessagePack writers that vLLM's wire formats need, each choosing the shortest form as
//! msgspec does: unsigned formats for non-negative ints, `fixstr`/`str8`/... for strings.

/// An array of `n` items follows.
pub fn array_head(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x90 | n as u8);
    } else if n <= 0xffff {
        out.push(0xdc);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdd);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A map of `n` key/value pairs follows.
pub fn map_head(out: &mut Vec<u8>, n: usize) {
    if n < 16 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0xde);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdf);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

/// A UTF-8 string of `n` bytes follows.
pub fn str_head(out: &mut Vec<u8>, n: usize) {
    if n < 32 {
        out.push(0xa0 | n as u8);
    } else if n <= 0xff {
        out.extend_from_slice(&[0xd9, n as u8]);
    } else if n <= 0xffff {
        out.push(0xda);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0xdb);
        out.extend_from_slice(&(n as u32).to_be_bytes());
    }
}

pub fn str(out: &mut Vec<u8>, s: &str) {
    str_head(out, s.len());
    out.extend_from_slice(s.as_bytes());
}

pub fn uint(out: &mut Vec<u8>, v: u64) {
    if v < 128 {
        out.push(v as u8);
    } else if v <= 0xff {
        out.extend_from_slice(&[0xcc, v as u8]);
    } else if v <= 0xffff {
        out.push(0xcd);
        out.extend_from_slice(&(v as u16).to_be_bytes());
    } else if v <= 0xffff_ffff {
        out.push(0xce);
        out.extend_from_slice(&(v as u32).to_be_bytes());
    } else {
        out.push(0xcf);
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn nil(out: &mut Vec<u8>) {
    out.push(0xc0);
}

pub fn f64(out: &mut Vec<u8>, v: f64) {
    out.push(0xcb);
    out.extend_from_slice(&v.to_bits().to_be_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Boundaries against `msgspec.msgpack.encode` (0.23).
    #[test]
    fn shortest_forms() {
        let mut b = Vec::new();
        for (v, want) in [
            (127u64, &[0x7f][..]),
            (128, &[0xcc, 0x80]),
            (256, &[0xcd, 1, 0]),
            (65536, &[0xce, 0, 1, 0, 0]),
            (1 << 32, &[0xcf, 0, 0, 0, 1, 0, 0, 0, 0]),
        ] {
            b.clear();
            uint(&mut b, v);
            assert_eq!(b, want, "{v}");
        }
        b.clear();
        str(&mut b, &"a".repeat(32));
        assert_eq!(&b[..2], &[0xd9, 32]);
        b.clear();
        array_head(&mut b, 16);
        map_head(&mut b, 3);
        assert_eq!(b, [0xdc, 0, 16, 0x83]);
        b.clear();
        f64(&mut b, 1.5);
        assert_eq!(b, [0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0]);
    }
}
