#![allow(clippy::unwrap_used)]

use super::numeric::{ulp, RopeDirection, RopePerm};
use super::pairing::{HeadKind, RopeCheck};
use super::*;
use crate::checkpoint::TensorInfo;
use crate::view::TensorView;

/// Deterministic pseudo-random values in about [-1, 1].
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn info(name: &str, dtype: Dtype, shape: &[usize], nbytes: usize) -> TensorInfo {
    TensorInfo {
        name: name.to_string(),
        dtype,
        shape: shape.to_vec(),
        shard: 0,
        range: 0..nbytes,
    }
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn bf16_bytes(v: &[f32]) -> Vec<u8> {
    v.iter()
        .flat_map(|x| half::bf16::from_f32(*x).to_bits().to_le_bytes())
        .collect()
}

/// A tensor owned by a test: info plus bytes.
struct Owned {
    info: TensorInfo,
    bytes: Vec<u8>,
}

impl Owned {
    fn f32(name: &str, shape: &[usize], v: &[f32]) -> Owned {
        let bytes = f32_bytes(v);
        Owned {
            info: info(name, Dtype::F32, shape, bytes.len()),
            bytes,
        }
    }
    fn bf16(name: &str, shape: &[usize], v: &[f32]) -> Owned {
        let bytes = bf16_bytes(v);
        Owned {
            info: info(name, Dtype::BF16, shape, bytes.len()),
            bytes,
        }
    }
    fn view(&self) -> TensorView<'_> {
        TensorView {
            info: &self.info,
            bytes: &self.bytes,
        }
    }
}

fn cmp(
    a: &Owned,
    b: &Owned,
    rope: &RopeCheck,
    conv_t: bool,
    full: bool,
) -> (Result<Verdict, PairError>, Vec<String>) {
    let mut notes = Vec::new();
    let v = compare_views(&a.view(), &b.view(), rope, conv_t, full, &mut notes);
    (v, notes)
}

fn transpose(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0f32; v.len()];
    for i in 0..rows {
        for j in 0..cols {
            t[j * rows + i] = v[i * cols + j];
        }
    }
    t
}

/// llama.cpp's permute written out literally: w.reshape(n, 2, rows/n/2, cols).swapaxes(1, 2).
fn gguf_permute(v: &[f32], rows: usize, cols: usize, n: usize) -> Vec<f32> {
    let half = rows / n / 2;
    let mut out = Vec::with_capacity(v.len());
    for h in 0..n {
        for i in 0..half {
            for j in 0..2 {
                let src_row = h * 2 * half + j * half + i;
                out.extend_from_slice(&v[src_row * cols..(src_row + 1) * cols]);
            }
        }
    }
    out
}

#[test]
fn rope_src_matches_the_llama_cpp_permute_and_inverts() {
    let (rows, cols, n) = (64, 3, 4);
    let a: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
    let want = gguf_permute(&a, rows, cols, n);
    let fwd = RopePerm {
        axis: 0,
        heads: n,
        head_dim: rows / n,
        direction: RopeDirection::ToInterleaved,
    };
    let inv = RopePerm {
        direction: RopeDirection::ToRotateHalf,
        ..fwd
    };
    for x in 0..rows {
        assert_eq!(
            &want[x * cols..(x + 1) * cols],
            &a[fwd.src(x) * cols..(fwd.src(x) + 1) * cols]
        );
        assert_eq!(inv.src(fwd.src(x)), x);
        assert_eq!(fwd.src(inv.src(x)), x);
    }
}

#[test]
fn ulp_of_narrow_dtypes() {
    assert_eq!(ulp(Dtype::BF16, 1.0), 2f32.powi(-7));
    assert_eq!(ulp(Dtype::BF16, 1.5), 2f32.powi(-7));
    assert_eq!(ulp(Dtype::F16, 1.0), 2f32.powi(-10));
    assert_eq!(ulp(Dtype::F16, 1e-6), 2f32.powi(-24));
    assert_eq!(ulp(Dtype::F32, 2.0), 2f32.powi(-22));
    assert_eq!(ulp(Dtype::F32, 0.0), 2f32.powi(-149));
}

