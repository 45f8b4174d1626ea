//! Browser access to the HTTP API: `CORS_ALLOWED_ORIGINS`.

/// The origins whose pages may call the HTTP API (REST broadcast, operator endpoints).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// Every origin (`*`), as Supabase answers.
    Any,
    /// Only these origins (`scheme://host[:port]`, lower case), each echoed back to a request
    /// from it.
    List(Vec<String>),
}

impl AllowedOrigins {
    /// Parses `*`, or a comma-separated list of origins such as
    /// `https://app.example.com,http://localhost:3000` (a trailing `/` is dropped).
    ///
    /// # Errors
    /// When an entry is not an `http://` or `https://` origin without path, or the list mixes
    /// `*` with origins.
    pub fn parse(text: &str) -> Result<AllowedOrigins, String> {
        let text = text.trim();
        if text == "*" {
            return Ok(AllowedOrigins::Any);
        }
        let mut origins = Vec::new();
        for entry in text.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            if entry == "*" {
                return Err("`*` cannot be combined with a list of origins".to_owned());
            }
            let origin = entry
                .strip_suffix('/')
                .unwrap_or(entry)
                .to_ascii_lowercase();
            let Some(authority) = origin
                .strip_prefix("https://")
                .or_else(|| origin.strip_prefix("http://"))
            else {
                return Err(format!(
                    "`{entry}` is not an origin (write `https://host` or `http://host:port`)"
                ));
            };
            let valid = !authority.is_empty()
                && authority
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
            if !valid {
                return Err(format!(
                    "`{entry}` is not an origin (no path, query or user part)"
                ));
            }
            if !origins.contains(&origin) {
                origins.push(origin);
            }
        }
        if origins.is_empty() {
            return Err("no origin given (write `*` to allow every origin)".to_owned());
        }
        Ok(AllowedOrigins::List(origins))
    }
}

#[cfg(test)]
mod tests {
    use super::AllowedOrigins;

    #[test]
    fn star_or_a_list_of_origins() {
        assert_eq!(AllowedOrigins::parse(" * "), Ok(AllowedOrigins::Any));
        assert_eq!(
            AllowedOrigins::parse(
                "https://App.example.com/, http://localhost:3000,http://[::1]:8080"
            ),
            Ok(AllowedOrigins::List(vec![
                "https://app.example.com".to_owned(),
                "http://localhost:3000".to_owned(),
                "http://[::1]:8080".to_owned(),
            ]))
        );
        for bad in [
            "",
            "example.com",
            "https://example.com/app",
            "*,https://a.b",
            "ftp://x",
            "https://u@x",
        ] {
            assert!(AllowedOrigins::parse(bad).is_err(), "{bad}");
        }
    }
}
