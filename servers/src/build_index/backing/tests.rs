#![allow(clippy::unwrap_used)]

use std::future::Future;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use event_listener::Event;

use super::*;
use crate::backend::local::LocalBackend;
use crate::backend::{Backend, BackendFuture, ByteStream, Page, PutSource, tag_object};
use crate::build_index::OCI_MANIFEST;

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("shoal-backing-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn run<F: Future>(f: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(f)
}

/// A local directory posing as a backend: read-only (an upstream) or not, unreachable on
/// demand, its tag gets counted and, while `held`, kept waiting.
#[derive(Debug)]
struct Fake {
    inner: LocalBackend,
    read_only: bool,
    unreachable: AtomicBool,
    tag_gets: AtomicUsize,
    held: AtomicBool,
    released: Event,
}

impl Fake {
    fn new(root: &std::path::Path, read_only: bool) -> Arc<Fake> {
        Arc::new(Fake {
            inner: LocalBackend::new(root).unwrap(),
            read_only,
            unreachable: AtomicBool::new(false),
            tag_gets: AtomicUsize::new(0),
            held: AtomicBool::new(false),
            released: Event::new(),
        })
    }

    fn release(&self) {
        self.held.store(false, Ordering::SeqCst);
        self.released.notify(usize::MAX);
    }

    /// Stores an object directly (as the origin's write-back or an upstream would).
    async fn store(&self, key: &Key, bytes: Vec<u8>) {
        let len = bytes.len() as u64;
        let source = PutSource::Stream(ByteStream::from_bytes(bytes.into()));
        self.inner.put(key, source, len).await.unwrap();
    }

    async fn remove(&self, key: &Key) {
        self.inner.delete(key).await.unwrap();
    }
}

impl Backend for Fake {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        self.inner.stat(key)
    }
    fn get<'a>(&'a self, key: &'a Key, range: Option<Range<u64>>) -> BackendFuture<'a, ByteStream> {
        Box::pin(async move {
            if key.as_tag().is_some() {
                self.tag_gets.fetch_add(1, Ordering::SeqCst);
            }
            if self.unreachable.load(Ordering::SeqCst) {
                return Err(BackendError::unavailable("unreachable"));
            }
            if key.as_tag().is_some() {
                loop {
                    let listener = self.released.listen();
                    if !self.held.load(Ordering::SeqCst) {
                        break;
                    }
                    listener.await;
                }
            }
            self.inner.get(key, range).await
        })
    }
    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()> {
        if self.read_only {
            return Box::pin(async { Err(BackendError::new(ErrorKind::Unsupported, "read-only")) });
        }
        self.inner.put(key, source, len)
    }
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        page: PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        if self.unreachable.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BackendError::unavailable("unreachable")) });
        }
        self.inner.list(namespace, prefix, page)
    }
    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()> {
        self.inner.delete(key)
    }
    fn check(&self) -> BackendFuture<'_, ()> {
        self.inner.check()
    }
    fn read_only(&self) -> bool {
        self.read_only
    }
}

/// A manifest (distinct per `seed`) and its digest.
fn manifest(seed: u8) -> (Vec<u8>, Digest) {
    let config = Digest::sha256_of(&[seed]);
    let bytes = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config}","size":1}},"layers":[]}}"#
    )
    .into_bytes();
    let digest = Digest::sha256_of(&bytes);
    (bytes, digest)
}

/// Puts `repo:tag` → manifest `seed` in the fake, manifest included.
async fn tag_upstream(fake: &Fake, repo: &str, tag: &str, seed: u8) -> Digest {
    let (bytes, digest) = manifest(seed);
    fake.store(&Key::blob(repo, &digest).unwrap(), bytes).await;
    fake.store(&Key::tag(repo, tag).unwrap(), tag_object(&digest).to_vec())
        .await;
    digest
}

struct Index {
    backing: Backing,
    now: Arc<Mutex<SystemTime>>,
}

