//! The DATA reader (dot-unstuffing, end of data, CR/LF rules):
//! - the result does not depend on how the input is split into reads;
//! - an accepted body has CRLF line ends only (no bare CR or LF);
//! - what is accepted, dot-stuffed again and sent on (as delivery does),
//!   reads back as exactly one message with the same bytes: no input can
//!   become two messages upstream (SMTP smuggling).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::smtp::data::DataReader;

const MAX: usize = 64 * 1024;

fn read_all(
    input: &[u8],
    chunk: usize,
    normalize: bool,
) -> Option<(usize, Result<Vec<u8>, postgate::smtp::data::DataError>)> {
    let mut reader = DataReader::new(MAX, normalize);
    let mut pos = 0;
    while pos < input.len() {
        let end = (pos + chunk).min(input.len());
        let (used, done) = reader.feed(&input[pos..end]);
        assert!(used <= end - pos);
        pos += used;
        if let Some(result) = done {
            return Some((pos, result));
        }
        assert_eq!(pos, end, "reader stopped early without a result");
    }
    None
}

fn dot_stuff(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 8);
    let mut line_start = true;
    for &b in body {
        if line_start && b == b'.' {
            out.push(b'.');
        }
        out.push(b);
        line_start = b == b'\n';
    }
    if !body.is_empty() && !body.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let normalize = flags & 1 == 1;
    let chunk = usize::from(flags >> 1).max(1);
    let whole = read_all(input, input.len().max(1), normalize);
    let pieces = read_all(input, chunk, normalize);
    assert_eq!(whole, pieces, "result depends on read boundaries");
    if let Some((_, Ok(body))) = whole {
        for (i, &b) in body.iter().enumerate() {
            if b == b'\n' {
                assert!(i > 0 && body[i - 1] == b'\r', "bare LF accepted");
            }
            if b == b'\r' {
                assert_eq!(body.get(i + 1), Some(&b'\n'), "bare CR accepted");
            }
        }
        let wire = dot_stuff(&body);
        let again = read_all(&wire, wire.len(), false);
        assert_eq!(
            again,
            Some((wire.len(), Ok(body))),
            "relayed form reads back differently"
        );
    }
});
