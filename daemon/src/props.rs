//! Shared pieces of the property tests: how many cases each runs, and
//! strategies that damage a valid input the way a hostile client or a bad
//! disk would (flipped bits, cuts, splices, boundary values).
//!
//! Damaging valid inputs finds far more than noise does: noise is refused
//! at the first byte, a damaged record gets deep into the decoder.

use proptest::prelude::*;
use proptest::test_runner::Config;

/// Cases per property when `PROPTEST_CASES` is unset: a few thousand, so
/// that CI covers ground while all properties together stay well under a
/// minute in a debug build.
const CI_CASES: u32 = 2000;

/// The config of every property: `PROPTEST_CASES` cases if set (the long
/// run in `docs/benchmarks.md`), else [`CI_CASES`]. Proptest reads the
/// variable only into its own default of 256, which an explicit `cases`
/// would override, so it is read here too.
pub(crate) fn config() -> Config {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CI_CASES);
    Config {
        cases,
        ..Config::default()
    }
}

/// One damage to a byte string. Positions are taken modulo the length, so
/// an edit applies to any input.
#[derive(Clone, Debug)]
pub(crate) enum ByteEdit {
    /// XOR the byte at a position with a non-zero mask.
    Flip(usize, u8),
    /// Cut everything from a position on.
    Truncate(usize),
    /// Insert bytes at a position.
    Insert(usize, Vec<u8>),
    /// Remove up to n bytes from a position.
    Remove(usize, usize),
    /// Copy up to n bytes from one position to another (a repeated or
    /// misplaced field).
    Splice(usize, usize, usize),
}

/// Bytes that mean something to a protobuf or postcard decoder: varints
/// at their limits, huge lengths, a zero tag, wire types 3 to 7.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..16),
        // u64::MAX as a varint, and an overlong one.
        Just(vec![0xff; 9].into_iter().chain([0x01]).collect()),
        Just(vec![0xff; 11]),
        // Field 1, length-delimited, 4 GiB long.
        Just(vec![0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]),
        // A zero tag, and groups (wire types 3 and 4).
        Just(vec![0x00]),
        Just(vec![0x0b]),
        Just(vec![0x0c]),
        Just(vec![0x00; 8]),
        Just(vec![
            0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01
        ]),
    ]
}

fn byte_edit() -> impl Strategy<Value = ByteEdit> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(i, m)| ByteEdit::Flip(i, m)),
        any::<usize>().prop_map(ByteEdit::Truncate),
        (any::<usize>(), hostile_bytes()).prop_map(|(i, b)| ByteEdit::Insert(i, b)),
        (any::<usize>(), 1..16usize).prop_map(|(i, n)| ByteEdit::Remove(i, n)),
        (any::<usize>(), any::<usize>(), 1..32usize)
            .prop_map(|(a, b, n)| ByteEdit::Splice(a, b, n)),
    ]
}

/// One to five damages.
pub(crate) fn byte_edits() -> impl Strategy<Value = Vec<ByteEdit>> {
    prop::collection::vec(byte_edit(), 1..6)
}

/// `bytes` with `edits` applied in order.
pub(crate) fn damage(mut bytes: Vec<u8>, edits: &[ByteEdit]) -> Vec<u8> {
    for e in edits {
        let at = |i: usize, len: usize| i % (len + 1);
        let len = bytes.len();
        match e {
            ByteEdit::Flip(i, m) if len > 0 => bytes[i % len] ^= m,
            ByteEdit::Flip(..) => {}
            ByteEdit::Truncate(i) => bytes.truncate(at(*i, len)),
            ByteEdit::Insert(i, b) => {
                let i = at(*i, len);
                bytes.splice(i..i, b.iter().copied());
            }
            ByteEdit::Remove(i, n) => {
                let i = at(*i, len);
                bytes.drain(i..(i + n).min(len));
            }
            ByteEdit::Splice(a, b, n) => {
                let a = at(*a, len);
                let piece: Vec<u8> = bytes[a..(a + n).min(len)].to_vec();
                let b = at(*b, len);
                bytes.splice(b..b, piece);
            }
        }
    }
    bytes
}

