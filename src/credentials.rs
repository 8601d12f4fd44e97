//! Where to send and as whom: the system URL, the API user and the password.
//!
//! The password never comes from a command-line flag (a command line is
//! visible to every user of the machine): it is read from
//! `THULIUM_PASSWORD` or from `--password-file`, which must not be readable
//! by group or others. It is kept in a type whose `Debug` prints nothing.

use std::net::IpAddr;
use std::path::Path;

/// A secret that never prints.
#[derive(Clone)]
pub struct Password(String);

impl Password {
    pub fn new(s: String) -> Password {
        Password(s)
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(<redacted>)")
    }
}

/// Ready-to-use connection settings.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The system root without a trailing slash (`https://acme.thulium.com`).
    pub root: String,
    pub user: String,
    pub password: Password,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("no system URL: pass --url https://<system>.thulium.com or set THULIUM_URL")]
    NoUrl,
    #[error("no API user: pass --user or set THULIUM_USER")]
    NoUser,
    #[error("no password: set THULIUM_PASSWORD or pass --password-file <PATH>")]
    NoPassword,
    #[error("--url {0}: {1}")]
    BadUrl(String, String),
    #[error("--password-file {path}: {reason}")]
    PasswordFile { path: String, reason: String },
}

/// Checks the system URL: `https://`, or `http://` to a loopback address only.
pub fn check_url(url: &str) -> Result<String, CredentialsError> {
    let bad = |why: &str| CredentialsError::BadUrl(url.to_string(), why.to_string());
    let parsed = reqwest::Url::parse(url.trim()).map_err(|e| bad(&e.to_string()))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| bad("the URL has no host"))?;
    match parsed.scheme() {
        "https" => {}
        "http" => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let loopback = host.eq_ignore_ascii_case("localhost")
                || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(bad(
                    "plain http:// would send the password unencrypted; use https:// (http is allowed only to a loopback address)",
                ));
            }
        }
        other => {
            return Err(bad(&format!(
                "unsupported scheme {other}:// (use https://)"
            )))
        }
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(bad(
            "put the user in --user and the password in THULIUM_PASSWORD, not in the URL",
        ));
    }
    let mut root = parsed.as_str().trim_end_matches('/').to_string();
    // The tool appends /api/...; accept a URL that already ends in /api.
    if root.ends_with("/api") {
        root.truncate(root.len() - 4);
    }
    Ok(root)
}

/// Reads the password from a file that only its owner can read.
pub fn read_password_file(path: &Path) -> Result<Password, CredentialsError> {
    let err = |reason: String| CredentialsError::PasswordFile {
        path: path.display().to_string(),
        reason,
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            return Err(err(format!(
                "the file is readable by others (mode {:o}); run chmod 600 on it",
                mode & 0o777
            )));
        }
    }
    let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
    let password = text.trim_end_matches(['\n', '\r']).to_string();
    if password.is_empty() {
        return Err(err("the file is empty".into()));
    }
    Ok(Password(password))
}

/// Resolves the settings from flags (clap already merged `THULIUM_URL` and
/// `THULIUM_USER`) and the password from the environment or a file.
pub fn resolve(
    url: Option<&str>,
    user: Option<&str>,
    password_file: Option<&Path>,
) -> Result<Credentials, CredentialsError> {
    let root = check_url(url.ok_or(CredentialsError::NoUrl)?)?;
    let user = user
        .filter(|u| !u.is_empty())
        .ok_or(CredentialsError::NoUser)?
        .to_string();
    let password = match password_file {
        Some(path) => read_password_file(path)?,
        None => match std::env::var("THULIUM_PASSWORD") {
            Ok(p) if !p.is_empty() => Password(p),
            _ => return Err(CredentialsError::NoPassword),
        },
    };
    Ok(Credentials {
        root,
        user,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            check_url("https://acme.thulium.com/").unwrap(),
            "https://acme.thulium.com"
        );
        assert_eq!(
            check_url("https://acme.thulium.com/api").unwrap(),
            "https://acme.thulium.com"
        );
        assert_eq!(
            check_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert!(check_url("http://localhost:1").is_ok());
        assert!(check_url("http://[::1]:1").is_ok());
        assert!(check_url("http://acme.thulium.com")
            .unwrap_err()
            .to_string()
            .contains("unencrypted"));
        assert!(check_url("ftp://x").is_err());
        assert!(check_url("https://u:p@acme.thulium.com").is_err());
    }

    #[test]
    fn password_never_debug_prints() {
        assert_eq!(
            format!("{:?}", Password("hunter2".into())),
            "Password(<redacted>)"
        );
    }

    #[cfg(unix)]
    #[test]
    fn password_file_must_be_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_password_file(&path).unwrap_err().to_string();
        assert!(e.contains("chmod 600") && !e.contains("s3cret"), "{e}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_password_file(&path).unwrap().expose(), "s3cret");
    }
}
