//! The read-only upstream backends against real servers.
//!
//! - Registry: Debian's `docker-registry` (CNCF distribution), filled by `skopeo copy` from an
//!   OCI layout; blobs, a manifest by digest and a tag resolved through the backend under a
//!   namespace mapping; eight concurrent misses make one upstream GET (its access log).
//! - Token auth: a second `docker-registry` over the same storage with distribution's own
//!   token auth (`auth.token`, RS256 tokens checked against a certificate bundle). Its token
//!   endpoint is a small server in this test (distribution ships none), which checks the
//!   basic credentials the backend sends, signs tokens with `openssl` and counts requests:
//!   the Bearer challenge is answered, tokens are cached, wrong credentials are a clear error
//!   that does not quote the password.
//! - HTTP: `python3 -m http.server` serving a directory: stat, whole and ranged gets (that
//!   server ignores `Range`, so the backend cuts the range itself), a blob whose bytes do not
//!   match its digest is refused.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use sha2::Digest as _;
use shoal_perf::oci_layout::Layout;
use shoal_perf::procs::{Proc, Scratch, docker_registry, requests_in_log};
use shoal_proto::types::Digest;
use shoal_servers::backend::dedup::{Flights, fetch_to_file};
use shoal_servers::backend::{
    Backends, ByteStream, ErrorKind, Key, PageRequest, PutSource, parse_tag_object,
};
use shoal_servers::config::backends::BackendsFile;
use shoal_servers::http::{Handler, LocalBody};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(addr: SocketAddr, proc: &Proc) {
    let deadline = Instant::now() + common::WAIT_MAX;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{addr} never listened; stderr:\n{}",
            proc.stderr_tail(20)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `docker-registry serve` on `port` over `storage`, with `auth` (YAML) appended; killed on
/// drop. Its access log is `scratch/<name>.log`.
fn registry(scratch: &Scratch, name: &str, port: u16, storage: &Path, auth: &str) -> Proc {
    docker_registry(scratch, name, port, storage, auth)
        .expect("docker-registry (apt install docker-registry; .ci/run installs it)")
}

/// An image pushed with skopeo as `upstream/app:v1`; its layout's blob directory and the
/// manifest's and the big layer's digests.
struct Pushed {
    blobs: PathBuf,
    manifest: Digest,
    layer: Digest,
}

fn push_image(scratch: &Scratch, port: u16) -> Pushed {
    let dir = scratch.path("layout");
    let mut layout = Layout::new(&dir, 42).unwrap();
    let manifest = layout.image("amd64", &[3 << 20, 1000]).unwrap();
    layout.tag(&manifest, "v1");
    layout.finish().unwrap();
    let output = Command::new("skopeo")
        .args([
            "copy",
            "--preserve-digests",
            "--dest-tls-verify=false",
            &format!("oci:{}:v1", dir.display()),
            &format!("docker://127.0.0.1:{port}/upstream/app:v1"),
        ])
        .output()
        .unwrap();
    assert!(output.status.success(), "skopeo copy: {output:?}");
    let manifest_bytes = std::fs::read(
        dir.join("blobs/sha256")
            .join(manifest.digest.trim_start_matches("sha256:")),
    )
    .unwrap();
    let parsed: serde_json::Value = serde_json::from_slice(&manifest_bytes).unwrap();
    let layer = parsed["layers"][0]["digest"].as_str().unwrap();
    Pushed {
        blobs: dir.join("blobs/sha256"),
        manifest: Digest::parse(&manifest.digest).unwrap(),
        layer: Digest::parse(layer).unwrap(),
    }
}

fn blob_bytes(pushed: &Pushed, digest: &Digest) -> Vec<u8> {
    std::fs::read(pushed.blobs.join(digest.encoded())).unwrap()
}

fn backends_from(text: &str) -> BackendsFile {
    shoal_servers::config::parse(Path::new("backends.toml"), text).unwrap()
}

fn registry_config(port: u16, credentials: &str) -> BackendsFile {
    backends_from(&format!(
        r#"
        [[backend]]
        namespace = "mirror/**"
        kind = "registry"
        url = "http://127.0.0.1:{port}"
        strip_prefix = "mirror/"
        upstream_prefix = "upstream/"
        {credentials}
        "#
    ))
}

async fn read_all(mut stream: ByteStream) -> Result<Vec<u8>, shoal_servers::backend::BackendError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next_chunk().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[test]
fn an_image_only_upstream_is_pulled_through() {
    let scratch = Scratch::new("backend-registry").unwrap();
    let port = free_port();
    let _registry = registry(&scratch, "registry", port, &scratch.path("storage"), "");
    let pushed = push_image(&scratch, port);
    let layer = blob_bytes(&pushed, &pushed.layer);
    let manifest = blob_bytes(&pushed, &pushed.manifest);
    common::run(async {
        let backends = Backends::start(&registry_config(port, "")).await.unwrap();
        let layer_key = Key::blob("mirror/app", &pushed.layer).unwrap();
        assert_eq!(
            backends.stat(&layer_key).await.unwrap(),
            Some(layer.len() as u64)
        );
        assert!(
            read_all(backends.get(&layer_key, None).await.unwrap())
                .await
                .unwrap()
                == layer
        );
        let range = 1_000_000..1_000_100;
        let got = backends.get(&layer_key, Some(range.clone())).await.unwrap();
        assert_eq!(got.len(), 100);
        assert!(read_all(got).await.unwrap() == layer[1_000_000..1_000_100]);

        // The manifest by digest (a registry keeps it apart from blobs).
        let manifest_key = Key::blob("mirror/app", &pushed.manifest).unwrap();
        assert_eq!(
            backends.stat(&manifest_key).await.unwrap(),
            Some(manifest.len() as u64)
        );
        let got = read_all(backends.get(&manifest_key, None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(got, manifest);

        // The tag, resolved upstream.
        let tag_key = Key::tag("mirror/app", "v1").unwrap();
        let tag = read_all(backends.get(&tag_key, None).await.unwrap())
            .await
            .unwrap();
        assert_eq!(parse_tag_object(&tag).unwrap(), pushed.manifest);
        let tags = backends
            .list("mirror/app", "tags/mirror/app", PageRequest::first(10))
            .await
            .unwrap();
        let paths: Vec<&str> = tags.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["tags/mirror/app/v1"]);

        // What is not upstream.
        let absent = Key::blob("mirror/app", &Digest::Sha256([7; 32])).unwrap();
        assert_eq!(backends.stat(&absent).await.unwrap(), None);
        assert!(
            backends
                .get(&absent, None)
                .await
                .unwrap_err()
                .is_not_found()
        );
        let no_tag = Key::tag("mirror/app", "v9").unwrap();
        assert_eq!(backends.stat(&no_tag).await.unwrap(), None);
        let elsewhere = Key::blob("mirror/other", &pushed.layer).unwrap();
        assert_eq!(backends.stat(&elsewhere).await.unwrap(), None);
        // Outside the namespace: no backend.
        let error = backends
            .stat(&Key::blob("library/app", &pushed.layer).unwrap())
            .await
            .unwrap_err();
        assert!(error.message.contains("library/app"), "{error}");

        // Read-only.
        let error = backends
            .put(
                &layer_key,
                PutSource::Stream(ByteStream::from_bytes(bytes::Bytes::from_static(b"x"))),
                1,
            )
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported, "{error}");
        let error = backends.delete(&layer_key).await.unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported, "{error}");
    });

    // An unreachable registry fails the start-up, naming it.
    let closed = free_port();
    let error = common::run(Backends::start(&registry_config(closed, ""))).unwrap_err();
    assert_eq!(error.kind, ErrorKind::Config, "{error}");
    assert!(
        error.to_string().contains(&format!("127.0.0.1:{closed}")),
        "{error}"
    );
}

