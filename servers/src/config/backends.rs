//! `[[backend]]`: the storage backends, in order (`configs/backends.toml` documents every
//! key). Each entry has a `namespace` (a glob over repository names: the first entry that
//! matches a repository serves it) and a `kind` with that kind's keys; unknown kinds and
//! unknown keys are refused by name. Credentials come from the file or from the environment
//! (the variables each cloud's SDK reads, or `password_env` for a registry); they are held
//! as [`Secret`]s, which print as `<redacted>`.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

use super::units::Span;

/// A credential: never printed (`Debug` shows `<redacted>`; there is no `Display`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A file holding `[[backend]]` entries (alone, or as part of a component's file).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BackendsFile {
    pub backend: Vec<BackendEntry>,
}

/// One `[[backend]]`, by `kind`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BackendEntry {
    Local(LocalConfig),
    S3(S3Config),
    Gcs(GcsConfig),
    Azure(AzureConfig),
    Registry(RegistryConfig),
    Http(HttpConfig),
}

impl BackendEntry {
    pub fn namespace(&self) -> &str {
        match self {
            BackendEntry::Local(c) => &c.namespace,
            BackendEntry::S3(c) => &c.namespace,
            BackendEntry::Gcs(c) => &c.namespace,
            BackendEntry::Azure(c) => &c.namespace,
            BackendEntry::Registry(c) => &c.namespace,
            BackendEntry::Http(c) => &c.namespace,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            BackendEntry::Local(_) => "local",
            BackendEntry::S3(_) => "s3",
            BackendEntry::Gcs(_) => "gcs",
            BackendEntry::Azure(_) => "azure",
            BackendEntry::Registry(_) => "registry",
            BackendEntry::Http(_) => "http",
        }
    }
}

/// Timeouts and retries of a remote backend (defaults in [`RemoteTuning`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteTuning {
    pub connect_timeout: std::time::Duration,
    /// Longest wait for the next bytes of a response (not for the whole transfer: objects
    /// may be 100 GB).
    pub read_timeout: std::time::Duration,
    /// Retries of one request on a transient failure (object stores only).
    pub retries_max: usize,
    /// Longest time spent retrying one request (object stores only).
    pub retry_timeout: std::time::Duration,
}

impl Default for RemoteTuning {
    fn default() -> RemoteTuning {
        RemoteTuning {
            connect_timeout: std::time::Duration::from_secs(5),
            read_timeout: std::time::Duration::from_secs(30),
            retries_max: 3,
            retry_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// Most retries of one request a file may ask for.
pub const RETRIES_MAX: usize = 20;

fn tuning(
    connect: Option<Span>,
    read: Option<Span>,
    retries: Option<usize>,
    retry_timeout: Option<Span>,
) -> Result<RemoteTuning, String> {
    let mut t = RemoteTuning::default();
    if let Some(span) = connect {
        t.connect_timeout = span.0;
    }
    if let Some(span) = read {
        t.read_timeout = span.0;
    }
    if let Some(n) = retries {
        if n > RETRIES_MAX {
            return Err(format!("retries_max = {n}: at most {RETRIES_MAX}"));
        }
        t.retries_max = n;
    }
    if let Some(span) = retry_timeout {
        t.retry_timeout = span.0;
    }
    if t.connect_timeout.is_zero() || t.read_timeout.is_zero() {
        return Err("connect_timeout and read_timeout must be above zero".to_owned());
    }
    Ok(t)
}

/// `kind = "local"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalConfig {
    pub namespace: String,
    pub root: PathBuf,
}

/// `kind = "s3"` (AWS, or any S3-compatible server through `endpoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub namespace: String,
    pub bucket: String,
    pub region: Option<String>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub virtual_hosted: bool,
    pub prefix: Option<String>,
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    pub connect_timeout: Option<Span>,
    pub read_timeout: Option<Span>,
    pub retries_max: Option<usize>,
    pub retry_timeout: Option<Span>,
}

impl S3Config {
    pub fn tuning(&self) -> Result<RemoteTuning, String> {
        tuning(
            self.connect_timeout,
            self.read_timeout,
            self.retries_max,
            self.retry_timeout,
        )
    }
}

/// `kind = "gcs"` (Google Cloud Storage, or an emulator through `endpoint`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcsConfig {
    pub namespace: String,
    pub bucket: String,
    /// The service's base URL (`http://127.0.0.1:4443`, say); without it Google's, or the
    /// `gcs_base_url` of the service account.
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    /// Send requests unsigned, fetching no credential: an emulator, or a public bucket.
    #[serde(default)]
    pub skip_signature: bool,
    pub prefix: Option<String>,
    pub service_account_path: Option<PathBuf>,
    pub service_account_key: Option<Secret>,
    /// A static OAuth token, sent as it is and never refreshed.
    pub bearer_token: Option<Secret>,
    pub connect_timeout: Option<Span>,
    pub read_timeout: Option<Span>,
    pub retries_max: Option<usize>,
    pub retry_timeout: Option<Span>,
}

