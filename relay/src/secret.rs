//! Secrets: comparing a token a client presents with the relay's in time that does not depend
//! on where they differ (or on their lengths), so an attacker timing refusals learns nothing of
//! the token; and the peers' resume secrets, drawn from the system's randomness and stored only
//! as hashes.

use protocol::ResumeSecret;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// A new peer's resume secret.
pub fn fresh_resume_secret() -> Result<ResumeSecret, getrandom::Error> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes)?;
    Ok(ResumeSecret(bytes))
}

/// What the store keeps of a resume secret: a stolen store file resumes nobody.
pub fn resume_digest(secret: &ResumeSecret) -> [u8; 32] {
    Sha256::digest(secret.0).into()
}

/// Whether two digests are equal, in constant time.
pub fn digests_match(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether `given` is `expected`. Both are hashed first, so the comparison always runs over 32
/// bytes whatever either length is.
pub fn tokens_match(given: &str, expected: &str) -> bool {
    let given = Sha256::digest(given.as_bytes());
    let expected = Sha256::digest(expected.as_bytes());
    given.ct_eq(&expected).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        assert!(tokens_match("sesame", "sesame"));
        assert!(!tokens_match("sesamE", "sesame"));
        assert!(!tokens_match("sesame ", "sesame"));
        assert!(!tokens_match("", "sesame"));
        assert!(tokens_match("", ""));
    }

    #[test]
    fn resume_secrets_are_random_and_stored_as_digests() {
        let (a, b) = (
            fresh_resume_secret().unwrap(),
            fresh_resume_secret().unwrap(),
        );
        assert_ne!(a, b);
        assert!(digests_match(&resume_digest(&a), &resume_digest(&a)));
        assert!(!digests_match(&resume_digest(&a), &resume_digest(&b)));
        assert_ne!(&resume_digest(&a)[..16], &a.0[..]);
    }
}
