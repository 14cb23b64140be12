//! Times orient's tokenizer on a text file, for `scripts/bench-tokenize.sh` (not a test).
//!
//! `cargo run --release --example tokenize -- TOKENIZER.json TEXT_FILE [REPEATS]` prints one line:
//! the number of ids, and the median, best and mean time of `encode` (special tokens added, as
//! `--prompt` will use it) over the repeats, after one warm-up.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use orient::text::Tokenizer;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(tok), Some(text)) = (args.get(1), args.get(2)) else {
        eprintln!("usage: tokenize TOKENIZER.json TEXT_FILE [REPEATS]");
        std::process::exit(2);
    };
    let repeats: usize = args.get(3).map_or(Ok(20), |r| r.parse())?;
    let tok = Tokenizer::from_file(std::path::Path::new(tok))?;
    let text = std::fs::read_to_string(text)?;
    let ids = tok.encode(&text)?; // warm-up
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let t0 = Instant::now();
        let out = tok.encode(&text)?;
        times.push(t0.elapsed().as_secs_f64());
        assert_eq!(out.len(), ids.len());
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    println!(
        "orient (tokenizers crate, fancy-regex): {} bytes -> {} ids; median {:.2} ms, best {:.2} ms, mean {:.2} ms ({:.1} MB/s)",
        text.len(),
        ids.len(),
        times[times.len() / 2] * 1e3,
        times[0] * 1e3,
        mean * 1e3,
        text.len() as f64 / times[times.len() / 2] / 1e6
    );
    Ok(())
}
