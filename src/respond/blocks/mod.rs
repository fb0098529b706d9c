//! Operator-managed blocks that survive restarts.
//!
//! This module owns the block list: which subjects, OAuth clients, client
//! certificates, IPs and CIDRs are refused, why, by whom and until when; the
//! JSON file it is persisted in; and the fast per-request [`BlockList::check`].
//!
//! Persistence: every change rewrites the whole file with an atomic replace
//! (temp file in the same directory, fsync, rename, fsync directory), so after
//! a crash the file is either the old or the new list, never a torn mix.
//! A change is made in two steps so that no disk I/O happens under the lock
//! every request's block check reads: [`BlockList::stage_add`] /
//! [`BlockList::stage_remove`] change the list in memory and return a
//! [`Staged`] change holding a serialized [`Snapshot`]; the caller drops its
//! lock and writes the snapshot on a blocking thread ([`Snapshot::write`]).
//! Snapshots carry a generation number and writes are serialised by the
//! writer state the snapshots share, so a snapshot older than the one on
//! disk is never written over it (it is already contained in the newer one).
//! If the write fails the caller rolls the change back ([`BlockList::undo`])
//! and re-writes the resulting list, so the API never claims a block that a
//! restart would forget. [`BlockList::add`]/[`BlockList::remove`] do all of
//! this synchronously, for callers without a lock (tools, tests).
//!
//! Failing closed: [`BlockList::load`] treats a missing file as an empty list
//! but any unreadable, unparsable or invalid file as an error, so the gateway
//! refuses to start rather than silently dropping every block.
//!
//! Replicas: blocks learned from other replicas ([`BlockList::merge_remote`])
//! are enforced but kept in memory only; each replica persists just the blocks
//! added through it, so files never accumulate each other's copies. Removing
//! a block removes the local and remote copy here; propagating the removal to
//! peers (or they will re-send it) is the caller's job.
//!
//! Concurrency: `check` takes `&self`; mutations take `&mut self`. The gateway
//! wraps the list in a `RwLock` (or clones it into an `ArcSwap`); `BlockList`
//! is `Clone` for that.
//!
//! File format (`version` 1):
//! ```json
//! {"version":1,"blocks":[{"target":{"kind":"ip","value":"10.0.0.1"},
//!   "reason":"probing","expires_at":1700000000000,"created_at":1699990000000,
//!   "created_by":"ops@example","id":"b-1"}]}
//! ```

use ipnet::{IpNet, Ipv4Net};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// Longest block an operator can set (30 days): blocks are an incident
/// response, not a permanent ACL, and a cap bounds the damage of a typo.
pub const MAX_BLOCK_TTL_MS: u64 = 30 * 24 * 3600 * 1000;
/// Maximum length of `reason` (characters).
pub const MAX_REASON_CHARS: usize = 200;
/// Maximum blocks held per origin (local, remote): bounds memory and the
/// O(n) CIDR scan whatever peers or operators send.
pub const MAX_BLOCKS: usize = 10_000;
/// Widest CIDRs accepted without `add_forced` (IPv4 /8, IPv6 /32): wider ones
/// are likely to lock out whole networks, including the operators.
pub const MIN_V4_PREFIX: u8 = 8;
pub const MIN_V6_PREFIX: u8 = 32;

const MAX_IDENT_BYTES: usize = 1024;
const MAX_ID_CHARS: usize = 128;
const MAX_CREATED_BY_CHARS: usize = 200;
const FILE_VERSION: u32 = 1;

/// What a block applies to. Serialized as `{"kind": "...", "value": ...}`
/// with kinds `sub`, `client_id`, `cert_sha256`, `ip`, `cidr`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", content = "value", rename_all = "snake_case")]
pub enum BlockTarget {
    /// Token subject (the caller's identity string, e.g. `iss|alice`).
    Sub(String),
    ClientId(String),
    /// SHA-256 of the client certificate (DER), 64 lowercase hex digits.
    CertSha256(String),
    /// A single address; IPv4-mapped IPv6 is stored as IPv4.
    Ip(IpAddr),
    /// A network, as "10.0.0.0/8"; host bits are cleared, IPv4-mapped IPv6
    /// nets become IPv4 and single-host nets become [`BlockTarget::Ip`].
    #[serde(with = "cidr_string")]
    Cidr(IpNet),
}

