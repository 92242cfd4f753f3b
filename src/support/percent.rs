//! Strict percent-decoding, shared by the ext_authz path normaliser and the
//! signed media URL parser.

/// Why a text could not be decoded.
#[derive(Debug, PartialEq, Eq)]
pub struct BadEscape(pub &'static str);

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Percent-decodes `text` strictly (a bad escape or non-UTF-8 is an error);
/// an encoded byte listed in `refused` (a slash, backslash or NUL, which
/// would let one path segment pose as several) is an error too.
pub fn percent_decode(text: &str, refused: &[u8]) -> Result<String, BadEscape> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(BadEscape("malformed percent-encoding"));
            };
            let byte = h * 16 + l;
            if refused.contains(&byte) {
                return Err(BadEscape("an encoded slash, backslash or NUL"));
            }
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadEscape("a path that is not UTF-8"))
}