#[test]
fn eight_concurrent_misses_make_one_upstream_get() {
    let scratch = Scratch::new("backend-registry-dedup").unwrap();
    let port = free_port();
    let _registry = registry(&scratch, "registry", port, &scratch.path("storage"), "");
    let pushed = push_image(&scratch, port);
    let layer = blob_bytes(&pushed, &pushed.layer);
    common::run(async {
        let backends = Rc::new(Backends::start(&registry_config(port, "")).await.unwrap());
        let flights = Rc::new(Flights::<u64>::new(64));
        let key = Key::blob("mirror/app", &pushed.layer).unwrap();
        let dest = scratch.path("fetched");
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (backends, flights, key, dest) =
                    (backends.clone(), flights.clone(), key.clone(), dest.clone());
                compio::runtime::spawn(async move {
                    fetch_to_file(&flights, &backends, &key, &dest).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap().unwrap(), layer.len() as u64);
        }
        assert!(std::fs::read(&dest).unwrap() == layer);
    });
    let path = format!("/v2/upstream/app/blobs/{}", pushed.layer);
    // The server logs a request once it has answered it: wait for the line, then count.
    let log = scratch.path("registry.log");
    common::wait_until("the access log line", || {
        requests_in_log(&log, "GET", &path) >= 1
    });
    assert_eq!(requests_in_log(&log, "GET", &path), 1);
}