/// `ipnet`'s serde support is behind a feature the gateway does not enable;
/// (de)serialize through its `Display`/`FromStr` instead.
mod cidr_string {
    use ipnet::IpNet;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNet, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One block.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    pub target: BlockTarget,
    pub reason: String,
    /// Unix ms; the block is active while `now < expires_at`.
    pub expires_at: u64,
    /// Unix ms.
    pub created_at: u64,
    pub created_by: String,
    pub id: String,
}

/// Characters refused in any text field: controls (they forge log lines and
/// terminal output) and bidi/zero-width format characters (they make a
/// reason or identity display differently from what it is).
fn is_forbidden_char(c: char) -> bool {
    c.is_control()
        || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
}

fn check_text(field: &str, s: &str, max_chars: usize) -> Result<(), String> {
    if s.trim().is_empty() {
        return Err(format!("{field} must not be empty"));
    }
    if s.chars().count() > max_chars {
        return Err(format!("{field} longer than {max_chars} characters"));
    }
    if s.chars().any(is_forbidden_char) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

fn check_ident(field: &str, s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > MAX_IDENT_BYTES {
        return Err(format!("{field} must be 1..={MAX_IDENT_BYTES} bytes"));
    }
    if s.chars().any(is_forbidden_char) {
        return Err(format!("{field} contains control characters"));
    }
    Ok(())
}

impl BlockTarget {
    /// Canonical form used as the lookup key. `force` skips only the CIDR
    /// width limit.
    fn normalized(self, force: bool) -> Result<BlockTarget, String> {
        match self {
            BlockTarget::Sub(s) => check_ident("sub", &s).map(|_| BlockTarget::Sub(s)),
            BlockTarget::ClientId(s) => {
                check_ident("client_id", &s).map(|_| BlockTarget::ClientId(s))
            }
            BlockTarget::CertSha256(s) => {
                if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err("cert_sha256 must be 64 hex digits".into());
                }
                Ok(BlockTarget::CertSha256(s.to_ascii_lowercase()))
            }
            BlockTarget::Ip(ip) => Ok(BlockTarget::Ip(ip.to_canonical())),
            BlockTarget::Cidr(net) => {
                let net = canonical_net(net)?;
                if !force {
                    let (min, fam) = match net {
                        IpNet::V4(_) => (MIN_V4_PREFIX, "IPv4"),
                        IpNet::V6(_) => (MIN_V6_PREFIX, "IPv6"),
                    };
                    if net.prefix_len() < min {
                        return Err(format!(
                            "{fam} CIDR {net} is wider than /{min}; use a forced add to lock out that many addresses"
                        ));
                    }
                }
                // A single-host net is just an IP: store it where the O(1)
                // lookup finds it.
                if net.prefix_len() == net.max_prefix_len() {
                    return Ok(BlockTarget::Ip(net.addr()));
                }
                Ok(BlockTarget::Cidr(net))
            }
        }
    }
}

/// Clears host bits and turns `::ffff:a.b.c.d/96+n` into `a.b.c.d/n` so it
/// matches the (canonicalised) IPv4 peer address.
fn canonical_net(net: IpNet) -> Result<IpNet, String> {
    let net = match net {
        IpNet::V6(n) if n.prefix_len() >= 96 => match n.addr().to_ipv4_mapped() {
            Some(v4) => IpNet::V4(
                Ipv4Net::new(v4, n.prefix_len() - 96).map_err(|e| format!("cidr {n}: {e}"))?,
            ),
            None => net,
        },
        _ => net,
    };
    Ok(net.trunc())
}

/// Validates and canonicalises a block's fields (not its expiry).
fn validated(mut b: Block, force: bool) -> Result<Block, String> {
    check_text("reason", &b.reason, MAX_REASON_CHARS)?;
    check_text("created_by", &b.created_by, MAX_CREATED_BY_CHARS)?;
    check_text("id", &b.id, MAX_ID_CHARS)?;
    b.target = b.target.normalized(force)?;
    Ok(b)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileIn {
    version: u32,
    blocks: Vec<Block>,
}

#[derive(Serialize)]
struct FileOut<'a> {
    version: u32,
    blocks: Vec<&'a Block>,
}

