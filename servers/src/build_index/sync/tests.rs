#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};

use std::future::Future;

use shoal_proto::Digest;

use super::*;
use crate::backend::local::LocalBackend;
use crate::backend::{Backend, BackendFuture, Page, read_small};

fn config() -> TagSyncConfig {
    TagSyncConfig {
        entries_max: 3,
        backoff_min: Duration::from_millis(100),
        backoff_max: Duration::from_secs(1),
    }
}

fn key(tag: &str) -> TagKey {
    ("a/b".to_owned(), tag.to_owned())
}

#[test]
fn marks_coalesce_and_the_first_due_goes_first() {
    let t0 = Instant::now();
    let mut queue = Queue::new(config());
    assert_eq!(queue.mark(&key("x"), t0), Ok(true));
    assert_eq!(
        queue.mark(&key("y"), t0 + Duration::from_millis(1)),
        Ok(true)
    );
    // Marked again: no new file, a newer generation, the same schedule.
    assert_eq!(
        queue.mark(&key("x"), t0 + Duration::from_millis(2)),
        Ok(false)
    );
    assert_eq!(
        queue.mark(&key("x"), t0 + Duration::from_millis(3)),
        Ok(false)
    );
    assert_eq!(queue.len(), 2);
    assert_eq!(queue.next(), Some((key("x"), 3, t0)));
}

#[test]
fn the_queue_is_bounded_in_tags_not_in_marks() {
    let t0 = Instant::now();
    let mut queue = Queue::new(config());
    for tag in ["a", "b", "c"] {
        assert_eq!(queue.mark(&key(tag), t0), Ok(true));
    }
    assert_eq!(queue.mark(&key("d"), t0), Err(Full));
    assert_eq!(queue.check_room(&key("d")), Err(Full));
    // A tag already dirty can always be marked again.
    assert_eq!(queue.mark(&key("a"), t0), Ok(false));
    let (k, generation, _) = queue.next().unwrap();
    assert_eq!(
        queue.settle(&k, generation, Outcome::Delivered, t0),
        Settled::Remove
    );
    assert_eq!(queue.mark(&key("d"), t0), Ok(true));
}

#[test]
fn a_delivery_clears_only_the_generation_it_read() {
    let t0 = Instant::now();
    let mut queue = Queue::new(config());
    queue.mark(&key("x"), t0).unwrap();
    let (k, generation, _) = queue.next().unwrap();
    // The tag moves while its delivery is in flight.
    queue.mark(&key("x"), t0).unwrap();
    let t1 = t0 + Duration::from_millis(5);
    assert_eq!(
        queue.settle(&k, generation, Outcome::Delivered, t1),
        Settled::Keep
    );
    let (k, newer, due) = queue.next().unwrap();
    assert_eq!((newer, due), (generation + 1, t1));
    assert_eq!(
        queue.settle(&k, newer, Outcome::Delivered, t1),
        Settled::Remove
    );
    assert!(queue.is_empty());
}

#[test]
fn failures_back_off_exponentially_up_to_the_cap_on_a_fake_clock() {
    let t0 = Instant::now();
    let mut queue = Queue::new(config());
    queue.mark(&key("x"), t0).unwrap();
    let mut now = t0;
    let mut delays = Vec::new();
    for _ in 0..6 {
        let (k, generation, due) = queue.next().unwrap();
        assert!(due >= now);
        now = due;
        assert_eq!(
            queue.settle(&k, generation, Outcome::Retry, now),
            Settled::Keep
        );
        delays.push((queue.next().unwrap().2 - now).as_millis());
    }
    assert_eq!(delays, [100, 200, 400, 800, 1000, 1000]);
    // Marking a failing tag again does not hammer the backend: the schedule stays.
    let before = queue.next().unwrap().2;
    queue.mark(&key("x"), now).unwrap();
    assert_eq!(queue.next().unwrap().2, before);
    // Once delivered, it is gone; a later mark starts afresh.
    let (k, generation, due) = queue.next().unwrap();
    assert_eq!(
        queue.settle(&k, generation, Outcome::Delivered, due),
        Settled::Remove
    );
    queue.mark(&key("x"), due).unwrap();
    assert_eq!(queue.next().unwrap().2, due);
}

