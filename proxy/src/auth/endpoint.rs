//! `tls-server-end-point` channel-binding data (RFC 5929 §4.1): the hash of
//! pgsteer's own certificate with the hash function of its signature, SHA-256
//! when that is MD5 or SHA-1. The signature algorithm comes from a small DER
//! walk (Certificate → signatureAlgorithm → OID), not a full X.509 parser.

use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

/// Why no channel-binding data can be had from a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EndPointError {
    /// The bytes are not a DER certificate.
    #[error("the certificate is not valid DER")]
    Malformed,
    /// The signature algorithm has no (known) single hash function, e.g.
    /// Ed25519: `tls-server-end-point` is undefined, so do not offer -PLUS.
    #[error("the certificate's signature algorithm defines no tls-server-end-point hash")]
    Unsupported,
}

/// The `tls-server-end-point` data for a DER certificate: what
/// [`crate::auth::scram::ServerBinding::TlsServerEndPoint`] needs for
/// pgsteer's own certificate, and [`crate::auth::scram::ClientBinding`] for
/// the server's.
pub fn tls_server_end_point(cert_der: &[u8]) -> Result<Vec<u8>, EndPointError> {
    Ok(match signature_hash(cert_der)? {
        Hash::Sha224 => Sha224::digest(cert_der).to_vec(),
        Hash::Sha256 => Sha256::digest(cert_der).to_vec(),
        Hash::Sha384 => Sha384::digest(cert_der).to_vec(),
        Hash::Sha512 => Sha512::digest(cert_der).to_vec(),
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hash {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

const SEQUENCE: u8 = 0x30;
const OID: u8 = 0x06;
const CONTEXT_0: u8 = 0xa0;

// Signature algorithm OIDs (DER contents). RSA: 1.2.840.113549.1.1.x.
const RSA_MD5: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x04];
const RSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05];
const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
const RSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b];
const RSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c];
const RSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d];
const RSA_SHA224: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0e];
// ECDSA: 1.2.840.10045.4.1 and 1.2.840.10045.4.3.x.
const ECDSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x01];
const ECDSA_SHA224: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x01];
const ECDSA_SHA256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02];
const ECDSA_SHA384: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03];
const ECDSA_SHA512: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x04];
// DSA: 1.2.840.10040.4.3 and 2.16.840.1.101.3.4.3.x.
const DSA_SHA1: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x38, 0x04, 0x03];
const DSA_SHA224: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x01];
const DSA_SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x03, 0x02];
// Hash algorithms (in RSASSA-PSS parameters): 1.3.14.3.2.26, 2.16.840.1.101.3.4.2.x.
const SHA1: &[u8] = &[0x2b, 0x0e, 0x03, 0x02, 0x1a];
const SHA256: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01];
const SHA384: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02];
const SHA512: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03];
const SHA224: &[u8] = &[0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x04];

/// Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm AlgorithmIdentifier, … }
fn signature_hash(der: &[u8]) -> Result<Hash, EndPointError> {
    let (cert, rest) = tlv(der, SEQUENCE)?;
    if !rest.is_empty() {
        return Err(EndPointError::Malformed);
    }
    let (_tbs, rest) = tlv(cert, SEQUENCE)?;
    let (algorithm, _signature) = tlv(rest, SEQUENCE)?;
    let (oid, params) = tlv(algorithm, OID)?;
    match oid {
        RSA_MD5 | RSA_SHA1 | ECDSA_SHA1 | DSA_SHA1 => Ok(Hash::Sha256),
        RSA_SHA256 | ECDSA_SHA256 | DSA_SHA256 => Ok(Hash::Sha256),
        RSA_SHA224 | ECDSA_SHA224 | DSA_SHA224 => Ok(Hash::Sha224),
        RSA_SHA384 | ECDSA_SHA384 => Ok(Hash::Sha384),
        RSA_SHA512 | ECDSA_SHA512 => Ok(Hash::Sha512),
        RSA_PSS => pss_hash(params),
        _ => Err(EndPointError::Unsupported),
    }
}

/// RSASSA-PSS-params ::= SEQUENCE { hashAlgorithm [0] EXPLICIT AlgorithmIdentifier DEFAULT sha1, … }
fn pss_hash(params: &[u8]) -> Result<Hash, EndPointError> {
    let (params, _) = tlv(params, SEQUENCE)?;
    if params.first() != Some(&CONTEXT_0) {
        return Ok(Hash::Sha256); // the default, SHA-1, binds with SHA-256
    }
    let (explicit, _) = tlv(params, CONTEXT_0)?;
    let (algorithm, _) = tlv(explicit, SEQUENCE)?;
    let (oid, _) = tlv(algorithm, OID)?;
    match oid {
        SHA1 | SHA256 => Ok(Hash::Sha256),
        SHA224 => Ok(Hash::Sha224),
        SHA384 => Ok(Hash::Sha384),
        SHA512 => Ok(Hash::Sha512),
        _ => Err(EndPointError::Unsupported),
    }
}