/// The block list: local (persisted) and remote (memory-only) blocks plus a
/// lookup index of the effective block per target.
#[derive(Clone, Debug)]
pub struct BlockList {
    path: PathBuf,
    /// Generation of the in-memory list, bumped by every staged change.
    gen: u64,
    /// The newest generation written to `path`; its lock serialises writes.
    written: Arc<Mutex<u64>>,
    local: HashMap<BlockTarget, Block>,
    remote: HashMap<BlockTarget, Block>,
    // Index: per target, whichever of local/remote expires later.
    subs: HashMap<String, Block>,
    clients: HashMap<String, Block>,
    certs: HashMap<String, Block>,
    ips: HashMap<IpAddr, Block>,
    cidrs: Vec<Block>,
}

fn is_live(b: &Block, now: u64) -> bool {
    now < b.expires_at
}

impl BlockList {
    /// Loads the list persisted at `path`. A missing file is an empty list;
    /// blocks expired at `now` are dropped; anything unreadable, malformed or
    /// invalid is an error (fail closed). Leftover temp files from a crash
    /// mid-write are removed.
    pub fn load(path: impl Into<PathBuf>, now: u64) -> Result<BlockList, String> {
        let mut list = BlockList {
            path: path.into(),
            gen: 0,
            written: Arc::new(Mutex::new(0)),
            local: HashMap::new(),
            remote: HashMap::new(),
            subs: HashMap::new(),
            clients: HashMap::new(),
            certs: HashMap::new(),
            ips: HashMap::new(),
            cidrs: Vec::new(),
        };
        remove_stale_temps(&list.path);
        let shown = list.path.display().to_string();
        let bytes = match fs::read(&list.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(list),
            Err(e) => return Err(format!("block list {shown}: {e}")),
        };
        let file: FileIn = serde_json::from_slice(&bytes)
            .map_err(|e| format!("block list {shown} is corrupt: {e}"))?;
        if file.version != FILE_VERSION {
            return Err(format!(
                "block list {shown}: unsupported version {}",
                file.version
            ));
        }
        if file.blocks.len() > MAX_BLOCKS {
            return Err(format!("block list {shown}: more than {MAX_BLOCKS} blocks"));
        }
        for b in file.blocks {
            if !is_live(&b, now) {
                continue;
            }
            // The width limit was checked (or deliberately forced) when the
            // block was added; the file does not record which, so honour it.
            let id = b.id.clone();
            let b =
                validated(b, true).map_err(|e| format!("block list {shown}: block {id:?}: {e}"))?;
            keep_later(&mut list.local, b);
        }
        list.rebuild();
        Ok(list)
    }

    /// Path the list persists to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds (or replaces: same target) a block and persists before returning.
    /// Rejected: empty/long/control-character text fields, expiry not in
    /// `(now, now + 30 days]`, malformed certificate hashes and CIDRs wider
    /// than /8 (IPv4) or /32 (IPv6). If a remote copy of the same target
    /// expires later, that copy stays in effect until it expires.
    /// Writes the file on the calling thread: see [`BlockList::stage_add`].
    pub fn add(&mut self, block: Block, now: u64) -> Result<(), String> {
        let staged = self.stage_add(block, now, false)?;
        self.commit(staged)
    }

    /// Like [`BlockList::add`] but allows CIDRs wider than /8 (IPv4) or /32
    /// (IPv6). Every other check still applies.
    pub fn add_forced(&mut self, block: Block, now: u64) -> Result<(), String> {
        let staged = self.stage_add(block, now, true)?;
        self.commit(staged)
    }

    /// Writes a staged change now; on failure rolls it back (and re-writes).
    fn commit(&mut self, staged: Staged) -> Result<(), String> {
        let Staged { snapshot, undo } = staged;
        if let Err(e) = snapshot.write() {
            if let Err(e2) = self.undo(undo).write() {
                tracing::warn!(error = %e2, "block list not re-written after a rollback");
            }
            return Err(e);
        }
        Ok(())
    }

