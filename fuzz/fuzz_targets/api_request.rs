//! HTTP API request bodies and Authorization headers: the JSON and
//! multipart/form-data readers and the credentials parser never panic, and
//! what they accept is an envelope SMTP would accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::http::api::request::{credentials, envelope};

fuzz_target!(|data: &[u8]| {
    let _ = credentials(data);
    for content_type in [
        "application/json",
        "multipart/form-data; boundary=b",
        "multipart/form-data; boundary=\"XyZ\"",
    ] {
        if let Ok(e) = envelope(content_type, data) {
            assert!(!e.from.is_empty() && !e.to.is_empty());
            for a in std::iter::once(&e.from).chain(&e.to) {
                assert!(!a.contains(['<', '>', '\r', '\n', ' ']), "{a:?}");
            }
        }
    }
});
