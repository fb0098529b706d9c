//! Unit tests of the block list.
use super::*;
use std::net::{Ipv4Addr, Ipv6Addr};

const NOW: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;
const CERT: &str = "ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12cd34ef56ab12";

fn block(target: BlockTarget, id: &str) -> Block {
    Block {
        target,
        reason: "probing".into(),
        expires_at: NOW + HOUR,
        created_at: NOW,
        created_by: "ops@example".into(),
        id: id.into(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("blocks.json");
    (dir, path)
}

fn check_ip(l: &BlockList, a: &str) -> Option<String> {
    l.check(None, None, None, Some(ip(a)), NOW)
        .map(|b| b.id.clone())
}

#[test]
fn target_json_shape() {
    let cases = [
        (
            BlockTarget::Ip(ip("10.0.0.1")),
            r#"{"kind":"ip","value":"10.0.0.1"}"#,
        ),
        (
            BlockTarget::Cidr(net("10.0.0.0/8")),
            r#"{"kind":"cidr","value":"10.0.0.0/8"}"#,
        ),
        (
            BlockTarget::Sub("iss|a".into()),
            r#"{"kind":"sub","value":"iss|a"}"#,
        ),
        (
            BlockTarget::ClientId("app1".into()),
            r#"{"kind":"client_id","value":"app1"}"#,
        ),
        (
            BlockTarget::CertSha256(CERT.into()),
            &format!(r#"{{"kind":"cert_sha256","value":"{CERT}"}}"#),
        ),
    ];
    for (t, json) in cases {
        assert_eq!(serde_json::to_string(&t).unwrap(), json);
        assert_eq!(serde_json::from_str::<BlockTarget>(json).unwrap(), t);
    }
    assert!(
        serde_json::from_str::<BlockTarget>(r#"{"kind":"cidr","value":"10.0.0.0/33"}"#).is_err()
    );
    assert!(serde_json::from_str::<BlockTarget>(r#"{"kind":"mac","value":"x"}"#).is_err());
}

#[test]
fn round_trip_through_file() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    assert!(l.is_empty());
    l.add(block(BlockTarget::Sub("iss|alice".into()), "b1"), NOW)
        .unwrap();
    l.add(block(BlockTarget::ClientId("app1".into()), "b2"), NOW)
        .unwrap();
    l.add(
        block(BlockTarget::CertSha256(CERT.to_uppercase()), "b3"),
        NOW,
    )
    .unwrap();
    l.add(block(BlockTarget::Ip(ip("10.0.0.1")), "b4"), NOW)
        .unwrap();
    l.add(block(BlockTarget::Cidr(net("192.168.0.0/16")), "b5"), NOW)
        .unwrap();
    let reloaded = BlockList::load(&path, NOW).unwrap();
    assert_eq!(reloaded.active(NOW), l.active(NOW));
    assert_eq!(reloaded.active(NOW).len(), 5);
    let r = &reloaded;
    assert_eq!(
        r.check(Some("iss|alice"), None, None, None, NOW)
            .unwrap()
            .id,
        "b1"
    );
    assert_eq!(
        r.check(None, Some("app1"), None, None, NOW).unwrap().id,
        "b2"
    );
    assert_eq!(r.check(None, None, Some(CERT), None, NOW).unwrap().id, "b3");
    let upper = CERT.to_uppercase();
    assert_eq!(
        r.check(None, None, Some(&upper), None, NOW).unwrap().id,
        "b3"
    );
    assert_eq!(check_ip(r, "10.0.0.1").as_deref(), Some("b4"));
    assert_eq!(check_ip(r, "192.168.7.9").as_deref(), Some("b5"));
    assert!(r
        .check(
            Some("iss|bob"),
            Some("app2"),
            None,
            Some(ip("10.0.0.2")),
            NOW
        )
        .is_none());
    assert!(r.check(None, None, None, None, NOW).is_none());
    // The file is the documented shape.
    let v: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
    assert_eq!(v["version"], 1);
    assert_eq!(v["blocks"].as_array().unwrap().len(), 5);
    assert_eq!(
        v["blocks"][0]["target"],
        serde_json::json!({"kind":"sub","value":"iss|alice"})
    );
}

#[test]
fn restart_keeps_unexpired_and_drops_expired() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    let mut short = block(BlockTarget::Ip(ip("10.0.0.1")), "short");
    short.expires_at = NOW + 1000;
    l.add(short, NOW).unwrap();
    l.add(block(BlockTarget::Ip(ip("10.0.0.2")), "long"), NOW)
        .unwrap();
    let later = NOW + 2000;
    let r = BlockList::load(&path, later).unwrap();
    let ids: Vec<String> = r.active(later).into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["long"]);
    assert!(r
        .check(None, None, None, Some(ip("10.0.0.1")), later)
        .is_none());
    assert_eq!(r.len(), 1);
}

#[test]
fn expiry_applies_without_reload() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Sub("s".into()), "b"), NOW)
        .unwrap();
    assert!(l
        .check(Some("s"), None, None, None, NOW + HOUR - 1)
        .is_some());
    assert!(l.check(Some("s"), None, None, None, NOW + HOUR).is_none());
    assert!(l.active(NOW + HOUR).is_empty());
    assert_eq!(l.len(), 1);
    l.purge_expired(NOW + HOUR);
    assert!(l.is_empty());
}

