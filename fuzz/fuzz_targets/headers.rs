//! Header parsing at intake: the header block splitter, the strict
//! mailbox-list parser and the whole header From/Sender policy (with its
//! mail-parser cross-check) never panic; fields lie within the message and
//! in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::fixups::{check_header_from, parse_mailbox, parse_mailbox_list, HeaderBlock};

fuzz_target!(|data: &[u8]| {
    let _ = parse_mailbox_list(&String::from_utf8_lossy(data));
    let _ = check_header_from(data, &["@example.com".to_string()]);
    let Ok(block) = HeaderBlock::parse(data) else {
        return;
    };
    assert!(block.header_end <= block.body_start && block.body_start <= data.len());
    for field in &block.fields {
        let value = String::from_utf8_lossy(field.value);
        if let Ok(list) = parse_mailbox_list(&value) {
            assert!(!list.is_empty());
            assert!(list.iter().all(|m| m.address.contains('@')));
        }
        let _ = parse_mailbox(&value);
    }
});