#[test]
fn identical_bytes_and_lossless_cast() {
    let v = values(64 * 32, 1);
    let a = Owned::f32("w", &[64, 32], &v);
    let (r, _) = cmp(&a, &a, &RopeCheck::NotApplicable, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Identical {
            lossless_cast: None,
            symmetric: false
        }
    );
    // bf16 values widened exactly to f32 are identical after a lossless cast.
    let rounded: Vec<f32> = v
        .iter()
        .map(|x| half::bf16::from_f32(*x).to_f32())
        .collect();
    let b16 = Owned::bf16("w", &[64, 32], &v);
    let b32 = Owned::f32("w", &[64, 32], &rounded);
    let (r, _) = cmp(&b16, &b32, &RopeCheck::NotApplicable, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Identical {
            lossless_cast: Some("BF16 → F32".to_string()),
            symmetric: false
        }
    );
}

#[test]
fn transposed_square_and_rectangular() {
    for (rows, cols) in [(64, 64), (176, 64), (3, 200)] {
        let v = values(rows * cols, 2);
        let a = Owned::f32("w", &[rows, cols], &v);
        let b = Owned::f32("w", &[cols, rows], &transpose(&v, rows, cols));
        for full in [false, true] {
            let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, true, full);
            assert_eq!(
                r.unwrap(),
                Verdict::Transposed {
                    within_rounding: None,
                    expected_by_conventions: true
                },
                "{rows}x{cols} full={full}"
            );
        }
    }
}

#[test]
fn transposed_within_bf16_rounding() {
    let (rows, cols) = (40, 24);
    let v = values(rows * cols, 3);
    let a = Owned::f32("w", &[rows, cols], &v);
    let b = Owned::bf16("w", &[cols, rows], &transpose(&v, rows, cols));
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Transposed {
            within_rounding: Some("BF16"),
            expected_by_conventions: false
        }
    );
}

#[test]
fn rope_permuted_both_directions_weight_bias_and_kernel() {
    let (rows, cols, n) = (32, 64, 2); // k_proj of 2 KV heads, D = 16
    let v = values(rows * cols, 4);
    let a = Owned::f32("k", &[rows, cols], &v);
    let permuted = gguf_permute(&v, rows, cols, n);
    let b = Owned::f32("k", &[rows, cols], &permuted);
    let rope = RopeCheck::Heads {
        heads: n,
        head_dim: rows / n,
        kind: HeadKind::KeyValue,
        axis: 0,
    };
    for (x, y, dir) in [
        (&a, &b, RopeDirection::ToInterleaved),
        (&b, &a, RopeDirection::ToRotateHalf),
    ] {
        for full in [false, true] {
            let (r, _) = cmp(x, y, &rope, false, full);
            assert_eq!(
                r.unwrap(),
                Verdict::RopePermuted {
                    direction: dir,
                    heads: 2,
                    head_kind: HeadKind::KeyValue,
                    transposed: false,
                    within_rounding: None
                }
            );
        }
    }
    // An HF weight against a permuted Flax kernel [in, out]: transposed and permuted.
    let kernel = Owned::f32("k", &[cols, rows], &transpose(&permuted, rows, cols));
    let (r, _) = cmp(&a, &kernel, &rope, true, false);
    assert!(matches!(
        r.unwrap(),
        Verdict::RopePermuted {
            direction: RopeDirection::ToInterleaved,
            transposed: true,
            ..
        }
    ));
    // The other way: A is the kernel (output axis 1).
    let rope_k = RopeCheck::Heads {
        heads: n,
        head_dim: rows / n,
        kind: HeadKind::KeyValue,
        axis: 1,
    };
    let plain_kernel = Owned::f32("k", &[cols, rows], &transpose(&v, rows, cols));
    let (r, _) = cmp(&plain_kernel, &kernel, &rope_k, false, false);
    assert!(matches!(
        r.unwrap(),
        Verdict::RopePermuted {
            direction: RopeDirection::ToInterleaved,
            transposed: false,
            ..
        }
    ));
    // 1-D bias.
    let bias = values(rows, 5);
    let ba = Owned::f32("b", &[rows], &bias);
    let bb = Owned::f32("b", &[rows], &gguf_permute(&bias, rows, 1, n));
    let (r, _) = cmp(&ba, &bb, &rope, false, false);
    assert!(matches!(r.unwrap(), Verdict::RopePermuted { heads: 2, .. }));
}