    /// The checks of [`BlockList::add`] (`force`: of `add_forced`), then the
    /// block is in effect in memory and the returned [`Staged`] holds the
    /// list to write. Nothing touches the disk here.
    pub fn stage_add(&mut self, block: Block, now: u64, force: bool) -> Result<Staged, String> {
        let block = validated(block, force)?;
        if !is_live(&block, now) {
            return Err("expires_at must be in the future".into());
        }
        if block.expires_at - now > MAX_BLOCK_TTL_MS {
            return Err(format!(
                "expires_at is more than {} days ahead",
                MAX_BLOCK_TTL_MS / 86_400_000
            ));
        }
        // Expired local blocks are dropped here so the file does not grow.
        self.local.retain(|_, b| is_live(b, now));
        if self.local.len() >= MAX_BLOCKS && !self.local.contains_key(&block.target) {
            return Err(format!("too many blocks (max {MAX_BLOCKS})"));
        }
        let target = block.target.clone();
        let previous = self.local.insert(target.clone(), block.clone());
        self.rebuild();
        let snapshot = self.snapshot()?;
        Ok(Staged {
            snapshot,
            undo: Undo::Put {
                target,
                inserted: block,
                previous,
            },
        })
    }

    /// Removes the block (local and remote copies) for `target`; returns
    /// whether there was one. A local removal is persisted before returning;
    /// if that fails the block stays and the error is returned.
    pub fn remove(&mut self, target: &BlockTarget) -> Result<bool, String> {
        let (removed, staged) = self.stage_remove(target)?;
        if let Some(staged) = staged {
            self.commit(staged)?;
        }
        Ok(removed)
    }

    /// [`BlockList::remove`] in memory: whether there was a block, and the
    /// list to write when a local (persisted) block went.
    pub fn stage_remove(&mut self, target: &BlockTarget) -> Result<(bool, Option<Staged>), String> {
        let Ok(target) = target.clone().normalized(true) else {
            return Ok((false, None)); // an invalid target can't have been stored
        };
        let local = self.local.remove(&target);
        let remote = self.remote.remove(&target);
        let removed = local.is_some() || remote.is_some();
        if removed {
            self.rebuild();
        }
        let Some(block) = local else {
            return Ok((removed, None));
        };
        let undo = Undo::Removed {
            target,
            block,
            remote,
        };
        match self.snapshot() {
            Ok(snapshot) => Ok((removed, Some(Staged { snapshot, undo }))),
            Err(e) => {
                drop(self.undo(undo));
                Err(e)
            }
        }
    }

    /// Rolls back a staged change whose snapshot could not be written, unless
    /// a later change to the same target superseded it. Returns the list to
    /// write now: a snapshot taken between the change and its rollback may
    /// still reach the disk, and this newer one replaces it.
    pub fn undo(&mut self, undo: Undo) -> Snapshot {
        match undo {
            Undo::Put {
                target,
                inserted,
                previous,
            } => {
                if self.local.get(&target) == Some(&inserted) {
                    match previous {
                        Some(p) => self.local.insert(target, p),
                        None => self.local.remove(&target),
                    };
                }
            }
            Undo::Removed {
                target,
                block,
                remote,
            } => {
                if let Some(r) = remote {
                    keep_later(&mut self.remote, r);
                }
                self.local.entry(target).or_insert(block);
            }
        }
        self.rebuild();
        self.snapshot().unwrap_or_else(|_| Snapshot {
            // Serializing what was serializable a moment ago cannot fail; if it
            // somehow did, write nothing rather than something wrong.
            gen: 0,
            path: self.path.clone(),
            json: Vec::new(),
            written: self.written.clone(),
        })
    }

