use super::*;

fn cfg() -> FixupsConfig {
    FixupsConfig::default()
}

fn ctx<'a>(config: &'a FixupsConfig, rcpts: &'a [String]) -> FixupContext<'a> {
    FixupContext {
        hostname: "relay.example.net",
        now_ms: 1_795_452_707_000, // Mon, 23 Nov 2026 16:51:47 UTC
        queue_id: "0193abcd",
        authenticated: true,
        tls: Some(TlsInfo {
            version: "TLSv1.3",
            cipher: "TLS_AES_256_GCM_SHA384",
        }),
        smtputf8: false,
        helo: Some("alice-laptop.lan"),
        client_ip: Some("192.0.2.7".parse().unwrap()),
        client_host: Some("dsl-7.isp.example"),
        recipients: rcpts,
        config,
    }
}

#[test]
fn header_from_is_found_in_folded_8bit_headers() {
    let msg = b"Received: from x\r\n\tby y\r\nSubject: caf\xc3\xa9 \xff\r\nFrom: \"Alice\r\n Smith\" (sales)\r\n <Alice@Example.COM>\r\nTo: b@example.org\r\n\r\nFrom: body@evil.example\r\n";
    assert_eq!(header_from_addresses(msg).unwrap(), ["Alice@Example.COM"]);
    // LF-only line ends are read too.
    assert_eq!(
        header_from_addresses(b"from: a@b.example\nTo: c@d\n\nbody").unwrap(),
        ["a@b.example"]
    );
}

#[test]
fn header_from_errors() {
    assert_eq!(
        header_from_addresses(b"To: a@b\r\n\r\n"),
        Err(FixupError::NoFrom)
    );
    assert_eq!(
        header_from_addresses(b"From: a@b.example\r\nFrom: c@d.example\r\n\r\n"),
        Err(FixupError::MultipleFrom { count: 2 })
    );
    assert!(matches!(
        header_from_addresses(b"From: nobody\r\n\r\n"),
        Err(FixupError::BadAuthor { .. })
    ));
    assert!(matches!(
        header_from_addresses(b"From: undisclosed:;\r\n\r\n"),
        Err(FixupError::BadAuthor {
            reason: MailboxError::Group,
            ..
        })
    ));
    assert_eq!(
        header_from_addresses(b"From: a@b\r\nthis is not a header\r\n\r\n"),
        Err(FixupError::Malformed { line: 2 })
    );
    assert_eq!(
        header_from_addresses(b" folded: first\r\n\r\n"),
        Err(FixupError::Malformed { line: 1 })
    );
}

#[test]
fn header_from_policy_names_address_and_rule() {
    let rules = vec!["@corp.example".to_string(), "ceo@other.example".to_string()];
    let ok = check_header_from(b"From: Bob <bob@CORP.example>\r\n\r\nx", &rules).unwrap();
    assert_eq!(
        ok,
        [("bob@CORP.example".to_string(), "@corp.example".to_string())]
    );
    let err = check_header_from(
        b"From: bob@corp.example, Eve <eve@other.example>\r\n\r\nx",
        &rules,
    )
    .unwrap_err();
    assert_eq!(
        err,
        FromPolicyError::NotPermitted {
            address: "eve@other.example".into()
        }
    );
    assert!(err.to_string().contains("<eve@other.example>"));
    assert!(matches!(
        check_header_from(b"Subject: x\r\n\r\n", &rules),
        Err(FromPolicyError::Header(FixupError::NoFrom))
    ));
}

#[test]
fn apply_adds_trace_date_and_message_id_and_keeps_the_body() {
    let config = cfg();
    let rcpt = vec!["bob@example.org".to_string()];
    let body = b"Hello \xc3\xa9 \r\nX-Originating-IP: [10.0.0.1]\r\n\r\n.trailing  \r\n";
    let mut msg = b"From: a@example.com\r\nSubject: hi\r\n\r\n".to_vec();
    msg.extend_from_slice(body);
    let out = apply(&msg, &ctx(&config, &rcpt)).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with(
        "Received: by relay.example.net (postgate) with ESMTPSA id 0193abcd\r\n\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)\r\n\tfor <bob@example.org>;\r\n\tMon, 23 Nov 2026 16:51:47 +0000\r\nFrom: a@example.com\r\nSubject: hi\r\n"
    ), "{text}");
    assert!(text.contains("\r\nDate: Mon, 23 Nov 2026 16:51:47 +0000\r\nMessage-ID: <0193abcd@relay.example.net>\r\n\r\n"));
    // The client's identity stays out by default.
    for secret in ["192.0.2.7", "alice-laptop", "dsl-7"] {
        assert!(!text.contains(secret), "{secret} leaked");
    }
    assert!(out.ends_with(body), "body changed");
    // The result parses, with the new fields where expected.
    let block = HeaderBlock::parse(&out).unwrap();
    assert_eq!(block.fields[0].name, "Received");
    assert!(block.has("Date") && block.has("Message-ID"));
}