impl Index {
    fn open(scratch: &Scratch, fake: &Arc<Fake>) -> Index {
        let root = scratch.0.join("index");
        let (store, _) = TagStore::open(&root).unwrap();
        let backends = Arc::new(Backends::single(Arc::clone(fake) as Arc<dyn Backend>));
        let now = Arc::new(Mutex::new(SystemTime::now()));
        let clock = {
            let now = Arc::clone(&now);
            Clock::new(move || *now.lock().unwrap())
        };
        let config = BackingConfig {
            upstream_tag_ttl: Duration::from_secs(60),
            ..BackingConfig::default()
        };
        let backing = Backing::open(&root, Arc::new(store), backends, config, clock).unwrap();
        Index { backing, now }
    }

    fn advance(&self, by: Duration) {
        *self.now.lock().unwrap() += by;
    }

    async fn digest(&self, repo: &str, tag: &str) -> Option<Digest> {
        self.backing
            .get(repo, tag)
            .await
            .unwrap()
            .map(|record| record.digest)
    }
}

#[test]
fn a_missing_tag_is_read_back_once_for_concurrent_misses_with_its_membership() {
    let scratch = Scratch::new("read-back");
    let fake = Fake::new(&scratch.0.join("backend"), false);
    let index = Index::open(&scratch, &fake);
    run(async {
        let digest = tag_upstream(&fake, "a/b", "v1", 1).await;
        fake.held.store(true, Ordering::SeqCst);
        let backing = &index.backing;
        let gets = futures_util::future::join_all((0..8).map(|_| backing.get("a/b", "v1")));
        let release = async {
            // Every caller is on its way meanwhile; the count below holds whatever the timing
            // (a late caller finds the tag stored).
            compio::time::sleep(Duration::from_millis(50)).await;
            fake.release();
        };
        let (results, ()) = futures_util::join!(gets, release);
        for result in results {
            let record = result.unwrap().unwrap();
            assert_eq!(record.digest, digest);
            assert_eq!(record.media_type, OCI_MANIFEST);
            assert!(!record.from_upstream);
        }
        assert_eq!(fake.tag_gets.load(Ordering::SeqCst), 1);
        // Stored: the tag and the manifest's membership, with its size.
        let store = backing.store();
        assert_eq!(store.get("a/b", "v1").unwrap().unwrap().digest, digest);
        let member = store.manifest("a/b", &digest).unwrap().unwrap();
        assert_eq!(member.media_type, OCI_MANIFEST);
        assert_eq!(member.size, Some(manifest(1).0.len() as u64));
        // Later reads are local.
        assert_eq!(index.digest("a/b", "v1").await, Some(digest));
        assert_eq!(fake.tag_gets.load(Ordering::SeqCst), 1);
        // A tag nowhere is none.
        assert_eq!(index.digest("a/b", "nope").await, None);
    });
}

#[test]
fn a_tag_with_an_undelivered_change_is_never_read_back() {
    let scratch = Scratch::new("dirty");
    let fake = Fake::new(&scratch.0.join("backend"), false);
    let index = Index::open(&scratch, &fake);
    run(async {
        tag_upstream(&fake, "a/b", "v1", 1).await;
        // Deleted here; the driver is not running, so the backend still has it.
        let (sync, store) = (index.backing.sync(), index.backing.store());
        sync.write(|marks| {
            marks.mark("a/b", "v1")?;
            store.delete("a/b", "v1")
        })
        .unwrap();
        assert_eq!(index.digest("a/b", "v1").await, None);
        assert_eq!(fake.tag_gets.load(Ordering::SeqCst), 0);
    });
}

