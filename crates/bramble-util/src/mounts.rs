//! Reading the kernel's mount tables (`/proc/self/mountinfo`, `/proc/mounts`): the cgroup
//! layout and the monitor's filesystems both need their fields decoded the same way.

/// Decodes a mount field: the kernel writes space, tab, newline and backslash as the
/// octal escapes `\040`, `\011`, `\012`, `\134`. Anything else is kept as it is.
pub fn unescape_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && index + 3 < bytes.len()
            && bytes[index + 1..index + 4]
                .iter()
                .all(|digit| (b'0'..=b'7').contains(digit))
        {
            let value = bytes[index + 1..index + 4]
                .iter()
                .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                decoded.push(byte);
                index += 4;
                continue;
            }
        }
        decoded.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_are_decoded_and_the_rest_kept() {
        assert_eq!(unescape_field("/mnt/my\\040disk"), "/mnt/my disk");
        assert_eq!(unescape_field("a\\134b\\"), "a\\b\\");
        assert_eq!(unescape_field("\\777x"), "\\777x");
    }
}