#[test]
fn missing_file_is_empty_and_corrupt_file_is_an_error() {
    let (_d, path) = fresh();
    assert!(BlockList::load(&path, NOW).unwrap().is_empty());
    let good = block(BlockTarget::Sub("a".into()), "x");
    let good_json = serde_json::to_string(&good).unwrap();
    let corrupt = [
        "".to_owned(),
        "{not json".to_owned(),
        "[]".to_owned(),
        r#"{"version":2,"blocks":[]}"#.to_owned(),
        r#"{"version":1,"blocks":[],"extra":1}"#.to_owned(),
        format!(r#"{{"version":1,"blocks":[{}]}}"#, good_json.replace("\"x\"", "\"x\",\"more\":1")),
        format!(r#"{{"version":1,"blocks":[{}]}}"#, good_json.replace("probing", "")),
        format!(r#"{{"version":1,"blocks":[{}]}}"#, good_json.replace("\"a\"", "\"a\\u0007\"")),
        r#"{"version":1,"blocks":[{"target":{"kind":"cert_sha256","value":"zz"},"reason":"r","expires_at":99999999999999,"created_at":0,"created_by":"o","id":"i"}]}"#.to_owned(),
    ];
    for c in corrupt {
        fs::write(&path, &c).unwrap();
        assert!(BlockList::load(&path, NOW).is_err(), "accepted: {c}");
    }
    // A directory where the file should be is an I/O error, not "empty".
    let (_d2, p2) = fresh();
    fs::create_dir(&p2).unwrap();
    assert!(BlockList::load(&p2, NOW).is_err());
    // The valid version of the same file loads.
    fs::write(&path, format!(r#"{{"version":1,"blocks":[{good_json}]}}"#)).unwrap();
    assert_eq!(BlockList::load(&path, NOW).unwrap().len(), 1);
}

#[test]
fn cidr_match() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Cidr(net("10.1.2.3/16")), "v4"), NOW)
        .unwrap();
    l.add(block(BlockTarget::Cidr(net("2001:db8::/32")), "v6"), NOW)
        .unwrap();
    assert_eq!(check_ip(&l, "10.1.200.1").as_deref(), Some("v4"));
    assert_eq!(check_ip(&l, "10.2.0.1"), None);
    assert_eq!(check_ip(&l, "2001:db8:ffff::1").as_deref(), Some("v6"));
    assert_eq!(check_ip(&l, "2001:db9::1"), None);
    // Host bits were cleared on the way in.
    let t: Vec<BlockTarget> = l.active(NOW).into_iter().map(|b| b.target).collect();
    assert!(t.contains(&BlockTarget::Cidr(net("10.1.0.0/16"))));
    // remove() finds it under its un-normalised spelling too.
    assert_eq!(l.remove(&BlockTarget::Cidr(net("10.1.9.9/16"))), Ok(true));
    assert_eq!(check_ip(&l, "10.1.200.1"), None);
    assert_eq!(l.remove(&BlockTarget::Cidr(net("10.1.9.9/16"))), Ok(false));
}

#[test]
fn ipv4_mapped_addresses_are_normalised() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Ip(ip("10.0.0.1")), "plain"), NOW)
        .unwrap();
    l.add(block(BlockTarget::Ip(ip("::ffff:10.0.0.2")), "mapped"), NOW)
        .unwrap();
    l.add(
        block(
            BlockTarget::Cidr(net("::ffff:172.16.0.0/108")),
            "mapped-net",
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(check_ip(&l, "::ffff:10.0.0.1").as_deref(), Some("plain"));
    assert_eq!(check_ip(&l, "10.0.0.2").as_deref(), Some("mapped"));
    assert_eq!(check_ip(&l, "172.16.3.4").as_deref(), Some("mapped-net"));
    assert_eq!(
        check_ip(&l, "::ffff:172.16.3.4").as_deref(),
        Some("mapped-net")
    );
    let targets: Vec<BlockTarget> = l.active(NOW).into_iter().map(|b| b.target).collect();
    assert!(targets.contains(&BlockTarget::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))));
    assert!(targets.contains(&BlockTarget::Cidr(net("172.16.0.0/12"))));
    // Single-host CIDRs become IP blocks (O(1) lookup).
    l.add(
        block(BlockTarget::Cidr(net("2001:db8::7/128")), "host"),
        NOW,
    )
    .unwrap();
    assert_eq!(check_ip(&l, "2001:db8::7").as_deref(), Some("host"));
    assert!(l
        .active(NOW)
        .iter()
        .any(|b| b.target
            == BlockTarget::Ip(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7)))));
}