#[test]
fn what_the_backend_holds_is_checked_before_it_is_stored() {
    let scratch = Scratch::new("checked");
    let fake = Fake::new(&scratch.0.join("backend"), false);
    let index = Index::open(&scratch, &fake);
    run(async {
        // A tag object that is not a digest.
        fake.store(&Key::tag("a", "garbage").unwrap(), b"latest".to_vec())
            .await;
        let error = index.backing.get("a", "garbage").await.unwrap_err();
        assert!(
            matches!(&error, BackedError::Backend(e) if e.kind == ErrorKind::Invalid),
            "{error}"
        );
        // A manifest whose bytes do not hash to the tag's digest.
        let (_, digest) = manifest(1);
        let (other, _) = manifest(2);
        fake.store(&Key::blob("a", &digest).unwrap(), other).await;
        fake.store(
            &Key::tag("a", "forged").unwrap(),
            tag_object(&digest).to_vec(),
        )
        .await;
        let error = index.backing.get("a", "forged").await.unwrap_err();
        assert!(error.to_string().contains("do not hash"), "{error}");
        // A manifest not (yet) in the backend: try again later.
        let (_, missing) = manifest(3);
        fake.store(
            &Key::tag("a", "early").unwrap(),
            tag_object(&missing).to_vec(),
        )
        .await;
        let error = index.backing.get("a", "early").await.unwrap_err();
        assert!(
            matches!(&error, BackedError::Backend(e) if e.is_retryable()),
            "{error}"
        );
        // An unreachable backend: the same.
        fake.unreachable.store(true, Ordering::SeqCst);
        let error = index.backing.get("a", "other").await.unwrap_err();
        assert!(
            matches!(&error, BackedError::Backend(e) if e.is_retryable()),
            "{error}"
        );
        // Nothing was stored.
        let store = index.backing.store();
        for tag in ["garbage", "forged", "early", "other"] {
            assert_eq!(store.get("a", tag).unwrap(), None, "{tag}");
        }
        assert_eq!(store.manifest("a", &digest).unwrap(), None);
    });
}

#[test]
fn a_learned_upstream_tag_is_re_resolved_after_its_ttl_on_a_fake_clock() {
    let scratch = Scratch::new("ttl");
    let fake = Fake::new(&scratch.0.join("upstream"), true);
    let index = Index::open(&scratch, &fake);
    let gets = || fake.tag_gets.load(Ordering::SeqCst);
    run(async {
        let one = tag_upstream(&fake, "hub/app", "latest", 1).await;
        let record = index
            .backing
            .get("hub/app", "latest")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(record.digest, one);
        assert!(record.from_upstream);
        assert_eq!(gets(), 1);
        // Within the TTL: served locally, even though the upstream moved.
        let two = tag_upstream(&fake, "hub/app", "latest", 2).await;
        index.advance(Duration::from_secs(59));
        assert_eq!(index.digest("hub/app", "latest").await, Some(one));
        assert_eq!(gets(), 1);
        // Past it: resolved again, the new digest stored (with its membership).
        index.advance(Duration::from_secs(1));
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 2);
        let store = index.backing.store();
        assert!(
            store
                .get("hub/app", "latest")
                .unwrap()
                .unwrap()
                .from_upstream
        );
        assert!(store.manifest("hub/app", &two).unwrap().is_some());
        // Confirmed unchanged: another TTL without asking.
        index.advance(Duration::from_secs(61));
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 3);
        index.advance(Duration::from_secs(30));
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 3);
        // The upstream unreachable past the TTL: the cached tag is served, and the upstream
        // is not asked again on every GET.
        fake.unreachable.store(true, Ordering::SeqCst);
        index.advance(Duration::from_secs(31));
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 4);
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 4);
        fake.unreachable.store(false, Ordering::SeqCst);
        // The upstream drops the tag: forgotten here once it is stale.
        fake.remove(&Key::tag("hub/app", "latest").unwrap()).await;
        assert_eq!(index.digest("hub/app", "latest").await, Some(two));
        assert_eq!(gets(), 4);
        index.advance(Duration::from_secs(60));
        assert_eq!(index.digest("hub/app", "latest").await, None);
        assert_eq!(gets(), 5);
        assert_eq!(store.get("hub/app", "latest").unwrap(), None);
        // A clock that went backwards makes a learned tag stale, not fresh for longer.
        let three = tag_upstream(&fake, "hub/app", "latest", 3).await;
        assert_eq!(index.digest("hub/app", "latest").await, Some(three));
        let before = gets();
        *index.now.lock().unwrap() -= Duration::from_secs(3600);
        assert_eq!(index.digest("hub/app", "latest").await, Some(three));
        assert_eq!(gets(), before + 1);
    });
}

