//! PURE: the expiry of a certificate, for
//! `postgate_tls_certificate_expiry_timestamp_seconds`.

/// The notAfter of a DER-encoded X.509 certificate (the leaf of the chain a
/// listener serves), in Unix seconds; `None` when it does not parse.
pub fn certificate_not_after(der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_not_after_of_a_generated_certificate() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["relay.example.com".into()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 14);
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-14T00:00:00Z
        assert_eq!(certificate_not_after(cert.der()), Some(1_941_753_600));
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(certificate_not_after(b"not a certificate"), None);
        assert_eq!(certificate_not_after(&[]), None);
    }
}
