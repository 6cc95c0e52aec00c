//! What a partition's remote log is: its manifest, and where each object lives in the bucket.
//!
//! ```text
//! <prefix>/topics/<topic>/<topic id>/topic.json                      the topic (Topic record)
//! <prefix>/topics/<topic>/<topic id>/<partition>/manifest.json       the partition (Manifest)
//! <prefix>/topics/<topic>/<topic id>/<partition>/<base, 20 digits>-<upload id>.log
//!                                                        .index .timeindex .snapshot
//! ```
//!
//! A segment's objects are written first, under a name no other upload uses (the upload id
//! is random), and only then named in the manifest; so no manifest ever names an object that
//! is partial or belongs to another writer, and an upload cut short leaves only objects that
//! nothing names. The manifest is written create-only the first time and then only if its
//! ETag is the one the writer last saw (`docs/tiered-storage.md`, "Manifests").
//!
//! The topic id tells incarnations of one name apart: a topic deleted and created again gets
//! a new id, so a restore never mixes the two.

use object_store::path::Path as Key;
use serde::{Deserialize, Serialize};

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// A partition's remote log: the segments copied, in offset order, without gaps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The topic's name.
    pub topic: String,
    /// The topic's id (its incarnation).
    pub topic_id: String,
    /// The partition number.
    pub partition: u32,
    /// The broker that last wrote the manifest (its id, from its data directory).
    pub writer: String,
    /// The first offset kept: total retention moves it past deleted segments.
    pub log_start_offset: u64,
    /// The segments, oldest first; each starts where the previous one ends.
    pub segments: Vec<RemoteSegment>,
}

/// One copied segment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RemoteSegment {
    /// Its first offset.
    pub base_offset: u64,
    /// One past its last offset.
    pub next_offset: u64,
    /// Bytes of its `.log` object.
    pub size: u64,
    /// Its largest record timestamp, ms.
    pub max_timestamp: i64,
    /// The upload id in its objects' names.
    pub upload_id: String,
}

impl Manifest {
    /// An empty manifest: nothing copied yet.
    pub fn empty(topic: &str, topic_id: &str, partition: u32, writer: &str) -> Self {
        Manifest {
            version: MANIFEST_VERSION,
            topic: topic.to_owned(),
            topic_id: topic_id.to_owned(),
            partition,
            writer: writer.to_owned(),
            log_start_offset: 0,
            segments: Vec::new(),
        }
    }

    /// One past the last offset copied; with no segment, `log_start_offset` (0 when nothing
    /// was ever copied, or where retention deleted the last segment).
    pub fn end_offset(&self) -> u64 {
        self.segments
            .last()
            .map_or(self.log_start_offset, |s| s.next_offset)
    }

    /// The first offset held (the end when nothing is).
    pub fn start_offset(&self) -> u64 {
        match self.segments.first() {
            Some(first) => self.log_start_offset.max(first.base_offset),
            None => self.end_offset(),
        }
    }

    /// True if no segment is held.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Bytes of every segment held.
    pub fn size_bytes(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    /// The segment holding `offset`.
    pub fn find(&self, offset: u64) -> Option<&RemoteSegment> {
        if offset < self.start_offset() {
            return None;
        }
        let i = self.segments.partition_point(|s| s.next_offset <= offset);
        self.segments.get(i).filter(|s| s.base_offset <= offset)
    }

    /// The manifest as stored: pretty JSON, so that an operator can read it.
    pub fn encode(&self) -> Vec<u8> {
        // Plain data: serializing cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads a stored manifest, checking its version and that its segments are contiguous.
    ///
    /// # Errors
    /// What is wrong with it, as text.
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if m.version != MANIFEST_VERSION {
            return Err(format!(
                "version {} is not supported (this build reads {MANIFEST_VERSION})",
                m.version
            ));
        }
        for pair in m.segments.windows(2) {
            if pair[0].next_offset != pair[1].base_offset {
                return Err(format!(
                    "segment at {} ends at {} but the next starts at {}",
                    pair[0].base_offset, pair[0].next_offset, pair[1].base_offset
                ));
            }
        }
        if m.segments.iter().any(|s| s.next_offset <= s.base_offset) {
            return Err("a segment holds no offset".into());
        }
        Ok(m)
    }
}

/// The topic as the bucket records it, for a restore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    /// [`MANIFEST_VERSION`].
    pub version: u32,
    /// The topic's name.
    pub topic: String,
    /// Its id.
    pub topic_id: String,
    /// Its partition count.
    pub partition_count: u32,
    /// Its config overrides, as `topic.toml` holds them (TOML text).
    pub config: String,
    /// When the topic was created, ms since the epoch (the newest incarnation wins a restore).
    pub created_ms: i64,
}

/// The keys of one partition's objects.
#[derive(Debug, Clone)]
pub struct Keys {
    dir: String,
}

