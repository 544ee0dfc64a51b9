//! PROXY v1/v2 headers: the parser never panics and always makes progress
//! (asks for more octets than it has, or decides).
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::smtp::proxy::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    // Grow the buffer as the server does: by what the parser asks for.
    let mut have = 0usize;
    loop {
        match parse(&data[..have]) {
            Ok(Parsed::Need(n)) => {
                assert!(n > have, "PROXY parser asked for no new octets");
                if n > data.len() {
                    break;
                }
                have = n;
            }
            Ok(Parsed::Done { .. }) | Err(_) => break,
        }
    }
    let _ = parse(data);
});