#[test]
fn validation() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    let t = || BlockTarget::Sub("s".into());
    let mut cases: Vec<(Block, &str)> = Vec::new();
    let mut b = block(t(), "i");
    b.reason = "  ".into();
    cases.push((b, "empty reason"));
    let mut b = block(t(), "i");
    b.reason = "x".repeat(201);
    cases.push((b, "long reason"));
    let mut b = block(t(), "i");
    b.reason = "line\nforged".into();
    cases.push((b, "control char"));
    let mut b = block(t(), "i");
    b.reason = "evil\u{202E}txt".into();
    cases.push((b, "bidi override"));
    let mut b = block(t(), "i");
    b.expires_at = NOW;
    cases.push((b, "expired"));
    let mut b = block(t(), "i");
    b.expires_at = NOW + MAX_BLOCK_TTL_MS + 1;
    cases.push((b, "too far ahead"));
    cases.push((block(BlockTarget::Cidr(net("10.0.0.0/7")), "i"), "wide v4"));
    cases.push((block(BlockTarget::Cidr(net("2001::/31")), "i"), "wide v6"));
    cases.push((
        block(BlockTarget::Cidr(net("::ffff:0.0.0.0/96")), "i"),
        "mapped /0",
    ));
    cases.push((
        block(BlockTarget::CertSha256("abc".into()), "i"),
        "short cert",
    ));
    cases.push((
        block(BlockTarget::CertSha256(CERT.replace('a', "g")), "i"),
        "non-hex cert",
    ));
    cases.push((block(BlockTarget::Sub(String::new()), "i"), "empty sub"));
    cases.push((
        block(BlockTarget::ClientId("a\u{0}b".into()), "i"),
        "NUL client",
    ));
    cases.push((block(t(), ""), "empty id"));
    let mut b = block(t(), "i");
    b.created_by = "\t".into();
    cases.push((b, "created_by"));
    for (b, what) in cases {
        assert!(l.add(b, NOW).is_err(), "{what} accepted");
    }
    assert!(l.is_empty());
    assert!(!path.exists(), "failed adds must not write");
    // Exactly at the limits is fine.
    let mut b = block(BlockTarget::Cidr(net("10.0.0.0/8")), "ok8");
    b.reason = "é".repeat(200);
    b.expires_at = NOW + MAX_BLOCK_TTL_MS;
    l.add(b, NOW).unwrap();
    l.add(block(BlockTarget::Cidr(net("2001::/32")), "ok32"), NOW)
        .unwrap();
    // Forced adds may go wider, but still validate everything else.
    l.add_forced(block(BlockTarget::Cidr(net("0.0.0.0/0")), "all"), NOW)
        .unwrap();
    let mut b = block(BlockTarget::Cidr(net("::/0")), "x");
    b.reason = String::new();
    assert!(l.add_forced(b, NOW).is_err());
    assert_eq!(check_ip(&l, "8.8.8.8").as_deref(), Some("all"));
    // A forced wide block survives a restart.
    assert_eq!(
        check_ip(&BlockList::load(&path, NOW).unwrap(), "8.8.8.8").as_deref(),
        Some("all")
    );
}

