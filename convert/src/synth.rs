//! Random-weights checkpoints in HF layout for any config the catalogue knows.
//!
//! Why: benchmarks and tests need 0.5B- and 7B-shaped models without downloading them.
//! The tensor list comes from the layout catalogue (so a synthesized model is exactly
//! what transformers expects), values come from a small counter-based generator so that
//! every tile of every tensor can be produced independently, in parallel, and
//! identically for a given seed whatever the thread count. Nothing is held beyond one
//! batch of tiles: a 15 GB model streams through a few tens of MB.
//!
//! Values: projections and embeddings ~ N(0, 0.02²) (transformers' `initializer_range`),
//! norm weights 1 + N(0, 0.02²), biases N(0, 0.02²). The normal is approximated by the
//! sum of four 16-bit uniforms (Irwin–Hall), plenty for benchmarks and shape tests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use orient_inspect::layout::arch::Role;
use orient_inspect::layout::catalogue::{Catalogue, HF};
use orient_inspect::{Dtype, ModelConfig};
use rayon::prelude::*;

use crate::cast::{f32_to_bf16_bits, f32_to_f16_bits};
use crate::destination::{check_overwrite, Destination};
use crate::error::{Error, Result};
use crate::writer::{Layout, OutTensor, Staging, DEFAULT_MAX_SHARD_SIZE, INDEX_FILE};

/// Elements generated per tile (one seed each).
const TILE: usize = 1 << 18;
/// Tiles generated in parallel before they are written.
const BATCH: usize = 32;
/// Standard deviation of weights (transformers' default `initializer_range`).
const STD: f32 = 0.02;

/// What `synthesize` wrote.
#[derive(Debug, Clone)]
pub struct SynthOutcome {
    /// The destination folder.
    pub dst: PathBuf,
    /// Number of tensors.
    pub tensors: usize,
    /// Tensor data bytes.
    pub bytes: u64,
    /// Files written (shards).
    pub files: Vec<String>,
}

/// How to synthesize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthOptions {
    /// F32, BF16 or F16.
    pub dtype: Dtype,
    /// Seed of the generator.
    pub seed: u64,
    /// Largest shard; `None` means 5 GB.
    pub max_shard_size: Option<u64>,
    /// Replace an existing destination.
    pub force: bool,
    /// fsync before the final rename.
    pub sync: bool,
}

/// The tensors of `cfg` in HF layout, with their roles, as the catalogue's HF convention
/// stores them (no lm_head when the embeddings are tied, no GPT-2 mask buffers).
pub fn tensors(cfg: &ModelConfig, dtype: Dtype) -> Result<Vec<(OutTensor, Role)>> {
    let cat = Catalogue::new(cfg);
    let mut out = Vec::new();
    for form in cat.forms().iter().filter(|f| f.convention == HF) {
        let Some(&e) = form.entries.first().and_then(|m| m.first()) else {
            continue;
        };
        let entry = &cat.entries()[e];
        // Buffers are not weights; a tied lm_head is left out where HF leaves it out.
        if entry.role == Role::Buffer
            || (entry.role == Role::LmHead && cat.optional(e, HF).is_some())
        {
            continue;
        }
        for st in form.stored_tensors() {
            let numel = st
                .shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .ok_or_else(|| Error::SizeOverflow(st.name.clone()))?;
            let nbytes = dtype
                .checked_size(numel)
                .ok_or_else(|| Error::SizeOverflow(st.name.clone()))?
                as u64;
            out.push((
                OutTensor {
                    name: st.name.clone(),
                    dtype: dtype.name().into(),
                    shape: st.shape.clone(),
                    nbytes,
                },
                entry.role,
            ));
        }
    }
    Ok(out)
}