/// Standard or URL-safe base64 (unpadded for URL-safe, as JWTs use it).
fn base64(bytes: &[u8], url: bool) -> String {
    let alphabet: &[u8; 64] = if url {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    } else {
        b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    };
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                out.push(alphabet[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else if !url {
                out.push('=');
            }
        }
    }
    out
}

/// The token endpoint: checks basic credentials, grants the scope asked, signs an RS256 JWT
/// with `openssl` (the certificate travels in `x5c`), counts requests.
struct TokenServer {
    dir: PathBuf,
    cert_der: Vec<u8>,
    requests: Arc<AtomicUsize>,
}

const SERVICE: &str = "shoal-test-registry";
const ISSUER: &str = "shoal-test-issuer";
const USER: &str = "robot";
const PASSWORD: &str = "pa55-Sekrit-word";

impl TokenServer {
    fn sign(&self, input: &str) -> Vec<u8> {
        let n = self.requests.load(Ordering::SeqCst);
        let path = self.dir.join(format!("signing-input-{n}"));
        std::fs::write(&path, input).unwrap();
        let output = Command::new("openssl")
            .args(["dgst", "-sha256", "-binary", "-sign"])
            .arg(self.dir.join("key.pem"))
            .arg(&path)
            .output()
            .unwrap();
        assert!(output.status.success(), "openssl dgst: {output:?}");
        output.stdout
    }

    fn token(&self, scope: &str) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let mut access = Vec::new();
        // "repository:<name>:<actions>"
        if let Some(rest) = scope.strip_prefix("repository:")
            && let Some((name, actions)) = rest.rsplit_once(':')
        {
            let actions: Vec<&str> = actions.split(',').collect();
            access
                .push(serde_json::json!({"type": "repository", "name": name, "actions": actions}));
        }
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "RS256",
            "x5c": [base64(&self.cert_der, false)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": USER,
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now - 10,
            "iat": now,
            "jti": format!("token-{}", self.requests.load(Ordering::SeqCst)),
            "access": access,
        });
        let input = format!(
            "{}.{}",
            base64(header.to_string().as_bytes(), true),
            base64(claims.to_string().as_bytes(), true)
        );
        let signature = self.sign(&input);
        format!("{input}.{}", base64(&signature, true))
    }
}

impl Handler for TokenServer {
    async fn handle(&self, request: Request<Incoming>) -> Response<LocalBody> {
        self.requests.fetch_add(1, Ordering::SeqCst);
        let expected = format!(
            "Basic {}",
            base64(format!("{USER}:{PASSWORD}").as_bytes(), false)
        );
        let authorized = request
            .headers()
            .get("authorization")
            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
        if !authorized {
            let mut response = Response::new(LocalBody::full("{\"details\":\"bad credentials\"}"));
            *response.status_mut() = StatusCode::UNAUTHORIZED;
            return response;
        }
        let query = request.uri().query().unwrap_or("");
        let mut scope = String::new();
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("scope=") {
                scope = value
                    .replace("%3A", ":")
                    .replace("%2F", "/")
                    .replace("%2C", ",");
            }
        }
        let body = serde_json::json!({"token": self.token(&scope), "expires_in": 300});
        Response::new(LocalBody::full(body.to_string()))
    }
}

