//! AES-128-CBC with an all-zero IV over one 16-byte block — the framing every Leagend monitor uses.
//! For a single block this equals ECB; RustCrypto does the cipher work.

use aes::Aes128;
use cbc::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};

const IV: [u8; 16] = [0; 16];

/// Encrypt one block with `key`.
pub fn encrypt(key: &[u8; 16], plain: &[u8; 16]) -> [u8; 16] {
    let mut block = *plain;
    cbc::Encryptor::<Aes128>::new(key.into(), &IV.into()).encrypt_block_mut((&mut block).into());
    block
}

/// Decrypt one block with `key`.
pub fn decrypt(key: &[u8; 16], cipher: &[u8; 16]) -> [u8; 16] {
    let mut block = *cipher;
    cbc::Decryptor::<Aes128>::new(key.into(), &IV.into()).decrypt_block_mut((&mut block).into());
    block
}

/// A Leagend key: ASCII `leagend`, bytes `FF FE`, then the model's 7-character tail.
pub const fn leagend_key(tail: &[u8; 7]) -> [u8; 16] {
    let head = *b"leagend";
    let mut k = [0u8; 16];
    let mut i = 0;
    while i < 7 {
        k[i] = head[i];
        k[9 + i] = tail[i];
        i += 1;
    }
    k[7] = 0xff;
    k[8] = 0xfe;
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::{parse_hex, to_hex};

    #[test]
    fn keys_match_the_spec_table() {
        assert_eq!(
            to_hex(&leagend_key(b"1882466")),
            "6c656167656e64fffe31383832343636"
        );
        assert_eq!(
            to_hex(&leagend_key(b"0100009")),
            "6c656167656e64fffe30313030303039"
        );
        assert_eq!(
            to_hex(&leagend_key(b"010000@")),
            "6c656167656e64fffe30313030303040"
        );
    }

    #[test]
    fn round_trip() {
        let key = leagend_key(b"0100009");
        let plain: [u8; 16] = parse_hex("d155070019005004f600000000000000")
            .unwrap()
            .try_into()
            .unwrap();
        assert_eq!(decrypt(&key, &encrypt(&key, &plain)), plain);
    }
}
