//! A stream's files as a job that is not running left them: the ring file
//! and its `.head` sidecar (see the parent module for their invariants), or
//! an older quernd's rotated pair; and reading them back.

use super::*;

/// Where a stream's bytes are in its file.
#[derive(Clone, Copy, Debug)]
pub(super) struct Layout {
    /// Slots in the ring: the byte at position `p` is at offset `p % ring`.
    pub(super) ring: u64,
    /// Bytes written, across attempts.
    pub(super) total: u64,
    /// See [`StreamState::reserved`].
    pub(super) reserved: u64,
}

impl Layout {
    pub(super) fn kept(&self) -> std::ops::Range<u64> {
        self.reserved.saturating_sub(self.ring).min(self.total)..self.total
    }
}

/// A stream's files as a job that is not running left them.
pub(super) enum Stored {
    /// A ring file (or plain file), and where its bytes are.
    File(Option<File>, Layout),
    /// An older quernd's rotated pair, read whole: the newest `cap` bytes.
    Legacy(Vec<u8>),
}

impl Stored {
    pub(super) fn open(paths: &Paths, cap: u64) -> std::io::Result<Stored> {
        if paths.old.exists() {
            let mut data = read_or_empty(&paths.old)?;
            data.extend(read_or_empty(&paths.cur)?);
            let cap = usize::try_from(cap).unwrap_or(usize::MAX);
            if data.len() > cap {
                data.drain(..data.len() - cap);
            }
            return Ok(Stored::Legacy(data));
        }
        let file = match File::open(&paths.cur) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let empty = Layout {
                    ring: cap,
                    total: 0,
                    reserved: 0,
                };
                return Ok(Stored::File(None, empty));
            }
            Err(e) => return Err(e),
        };
        let meta = file.metadata()?;
        let layout = match read_head(&paths.head, meta.ino())? {
            Some(l) => l,
            // A plain file: position p at offset p.
            None => Layout {
                ring: meta.len().max(cap),
                total: meta.len(),
                reserved: meta.len(),
            },
        };
        Ok(Stored::File(Some(file), layout))
    }

    pub(super) fn kept(&self) -> std::ops::Range<u64> {
        match self {
            Stored::File(_, l) => l.kept(),
            Stored::Legacy(d) => 0..d.len() as u64,
        }
    }

    pub(super) fn read(&self, from: u64, limit: usize) -> std::io::Result<Piece> {
        match self {
            Stored::File(None, _) => Ok(Piece::default()),
            Stored::File(Some(f), l) => read_ring(f, l.ring, l.kept(), from, limit),
            Stored::Legacy(d) => {
                let start = from.min(d.len() as u64) as usize;
                let end = start.saturating_add(limit).min(d.len());
                Ok(Piece {
                    skipped: 0,
                    offset: start as u64,
                    data: d[start..end].to_vec(),
                })
            }
        }
    }
}

/// Reads the sidecar of the data file with inode `ino`. A sidecar left by
/// a file that was since replaced (its inode differs) is ignored.
pub(super) fn read_head(path: &Path, ino: u64) -> std::io::Result<Option<Layout>> {
    let raw = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    if raw.len() < HEAD_LEN || &raw[..8] != HEAD_MAGIC {
        return Ok(None);
    }
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&raw[8 * i..8 * i + 8]);
        u64::from_le_bytes(b)
    };
    if word(1) != ino || word(2) == 0 {
        return Ok(None);
    }
    Ok(Some(Layout {
        ring: word(2),
        total: word(3),
        reserved: word(4).max(word(3)),
    }))
}

pub(super) fn head_bytes(ino: u64, l: &Layout) -> [u8; HEAD_LEN] {
    let mut b = [0u8; HEAD_LEN];
    b[..8].copy_from_slice(HEAD_MAGIC);
    for (i, w) in [ino, l.ring, l.total, l.reserved].into_iter().enumerate() {
        b[8 * (i + 1)..8 * (i + 2)].copy_from_slice(&w.to_le_bytes());
    }
    b
}

/// Reads up to `limit` bytes from position `from` of a ring of `ring`
/// slots whose kept bytes are `kept`. Bytes before `kept` are reported as
/// skipped.
pub(super) fn read_ring(
    file: &File,
    ring: u64,
    kept: std::ops::Range<u64>,
    from: u64,
    limit: usize,
) -> std::io::Result<Piece> {
    let start = from.max(kept.start);
    let skipped = start - from.min(start);
    let end = kept.end.min(start.saturating_add(limit as u64)).max(start);
    let mut data = vec![0u8; usize::try_from(end - start).unwrap_or(0)];
    let mut got = 0;
    while got < data.len() {
        let pos = start + got as u64;
        // One contiguous run of slots at a time: a read never crosses the
        // ring's end.
        let slot = pos % ring;
        let run = (data.len() - got).min(usize::try_from(ring - slot).unwrap_or(usize::MAX));
        let n = file.read_at(&mut data[got..got + run], slot)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    data.truncate(got);
    Ok(Piece {
        skipped,
        offset: start,
        data,
    })
}

pub(super) fn read_or_empty(p: &Path) -> std::io::Result<Vec<u8>> {
    match std::fs::read(p) {
        Ok(d) => Ok(d),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}