#[test]
fn a_tag_pushed_to_a_pull_through_repository_is_local_and_shadows_the_upstream() {
    let scratch = Scratch::new("pushed");
    let fake = Fake::new(&scratch.0.join("upstream"), true);
    let index = Index::open(&scratch, &fake);
    run(async {
        tag_upstream(&fake, "hub/app", "latest", 1).await;
        let (_, pushed) = manifest(9);
        let (sync, store) = (index.backing.sync(), index.backing.store());
        sync.write(|marks| {
            marks.mark("hub/app", "latest")?;
            store.put("hub/app", "latest", pushed, OCI_MANIFEST, None)
        })
        .unwrap();
        assert!(
            sync.is_empty(),
            "nothing to write through to a read-only backend"
        );
        index.advance(Duration::from_secs(3600));
        assert_eq!(index.digest("hub/app", "latest").await, Some(pushed));
        assert_eq!(fake.tag_gets.load(Ordering::SeqCst), 0);
        // Deleted here: the upstream's tag shows again.
        store.delete("hub/app", "latest").unwrap();
        assert_eq!(index.digest("hub/app", "latest").await, Some(manifest(1).1));
    });
}

#[test]
fn upstream_tag_freshness() {
    let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
    let ttl = Duration::from_secs(60);
    let check = |confirmed, now, expected| {
        assert_eq!(
            upstream_tag_fresh(confirmed, now, ttl),
            expected,
            "{confirmed:?} {now:?}"
        );
    };
    check(t0, t0, true);
    check(t0, t0 + Duration::from_secs(59), true);
    check(t0, t0 + ttl, false);
    check(t0, t0 + Duration::from_secs(3600), false);
    check(t0 + Duration::from_secs(1), t0, false); // the clock went backwards
    assert!(!upstream_tag_fresh(t0, t0, Duration::ZERO));
}

#[test]
fn listing_merges_the_backends_tags_and_skips_deeper_repositories() {
    let scratch = Scratch::new("list");
    let fake = Fake::new(&scratch.0.join("backend"), false);
    let index = Index::open(&scratch, &fake);
    run(async {
        for tag in ["b", "d", "f"] {
            tag_upstream(&fake, "a/b", tag, 1).await;
        }
        tag_upstream(&fake, "a/b/c", "zz", 1).await; // a tag of a/b/c, not of a/b
        let (_, digest) = manifest(1);
        for tag in ["a", "d", "e"] {
            index
                .backing
                .store()
                .put("a/b", tag, digest, OCI_MANIFEST, None)
                .unwrap();
        }
        let list = |last: Option<&'static str>, n| {
            let backing = &index.backing;
            async move { backing.list_tags("a/b", last, n).await.unwrap() }
        };
        let all = list(None, None).await;
        assert_eq!(all.tags, ["a", "b", "d", "e", "f"]);
        assert_eq!(all.next, None);
        let first = list(None, Some(2)).await;
        assert_eq!(first.tags, ["a", "b"]);
        assert_eq!(first.next.as_deref(), Some("b"));
        let second = list(Some("b"), Some(2)).await;
        assert_eq!(second.tags, ["d", "e"]);
        let third = list(Some("e"), Some(2)).await;
        assert_eq!(third.tags, ["f"]);
        // Only in the backend (a wiped disk): still listed.
        let only_remote = index.backing.list_tags("a/b/c", None, None).await.unwrap();
        assert_eq!(only_remote.tags, ["zz"]);
        // Nowhere: unknown.
        let error = index.backing.list_tags("x", None, None).await.unwrap_err();
        assert!(matches!(
            error,
            BackedError::Index(IndexError::RepositoryUnknown { .. })
        ));
        // The backend unreachable: the local tags.
        fake.unreachable.store(true, Ordering::SeqCst);
        assert_eq!(list(None, None).await.tags, ["a", "d", "e"]);
    });
}

#[test]
fn merged_pages() {
    let page = |tags: &[&str]| tags.iter().map(|t| t.to_string()).collect::<Vec<_>>();
    let merged = merge_pages(page(&["a", "c"]), false, page(&["b", "c"]), false, 10);
    assert_eq!((merged.tags, merged.next), (page(&["a", "b", "c"]), None));
    let merged = merge_pages(page(&["a", "c"]), false, page(&["b", "d"]), false, 3);
    assert_eq!(merged.tags, page(&["a", "b", "c"]));
    assert_eq!(merged.next.as_deref(), Some("c"));
    let merged = merge_pages(page(&["a"]), true, page(&[]), false, 1);
    assert_eq!(merged.next.as_deref(), Some("a"));
    let merged = merge_pages(page(&["a"]), false, page(&["b"]), true, 5);
    assert_eq!(merged.next.as_deref(), Some("b"));
}
