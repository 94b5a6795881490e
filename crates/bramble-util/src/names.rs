//! Validation of the names users and peers give us. Node names end up in file paths,
//! certificate subjects, log lines and tables, so they are restricted to a DNS-label-like
//! alphabet: nothing that could escape a directory or forge a log line gets through.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("{what} is empty")]
    Empty { what: &'static str },
    #[error("{what} {name:?} is {length} characters long; at most {limit} are allowed")]
    TooLong {
        what: &'static str,
        name: String,
        length: usize,
        limit: usize,
    },
    #[error(
        "{what} {name:?} has the character {character:?}; use lowercase letters, digits and '-' (not at the start or end)"
    )]
    BadCharacter {
        what: &'static str,
        name: String,
        character: char,
    },
}

/// Longest node name: a DNS label.
pub const MAX_NAME_LENGTH: usize = 63;

/// Checks a node name, role or similar identifier: 1-63 characters of `[a-z0-9-]`,
/// not starting or ending with '-'.
pub fn validate_name(what: &'static str, name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty { what });
    }
    let length = name.chars().count();
    if length > MAX_NAME_LENGTH {
        return Err(NameError::TooLong {
            what,
            name: name.chars().take(MAX_NAME_LENGTH).collect::<String>() + "…",
            length,
            limit: MAX_NAME_LENGTH,
        });
    }
    for (index, character) in name.chars().enumerate() {
        let allowed = character.is_ascii_lowercase()
            || character.is_ascii_digit()
            || (character == '-' && index != 0 && index != length - 1);
        if !allowed {
            return Err(NameError::BadCharacter {
                what,
                name: name.to_string(),
                character,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_dns_like_names() {
        for name in ["n1", "pi-4b-03", "a", &"x".repeat(63)] {
            validate_name("node name", name).unwrap();
        }
    }

    #[test]
    fn refuses_paths_and_control_characters() {
        for name in [
            "",
            "../etc",
            "a/b",
            "N1",
            "-a",
            "a-",
            "a\nb",
            "é",
            &"x".repeat(64),
        ] {
            let error = validate_name("node name", name).unwrap_err();
            assert!(error.to_string().starts_with("node name"), "{error}");
        }
    }
}
