//! A minimal zip reader for the archives `torch.save` writes (PyTorch's
//! `PyTorchFileWriter`, built on miniz): the central directory, zip64 records, and for
//! each entry its name, compression method and the absolute byte range of its data.
//!
//! What torch writes (checked against torch 2.15): every entry stored (method 0), names
//! `<archive>/data.pkl`, `<archive>/data/<key>`, `<archive>/byteorder`, …; general
//! purpose flag bit 3 set, so local headers carry zero CRC and sizes and a data
//! descriptor follows each entry; an `FB` extra field pads each local header so data
//! starts on a 64-byte boundary; and a zip64 end-of-central-directory record and
//! locator are always present, even for small files. Past 4 GiB, sizes and offsets
//! move to zip64 extended-information extra fields.
//!
//! Refused: no end-of-central-directory record, multi-disk archives, encrypted entries,
//! names that are empty, absolute, contain `..`, a backslash or NUL, or repeat;
//! central and local headers that disagree (name, method, flags, CRC, sizes); entries
//! whose data runs past the central directory or overlaps another entry; stored entries
//! whose compressed and uncompressed sizes differ. Deflate entries are listed and can
//! be inflated with a bound ([`inflate`]); other methods are listed and refused there.
//! Stored data is never read while parsing (CRCs of stored entries are checked only on
//! request, [`verify_crc`]), so opening costs only the directory.

use std::collections::HashMap;
use std::ops::Range;

/// Signature of a local file header, the first four bytes of a zip file.
pub const LOCAL_HEADER_SIG: &[u8; 4] = b"PK\x03\x04";
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const EOCD_LEN: usize = 22;
const ZIP64_LOCATOR_LEN: usize = 20;
const ZIP64_EOCD_LEN: usize = 56;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
const MAX_COMMENT: usize = 0xffff;
const ZIP64_EXTRA_ID: u16 = 0x0001;
const FLAG_ENCRYPTED: u16 = 0x0001;
const FLAG_DESCRIPTOR: u16 = 0x0008;
const FLAG_STRONG_ENCRYPTION: u16 = 0x0040;

/// How an entry's data is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Method 0: the bytes as they are (what torch writes).
    Stored,
    /// Method 8: raw deflate.
    Deflate,
    /// Any other method id (listed, never decoded).
    Other(u16),
}

impl Method {
    fn from_id(id: u16) -> Method {
        match id {
            0 => Method::Stored,
            8 => Method::Deflate,
            other => Method::Other(other),
        }
    }
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// The name as stored (UTF-8, `/`-separated, checked not to escape).
    pub name: String,
    /// Compression method.
    pub method: Method,
    /// Absolute byte range of the (possibly compressed) data in the file, after the
    /// local header.
    pub data: Range<usize>,
    /// Declared uncompressed size.
    pub uncompressed_size: u64,
    /// Declared CRC-32 of the uncompressed data.
    pub crc32: u32,
}

/// The directory of a zip archive.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Archive {
    /// Entries in central-directory order.
    pub entries: Vec<Entry>,
    index: HashMap<String, usize>,
}

impl Archive {
    /// The entry called `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.index.get(name).map(|&i| &self.entries[i])
    }
}

