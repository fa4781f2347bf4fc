//! Package signatures: the keys a robot trusts, and signing for `ota pack`.
//!
//! A signature covers the package file through its SHA-256, which the installer
//! computes while it reads the package once; so verifying costs microseconds whatever the
//! package's size, and the package is never held in memory.
//!
//! - ECDSA P-256 and RSA (2048 to 4096 bits, PKCS#1 v1.5 or PSS) with SHA-256: exactly
//!   what `openssl dgst -sha256 -sign KEY -out PKG.sig PKG` writes (DER for ECDSA), what
//!   AWS IoT code signing puts in `sig-sha256-ecdsa`, and what Python's `cryptography`
//!   makes. PSS is accepted with a salt as long as the digest or the longest the key
//!   allows (OpenSSL's default when signing).
//! - ed25519 over the package's SHA-256 digest (the agent's own format, 64 bytes).
//!
//! Keys are PEM public keys (`PUBLIC KEY`, `RSA PUBLIC KEY`), X.509 certificates (their
//! public key; dates and issuer are not checked, because a robot's clock may be wrong and
//! an expired signing certificate must not stop a fleet from updating: rotate by trusting
//! several keys), or an ed25519 key as base64/hex. A signature is accepted when any
//! trusted key verifies it.

use p256::ecdsa::signature::hazmat::{PrehashSigner, PrehashVerifier};
use p256::pkcs8::der::{Decode as _, Encode as _};
use p256::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::pkcs1::{DecodeRsaPrivateKey as _, DecodeRsaPublicKey as _};
use rsa::traits::PublicKeyParts as _;
use sha2::Sha256;

/// OIDs of the public key algorithms (RFC 5480, RFC 8017, RFC 8410).
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_ED25519: &str = "1.3.101.112";

/// A key whose signatures this robot accepts.
#[derive(Clone)]
pub struct TrustedKey {
    kind: Kind,
    /// Where it came from, for messages ("ota.public_keys[1]", a file name).
    pub source: String,
}

#[derive(Clone)]
enum Kind {
    Ed25519(ed25519_dalek::VerifyingKey),
    P256(p256::ecdsa::VerifyingKey),
    Rsa(rsa::RsaPublicKey),
}

impl std::fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} key from {}", self.algorithm(), self.source)
    }
}

impl TrustedKey {
    /// "ed25519", "ecdsa-p256", "rsa-3072".
    pub fn algorithm(&self) -> String {
        match &self.kind {
            Kind::Ed25519(_) => "ed25519".into(),
            Kind::P256(_) => "ecdsa-p256".into(),
            Kind::Rsa(k) => format!("rsa-{}", k.size() * 8),
        }
    }

    /// The keys in `text`: PEM blocks (several at once for rotation), or one ed25519
    /// key as base64 or hex. `source` names the text in errors.
    pub fn parse_all(text: &str, source: &str) -> Result<Vec<TrustedKey>, String> {
        let t = text.trim();
        if !t.contains("-----BEGIN ") {
            let bytes = super::package::decode_b64_or_hex(t).ok_or_else(|| {
                "is neither PEM (a public key or certificate) nor an ed25519 key in base64 or hex"
                    .to_string()
            })?;
            let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
                format!("an ed25519 public key has 32 bytes, this one {}", b.len())
            })?;
            return Ok(vec![TrustedKey {
                kind: Kind::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&key)
                        .map_err(|e| format!("not an ed25519 public key: {e}"))?,
                ),
                source: source.to_owned(),
            }]);
        }
        let mut keys = Vec::new();
        for (n, block) in pem_blocks(t).into_iter().enumerate() {
            let at = |e: String| format!("PEM block {} ({}): {e}", n + 1, block.label);
            let kind = match block.label.as_str() {
                "PUBLIC KEY" => from_spki(&block.der).map_err(at)?,
                "RSA PUBLIC KEY" => Kind::Rsa(
                    rsa::RsaPublicKey::from_pkcs1_der(&block.der)
                        .map_err(|e| at(format!("not an RSA public key: {e}")))?,
                ),
                "CERTIFICATE" => {
                    let cert = x509_cert::Certificate::from_der(&block.der)
                        .map_err(|e| at(format!("not an X.509 certificate: {e}")))?;
                    let spki = cert
                        .tbs_certificate
                        .subject_public_key_info
                        .to_der()
                        .map_err(|e| at(e.to_string()))?;
                    from_spki(&spki).map_err(at)?
                }
                l if l.contains("PRIVATE KEY") => {
                    return Err(at(
                        "this is a private key: give the robot the public key only (`openssl pkey -in KEY -pubout`)"
                            .into(),
                    ))
                }
                _ => return Err(at("not a public key or certificate".into())),
            };
            if let Kind::Rsa(k) = &kind {
                check_rsa_size(k).map_err(at)?;
            }
            keys.push(TrustedKey {
                kind,
                source: source.to_owned(),
            });
        }
        if keys.is_empty() {
            return Err("has no complete PEM block".into());
        }
        Ok(keys)
    }

    /// Whether `sig` is this key's signature of the package whose SHA-256 is `digest`.
    pub fn verifies(&self, digest: &[u8; 32], sig: &[u8]) -> bool {
        match &self.kind {
            Kind::Ed25519(k) => ed25519_dalek::Signature::from_slice(sig)
                .is_ok_and(|s| k.verify_strict(digest, &s).is_ok()),
            Kind::P256(k) => {
                let s = p256::ecdsa::Signature::from_der(sig)
                    .or_else(|_| p256::ecdsa::Signature::from_slice(sig));
                s.is_ok_and(|s| k.verify_prehash(digest, &s).is_ok())
            }
            Kind::Rsa(k) => {
                if sig.len() != k.size() {
                    return false;
                }
                let pkcs1 = rsa::pkcs1v15::VerifyingKey::<Sha256>::new(k.clone());
                let Ok(s) = rsa::pkcs1v15::Signature::try_from(sig) else {
                    return false;
                };
                if pkcs1.verify_prehash(digest, &s).is_ok() {
                    return true;
                }
                let Ok(s) = rsa::pss::Signature::try_from(sig) else {
                    return false;
                };
                // The salt as long as the digest, or as long as the key allows.
                let longest = k.size() - 32 - 2;
                [32, longest].iter().any(|&salt| {
                    rsa::pss::VerifyingKey::<Sha256>::new_with_salt_len(k.clone(), salt)
                        .verify_prehash(digest, &s)
                        .is_ok()
                })
            }
        }
    }
}