#[test]
fn rounded_scaled_offset_constants() {
    let v = values(96 * 16, 6);
    let a = Owned::f32("w", &[96, 16], &v);
    let b = Owned::bf16("w", &[96, 16], &v);
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    match r.unwrap() {
        Verdict::Rounded {
            dtype,
            max_abs_diff,
            symmetric: false,
        } => {
            assert_eq!(dtype, "BF16");
            assert!(max_abs_diff > 0.0 && max_abs_diff <= 2f64.powi(-8));
        }
        other => panic!("{other:?}"),
    }

    let scaled: Vec<f32> = v.iter().map(|x| x * 0.25).collect();
    let s = Owned::f32("q", &[96, 16], &scaled);
    let rope = RopeCheck::Heads {
        heads: 6,
        head_dim: 16,
        kind: HeadKind::Query,
        axis: 0,
    };
    let (r, _) = cmp(&a, &s, &rope, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Scaled {
            factor: 0.25,
            hint: Some("1/√head_dim (D = 16)".to_string()),
            transposed: false
        }
    );
    let c = 1.0f32 / 7f32.sqrt();
    let s = Owned::f32("w", &[96, 16], &v.iter().map(|x| x * c).collect::<Vec<_>>());
    let (r, _) = cmp(&a, &s, &RopeCheck::NotApplicable, false, true);
    match r.unwrap() {
        Verdict::Scaled { factor, hint, .. } => {
            assert!((factor - f64::from(c)).abs() < 1e-7);
            assert_eq!(hint.as_deref(), Some("1/√7"));
        }
        other => panic!("{other:?}"),
    }

    let norm: Vec<f32> = values(64, 7).iter().map(|x| 1.0 + 0.1 * x).collect();
    let na = Owned::f32("n", &[64], &norm);
    let nb = Owned::f32(
        "n",
        &[64],
        &norm.iter().map(|x| x + 1.0).collect::<Vec<_>>(),
    );
    let (r, _) = cmp(&na, &nb, &RopeCheck::NotApplicable, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Offset {
            offset: 1.0,
            transposed: false
        }
    );
}