#[test]
fn bearer_tokens_are_fetched_with_credentials_and_cached() {
    let scratch = Scratch::new("backend-registry-token").unwrap();
    let storage = scratch.path("storage");
    let open_port = free_port();
    let _open = registry(&scratch, "registry-open", open_port, &storage, "");
    let pushed = push_image(&scratch, open_port);
    let layer = blob_bytes(&pushed, &pushed.layer);

    let key_dir = scratch.path("keys");
    std::fs::create_dir_all(&key_dir).unwrap();
    let made = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=shoal-test-token-issuer"])
        .arg("-keyout")
        .arg(key_dir.join("key.pem"))
        .arg("-out")
        .arg(key_dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(made.status.success(), "openssl req: {made:?}");
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(key_dir.join("cert.pem"))
        .output()
        .unwrap();
    assert!(der.status.success(), "openssl x509: {der:?}");

    let requests = Arc::new(AtomicUsize::new(0));
    let token_server = {
        let (dir, cert_der, requests) = (key_dir.clone(), der.stdout.clone(), requests.clone());
        common::Served::start(move || async move {
            TokenServer {
                dir,
                cert_der,
                requests,
            }
        })
    };
    let auth = format!(
        "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    \
         rootcertbundle: {}\n",
        token_server.url("/token"),
        key_dir.join("cert.pem").display()
    );
    let port = free_port();
    let _guarded = registry(&scratch, "registry-token", port, &storage, &auth);

    let credentials = format!("username = \"{USER}\"\npassword = \"{PASSWORD}\"");
    common::run(async {
        let backends = Backends::start(&registry_config(port, &credentials))
            .await
            .unwrap();
        let key = Key::blob("mirror/app", &pushed.layer).unwrap();
        assert_eq!(backends.stat(&key).await.unwrap(), Some(layer.len() as u64));
        assert_eq!(requests.load(Ordering::SeqCst), 1, "one token fetched");
        assert!(
            read_all(backends.get(&key, None).await.unwrap())
                .await
                .unwrap()
                == layer
        );
        let tag = read_all(
            backends
                .get(&Key::tag("mirror/app", "v1").unwrap(), None)
                .await
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(parse_tag_object(&tag).unwrap(), pushed.manifest);
        assert_eq!(requests.load(Ordering::SeqCst), 1, "the token was cached");

        // Wrong credentials: a clear error that names the token endpoint, not the password.
        let wrong = format!("username = \"{USER}\"\npassword = \"not-the-Sekrit\"");
        let backends = Backends::start(&registry_config(port, &wrong))
            .await
            .unwrap();
        let error = backends.stat(&key).await.unwrap_err();
        let message = error.to_string();
        assert!(message.contains("token from"), "{message}");
        assert!(message.contains("401"), "{message}");
        assert!(!message.contains("not-the-Sekrit"), "{message}");

        // No credentials at all: the token endpoint refuses them too.
        let anonymous = Backends::start(&registry_config(port, "")).await.unwrap();
        let error = anonymous.stat(&key).await.unwrap_err();
        assert!(error.to_string().contains("401"), "{error}");
    });
}

#[test]
fn a_plain_http_server_serves_read_only() {
    let scratch = Scratch::new("backend-http").unwrap();
    let root = scratch.path("www");
    let blobs = root.join("shoal/blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let body = common::bytes(2 << 20, 11);
    let digest = Digest::Sha256(sha2::Sha256::digest(&body).into());
    std::fs::write(blobs.join(digest.encoded()), &body).unwrap();
    // A file whose bytes are not what its name says.
    let liar = Digest::Sha256(sha2::Sha256::digest(b"the truth").into());
    std::fs::write(blobs.join(liar.encoded()), b"a lie, same length").unwrap();

    let port = free_port();
    let port_text = port.to_string();
    let server = Proc::start(
        "http.server",
        Path::new("python3"),
        &[
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            root.to_str().unwrap(),
            &port_text,
        ],
        &[],
        scratch.path("http.log"),
    )
    .unwrap();
    wait_listening(SocketAddr::from(([127, 0, 0, 1], port)), &server);
    let config = backends_from(&format!(
        "[[backend]]\nnamespace = \"**\"\nkind = \"http\"\nurl = \"http://127.0.0.1:{port}/shoal\"\n"
    ));
    common::run(async {
        let backends = Backends::start(&config).await.unwrap();
        let key = Key::blob("web/app", &digest).unwrap();
        assert_eq!(backends.stat(&key).await.unwrap(), Some(body.len() as u64));
        assert!(
            read_all(backends.get(&key, None).await.unwrap())
                .await
                .unwrap()
                == body
        );
        let got = backends
            .get(&key, Some(1_500_000..1_500_010))
            .await
            .unwrap();
        assert_eq!(got.len(), 10);
        assert!(read_all(got).await.unwrap() == body[1_500_000..1_500_010]);
        let absent = Key::blob("web/app", &Digest::Sha256([1; 32])).unwrap();
        assert_eq!(backends.stat(&absent).await.unwrap(), None);
        assert!(
            backends
                .get(&absent, None)
                .await
                .unwrap_err()
                .is_not_found()
        );

        let lying = Key::blob("web/app", &liar).unwrap();
        let error = read_all(backends.get(&lying, None).await.unwrap())
            .await
            .unwrap_err();
        assert!(error.message.contains("do not match"), "{error}");

        let error = backends
            .put(&key, PutSource::File(scratch.path("none")), 1)
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported, "{error}");
        let error = backends
            .list("web/app", "blobs", PageRequest::first(1))
            .await
            .unwrap_err();
        assert_eq!(error.kind, ErrorKind::Unsupported, "{error}");
    });
}
