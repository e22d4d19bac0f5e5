//! The proxy against in-process fakes of the origin's and the build-index's internal APIs
//! (tiny handlers on loopback listeners, speaking the contract in `registry.rs`), with
//! [`HttpClient`] as the client. The real servers replace the fakes in the e2e tests.

#![allow(clippy::unwrap_used)]

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::*;
use crate::http::client::{ClientBody, ClientConfig, HttpClient, read_body_bounded};
use crate::http::{HttpConfig, serve};
use crate::uploads::{UploadLimits, UploadStore};

/// Every exchange in these tests is bounded by the client's timeouts.
fn client() -> HttpClient {
    HttpClient::new(ClientConfig {
        connect_timeout: Duration::from_secs(5),
        response_timeout: Duration::from_secs(20),
        body_bytes_per_s_min: 1 << 20,
    })
}

#[derive(Default)]
struct FakeOrigin {
    blobs: RefCell<HashMap<String, Bytes>>,
    puts: Cell<usize>,
    /// The `repo` of every request that named one (method, digest, repository).
    repos: RefCell<Vec<(Method, String, String)>>,
}

impl Handler for FakeOrigin {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let path = request.uri().path().to_owned();
        let Some(digest) = path.strip_prefix("/internal/blobs/") else {
            return status(StatusCode::NOT_FOUND, "");
        };
        let query = request.uri().query().unwrap_or("");
        if let Some(repo) = query::param(query, "repo") {
            self.repos
                .borrow_mut()
                .push((request.method().clone(), digest.to_owned(), repo));
        }
        // No storage backend here: no repository pulls through.
        if query::param(query, "confirm").is_some() {
            return status(StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
        }
        match *request.method() {
            Method::PUT => {
                assert!(request.headers().contains_key(CONTENT_LENGTH));
                let body = read_body_bounded(request.into_body(), 64 << 20)
                    .await
                    .unwrap();
                let parsed = Digest::parse(digest).unwrap();
                if digest_like(&parsed, &body) != parsed {
                    return status(StatusCode::BAD_REQUEST, "DIGEST_INVALID");
                }
                self.puts.set(self.puts.get() + 1);
                self.blobs.borrow_mut().insert(digest.to_owned(), body);
                status(StatusCode::CREATED, "")
            }
            Method::HEAD | Method::GET => match self.blobs.borrow().get(digest) {
                Some(bytes) => {
                    let head = request.method() == Method::HEAD;
                    let body = if head {
                        LocalBody::empty()
                    } else {
                        LocalBody::full(bytes.clone())
                    };
                    let mut response = Response::new(body);
                    response
                        .headers_mut()
                        .insert(CONTENT_LENGTH, HeaderValue::from(bytes.len()));
                    response
                }
                None => status(StatusCode::NOT_FOUND, ""),
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED, ""),
        }
    }
}

/// (repo, tag) → (digest, media type, version).
type Tags = BTreeMap<(String, String), (String, String, u64)>;

#[derive(Default)]
struct FakeIndex {
    tags: RefCell<Tags>,
    /// (repo, digest) → manifest record JSON.
    manifests: RefCell<BTreeMap<(String, String), Bytes>>,
}

impl FakeIndex {
    fn page(&self, names: Vec<String>, query: &str, path: &str, key: &str) -> Response<LocalBody> {
        let n = query::param(query, "n").map(|n| n.parse::<usize>().unwrap());
        let last = query::param(query, "last");
        let after: Vec<String> = names
            .into_iter()
            .filter(|name| last.as_ref().is_none_or(|last| name > last))
            .collect();
        let n = n.unwrap_or(after.len());
        let page: Vec<String> = after.iter().take(n).cloned().collect();
        let mut body = serde_json::json!({ key: page });
        if key == "tags" {
            body["name"] = serde_json::json!(
                path.trim_start_matches("/internal/tags/")
                    .trim_end_matches('/')
            );
        }
        let mut response = Response::new(LocalBody::full(body.to_string()));
        if after.len() > n && n > 0 {
            let link = format!(
                "<{path}?n={n}&last={}>; rel=\"next\"",
                query::encode(&page[n - 1])
            );
            response
                .headers_mut()
                .insert(http::header::LINK, HeaderValue::try_from(link).unwrap());
        }
        response
    }
}