#[test]
fn re_adding_a_target_replaces_it() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Sub("s".into()), "first"), NOW)
        .unwrap();
    let mut b = block(BlockTarget::Sub("s".into()), "second");
    b.expires_at = NOW + 10;
    l.add(b, NOW).unwrap();
    assert_eq!(l.active(NOW).len(), 1);
    assert_eq!(
        l.check(Some("s"), None, None, None, NOW).unwrap().id,
        "second"
    );
    let r = BlockList::load(&path, NOW).unwrap();
    assert_eq!(r.active(NOW)[0].id, "second");
}

#[test]
fn remove_persists() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::ClientId("app".into()), "b"), NOW)
        .unwrap();
    l.add(block(BlockTarget::CertSha256(CERT.into()), "c"), NOW)
        .unwrap();
    assert_eq!(l.remove(&BlockTarget::ClientId("app".into())), Ok(true));
    assert_eq!(l.remove(&BlockTarget::ClientId("app".into())), Ok(false));
    assert_eq!(
        l.remove(&BlockTarget::CertSha256(CERT.to_uppercase())),
        Ok(true)
    );
    assert_eq!(l.remove(&BlockTarget::CertSha256("bad".into())), Ok(false));
    assert!(l.check(None, Some("app"), Some(CERT), None, NOW).is_none());
    assert!(BlockList::load(&path, NOW).unwrap().is_empty());
}

#[test]
fn atomic_write_leaves_old_or_new_file() {
    let (dir, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Sub("old".into()), "old"), NOW)
        .unwrap();
    let old_bytes = fs::read(&path).unwrap();
    // No temp files left behind by a successful write.
    let names = || -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), vec!["blocks.json"]);
    // Simulate a crash after the temp file was written but before the
    // rename: the real file still holds the old list in full...
    let tmp = dir
        .path()
        .join(format!("{}999-0", temp_prefix(&path).unwrap()));
    fs::write(&tmp, b"{\"version\":1,\"blocks\":[ torn").unwrap();
    let r = BlockList::load(&path, NOW).unwrap();
    assert_eq!(fs::read(&path).unwrap(), old_bytes);
    assert_eq!(r.active(NOW)[0].id, "old");
    // ...and the leftover is cleaned up on load.
    assert_eq!(names(), vec!["blocks.json"]);
    // A completed write yields the full new list.
    l.add(block(BlockTarget::Sub("new".into()), "new"), NOW)
        .unwrap();
    let ids: Vec<String> = BlockList::load(&path, NOW)
        .unwrap()
        .active(NOW)
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids, vec!["new", "old"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}

#[test]
fn failed_persist_rolls_back() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing-dir").join("blocks.json");
    let mut l = BlockList::load(&path, NOW).unwrap();
    assert!(l
        .add(block(BlockTarget::Sub("s".into()), "b"), NOW)
        .is_err());
    assert!(l.check(Some("s"), None, None, None, NOW).is_none());
    assert!(l.is_empty());
    // Remove of a local block that cannot be persisted keeps it.
    let (_d, good) = fresh();
    let mut l = BlockList::load(&good, NOW).unwrap();
    l.add(block(BlockTarget::Sub("s".into()), "b"), NOW)
        .unwrap();
    l.path = path;
    assert!(l.remove(&BlockTarget::Sub("s".into())).is_err());
    assert!(l.check(Some("s"), None, None, None, NOW).is_some());
}

