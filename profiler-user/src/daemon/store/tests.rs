//! Store tests: files, index, retention, crash repair.
use super::*;

const BIG: Retention = Retention {
    max_bytes: u64::MAX,
    max_age: Duration::from_secs(3600),
};

fn index_ids(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("index.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect()
}

/// A small record (the exporters' lines are tested in `export::json`).
#[derive(serde::Serialize)]
struct TestRecord<'a> {
    id: &'a str,
    folded: Option<PathBuf>,
    files: Vec<PathBuf>,
    pad: &'a str,
}

fn rec(id: &str) -> impl FnOnce(Option<PathBuf>, Vec<PathBuf>) -> String + '_ {
    padded(id, "")
}

fn padded<'a>(
    id: &'a str,
    pad: &'a str,
) -> impl FnOnce(Option<PathBuf>, Vec<PathBuf>) -> String + 'a {
    move |folded, files| {
        serde_json::to_string(&TestRecord {
            id,
            folded,
            files,
            pad,
        })
        .unwrap()
    }
}

/// `ID.folded` with `text`, as the exporters hand files over.
fn folded(id: &str, text: &str) -> Vec<(String, Vec<u8>)> {
    vec![(format!("{id}.folded"), text.as_bytes().to_vec())]
}

#[test]
fn episodes_get_two_files_and_an_index_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    let (files, json_path) = s
        .put("1-1-5", &folded("1-1-5", "a;b 3\n"), rec("1-1-5"))
        .unwrap();
    assert_eq!(fs::read_to_string(&files[0]).unwrap(), "a;b 3\n");
    let record: Value = serde_json::from_str(&fs::read_to_string(json_path).unwrap()).unwrap();
    assert!(record["folded"].as_str().unwrap().ends_with("1-1-5.folded"));
    s.put("1-1-6", &[], rec("1-1-6")).unwrap();
    assert_eq!(index_ids(dir.path()), ["1-1-5", "1-1-6"]);
    // No temp file is left behind.
    let names: Vec<_> = fs::read_dir(dir.path().join("episodes")).unwrap().collect();
    assert_eq!(names.len(), 3);
}

#[test]
fn size_limit_drops_the_oldest_and_the_index_follows() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    for i in 0..5 {
        let id = format!("1-1-{i}");
        let mut files = folded(&id, &"x".repeat(50));
        files.push((format!("{id}.svg"), vec![b'<'; 25]));
        files.push((format!("{id}.pb.gz"), vec![0; 25]));
        s.put(&id, &files, rec(&id)).unwrap();
    }
    // Entries are the same size: over the limit, the store goes down to 90% of it.
    let each = s.total_bytes() / 5;
    let limit = Retention {
        max_bytes: each * 5 / 2,
        max_age: BIG.max_age,
    };
    s.set_retention(limit).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(index_ids(dir.path()), ["1-1-3", "1-1-4"]);
    for ext in ["folded", "svg", "pb.gz", "json"] {
        assert!(!dir.path().join(format!("episodes/1-1-0.{ext}")).exists());
    }
    assert!(dir.path().join("episodes/1-1-4.pb.gz").exists());
    assert_eq!(s.total_bytes(), bytes_on_disk(dir.path()));
    // Reopening counts every file of an episode under its id.
    drop(s);
    let s = Store::open(dir.path(), limit).unwrap();
    assert_eq!(s.len(), 2);
}

fn bytes_on_disk(dir: &Path) -> u64 {
    let files: u64 = fs::read_dir(dir.join("episodes"))
        .unwrap()
        .map(|f| f.unwrap().metadata().unwrap().len())
        .sum();
    files + fs::metadata(dir.join("index.jsonl")).unwrap().len()
}

/// `index.jsonl` grew outside the limit (issue 11).
#[test]
fn the_size_limit_counts_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    let pad = "y".repeat(200);
    for i in 0..3 {
        let id = format!("1-1-{i}");
        s.put(&id, &[], padded(&id, &pad)).unwrap();
    }
    assert_eq!(s.total_bytes(), bytes_on_disk(dir.path()));
    drop(s);
    let s = Store::open(dir.path(), BIG).unwrap();
    assert_eq!(s.total_bytes(), bytes_on_disk(dir.path()));
}

