//! Upstream replies (what delivery reads from an upstream): however the
//! octets are split into reads, replies come out the same, each bounded,
//! rendered on one line without control characters.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::delivery::transaction::{next_response, Reply};
use smtp_proto::response::parser::ResponseReceiver;

fn replies(data: &[u8], chunk: usize) -> Vec<Result<String, String>> {
    let mut rx = ResponseReceiver::default();
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        while let Some(r) = next_response(&mut rx, &mut buf, "fuzz") {
            match r {
                Ok(response) => {
                    let reply = Reply::from_proto(response);
                    assert!(!reply.text.chars().any(char::is_control));
                    assert!(reply.text.len() <= 8 * 4096);
                    out.push(Ok(reply.text));
                }
                Err(e) => {
                    // A broken session is dropped: stop here.
                    out.push(Err(e.to_string()));
                    return out;
                }
            }
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&c, rest)) = data.split_first() else {
        return;
    };
    assert_eq!(
        replies(rest, usize::from(c).max(1)),
        replies(rest, rest.len().max(1)),
        "replies depend on read boundaries"
    );
});