fn ids_on_disk(path: &Path) -> Vec<String> {
    let mut ids: Vec<String> = BlockList::load(path, NOW)
        .unwrap()
        .active(NOW)
        .into_iter()
        .map(|b| b.id)
        .collect();
    ids.sort();
    ids
}

#[test]
fn an_older_snapshot_never_overwrites_a_newer_one() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    let one = l
        .stage_add(block(BlockTarget::Sub("one".into()), "one"), NOW, false)
        .unwrap();
    let two = l
        .stage_add(block(BlockTarget::Sub("two".into()), "two"), NOW, false)
        .unwrap();
    // In effect before anything is on disk.
    assert!(l.check(Some("one"), None, None, None, NOW).is_some());
    assert!(!path.exists());
    two.snapshot.write().unwrap();
    // Written late: generation 1 is contained in the generation 2 on disk.
    one.snapshot.write().unwrap();
    assert_eq!(ids_on_disk(&path), vec!["one", "two"]);
}

#[test]
fn concurrent_stage_and_write_converge_on_the_last_list() {
    // Generated interleavings: writers stage under a lock and write outside it, in
    // whatever order the threads get there; the file must end as the final list.
    for threads in [2usize, 8, 32] {
        let (_d, path) = fresh();
        let l = Arc::new(Mutex::new(BlockList::load(&path, NOW).unwrap()));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let l = l.clone();
                std::thread::spawn(move || {
                    let target = BlockTarget::Sub(format!("s{}", i % 5));
                    let staged = if i % 4 == 3 {
                        l.lock().unwrap().stage_remove(&target).unwrap().1
                    } else {
                        let b = block(target, &format!("b{i}"));
                        Some(l.lock().unwrap().stage_add(b, NOW, false).unwrap())
                    };
                    if let Some(s) = staged {
                        s.snapshot.write().unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        let mut want: Vec<String> = l
            .lock()
            .unwrap()
            .active(NOW)
            .into_iter()
            .map(|b| b.id)
            .collect();
        want.sort();
        assert_eq!(ids_on_disk(&path), want, "threads={threads}");
    }
}

#[test]
fn undo_of_a_failed_write_wins_over_a_snapshot_taken_in_between() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    let one = l
        .stage_add(block(BlockTarget::Sub("one".into()), "one"), NOW, false)
        .unwrap();
    let two = l
        .stage_add(block(BlockTarget::Sub("two".into()), "two"), NOW, false)
        .unwrap();
    // `one`'s write "failed"; `two`'s snapshot (which contains `one`) reached the disk.
    two.snapshot.write().unwrap();
    let again = l.undo(one.undo);
    assert!(l.check(Some("one"), None, None, None, NOW).is_none());
    assert!(l.check(Some("two"), None, None, None, NOW).is_some());
    again.write().unwrap();
    assert_eq!(ids_on_disk(&path), vec!["two"]);
    // Undoing a removal restores the block unless the target was set again since.
    let (removed, staged) = l.stage_remove(&BlockTarget::Sub("two".into())).unwrap();
    assert!(removed);
    l.undo(staged.unwrap().undo).write().unwrap();
    assert_eq!(ids_on_disk(&path), vec!["two"]);
    let staged = l
        .stage_add(block(BlockTarget::Sub("two".into()), "two-b"), NOW, false)
        .unwrap();
    let newer = l
        .stage_add(block(BlockTarget::Sub("two".into()), "two-c"), NOW, false)
        .unwrap();
    newer.snapshot.write().unwrap();
    // `two-b` was superseded by `two-c`: its undo leaves `two-c` alone.
    l.undo(staged.undo).write().unwrap();
    assert_eq!(ids_on_disk(&path), vec!["two-c"]);
}

#[test]
fn remote_blocks_merge_without_persisting() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Ip(ip("10.0.0.1")), "local"), NOW)
        .unwrap();
    let mut longer = block(BlockTarget::Ip(ip("::ffff:10.0.0.1")), "remote-longer");
    longer.expires_at = NOW + 2 * HOUR;
    let mut shorter = block(BlockTarget::Sub("s".into()), "remote-short");
    shorter.expires_at = NOW + HOUR / 2;
    let mut expired = block(BlockTarget::Sub("gone".into()), "remote-expired");
    expired.expires_at = NOW;
    let mut invalid = block(BlockTarget::Sub("x".into()), "remote-invalid");
    invalid.reason = "a\u{1b}[31m".into();
    let n = l.merge_remote(vec![longer, shorter.clone(), expired, invalid], NOW);
    assert_eq!(n, 2);
    assert_eq!(check_ip(&l, "10.0.0.1").as_deref(), Some("remote-longer"));
    assert_eq!(
        l.check(Some("s"), None, None, None, NOW).unwrap().id,
        "remote-short"
    );
    assert!(l.check(Some("x"), None, None, None, NOW).is_none());
    // Same target, earlier expiry: ignored; later: replaces.
    let mut earlier = shorter.clone();
    earlier.id = "earlier".into();
    earlier.expires_at = NOW + 1;
    assert_eq!(l.merge_remote(vec![earlier], NOW), 0);
    let mut later = shorter;
    later.id = "later".into();
    later.expires_at = NOW + 3 * HOUR;
    assert_eq!(l.merge_remote(vec![later.clone()], NOW), 1);
    assert_eq!(
        l.check(Some("s"), None, None, None, NOW).unwrap().id,
        "later"
    );
    // Re-sending the same block is idempotent: no duplicates.
    assert_eq!(l.merge_remote(vec![later.clone(), later], NOW), 0);
    assert_eq!(l.active(NOW).len(), 2);
    // Only the local block is in the file.
    let r = BlockList::load(&path, NOW).unwrap();
    let ids: Vec<String> = r.active(NOW).into_iter().map(|b| b.id).collect();
    assert_eq!(ids, vec!["local"]);
    // The local copy expires at +1h; the later remote one still applies.
    assert_eq!(
        l.check(None, None, None, Some(ip("10.0.0.1")), NOW + HOUR + 1)
            .map(|b| b.id.as_str()),
        Some("remote-longer")
    );
    // remove() drops both copies.
    assert_eq!(l.remove(&BlockTarget::Ip(ip("10.0.0.1"))), Ok(true));
    assert_eq!(check_ip(&l, "10.0.0.1"), None);
    assert_eq!(l.remove(&BlockTarget::Sub("s".into())), Ok(true));
    assert!(l.is_empty());
}

