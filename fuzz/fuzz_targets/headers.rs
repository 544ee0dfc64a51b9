//! Header parsing at intake: the header block splitter and the address-list
//! parser used by the header From policy never panic; fields lie within the
//! message and in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use postgate::fixups::{parse_address_list, HeaderBlock};

fuzz_target!(|data: &[u8]| {
    let _ = parse_address_list(&String::from_utf8_lossy(data));
    let Ok(block) = HeaderBlock::parse(data) else {
        return;
    };
    assert!(block.header_end <= block.body_start && block.body_start <= data.len());
    for field in &block.fields {
        let value = String::from_utf8_lossy(field.value);
        let _ = parse_address_list(&value);
    }
});