impl Handler for FakeIndex {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        let path = request.uri().path().to_owned();
        let query = request.uri().query().unwrap_or("").to_owned();
        if path == "/internal/repositories" {
            let mut repos: Vec<String> = self.tags.borrow().keys().map(|k| k.0.clone()).collect();
            repos.dedup();
            return self.page(repos, &query, &path, "repositories");
        }
        if let Some(rest) = path.strip_prefix("/internal/referrers/") {
            assert!(rest.rsplit_once('/').is_some());
            return Response::new(LocalBody::full(r#"{"manifests":[]}"#));
        }
        if let Some(rest) = path.strip_prefix("/internal/manifests/") {
            let (repo, digest) = rest.rsplit_once('/').unwrap();
            let key = (repo.to_owned(), digest.to_owned());
            return match *request.method() {
                Method::GET => match self.manifests.borrow().get(&key) {
                    Some(record) => Response::new(LocalBody::full(record.clone())),
                    None => status(StatusCode::NOT_FOUND, ""),
                },
                Method::PUT => {
                    let body = read_body_bounded(request.into_body(), 1 << 20)
                        .await
                        .unwrap();
                    self.manifests.borrow_mut().insert(key, body);
                    status(StatusCode::OK, "")
                }
                Method::DELETE => {
                    self.tags
                        .borrow_mut()
                        .retain(|k, v| !(k.0 == repo && v.0 == digest));
                    match self.manifests.borrow_mut().remove(&key) {
                        Some(_) => status(StatusCode::ACCEPTED, "{}"),
                        None => status(StatusCode::NOT_FOUND, ""),
                    }
                }
                _ => status(StatusCode::METHOD_NOT_ALLOWED, ""),
            };
        }
        let Some(rest) = path.strip_prefix("/internal/tags/") else {
            return status(StatusCode::NOT_FOUND, "");
        };
        // A repository's listing, or one tag (the last component).
        let repo_tags: Vec<String> = self
            .tags
            .borrow()
            .keys()
            .filter(|k| k.0 == rest.trim_end_matches('/'))
            .map(|k| k.1.clone())
            .collect();
        if request.method() == Method::GET && !repo_tags.is_empty() {
            return self.page(repo_tags, &query, &path, "tags");
        }
        let Some((repo, tag)) = rest.rsplit_once('/') else {
            return status(StatusCode::NOT_FOUND, "");
        };
        let key = (repo.to_owned(), tag.to_owned());
        match *request.method() {
            Method::GET => match self.tags.borrow().get(&key) {
                Some((digest, media_type, version)) => Response::new(LocalBody::full(
                    serde_json::json!({
                        "digest": digest, "media_type": media_type, "version": version
                    })
                    .to_string(),
                )),
                None => status(StatusCode::NOT_FOUND, ""),
            },
            Method::PUT => {
                let body = read_body_bounded(request.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
                let mut tags = self.tags.borrow_mut();
                let version = tags.get(&key).map_or(1, |t| t.2 + 1);
                tags.insert(
                    key,
                    (
                        value["digest"].as_str().unwrap().to_owned(),
                        value["media_type"].as_str().unwrap().to_owned(),
                        version,
                    ),
                );
                status(StatusCode::OK, "")
            }
            Method::DELETE => match self.tags.borrow_mut().remove(&key) {
                Some(_) => status(StatusCode::ACCEPTED, ""),
                None => status(StatusCode::NOT_FOUND, ""),
            },
            _ => status(StatusCode::METHOD_NOT_ALLOWED, ""),
        }
    }
}

fn status(code: StatusCode, body: &'static str) -> Response<LocalBody> {
    let mut response = Response::new(LocalBody::full(body));
    *response.status_mut() = code;
    response
}

async fn listen<H: Handler>(handler: Rc<H>) -> SocketAddr {
    let listener = compio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    compio::runtime::spawn(serve(listener, handler, HttpConfig::default())).detach();
    addr
}

/// A proxy with a fake origin and a fake build-index, all on the test's runtime.
struct Fixture {
    origin: Rc<FakeOrigin>,
    index: Rc<FakeIndex>,
    proxy: SocketAddr,
    client: HttpClient,
    dir: PathBuf,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Answer {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .to_str()
            .unwrap()
    }

    fn code(&self) -> String {
        let value: serde_json::Value = serde_json::from_slice(&self.body).unwrap();
        value["errors"][0]["code"].as_str().unwrap().to_owned()
    }
}

impl Fixture {
    async fn new(name: &str) -> Fixture {
        Fixture::with_upstreams(name, None).await
    }

    /// `down`: an address where nothing listens, used for both upstreams.
    async fn with_upstreams(name: &str, down: Option<SocketAddr>) -> Fixture {
        let dir = std::env::temp_dir().join(format!("shoal-proxy-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let origin = Rc::new(FakeOrigin::default());
        let index = Rc::new(FakeIndex::default());
        let origin_addr = listen(Rc::clone(&origin)).await;
        let index_addr = listen(Rc::clone(&index)).await;
        let (store, _) = UploadStore::open(&dir, UploadLimits::default()).unwrap();
        let registry = Registry::new(
            client(),
            down.unwrap_or(origin_addr),
            down.unwrap_or(index_addr),
        );
        let proxy = listen(Rc::new(Proxy::new(Arc::new(store), registry))).await;
        Fixture {
            origin,
            index,
            proxy,
            client: client(),
            dir,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        headers: &[(&'static str, &str)],
        body: impl Into<Bytes>,
    ) -> Answer {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.insert(*name, HeaderValue::try_from(*value).unwrap());
        }
        let response = self
            .client
            .request(
                method,
                self.proxy,
                path,
                map,
                ClientBody::bytes(body.into()),
            )
            .await
            .unwrap();
        let (parts, body) = response.into_parts();
        let body = self.client.read_body(body, 64 << 20).await.unwrap();
        assert_eq!(
            parts.headers["docker-distribution-api-version"],
            "registry/2.0"
        );
        Answer {
            status: parts.status,
            headers: parts.headers,
            body,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.call(Method::GET, path, &[], Bytes::new()).await
    }

    /// Pushes `data` monolithically to `repo` and returns its digest.
    async fn push_blob(&self, repo: &str, data: &[u8]) -> Digest {
        let digest = Digest::sha256_of(data);
        let path = format!("/v2/{repo}/blobs/uploads/?digest={digest}");
        let answer = self.call(Method::POST, &path, &[], data.to_vec()).await;
        assert_eq!(answer.status, StatusCode::CREATED);
        digest
    }

    fn origin_has(&self, digest: &Digest) -> bool {
        self.origin.blobs.borrow().contains_key(&digest.to_string())
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run<F: Future>(body: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(body)
}

fn image_manifest(config: &Digest, layer: &Digest, subject: Option<&Digest>) -> Vec<u8> {
    let mut manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.to_string(), "size": 2
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer.to_string(), "size": 5
        }]
    });
    if let Some(subject) = subject {
        manifest["subject"] = serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": subject.to_string(), "size": 10
        });
    }
    serde_json::to_vec(&manifest).unwrap()
}

#[test]
fn version_check_and_monolithic_upload() {
    run(async {
        let f = Fixture::new("mono").await;
        let base = f.get("/v2/").await;
        assert_eq!(base.status, StatusCode::OK);
        assert_eq!(&base.body[..], b"{}");

        let data = b"hello, monolithic".to_vec();
        let digest = Digest::sha256_of(&data);
        // The digest percent-encoded, as Go clients send it.
        let encoded = digest.to_string().replace(':', "%3A");
        let answer = f
            .call(
                Method::POST,
                &format!("/v2/lib/app/blobs/uploads/?digest={encoded}"),
                &[],
                data.clone(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::CREATED);
        assert_eq!(
            answer.header("location"),
            format!("/v2/lib/app/blobs/{digest}")
        );
        assert_eq!(answer.header("docker-content-digest"), digest.to_string());
        assert!(f.origin_has(&digest));
        // The origin is told which repository the blob was pushed to (its write-back key).
        assert!(
            f.origin.repos.borrow().contains(&(
                Method::PUT,
                digest.to_string(),
                "lib/app".to_owned()
            )),
            "{:?}",
            f.origin.repos.borrow()
        );

        let head = f
            .call(
                Method::HEAD,
                &format!("/v2/x/blobs/{digest}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(head.status, StatusCode::OK);
        assert_eq!(head.header("content-length"), data.len().to_string());
        let get = f.get(&format!("/v2/x/blobs/{digest}")).await;
        assert_eq!(get.status, StatusCode::OK);
        assert_eq!(&get.body[..], &data[..]);
        // Read for the repository asked (an origin fills a miss from its backend).
        assert!(f.origin.repos.borrow().contains(&(
            Method::GET,
            digest.to_string(),
            "x".to_owned()
        )));

        // A wrong digest: 400, nothing sent to the origin.
        let puts = f.origin.puts.get();
        let wrong = Digest::sha256_of(b"something else");
        let answer = f
            .call(
                Method::POST,
                &format!("/v2/lib/app/blobs/uploads/?digest={wrong}"),
                &[],
                data.clone(),
            )
            .await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.code(), "DIGEST_INVALID");
        assert_eq!(f.origin.puts.get(), puts);
        assert!(!f.origin_has(&wrong));

        let missing = f
            .call(
                Method::HEAD,
                &format!("/v2/x/blobs/{wrong}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(missing.status, StatusCode::NOT_FOUND);
        assert_eq!(
            f.get(&format!("/v2/x/blobs/{wrong}")).await.code(),
            "BLOB_UNKNOWN"
        );
    });
}

#[test]
fn chunked_upload_status_out_of_order_and_cancel() {
    run(async {
        let f = Fixture::new("chunked").await;
        let data = b"0123456789abcdef".to_vec();
        let digest = Digest::sha256_of(&data);

        let start = f
            .call(Method::POST, "/v2/repo/blobs/uploads/", &[], Bytes::new())
            .await;
        assert_eq!(start.status, StatusCode::ACCEPTED);
        assert_eq!(start.header("range"), "0-0");
        let location = start.header("location").to_owned();
        let id = start.header("docker-upload-uuid").to_owned();
        assert_eq!(location, format!("/v2/repo/blobs/uploads/{id}"));

        let first = f
            .call(
                Method::PATCH,
                &location,
                &[("content-range", "0-4")],
                data[..5].to_vec(),
            )
            .await;
        assert_eq!(first.status, StatusCode::ACCEPTED);
        assert_eq!(first.header("range"), "0-4");
        assert_eq!(first.header("location"), location);

        // Out of order: 416 with what was received.
        let skipped = f
            .call(
                Method::PATCH,
                &location,
                &[("content-range", "10-15")],
                data[10..].to_vec(),
            )
            .await;
        assert_eq!(skipped.status, StatusCode::RANGE_NOT_SATISFIABLE);
        assert_eq!(skipped.header("range"), "0-4");
        assert_eq!(skipped.header("location"), location);

        // Without Content-Range: appended at the end.
        let second = f
            .call(Method::PATCH, &location, &[], data[5..10].to_vec())
            .await;
        assert_eq!(second.status, StatusCode::ACCEPTED);
        assert_eq!(second.header("range"), "0-9");

        let status = f.get(&location).await;
        assert_eq!(status.status, StatusCode::NO_CONTENT);
        assert_eq!(status.header("range"), "0-9");
        assert_eq!(status.header("docker-upload-uuid"), id);

        // The session belongs to its repository.
        let other = f.get(&format!("/v2/other/blobs/uploads/{id}")).await;
        assert_eq!(other.status, StatusCode::NOT_FOUND);
        assert_eq!(other.code(), "BLOB_UPLOAD_UNKNOWN");

        // The last chunk with the final PUT.
        let done = f
            .call(
                Method::PUT,
                &format!("{location}?digest={digest}"),
                &[("content-range", "10-15")],
                data[10..].to_vec(),
            )
            .await;
        assert_eq!(done.status, StatusCode::CREATED, "{:?}", done.body);
        assert_eq!(done.header("location"), format!("/v2/repo/blobs/{digest}"));
        assert_eq!(&f.origin.blobs.borrow()[&digest.to_string()][..], &data[..]);
        assert_eq!(f.get(&location).await.status, StatusCode::NOT_FOUND);

        // A chunked upload finished with the wrong digest: 400, nothing sent.
        let puts = f.origin.puts.get();
        let start = f
            .call(Method::POST, "/v2/repo/blobs/uploads/", &[], Bytes::new())
            .await;
        let location = start.header("location").to_owned();
        f.call(Method::PATCH, &location, &[], b"abc".to_vec()).await;
        let wrong = Digest::sha256_of(b"abd");
        let bad = f
            .call(
                Method::PUT,
                &format!("{location}?digest={wrong}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(bad.status, StatusCode::BAD_REQUEST);
        assert_eq!(bad.code(), "DIGEST_INVALID");
        assert_eq!(f.origin.puts.get(), puts);

        // Cancel.
        let start = f
            .call(Method::POST, "/v2/repo/blobs/uploads/", &[], Bytes::new())
            .await;
        let location = start.header("location").to_owned();
        let cancel = f.call(Method::DELETE, &location, &[], Bytes::new()).await;
        assert_eq!(cancel.status, StatusCode::NO_CONTENT);
        let gone = f.get(&location).await;
        assert_eq!(gone.status, StatusCode::NOT_FOUND);
        assert_eq!(gone.code(), "BLOB_UPLOAD_UNKNOWN");
        assert_eq!(f.origin.puts.get(), puts);
    });
}

#[test]
fn a_large_chunk_streams_through() {
    run(async {
        let f = Fixture::new("large").await;
        let data: Vec<u8> = (0..(5 << 20) + 3).map(|i: u32| (i * 7) as u8).collect();
        let digest = Digest::sha256_of(&data);
        let start = f
            .call(Method::POST, "/v2/big/blobs/uploads/", &[], Bytes::new())
            .await;
        let location = start.header("location").to_owned();
        let patch = f.call(Method::PATCH, &location, &[], data.clone()).await;
        assert_eq!(patch.status, StatusCode::ACCEPTED);
        assert_eq!(patch.header("range"), format!("0-{}", data.len() - 1));
        let done = f
            .call(
                Method::PUT,
                &format!("{location}?digest={digest}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(done.status, StatusCode::CREATED);
        assert_eq!(
            f.get(&format!("/v2/big/blobs/{digest}")).await.body.len(),
            data.len()
        );
    });
}

#[test]
fn mount_hit_and_miss() {
    run(async {
        let f = Fixture::new("mount").await;
        let digest = f.push_blob("a", b"shared layer").await;
        let hit = f
            .call(
                Method::POST,
                &format!("/v2/b/blobs/uploads/?mount={digest}&from=a"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(hit.status, StatusCode::CREATED);
        assert_eq!(hit.header("location"), format!("/v2/b/blobs/{digest}"));
        assert_eq!(hit.header("docker-content-digest"), digest.to_string());

        let absent = Digest::sha256_of(b"not pushed");
        let miss = f
            .call(
                Method::POST,
                &format!("/v2/b/blobs/uploads/?mount={absent}&from=a"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(miss.status, StatusCode::ACCEPTED);
        assert!(miss.header("location").starts_with("/v2/b/blobs/uploads/"));
    });
}

#[test]
fn manifests_need_their_blobs_and_tags_follow_pushes() {
    run(async {
        let f = Fixture::new("manifests").await;
        let config = Digest::sha256_of(b"{}");
        let layer = Digest::sha256_of(b"layer");
        let manifest = image_manifest(&config, &layer, None);
        let oci = "application/vnd.oci.image.manifest.v1+json";

        // Nothing pushed yet: refused, and no tag written.
        let refused = f
            .call(
                Method::PUT,
                "/v2/app/manifests/v1",
                &[("content-type", oci)],
                manifest.clone(),
            )
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.code(), "MANIFEST_BLOB_UNKNOWN");
        assert!(f.index.tags.borrow().is_empty());

        f.push_blob("app", b"{}").await;
        f.push_blob("app", b"layer").await;
        let digest = Digest::sha256_of(&manifest);
        // No Content-Type: detected from the manifest.
        let pushed = f
            .call(Method::PUT, "/v2/app/manifests/v1", &[], manifest.clone())
            .await;
        assert_eq!(pushed.status, StatusCode::CREATED, "{:?}", pushed.body);
        assert_eq!(pushed.header("docker-content-digest"), digest.to_string());
        assert_eq!(
            pushed.header("location"),
            format!("/v2/app/manifests/{digest}")
        );
        assert!(f.origin_has(&digest));
        assert_eq!(
            f.index.tags.borrow()[&("app".to_owned(), "v1".to_owned())].0,
            digest.to_string()
        );

        for path in [
            "/v2/app/manifests/v1".to_owned(),
            format!("/v2/app/manifests/{digest}"),
        ] {
            let got = f.get(&path).await;
            assert_eq!(got.status, StatusCode::OK);
            assert_eq!(&got.body[..], &manifest[..]);
            assert_eq!(got.header("content-type"), oci);
            assert_eq!(got.header("docker-content-digest"), digest.to_string());
            let head = f.call(Method::HEAD, &path, &[], Bytes::new()).await;
            assert_eq!(head.status, StatusCode::OK);
            assert_eq!(head.header("content-length"), manifest.len().to_string());
            assert!(head.body.is_empty());
        }

        // Retag: the second push of the tag is seen at once. It has a subject.
        let manifest2 = image_manifest(&config, &layer, Some(&digest));
        let digest2 = Digest::sha256_of(&manifest2);
        let pushed = f
            .call(
                Method::PUT,
                "/v2/app/manifests/v1",
                &[("content-type", oci)],
                manifest2.clone(),
            )
            .await;
        assert_eq!(pushed.status, StatusCode::CREATED);
        assert_eq!(pushed.header("oci-subject"), digest.to_string());
        let got = f.get("/v2/app/manifests/v1").await;
        assert_eq!(got.header("docker-content-digest"), digest2.to_string());
        assert_eq!(&got.body[..], &manifest2[..]);

        // By digest: it must match; no tag is written.
        let wrong = f
            .call(
                Method::PUT,
                &format!("/v2/app/manifests/{digest}"),
                &[],
                manifest2.clone(),
            )
            .await;
        assert_eq!(wrong.status, StatusCode::BAD_REQUEST);
        assert_eq!(wrong.code(), "DIGEST_INVALID");
        let by_digest = f
            .call(
                Method::PUT,
                &format!("/v2/app/manifests/{digest2}"),
                &[],
                manifest2.clone(),
            )
            .await;
        assert_eq!(by_digest.status, StatusCode::CREATED);
        assert_eq!(f.index.tags.borrow().len(), 1);

        // An index whose child manifest is missing.
        let absent = Digest::sha256_of(b"absent manifest");
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {"mediaType": oci, "digest": digest.to_string(), "size": manifest.len()},
                {"mediaType": oci, "digest": absent.to_string(), "size": 3}
            ]
        }))
        .unwrap();
        let refused = f
            .call(Method::PUT, "/v2/app/manifests/multi", &[], index)
            .await;
        assert_eq!(refused.status, StatusCode::BAD_REQUEST);
        assert_eq!(refused.code(), "MANIFEST_BLOB_UNKNOWN");

        // Too large: 413. Not JSON: MANIFEST_INVALID.
        let huge = vec![b' '; MANIFEST_LEN_MAX + 1];
        let too_large = f
            .call(Method::PUT, "/v2/app/manifests/big", &[], huge)
            .await;
        assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
        let garbage = f
            .call(Method::PUT, "/v2/app/manifests/bad", &[], b"nope".to_vec())
            .await;
        assert_eq!(garbage.status, StatusCode::BAD_REQUEST);
        assert_eq!(garbage.code(), "MANIFEST_INVALID");

        // Unknown tag and digest.
        assert_eq!(
            f.get("/v2/app/manifests/nope").await.code(),
            "MANIFEST_UNKNOWN"
        );
        let unknown = f.get(&format!("/v2/app/manifests/{absent}")).await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);

        // Delete the tag; by digest is not supported.
        let deleted = f
            .call(Method::DELETE, "/v2/app/manifests/v1", &[], Bytes::new())
            .await;
        assert_eq!(deleted.status, StatusCode::ACCEPTED);
        assert_eq!(
            f.get("/v2/app/manifests/v1").await.status,
            StatusCode::NOT_FOUND
        );
        let again = f
            .call(Method::DELETE, "/v2/app/manifests/v1", &[], Bytes::new())
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        let by_digest = f
            .call(
                Method::DELETE,
                &format!("/v2/app/manifests/{digest}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(by_digest.status, StatusCode::ACCEPTED);
        assert_eq!(
            f.get(&format!("/v2/app/manifests/{digest}")).await.status,
            StatusCode::NOT_FOUND
        );
        let again = f
            .call(
                Method::DELETE,
                &format!("/v2/app/manifests/{digest}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(again.status, StatusCode::NOT_FOUND);
        assert_eq!(again.code(), "MANIFEST_UNKNOWN");
        // Blobs cannot be deleted: shared between repositories, no garbage collection.
        let blob = f
            .call(
                Method::DELETE,
                &format!("/v2/app/blobs/{config}"),
                &[],
                Bytes::new(),
            )
            .await;
        assert_eq!(blob.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(blob.code(), "UNSUPPORTED");
    });
}

#[test]
fn tags_list_and_catalog_paginate() {
    run(async {
        let f = Fixture::new("lists").await;
        let config = f.push_blob("x", b"{}").await;
        let layer = f.push_blob("x", b"layer").await;
        let manifest = image_manifest(&config, &layer, None);
        for (repo, tag) in [
            ("lib/a", "t1"),
            ("lib/a", "t2"),
            ("lib/a", "t3"),
            ("b", "latest"),
        ] {
            let path = format!("/v2/{repo}/manifests/{tag}");
            let pushed = f.call(Method::PUT, &path, &[], manifest.clone()).await;
            assert_eq!(pushed.status, StatusCode::CREATED);
        }

        let page = f.get("/v2/lib/a/tags/list?n=2").await;
        assert_eq!(page.status, StatusCode::OK);
        let value: serde_json::Value = serde_json::from_slice(&page.body).unwrap();
        assert_eq!(value["tags"], serde_json::json!(["t1", "t2"]));
        assert_eq!(value["name"], "lib/a");
        let link = page.header("link").to_owned();
        assert_eq!(link, "</v2/lib/a/tags/list?n=2&last=t2>; rel=\"next\"");
        let next = f.get("/v2/lib/a/tags/list?n=2&last=t2").await;
        let value: serde_json::Value = serde_json::from_slice(&next.body).unwrap();
        assert_eq!(value["tags"], serde_json::json!(["t3"]));
        assert!(!next.headers.contains_key("link"));
        let unknown = f.get("/v2/nothing/tags/list").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        assert_eq!(unknown.code(), "NAME_UNKNOWN");
        assert_eq!(
            f.get("/v2/lib/a/tags/list?n=x").await.status,
            StatusCode::BAD_REQUEST
        );

        let catalog = f.get("/v2/_catalog?n=1").await;
        let value: serde_json::Value = serde_json::from_slice(&catalog.body).unwrap();
        assert_eq!(value["repositories"], serde_json::json!(["b"]));
        assert_eq!(
            catalog.header("link"),
            "</v2/_catalog?n=1&last=b>; rel=\"next\""
        );
        let rest = f.get("/v2/_catalog?n=5&last=b").await;
        let value: serde_json::Value = serde_json::from_slice(&rest.body).unwrap();
        assert_eq!(value["repositories"], serde_json::json!(["lib/a"]));
    });
}

#[test]
fn bad_names_paths_and_methods() {
    run(async {
        let f = Fixture::new("names").await;
        for path in [
            "/v2/a/../b/blobs/uploads/",
            "/v2/%2e%2e/blobs/uploads/",
            "/v2/A/blobs/uploads/",
            "/v2/a//b/manifests/latest",
        ] {
            let answer = f.call(Method::POST, path, &[], Bytes::new()).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{path}");
            assert_eq!(answer.code(), "NAME_INVALID", "{path}");
        }
        let unknown = f.get("/v2/a/nothing/here").await;
        assert_eq!(unknown.status, StatusCode::NOT_FOUND);
        let bad_id = f.get("/v2/a/blobs/uploads/not-an-id").await;
        assert_eq!(bad_id.status, StatusCode::NOT_FOUND);
        assert_eq!(bad_id.code(), "BLOB_UPLOAD_UNKNOWN");
        let bad_digest = f
            .call(
                Method::POST,
                "/v2/a/blobs/uploads/?digest=sha256:zz",
                &[],
                b"x".to_vec(),
            )
            .await;
        assert_eq!(bad_digest.code(), "DIGEST_INVALID");
        let no_digest = {
            let start = f
                .call(Method::POST, "/v2/a/blobs/uploads/", &[], Bytes::new())
                .await;
            let location = start.header("location").to_owned();
            f.call(Method::PUT, &location, &[], Bytes::new()).await
        };
        assert_eq!(no_digest.code(), "DIGEST_INVALID");
        let method = f.call(Method::DELETE, "/v2/", &[], Bytes::new()).await;
        assert_eq!(method.status, StatusCode::METHOD_NOT_ALLOWED);
    });
}

#[test]
fn unreachable_upstreams_are_unavailable() {
    run(async {
        let down = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let f = Fixture::with_upstreams("down", Some(down)).await;
        let digest = Digest::sha256_of(b"x");
        for answer in [
            f.call(
                Method::HEAD,
                &format!("/v2/a/blobs/{digest}"),
                &[],
                Bytes::new(),
            )
            .await,
            f.get("/v2/a/manifests/latest").await,
            f.get("/v2/a/tags/list").await,
            f.get("/v2/_catalog").await,
            f.call(
                Method::POST,
                &format!("/v2/a/blobs/uploads/?digest={digest}"),
                &[],
                b"x".to_vec(),
            )
            .await,
        ] {
            assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        }
        let head = f
            .call(
                Method::POST,
                &format!("/v2/a/blobs/uploads/?digest={digest}"),
                &[],
                b"x".to_vec(),
            )
            .await;
        assert_eq!(head.code(), "UNAVAILABLE");
    });
}
