//! An incremental scanner over one JSON object arriving in pieces: it finds where the object
//! ends and the byte ranges of its top-level members, without waiting for the whole text, so
//! a tool call's name and the growing raw text of its arguments can be streamed.

use std::ops::Range;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Top {
    /// Before the opening `{`.
    Start,
    /// After `{` or `,`: a key or (only after `{`) the closing `}`.
    Key {
        first: bool,
    },
    /// Inside a top-level key string.
    InKey,
    Colon,
    /// Before a member's value.
    Value,
    /// Inside a member's value (nested, string or scalar).
    InValue,
    /// After a member: `,` or `}`.
    Next,
    Done,
    Error,
}

/// Scans the text of one object. Positions are byte offsets into the text fed so far.
#[derive(Debug, Clone)]
pub(crate) struct ObjectScanner {
    top: Top,
    /// Bytes scanned so far.
    pos: usize,
    /// Nesting inside the current member's value (`{`/`[` open).
    depth: usize,
    in_string: bool,
    escape: bool,
    /// The current member's value is a scalar (number, true, false, null).
    scalar: bool,
    key_start: usize,
    key: Range<usize>,
    value_start: usize,
    /// Completed top-level members: (key text range incl. quotes, value range).
    pub members: Vec<(Range<usize>, Range<usize>)>,
    /// Offset just past the closing `}`.
    pub end: Option<usize>,
}

impl ObjectScanner {
    pub fn new() -> Self {
        ObjectScanner {
            top: Top::Start,
            pos: 0,
            depth: 0,
            in_string: false,
            escape: false,
            scalar: false,
            key_start: 0,
            key: 0..0,
            value_start: 0,
            members: Vec::new(),
            end: None,
        }
    }

    pub fn is_error(&self) -> bool {
        self.top == Top::Error
    }

    /// Bytes scanned: past the object's end or the offending byte once done or in error.
    pub fn scanned(&self) -> usize {
        self.pos
    }

    pub fn is_done(&self) -> bool {
        self.top == Top::Done
    }

    /// The member whose value is being scanned now: (key range, value start).
    pub fn open_member(&self) -> Option<(Range<usize>, usize)> {
        (self.top == Top::InValue).then(|| (self.key.clone(), self.value_start))
    }

    /// Scans `text[self.pos..]` (`text` is everything fed so far). Stops at the object's end.
    pub fn feed(&mut self, text: &str) {
        let bytes = text.as_bytes();
        while self.pos < bytes.len() && !matches!(self.top, Top::Done | Top::Error) {
            let b = bytes[self.pos];
            self.step(b);
            self.pos += 1;
        }
    }

    fn step(&mut self, b: u8) {
        let ws = matches!(b, b' ' | b'\n' | b'\r' | b'\t');
        match self.top {
            Top::Start if ws => {}
            Top::Start if b == b'{' => self.top = Top::Key { first: true },
            Top::Key { .. } if ws => {}
            Top::Key { .. } if b == b'"' => {
                self.key_start = self.pos;
                self.top = Top::InKey;
            }
            Top::Key { first: true } if b == b'}' => self.finish(),
            Top::InKey => {
                if self.escape {
                    self.escape = false;
                } else if b == b'\\' {
                    self.escape = true;
                } else if b == b'"' {
                    self.key = self.key_start..self.pos + 1;
                    self.top = Top::Colon;
                }
            }
            Top::Colon if ws => {}
            Top::Colon if b == b':' => self.top = Top::Value,
            Top::Value if ws => {}
            Top::Value => {
                self.value_start = self.pos;
                self.top = Top::InValue;
                match b {
                    b'{' | b'[' => self.depth = 1,
                    b'"' => self.in_string = true,
                    b'}' | b']' | b',' | b':' => self.top = Top::Error,
                    _ => self.scalar = true,
                }
            }
            Top::InValue => self.in_value(b, ws),
            Top::Next if ws => {}
            Top::Next if b == b',' => self.top = Top::Key { first: false },
            Top::Next if b == b'}' => self.finish(),
            _ => self.top = Top::Error,
        }
    }

    fn in_value(&mut self, b: u8, ws: bool) {
        if self.in_string {
            if self.escape {
                self.escape = false;
            } else if b == b'\\' {
                self.escape = true;
            } else if b == b'"' {
                self.in_string = false;
                if self.depth == 0 {
                    self.end_member(self.pos + 1);
                }
            }
            return;
        }
        if self.scalar {
            if ws || b == b',' || b == b'}' {
                self.scalar = false;
                self.end_member(self.pos);
                // The terminator belongs to the object: step it again there.
                if !ws {
                    self.step(b);
                }
            } else if !(b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.')) {
                self.top = Top::Error;
            }
            return;
        }
        match b {
            b'"' => self.in_string = true,
            b'{' | b'[' => self.depth += 1,
            b'}' | b']' => {
                self.depth -= 1;
                if self.depth == 0 {
                    self.end_member(self.pos + 1);
                }
            }
            _ => {}
        }
    }

    fn end_member(&mut self, value_end: usize) {
        self.members
            .push((self.key.clone(), self.value_start..value_end));
        self.top = Top::Next;
    }

    fn finish(&mut self) {
        self.end = Some(self.pos + 1);
        self.top = Top::Done;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_all(text: &str) -> ObjectScanner {
        let mut s = ObjectScanner::new();
        s.feed(text);
        s
    }

    #[test]
    fn finds_members_and_the_end() {
        let t = r#" {"name": "f", "arguments": {"a": [1, {"b": "}"}]}, "n": -1.5e3, "t":true}tail"#;
        let s = scan_all(t);
        assert!(s.is_done(), "{s:?}");
        let end = s.end.unwrap();
        assert_eq!(&t[end..], "tail");
        let got: Vec<(&str, &str)> = s
            .members
            .iter()
            .map(|(k, v)| (&t[k.clone()], &t[v.clone()]))
            .collect();
        assert_eq!(
            got,
            [
                (r#""name""#, r#""f""#),
                (r#""arguments""#, r#"{"a": [1, {"b": "}"}]}"#),
                (r#""n""#, "-1.5e3"),
                (r#""t""#, "true"),
            ]
        );
    }

    #[test]
    fn resumes_at_every_split() {
        let t = r#"{"k\"ey": "v\\", "x": {"y": 1} }"#;
        let whole = scan_all(t);
        for cut in 0..=t.len() {
            let mut s = ObjectScanner::new();
            s.feed(&t[..cut]);
            assert!(!s.is_error());
            s.feed(t);
            assert_eq!(s.members, whole.members, "cut {cut}");
            assert_eq!(s.end, whole.end);
        }
    }

    #[test]
    fn rejects_what_is_not_an_object() {
        assert!(scan_all("[1]").is_error());
        assert!(scan_all("hello").is_error());
        assert!(scan_all(r#"{"a" 1}"#).is_error());
        assert!(scan_all(r#"{"a": 1,}"#).is_error());
        assert!(scan_all("{}").is_done());
    }

    #[test]
    fn reports_the_member_being_scanned() {
        let t = r#"{"name": "f", "arguments": {"a": 1"#;
        let s = scan_all(t);
        let (key, start) = s.open_member().unwrap();
        assert_eq!(&t[key], r#""arguments""#);
        assert_eq!(&t[start..], r#"{"a": 1"#);
    }
}