/// What is wrong with a zip archive or one of its entries.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum ZipError {
    /// No end-of-central-directory record in the last 64 KiB.
    #[error("not a zip archive, or truncated: no end-of-central-directory record")]
    NoEndOfCentralDirectory,
    /// The archive spans several disks.
    #[error("multi-disk zip archives are not supported")]
    MultiDisk,
    /// A zip64 locator or record that is missing, misplaced or malformed.
    #[error("invalid zip64 end of central directory: {reason}")]
    BadZip64 {
        /// What is wrong.
        reason: &'static str,
    },
    /// The classic and zip64 end records disagree.
    #[error("end-of-central-directory records disagree on {field}: {classic} vs zip64 {zip64}")]
    InconsistentEnd {
        /// Which field.
        field: &'static str,
        /// The classic record's value.
        classic: u64,
        /// The zip64 record's value.
        zip64: u64,
    },
    /// The central directory lies outside the file.
    #[error("central directory at {offset} ({size} bytes) lies outside the {limit} bytes before its end record")]
    DirectoryOutOfRange {
        /// Declared offset.
        offset: u64,
        /// Declared size.
        size: u64,
        /// Where the end record starts.
        limit: usize,
    },
    /// More entries than the central directory could hold.
    #[error("{count} entries cannot fit in a {size}-byte central directory")]
    CountPastEnd {
        /// Declared entry count.
        count: u64,
        /// Directory size.
        size: usize,
    },
    /// A header runs past the end of its region.
    #[error("truncated {what} at offset {offset}")]
    Truncated {
        /// Which header.
        what: &'static str,
        /// Where it starts.
        offset: usize,
    },
    /// A header does not start with its signature.
    #[error("bad signature for {what} at offset {offset}")]
    BadSignature {
        /// Which header.
        what: &'static str,
        /// Where it should start.
        offset: usize,
    },
    /// A name that is not UTF-8.
    #[error("entry #{index}: name is not valid UTF-8")]
    NameNotUtf8 {
        /// Index in the central directory.
        index: usize,
    },
    /// A name that could escape an extraction folder.
    #[error("entry `{name}`: name is empty, absolute, or contains `..`, `\\` or NUL")]
    UnsafeName {
        /// The name.
        name: String,
    },
    /// The same name twice.
    #[error("entry `{name}`: name appears more than once")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// An encrypted entry.
    #[error("entry `{name}` is encrypted")]
    Encrypted {
        /// The name.
        name: String,
    },
    /// A saturated 32-bit field with no zip64 extra field to give its value.
    #[error(
        "entry `{name}`: {field} is 0xffffffff but there is no zip64 extra field with its value"
    )]
    MissingZip64 {
        /// The name.
        name: String,
        /// Which field.
        field: &'static str,
    },
    /// The local header names a different entry.
    #[error("entry `{name}`: the local header names `{local}`")]
    LocalNameMismatch {
        /// The central-directory name.
        name: String,
        /// The local header's name (lossy UTF-8).
        local: String,
    },
    /// A local-header field disagrees with the central directory.
    #[error("entry `{name}`: {field} is {local} in the local header but {central} in the central directory")]
    LocalMismatch {
        /// The name.
        name: String,
        /// Which field.
        field: &'static str,
        /// Local value.
        local: u64,
        /// Central value.
        central: u64,
    },
    /// The data runs past the start of the central directory.
    #[error("entry `{name}`: data at {start}..{end} runs past the central directory, which starts at {limit}")]
    DataPastEnd {
        /// The name.
        name: String,
        /// Data start.
        start: u64,
        /// Data end.
        end: u64,
        /// Start of the central directory.
        limit: usize,
    },
    /// Two entries share bytes.
    #[error("entry `{name}` (header at {start}) overlaps entry `{other}`, whose data ends at {other_end}")]
    Overlap {
        /// The later entry.
        name: String,
        /// Its local header offset.
        start: usize,
        /// The entry it overlaps.
        other: String,
        /// Where that entry's data ends.
        other_end: usize,
    },
    /// A stored entry whose sizes differ.
    #[error("entry `{name}` is stored but its sizes differ: {compressed} compressed, {uncompressed} uncompressed")]
    StoredSizeMismatch {
        /// The name.
        name: String,
        /// Compressed size.
        compressed: u64,
        /// Uncompressed size.
        uncompressed: u64,
    },
    /// A data descriptor whose CRC disagrees with the central directory.
    #[error("entry `{name}`: the data descriptor's CRC {local:#010x} differs from the central directory's {central:#010x}")]
    DescriptorMismatch {
        /// The name.
        name: String,
        /// CRC in the descriptor.
        local: u32,
        /// CRC in the central directory.
        central: u32,
    },
    /// A compression method other than stored and deflate.
    #[error(
        "entry `{name}`: compression method {method} is not supported (only stored and deflate)"
    )]
    UnsupportedMethod {
        /// The name.
        name: String,
        /// Method id.
        method: u16,
    },
    /// The deflate stream is corrupt.
    #[error("entry `{name}`: deflate data is corrupt ({reason})")]
    InflateFailed {
        /// The name.
        name: String,
        /// miniz_oxide's status.
        reason: String,
    },
    /// Inflating would exceed the declared size or the caller's limit.
    #[error("entry `{name}`: inflates to more than {limit} bytes (declared {declared}); refusing")]
    InflateLimit {
        /// The name.
        name: String,
        /// The bound that was hit.
        limit: usize,
        /// Declared uncompressed size.
        declared: u64,
    },
    /// Inflated size differs from the declared one.
    #[error("entry `{name}`: inflated to {actual} bytes, but {declared} were declared")]
    InflatedSize {
        /// The name.
        name: String,
        /// Declared size.
        declared: u64,
        /// Actual size.
        actual: usize,
    },
    /// The data's CRC-32 differs from the declared one.
    #[error(
        "entry `{name}`: CRC-32 of the data is {actual:#010x}, but {expected:#010x} was declared"
    )]
    CrcMismatch {
        /// The name.
        name: String,
        /// Declared CRC.
        expected: u32,
        /// Computed CRC.
        actual: u32,
    },
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(
        b.get(at..at.checked_add(2)?)?.try_into().ok()?,
    ))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn le64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

/// The end of the central directory, from the classic record and the zip64 one.
struct End {
    count: u64,
    dir_offset: u64,
    dir_size: u64,
    /// Where the end records start: the central directory must end before this.
    limit: usize,
}

fn find_eocd(bytes: &[u8]) -> Result<usize, ZipError> {
    let last = bytes
        .len()
        .checked_sub(EOCD_LEN)
        .ok_or(ZipError::NoEndOfCentralDirectory)?;
    let first = last.saturating_sub(MAX_COMMENT);
    (first..=last)
        .rev()
        .find(|&at| {
            le32(bytes, at) == Some(EOCD_SIG)
                && le16(bytes, at + 20).map(|c| at + EOCD_LEN + usize::from(c)) == Some(bytes.len())
        })
        .ok_or(ZipError::NoEndOfCentralDirectory)
}