    /// Takes blocks learned from other replicas. Invalid or expired ones are
    /// skipped (logged); a block for a target already known replaces it only
    /// if it expires later. Not persisted. Returns how many were taken.
    pub fn merge_remote(&mut self, blocks: impl IntoIterator<Item = Block>, now: u64) -> usize {
        self.remote.retain(|_, b| is_live(b, now));
        let mut taken = 0;
        for b in blocks {
            if !is_live(&b, now) {
                continue;
            }
            if b.expires_at - now > MAX_BLOCK_TTL_MS {
                tracing::warn!(id = %b.id, "remote block expires too far ahead; ignored");
                continue;
            }
            // The originating replica applied (or forced) the width limit.
            let id = b.id.clone();
            let b = match validated(b, true) {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(id = %id, error = %e, "invalid remote block ignored");
                    continue;
                }
            };
            if self.remote.len() >= MAX_BLOCKS && !self.remote.contains_key(&b.target) {
                tracing::warn!(id = %id, "remote block table full; block ignored");
                continue;
            }
            if keep_later(&mut self.remote, b) {
                taken += 1;
            }
        }
        if taken > 0 {
            self.rebuild();
        }
        taken
    }

    /// Replaces every block learned from other replicas with `blocks` (the shared set as
    /// it is now): a block lifted elsewhere stops applying here too. Returns how many
    /// were taken.
    pub fn replace_remote(&mut self, blocks: impl IntoIterator<Item = Block>, now: u64) -> usize {
        self.remote.clear();
        let n = self.merge_remote(blocks, now);
        self.rebuild();
        n
    }

    /// The block that applies to a request, if any. Checks sub, client id,
    /// certificate, exact IP, then CIDRs (scanned only if any exist).
    /// `cert` is hex SHA-256 (case-insensitive); `ip` may be IPv4-mapped.
    pub fn check(
        &self,
        sub: Option<&str>,
        client_id: Option<&str>,
        cert: Option<&str>,
        ip: Option<IpAddr>,
        now: u64,
    ) -> Option<&Block> {
        let live = |b: &&Block| is_live(b, now);
        if let Some(b) = sub.and_then(|s| self.subs.get(s)).filter(live) {
            return Some(b);
        }
        if let Some(b) = client_id.and_then(|c| self.clients.get(c)).filter(live) {
            return Some(b);
        }
        if let Some(c) = cert {
            let hit = if c.bytes().any(|b| b.is_ascii_uppercase()) {
                self.certs.get(&c.to_ascii_lowercase())
            } else {
                self.certs.get(c)
            };
            if let Some(b) = hit.filter(live) {
                return Some(b);
            }
        }
        if let Some(ip) = ip {
            let ip = ip.to_canonical();
            if let Some(b) = self.ips.get(&ip).filter(live) {
                return Some(b);
            }
            if !self.cidrs.is_empty() {
                return self.cidrs.iter().find(|b| {
                    is_live(b, now) && matches!(&b.target, BlockTarget::Cidr(n) if n.contains(&ip))
                });
            }
        }
        None
    }

    /// Effective blocks active at `now` (local and remote), oldest first.
    pub fn active(&self, now: u64) -> Vec<Block> {
        let mut out: Vec<Block> = self
            .subs
            .values()
            .chain(self.clients.values())
            .chain(self.certs.values())
            .chain(self.ips.values())
            .chain(self.cidrs.iter())
            .filter(|b| is_live(b, now))
            .cloned()
            .collect();
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        out
    }

    /// Number of effective blocks held (including ones expired but not yet
    /// purged).
    pub fn len(&self) -> usize {
        self.subs.len() + self.clients.len() + self.certs.len() + self.ips.len() + self.cidrs.len()
    }

    /// Whether no block is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops expired blocks from memory (the file is tidied on the next
    /// write). Call periodically so `len` and the CIDR scan stay small.
    pub fn purge_expired(&mut self, now: u64) {
        self.local.retain(|_, b| is_live(b, now));
        self.remote.retain(|_, b| is_live(b, now));
        self.rebuild();
    }

    /// Rebuilds the lookup index from local and remote. Blocks change
    /// rarely (operator actions, peer sync), so a full rebuild keeps the
    /// index trivially consistent at negligible cost.
    fn rebuild(&mut self) {
        let mut effective: HashMap<&BlockTarget, &Block> = HashMap::new();
        for b in self.local.values().chain(self.remote.values()) {
            effective
                .entry(&b.target)
                .and_modify(|cur| {
                    if b.expires_at > cur.expires_at {
                        *cur = b;
                    }
                })
                .or_insert(b);
        }
        let (mut subs, mut clients, mut certs, mut ips, mut cidrs) = (
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            HashMap::new(),
            Vec::new(),
        );
        for (t, b) in effective {
            let b = b.clone();
            match t {
                BlockTarget::Sub(s) => {
                    subs.insert(s.clone(), b);
                }
                BlockTarget::ClientId(s) => {
                    clients.insert(s.clone(), b);
                }
                BlockTarget::CertSha256(s) => {
                    certs.insert(s.clone(), b);
                }
                BlockTarget::Ip(ip) => {
                    ips.insert(*ip, b);
                }
                BlockTarget::Cidr(_) => cidrs.push(b),
            }
        }
        (self.subs, self.clients, self.certs, self.ips, self.cidrs) =
            (subs, clients, certs, ips, cidrs);
    }

    /// The local blocks serialized as the file's contents, as a new generation.
    /// CPU only (at most `MAX_BLOCKS` small records); the I/O is [`Snapshot::write`].
    fn snapshot(&mut self) -> Result<Snapshot, String> {
        let mut blocks: Vec<&Block> = self.local.values().collect();
        blocks.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        let json = serde_json::to_vec_pretty(&FileOut {
            version: FILE_VERSION,
            blocks,
        })
        .map_err(|e| format!("serialize block list: {e}"))?;
        self.gen += 1;
        Ok(Snapshot {
            gen: self.gen,
            path: self.path.clone(),
            json,
            written: self.written.clone(),
        })
    }
}

