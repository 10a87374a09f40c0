//! Deterministic sample data: orders as CSV, events as JSON lines, of any size. Used by
//! `pipe generate`, `pipe bench --records N` and `benches/`, so that every measurement
//! runs on the same bytes.
//!
//! Orders have the columns of `samples/orders.csv` (id, ts, user, email, country,
//! amount with two decimals, status, and a free-text note with quoted commas and
//! quotes), about 100 bytes a row; events the keys of `samples/events.jsonl`, with nested
//! arrays on purchases.

use std::io::{self, Write};

/// A small, fast, seeded generator (SplitMix64): the same seed gives the same data on
/// every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len() as u64) as usize]
    }
}

const USERS: &[&str] = &[
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy", "mallory",
    "niaj", "olivia", "peggy", "rupert", "sybil", "trent", "victor", "walter", "yara",
];
const COUNTRIES: &[&str] = &["us", "de", "fr", "gb", "jp", "br", "in", "ca"];
const STATUSES: &[&str] = &["paid", "paid", "paid", "pending", "refunded", "failed"];
const NOTES: &[&str] = &[
    "",
    "gift wrap",
    "\"leave at door, ring twice\"",
    "\"\"\"fragile\"\" - handle with care\"",
    "call before delivery",
    "",
    "\"second order, same address\"",
    "",
    "\"deliver to the back door, by the garden shed; the dog is friendly\"",
];
const KINDS: &[&str] = &["page_view", "click", "signup", "purchase"];
const PATHS: &[&str] = &["/", "/pricing", "/docs/start", "/blog/hot-swap"];

/// Writes `n` order rows (with a header) as CSV.
pub fn orders_csv(out: &mut dyn Write, n: u64, seed: u64) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    let mut r = Rng(seed);
    writeln!(w, "id,ts,user,email,country,amount,status,note")?;
    for id in 1..=n {
        let user = r.pick(USERS);
        writeln!(
            w,
            "{id},2026-{:02}-{:02}T{:02}:{:02}:{:02}Z,{user},{user}.{}@example.com,{},{}.{:02},{},{}",
            1 + r.below(12),
            1 + r.below(28),
            r.below(24),
            r.below(60),
            r.below(60),
            r.below(100),
            r.pick(COUNTRIES),
            r.below(1000),
            r.below(100),
            r.pick(STATUSES),
            r.pick(NOTES),
        )?;
    }
    w.flush()
}

/// Writes `n` order rows as JSON lines (the same records as [`orders_csv`]).
pub fn orders_jsonl(out: &mut dyn Write, n: u64, seed: u64) -> io::Result<()> {
    let mut csv_bytes = Vec::new();
    orders_csv(&mut csv_bytes, n, seed)?;
    let mut rdr = csv::Reader::from_reader(csv_bytes.as_slice());
    let headers = rdr.headers().map_err(io::Error::other)?.clone();
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    let mut line = Vec::with_capacity(256);
    for rec in rdr.records() {
        let rec = rec.map_err(io::Error::other)?;
        line.clear();
        line.push(b'{');
        for (i, (k, v)) in headers.iter().zip(rec.iter()).enumerate() {
            if i > 0 {
                line.push(b',');
            }
            pipe_sdk::codec::write_json_str(&mut line, k);
            line.push(b':');
            match k {
                "id" => line.extend_from_slice(v.as_bytes()),
                "amount" => line.extend_from_slice(v.as_bytes()),
                _ => pipe_sdk::codec::write_json_str(&mut line, v),
            }
        }
        line.extend_from_slice(b"}\n");
        w.write_all(&line)?;
    }
    w.flush()
}

/// Writes `n` events as JSON lines.
pub fn events_jsonl(out: &mut dyn Write, n: u64, seed: u64) -> io::Result<()> {
    let mut w = io::BufWriter::with_capacity(1 << 16, out);
    let mut r = Rng(seed);
    for id in 1..=n {
        let kind = r.pick(KINDS);
        write!(
            w,
            "{{\"event_id\":{id},\"ts\":\"2026-11-25T{:02}:{:02}:{:02}Z\",\"user\":\"{}\",\"kind\":\"{kind}\",\"country\":\"{}\"",
            r.below(24),
            r.below(60),
            r.below(60),
            r.pick(USERS),
            r.pick(COUNTRIES),
        )?;
        match kind {
            "purchase" => write!(
                w,
                ",\"amount\":{}.{:02},\"items\":[{{\"sku\":\"SKU-{}\",\"qty\":{}}}]",
                5 + r.below(300),
                r.below(100),
                100 + r.below(900),
                1 + r.below(3)
            )?,
            "page_view" => write!(w, ",\"path\":\"{}\"", r.pick(PATHS))?,
            _ => {}
        }
        writeln!(w, ",\"mobile\":{}}}", r.below(10) < 4)?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_data_is_deterministic_and_parses() {
        let mut a = Vec::new();
        let mut b = Vec::new();
        orders_csv(&mut a, 500, 1).unwrap();
        orders_csv(&mut b, 500, 1).unwrap();
        assert_eq!(a, b);
        let mut rdr = csv::Reader::from_reader(a.as_slice());
        let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
        assert_eq!(rows.len(), 500);
        assert!(rows.iter().all(|r| r.len() == 8));
        assert!(rows.iter().any(|r| r[7].contains(',')));
        assert!(rows.iter().any(|r| r[7].contains('"')));
        let mut j = Vec::new();
        orders_jsonl(&mut j, 50, 1).unwrap();
        for line in String::from_utf8(j).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["id"].is_u64() && v["amount"].is_f64() || v["amount"].is_u64());
        }
        let mut e = Vec::new();
        events_jsonl(&mut e, 200, 3).unwrap();
        for line in String::from_utf8(e).unwrap().lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert!(v["event_id"].is_u64());
        }
    }
}
