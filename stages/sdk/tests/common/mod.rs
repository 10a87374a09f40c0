//! Helpers shared by the codec's integration tests: read a whole input into batches, write
//! batches back, find the test data, and feed a reader in awkward chunks.
#![allow(dead_code)]

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use pipe_sdk::codec::{self, BadRecord, Format};
use pipe_sdk::{Batch, Kind};

/// A row's present fields: `(name, kind, text)` in column order.
pub type Fields = Vec<(String, Kind, String)>;

/// Everything a reader made of one input.
#[derive(Debug, Default)]
pub struct ReadAll {
    pub batches: Vec<Batch>,
    pub bad: Vec<BadRecord>,
}

impl ReadAll {
    /// The number of rows in all batches.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(Batch::len).sum()
    }

    /// Every row as `(line, [(name, kind, text)])`, absent fields left out.
    pub fn records(&self) -> Vec<(u64, Fields)> {
        self.batches
            .iter()
            .flat_map(|b| b.rows())
            .map(|row| {
                let fields = (0..row.batch().width())
                    .filter_map(|c| {
                        let (kind, text) = row.raw(c);
                        (kind != Kind::Absent)
                            .then(|| (row.batch().column_name(c).to_owned(), kind, text.to_owned()))
                    })
                    .collect();
                (row.pos().line, fields)
            })
            .collect()
    }

    /// Every row's field texts (for CSV, where all cells are strings).
    pub fn texts(&self) -> Vec<Vec<String>> {
        self.records()
            .into_iter()
            .map(|(_, f)| f.into_iter().map(|(_, _, t)| t).collect())
            .collect()
    }

    /// The lines of all rows.
    pub fn row_lines(&self) -> Vec<u64> {
        self.records().into_iter().map(|(l, _)| l).collect()
    }

    /// The lines of all bad records.
    pub fn bad_lines(&self) -> Vec<u64> {
        self.bad.iter().map(|b| b.pos.line).collect()
    }
}

/// Reads all of `input` with the reader for `format`, `max` records per batch.
pub fn read_from(format: Format, input: impl Read + Send, max: usize) -> ReadAll {
    let mut reader = codec::reader(format, input, 0);
    let mut all = ReadAll::default();
    let mut calls = 0usize;
    loop {
        let mut batch = Batch::new();
        let before = all.bad.len();
        let more = reader
            .read_batch(&mut batch, max, &mut all.bad)
            .expect("reading from memory does not fail");
        assert!(
            batch.len() <= max && batch.len() + (all.bad.len() - before) <= max + 1,
            "a batch call took more than {max} records"
        );
        if !more {
            assert!(batch.is_empty(), "rows returned with Ok(false)");
            break;
        }
        calls += 1;
        assert!(calls < 10_000_000, "the reader does not end");
        if !batch.is_empty() {
            all.batches.push(batch);
        }
    }
    all
}

/// Reads all of `bytes`.
pub fn read_all(format: Format, bytes: &[u8]) -> ReadAll {
    read_from(format, bytes, 1024)
}

/// Writes `batches` with the writer for `format`.
pub fn write_all(format: Format, batches: &[Batch]) -> Vec<u8> {
    let mut out = Vec::new();
    {
        let mut w = codec::writer(format, &mut out);
        for b in batches {
            w.write_batch(b).expect("the batches fit the format");
        }
        w.flush().expect("writing to memory");
    }
    out
}

/// The SDK's own copy of the test data.
pub fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data")
}

/// `shared/testdata/<name>` beside the repository, when it is there.
pub fn shared_dir(name: &str) -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata")
        .join(name);
    dir.is_dir().then_some(dir)
}

/// The files of `dir`, sorted by name.
pub fn files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    v.sort();
    v
}

/// Asserts that every file under `shared` is in `copy` with the same bytes.
pub fn assert_copy_matches(shared: &Path, copy: &Path) {
    for entry in std::fs::read_dir(shared).unwrap() {
        let path = entry.unwrap().path();
        let twin = copy.join(path.file_name().unwrap());
        if path.is_dir() {
            assert_copy_matches(&path, &twin);
        } else {
            let theirs = std::fs::read(&path).unwrap();
            let ours = std::fs::read(&twin)
                .unwrap_or_else(|e| panic!("{} is not copied: {e}", twin.display()));
            assert!(
                theirs == ours,
                "{} differs from {}",
                twin.display(),
                path.display()
            );
        }
    }
}

/// A reader that hands out its bytes in chunks of the given sizes, in turn (the sizes a
/// pipe or a slow disk might give): exercises state carried across reads.
pub struct Chunked<'a> {
    data: &'a [u8],
    sizes: Vec<usize>,
    next: usize,
}

impl<'a> Chunked<'a> {
    pub fn new(data: &'a [u8], sizes: Vec<usize>) -> Chunked<'a> {
        assert!(sizes.iter().all(|&s| s > 0));
        Chunked {
            data,
            sizes,
            next: 0,
        }
    }
}

impl Read for Chunked<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let size = self.sizes[self.next % self.sizes.len()];
        self.next += 1;
        let n = size.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}
