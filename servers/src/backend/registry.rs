//! The upstream OCI registry backend: read-only pull-through from a distribution-API server.
//!
//! - `blobs/<alg>/<hex>`: `GET|HEAD /v2/<repo>/blobs/<digest>`, and on 404 the manifest by
//!   digest (`/v2/<repo>/manifests/<digest>`, every manifest media type accepted), since a
//!   registry keeps manifests apart from blobs. A whole blob is checked against its digest
//!   as it streams: an upstream that sends other bytes fails the read at its end.
//! - `tags/<repo>/<tag>`: the tag resolved upstream (`HEAD /v2/<repo>/manifests/<tag>`,
//!   `Docker-Content-Digest`, else the manifest hashed); its object is the digest as text.
//!   Listing `tags/<repo>` pages through `/v2/<repo>/tags/list`.
//! - put and delete: [`ErrorKind::Unsupported`].
//!
//! The repository asked upstream is the key's namespace with `strip_prefix` removed and
//! `upstream_prefix` put in front (a `hub/**` namespace served by Docker Hub strips `hub/`).
//!
//! Auth, as Docker Hub and most registries do it: a request answered 401 with
//! `WWW-Authenticate: Bearer realm=…,service=…,scope=…` fetches a token from the realm
//! (anonymously, or with the configured username and password as basic auth) and is sent
//! again once with it. Tokens are cached per scope until shortly before they expire
//! (`expires_in`, 60 s when absent), at most [`TOKENS_CACHED_MAX`]. A `Basic` challenge is
//! answered with the credentials. Neither credentials nor tokens appear in messages.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::{Method, StatusCode, Url, header};
use sha2::Digest as _;
use shoal_proto::types::Digest;

use super::http::{
    base_url, body_of, client, declared_len, range_header, read_bounded, send_error, status_error,
};
use super::{
    Backend, BackendError, BackendFuture, ByteStream, Entry, ErrorKind, Key, Page, PageRequest,
    PutSource, check_namespace, resolve_range, runtime, tag_object,
};
use crate::config::backends::{RegistryConfig, Secret};

/// Tokens kept (one per scope: per upstream repository).
pub const TOKENS_CACHED_MAX: usize = 1024;

/// Largest token response, bytes.
const TOKEN_RESPONSE_BYTES_MAX: usize = 64 << 10;

/// Largest manifest read whole (to hash it when a registry sends no digest header).
pub const MANIFEST_BYTES_MAX: usize = 4 << 20;

/// Largest tag-list page read.
const TAG_LIST_BYTES_MAX: usize = 4 << 20;

/// A token's lifetime when the token endpoint does not say (the token spec's default).
const TOKEN_LIFETIME_DEFAULT: Duration = Duration::from_secs(60);

/// Tokens are dropped this long before they expire, so none is sent stale.
const TOKEN_EXPIRY_MARGIN: Duration = Duration::from_secs(5);

/// What a manifest request accepts.
const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Debug)]
pub struct RegistryBackend {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    client: reqwest::Client,
    base: Url,
    describe: String,
    credentials: Option<(String, Secret)>,
    strip_prefix: String,
    upstream_prefix: String,
    tokens: Mutex<HashMap<String, (Secret, Instant)>>,
}

/// What to send along with a request.
#[derive(Clone)]
enum Auth {
    None,
    Bearer(Secret),
    Basic,
}