impl GcsConfig {
    pub fn tuning(&self) -> Result<RemoteTuning, String> {
        tuning(
            self.connect_timeout,
            self.read_timeout,
            self.retries_max,
            self.retry_timeout,
        )
    }
}

/// `kind = "azure"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AzureConfig {
    pub namespace: String,
    pub account: Option<String>,
    pub container: String,
    pub access_key: Option<Secret>,
    pub endpoint: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
    #[serde(default)]
    pub use_emulator: bool,
    pub prefix: Option<String>,
    pub connect_timeout: Option<Span>,
    pub read_timeout: Option<Span>,
    pub retries_max: Option<usize>,
    pub retry_timeout: Option<Span>,
}

impl AzureConfig {
    pub fn tuning(&self) -> Result<RemoteTuning, String> {
        tuning(
            self.connect_timeout,
            self.read_timeout,
            self.retries_max,
            self.retry_timeout,
        )
    }
}

/// `kind = "registry"`: an upstream OCI registry, read-only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub namespace: String,
    /// `https://registry-1.docker.io`, `http://127.0.0.1:5000`.
    pub url: String,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// The name of an environment variable holding the password.
    pub password_env: Option<String>,
    /// Removed from the front of a repository name before asking upstream.
    pub strip_prefix: Option<String>,
    /// Put in front of the (stripped) name before asking upstream.
    pub upstream_prefix: Option<String>,
    pub connect_timeout: Option<Span>,
    pub read_timeout: Option<Span>,
}

impl RegistryConfig {
    pub fn tuning(&self) -> Result<RemoteTuning, String> {
        tuning(self.connect_timeout, self.read_timeout, None, None)
    }

    /// The password from the file, else from `password_env`.
    pub fn password(&self) -> Result<Option<Secret>, String> {
        if let Some(password) = &self.password {
            return Ok(Some(password.clone()));
        }
        let Some(var) = &self.password_env else {
            return Ok(None);
        };
        std::env::var(var)
            .map(|value| Some(Secret::new(value)))
            .map_err(|_| format!("password_env: the environment variable {var} is not set"))
    }
}

/// `kind = "http"`: read-only GET/HEAD under a base URL.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    pub namespace: String,
    pub url: String,
    pub connect_timeout: Option<Span>,
    pub read_timeout: Option<Span>,
}

impl HttpConfig {
    pub fn tuning(&self) -> Result<RemoteTuning, String> {
        tuning(self.connect_timeout, self.read_timeout, None, None)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::path::{Path, PathBuf};

    use super::*;
    use crate::backend::Backends;
    use crate::config::{ConfigError, load, parse};

    fn shipped() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs/backends.toml")
    }

    #[test]
    fn the_shipped_example_parses_with_every_kind() {
        let file: BackendsFile = load(&shipped()).unwrap();
        let kinds: Vec<&str> = file.backend.iter().map(BackendEntry::kind_name).collect();
        assert_eq!(kinds, ["s3", "gcs", "azure", "registry", "http", "local"]);
        let BackendEntry::S3(s3) = &file.backend[0] else {
            panic!("first entry is s3")
        };
        assert_eq!(s3.tuning().unwrap(), RemoteTuning::default());
        assert_eq!(s3.bucket, "shoal-blobs");
        assert_eq!(
            s3.secret_access_key.as_ref().unwrap().expose(),
            "example-secret"
        );
    }

