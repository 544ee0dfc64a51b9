//! PURE: compact JSON Web Tokens (RFC 7519) signed with RSA (RFC 7515 §3,
//! algorithms of RFC 7518 §3.3 RS256 and §3.5 PS256), as used for client
//! assertions and JWT bearer grants (RFC 7523). Signing is aws-lc-rs; the
//! key never leaves [`RsaSigner`] and is never formatted.

use base64::Engine;
use rustls::pki_types::PrivateKeyDer;
use serde_json::Value;

/// The JWS algorithm of a signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (Google service accounts).
    Rs256,
    /// RSASSA-PSS with SHA-256 (Microsoft certificate credentials).
    Ps256,
}

impl Alg {
    fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Ps256 => "PS256",
        }
    }
}

/// An RSA private key able to sign JWTs.
pub struct RsaSigner {
    key: aws_lc_rs::signature::RsaKeyPair,
}

impl std::fmt::Debug for RsaSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RsaSigner { .. }")
    }
}

impl RsaSigner {
    /// An RSA key from PKCS#8 or PKCS#1 DER; any other key type (EC,
    /// Ed25519) or a malformed key is refused with a reason (no key bytes).
    pub fn new(key: &PrivateKeyDer<'_>) -> Result<Self, String> {
        let parsed = match key {
            PrivateKeyDer::Pkcs8(k) => {
                aws_lc_rs::signature::RsaKeyPair::from_pkcs8(k.secret_pkcs8_der())
            }
            PrivateKeyDer::Pkcs1(k) => {
                aws_lc_rs::signature::RsaKeyPair::from_der(k.secret_pkcs1_der())
            }
            _ => return Err("not an RSA private key (JWT signing needs RSA)".into()),
        };
        parsed
            .map(|key| RsaSigner { key })
            .map_err(|e| format!("not a usable RSA private key: {e}"))
    }

    /// `header.claims.signature`, each base64url without padding (RFC 7515
    /// §7.1). `header` gets `alg` and `typ` added; it must be a JSON object.
    pub fn sign(&self, alg: Alg, header: Value, claims: &Value) -> Result<String, String> {
        let mut header = match header {
            Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        header.insert("alg".into(), Value::from(alg.name()));
        header.insert("typ".into(), Value::from("JWT"));
        let mut out = b64url(Value::Object(header).to_string().as_bytes());
        out.push('.');
        out.push_str(&b64url(claims.to_string().as_bytes()));
        let encoding = match alg {
            Alg::Rs256 => &aws_lc_rs::signature::RSA_PKCS1_SHA256,
            Alg::Ps256 => &aws_lc_rs::signature::RSA_PSS_SHA256,
        };
        let mut sig = vec![0u8; self.key.public_modulus_len()];
        self.key
            .sign(
                encoding,
                &aws_lc_rs::rand::SystemRandom::new(),
                out.as_bytes(),
                &mut sig,
            )
            .map_err(|_| "RSA signing failed".to_string())?;
        out.push('.');
        out.push_str(&b64url(&sig));
        Ok(out)
    }
}

/// base64url without padding (RFC 7515 §2).
pub fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The `x5t#S256` header value of a certificate: base64url SHA-256 of its
/// DER encoding (RFC 7515 §4.1.8).
pub fn x5t_s256(cert_der: &[u8]) -> String {
    b64url(&<sha2::Sha256 as sha2::Digest>::digest(cert_der))
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::signature::{
        UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RSA_PSS_2048_8192_SHA256,
    };
    use rustls::pki_types::PrivatePkcs8KeyDer;

    fn rsa_key() -> (PrivateKeyDer<'static>, Vec<u8>) {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).expect("rsa key");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        (der, kp.public_key_raw().to_vec())
    }

    fn verify(jwt: &str, spki: &[u8], alg: Alg) -> (Value, Value) {
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let d = |s: &str| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(s)
                .unwrap()
        };
        let params: &dyn aws_lc_rs::signature::VerificationAlgorithm = match alg {
            Alg::Rs256 => &RSA_PKCS1_2048_8192_SHA256,
            Alg::Ps256 => &RSA_PSS_2048_8192_SHA256,
        };
        let signed = format!("{}.{}", parts[0], parts[1]);
        UnparsedPublicKey::new(params, spki)
            .verify(signed.as_bytes(), &d(parts[2]))
            .expect("signature verifies with the public key");
        (
            serde_json::from_slice(&d(parts[0])).unwrap(),
            serde_json::from_slice(&d(parts[1])).unwrap(),
        )
    }

    #[test]
    fn signs_verifiable_rs256_and_ps256() {
        let (key, spki) = rsa_key();
        let signer = RsaSigner::new(&key).unwrap();
        for alg in [Alg::Rs256, Alg::Ps256] {
            let claims = serde_json::json!({"iss": "me", "exp": 5});
            let jwt = signer
                .sign(alg, serde_json::json!({"kid": "k1"}), &claims)
                .unwrap();
            let (h, c) = verify(&jwt, &spki, alg);
            assert_eq!(h["alg"], alg.name());
            assert_eq!(h["typ"], "JWT");
            assert_eq!(h["kid"], "k1");
            assert_eq!(c, claims);
        }
    }

    #[test]
    fn refuses_non_rsa_keys() {
        let kp = rcgen::KeyPair::generate().unwrap(); // P-256
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(kp.serialize_der()));
        let err = RsaSigner::new(&der).unwrap_err();
        assert!(err.contains("RSA"), "{err}");
    }

    #[test]
    fn x5t_is_base64url_sha256() {
        assert_eq!(
            x5t_s256(b"abc"),
            "ungWv48Bz-pBQUDeXa4iI7ADYaOWF3qctBD_YfIAFa0"
        );
    }
}