fn check_rsa_size(k: &rsa::RsaPublicKey) -> Result<(), String> {
    let bits = k.size() * 8;
    if bits < 2048 {
        return Err(format!(
            "an RSA key of {bits} bits is too weak (at least 2048)"
        ));
    }
    Ok(())
}

fn from_spki(der: &[u8]) -> Result<Kind, String> {
    let info = p256::pkcs8::spki::SubjectPublicKeyInfoRef::from_der(der)
        .map_err(|e| format!("not a public key: {e}"))?;
    match info.algorithm.oid.to_string().as_str() {
        OID_EC => p256::ecdsa::VerifyingKey::from_public_key_der(der)
            .map(Kind::P256)
            .map_err(|_| {
                "an elliptic-curve key that is not on P-256 (only P-256 is supported)".into()
            }),
        OID_RSA => rsa::RsaPublicKey::from_public_key_der(der)
            .map(Kind::Rsa)
            .map_err(|e| format!("not an RSA public key: {e}")),
        OID_ED25519 => {
            let raw: [u8; 32] = info
                .subject_public_key
                .raw_bytes()
                .try_into()
                .map_err(|_| "an ed25519 key that is not 32 bytes".to_string())?;
            ed25519_dalek::VerifyingKey::from_bytes(&raw)
                .map(Kind::Ed25519)
                .map_err(|e| format!("not an ed25519 public key: {e}"))
        }
        other => Err(format!(
            "key algorithm {other} is not supported (ECDSA P-256, RSA or ed25519)"
        )),
    }
}

struct PemBlock {
    label: String,
    der: Vec<u8>,
}

/// The PEM blocks of a text, in order (text between blocks is ignored, as OpenSSL does).
fn pem_blocks(text: &str) -> Vec<PemBlock> {
    use base64::Engine as _;
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let after = &rest[start + 11..];
        let Some(label_end) = after.find("-----") else {
            break;
        };
        let label = after[..label_end].to_owned();
        let body_start = label_end + 5;
        let end_marker = format!("-----END {label}-----");
        let Some(body_end) = after[body_start..].find(&end_marker) else {
            break;
        };
        let body: String = after[body_start..body_start + body_end]
            .lines()
            .filter(|l| !l.contains(':')) // RFC 1421 headers of old PEM files
            .flat_map(|l| l.chars())
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(body) {
            out.push(PemBlock { label, der });
        }
        rest = &after[body_start + body_end + end_marker.len()..];
    }
    out
}

/// The keys a robot trusts.
#[derive(Clone, Debug, Default)]
pub struct Keyring {
    pub keys: Vec<TrustedKey>,
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the signature is empty")]
    Empty,
    #[error(
        "the signature ({len} bytes) does not match the package and any of the {keys} trusted key(s) ({algorithms})"
    )]
    NoMatch {
        len: usize,
        keys: usize,
        algorithms: String,
    },
}