fn read_end(bytes: &[u8]) -> Result<End, ZipError> {
    let at = find_eocd(bytes)?;
    let field16 = |o| le16(bytes, at + o).unwrap_or(0);
    let field32 = |o| le32(bytes, at + o).unwrap_or(0);
    let (disk, dir_disk) = (field16(4), field16(6));
    let (here, total) = (field16(8), field16(10));
    let (size32, offset32) = (field32(12), field32(16));
    if disk != 0 || dir_disk != 0 || here != total {
        return Err(ZipError::MultiDisk);
    }
    let classic = End {
        count: total.into(),
        dir_offset: offset32.into(),
        dir_size: size32.into(),
        limit: at,
    };
    let Some(loc) = at.checked_sub(ZIP64_LOCATOR_LEN) else {
        return Ok(classic);
    };
    if le32(bytes, loc) != Some(ZIP64_LOCATOR_SIG) {
        return Ok(classic);
    }
    let bad = |reason| ZipError::BadZip64 { reason };
    if le32(bytes, loc + 4) != Some(0) || le32(bytes, loc + 16) != Some(1) {
        return Err(ZipError::MultiDisk);
    }
    let rec = le64(bytes, loc + 8)
        .and_then(|o| usize::try_from(o).ok())
        .filter(|&o| o.checked_add(ZIP64_EOCD_LEN).is_some_and(|e| e <= loc))
        .ok_or(bad("the locator points outside the file"))?;
    if le32(bytes, rec) != Some(ZIP64_EOCD_SIG) {
        return Err(bad("no zip64 record where the locator points"));
    }
    let f32_ = |o| le32(bytes, rec + o).unwrap_or(u32::MAX);
    let f64_ = |o| le64(bytes, rec + o).unwrap_or(u64::MAX);
    if f32_(16) != 0 || f32_(20) != 0 || f64_(24) != f64_(32) {
        return Err(ZipError::MultiDisk);
    }
    let zip64 = End {
        count: f64_(32),
        dir_size: f64_(40),
        dir_offset: f64_(48),
        limit: rec,
    };
    // A classic field that is not saturated must agree with the zip64 one.
    for (field, classic, zip64, saturated) in [
        ("the entry count", classic.count, zip64.count, 0xffff),
        (
            "the directory size",
            classic.dir_size,
            zip64.dir_size,
            0xffff_ffff,
        ),
        (
            "the directory offset",
            classic.dir_offset,
            zip64.dir_offset,
            0xffff_ffff,
        ),
    ] {
        if classic != saturated && classic != zip64 {
            return Err(ZipError::InconsistentEnd {
                field,
                classic,
                zip64,
            });
        }
    }
    Ok(zip64)
}

/// Values from a zip64 extended-information extra field, present in this order only
/// for the fields whose 32-bit value is saturated.
fn zip64_extra(extra: &[u8], want: &[bool; 3]) -> Option<[Option<u64>; 3]> {
    let mut at = 0;
    while at + 4 <= extra.len() {
        let id = le16(extra, at)?;
        let len = usize::from(le16(extra, at + 2)?);
        let body = extra.get(at + 4..at + 4 + len)?;
        if id == ZIP64_EXTRA_ID {
            let mut out = [None; 3];
            let mut pos = 0;
            for (slot, &w) in out.iter_mut().zip(want) {
                if w {
                    *slot = Some(le64(body, pos)?);
                    pos += 8;
                }
            }
            return Some(out);
        }
        at += 4 + len;
    }
    None
}

fn name_is_safe(name: &str) -> bool {
    let absolute = name.starts_with('/') || (name.len() >= 2 && name.as_bytes()[1] == b':');
    let escapes = name.split('/').any(|c| c == "..");
    !(name.is_empty() || absolute || escapes || name.contains(['\\', '\0']))
}

/// Reads the central directory of a zip archive and checks every entry's local header.
pub fn read(bytes: &[u8]) -> Result<Archive, ZipError> {
    let end = read_end(bytes)?;
    let out_of_range = || ZipError::DirectoryOutOfRange {
        offset: end.dir_offset,
        size: end.dir_size,
        limit: end.limit,
    };
    let dir_start = usize::try_from(end.dir_offset).map_err(|_| out_of_range())?;
    let dir_size = usize::try_from(end.dir_size).map_err(|_| out_of_range())?;
    let dir_end = dir_start
        .checked_add(dir_size)
        .filter(|&e| e <= end.limit)
        .ok_or_else(out_of_range)?;
    if end.count > (dir_size / CENTRAL_LEN) as u64 {
        return Err(ZipError::CountPastEnd {
            count: end.count,
            size: dir_size,
        });
    }
    let dir = &bytes[dir_start..dir_end];
    let mut entries = Vec::with_capacity(end.count as usize);
    let mut index = HashMap::with_capacity(end.count as usize);
    let mut spans = Vec::with_capacity(end.count as usize);
    let mut pos = 0usize;
    for i in 0..end.count as usize {
        let (entry, header, next) = read_central(dir, dir_start, pos, i)?;
        pos = next;
        if index.insert(entry.name.clone(), i).is_some() {
            return Err(ZipError::DuplicateName { name: entry.name });
        }
        let (entry, span) = check_local(bytes, entry, header, dir_start)?;
        spans.push((span.start, span.end, i));
        entries.push(entry);
    }
    spans.sort_unstable();
    for pair in spans.windows(2) {
        let ((_, prev_end, pi), (next_start, _, ni)) = (pair[0], pair[1]);
        if next_start < prev_end {
            return Err(ZipError::Overlap {
                name: entries[ni].name.clone(),
                start: next_start,
                other: entries[pi].name.clone(),
                other_end: prev_end,
            });
        }
    }
    Ok(Archive { entries, index })
}

/// Central-directory facts needed to check the local header.
struct Central {
    flags: u16,
    method: u16,
    compressed: u64,
    local_offset: u64,
    /// Whether the sizes came from a zip64 extra field.
    zip64_sizes: bool,
}

