//! orient's tokenizer against transformers' own tokenization (AutoTokenizer, recorded by
//! tests/fixtures/generate_tokenizers.py): id for id, decode for decode, on ASCII, Unicode, emoji,
//! whitespace runs, special-token text and a ~100 KB text; and byte-level round trips.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use orient::text::{TextError, Tokenizer};
use serde_json::Value;

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel)
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| u32::try_from(x.as_u64().unwrap()).unwrap())
        .collect()
}

/// Checks every reference case of the tokenizer in `dir`; returns the number of cases.
fn check_against_transformers(dir: &Path, byte_level: bool) -> usize {
    let tok = Tokenizer::for_model(dir).unwrap();
    let reference: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.join("tokenizer_reference.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        reference["vocab_size"].as_u64().unwrap()
    );
    let cases = reference["cases"].as_array().unwrap();
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let text = match case["text"].as_str() {
            Some(t) => t.to_string(),
            None => std::fs::read_to_string(dir.join(case["file"].as_str().unwrap())).unwrap(),
        };
        let want = ids(&case["ids"]);
        let got = tok.encode(&text).unwrap();
        if got != want {
            let at = got.iter().zip(&want).position(|(a, b)| a != b);
            panic!(
                "{}: `{name}`: ids differ from transformers' at position {at:?} ({} vs {} ids)",
                dir.display(),
                got.len(),
                want.len()
            );
        }
        if let Some(plain) = case.get("ids_plain") {
            assert_eq!(tok.encode_plain(&text).unwrap(), ids(plain), "{name}");
        }
        if let Some(d) = case["decoded"].as_str() {
            assert_eq!(tok.decode(&want, false).unwrap(), d, "{name}");
        }
        let skip = tok.decode(&want, true).unwrap();
        match case["decoded_skip"].as_str() {
            Some(d) => assert_eq!(skip, d, "{name}"),
            None => {
                assert_eq!(case["decoded_skip_is_text"], true);
                assert_eq!(skip, text, "{name}");
            }
        }
        if byte_level {
            // Byte-level BPE loses nothing: text → ids → text, and streamed the same.
            let plain = tok.encode_plain(&text).unwrap();
            assert_eq!(tok.decode(&plain, false).unwrap(), text, "{name}");
            let mut stream = tok.stream(false);
            let mut streamed = String::new();
            for &id in &plain {
                if let Some(piece) = stream.step(id).unwrap() {
                    streamed.push_str(&piece);
                }
            }
            assert_eq!(streamed, text, "{name} (streamed)");
        }
        tok.check_ids(&want, tok.vocab_size()).unwrap();
    }
    cases.len()
}

#[test]
fn byte_level_bpe_matches_transformers_beside_the_qwen2_fixture() {
    let dir = fixture("qwen2");
    assert_eq!(check_against_transformers(&dir, true), 11);
    let tok = Tokenizer::for_model(&dir).unwrap();
    // The fixture's vocabulary is the model's.
    let config: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(
        tok.vocab_size() as u64,
        config["vocab_size"].as_u64().unwrap()
    );
    // Special tokens from tokenizer_config.json; the post-processor prepends the BOS.
    let bos = tok.bos_id().unwrap();
    assert_eq!(tok.id_to_token(bos).unwrap(), "<|begin_of_text|>");
    assert_eq!(tok.encode("hi").unwrap()[0], bos);
    assert_eq!(tok.eos_ids(), [tok.token_to_id("<|endoftext|>").unwrap()]);
}

#[test]
fn wordpiece_matches_transformers() {
    let dir = fixture("tokenizers/wordpiece");
    assert_eq!(check_against_transformers(&dir, false), 11);
    let tok = Tokenizer::for_model(&dir).unwrap();
    let ids = tok.encode("Hello").unwrap();
    assert_eq!(tok.id_to_token(ids[0]).unwrap(), "[CLS]");
    assert_eq!(tok.id_to_token(*ids.last().unwrap()).unwrap(), "[SEP]");
}

#[test]
fn a_model_without_a_tokenizer_and_ids_out_of_range() {
    let err = Tokenizer::for_model(&fixture("llama")).unwrap_err();
    assert!(matches!(err, TextError::Missing { .. }));
    let text = err.to_string();
    assert!(
        text.contains("llama: no tokenizer.json") && text.contains("--tokens"),
        "{text}"
    );
    let tok = Tokenizer::for_model(&fixture("tokenizers/wordpiece")).unwrap();
    let err = tok.check_ids(&[2, 300], 256).unwrap_err();
    assert!(
        err.to_string()
            .contains("token id 300 is outside the model's vocabulary of 256"),
        "{err}"
    );
}