impl Keyring {
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key that verifies `signature` (as it came: binary, base64 or hex) for the
    /// package whose SHA-256 is `digest`.
    pub fn verify(
        &self,
        digest: &[u8; 32],
        signature: &[u8],
    ) -> Result<&TrustedKey, SignatureError> {
        let candidates = signature_bytes(signature);
        if candidates.iter().all(Vec::is_empty) {
            return Err(SignatureError::Empty);
        }
        for key in &self.keys {
            if candidates.iter().any(|s| key.verifies(digest, s)) {
                return Ok(key);
            }
        }
        let mut algorithms: Vec<String> = self.keys.iter().map(TrustedKey::algorithm).collect();
        algorithms.dedup();
        Err(SignatureError::NoMatch {
            len: candidates.last().map_or(0, Vec::len),
            keys: self.keys.len(),
            algorithms: algorithms.join(", "),
        })
    }
}

/// A signature as it may come: raw bytes (`openssl dgst` writes DER), or base64/hex
/// text (job documents, `ota pack`'s ed25519 `.sig`). Text that decodes is tried as
/// decoded first, then as it is.
fn signature_bytes(raw: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(text) = std::str::from_utf8(raw) {
        if let Some(b) = super::package::decode_b64_or_hex(text) {
            out.push(b);
        }
    }
    out.push(raw.to_vec());
    out
}

/// A private key for `ota pack`.
pub enum SigningKey {
    Ed25519([u8; 32]),
    P256(Box<p256::ecdsa::SigningKey>),
    Rsa(Box<rsa::RsaPrivateKey>),
}

impl SigningKey {
    /// An `ota keygen` ed25519 seed (base64/hex), or a PEM private key: PKCS#8
    /// (`PRIVATE KEY`, as `openssl genpkey` writes), `EC PRIVATE KEY` or `RSA PRIVATE KEY`.
    pub fn parse(text: &str) -> Result<SigningKey, String> {
        let t = text.trim();
        if !t.contains("-----BEGIN ") {
            let seed = super::package::decode_b64_or_hex(t)
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or(
                    "is neither a PEM private key nor a 32-byte ed25519 key from `ota keygen`",
                )?;
            return Ok(SigningKey::Ed25519(seed));
        }
        let block = pem_blocks(t)
            .into_iter()
            .find(|b| b.label.contains("PRIVATE KEY"))
            .ok_or("holds no PEM private key")?;
        match block.label.as_str() {
            "PRIVATE KEY" => {
                let info = p256::pkcs8::PrivateKeyInfo::from_der(&block.der)
                    .map_err(|e| format!("not a PKCS#8 private key: {e}"))?;
                match info.algorithm.oid.to_string().as_str() {
                    OID_EC => p256::ecdsa::SigningKey::from_pkcs8_der(&block.der)
                        .map(|k| SigningKey::P256(Box::new(k)))
                        .map_err(|_| "an elliptic-curve key that is not on P-256".into()),
                    OID_RSA => rsa::RsaPrivateKey::from_pkcs8_der(&block.der)
                        .map(|k| SigningKey::Rsa(Box::new(k)))
                        .map_err(|e| format!("not an RSA private key: {e}")),
                    OID_ED25519 => {
                        // An OCTET STRING holding the 32-byte seed (RFC 8410).
                        let k = info.private_key;
                        match k {
                            [0x04, 0x20, seed @ ..] if seed.len() == 32 => {
                                Ok(SigningKey::Ed25519(seed.try_into().unwrap_or([0; 32])))
                            }
                            _ => Err("an ed25519 private key that is not 32 bytes".into()),
                        }
                    }
                    other => Err(format!("key algorithm {other} is not supported")),
                }
            }
            "EC PRIVATE KEY" => {
                let k = p256::SecretKey::from_sec1_der(&block.der)
                    .map_err(|_| "not a P-256 private key (only P-256 is supported)".to_string())?;
                Ok(SigningKey::P256(Box::new(k.into())))
            }
            "RSA PRIVATE KEY" => rsa::RsaPrivateKey::from_pkcs1_der(&block.der)
                .map(|k| SigningKey::Rsa(Box::new(k)))
                .map_err(|e| format!("not an RSA private key: {e}")),
            other => Err(format!("a {other} is not supported")),
        }
    }