/// One DER TLV with a one-byte `tag`: its contents and what follows it.
fn tlv(input: &[u8], tag: u8) -> Result<(&[u8], &[u8]), EndPointError> {
    let malformed = EndPointError::Malformed;
    let (&found, rest) = input.split_first().ok_or(malformed)?;
    let (&first, rest) = rest.split_first().ok_or(malformed)?;
    if found != tag {
        return Err(malformed);
    }
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if !(1..=4).contains(&n) || rest.len() < n {
            return Err(malformed);
        }
        let (bytes, rest) = rest.split_at(n);
        (
            bytes
                .iter()
                .fold(0usize, |acc, &b| acc << 8 | usize::from(b)),
            rest,
        )
    };
    if rest.len() < len {
        return Err(malformed);
    }
    Ok(rest.split_at(len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn der(tag: u8, content: &[u8]) -> Vec<u8> {
        let len = content.len();
        let mut out = vec![tag];
        match len {
            0..=0x7f => out.push(len as u8),
            0x80..=0xff => out.extend([0x81, len as u8]),
            _ => out.extend([0x82, (len >> 8) as u8, len as u8]),
        }
        out.extend_from_slice(content);
        out
    }

    /// A certificate-shaped DER value with this signature algorithm.
    fn cert(oid: &[u8], params: &[u8], tbs_len: usize) -> Vec<u8> {
        let tbs = der(SEQUENCE, &vec![0x05; tbs_len]);
        let algorithm = der(SEQUENCE, &[der(OID, oid), params.to_vec()].concat());
        let signature = der(0x03, &[0x00, 0x01]);
        der(SEQUENCE, &[tbs, algorithm, signature].concat())
    }

    #[test]
    fn the_hash_follows_the_signature_algorithm_with_md5_and_sha1_raised_to_sha256() {
        let null = [0x05, 0x00];
        let cases = [
            (RSA_MD5, Hash::Sha256),
            (RSA_SHA1, Hash::Sha256),
            (ECDSA_SHA1, Hash::Sha256),
            (DSA_SHA1, Hash::Sha256),
            (RSA_SHA256, Hash::Sha256),
            (ECDSA_SHA256, Hash::Sha256),
            (DSA_SHA256, Hash::Sha256),
            (RSA_SHA224, Hash::Sha224),
            (ECDSA_SHA224, Hash::Sha224),
            (DSA_SHA224, Hash::Sha224),
            (RSA_SHA384, Hash::Sha384),
            (ECDSA_SHA384, Hash::Sha384),
            (RSA_SHA512, Hash::Sha512),
            (ECDSA_SHA512, Hash::Sha512),
        ];
        for (oid, want) in cases {
            for tbs_len in [3, 200, 3000] {
                assert_eq!(
                    signature_hash(&cert(oid, &null, tbs_len)),
                    Ok(want),
                    "{oid:x?}"
                );
            }
        }
    }

    #[test]
    fn rsa_pss_uses_the_hash_in_its_parameters() {
        let with_hash = |hash: &[u8]| {
            let alg = der(SEQUENCE, &der(OID, hash));
            der(SEQUENCE, &der(CONTEXT_0, &alg))
        };
        assert_eq!(
            signature_hash(&cert(RSA_PSS, &with_hash(SHA384), 10)),
            Ok(Hash::Sha384)
        );
        assert_eq!(
            signature_hash(&cert(RSA_PSS, &with_hash(SHA1), 10)),
            Ok(Hash::Sha256)
        );
        assert_eq!(
            signature_hash(&cert(RSA_PSS, &der(SEQUENCE, &[]), 10)),
            Ok(Hash::Sha256)
        );
        assert_eq!(
            signature_hash(&cert(RSA_PSS, &with_hash(&[0x2a, 0x03]), 10)),
            Err(EndPointError::Unsupported)
        );
        assert_eq!(
            signature_hash(&cert(RSA_PSS, &[], 10)),
            Err(EndPointError::Malformed)
        );
    }

    #[test]
    fn real_certificates_hash_with_their_signature_hash_and_ed25519_has_none() {
        let self_signed = |alg| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let params = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        let p256 = self_signed(&rcgen::PKCS_ECDSA_P256_SHA256);
        assert_eq!(
            tls_server_end_point(&p256).unwrap(),
            Sha256::digest(&p256).to_vec()
        );
        let p384 = self_signed(&rcgen::PKCS_ECDSA_P384_SHA384);
        assert_eq!(
            tls_server_end_point(&p384).unwrap(),
            Sha384::digest(&p384).to_vec()
        );
        let ed25519 = self_signed(&rcgen::PKCS_ED25519);
        assert_eq!(
            tls_server_end_point(&ed25519),
            Err(EndPointError::Unsupported)
        );
    }

    #[test]
    fn truncated_or_padded_certificates_are_malformed() {
        let good = cert(RSA_SHA256, &[0x05, 0x00], 300);
        assert!(tls_server_end_point(&good).is_ok());
        for end in 0..good.len() {
            assert_eq!(
                tls_server_end_point(&good[..end]),
                Err(EndPointError::Malformed),
                "{end}"
            );
        }
        let padded = [&good[..], &[0]].concat();
        assert_eq!(tls_server_end_point(&padded), Err(EndPointError::Malformed));
        for bad in [
            &[0x30, 0x80, 0x00, 0x00][..],
            &[0x30, 0x85, 1, 0, 0, 0, 0],
            &[0x30, 0xff],
        ] {
            assert_eq!(tls_server_end_point(bad), Err(EndPointError::Malformed));
        }
    }

    proptest::proptest! {
        #[test]
        fn random_bytes_never_panic_the_der_walk(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64)) {
            let _ = tls_server_end_point(&bytes);
            let mut shaped = vec![0x30, bytes.len() as u8];
            shaped.extend_from_slice(&bytes);
            let _ = tls_server_end_point(&shaped);
        }
    }
}
