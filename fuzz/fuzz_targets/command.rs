//! SMTP command lines: the line framer (line cap, resynchronisation) and
//! the command parser never panic; every framed line is bounded.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use postgate::smtp::command::{parse, LineFramer};

/// Small, so the over-long line path is reached often.
const MAX_LINE: usize = 600;

fuzz_target!(|data: &[u8]| {
    let mut framer = LineFramer::default();
    let mut buf = BytesMut::new();
    // Feed in two pieces, as a socket would, split where the input says.
    let split = data.first().map_or(0, |&b| b as usize).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        buf.extend_from_slice(piece);
        while let Some(line) = framer.next_line(&mut buf, MAX_LINE) {
            if let Ok(line) = line {
                assert!(line.len() <= MAX_LINE, "framed line over the cap");
                assert!(line.ends_with(b"\n"));
                let _ = parse(&line);
            }
        }
        assert!(buf.len() < MAX_LINE, "framer holds more than a line");
    }
    let _ = parse(data);
});
