//! Text in the fixed-size, NUL-padded byte fields of map values (interface
//! names, namespace paths, service names), shared by every loader-only map.

/// `text` cut to fit `N - 1` bytes on a char boundary (so it stays valid
/// UTF-8), NUL padded.
pub fn to_fixed<const N: usize>(text: &str) -> [u8; N] {
    let mut out = [0u8; N];
    let mut n = text.len().min(N - 1);
    while !text.is_char_boundary(n) {
        n -= 1;
    }
    out[..n].copy_from_slice(&text.as_bytes()[..n]);
    out
}

/// The text up to the first NUL.
pub fn from_fixed(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_cuts_on_char_boundaries() {
        assert_eq!(from_fixed(&to_fixed::<16>("eth1")), "eth1");
        assert_eq!(from_fixed(&to_fixed::<4>("abcdef")), "abc");
        // "é" is two bytes: it must not be split.
        assert_eq!(from_fixed(&to_fixed::<3>("aé")), "a");
        assert_eq!(from_fixed(&[b'x'; 4]), "xxxx");
    }
}