/// The directory of a topic incarnation.
pub fn topic_dir(prefix: &str, topic: &str, topic_id: &str) -> String {
    let mut dir = String::new();
    if !prefix.is_empty() {
        dir.push_str(prefix.trim_end_matches('/'));
        dir.push('/');
    }
    dir.push_str(&format!("topics/{topic}/{topic_id}"));
    dir
}

/// The key of a topic record.
pub fn topic_record_key(prefix: &str, topic: &str, topic_id: &str) -> Key {
    Key::from(format!("{}/topic.json", topic_dir(prefix, topic, topic_id)))
}

/// The directory of every topic.
pub fn topics_dir(prefix: &str) -> Key {
    if prefix.is_empty() {
        Key::from("topics")
    } else {
        Key::from(format!("{}/topics", prefix.trim_end_matches('/')))
    }
}

impl Keys {
    /// The keys of partition `partition` of the incarnation `topic_id` of `topic`.
    pub fn new(prefix: &str, topic: &str, topic_id: &str, partition: u32) -> Self {
        Keys {
            dir: format!("{}/{partition}", topic_dir(prefix, topic, topic_id)),
        }
    }

    /// The manifest.
    pub fn manifest(&self) -> Key {
        Key::from(format!("{}/manifest.json", self.dir))
    }

    /// The partition's directory, for listing its objects.
    pub fn dir(&self) -> Key {
        Key::from(self.dir.as_str())
    }

    /// A segment's object with extension `ext` (`log`, `index`, `timeindex`, `snapshot`).
    pub fn segment(&self, base_offset: u64, upload_id: &str, ext: &str) -> Key {
        Key::from(format!("{}/{base_offset:020}-{upload_id}.{ext}", self.dir))
    }
}

/// The upload id in the name of a segment's object (`<base>-<upload id>.<ext>`), or `None` for
/// another object (the manifest).
pub fn upload_id_of(file_name: &str) -> Option<&str> {
    let (stem, _ext) = file_name.rsplit_once('.')?;
    let (base, id) = stem.split_once('-')?;
    (base.len() == 20 && base.bytes().all(|b| b.is_ascii_digit())).then_some(id)
}

/// The object extensions of a segment, in upload order (the log last among the data, the
/// snapshot with it; none is named anywhere until the manifest is).
pub const SEGMENT_EXTENSIONS: [&str; 4] = ["index", "timeindex", "snapshot", "log"];

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(base: u64, next: u64) -> RemoteSegment {
        RemoteSegment {
            base_offset: base,
            next_offset: next,
            size: 100,
            max_timestamp: 0,
            upload_id: "u".into(),
        }
    }

    #[test]
    fn a_manifest_finds_offsets_and_round_trips() {
        let mut m = Manifest::empty("orders", "id1", 3, "broker-a");
        assert_eq!((m.start_offset(), m.end_offset()), (0, 0));
        m.segments = vec![seg(10, 20), seg(20, 35)];
        m.log_start_offset = 12;
        assert_eq!((m.start_offset(), m.end_offset()), (12, 35));
        assert!(m.find(11).is_none());
        assert_eq!(m.find(12).unwrap().base_offset, 10);
        assert_eq!(m.find(20).unwrap().base_offset, 20);
        assert_eq!(m.find(34).unwrap().base_offset, 20);
        assert!(m.find(35).is_none());
        assert_eq!(Manifest::decode(&m.encode()).unwrap(), m);
    }

    #[test]
    fn a_manifest_with_a_gap_or_another_version_is_refused() {
        let mut m = Manifest::empty("orders", "id1", 0, "b");
        m.segments = vec![seg(0, 10), seg(11, 20)];
        assert!(
            Manifest::decode(&m.encode())
                .unwrap_err()
                .contains("ends at 10")
        );
        m.segments = vec![seg(0, 10)];
        m.version = 2;
        assert!(
            Manifest::decode(&m.encode())
                .unwrap_err()
                .contains("version 2")
        );
        assert!(Manifest::decode(b"{").is_err());
    }

    #[test]
    fn keys_follow_the_documented_layout() {
        let k = Keys::new("runnel/prod", "orders", "abc", 7);
        assert_eq!(
            k.manifest().as_ref(),
            "runnel/prod/topics/orders/abc/7/manifest.json"
        );
        assert_eq!(
            k.segment(42, "u1", "log").as_ref(),
            "runnel/prod/topics/orders/abc/7/00000000000000000042-u1.log"
        );
        assert_eq!(upload_id_of("00000000000000000042-u1.log"), Some("u1"));
        assert_eq!(upload_id_of("manifest.json"), None);
        assert_eq!(topics_dir("").as_ref(), "topics");
        assert_eq!(
            topic_record_key("", "orders", "abc").as_ref(),
            "topics/orders/abc/topic.json"
        );
    }
}
