//! Tag store tests on real directories under the system temp dir.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use super::*;

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

/// A directory under /tmp, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir()
            .join("shoal-tag-store-tests")
            .join(format!("{name}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn digest(n: u64) -> Digest {
    Digest::sha256_of(&n.to_le_bytes())
}

fn open(dir: &TempDir) -> (TagStore, RecoveryReport) {
    TagStore::open(dir.path()).unwrap()
}

fn tags(page: &TagPage) -> Vec<&str> {
    page.tags.iter().map(String::as_str).collect()
}

#[test]
fn tag_store_is_send_and_sync() {
    fn check<T: Send + Sync>() {}
    check::<TagStore>();
}

#[test]
fn put_get_delete() {
    let dir = TempDir::new("put-get-delete");
    let (store, report) = open(&dir);
    assert_eq!(report.n_tags, 0);
    assert_eq!(report.next_version, 1);

    assert_eq!(store.get("library/ubuntu", "latest").unwrap(), None);
    let record = store
        .put("library/ubuntu", "latest", digest(1), OCI, None)
        .unwrap();
    assert_eq!(record.digest, digest(1));
    assert_eq!(record.media_type, OCI);
    assert_eq!(record.version, 1);
    assert_eq!(
        store.get("library/ubuntu", "latest").unwrap(),
        Some(record.clone())
    );

    // A mutable tag: the update is visible on the next read, with a larger version.
    let updated = store
        .put("library/ubuntu", "latest", digest(2), OCI, None)
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(
        store
            .get("library/ubuntu", "latest")
            .unwrap()
            .unwrap()
            .digest,
        digest(2)
    );
    assert!(updated.updated_at >= record.updated_at);

    assert!(store.delete("library/ubuntu", "latest").unwrap());
    assert_eq!(store.get("library/ubuntu", "latest").unwrap(), None);
    assert!(!store.delete("library/ubuntu", "latest").unwrap());
    // The tag's directory went with the last tag; the repository still holds the manifests
    // its tags named (by digest) until they are deleted by digest.
    assert!(!dir.path().join("repos/library/ubuntu/_tags").exists());
    assert!(
        store
            .manifest("library/ubuntu", &digest(2))
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .delete_manifest("library/ubuntu", &digest(1))
            .unwrap()
            .is_some()
    );
    assert!(
        store
            .delete_manifest("library/ubuntu", &digest(2))
            .unwrap()
            .is_some()
    );
    assert!(!dir.path().join("repos/library").exists());
    assert_eq!(
        store.list_repositories(None, None).unwrap().repositories,
        Vec::<String>::new()
    );
}

#[test]
fn invalid_names_and_media_types_are_refused() {
    let dir = TempDir::new("invalid");
    let (store, _) = open(&dir);
    for repo in ["../x", "a/../../x", "/etc", "A", "a//b", ".tmp-a", "_tags"] {
        assert!(
            matches!(
                store.put(repo, "t", digest(1), OCI, None),
                Err(IndexError::Name(_))
            ),
            "{repo}"
        );
        assert!(matches!(store.get(repo, "t"), Err(IndexError::Name(_))));
        assert!(matches!(store.delete(repo, "t"), Err(IndexError::Name(_))));
        assert!(matches!(
            store.list_tags(repo, None, None),
            Err(IndexError::Name(_))
        ));
    }
    for tag in ["..", ".tmp-t", "a/b", "-t", ""] {
        assert!(matches!(
            store.put("a", tag, digest(1), OCI, None),
            Err(IndexError::Name(_))
        ));
        assert!(matches!(store.get("a", tag), Err(IndexError::Name(_))));
    }
    assert!(matches!(
        store.put("a", "t", digest(1), "application/json\nversion 9", None),
        Err(IndexError::MediaType(_))
    ));
    // Nothing was created.
    assert_eq!(fs::read_dir(dir.path().join("repos")).unwrap().count(), 0);
}

#[test]
fn versions_grow_store_wide_and_survive_delete() {
    let dir = TempDir::new("versions");
    let (store, _) = open(&dir);
    assert_eq!(
        store.put("a", "x", digest(1), OCI, None).unwrap().version,
        1
    );
    assert_eq!(
        store.put("b", "y", digest(1), OCI, None).unwrap().version,
        2
    );
    assert_eq!(
        store.put("a", "x", digest(2), OCI, None).unwrap().version,
        3
    );
    assert!(store.delete("a", "x").unwrap());
    // Re-created: a fresh version, never an old one (no ABA for compare-and-set).
    assert_eq!(
        store.put("a", "x", digest(1), OCI, None).unwrap().version,
        4
    );
}

#[test]
fn compare_and_set() {
    let dir = TempDir::new("cas");
    let (store, _) = open(&dir);
    // 0: must not exist.
    let first = store.put("r", "t", digest(1), OCI, Some(0)).unwrap();
    match store.put("r", "t", digest(2), OCI, Some(0)) {
        Err(IndexError::Conflict {
            expected: 0,
            current: Some(v),
            ..
        }) => assert_eq!(v, first.version),
        other => panic!("{other:?}"),
    }
    // A stale version conflicts and changes nothing.
    let second = store
        .put("r", "t", digest(2), OCI, Some(first.version))
        .unwrap();
    let error = store
        .put("r", "t", digest(3), OCI, Some(first.version))
        .unwrap_err();
    assert!(matches!(error, IndexError::Conflict { current: Some(v), .. } if v == second.version));
    assert!(
        error
            .to_string()
            .contains("r:t is at version 2, not version 1"),
        "{error}"
    );
    assert_eq!(store.get("r", "t").unwrap(), Some(second.clone()));
    // A version on an absent tag conflicts.
    assert!(matches!(
        store.put("r", "absent", digest(1), OCI, Some(7)),
        Err(IndexError::Conflict { current: None, .. })
    ));
    // An unconditional put always goes through.
    assert_eq!(
        store.put("r", "t", digest(4), OCI, None).unwrap().version,
        second.version + 1
    );
}

#[test]
fn list_tags_pagination() {
    let dir = TempDir::new("list-tags");
    let (store, _) = open(&dir);
    let names = ["v1", "latest", "V2", "_x", "a.b", "a-b", "a", "1.0"];
    for (i, tag) in names.iter().enumerate() {
        store.put("app", tag, digest(i as u64), OCI, None).unwrap();
    }
    let mut sorted = names.to_vec();
    sorted.sort();
    assert_eq!(
        sorted,
        ["1.0", "V2", "_x", "a", "a-b", "a.b", "latest", "v1"]
    );

    let all = store.list_tags("app", None, None).unwrap();
    assert_eq!(tags(&all), sorted);
    assert_eq!(all.next, None);

    // Walk in pages of 3 following `next`.
    let mut seen = Vec::new();
    let mut last: Option<String> = None;
    loop {
        let page = store.list_tags("app", last.as_deref(), Some(3)).unwrap();
        assert!(page.tags.len() <= 3);
        seen.extend(page.tags.clone());
        match page.next {
            Some(next) => {
                assert_eq!(Some(&next), page.tags.last());
                last = Some(next);
            }
            None => break,
        }
    }
    assert_eq!(seen, sorted);

    // Exactly n left: no `next`.
    let page = store.list_tags("app", Some("a.b"), Some(2)).unwrap();
    assert_eq!(tags(&page), ["latest", "v1"]);
    assert_eq!(page.next, None);
    // `last` is exclusive and need not be a tag that exists.
    assert_eq!(
        tags(&store.list_tags("app", Some("a-"), Some(2)).unwrap()),
        ["a-b", "a.b"]
    );
    // Past the end; n = 0.
    let past = store.list_tags("app", Some("zzz"), None).unwrap();
    assert_eq!((past.tags.len(), past.next), (0, None));
    let zero = store.list_tags("app", None, Some(0)).unwrap();
    assert_eq!((zero.tags.len(), zero.next), (0, None));
    // n is capped.
    assert_eq!(
        store
            .list_tags("app", None, Some(usize::MAX))
            .unwrap()
            .tags
            .len(),
        names.len()
    );
    // A repository without tags is unknown.
    assert!(matches!(
        store.list_tags("nope", None, None),
        Err(IndexError::RepositoryUnknown { .. })
    ));
}

#[test]
fn list_tags_caps_the_page() {
    let dir = TempDir::new("list-cap");
    let (store, _) = open(&dir);
    // Records written directly (a put per tag would cost two fsyncs each).
    let tags_dir = dir.path().join("repos/big/_tags");
    fs::create_dir_all(&tags_dir).unwrap();
    let record = TagRecord {
        digest: digest(0),
        media_type: OCI.to_string(),
        version: 1,
        updated_at: SystemTime::UNIX_EPOCH,
        from_upstream: false,
    };
    for i in 0..PAGE_LEN_MAX + 5 {
        let tag = format!("t{i:05}");
        fs::write(tags_dir.join(&tag), record::encode("big", &tag, &record)).unwrap();
    }
    let page = store.list_tags("big", None, None).unwrap();
    assert_eq!(page.tags.len(), PAGE_LEN_MAX);
    assert_eq!(page.tags[0], "t00000");
    assert_eq!(page.next.as_deref(), Some("t00999"));
    let rest = store
        .list_tags("big", page.next.as_deref(), Some(5000))
        .unwrap();
    assert_eq!(
        tags(&rest),
        ["t01000", "t01001", "t01002", "t01003", "t01004"]
    );
    assert_eq!(rest.next, None);
}

#[test]
fn list_repositories_in_lexical_order() {
    let dir = TempDir::new("catalog");
    let (store, _) = open(&dir);
    let repos = ["a/b", "a", "a-c", "b/c/d", "a/b/c", "z", "a0"];
    for repo in repos {
        store.put(repo, "latest", digest(1), OCI, None).unwrap();
    }
    // `b` exists only as a directory on the way to b/c/d: not a repository.
    let mut sorted = repos.to_vec();
    sorted.sort();
    assert_eq!(sorted, ["a", "a-c", "a/b", "a/b/c", "a0", "b/c/d", "z"]);
    let all = store.list_repositories(None, None).unwrap();
    assert_eq!(all.repositories, sorted);
    assert_eq!(all.next, None);

    let page = store.list_repositories(None, Some(2)).unwrap();
    assert_eq!(page.repositories, ["a", "a-c"]);
    assert_eq!(page.next.as_deref(), Some("a-c"));
    let page = store.list_repositories(Some("a-c"), Some(3)).unwrap();
    assert_eq!(page.repositories, ["a/b", "a/b/c", "a0"]);
    assert_eq!(page.next.as_deref(), Some("a0"));
    let page = store.list_repositories(Some("a0"), Some(3)).unwrap();
    assert_eq!(page.repositories, ["b/c/d", "z"]);
    assert_eq!(page.next, None);

    // Deleting a parent repository's only tag keeps its children.
    assert!(store.delete("a", "latest").unwrap());
    assert!(store.delete("a/b", "latest").unwrap());
    assert_eq!(
        store.list_repositories(None, Some(3)).unwrap().repositories,
        ["a-c", "a/b/c", "a0"]
    );
    assert_eq!(
        store.get("a/b/c", "latest").unwrap().unwrap().digest,
        digest(1)
    );
}

#[test]
fn persistence_across_reopen() {
    let dir = TempDir::new("reopen");
    let written = {
        let (store, _) = open(&dir);
        store.put("x/y", "v1", digest(1), OCI, None).unwrap();
        store.put("x/y", "v2", digest(2), OCI, None).unwrap();
        store.put("z", "latest", digest(3), OCI, None).unwrap();
        store.get("x/y", "v2").unwrap().unwrap()
    };
    let (store, report) = open(&dir);
    assert_eq!(report.n_tags, 3);
    assert_eq!(report.n_repositories, 2);
    assert_eq!(report.n_corrupt_records, 0);
    assert_eq!(report.n_temporary_removed, 0);
    assert_eq!(report.next_version, 4);
    assert_eq!(store.get("x/y", "v2").unwrap(), Some(written));
    assert_eq!(
        store
            .put("z", "latest", digest(4), OCI, None)
            .unwrap()
            .version,
        4
    );
}

#[test]
fn version_floor_survives_reopen_after_deleting_the_newest() {
    let dir = TempDir::new("floor");
    {
        let (store, _) = open(&dir);
        store.put("a", "old", digest(1), OCI, None).unwrap();
        assert_eq!(
            store.put("a", "new", digest(2), OCI, None).unwrap().version,
            2
        );
        assert!(store.delete("a", "new").unwrap());
    }
    let (store, report) = open(&dir);
    assert_eq!(report.version_floor_error, None);
    // Without the floor the records alone would say 2 is free again.
    assert_eq!(report.next_version, 3);
    assert_eq!(
        store.put("a", "new", digest(3), OCI, None).unwrap().version,
        3
    );
}

#[test]
fn one_store_per_root() {
    let dir = TempDir::new("lock");
    let (store, _) = open(&dir);
    assert!(matches!(
        TagStore::open(dir.path()),
        Err(IndexError::Locked { .. })
    ));
    drop(store);
    assert!(TagStore::open(dir.path()).is_ok());
}

#[test]
fn recovery_after_a_crash() {
    let dir = TempDir::new("crash");
    {
        let (store, _) = open(&dir);
        store.put("app", "good", digest(1), OCI, None).unwrap();
        store.put("app", "torn", digest(2), OCI, None).unwrap();
        store.put("app", "flipped", digest(3), OCI, None).unwrap();
        store.put("app", "moved", digest(4), OCI, None).unwrap();
        store.put("other", "v", digest(5), OCI, None).unwrap();
    }
    // A put interrupted before its rename: the temporary holds a newer record, half written.
    let tags_dir = dir.path().join("repos/app/_tags");
    fs::write(
        tags_dir.join(".tmp-good"),
        b"shoal-tag 1\nrepository app\nta",
    )
    .unwrap();
    fs::write(dir.path().join(".tmp-version-floor"), b"").unwrap();
    // A truncated record, a flipped bit, a record copied to another tag's name.
    let torn = tags_dir.join("torn");
    let bytes = fs::read(&torn).unwrap();
    fs::write(&torn, &bytes[..bytes.len() / 2]).unwrap();
    let flipped = tags_dir.join("flipped");
    let mut bytes = fs::read(&flipped).unwrap();
    bytes[40] ^= 0x04;
    fs::write(&flipped, bytes).unwrap();
    fs::copy(tags_dir.join("good"), tags_dir.join("moved")).unwrap();
    // Names the store never writes.
    fs::write(tags_dir.join("bad name"), b"x").unwrap();
    fs::create_dir_all(dir.path().join("repos/Upper/_tags")).unwrap();
    fs::write(dir.path().join("repos/stray-file"), b"x").unwrap();
    // An empty record (a crash of some other writer): corrupt, not a panic.
    fs::write(tags_dir.join("empty"), b"").unwrap();
    fs::create_dir(tags_dir.join("dir")).unwrap();

    let (store, report) = open(&dir);
    assert_eq!(report.n_temporary_removed, 2);
    assert!(!tags_dir.join(".tmp-good").exists());
    assert!(!dir.path().join(".tmp-version-floor").exists());
    assert_eq!(report.n_tags, 2, "{report:#?}");
    assert_eq!(report.n_repositories, 2);
    let mut corrupt: Vec<&str> = report
        .corrupt_records
        .iter()
        .map(|c| c.tag.as_str())
        .collect();
    corrupt.sort();
    assert_eq!(
        corrupt,
        ["dir", "empty", "flipped", "moved", "torn"],
        "{report:#?}"
    );
    assert_eq!(report.n_corrupt_records, 5);
    assert!(report.corrupt_records.iter().all(|c| c.repository == "app"));
    let moved = report
        .corrupt_records
        .iter()
        .find(|c| c.tag == "moved")
        .unwrap();
    assert!(moved.reason.contains("holds app:good"), "{}", moved.reason);
    assert_eq!(report.n_unexpected_paths, 3, "{report:#?}");

    // The interrupted put left the old record whole.
    assert_eq!(store.get("app", "good").unwrap().unwrap().digest, digest(1));
    // Corrupt records are refused, never served.
    for tag in ["torn", "flipped", "moved", "empty", "dir"] {
        match store.get("app", tag) {
            Err(IndexError::Corrupt { tag: t, .. }) => assert_eq!(t, tag),
            other => panic!("{tag}: {other:?}"),
        }
    }
    // A compare-and-set on a corrupt record fails; an unconditional put replaces it; a
    // delete removes it.
    assert!(matches!(
        store.put("app", "torn", digest(9), OCI, Some(2)),
        Err(IndexError::Corrupt { .. })
    ));
    let replaced = store.put("app", "torn", digest(9), OCI, None).unwrap();
    assert!(replaced.version > 5);
    assert_eq!(store.get("app", "torn").unwrap(), Some(replaced));
    assert!(store.delete("app", "flipped").unwrap());
    assert_eq!(store.get("app", "flipped").unwrap(), None);
    // Unexpected names are never listed.
    assert_eq!(
        store.list_repositories(None, None).unwrap().repositories,
        ["app", "other"]
    );
    assert!(
        !store
            .list_tags("app", None, None)
            .unwrap()
            .tags
            .contains(&"bad name".to_string())
    );
}

#[test]
fn corrupt_version_floor_is_reported() {
    let dir = TempDir::new("floor-corrupt");
    drop(open(&dir));
    fs::write(
        dir.path().join("version-floor"),
        b"version-floor 9\nxxh3 0\n",
    )
    .unwrap();
    let (_, report) = open(&dir);
    assert!(report.version_floor_error.is_some());
    assert_eq!(report.next_version, 1);
}

#[test]
fn concurrent_puts_serialise() {
    const THREADS: u64 = 4;
    const PUTS: u64 = 25;
    let dir = TempDir::new("concurrent");
    let (store, _) = open(&dir);
    let store = Arc::new(store);
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut versions = Vec::new();
                for i in 0..PUTS {
                    // Unconditional puts on a shared tag and an own tag.
                    let record = store
                        .put("shared", "latest", digest(t * 1000 + i), OCI, None)
                        .unwrap();
                    versions.push(record.version);
                    store
                        .put("shared", &format!("t{t}"), digest(i), OCI, None)
                        .unwrap();
                    // A read after our own put never sees an older version.
                    let seen = store.get("shared", "latest").unwrap().unwrap();
                    assert!(seen.version >= record.version);
                }
                versions
            })
        })
        .collect();
    let mut all = Vec::new();
    for thread in threads {
        let versions = thread.join().unwrap();
        assert!(versions.windows(2).all(|w| w[0] < w[1]), "{versions:?}");
        all.extend(versions);
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len() as u64, THREADS * PUTS, "versions are unique");
    let last = store.get("shared", "latest").unwrap().unwrap();
    assert_eq!(last.version, *all.iter().max().unwrap());
    assert_eq!(
        store.list_tags("shared", None, None).unwrap().tags.len() as u64,
        THREADS + 1
    );
}

#[test]
fn concurrent_compare_and_set_loses_no_update() {
    const THREADS: usize = 4;
    const INCREMENTS: u64 = 15;
    let dir = TempDir::new("concurrent-cas");
    let (store, _) = open(&dir);
    let store = Arc::new(store);
    store.put("counter", "n", digest(0), OCI, Some(0)).unwrap();
    let threads: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                let mut done = 0;
                let mut conflicts = 0u64;
                while done < INCREMENTS {
                    let current = store.get("counter", "n").unwrap().unwrap();
                    // The digest holds the count: digest(k) for count k.
                    let count = (0..=THREADS as u64 * INCREMENTS)
                        .find(|&k| digest(k) == current.digest)
                        .unwrap();
                    match store.put(
                        "counter",
                        "n",
                        digest(count + 1),
                        OCI,
                        Some(current.version),
                    ) {
                        Ok(_) => done += 1,
                        Err(IndexError::Conflict { .. }) => conflicts += 1,
                        Err(other) => panic!("{other}"),
                    }
                    assert!(conflicts < 100_000);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let final_digest = store.get("counter", "n").unwrap().unwrap().digest;
    assert_eq!(final_digest, digest(THREADS as u64 * INCREMENTS));
}