#[test]
fn apply_keeps_existing_fields_and_removes_named_ones() {
    let mut config = cfg();
    config.remove_headers = vec!["x-originating-ip".into(), "received".into()];
    let rcpts = vec!["a@x.example".to_string(), "b@y.example".to_string()];
    let msg = b"Received: from old\r\n\tby older\r\nX-Originating-IP: [10.0.0.1]\r\nDate: Tue, 1 Jan 2030 00:00:00 +0000\r\nMessage-ID: <m@x>\r\nFrom: a@example.com\r\n\r\nX-Originating-IP: stays in the body\r\n";
    let out = apply(msg, &ctx(&config, &rcpts)).unwrap();
    let text = String::from_utf8_lossy(&out);
    // Received fields are never removed, even when listed.
    assert!(
        text.contains("Received: from old\r\n\tby older\r\n"),
        "{text}"
    );
    assert_eq!(text.matches("Received:").count(), 2);
    assert!(!text.contains("[10.0.0.1]"));
    assert!(text.ends_with("\r\n\r\nX-Originating-IP: stays in the body\r\n"));
    assert_eq!(text.matches("Date:").count(), 1);
    assert_eq!(text.matches("Message-ID:").count(), 1);
    // Several recipients: none is named (no Bcc disclosure).
    assert!(!text.contains("for <"));
    assert!(config.validate().is_err(), "received may not be configured");
    config.remove_headers = vec!["X-Originating-IP".into()];
    assert!(config.validate().is_ok());
}

#[test]
fn received_can_show_the_client_and_never_injects() {
    let mut config = cfg();
    config.received.hide_client = false;
    let rcpt = vec!["bob@example.org\r\nBcc: x@y".to_string()];
    let mut c = ctx(&config, &rcpt);
    c.helo = Some("evil\r\nX-Injected: 1");
    let r = received_header(&c);
    assert!(r.starts_with("Received: from evilX-Injected:1 (dsl-7.isp.example [192.0.2.7])\r\n\tby relay.example.net"), "{r}");
    assert!(!r.contains("\r\nX-Injected") && !r.contains("\r\nBcc"));
    c.tls = None;
    c.smtputf8 = true;
    assert!(received_header(&c).contains(" with UTF8SMTPA id "));
}

#[test]
fn messages_without_body_or_separator_get_one() {
    let config = cfg();
    let out = apply(b"From: a@example.com\r\nSubject: x", &ctx(&config, &[])).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("\r\nSubject: x\r\nDate: "), "{text}");
    assert!(text.ends_with(">\r\n\r\n"), "{text}");
}

/// Arbitrary bytes never panic, and whenever `apply` succeeds the body comes
/// out unchanged after a header block that parses again.
#[test]
fn arbitrary_input_is_handled_and_bodies_survive() {
    let config = cfg();
    let pieces: [&[u8]; 12] = [
        b"From: a@b.example",
        b"\r\n",
        b"\n",
        b" folded",
        b"\t",
        b":",
        b"X-Y: \xff\xfe",
        b"(c",
        b"<",
        b"\"",
        b"To: <x@y>, z@w",
        b"\r\n\r\nbody \x00\xc3\r\n",
    ];
    // A small deterministic xorshift generator: no dependency, reproducible.
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    for _ in 0..20_000 {
        let mut msg = Vec::new();
        let len = (state % 12) as usize;
        for _ in 0..len {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            msg.extend_from_slice(pieces[(state % pieces.len() as u64) as usize]);
        }
        let _ = header_from_addresses(&msg);
        if let Ok(out) = apply(&msg, &ctx(&config, &[])) {
            let before = HeaderBlock::parse(&msg).unwrap();
            let after = HeaderBlock::parse(&out).expect("output parses");
            assert_eq!(&out[after.body_start..], &msg[before.body_start..]);
        }
    }
}