    #[test]
    fn secrets_never_print() {
        let text = r#"
            [[backend]]
            namespace = "**"
            kind = "s3"
            bucket = "b"
            endpoint = "http://127.0.0.1:1"
            allow_http = true
            access_key_id = "KEYID-SECRET-1"
            secret_access_key = "SECRET-2"
            session_token = "SECRET-3"

            [[backend]]
            namespace = "**"
            kind = "registry"
            url = "http://127.0.0.1:1"
            username = "robot"
            password = "SECRET-4"

            [[backend]]
            namespace = "**"
            kind = "gcs"
            bucket = "b"
            endpoint = "http://127.0.0.1:1"
            allow_http = true
            bearer_token = "SECRET-5"
        "#;
        let file: BackendsFile = parse(Path::new("b.toml"), text).unwrap();
        let printed = format!("{file:?} {file:#?}");
        let backends = Backends::build(&file).unwrap();
        let printed = format!("{printed} {backends:?} {backends:#?}");
        for secret in ["SECRET-1", "SECRET-2", "SECRET-3", "SECRET-4", "SECRET-5"] {
            assert!(!printed.contains(secret), "{secret} printed in {printed}");
        }
        assert!(printed.contains("<redacted>"));
    }

    fn parse_error(text: &str) -> String {
        match parse::<BackendsFile>(Path::new("/etc/shoal/b.toml"), text) {
            Err(ConfigError::Parse { path, message }) => {
                assert_eq!(path, Path::new("/etc/shoal/b.toml"));
                format!("{path:?}: {message}")
            }
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let cases = [
            ("[[backend]]\nnamespace = \"**\"\nkind = \"s4\"\n", "s4"),
            ("[[backend]]\nnamespace = \"**\"\n", "kind"),
            (
                "[[backend]]\nnamespace = \"**\"\nkind = \"s3\"\nregion = \"x\"\n",
                "bucket",
            ),
            (
                "[[backend]]\nnamespace = \"**\"\nkind = \"s3\"\nbucket = \"b\"\nbuckett = \"c\"\n",
                "buckett",
            ),
            (
                "[[backend]]\nnamespace = \"**\"\nkind = \"local\"\nroot = \"/x\"\nallow_http = true\n",
                "allow_http",
            ),
            (
                "[[backend]]\nkind = \"local\"\nroot = \"/x\"\n",
                "namespace",
            ),
            ("[[backends]]\nkind = \"local\"\n", "backends"),
            (
                "[[backend]]\nnamespace = \"**\"\nkind = \"registry\"\nurl = \"http://x\"\nread_timeout = \"fast\"\n",
                "fast",
            ),
        ];
        for (text, named) in cases {
            let message = parse_error(text);
            assert!(message.contains(named), "{named:?} not in {message}");
            assert!(message.contains("b.toml"), "{message}");
        }
    }

    #[test]
    fn unusable_values_are_named_at_build() {
        let build_error = |text: &str| {
            let file: BackendsFile = parse(Path::new("b.toml"), text).unwrap();
            Backends::build(&file).unwrap_err().to_string()
        };
        let message = build_error(
            "[[backend]]\nnamespace = \"**\"\nkind = \"registry\"\nurl = \"ftp://x\"\n",
        );
        assert!(
            message.contains("backend[0]") && message.contains("ftp://x"),
            "{message}"
        );
        let message =
            build_error("[[backend]]\nnamespace = \"\"\nkind = \"local\"\nroot = \"/tmp/x\"\n");
        assert!(message.contains("namespace pattern is empty"), "{message}");
        let message = build_error(
            "[[backend]]\nnamespace = \"**\"\nkind = \"s3\"\nbucket = \"b\"\nretries_max = 99\n",
        );
        assert!(message.contains("retries_max = 99"), "{message}");
        let message = build_error(
            "[[backend]]\nnamespace = \"**\"\nkind = \"registry\"\nurl = \"http://x\"\nusername = \"u\"\n",
        );
        assert!(message.contains("username and password"), "{message}");
        let message = build_error(
            "[[backend]]\nnamespace = \"**\"\nkind = \"registry\"\nurl = \"http://x\"\nusername = \"u\"\npassword_env = \"SHOAL_TEST_UNSET_VARIABLE\"\n",
        );
        assert!(message.contains("SHOAL_TEST_UNSET_VARIABLE"), "{message}");
    }
}
