//! SASL PLAIN and LOGIN (RFC 4616, LOGIN): any sequence of response lines
//! ends in credentials, a challenge, or an error; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::smtp::command::Mechanism;
use postgate::smtp::sasl::{start, Step};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut lines = text.split("\r\n");
    let mechanism = match sel % 3 {
        0 => Mechanism::Plain,
        1 => Mechanism::Login,
        _ => Mechanism::Other,
    };
    let initial = if sel & 4 != 0 { lines.next() } else { None };
    let mut step = start(mechanism, initial);
    for line in lines {
        match step {
            Ok(Step::Challenge(exchange, _)) => step = exchange.respond(line),
            _ => break,
        }
    }
});