fn read_central(
    dir: &[u8],
    dir_start: usize,
    pos: usize,
    index: usize,
) -> Result<(Entry, Central, usize), ZipError> {
    let offset = dir_start + pos;
    let truncated = ZipError::Truncated {
        what: "central directory header",
        offset,
    };
    let h = dir.get(pos..pos + CENTRAL_LEN).ok_or(truncated.clone())?;
    if le32(h, 0) != Some(CENTRAL_SIG) {
        return Err(ZipError::BadSignature {
            what: "central directory header",
            offset,
        });
    }
    let f16 = |o| le16(h, o).unwrap_or(0);
    let f32_ = |o| le32(h, o).unwrap_or(0);
    let (flags, method, crc) = (f16(8), f16(10), f32_(16));
    let (csize, usize_, local) = (f32_(20), f32_(24), f32_(42));
    let (name_len, extra_len, comment_len) = (
        usize::from(f16(28)),
        usize::from(f16(30)),
        usize::from(f16(32)),
    );
    let name_at = pos + CENTRAL_LEN;
    let extra_at = name_at + name_len;
    let next = extra_at + extra_len + comment_len;
    let name_bytes = dir.get(name_at..extra_at).ok_or(truncated.clone())?;
    let extra = dir
        .get(extra_at..extra_at + extra_len)
        .ok_or(truncated.clone())?;
    if next > dir.len() {
        return Err(truncated);
    }
    let name = std::str::from_utf8(name_bytes)
        .map_err(|_| ZipError::NameNotUtf8 { index })?
        .to_owned();
    if !name_is_safe(&name) {
        return Err(ZipError::UnsafeName { name });
    }
    if flags & (FLAG_ENCRYPTED | FLAG_STRONG_ENCRYPTION) != 0 {
        return Err(ZipError::Encrypted { name });
    }
    let want = [usize_ == u32::MAX, csize == u32::MAX, local == u32::MAX];
    let z = if want.contains(&true) {
        zip64_extra(extra, &want).unwrap_or([None; 3])
    } else {
        [None; 3]
    };
    let pick = |value: u32, slot: Option<u64>, field| {
        if value != u32::MAX {
            Ok(u64::from(value))
        } else {
            slot.ok_or_else(|| ZipError::MissingZip64 {
                name: name.clone(),
                field,
            })
        }
    };
    let uncompressed = pick(usize_, z[0], "the uncompressed size")?;
    let compressed = pick(csize, z[1], "the compressed size")?;
    let local_offset = pick(local, z[2], "the local header offset")?;
    Ok((
        Entry {
            name,
            method: Method::from_id(method),
            data: 0..0,
            uncompressed_size: uncompressed,
            crc32: crc,
        },
        Central {
            flags,
            method,
            compressed,
            local_offset,
            zip64_sizes: want[0] || want[1],
        },
        next,
    ))
}

/// Checks an entry's local header against the central directory and places its data.
/// Returns the entry and the span it occupies (local header to end of data).
fn check_local(
    bytes: &[u8],
    mut entry: Entry,
    c: Central,
    dir_start: usize,
) -> Result<(Entry, Range<usize>), ZipError> {
    let past_end = |start: u64, end: u64| ZipError::DataPastEnd {
        name: entry.name.clone(),
        start,
        end,
        limit: dir_start,
    };
    let at = usize::try_from(c.local_offset)
        .ok()
        .filter(|&a| a.checked_add(LOCAL_LEN).is_some_and(|e| e <= dir_start))
        .ok_or_else(|| {
            past_end(
                c.local_offset,
                c.local_offset.saturating_add(LOCAL_LEN as u64),
            )
        })?;
    let h = &bytes[at..at + LOCAL_LEN];
    if le32(h, 0) != Some(LOCAL_SIG) {
        return Err(ZipError::BadSignature {
            what: "local file header",
            offset: at,
        });
    }
    let f16 = |o| le16(h, o).unwrap_or(0);
    let f32_ = |o| le32(h, o).unwrap_or(0);
    let (name_len, extra_len) = (usize::from(f16(26)), usize::from(f16(28)));
    let name_at = at + LOCAL_LEN;
    let data_start = name_at + name_len + extra_len;
    if data_start > dir_start {
        return Err(ZipError::Truncated {
            what: "local file header",
            offset: at,
        });
    }
    let local_name = &bytes[name_at..name_at + name_len];
    if local_name != entry.name.as_bytes() {
        return Err(ZipError::LocalNameMismatch {
            name: entry.name,
            local: String::from_utf8_lossy(local_name).into_owned(),
        });
    }
    let mismatch = |field, local: u64, central: u64| ZipError::LocalMismatch {
        name: entry.name.clone(),
        field,
        local,
        central,
    };
    let (flags, method) = (f16(6), f16(8));
    if method != c.method {
        return Err(mismatch(
            "the compression method",
            method.into(),
            c.method.into(),
        ));
    }
    if (flags ^ c.flags) & (FLAG_DESCRIPTOR | FLAG_ENCRYPTED) != 0 {
        return Err(mismatch("the flags", flags.into(), c.flags.into()));
    }
    let (crc, csize, usize_) = (f32_(14), f32_(18), f32_(22));
    let descriptor = c.flags & FLAG_DESCRIPTOR != 0;
    // With a data descriptor the local fields may be zero; otherwise they must agree
    // (a saturated size defers to the zip64 extra field, whose value is checked).
    if !(descriptor && crc == 0) && crc != entry.crc32 {
        return Err(mismatch("the CRC-32", crc.into(), entry.crc32.into()));
    }
    let extra = &bytes[name_at + name_len..data_start];
    let local_z = zip64_extra(extra, &[usize_ == u32::MAX, csize == u32::MAX, false]);
    for (field, local, slot, central) in [
        ("the compressed size", csize, 1, c.compressed),
        ("the uncompressed size", usize_, 0, entry.uncompressed_size),
    ] {
        let value = if local == u32::MAX {
            local_z.and_then(|z| z[slot])
        } else {
            Some(u64::from(local))
        };
        let ok = match value {
            Some(v) => v == central || (descriptor && v == 0),
            None => c.zip64_sizes || descriptor,
        };
        if !ok {
            return Err(mismatch(field, value.unwrap_or(u64::MAX), central));
        }
    }
    let end = (data_start as u64)
        .checked_add(c.compressed)
        .filter(|&e| e <= dir_start as u64)
        .ok_or_else(|| {
            past_end(
                data_start as u64,
                (data_start as u64).saturating_add(c.compressed),
            )
        })?;
    let end = end as usize;
    if entry.method == Method::Stored && c.compressed != entry.uncompressed_size {
        return Err(ZipError::StoredSizeMismatch {
            name: entry.name,
            compressed: c.compressed,
            uncompressed: entry.uncompressed_size,
        });
    }
    let mut span_end = end;
    if descriptor {
        // Optional signature, then the CRC; the sizes that follow are 4 or 8 bytes.
        let mut p = end;
        if le32(bytes, p) == Some(DESCRIPTOR_SIG) {
            p += 4;
        }
        let d_crc = le32(bytes, p)
            .filter(|_| p + 4 <= dir_start)
            .ok_or(ZipError::Truncated {
                what: "data descriptor",
                offset: end,
            })?;
        if d_crc != entry.crc32 {
            return Err(ZipError::DescriptorMismatch {
                name: entry.name,
                local: d_crc,
                central: entry.crc32,
            });
        }
        span_end = p + 4;
    }
    entry.data = data_start..end;
    Ok((entry, at..span_end))
}