/// Writes a random-weights checkpoint of `cfg` (whose `config.json` text is
/// `config_text`) into the folder `dst`, all or nothing. An existing `dst` needs
/// `opts.force` and may hold only a previous checkpoint; a caller that read the config
/// from a file also checks that `dst` does not overlap it
/// ([`crate::destination::check_destination`]).
pub fn synthesize(
    cfg: &ModelConfig,
    config_text: &str,
    dst: &Path,
    opts: &SynthOptions,
    progress: &mut dyn FnMut(u64),
) -> Result<SynthOutcome> {
    if !matches!(opts.dtype, Dtype::F32 | Dtype::BF16 | Dtype::F16) {
        return Err(Error::UnsupportedDtype {
            tensor: "(every tensor)".into(),
            dtype: opts.dtype.name().into(),
        });
    }
    check_overwrite(&Destination::resolve(dst)?, opts.force)?;
    let list = tensors(cfg, opts.dtype)?;
    let roles: BTreeMap<String, Role> = list.iter().map(|(t, r)| (t.name.clone(), *r)).collect();
    let metadata = BTreeMap::from([
        ("format".to_string(), "pt".to_string()),
        ("orient.synth.seed".to_string(), opts.seed.to_string()),
        (
            "orient.version".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
    ]);
    let layout = Layout::new(
        list.into_iter().map(|(t, _)| t).collect(),
        &metadata,
        opts.max_shard_size.unwrap_or(DEFAULT_MAX_SHARD_SIZE),
    )?;
    let staging = Staging::create(dst, opts.sync)?;
    let es = opts.dtype.bits() / 8;
    let mut buf = vec![0u8; TILE * BATCH * es]; // [BATCH · TILE] output elements
    let mut produce = |i: usize, sink: &mut crate::writer::TensorSink<'_>| -> Result<()> {
        let t = &layout.tensors[i];
        let role = roles.get(&t.name).copied().unwrap_or(Role::Linear);
        let (mean, std) = match role {
            Role::Norm => (1.0, STD),
            _ => (0.0, STD),
        };
        let numel = (t.nbytes as usize) / es;
        let stream = mix(opts.seed ^ mix(i as u64 + 1));
        let mut done = 0usize;
        let mut tile = 0u64;
        while done < numel {
            let n = (TILE * BATCH).min(numel - done);
            let out = &mut buf[..n * es];
            out.par_chunks_mut(TILE * es)
                .enumerate()
                .for_each(|(k, chunk)| {
                    fill(
                        chunk,
                        opts.dtype,
                        mix(stream ^ (tile + k as u64)),
                        mean,
                        std,
                    );
                });
            sink.write(out)?;
            done += n;
            tile += n.div_ceil(TILE) as u64;
        }
        Ok(())
    };
    for k in 0..layout.shards.len() {
        staging.write_shard(&layout, k, &mut produce, progress)?;
    }
    if let Some(index) = layout.index_json() {
        staging.write_file(INDEX_FILE, index.as_bytes())?;
    }
    staging.write_file("config.json", config_text.as_bytes())?;
    let dst = staging.commit(opts.force)?;
    Ok(SynthOutcome {
        dst,
        tensors: layout.tensors.len(),
        bytes: layout.total_size,
        files: layout.shards.iter().map(|s| s.file_name.clone()).collect(),
    })
}

