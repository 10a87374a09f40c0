//! Building blocks for a stage's state format ([`Stage::export_state`] /
//! [`Stage::import_state`]) and for compact keys: LEB128 integers, length-prefixed
//! text, a key-field encoding that keeps absent, null and text apart, and a reader that
//! bounds-checks every read so that importing garbage is an error, never a panic.
//!
//! ```
//! use pipe_sdk::state::{put_str, put_varint, StateReader};
//! let mut out = Vec::new();
//! put_varint(&mut out, 300);
//! put_str(&mut out, "id");
//! let mut r = StateReader::new(&out, "my stage");
//! assert_eq!(r.varint().unwrap(), 300);
//! assert_eq!(r.str().unwrap(), "id");
//! assert!(r.u8().unwrap_err().message().contains("my stage state: truncated"));
//! ```
//!
//! [`Stage::export_state`]: crate::Stage::export_state
//! [`Stage::import_state`]: crate::Stage::import_state

use crate::batch::Kind;
use crate::stage::Error;

/// Appends `v` as unsigned LEB128 (1 byte below 128).
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends `s` as its length (varint) and its bytes.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    put_bytes(out, s.as_bytes());
}

/// Appends `b` as its length (varint) and the bytes.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Appends one key field: `0` absent, `1` null, else `len + 2` and the text. Fields so
/// encoded can be concatenated into a key that never collides (`"a,b" + "c"` differs
/// from `"a" + "b,c"`), with absent, null and `""` all distinct.
pub fn put_key_field(out: &mut Vec<u8>, kind: Kind, text: &str) {
    match kind {
        Kind::Absent => out.push(0),
        Kind::Null => out.push(1),
        _ => {
            put_varint(out, text.len() as u64 + 2);
            out.extend_from_slice(text.as_bytes());
        }
    }
}

/// One key field as [`put_key_field`] wrote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyField<'a> {
    /// The field was absent.
    Absent,
    /// The field was null.
    Null,
    /// The field's text.
    Text(&'a str),
}

/// Reads a state buffer; every read is bounds-checked and fails with an [`Error`] that
/// starts with `"<what> state: "`.
#[derive(Debug, Clone)]
pub struct StateReader<'a> {
    buf: &'a [u8],
    at: usize,
    what: &'static str,
}

impl<'a> StateReader<'a> {
    /// A reader over `buf`; `what` names the stage in error messages.
    pub fn new(buf: &'a [u8], what: &'static str) -> StateReader<'a> {
        StateReader { buf, at: 0, what }
    }

    /// An error about this state: `"<what> state: <msg>"`.
    pub fn error(&self, msg: impl std::fmt::Display) -> Error {
        Error::msg(format!("{} state: {msg}", self.what))
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> usize {
        self.buf.len() - self.at
    }

    /// `Ok` when everything was read; an error naming the leftover bytes otherwise.
    pub fn finish(&self) -> Result<(), Error> {
        match self.rest() {
            0 => Ok(()),
            n => Err(self.error(format!("{n} unexpected bytes at the end"))),
        }
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: u64) -> Result<&'a [u8], Error> {
        match usize::try_from(len) {
            Ok(n) if n <= self.rest() => {
                let s = &self.buf[self.at..self.at + n];
                self.at += n;
                Ok(s)
            }
            _ => Err(self.error("truncated")),
        }
    }

    /// One byte.
    pub fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.bytes(1)?[0])
    }

    /// `N` bytes, for fixed-width numbers (`u64::from_le_bytes(r.array()?)`).
    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.bytes(N as u64)?);
        Ok(a)
    }

    /// An unsigned LEB128 integer.
    pub fn varint(&mut self) -> Result<u64, Error> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.error("a number is out of range"))
    }

    /// Length-prefixed bytes ([`put_bytes`]).
    pub fn len_bytes(&mut self) -> Result<&'a [u8], Error> {
        let n = self.varint()?;
        self.bytes(n)
    }

    /// Length-prefixed UTF-8 text ([`put_str`]).
    pub fn str(&mut self) -> Result<&'a str, Error> {
        let b = self.len_bytes()?;
        std::str::from_utf8(b).map_err(|_| self.error("text is not UTF-8"))
    }

    /// A count followed by that many texts; garbage cannot make it allocate or loop more
    /// than the buffer's length.
    pub fn strs(&mut self) -> Result<Vec<&'a str>, Error> {
        let n = self.varint()?;
        let mut v = Vec::new();
        for _ in 0..n.min(self.rest() as u64) {
            v.push(self.str()?);
        }
        if v.len() as u64 != n {
            return Err(self.error("truncated"));
        }
        Ok(v)
    }

    /// One key field ([`put_key_field`]).
    pub fn key_field(&mut self) -> Result<KeyField<'a>, Error> {
        Ok(match self.varint()? {
            0 => KeyField::Absent,
            1 => KeyField::Null,
            n => KeyField::Text(
                std::str::from_utf8(self.bytes(n - 2)?)
                    .map_err(|_| self.error("a key field is not UTF-8"))?,
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_garbage() {
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        put_key_field(&mut out, Kind::Absent, "");
        put_key_field(&mut out, Kind::Null, "");
        put_key_field(&mut out, Kind::Str, "");
        put_key_field(&mut out, Kind::Str, "héllo");
        put_bytes(&mut out, b"\xff");
        let mut r = StateReader::new(&out, "t");
        assert_eq!(r.varint().unwrap(), u64::MAX);
        assert_eq!(r.key_field().unwrap(), KeyField::Absent);
        assert_eq!(r.key_field().unwrap(), KeyField::Null);
        assert_eq!(r.key_field().unwrap(), KeyField::Text(""));
        assert_eq!(r.key_field().unwrap(), KeyField::Text("héllo"));
        assert_eq!(r.len_bytes().unwrap(), b"\xff");
        r.finish().unwrap();
        let over = [0xffu8; 11];
        assert!(StateReader::new(&over, "t")
            .varint()
            .unwrap_err()
            .message()
            .contains("out of range"));
        let mut huge = Vec::new();
        put_varint(&mut huge, u64::MAX);
        assert_eq!(
            StateReader::new(&huge, "t").strs().unwrap_err().message(),
            "t state: truncated"
        );
    }
}