#[test]
fn a_mark_that_can_never_be_delivered_is_set_aside_unless_newer() {
    let t0 = Instant::now();
    let mut queue = Queue::new(config());
    queue.mark(&key("x"), t0).unwrap();
    let (k, generation, _) = queue.next().unwrap();
    queue.mark(&key("x"), t0).unwrap();
    assert_eq!(
        queue.settle(&k, generation, Outcome::GiveUp, t0),
        Settled::Keep
    );
    let (k, generation, _) = queue.next().unwrap();
    assert_eq!(
        queue.settle(&k, generation, Outcome::GiveUp, t0),
        Settled::SetAside
    );
    assert!(queue.is_empty());
}

/// The whole queue against a backend that fails while `down` is set, with a local "store"
/// that is a plain map: the backend ends with each tag's latest local state, whatever the
/// order of puts, deletes and outages.
#[test]
fn the_backend_ends_with_the_latest_local_state() {
    use std::collections::HashMap;
    let t0 = Instant::now();
    let mut queue = Queue::new(TagSyncConfig {
        entries_max: 10,
        ..config()
    });
    let mut local: HashMap<TagKey, &'static str> = HashMap::new();
    let mut backend: HashMap<TagKey, &'static str> = HashMap::new();
    let mut now = t0;
    fn deliver(
        queue: &mut Queue,
        local: &HashMap<TagKey, &'static str>,
        backend: &mut HashMap<TagKey, &'static str>,
        down: bool,
        now: Instant,
    ) {
        while let Some((k, generation, due)) = queue.next() {
            if due > now {
                break;
            }
            let outcome = if down {
                Outcome::Retry
            } else {
                match local.get(&k) {
                    Some(value) => backend.insert(k.clone(), value),
                    None => backend.remove(&k),
                };
                Outcome::Delivered
            };
            queue.settle(&k, generation, outcome, now);
        }
    }
    // Up: put x=1.
    local.insert(key("x"), "1");
    queue.mark(&key("x"), now).unwrap();
    deliver(&mut queue, &local, &mut backend, false, now);
    assert_eq!(backend.get(&key("x")), Some(&"1"));
    // Down: x moves three times, y is put then deleted, z is put.
    for value in ["2", "3", "4"] {
        local.insert(key("x"), value);
        queue.mark(&key("x"), now).unwrap();
        deliver(&mut queue, &local, &mut backend, true, now);
        now += Duration::from_millis(50);
    }
    local.insert(key("y"), "1");
    queue.mark(&key("y"), now).unwrap();
    deliver(&mut queue, &local, &mut backend, true, now);
    local.remove(&key("y"));
    queue.mark(&key("y"), now).unwrap();
    local.insert(key("z"), "1");
    queue.mark(&key("z"), now).unwrap();
    deliver(&mut queue, &local, &mut backend, true, now);
    // Back up: after the longest back-off everything is delivered once.
    now += Duration::from_secs(2);
    deliver(&mut queue, &local, &mut backend, false, now);
    assert!(queue.is_empty());
    assert_eq!(backend.get(&key("x")), Some(&"4"));
    assert_eq!(backend.get(&key("y")), None);
    assert_eq!(backend.get(&key("z")), Some(&"1"));
}

// ---- TagSync with files, a store and a backend ----

struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("shoal-tag-sync-{name}-{}", std::process::id()));
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

/// A local backend that refuses every put and delete while `down` is set, counting them.
#[derive(Debug)]
struct Flaky {
    inner: LocalBackend,
    down: std::sync::atomic::AtomicBool,
    writes: AtomicUsize,
}

impl Backend for Flaky {
    fn describe(&self) -> &str {
        self.inner.describe()
    }
    fn stat<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, Option<u64>> {
        self.inner.stat(key)
    }
    fn get<'a>(
        &'a self,
        key: &'a Key,
        range: Option<std::ops::Range<u64>>,
    ) -> BackendFuture<'a, ByteStream> {
        self.inner.get(key, range)
    }
    fn put<'a>(&'a self, key: &'a Key, source: PutSource, len: u64) -> BackendFuture<'a, ()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BackendError::unavailable("down")) });
        }
        self.inner.put(key, source, len)
    }
    fn list<'a>(
        &'a self,
        namespace: &'a str,
        prefix: &'a str,
        page: crate::backend::PageRequest<'a>,
    ) -> BackendFuture<'a, Page> {
        self.inner.list(namespace, prefix, page)
    }
    fn delete<'a>(&'a self, key: &'a Key) -> BackendFuture<'a, ()> {
        self.writes.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(BackendError::unavailable("down")) });
        }
        self.inner.delete(key)
    }
    fn check(&self) -> BackendFuture<'_, ()> {
        self.inner.check()
    }
}