impl RegistryBackend {
    pub fn new(c: &RegistryConfig) -> Result<RegistryBackend, BackendError> {
        let config = |e: String| BackendError::new(ErrorKind::Config, e);
        let tuning = c.tuning().map_err(config)?;
        let base = base_url(&c.url)?;
        let password = c.password().map_err(config)?;
        let credentials = match (&c.username, password) {
            (Some(user), Some(password)) => Some((user.clone(), password)),
            (None, None) => None,
            _ => {
                return Err(config(
                    "username and password (or password_env) go together".to_owned(),
                ));
            }
        };
        Ok(RegistryBackend {
            inner: Arc::new(Inner {
                client: client(&tuning)?,
                describe: format!("registry {base}"),
                base,
                credentials,
                strip_prefix: c.strip_prefix.clone().unwrap_or_default(),
                upstream_prefix: c.upstream_prefix.clone().unwrap_or_default(),
                tokens: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, PartialEq, Eq)]
enum Challenge {
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
    Basic,
}

/// Parses `Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`.
fn parse_challenge(text: &str) -> Option<Challenge> {
    let (scheme, params) = text.trim().split_once(' ').unwrap_or((text.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut values: HashMap<String, String> = HashMap::new();
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (name, after) = rest.split_once('=')?;
        let name = name.trim().to_ascii_lowercase();
        let after = after.trim_start();
        let (value, remainder) = if let Some(quoted) = after.strip_prefix('"') {
            let end = quoted.find('"')?;
            (&quoted[..end], &quoted[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        values.insert(name, value.to_owned());
        rest = remainder.trim_start().trim_start_matches(',').trim_start();
    }
    Some(Challenge::Bearer {
        realm: values.remove("realm")?,
        service: values.remove("service"),
        scope: values.remove("scope"),
    })
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    token: Option<String>,
    access_token: Option<String>,
    expires_in: Option<u64>,
}

#[derive(serde::Deserialize)]
struct TagList {
    tags: Option<Vec<String>>,
}

impl Inner {
    /// The repository asked upstream for `namespace`.
    fn upstream(&self, namespace: &str) -> Result<String, BackendError> {
        let rest = namespace
            .strip_prefix(self.strip_prefix.as_str())
            .ok_or_else(|| {
                BackendError::invalid(format!(
                    "{}: repository {namespace:?} does not start with {:?}",
                    self.describe, self.strip_prefix
                ))
            })?;
        let upstream = format!("{}{rest}", self.upstream_prefix);
        check_namespace(&upstream)?;
        Ok(upstream)
    }

    fn url(&self, path: &str) -> Result<Url, BackendError> {
        self.base
            .join(path)
            .map_err(|e| BackendError::invalid(format!("{}: {path}: {e}", self.describe)))
    }

    fn cached_token(&self, scope: &str) -> Option<Secret> {
        let tokens = self.tokens.lock().ok()?;
        let (token, expires) = tokens.get(scope)?;
        (Instant::now() < *expires).then(|| token.clone())
    }

    fn cache_token(&self, scope: &str, token: Secret, lifetime: Duration) {
        let Ok(mut tokens) = self.tokens.lock() else {
            return;
        };
        let now = Instant::now();
        if tokens.len() >= TOKENS_CACHED_MAX {
            tokens.retain(|_, (_, expires)| *expires > now);
            if tokens.len() >= TOKENS_CACHED_MAX {
                tokens.clear();
            }
        }
        let expires = now + lifetime.saturating_sub(TOKEN_EXPIRY_MARGIN);
        tokens.insert(scope.to_owned(), (token, expires));
    }

    /// Answers a challenge: a token for a Bearer one, the credentials for a Basic one.
    async fn authenticate(
        &self,
        challenge: Option<&str>,
        scope: &str,
        what: &str,
    ) -> Result<Auth, BackendError> {
        let refused = |why: &str| {
            BackendError::new(
                ErrorKind::Config,
                format!("{what}: the registry asks for authentication: {why}"),
            )
        };
        match challenge.and_then(parse_challenge) {
            Some(Challenge::Basic) if self.credentials.is_some() => Ok(Auth::Basic),
            Some(Challenge::Basic) => Err(refused("basic, and no username is configured")),
            None => Err(refused("no Bearer or Basic challenge in WWW-Authenticate")),
            Some(Challenge::Bearer {
                realm,
                service,
                scope: challenge_scope,
            }) => {
                let mut url = Url::parse(&realm)
                    .map_err(|e| refused(&format!("token realm {realm:?}: {e}")))?;
                {
                    let mut query = url.query_pairs_mut();
                    if let Some(service) = &service {
                        query.append_pair("service", service);
                    }
                    query.append_pair("scope", challenge_scope.as_deref().unwrap_or(scope));
                }
                let mut request = self.client.get(url);
                if let Some((user, password)) = &self.credentials {
                    request = request.basic_auth(user, Some(password.expose()));
                }
                let token_what = format!("{what}: token from {realm}");
                let response = request
                    .send()
                    .await
                    .map_err(|e| send_error(&token_what, &e))?;
                if !response.status().is_success() {
                    return Err(status_error(&token_what, response.status()));
                }
                let body = read_bounded(response, TOKEN_RESPONSE_BYTES_MAX, &token_what).await?;
                let parsed: TokenResponse = serde_json::from_slice(&body).map_err(|e| {
                    BackendError::unavailable(format!("{token_what}: not a token response: {e}"))
                })?;
                let token = parsed
                    .token
                    .or(parsed.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        BackendError::unavailable(format!("{token_what}: no token in the response"))
                    })?;
                let token = Secret::new(token);
                let lifetime = parsed
                    .expires_in
                    .map(Duration::from_secs)
                    .unwrap_or(TOKEN_LIFETIME_DEFAULT);
                self.cache_token(scope, token.clone(), lifetime);
                Ok(Auth::Bearer(token))
            }
        }
    }

    /// Sends a request for `upstream`'s `scope`, answering one auth challenge.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: header::HeaderMap,
        upstream: &str,
        what: &str,
    ) -> Result<reqwest::Response, BackendError> {
        let scope = format!("repository:{upstream}:pull");
        let mut auth = match self.cached_token(&scope) {
            Some(token) => Auth::Bearer(token),
            None => Auth::None,
        };
        for attempt in 0..2 {
            let mut request = self
                .client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            request = match &auth {
                Auth::None => request,
                Auth::Bearer(token) => request.bearer_auth(token.expose()),
                Auth::Basic => match &self.credentials {
                    Some((user, password)) => request.basic_auth(user, Some(password.expose())),
                    None => request,
                },
            };
            let response = request.send().await.map_err(|e| send_error(what, &e))?;
            if response.status() != StatusCode::UNAUTHORIZED || attempt == 1 {
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get(header::WWW_AUTHENTICATE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            auth = self
                .authenticate(challenge.as_deref(), &scope, what)
                .await?;
        }
        Err(BackendError::new(
            ErrorKind::Config,
            format!("{what}: still unauthorized after authenticating"),
        ))
    }

    /// `GET` or `HEAD` of a blob, falling back to the manifest of that digest on 404.
    async fn blob_request(
        &self,
        method: Method,
        upstream: &str,
        digest: &Digest,
        range: Option<&Range<u64>>,
        what: &str,
    ) -> Result<reqwest::Response, BackendError> {
        let mut headers = header::HeaderMap::new();
        if let Some(range) = range.filter(|r| !r.is_empty())
            && let Ok(value) = header::HeaderValue::from_str(&range_header(range))
        {
            headers.insert(header::RANGE, value);
        }
        let blob_url = self.url(&format!("v2/{upstream}/blobs/{digest}"))?;
        let response = self
            .send(method.clone(), blob_url, headers.clone(), upstream, what)
            .await?;
        if response.status() != StatusCode::NOT_FOUND {
            return Ok(response);
        }
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static(MANIFEST_ACCEPT),
        );
        let manifest_url = self.url(&format!("v2/{upstream}/manifests/{digest}"))?;
        self.send(method, manifest_url, headers, upstream, what)
            .await
    }

    /// The digest `tag` names upstream, or `None` if it does not exist.
    async fn resolve_tag(
        &self,
        upstream: &str,
        tag: &str,
        what: &str,
    ) -> Result<Option<Digest>, BackendError> {
        let url = self.url(&format!("v2/{upstream}/manifests/{tag}"))?;
        let mut headers = header::HeaderMap::new();
        headers.insert(
            header::ACCEPT,
            header::HeaderValue::from_static(MANIFEST_ACCEPT),
        );
        let response = self
            .send(Method::HEAD, url.clone(), headers.clone(), upstream, what)
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => return Ok(None),
            status if status.is_success() => {}
            status => return Err(status_error(what, status)),
        }
        if let Some(digest) = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v).ok())
        {
            return Ok(Some(digest));
        }
        // No digest header: hash the manifest itself.
        let response = self.send(Method::GET, url, headers, upstream, what).await?;
        if !response.status().is_success() {
            return Err(status_error(what, response.status()));
        }
        let body = read_bounded(response, MANIFEST_BYTES_MAX, what).await?;
        Ok(Some(Digest::Sha256(sha2::Sha256::digest(&body).into())))
    }

    fn read_only(&self, op: &str) -> BackendError {
        BackendError::new(
            ErrorKind::Unsupported,
            format!(
                "{}: {op} is not supported (read-only backend)",
                self.describe
            ),
        )
    }
}

/// What a key names in a registry.
enum Object {
    Blob(Digest),
    Tag(String),
}

fn object_of(key: &Key, describe: &str) -> Result<Object, BackendError> {
    if let Some(digest) = key.as_blob() {
        return Ok(Object::Blob(digest));
    }
    if let Some((_, tag)) = key.as_tag() {
        return Ok(Object::Tag(tag.to_owned()));
    }
    Err(BackendError::new(
        ErrorKind::Unsupported,
        format!("{describe}: {key} is neither a blob nor a tag"),
    ))
}

impl Backend for RegistryBackend {
    fn describe(&self) -> &str {
        &self.inner.describe
    }

    fn per_repository(&self) -> bool {
        true
    }

    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        Box::pin(async move {
            let object = object_of(key, &self.inner.describe)?;
            let upstream = self.inner.upstream(key.namespace())?;
            let inner = Arc::clone(&self.inner);
            let what = format!("{}: stat {key}", self.inner.describe);
            runtime::run(async move {
                match object {
                    Object::Tag(tag) => Ok(inner
                        .resolve_tag(&upstream, &tag, &what)
                        .await?
                        .map(|digest| tag_object(&digest).len() as u64)),
                    Object::Blob(digest) => {
                        let response = inner
                            .blob_request(Method::HEAD, &upstream, &digest, None, &what)
                            .await?;
                        match response.status() {
                            StatusCode::NOT_FOUND => Ok(None),
                            status if status.is_success() => {
                                declared_len(&response).map(Some).ok_or_else(|| {
                                    BackendError::unavailable(format!("{what}: no Content-Length"))
                                })
                            }
                            status => Err(status_error(&what, status)),
                        }
                    }
                }
            })
            .await
        })
    }

    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        Box::pin(async move {
            let object = object_of(key, &self.inner.describe)?;
            let upstream = self.inner.upstream(key.namespace())?;
            let inner = Arc::clone(&self.inner);
            let what = format!("{}: get {key}", self.inner.describe);
            let digest = match object {
                Object::Tag(tag) => {
                    let what_run = what.clone();
                    let digest =
                        runtime::run(
                            async move { inner.resolve_tag(&upstream, &tag, &what_run).await },
                        )
                        .await?
                        .ok_or_else(|| {
                            BackendError::new(ErrorKind::NotFound, format!("{what}: not found"))
                        })?;
                    let body = tag_object(&digest);
                    let range = if range.is_none() {
                        0..body.len() as u64
                    } else {
                        resolve_range(key, range, body.len() as u64)?
                    };
                    // Within the body's length: fits in usize.
                    let part: Bytes = body.slice(range.start as usize..range.end as usize);
                    return Ok(ByteStream::from_bytes(part));
                }
                Object::Blob(digest) => digest,
            };
            let key_owned = key.clone();
            let what_run = what.clone();
            let (len, stream) = runtime::run(async move {
                let response = inner
                    .blob_request(Method::GET, &upstream, &digest, range.as_ref(), &what_run)
                    .await?;
                body_of(response, &key_owned, range, Some(digest), &what_run)
            })
            .await?;
            runtime::stream_from(len, what, stream)
        })
    }

    fn put<'a>(&'a self, _key: &'a Key, _source: PutSource, _len: u64) -> BackendFuture<'a, ()> {
        Box::pin(async move { Err(self.inner.read_only("put")) })
    }

    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        Box::pin(async move {
            let tags_prefix = format!("tags/{namespace}");
            if prefix != tags_prefix {
                return Err(BackendError::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: only the tags of a repository ({tags_prefix:?}) can be listed, \
                         not {prefix:?}",
                        self.inner.describe
                    ),
                ));
            }
            let upstream = self.inner.upstream(namespace)?;
            let limit = page.limit();
            let last = match page.after {
                Some(after) => Some(
                    after
                        .strip_prefix(&format!("{tags_prefix}/"))
                        .ok_or_else(|| BackendError::invalid(format!("after {after:?}")))?
                        .to_owned(),
                ),
                None => None,
            };
            let mut url = self.inner.url(&format!("v2/{upstream}/tags/list"))?;
            {
                let mut query = url.query_pairs_mut();
                query.append_pair("n", &limit.to_string());
                if let Some(last) = &last {
                    query.append_pair("last", last);
                }
            }
            let inner = Arc::clone(&self.inner);
            let what = format!("{}: list {prefix}", self.inner.describe);
            let tags = runtime::run(async move {
                let response = inner
                    .send(Method::GET, url, header::HeaderMap::new(), &upstream, &what)
                    .await?;
                match response.status() {
                    StatusCode::NOT_FOUND => return Ok(Vec::new()),
                    status if !status.is_success() => return Err(status_error(&what, status)),
                    _ => {}
                }
                let body = read_bounded(response, TAG_LIST_BYTES_MAX, &what).await?;
                let list: TagList = serde_json::from_slice(&body).map_err(|e| {
                    BackendError::unavailable(format!("{what}: not a tag list: {e}"))
                })?;
                Ok(list.tags.unwrap_or_default())
            })
            .await?;
            let mut entries: Vec<Entry> = tags
                .into_iter()
                .filter(|tag| last.as_deref().is_none_or(|last| tag.as_str() > last))
                .map(|tag| Entry {
                    path: format!("{tags_prefix}/{tag}"),
                    len: None,
                })
                .collect();
            entries.sort_by(|a, b| a.path.cmp(&b.path));
            entries.truncate(limit);
            let next = (entries.len() == limit)
                .then(|| entries.last().map(|e| e.path.clone()))
                .flatten();
            Ok(Page { entries, next })
        })
    }

    fn delete<'a>(&'a self, _key: &'a Key) -> BackendFuture<'a, ()> {
        Box::pin(async move { Err(self.inner.read_only("delete")) })
    }

    fn read_only(&self) -> bool {
        true
    }

    fn check(&self) -> BackendFuture<'_, ()> {
        Box::pin(async move {
            let inner = Arc::clone(&self.inner);
            let describe = self.inner.describe.clone();
            runtime::run(async move {
                let url = inner.url("v2/")?;
                let response = inner.client.get(url).send().await.map_err(|e| {
                    BackendError::new(
                        ErrorKind::Config,
                        format!("{describe} cannot be reached: {e}"),
                    )
                })?;
                match response.status() {
                    // 401: it speaks the API and wants a token, which each request fetches.
                    StatusCode::OK | StatusCode::UNAUTHORIZED => Ok(()),
                    status => Err(BackendError::new(
                        ErrorKind::Config,
                        format!("{describe}: GET /v2/ answered {status}: not a registry?"),
                    )),
                }
            })
            .await
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".to_owned(),
                service: Some("registry.example".to_owned()),
                scope: Some("repository:library/alpine:pull".to_owned()),
            })
        );
        assert_eq!(
            parse_challenge(r#"bearer realm="http://127.0.0.1:1/t""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".to_owned(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="x""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(parse_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_challenge(r#"Bearer realm="unterminated"#), None);
    }
}