/// splitmix64's finaliser: a bijective 64-bit mix.
#[inline(always)]
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Fills `out` (little-endian elements of `dtype`) with `mean + std·N(0,1)`-ish values
/// from the counter-based stream `seed`.
fn fill(out: &mut [u8], dtype: Dtype, seed: u64, mean: f32, std: f32) {
    // Sum of four U(0, 65535) has mean 131070 and std 65536·√(4/12) ≈ 37837.
    let scale = std / 37_837.2;
    let value = |k: u64| {
        let r = mix(seed.wrapping_add(k.wrapping_mul(0x9e37_79b9_7f4a_7c15)));
        let s = (r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48);
        mean + (s as f32 - 131_070.0) * scale
    };
    match dtype {
        Dtype::F32 => {
            for (k, c) in out.chunks_exact_mut(4).enumerate() {
                c.copy_from_slice(&value(k as u64).to_le_bytes());
            }
        }
        Dtype::BF16 => {
            for (k, c) in out.chunks_exact_mut(2).enumerate() {
                c.copy_from_slice(&f32_to_bf16_bits(value(k as u64).to_bits()).to_le_bytes());
            }
        }
        _ => {
            for (k, c) in out.chunks_exact_mut(2).enumerate() {
                c.copy_from_slice(&f32_to_f16_bits(value(k as u64).to_bits()).to_le_bytes());
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn cfg(tied: bool) -> (ModelConfig, String) {
        let text = format!(
            r#"{{"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "hidden_size": 64,
            "intermediate_size": 176, "num_hidden_layers": 2, "num_attention_heads": 4,
            "num_key_value_heads": 2, "vocab_size": 512, "max_position_embeddings": 128,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": {tied}}}"#
        );
        match orient_inspect::parse_config(&text).unwrap() {
            orient_inspect::ConfigOutcome::Known(c) => (c, text),
            other => panic!("{other:?}"),
        }
    }

    fn opts(dtype: Dtype, seed: u64) -> SynthOptions {
        SynthOptions {
            dtype,
            seed,
            max_shard_size: None,
            force: false,
            sync: false,
        }
    }

    #[test]
    fn synthesized_model_matches_the_catalogue_and_is_deterministic() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, text) = cfg(true);
        let a = tmp.path().join("a");
        let b = tmp.path().join("b");
        let d = tmp.path().join("d");
        synthesize(&c, &text, &a, &opts(Dtype::F32, 7), &mut |_| {}).unwrap();
        synthesize(&c, &text, &b, &opts(Dtype::F32, 7), &mut |_| {}).unwrap();
        synthesize(&c, &text, &d, &opts(Dtype::F32, 8), &mut |_| {}).unwrap();
        let fa = std::fs::read(a.join("model.safetensors")).unwrap();
        assert_eq!(fa, std::fs::read(b.join("model.safetensors")).unwrap());
        assert_ne!(fa, std::fs::read(d.join("model.safetensors")).unwrap());
        assert_eq!(
            std::fs::read_to_string(a.join("config.json")).unwrap(),
            text
        );

        let ck = orient_inspect::Checkpoint::open(&a).unwrap();
        // Tied: no lm_head; 2 layers × 12 + embed + norm.
        assert!(ck.tensor("lm_head.weight").is_none());
        assert_eq!(ck.tensors().len(), 2 * 12 + 2);
        let q = ck.tensor("model.layers.1.self_attn.k_proj.weight").unwrap();
        assert_eq!(q.shape, [32, 64]);
        let w = ck.view(q).to_f32_vec().unwrap();
        let mean = w.iter().sum::<f32>() / w.len() as f32;
        let std = (w.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / w.len() as f32).sqrt();
        assert!(mean.abs() < 0.003, "{mean}");
        assert!((std - 0.02).abs() < 0.002, "{std}");
        let n = ck
            .view(ck.tensor("model.norm.weight").unwrap())
            .to_f32_vec()
            .unwrap();
        let nm = n.iter().sum::<f32>() / n.len() as f32;
        assert!((nm - 1.0).abs() < 0.01, "{nm}");
        // Different tensors get different streams.
        let k = ck
            .view(ck.tensor("model.layers.0.self_attn.k_proj.weight").unwrap())
            .to_f32_vec()
            .unwrap();
        assert_ne!(k, w);
    }

    #[test]
    fn bf16_synth_is_the_rounded_f32_synth_and_shards() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, text) = cfg(false);
        let f = tmp.path().join("f");
        let h = tmp.path().join("h");
        synthesize(&c, &text, &f, &opts(Dtype::F32, 1), &mut |_| {}).unwrap();
        let mut o = opts(Dtype::BF16, 1);
        o.max_shard_size = Some(100_000);
        let out = synthesize(&c, &text, &h, &o, &mut |_| {}).unwrap();
        assert!(out.files.len() > 1);
        assert!(h.join(INDEX_FILE).exists());
        let cf = orient_inspect::Checkpoint::open(&f).unwrap();
        let ch = orient_inspect::Checkpoint::open(&h).unwrap();
        assert!(ch.tensor("lm_head.weight").is_some());
        for t in cf.tensors() {
            let want: Vec<u8> = cf
                .view(t)
                .to_f32_vec()
                .unwrap()
                .iter()
                .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                .collect();
            assert_eq!(
                ch.view(ch.tensor(&t.name).unwrap()).bytes,
                &want[..],
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn an_existing_destination_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let (c, text) = cfg(true);
        let err = synthesize(&c, &text, tmp.path(), &opts(Dtype::F32, 1), &mut |_| {}).unwrap_err();
        assert!(matches!(err, Error::DestinationExists(_)));
    }
}