    /// The signature of the package whose SHA-256 is `digest`: for ECDSA the DER and for
    /// RSA the PKCS#1 v1.5 signature `openssl dgst -sha256 -sign` writes; for ed25519 the
    /// 64 bytes.
    pub fn sign(&self, digest: &[u8; 32]) -> Result<Vec<u8>, String> {
        match self {
            SigningKey::Ed25519(seed) => {
                use ed25519_dalek::Signer as _;
                let k = ed25519_dalek::SigningKey::from_bytes(seed);
                Ok(k.sign(digest).to_bytes().to_vec())
            }
            SigningKey::P256(k) => {
                let s: p256::ecdsa::Signature =
                    k.sign_prehash(digest).map_err(|e| format!("ECDSA: {e}"))?;
                Ok(s.to_der().as_bytes().to_vec())
            }
            SigningKey::Rsa(k) => {
                let signer = rsa::pkcs1v15::SigningKey::<Sha256>::new((**k).clone());
                let s = signer
                    .sign_prehash(digest)
                    .map_err(|e| format!("RSA: {e}"))?;
                Ok(rsa::signature::SignatureEncoding::to_vec(&s))
            }
        }
    }

    /// Whether the signature is written as text (ed25519, base64) or as bytes (DER, as
    /// OpenSSL writes it).
    pub fn is_binary(&self) -> bool {
        !matches!(self, SigningKey::Ed25519(_))
    }
}

/// The algorithms `ota keygen` makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyAlgorithm {
    Ed25519,
    #[value(name = "ecdsa-p256")]
    EcdsaP256,
    #[value(name = "rsa-2048")]
    Rsa2048,
    #[value(name = "rsa-3072")]
    Rsa3072,
    #[value(name = "rsa-4096")]
    Rsa4096,
}

/// A new key pair: (private key file text, public key text for the robots).
pub fn generate(alg: KeyAlgorithm) -> Result<(String, String), String> {
    use p256::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    let random = |n: usize| -> Result<Vec<u8>, String> {
        let mut b = vec![0u8; n];
        getrandom::fill(&mut b).map_err(|e| format!("no randomness: {e}"))?;
        Ok(b)
    };
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    match alg {
        KeyAlgorithm::Ed25519 => {
            let seed: [u8; 32] = random(32)?.try_into().unwrap_or([0; 32]);
            let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            Ok((b64.encode(seed) + "\n", b64.encode(public.to_bytes())))
        }
        KeyAlgorithm::EcdsaP256 => {
            let k = loop {
                let b = random(32)?;
                if let Ok(k) = p256::ecdsa::SigningKey::from_slice(&b) {
                    break k;
                }
            };
            let private = k.to_pkcs8_pem(LineEnding::LF).map_err(|e| e.to_string())?;
            let public = k
                .verifying_key()
                .to_public_key_pem(LineEnding::LF)
                .map_err(|e| e.to_string())?;
            Ok((private.to_string(), public))
        }
        KeyAlgorithm::Rsa2048 | KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096 => {
            let bits = match alg {
                KeyAlgorithm::Rsa2048 => 2048,
                KeyAlgorithm::Rsa3072 => 3072,
                _ => 4096,
            };
            let k = rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits)
                .map_err(|e| format!("RSA key generation: {e}"))?;
            let private = k
                .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| e.to_string())?;
            let public = k
                .to_public_key()
                .to_public_key_pem(rsa::pkcs8::LineEnding::LF)
                .map_err(|e| e.to_string())?;
            Ok((private.to_string(), public))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(b: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        Sha256::digest(b).into()
    }

    #[test]
    fn each_algorithm_signs_and_verifies_and_refuses_another_package() {
        for alg in [
            KeyAlgorithm::Ed25519,
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Rsa2048,
        ] {
            let (private, public) = generate(alg).unwrap();
            let signer = SigningKey::parse(&private).unwrap();
            let ring = Keyring {
                keys: TrustedKey::parse_all(&public, "test").unwrap(),
            };
            let d = digest(b"package");
            let sig = signer.sign(&d).unwrap();
            assert!(ring.verify(&d, &sig).is_ok(), "{alg:?}");
            assert!(ring.verify(&digest(b"another"), &sig).is_err(), "{alg:?}");
            let cut = &sig[..sig.len() - 1];
            assert!(ring.verify(&d, cut).is_err(), "{alg:?}");
            // Also as base64 text, as a job document carries it.
            use base64::Engine as _;
            let text = base64::engine::general_purpose::STANDARD.encode(&sig);
            assert!(ring.verify(&d, text.as_bytes()).is_ok(), "{alg:?}");
        }
    }

    #[test]
    fn private_keys_and_foreign_text_are_refused_as_trusted_keys() {
        let (private, _) = generate(KeyAlgorithm::EcdsaP256).unwrap();
        let e = TrustedKey::parse_all(&private, "x").unwrap_err();
        assert!(e.contains("this is a private key"), "{e}");
        let e = TrustedKey::parse_all("hello", "x").unwrap_err();
        assert!(e.contains("neither PEM"), "{e}");
        let e = TrustedKey::parse_all("-----BEGIN PUBLIC KEY-----\nAAAA", "x").unwrap_err();
        assert!(e.contains("no complete PEM block"), "{e}");
    }
}
