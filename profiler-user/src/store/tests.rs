//! Store tests: files, index, retention, crash repair.
use super::*;
use serde_json::json;

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

#[test]
fn episodes_get_two_files_and_an_index_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    let (folded, json_path) = s
        .put("1-1-5", Some("a;b 3\n"), json!({"id": "1-1-5"}))
        .unwrap();
    assert_eq!(fs::read_to_string(folded.unwrap()).unwrap(), "a;b 3\n");
    let record: Value = serde_json::from_str(&fs::read_to_string(json_path).unwrap()).unwrap();
    assert!(record["folded"].as_str().unwrap().ends_with("1-1-5.folded"));
    s.put("1-1-6", None, json!({"id": "1-1-6"})).unwrap();
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
        s.put(&id, Some(&"x".repeat(100)), json!({ "id": id }))
            .unwrap();
    }
    s.set_retention(Retention {
        max_bytes: 400,
        max_age: BIG.max_age,
    })
    .unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(index_ids(dir.path()), ["1-1-3", "1-1-4"]);
    assert!(!dir.path().join("episodes/1-1-0.folded").exists());
}

#[test]
fn age_limit_and_reopen_rebuild_the_index() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(dir.path(), BIG).unwrap();
    s.put("1-1-1", Some("a 1\n"), json!({"id": "1-1-1"}))
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