/// The data of a stored entry: `&bytes[entry.data]`, refused for compressed entries.
pub fn stored<'a>(bytes: &'a [u8], entry: &Entry) -> Result<&'a [u8], ZipError> {
    match entry.method {
        Method::Stored => bytes.get(entry.data.clone()).ok_or(ZipError::DataPastEnd {
            name: entry.name.clone(),
            start: entry.data.start as u64,
            end: entry.data.end as u64,
            limit: bytes.len(),
        }),
        Method::Deflate => Err(ZipError::UnsupportedMethod {
            name: entry.name.clone(),
            method: 8,
        }),
        Method::Other(m) => Err(ZipError::UnsupportedMethod {
            name: entry.name.clone(),
            method: m,
        }),
    }
}

/// The uncompressed data of an entry: borrowed when stored, inflated when deflated.
/// Inflating stops at `min(declared size, limit)` bytes, so a zip bomb costs at most
/// `limit` bytes of memory; the result's size and CRC-32 must match the declared ones.
pub fn inflate<'a>(
    bytes: &'a [u8],
    entry: &Entry,
    limit: usize,
) -> Result<std::borrow::Cow<'a, [u8]>, ZipError> {
    let data = bytes.get(entry.data.clone()).ok_or(ZipError::DataPastEnd {
        name: entry.name.clone(),
        start: entry.data.start as u64,
        end: entry.data.end as u64,
        limit: bytes.len(),
    })?;
    let out: std::borrow::Cow<'a, [u8]> = match entry.method {
        Method::Stored => {
            if data.len() > limit {
                return Err(ZipError::InflateLimit {
                    name: entry.name.clone(),
                    limit,
                    declared: entry.uncompressed_size,
                });
            }
            data.into()
        }
        Method::Other(m) => {
            return Err(ZipError::UnsupportedMethod {
                name: entry.name.clone(),
                method: m,
            })
        }
        Method::Deflate => {
            let bound = usize::try_from(entry.uncompressed_size)
                .unwrap_or(usize::MAX)
                .min(limit);
            match miniz_oxide::inflate::decompress_to_vec_with_limit(data, bound) {
                Ok(v) => v.into(),
                Err(e) if e.status == miniz_oxide::inflate::TINFLStatus::HasMoreOutput => {
                    return Err(ZipError::InflateLimit {
                        name: entry.name.clone(),
                        limit: bound,
                        declared: entry.uncompressed_size,
                    })
                }
                Err(e) => {
                    return Err(ZipError::InflateFailed {
                        name: entry.name.clone(),
                        reason: format!("{:?}", e.status),
                    })
                }
            }
        }
    };
    if out.len() as u64 != entry.uncompressed_size {
        return Err(ZipError::InflatedSize {
            name: entry.name.clone(),
            declared: entry.uncompressed_size,
            actual: out.len(),
        });
    }
    check_crc(entry, &out)?;
    Ok(out)
}

/// Checks the CRC-32 of a stored entry's data (reads all of it).
pub fn verify_crc(bytes: &[u8], entry: &Entry) -> Result<(), ZipError> {
    let data = stored(bytes, entry)?;
    check_crc(entry, data)
}

fn check_crc(entry: &Entry, data: &[u8]) -> Result<(), ZipError> {
    let actual = crc32(data);
    if actual != entry.crc32 {
        return Err(ZipError::CrcMismatch {
            name: entry.name.clone(),
            expected: entry.crc32,
            actual,
        });
    }
    Ok(())
}

const CRC_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
};