#[test]
fn check_order_is_identity_first() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    l.add(block(BlockTarget::Ip(ip("10.0.0.1")), "ip"), NOW)
        .unwrap();
    l.add(block(BlockTarget::Sub("s".into()), "sub"), NOW)
        .unwrap();
    let hit = l.check(Some("s"), Some("c"), Some(CERT), Some(ip("10.0.0.1")), NOW);
    assert_eq!(hit.unwrap().id, "sub");
    let hit = l.check(Some("t"), Some("c"), Some(CERT), Some(ip("10.0.0.1")), NOW);
    assert_eq!(hit.unwrap().id, "ip");
}

#[test]
fn shareable_across_threads() {
    fn assert_send_sync<T: Send + Sync + Clone>() {}
    assert_send_sync::<BlockList>();
}

#[test]
fn block_count_is_capped() {
    let (_d, path) = fresh();
    let mut l = BlockList::load(&path, NOW).unwrap();
    let blocks: Vec<Block> = (0..MAX_BLOCKS + 5)
        .map(|i| block(BlockTarget::Sub(format!("s{i}")), &format!("r{i}")))
        .collect();
    assert_eq!(l.merge_remote(blocks, NOW), MAX_BLOCKS);
    assert_eq!(l.len(), MAX_BLOCKS);
    // A file with too many blocks is refused.
    let many: Vec<Block> = (0..MAX_BLOCKS + 1)
        .map(|i| block(BlockTarget::Sub(format!("s{i}")), "i"))
        .collect();
    fs::write(
        &path,
        serde_json::to_vec(&serde_json::json!({"version": 1, "blocks": many})).unwrap(),
    )
    .unwrap();
    assert!(BlockList::load(&path, NOW).is_err());
}
