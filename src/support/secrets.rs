//! Secrets never print: URLs are shown with their password (userinfo and
//! query parameters such as `password=` or `sslpassword=`) masked, so they
//! can appear in logs, errors and `velro-authz config`.

/// The mask that replaces a secret.
pub const MASK: &str = "***";

/// Query parameters whose value is a secret.
fn secret_param(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["pass", "secret", "token", "key", "credential"]
        .iter()
        .any(|s| name.contains(s))
}

/// The URL with every secret in it masked.
pub fn redact_url(url: &str) -> String {
    let (head, query) = match url.split_once('?') {
        Some((head, query)) => (head, Some(query)),
        None => (url, None),
    };
    let mut out = match (head.find("://"), head.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &head[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => {
                    format!("{}{user}:{MASK}{}", &head[..scheme_end + 3], &head[at..])
                }
                None => head.to_owned(),
            }
        }
        _ => head.to_owned(),
    };
    if let Some(query) = query {
        let params: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((name, _)) if secret_param(name) => format!("{name}={MASK}"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push('?');
        out.push_str(&params.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_in_urls_are_masked() {
        let cases = [
            (
                "postgres://app:hunter2@db:5432/velro",
                "postgres://app:***@db:5432/velro",
            ),
            ("rediss://:hunter2@cache:6380", "rediss://:***@cache:6380"),
            (
                "postgres://app@db/velro?sslmode=require&password=hunter2&sslpassword=x",
                "postgres://app@db/velro?sslmode=require&password=***&sslpassword=***",
            ),
            ("sqlite://velro-authz.db", "sqlite://velro-authz.db"),
            ("redis://cache:6379/0", "redis://cache:6379/0"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url), shown);
            assert!(!redact_url(url).contains("hunter2"));
        }
    }
}