/// Once full, every write re-read every record to rebuild the index (issue
/// 11): the index now loses only the removed lines, whatever the records say.
#[test]
fn retention_does_not_reread_the_kept_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    for i in 0..4 {
        let id = format!("1-1-{i}");
        s.put(&id, &[], rec(&id)).unwrap();
    }
    // A kept record that would be unreadable if it were read again.
    fs::write(dir.path().join("episodes/1-1-3.json"), "not json").unwrap();
    let each = s.total_bytes() / 4;
    s.set_retention(Retention {
        max_bytes: each * 5 / 2,
        max_age: BIG.max_age,
    })
    .unwrap();
    assert_eq!(index_ids(dir.path()), ["1-1-2", "1-1-3"]);
}

/// Files were 0644 in a 0755 directory: any user read everyone's stacks and
/// command lines (issue 11).
#[test]
fn only_root_reads_the_store() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut s = Store::open(&state, BIG).unwrap();
    s.put("1-1-1", &folded("1-1-1", "a 1\n"), rec("1-1-1"))
        .unwrap();
    let mode = |p: &str| fs::metadata(state.join(p)).unwrap().permissions().mode() & 0o777;
    assert_eq!((mode(""), mode("episodes")), (0o700, 0o700));
    for f in [
        "index.jsonl",
        "episodes/1-1-1.json",
        "episodes/1-1-1.folded",
    ] {
        assert_eq!(mode(f), 0o600, "{f}");
    }
}

/// A state directory that is a symlink (planted before the first start) is refused.
#[test]
fn a_symlinked_state_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join("elsewhere")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("state")).unwrap();
    let e = Store::open(&dir.path().join("state"), BIG).err().unwrap();
    assert!(e.to_string().contains("symlink"), "{e}");
    assert!(!dir.path().join("elsewhere/episodes").exists());
}

#[test]
fn age_limit_and_reopen_rebuild_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    s.put("1-1-1", &folded("1-1-1", "a 1\n"), rec("1-1-1"))
        .unwrap();
    // A torn last line, as a crash mid-append would leave.
    fs::OpenOptions::new()
        .append(true)
        .open(dir.path().join("index.jsonl"))
        .unwrap()
        .write_all(b"{\"id\": \"torn")
        .unwrap();
    drop(s);
    let mut s = Store::open(dir.path(), BIG).unwrap();
    assert_eq!(index_ids(dir.path()), ["1-1-1"]);
    s.enforce(SystemTime::now() + Duration::from_secs(7200))
        .unwrap();
    assert!(s.is_empty());
    assert_eq!(
        fs::read_to_string(dir.path().join("index.jsonl")).unwrap(),
        ""
    );
}

#[test]
fn a_removed_episode_leaves_its_files_and_index_line_and_the_others_stay() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    for id in ["1-1-5", "1-1-6-provisional", "1-1-7"] {
        s.put(id, &folded(id, "a;b 3\n"), rec(id)).unwrap();
    }
    let before = s.total_bytes();
    s.remove("1-1-6-provisional").unwrap();
    assert_eq!(index_ids(dir.path()), ["1-1-5", "1-1-7"]);
    assert!(!dir.path().join("episodes/1-1-6-provisional.json").exists());
    assert!(!dir
        .path()
        .join("episodes/1-1-6-provisional.folded")
        .exists());
    assert!(s.total_bytes() < before);
    assert_eq!(s.len(), 2);
    // Absent: nothing happens; the store still appends after a removal.
    s.remove("1-1-6-provisional").unwrap();
    s.put("1-1-8", &[], rec("1-1-8")).unwrap();
    assert_eq!(index_ids(dir.path()), ["1-1-5", "1-1-7", "1-1-8"]);
    // And a restart sees the same.
    drop(s);
    let s = Store::open(dir.path(), BIG).unwrap();
    assert_eq!(s.len(), 3);
}