#[test]
fn different_reports_statistics() {
    let v = values(8 * 8, 8);
    let mut w = v.clone();
    w[10] += 0.5;
    w[20] = -w[20];
    w[30] = 0.0;
    let a = Owned::f32("w", &[8, 8], &v);
    let b = Owned::f32("w", &[8, 8], &w);
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    match r.unwrap() {
        Verdict::Different {
            max_abs_diff,
            differing,
            numel,
            first_difference,
            cosine,
            max_rel_diff,
            against_transpose,
            bytes_only,
        } => {
            let want = [0.5f64, 2.0 * f64::from(v[20].abs()), f64::from(v[30].abs())]
                .into_iter()
                .fold(0.0, f64::max);
            assert!((max_abs_diff - want).abs() < 1e-6);
            assert_eq!(differing, 3);
            assert_eq!(numel, 64);
            assert_eq!(first_difference, Some(vec![1, 2]));
            let c = cosine.unwrap();
            assert!(c < 1.0 && c > 0.5);
            assert!(max_rel_diff > 0.9 && max_rel_diff <= 2.0);
            assert!(!against_transpose && !bytes_only);
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn hostile_pairs_are_errors_or_notes() {
    let f = Owned::f32("x", &[4], &[1.0, 2.0, 3.0, 4.0]);
    let ints: Vec<u8> = [1i32, 2, 3, 4]
        .iter()
        .flat_map(|x| x.to_le_bytes())
        .collect();
    let i = Owned {
        info: info("x", Dtype::I32, &[4], 16),
        bytes: ints,
    };
    let (r, _) = cmp(&f, &i, &RopeCheck::NotApplicable, false, false);
    let e = r.unwrap_err();
    assert!(matches!(e, PairError::IntVsFloat { .. }));
    assert!(e.to_string().contains("I32") && e.to_string().contains("F32"));

    let a = Owned::f32("w", &[4, 6], &values(24, 9));
    let b = Owned::f32("w", &[3, 8], &values(24, 9));
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    assert!(r.unwrap_err().to_string().contains("[4, 6]"));

    let v = values(32 * 8, 10);
    let a = Owned::f32("q", &[32, 8], &v);
    let b = Owned::f32("q", &[32, 8], &gguf_permute(&v, 32, 8, 2));
    let (r, notes) = cmp(
        &a,
        &b,
        &RopeCheck::MissingConfig {
            kind: HeadKind::Query,
        },
        false,
        false,
    );
    assert_eq!(r.unwrap().name(), "different");
    assert!(notes[0].contains("num_attention_heads"), "{notes:?}");
}

#[test]
fn transpose_fast_path_catches_one_flipped_element_and_keeps_nan_semantics() {
    let (rows, cols) = (130, 70); // not multiples of the 64×64 block
    let v = values(rows * cols, 11);
    let a = Owned::f32("w", &[rows, cols], &v);
    let mut t = transpose(&v, rows, cols);
    t[cols * rows - 1] = f32::from_bits(t[cols * rows - 1].to_bits() ^ 1);
    let b = Owned::f32("w", &[cols, rows], &t);
    for full in [false, true] {
        let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, full);
        // One ulp off in f32 on one element: transposed within F32 rounding, not exact.
        assert_eq!(
            r.unwrap(),
            Verdict::Transposed {
                within_rounding: Some("F32"),
                expected_by_conventions: false
            }
        );
    }
    // NaNs with different payloads count as equal (the general path decides).
    let mut w = v.clone();
    w[5] = f32::from_bits(0x7fc0_0001);
    let a = Owned::f32("w", &[rows, cols], &w);
    let mut t = transpose(&w, rows, cols);
    t[5 * rows] = f32::from_bits(0x7fc0_0002);
    let b = Owned::f32("w", &[cols, rows], &t);
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    assert_eq!(
        r.unwrap(),
        Verdict::Transposed {
            within_rounding: None,
            expected_by_conventions: false
        }
    );
}

/// A planned HF → Flax pair of `a` and `b` whose conventions store it transposed.
fn hf_to_flax_pair<'a>(a: &'a Owned, b: &'a Owned) -> PlannedPair<'a> {
    PlannedPair {
        a: &a.info,
        b: &b.info,
        canonical: Some("model.layers.0.self_attn.q_proj.weight".to_string()),
        conv_a: Some(Convention::Hf),
        conv_b: Some(Convention::Flax),
        transposed_by_conventions: true,
        rope: RopeCheck::NotApplicable,
        note: None,
    }
}

/// Issue 8, item 10: a zero (or symmetric) square kernel, or a 1×1 one, is identical and
/// transposed at once. It is said so, and judged as the transpose the conventions expect,
/// never blamed as a forgotten transpose.
#[test]
fn self_transposed_square_is_identical_and_transposed_at_once() {
    let n = 70; // not a multiple of the 64×64 block
    let m = values(n * n, 12);
    let sym: Vec<f32> = (0..n * n).map(|k| m[k] + m[(k % n) * n + k / n]).collect();
    let one = Owned::f32("w", &[1, 1], &[0.75]);
    for (a, b) in [
        (
            Owned::f32("w", &[n, n], &vec![0.0; n * n]),
            Owned::f32("w", &[n, n], &vec![0.0; n * n]),
        ),
        (
            Owned::f32("w", &[n, n], &sym),
            Owned::f32("w", &[n, n], &sym),
        ),
        (Owned::f32("w", &[1, 1], &[0.75]), one),
    ] {
        for full in [false, true] {
            let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, true, full);
            let v = r.unwrap();
            assert_eq!(
                v,
                Verdict::Identical {
                    lossless_cast: None,
                    symmetric: true
                },
                "{:?}",
                a.info.shape
            );
            let p = hf_to_flax_pair(&a, &b);
            assert_eq!(judge(&v, &p, &[Conversion::HfToFlax]), None);
            assert_eq!(judge(&v, &p, &[Conversion::Transpose]), None);
            // Without an expected conversion it is unexplained like any transposed pair, with
            // the hint to pass the direction, not "the conversion forgot to transpose".
            let why = judge(&v, &p, &[]).unwrap();
            assert!(why.contains("--expect-conversion hf-to-flax"), "{why}");
            assert!(!why.contains("forgot"), "{why}");
        }
    }
    // Symmetric f32 against its bf16 rounding: rounded, and transposed as much as not.
    let a = Owned::f32("w", &[n, n], &sym);
    let b = Owned::bf16("w", &[n, n], &sym);
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, true, false);
    let v = r.unwrap();
    assert!(
        matches!(
            v,
            Verdict::Rounded {
                dtype: "BF16",
                symmetric: true,
                ..
            }
        ),
        "{v:?}"
    );
    let p = hf_to_flax_pair(&a, &b);
    assert_eq!(
        judge(&v, &p, &[Conversion::HfToFlax, Conversion::Cast]),
        None
    );
    assert!(judge(&v, &p, &[Conversion::HfToFlax]).is_some());
    // An identical pair that is *not* symmetric is still the forgotten transpose.
    let a = Owned::f32("w", &[n, n], &m);
    let (r, _) = cmp(&a, &a, &RopeCheck::NotApplicable, true, false);
    let v = r.unwrap();
    assert_eq!(
        v,
        Verdict::Identical {
            lossless_cast: None,
            symmetric: false
        }
    );
    let why = judge(&v, &hf_to_flax_pair(&a, &a), &[Conversion::HfToFlax]).unwrap();
    assert!(why.contains("forgot to transpose"), "{why}");
}