fn run<F: Future>(f: F) -> F::Output {
    compio::runtime::Runtime::new().unwrap().block_on(f)
}

async fn object(backends: &Backends, tag: &str) -> Option<String> {
    let key = Key::tag("a/b", tag).unwrap();
    match read_small(backends, &key, 1024).await {
        Ok(bytes) => Some(String::from_utf8(bytes.to_vec()).unwrap()),
        Err(error) if error.is_not_found() => None,
        Err(error) => panic!("{error}"),
    }
}

const MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

#[test]
fn journaled_writes_survive_an_outage_and_a_restart_and_deliver_the_latest_state() {
    let scratch = Scratch::new("restart");
    let flaky = Arc::new(Flaky {
        inner: LocalBackend::new(&scratch.0.join("backend")).unwrap(),
        down: true.into(),
        writes: AtomicUsize::new(0),
    });
    let backends = Arc::new(Backends::single(flaky.clone()));
    let root = scratch.0.join("index");
    let quick = TagSyncConfig {
        entries_max: 100,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(20),
    };
    let (one, two) = (Digest::sha256_of(b"one"), Digest::sha256_of(b"two"));
    {
        let (store, _) = TagStore::open(&root).unwrap();
        let sync = TagSync::open(&root, Arc::clone(&backends), quick.clone()).unwrap();
        // While the backend is down: x moves twice, y is put then deleted.
        for (tag, digest) in [("x", one), ("x", two), ("y", one)] {
            sync.write(|marks| {
                marks.mark("a/b", tag)?;
                store.put("a/b", tag, digest, MEDIA_TYPE, None)
            })
            .unwrap();
        }
        sync.write(|marks| {
            marks.mark("a/b", "y")?;
            store.delete("a/b", "y")
        })
        .unwrap();
        assert_eq!(sync.len(), 2);
        assert!(sync.is_dirty("a/b", "x") && sync.is_dirty("a/b", "y"));
        let sync = Arc::new(sync);
        let store = Arc::new(store);
        run(async {
            let driver = compio::runtime::spawn(Arc::clone(&sync).run(Arc::clone(&store)));
            // It tries (and fails) a few times; then the process "stops".
            let deadline = Instant::now() + Duration::from_secs(30);
            while flaky.writes.load(Ordering::SeqCst) < 4 && Instant::now() < deadline {
                compio::time::sleep(Duration::from_millis(5)).await;
            }
            assert!(flaky.writes.load(Ordering::SeqCst) >= 4);
            drop(driver);
        });
        assert_eq!(sync.len(), 2);
    }
    // Restarted with the backend back (y holding an older value there, say from before):
    // the journal delivers each tag's latest state once.
    flaky.down.store(false, Ordering::SeqCst);
    run(async {
        let old = tag_object(&one);
        let len = old.len() as u64;
        let key = Key::tag("a/b", "y").unwrap();
        let source = PutSource::Stream(ByteStream::from_bytes(old));
        backends.put(&key, source, len).await.unwrap();
    });
    let (store, _) = TagStore::open(&root).unwrap();
    let sync = Arc::new(TagSync::open(&root, Arc::clone(&backends), quick).unwrap());
    assert_eq!(sync.len(), 2);
    run(async {
        let driver = compio::runtime::spawn(Arc::clone(&sync).run(Arc::new(store)));
        assert!(sync.wait_empty(Duration::from_secs(30)).await);
        drop(driver);
        assert_eq!(object(&backends, "x").await, Some(two.to_string()));
        assert_eq!(object(&backends, "y").await, None);
    });
    let left: Vec<_> = std::fs::read_dir(root.join(SYNC_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn tags_of_read_only_or_unrouted_repositories_are_not_marked() {
    let scratch = Scratch::new("routes");
    let file = crate::config::backends::BackendsFile {
        backend: toml::from_str::<crate::config::backends::BackendsFile>(&format!(
            "[[backend]]\nnamespace = \"hub/**\"\nkind = \"http\"\nurl = \"http://127.0.0.1:9/\"\n\
             [[backend]]\nnamespace = \"team/**\"\nkind = \"local\"\nroot = \"{}\"\n",
            scratch.0.join("backend").display()
        ))
        .unwrap()
        .backend,
    };
    let backends = Arc::new(Backends::build(&file).unwrap());
    let root = scratch.0.join("index");
    let (store, _) = TagStore::open(&root).unwrap();
    let sync = TagSync::open(&root, backends, config()).unwrap();
    let digest = Digest::sha256_of(b"m");
    for repo in ["hub/library/alpine", "other/app", "team/app"] {
        sync.write(|marks| {
            marks.mark(repo, "v1")?;
            store.put(repo, "v1", digest, MEDIA_TYPE, None)
        })
        .unwrap();
    }
    assert!(!sync.is_dirty("hub/library/alpine", "v1"));
    assert!(!sync.is_dirty("other/app", "v1"));
    assert!(sync.is_dirty("team/app", "v1"));
    assert_eq!(sync.len(), 1);
}

#[test]
fn a_full_journal_refuses_the_write_and_changes_nothing() {
    let scratch = Scratch::new("full");
    let backend = Arc::new(LocalBackend::new(&scratch.0.join("backend")).unwrap());
    let backends = Arc::new(Backends::single(backend));
    let root = scratch.0.join("index");
    let (store, _) = TagStore::open(&root).unwrap();
    let sync = TagSync::open(&root, backends, config()).unwrap();
    let digest = Digest::sha256_of(b"m");
    for tag in ["a", "b", "c"] {
        sync.write(|marks| {
            marks.mark("a/b", tag)?;
            store.put("a/b", tag, digest, MEDIA_TYPE, None)
        })
        .unwrap();
    }
    let error = sync
        .write(|marks| {
            marks.mark("a/b", "d")?;
            store.put("a/b", "d", digest, MEDIA_TYPE, None)
        })
        .unwrap_err();
    assert!(matches!(error, IndexError::Journal { .. }), "{error}");
    assert!(error.to_string().contains("3 tags are waiting"), "{error}");
    assert_eq!(store.get("a/b", "d").unwrap(), None);
    // A tag already waiting can still move.
    sync.write(|marks| {
        marks.mark("a/b", "a")?;
        store.put("a/b", "a", Digest::sha256_of(b"n"), MEDIA_TYPE, None)
    })
    .unwrap();
}

#[test]
fn a_read_back_is_stored_only_if_no_write_raced_it() {
    let scratch = Scratch::new("epoch");
    let backend = Arc::new(LocalBackend::new(&scratch.0.join("backend")).unwrap());
    let backends = Arc::new(Backends::single(backend));
    let root = scratch.0.join("index");
    let (store, _) = TagStore::open(&root).unwrap();
    let sync = TagSync::open(&root, backends, config()).unwrap();
    let digest = Digest::sha256_of(b"m");
    let epoch = sync.epoch();
    assert_eq!(
        sync.store_read_back(epoch, "a/b", "x", || Ok(1)).unwrap(),
        Some(1)
    );
    // Any tag write since the read began: not stored.
    sync.write(|marks| {
        marks.mark("a/b", "y")?;
        store.put("a/b", "y", digest, MEDIA_TYPE, None)
    })
    .unwrap();
    assert_eq!(
        sync.store_read_back(epoch, "a/b", "x", || Ok(1)).unwrap(),
        None
    );
    // A dirty tag is never read back, even with a fresh epoch.
    let epoch = sync.epoch();
    assert_eq!(
        sync.store_read_back(epoch, "a/b", "y", || Ok(1)).unwrap(),
        None
    );
    assert_eq!(
        sync.store_read_back(epoch, "a/b", "x", || Ok(1)).unwrap(),
        Some(1)
    );
}

#[test]
fn an_unreadable_journal_entry_is_set_aside_at_open() {
    let scratch = Scratch::new("corrupt");
    let backend = Arc::new(LocalBackend::new(&scratch.0.join("backend")).unwrap());
    let backends = Arc::new(Backends::single(backend));
    let root = scratch.0.join("index");
    let dir = root.join(SYNC_DIR);
    std::fs::create_dir_all(&dir).unwrap();
    let stem = file_stem(&key("x"));
    std::fs::write(dir.join(format!("{stem}.dirty")), b"{\"repository\":").unwrap();
    // A whole entry under another tag's name is refused too.
    let other = file_stem(&key("y"));
    std::fs::write(
        dir.join(format!("{other}.dirty")),
        br#"{"repository":"a/b","tag":"x"}"#,
    )
    .unwrap();
    std::fs::write(dir.join(".tmp-zzz"), b"half").unwrap();
    let sync = TagSync::open(&root, backends, config()).unwrap();
    assert!(sync.is_empty());
    assert!(dir.join(format!("{stem}.corrupt")).exists());
    assert!(dir.join(format!("{other}.corrupt")).exists());
    assert!(!dir.join(".tmp-zzz").exists());
}