/// Text that parsers trip on: NUL, separators, signs, numbers at and past
/// the limits of every integer type, NaN and infinities, unicode that is
/// wide, invisible or reversing, and quoting.
pub(crate) const HOSTILE_TEXT: &[&str] = &[
    "",
    "\0",
    "=",
    "-",
    "+",
    " ",
    "\n",
    "\t",
    ".",
    ":",
    "/",
    "#",
    "\"",
    "'",
    "\\",
    "[",
    "]",
    "{",
    "}",
    "0",
    "-0",
    "-1",
    "2147483648",
    "-2147483649",
    "4294967296",
    "9223372036854775808",
    "-9223372036854775809",
    "18446744073709551615",
    "18446744073709551616",
    "99999999999999999999999999999999999999999",
    "1e309",
    "NaN",
    "nan",
    "inf",
    "-inf",
    "é",
    "𝄞",
    "\u{202e}",
    "\u{feff}",
    "\u{fffd}",
    "ms",
    "s",
    "h",
    "years",
    "Z",
    "T",
    "9999-12-31T23:59:60Z",
];

/// One damage to a string, on char boundaries so it stays UTF-8.
#[derive(Clone, Debug)]
pub(crate) enum TextEdit {
    /// Insert a piece at a char position.
    Insert(usize, String),
    /// Replace the char at a position with a piece.
    Replace(usize, String),
    /// Cut everything from a char position on.
    Truncate(usize),
    /// Remove up to n chars from a position.
    Remove(usize, usize),
    /// Repeat the string n times (up to 100,000 chars in all).
    Repeat(usize),
}

/// A piece to insert: hostile text, any string, or a long run.
pub(crate) fn piece() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(HOSTILE_TEXT).prop_map(str::to_owned),
        2 => any::<String>(),
        1 => (prop::sample::select(&["9", "a", "\0", "é"][..]), 1..2000usize)
            .prop_map(|(s, n)| s.repeat(n)),
    ]
}

fn text_edit() -> impl Strategy<Value = TextEdit> {
    prop_oneof![
        3 => (any::<usize>(), piece()).prop_map(|(i, p)| TextEdit::Insert(i, p)),
        2 => (any::<usize>(), piece()).prop_map(|(i, p)| TextEdit::Replace(i, p)),
        1 => any::<usize>().prop_map(TextEdit::Truncate),
        1 => (any::<usize>(), 1..8usize).prop_map(|(i, n)| TextEdit::Remove(i, n)),
        1 => (2..50usize).prop_map(TextEdit::Repeat),
    ]
}

/// One to four damages.
pub(crate) fn text_edits() -> impl Strategy<Value = Vec<TextEdit>> {
    prop::collection::vec(text_edit(), 1..5)
}

/// `text` with `edits` applied in order.
pub(crate) fn garble(text: &str, edits: &[TextEdit]) -> String {
    let mut chars: Vec<char> = text.chars().collect();
    for e in edits {
        let len = chars.len();
        let at = |i: usize| i % (len + 1);
        match e {
            TextEdit::Insert(i, p) => {
                let i = at(*i);
                chars.splice(i..i, p.chars());
            }
            TextEdit::Replace(i, p) if len > 0 => {
                let i = i % len;
                chars.splice(i..=i, p.chars());
            }
            TextEdit::Replace(_, p) => chars.extend(p.chars()),
            TextEdit::Truncate(i) => chars.truncate(at(*i)),
            TextEdit::Remove(i, n) => {
                let i = at(*i);
                chars.drain(i..(i + n).min(len));
            }
            TextEdit::Repeat(n) if len * n <= 100_000 => chars = chars.repeat(*n),
            TextEdit::Repeat(_) => {}
        }
    }
    chars.into_iter().collect()
}

/// A field value: mostly plausible, often hostile, sometimes a plausible
/// value damaged.
pub(crate) fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => "[a-zA-Z0-9_./=-]{0,12}",
        2 => piece(),
        1 => ("[a-zA-Z0-9_./=-]{1,12}", text_edits()).prop_map(|(t, e)| garble(&t, &e)),
    ]
}