/// A change made in memory whose file write is still to do: write
/// `snapshot`, and on failure hand `undo` to [`BlockList::undo`].
#[derive(Debug)]
pub struct Staged {
    pub snapshot: Snapshot,
    pub undo: Undo,
}

/// How to roll back one staged change.
#[derive(Debug)]
pub enum Undo {
    Put {
        target: BlockTarget,
        inserted: Block,
        previous: Option<Block>,
    },
    Removed {
        target: BlockTarget,
        block: Block,
        remote: Option<Block>,
    },
}

/// The block file's contents at one generation of the list.
#[derive(Debug)]
pub struct Snapshot {
    gen: u64,
    path: PathBuf,
    json: Vec<u8>,
    written: Arc<Mutex<u64>>,
}

impl Snapshot {
    /// Writes the snapshot (atomic replace, fsync of file and directory) unless
    /// a newer generation is already on disk — that one contains this change,
    /// and writing this one over it would lose later changes. Blocking: call it
    /// on a blocking thread (`tokio::task::spawn_blocking`), never under the
    /// list's lock. Writers queue on the writer lock, which no reader of the
    /// list ever takes.
    pub fn write(self) -> Result<(), String> {
        if self.gen == 0 {
            return Err("block list could not be serialized".into());
        }
        let mut written = self.written.lock().unwrap_or_else(PoisonError::into_inner);
        if *written >= self.gen {
            return Ok(());
        }
        write_atomic(&self.path, &self.json)?;
        *written = self.gen;
        Ok(())
    }
}

/// Inserts `b` unless a block for the same target expires at least as late.
/// Returns whether it was inserted.
fn keep_later(map: &mut HashMap<BlockTarget, Block>, b: Block) -> bool {
    match map.get(&b.target) {
        Some(cur) if cur.expires_at >= b.expires_at => false,
        _ => {
            map.insert(b.target.clone(), b);
            true
        }
    }
}

fn temp_prefix(path: &Path) -> Option<String> {
    path.file_name()
        .map(|n| format!(".{}.tmp-", n.to_string_lossy()))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Removes `.<name>.tmp-*` files left by a crash between temp write and
/// rename. Best effort: failure to clean up must not stop startup.
fn remove_stale_temps(path: &Path) {
    let Some(prefix) = temp_prefix(path) else {
        return;
    };
    let Ok(entries) = fs::read_dir(parent_dir(path)) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            if let Err(e) = fs::remove_file(entry.path()) {
                tracing::warn!(file = %entry.path().display(), error = %e, "could not remove stale temp file");
            }
        }
    }
}

/// Replaces `path` with `data` atomically: readers (and a restart after a
/// crash) see either the old or the new contents. The temp file lives in the
/// same directory so `rename` never crosses filesystems.
fn write_atomic(path: &Path, data: &[u8]) -> Result<(), String> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let prefix = temp_prefix(path).ok_or_else(|| format!("{}: not a file path", path.display()))?;
    let dir = parent_dir(path);
    let tmp = dir.join(format!(
        "{prefix}{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| -> std::io::Result<()> {
        let mut opts = fs::OpenOptions::new();
        opts.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(format!("write block list {}: {e}", path.display()));
    }
    // The new contents are in place; fsyncing the directory makes the rename
    // itself durable. If that fails the data is still correct, just possibly
    // not yet on disk, so warn rather than report a failed (yet applied) write.
    if let Err(e) = sync_dir(dir) {
        tracing::warn!(dir = %dir.display(), error = %e, "fsync of block list directory failed");
    }
    Ok(())
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests;