#[test]
fn symmetric_check_any_dtype_and_blocks() {
    use super::numeric::symmetric;
    let n = 130;
    let m = values(n * n, 13);
    let mut sym: Vec<f32> = (0..n * n).map(|k| m[k] + m[(k % n) * n + k / n]).collect();
    assert!(symmetric(&Owned::f32("w", &[n, n], &sym).view()));
    assert!(symmetric(&Owned::bf16("w", &[n, n], &sym).view()));
    // one element off the diagonal, in the last (partial) block
    sym[(n - 1) * n + 66] += 1.0;
    assert!(!symmetric(&Owned::f32("w", &[n, n], &sym).view()));
    assert!(!symmetric(&Owned::f32("w", &[n, n], &m).view()));
    // non-square and 1-D are never symmetric; 1×1 always is
    assert!(!symmetric(&Owned::f32("w", &[2, 3], &[0.0; 6]).view()));
    assert!(!symmetric(&Owned::f32("w", &[4], &[0.0; 4]).view()));
    assert!(symmetric(&Owned::f32("w", &[1, 1], &[3.0]).view()));
}

/// Issue 8, item 10: `--expect-conversion cast` explains rounding only when the dtypes
/// differ. A BF16 → BF16 pair one ulp apart everywhere was not cast.
#[test]
fn cast_does_not_explain_rounding_between_equal_dtypes() {
    let (rows, cols) = (48, 16);
    let v = values(rows * cols, 14);
    let a = Owned::bf16("w", &[rows, cols], &v);
    let mut b = Owned::bf16("w", &[rows, cols], &v);
    for c in b.bytes.chunks_exact_mut(2) {
        let x = u16::from_le_bytes([c[0], c[1]]) + 1;
        c.copy_from_slice(&x.to_le_bytes());
    }
    let (r, _) = cmp(&a, &b, &RopeCheck::NotApplicable, false, false);
    let v = r.unwrap();
    assert!(matches!(v, Verdict::Rounded { dtype: "BF16", .. }), "{v:?}");
    let mut p = hf_to_flax_pair(&a, &b);
    p.transposed_by_conventions = false;
    let why = judge(&v, &p, &[Conversion::Cast]).unwrap();
    assert!(
        why.contains("both sides are BF16: no cast happened"),
        "{why}"
    );
    // The same values against an F32 original: a cast did happen.
    let f = Owned::f32("w", &[rows, cols], &values(rows * cols, 14));
    let (r, _) = cmp(&f, &a, &RopeCheck::NotApplicable, false, false);
    let v = r.unwrap();
    assert!(matches!(v, Verdict::Rounded { .. }), "{v:?}");
    let p = PlannedPair { a: &f.info, ..p };
    assert_eq!(judge(&v, &p, &[Conversion::Cast]), None);
}