/// CRC-32 (IEEE, as zip uses it).
pub fn crc32(data: &[u8]) -> u32 {
    !data.iter().fold(!0u32, |c, &b| {
        CRC_TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8)
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    /// One member for [`build`].
    #[derive(Clone)]
    pub(crate) struct Member {
        pub name: String,
        pub data: Vec<u8>,
        pub method: u16,
        /// Compressed bytes (defaults to `data` for stored members).
        pub raw: Option<Vec<u8>>,
        /// Torch style: flag bit 3, zero local CRC/sizes, a data descriptor.
        pub descriptor: bool,
    }

    pub(crate) fn stored_member(name: &str, data: &[u8]) -> Member {
        Member {
            name: name.into(),
            data: data.to_vec(),
            method: 0,
            raw: None,
            descriptor: true,
        }
    }

    /// Builds a zip file the way torch's writer does (64-byte aligned data via an `FB`
    /// extra field, data descriptors, zip64 end records when `zip64` is set).
    pub(crate) fn build(members: &[Member], zip64: bool) -> Vec<u8> {
        let mut out = Vec::new();
        let mut central = Vec::new();
        for m in members {
            let raw = m.raw.clone().unwrap_or_else(|| m.data.clone());
            let crc = crc32(&m.data);
            let offset = out.len();
            let flags: u16 = if m.descriptor { 0x808 } else { 0x800 };
            let base = offset + LOCAL_LEN + m.name.len() + 4;
            let pad = base.next_multiple_of(64) - base;
            let (lcrc, lc, lu) = if m.descriptor {
                (0, 0, 0)
            } else {
                (crc, raw.len() as u32, m.data.len() as u32)
            };
            out.extend(LOCAL_SIG.to_le_bytes());
            out.extend(20u16.to_le_bytes());
            out.extend(flags.to_le_bytes());
            out.extend(m.method.to_le_bytes());
            out.extend([0; 4]);
            out.extend(lcrc.to_le_bytes());
            out.extend(lc.to_le_bytes());
            out.extend(lu.to_le_bytes());
            out.extend((m.name.len() as u16).to_le_bytes());
            out.extend(((4 + pad) as u16).to_le_bytes());
            out.extend(m.name.as_bytes());
            out.extend(b"FB");
            out.extend((pad as u16).to_le_bytes());
            out.extend(std::iter::repeat_n(b'Z', pad));
            out.extend(&raw);
            if m.descriptor {
                out.extend(DESCRIPTOR_SIG.to_le_bytes());
                out.extend(crc.to_le_bytes());
                out.extend((raw.len() as u32).to_le_bytes());
                out.extend((m.data.len() as u32).to_le_bytes());
            }
            central.extend(CENTRAL_SIG.to_le_bytes());
            central.extend([0, 0, 20, 0]);
            central.extend(flags.to_le_bytes());
            central.extend(m.method.to_le_bytes());
            central.extend([0; 4]);
            central.extend(crc.to_le_bytes());
            central.extend((raw.len() as u32).to_le_bytes());
            central.extend((m.data.len() as u32).to_le_bytes());
            central.extend((m.name.len() as u16).to_le_bytes());
            central.extend([0; 12]);
            central.extend((offset as u32).to_le_bytes());
            central.extend(m.name.as_bytes());
        }
        let dir_offset = out.len();
        out.extend(&central);
        let n = members.len() as u64;
        if zip64 {
            let rec = out.len();
            out.extend(ZIP64_EOCD_SIG.to_le_bytes());
            out.extend(44u64.to_le_bytes());
            out.extend([45, 0, 45, 0]);
            out.extend([0; 8]);
            out.extend(n.to_le_bytes());
            out.extend(n.to_le_bytes());
            out.extend((central.len() as u64).to_le_bytes());
            out.extend((dir_offset as u64).to_le_bytes());
            out.extend(ZIP64_LOCATOR_SIG.to_le_bytes());
            out.extend(0u32.to_le_bytes());
            out.extend((rec as u64).to_le_bytes());
            out.extend(1u32.to_le_bytes());
        }
        out.extend(EOCD_SIG.to_le_bytes());
        out.extend([0; 4]);
        out.extend((n as u16).to_le_bytes());
        out.extend((n as u16).to_le_bytes());
        out.extend((central.len() as u32).to_le_bytes());
        out.extend((dir_offset as u32).to_le_bytes());
        out.extend([0; 2]);
        out
    }

    fn two() -> Vec<Member> {
        vec![
            stored_member("arc/data.pkl", b"\x80\x02}q\x00."),
            stored_member("arc/data/0", &[1, 2, 3, 4, 5, 6, 7, 8]),
        ]
    }

    #[test]
    fn reads_torch_style_archives() {
        for zip64 in [false, true] {
            let f = build(&two(), zip64);
            let a = read(&f).unwrap();
            assert_eq!(a.entries.len(), 2);
            let e = a.entry("arc/data/0").unwrap();
            assert_eq!(e.method, Method::Stored);
            assert_eq!(e.data.start % 64, 0);
            assert_eq!(&f[e.data.clone()], &[1, 2, 3, 4, 5, 6, 7, 8]);
            assert_eq!(stored(&f, e).unwrap(), &[1, 2, 3, 4, 5, 6, 7, 8]);
            verify_crc(&f, e).unwrap();
            assert!(a.entry("arc/data/1").is_none());
        }
    }

    #[test]
    fn crc32_known_value() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        assert_eq!(crc32(b""), 0);
    }

    #[test]
    fn truncation_at_every_point() {
        let f = build(&two(), true);
        for len in 0..f.len() {
            assert!(read(&f[..len]).is_err(), "prefix of {len} bytes read");
        }
    }

    #[test]
    fn unsafe_and_duplicate_names() {
        for bad in ["/etc/passwd", "a/../../b", "..", "a\\b", "C:x", "", "a\0b"] {
            let f = build(&[stored_member(bad, b"x")], false);
            assert!(
                matches!(read(&f), Err(ZipError::UnsafeName { .. })),
                "{bad:?}"
            );
        }
        let f = build(&[stored_member("a", b"x"), stored_member("a", b"y")], false);
        assert_eq!(read(&f), Err(ZipError::DuplicateName { name: "a".into() }));
        assert!(read(&build(&[stored_member("a/..b/c.", b"x")], false)).is_ok());
    }

    #[test]
    fn local_header_disagreements() {
        let f = build(&two(), false);
        let a = read(&f).unwrap();
        let e = a.entry("arc/data/0").unwrap();
        // The second local header starts where the first descriptor ends: find it.
        let at = f
            .windows(4)
            .enumerate()
            .filter(|(_, w)| *w == LOCAL_SIG.to_le_bytes())
            .map(|(i, _)| i)
            .nth(1)
            .unwrap();
        let mut g = f.clone();
        g[at + 8] = 8; // method
        assert!(matches!(
            read(&g),
            Err(ZipError::LocalMismatch {
                field: "the compression method",
                ..
            })
        ));
        let mut g = f.clone();
        g[at + 6] = 0; // flags: descriptor bit cleared
        assert!(matches!(
            read(&g),
            Err(ZipError::LocalMismatch {
                field: "the flags",
                ..
            })
        ));
        let mut g = f.clone();
        g[at + 30 + 3] = b'X'; // name
        assert!(matches!(read(&g), Err(ZipError::LocalNameMismatch { .. })));
        let mut g = f.clone();
        g[at + 18] = 9; // compressed size, non-zero and wrong
        assert!(matches!(
            read(&g),
            Err(ZipError::LocalMismatch {
                field: "the compressed size",
                ..
            })
        ));
        let mut g = f.clone();
        g[e.data.end + 4] ^= 1; // descriptor CRC
        assert!(matches!(read(&g), Err(ZipError::DescriptorMismatch { .. })));
        let mut g = f;
        g[at] = b'Q';
        assert!(matches!(
            read(&g),
            Err(ZipError::BadSignature {
                what: "local file header",
                ..
            })
        ));
    }

    #[test]
    fn without_descriptors_local_fields_must_agree() {
        let mut m = two();
        for x in &mut m {
            x.descriptor = false;
        }
        let f = build(&m, false);
        assert!(read(&f).is_ok());
        let mut g = f.clone();
        g[14] ^= 1; // first local CRC
        assert!(matches!(
            read(&g),
            Err(ZipError::LocalMismatch {
                field: "the CRC-32",
                ..
            })
        ));
    }

    /// Offsets of the central directory headers in a built file.
    fn central_headers(f: &[u8]) -> Vec<usize> {
        f.windows(4)
            .enumerate()
            .filter(|(_, w)| *w == CENTRAL_SIG.to_le_bytes())
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn overlapping_and_runaway_entries() {
        let f = build(&two(), false);
        let c = central_headers(&f);
        // Point the second entry at the first's local header.
        let mut g = f.clone();
        g[c[1] + 42..c[1] + 46].copy_from_slice(&0u32.to_le_bytes());
        assert!(read(&g).is_err());
        // Make the first entry's data run into the second (sizes agree: local ones are 0).
        let mut g = f.clone();
        g[c[0] + 20..c[0] + 24].copy_from_slice(&100u32.to_le_bytes());
        g[c[0] + 24..c[0] + 28].copy_from_slice(&100u32.to_le_bytes());
        let e = read(&g);
        assert!(
            matches!(
                e,
                Err(ZipError::Overlap { .. }) | Err(ZipError::DescriptorMismatch { .. })
            ),
            "{e:?}"
        );
        // Without descriptors the overlap itself is what is reported.
        let mut m = two();
        for x in &mut m {
            x.descriptor = false;
        }
        let f2 = build(&m, false);
        let c2 = central_headers(&f2);
        let mut g = f2.clone();
        for at in [c2[0] + 20, c2[0] + 24, 18, 22] {
            g[at..at + 4].copy_from_slice(&40u32.to_le_bytes());
        }
        let e = read(&g);
        assert!(
            matches!(&e, Err(ZipError::Overlap { name, other, .. }) if name == "arc/data/0" && other == "arc/data.pkl"),
            "{e:?}"
        );
        // Data past the central directory.
        let mut g = f.clone();
        g[c[1] + 20..c[1] + 24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(read(&g), Err(ZipError::MissingZip64 { .. })));
        let mut g = f;
        g[c[1] + 20..c[1] + 24].copy_from_slice(&100_000u32.to_le_bytes());
        g[c[1] + 24..c[1] + 28].copy_from_slice(&100_000u32.to_le_bytes());
        assert!(matches!(read(&g), Err(ZipError::DataPastEnd { .. })));
    }

    #[test]
    fn stored_sizes_must_match() {
        let f = build(&two(), false);
        let c = central_headers(&f);
        let mut g = f;
        g[c[1] + 24..c[1] + 28].copy_from_slice(&9u32.to_le_bytes());
        assert!(matches!(read(&g), Err(ZipError::StoredSizeMismatch { .. })));
    }

    #[test]
    fn encrypted_and_unknown_methods() {
        let f = build(&two(), false);
        let c = central_headers(&f);
        let mut g = f.clone();
        g[c[0] + 8] |= 1;
        assert!(matches!(read(&g), Err(ZipError::Encrypted { .. })));
        let mut m = two();
        m[1].method = 12; // bzip2
        m[1].raw = Some(b"BZh".to_vec());
        let f = build(&m, false);
        let a = read(&f).unwrap();
        let e = a.entry("arc/data/0").unwrap();
        assert_eq!(e.method, Method::Other(12));
        assert!(matches!(
            inflate(&f, e, 1 << 20),
            Err(ZipError::UnsupportedMethod { method: 12, .. })
        ));
        assert!(matches!(
            stored(&f, e),
            Err(ZipError::UnsupportedMethod { .. })
        ));
    }

    #[test]
    fn bounded_inflate() {
        let data: Vec<u8> = (0..5000u32).map(|i| (i % 7) as u8).collect();
        let raw = miniz_oxide::deflate::compress_to_vec(&data, 6);
        let m = Member {
            name: "a/data.pkl".into(),
            data: data.clone(),
            method: 8,
            raw: Some(raw.clone()),
            descriptor: true,
        };
        let f = build(std::slice::from_ref(&m), true);
        let a = read(&f).unwrap();
        let e = a.entry("a/data.pkl").unwrap();
        assert_eq!(e.method, Method::Deflate);
        assert_eq!(inflate(&f, e, 1 << 20).unwrap().as_ref(), &data[..]);
        assert!(matches!(
            inflate(&f, e, 100),
            Err(ZipError::InflateLimit { limit: 100, .. })
        ));
        // A bomb declaring a small size is stopped at the declared size.
        let mut e2 = e.clone();
        e2.uncompressed_size = 10;
        assert!(matches!(
            inflate(&f, &e2, 1 << 20),
            Err(ZipError::InflateLimit { limit: 10, .. })
        ));
        // Declared larger than the real output.
        let mut e3 = e.clone();
        e3.uncompressed_size = 6000;
        assert!(matches!(
            inflate(&f, &e3, 1 << 20),
            Err(ZipError::InflatedSize { actual: 5000, .. })
        ));
        // Wrong CRC.
        let mut e4 = e.clone();
        e4.crc32 ^= 1;
        assert!(matches!(
            inflate(&f, &e4, 1 << 20),
            Err(ZipError::CrcMismatch { .. })
        ));
        // Corrupt stream.
        let mut g = f.clone();
        for b in &mut g[e.data.clone()] {
            *b = 0xff;
        }
        assert!(inflate(&g, e, 1 << 20).is_err());
        assert!(matches!(
            stored(&f, e),
            Err(ZipError::UnsupportedMethod { method: 8, .. })
        ));
    }

    #[test]
    fn end_record_abuse() {
        assert_eq!(read(b"PK\x03\x04"), Err(ZipError::NoEndOfCentralDirectory));
        // Entry count far beyond the directory.
        let f = build(&two(), false);
        let eocd = f.len() - EOCD_LEN;
        let mut g = f.clone();
        g[eocd + 8..eocd + 12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(read(&g), Err(ZipError::CountPastEnd { .. })));
        let f = build(&two(), true);
        let eocd = f.len() - EOCD_LEN;
        let rec = eocd - ZIP64_LOCATOR_LEN - ZIP64_EOCD_LEN;
        let mut g = f.clone();
        g[rec + 24..rec + 40].copy_from_slice(&[0xff; 16]);
        g[eocd + 8..eocd + 12].copy_from_slice(&[0xff, 0xff, 0xff, 0xff]);
        assert!(matches!(read(&g), Err(ZipError::CountPastEnd { .. })));
        // Classic and zip64 disagree.
        let mut g = f.clone();
        g[eocd + 8..eocd + 12].copy_from_slice(&[3, 0, 3, 0]);
        assert!(matches!(read(&g), Err(ZipError::InconsistentEnd { .. })));
        // Multi-disk.
        let mut g = f.clone();
        g[eocd + 4] = 1;
        assert_eq!(read(&g), Err(ZipError::MultiDisk));
        // Locator pointing nowhere.
        let loc = eocd - ZIP64_LOCATOR_LEN;
        let mut g = f.clone();
        g[loc + 8..loc + 16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read(&g), Err(ZipError::BadZip64 { .. })));
        // Directory offset out of range.
        let f = build(&two(), false);
        let eocd = f.len() - EOCD_LEN;
        let mut g = f;
        g[eocd + 16..eocd + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            read(&g),
            Err(ZipError::DirectoryOutOfRange { .. })
        ));
    }

    #[test]
    fn zip64_extra_fields() {
        // Saturate the central sizes and offset and give them in a zip64 extra field.
        let f = build(&[stored_member("a/b", b"hello")], false);
        let c = central_headers(&f)[0];
        let mut g = f[..c].to_vec();
        let mut h = f[c..c + CENTRAL_LEN].to_vec();
        h[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        h[24..28].copy_from_slice(&u32::MAX.to_le_bytes());
        h[42..46].copy_from_slice(&u32::MAX.to_le_bytes());
        h[30..32].copy_from_slice(&28u16.to_le_bytes());
        g.extend(&h);
        g.extend(b"a/b");
        g.extend(ZIP64_EXTRA_ID.to_le_bytes());
        g.extend(24u16.to_le_bytes());
        g.extend(5u64.to_le_bytes());
        g.extend(5u64.to_le_bytes());
        g.extend(0u64.to_le_bytes());
        let size = (g.len() - c) as u32;
        g.extend(EOCD_SIG.to_le_bytes());
        g.extend([0, 0, 0, 0, 1, 0, 1, 0]);
        g.extend(size.to_le_bytes());
        g.extend((c as u32).to_le_bytes());
        g.extend([0, 0]);
        let a = read(&g).unwrap();
        let e = a.entry("a/b").unwrap();
        assert_eq!(&g[e.data.clone()], b"hello");
        assert_eq!(e.uncompressed_size, 5);
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = read(&bytes);
            }

            #[test]
            fn mutated_archives_never_panic(
                edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
                zip64 in any::<bool>(),
            ) {
                let mut f = build(&two(), zip64);
                for (at, byte) in edits {
                    let i = at.index(f.len());
                    f[i] = byte;
                }
                if let Ok(a) = read(&f) {
                    for e in &a.entries {
                        let _ = inflate(&f, e, 1 << 16);
                    }
                }
            }
        }
    }
}
