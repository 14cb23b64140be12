#![allow(clippy::unwrap_used)]

use super::compare::{compare, Operand, PairInput};
use super::judge::{judge, Facts};
use super::numeric::ulp;
use super::relation::{self, Move};
use super::*;
use crate::checkpoint::TensorInfo;
use crate::dtype::Dtype;
use crate::layout::gather::Source;
use crate::layout::transform::{Arrangement, Chain, RopeOrder, Transform};
use crate::layout::view::{collect, View};
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

/// How a test describes a pair's RoPE check: as the library's, plus the output axis of A's
/// stored matrix (1: A is stored as a kernel `[in, out]`).
enum RopeCheck {
    NotApplicable,
    MissingConfig {
        kind: HeadKind,
    },
    Heads {
        heads: usize,
        head_dim: usize,
        kind: HeadKind,
        axis: usize,
    },
}

impl RopeCheck {
    fn lib(&self) -> relation::RopeCheck {
        match *self {
            RopeCheck::NotApplicable => relation::RopeCheck::NotApplicable,
            RopeCheck::MissingConfig { kind } => relation::RopeCheck::MissingConfig { kind },
            RopeCheck::Heads {
                heads,
                head_dim,
                kind,
                ..
            } => relation::RopeCheck::Heads {
                heads,
                head_dim,
                rotary: head_dim,
                kind,
            },
        }
    }

    fn a_kernel(&self) -> bool {
        matches!(self, RopeCheck::Heads { axis: 1, .. })
    }
}

/// One stored tensor as source 0, in a convention whose chain (canonical → stored) is `chain`,
/// read as a canonical tensor of `canonical` shape (transposed when stored as its transpose).
fn operand<'a>(
    o: &'a Owned,
    sources: &'a [Source<'a>],
    chain: Vec<Transform>,
    canonical: Option<&[usize]>,
) -> Operand<'a> {
    let stored = View::contiguous(0, &o.info.shape);
    let mut shape = o.info.shape.clone();
    if chain.contains(&Transform::Transpose) {
        shape.reverse();
    }
    let c = Chain::from_transforms(chain, vec![vec![shape]]).unwrap();
    let mut view = c
        .inverse()
        .apply(vec![vec![stored]])
        .unwrap()
        .remove(0)
        .remove(0);
    let mut read_transposed = false;
    if let Some(want) = canonical {
        let have = view.shape();
        if have != want && have.len() == 2 && have[0] == want[1] && have[1] == want[0] {
            view = view.transpose_last().unwrap();
            read_transposed = true;
        }
    }
    Operand {
        info: &o.info,
        tensor: 0,
        tensors: std::slice::from_ref(&o.info),
        sources,
        canonical: view,
        chain: relation::moves_of(&c, None, None),
        chain_inv: relation::moves_of(&c.inverse(), None, None),
        read_transposed,
        single: true,
    }
}

fn source(o: &Owned) -> [Source<'_>; 1] {
    [Source {
        bytes: &o.bytes,
        dtype: o.info.dtype,
    }]
}

/// Compares `a` with `b`; `conv_t`: their conventions differ by a transpose (an HF weight
/// against a Flax kernel, or the other way round when A is the kernel).
fn cmp(
    a: &Owned,
    b: &Owned,
    rope: &RopeCheck,
    conv_t: bool,
    full: bool,
) -> (Result<Verdict, PairError>, Vec<String>) {
    let (sa, sb) = (source(a), source(b));
    let matrix = |o: &Owned| o.info.shape.len() == 2;
    let kernel = |on: bool| {
        if on {
            vec![Transform::Transpose]
        } else {
            vec![]
        }
    };
    let a_kernel = rope.a_kernel() && matrix(a);
    let b_kernel = (a_kernel ^ conv_t) && matrix(b);
    let oa = operand(a, &sa, kernel(a_kernel), None);
    let ob = operand(b, &sb, kernel(b_kernel), Some(&oa.canonical.shape()));
    let input = PairInput {
        a: oa,
        b: ob,
        rope: rope.lib(),
        full,
    };
    let mut notes = Vec::new();
    let v = compare(&input, &mut notes).map(|f| f.verdict);
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
    // The algebra's RoPE permutation (what diff's hypotheses and the conventions use) against
    // llama.cpp's permute, and its inverse.
    let (rows, cols, n) = (64, 3, 4);
    let a: Vec<f32> = (0..rows * cols).map(|x| x as f32).collect();
    let want = gguf_permute(&a, rows, cols, n);
    let fwd = Chain::from_transforms(
        vec![Transform::RopePermute {
            axis: 0,
            heads: n,
            rotary: 0,
            to: RopeOrder::Interleaved,
        }],
        vec![vec![vec![rows, cols]]],
    )
    .unwrap();
    let read = |v: &View, data: &[f32]| collect(v, &|_, e| data[e]);
    let permuted = fwd
        .apply(vec![vec![View::contiguous(0, &[rows, cols])]])
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(read(&permuted, &a), want);
    let back = fwd
        .inverse()
        .apply(vec![vec![View::contiguous(0, &[rows, cols])]])
        .unwrap()
        .remove(0)
        .remove(0);
    assert_eq!(read(&back, &want), a);
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

/// The facts of an HF → Flax pair of `a` and `b` whose conventions store it transposed.
fn hf_to_flax_pair<'a>(a: &'a Owned, b: &'a Owned) -> Facts<'a> {
    let transpose: &'static [Move] = Box::leak(Box::new([Move::new(Transform::Transpose, 2)]));
    Facts {
        a: &a.info,
        b: &b.info,
        conv_a: Some("hf"),
        conv_b: Some("flax"),
        conventions: transpose,
        matches_conventions: false,
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
    p.conventions = &[];
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
    let p = Facts { a: &f.info, ..p };
    assert_eq!(judge(&v, &p, &[Conversion::Cast]), None);
}

/// Compares through explicit conventions: A stored under `chain_a`, B under `chain_b` (each
/// canonical → stored), with a RoPE check; returns what the comparison found.
fn found_through(
    a: &Owned,
    chain_a: Vec<Transform>,
    b: &Owned,
    chain_b: Vec<Transform>,
    rope: relation::RopeCheck,
) -> compare::Found {
    let (sa, sb) = (source(a), source(b));
    let oa = operand(a, &sa, chain_a, None);
    let ob = operand(b, &sb, chain_b, Some(&oa.canonical.shape()));
    let input = PairInput {
        a: oa,
        b: ob,
        rope,
        full: false,
    };
    compare(&input, &mut Vec::new()).unwrap()
}

fn rope_t(heads: usize, to: RopeOrder) -> Transform {
    Transform::RopePermute {
        axis: 0,
        heads,
        rotary: 0,
        to,
    }
}

/// The hypothesis search, one transform kind at a time: each is found on the canonical
/// tensors and named by its kind, with the relation between the stored tensors in the algebra.
#[test]
fn hypothesis_transpose_of_a_square_tensor() {
    let v = values(6 * 6, 20);
    let a = Owned::f32("w", &[6, 6], &v);
    let b = Owned::f32("w", &[6, 6], &transpose(&v, 6, 6));
    let f = found_through(&a, vec![], &b, vec![], relation::RopeCheck::NotApplicable);
    assert_eq!(
        f.verdict,
        Verdict::Transposed {
            within_rounding: None,
            expected_by_conventions: false
        }
    );
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "transpose"
    );
    assert!(!f.matches_conventions);
    // The same bytes where the conventions expect a transpose: identical (a forgotten
    // transpose), the stored relation `identity`.
    let f = found_through(
        &a,
        vec![],
        &a,
        vec![Transform::Transpose],
        relation::RopeCheck::NotApplicable,
    );
    assert_eq!(f.verdict.name(), "identical");
    assert_eq!(f.relation, Some(vec![]));
    assert!(!f.matches_conventions);
}

#[test]
fn hypothesis_rope_permute_against_a_port_convention() {
    // A port stores q as rope-permute(nH = 2, interleaved) → transpose. D = 16.
    let (rows, cols) = (32, 32);
    let q = values(rows * cols, 21);
    let a = Owned::f32("q", &[rows, cols], &q);
    let port = vec![rope_t(2, RopeOrder::Interleaved), Transform::Transpose];
    let rope = relation::RopeCheck::Heads {
        heads: 2,
        head_dim: 16,
        rotary: 16,
        kind: HeadKind::Query,
    };
    // Stored as the port says: the conventions' relation, named rope-permuted and transposed.
    let good = Owned::f32(
        "wq",
        &[cols, rows],
        &transpose(&gguf_permute(&q, rows, cols, 2), rows, cols),
    );
    let f = found_through(&a, vec![], &good, port.clone(), rope.clone());
    assert_eq!(
        f.verdict,
        Verdict::RopePermuted {
            direction: RopeDirection::ToInterleaved,
            heads: 2,
            head_kind: HeadKind::Query,
            transposed: true,
            within_rounding: None
        }
    );
    assert!(f.matches_conventions);
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "rope-permute(heads=2, to=interleaved, rotary=16) → transpose"
    );
    // A port that forgot the permutation (plain transpose): read through the port's convention
    // the canonical q is rope-permuted the other way; the stored relation is a bare transpose.
    let plain = Owned::f32("wq", &[cols, rows], &transpose(&q, rows, cols));
    let f = found_through(&a, vec![], &plain, port, rope);
    assert_eq!(
        f.verdict,
        Verdict::RopePermuted {
            direction: RopeDirection::ToRotateHalf,
            heads: 2,
            head_kind: HeadKind::Query,
            transposed: true,
            within_rounding: None
        }
    );
    assert!(!f.matches_conventions);
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "transpose"
    );
    // With nKV heads for k: 1 head of 32 rows.
    let k = Owned::f32("k", &[rows, cols], &gguf_permute(&q, rows, cols, 1));
    let f = found_through(
        &a,
        vec![],
        &k,
        vec![],
        relation::RopeCheck::Heads {
            heads: 1,
            head_dim: 32,
            rotary: 32,
            kind: HeadKind::KeyValue,
        },
    );
    assert!(
        matches!(
            f.verdict,
            Verdict::RopePermuted {
                heads: 1,
                head_kind: HeadKind::KeyValue,
                transposed: false,
                ..
            }
        ),
        "{:?}",
        f.verdict
    );
}

#[test]
fn hypothesis_reverse_dims_of_a_rank_3_tensor() {
    // [2, 3, 2] is its own reverse shape: only the values tell.
    let v = values(12, 22);
    let a = Owned::f32("e", &[2, 3, 2], &v);
    let reversed = collect(
        &View::contiguous(0, &[2, 3, 2]).reverse_axes().unwrap(),
        &|_, e| v[e],
    );
    let b = Owned::f32("e", &[2, 3, 2], &reversed);
    let f = found_through(&a, vec![], &b, vec![], relation::RopeCheck::NotApplicable);
    assert_eq!(f.verdict.name(), "dims-reversed");
    assert!(matches!(
        f.verdict,
        Verdict::Transformed(Transformed {
            transposed: false,
            expected_by_conventions: false,
            ..
        })
    ));
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "reverse-dims"
    );
}

#[test]
fn hypothesis_scale_and_offset_after_a_transpose() {
    let v = values(8 * 8, 23);
    let a = Owned::f32("w", &[8, 8], &v);
    let t = transpose(&v, 8, 8);
    let scaled = Owned::f32("w", &[8, 8], &t.iter().map(|x| x * 2.0).collect::<Vec<_>>());
    let f = found_through(
        &a,
        vec![],
        &scaled,
        vec![],
        relation::RopeCheck::NotApplicable,
    );
    assert_eq!(
        f.verdict,
        Verdict::Scaled {
            factor: 2.0,
            hint: Some("√4".to_string()),
            transposed: true
        }
    );
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "transpose → scale(2)"
    );
    let shifted = Owned::f32("w", &[8, 8], &t.iter().map(|x| x + 0.5).collect::<Vec<_>>());
    let f = found_through(
        &a,
        vec![],
        &shifted,
        vec![],
        relation::RopeCheck::NotApplicable,
    );
    assert_eq!(
        f.verdict,
        Verdict::Offset {
            offset: 0.5,
            transposed: true
        }
    );
}

#[test]
fn rounded_is_one_ulp_of_the_narrower_dtype() {
    let v = values(16 * 4, 24);
    let a = Owned::f32("w", &[16, 4], &v);
    let b = Owned::bf16("w", &[16, 4], &v);
    let f = found_through(&a, vec![], &b, vec![], relation::RopeCheck::NotApplicable);
    assert!(
        matches!(f.verdict, Verdict::Rounded { dtype: "BF16", .. }),
        "{:?}",
        f.verdict
    );
    // Twice the rounding is no longer `rounded`.
    let far: Vec<f32> = v.iter().map(|x| x * 1.02).collect();
    let b = Owned::bf16("w", &[16, 4], &far);
    let f = found_through(&a, vec![], &b, vec![], relation::RopeCheck::NotApplicable);
    assert_ne!(f.verdict.name(), "rounded");
}

/// A canonical tensor held as part `part` of a tensor fused (or stacked) by `chain` from
/// `parts` canonical tensors of `shape`: the operand of that part, B's tensor as source 0.
fn part_operand<'a>(
    o: &'a Owned,
    sources: &'a [Source<'a>],
    chain: Vec<Transform>,
    group: Vec<Vec<Vec<usize>>>,
    (member, part): (usize, usize),
) -> Operand<'a> {
    let c = Chain::from_transforms(chain, group.clone()).unwrap();
    let canon = c
        .inverse()
        .apply(vec![vec![View::contiguous(0, &o.info.shape)]])
        .unwrap();
    let parts = group[0].len();
    let members = group.len();
    let part_of = (parts > 1).then_some((part, parts));
    let member_of = (members > 1).then_some((member, members));
    Operand {
        info: &o.info,
        tensor: 0,
        tensors: std::slice::from_ref(&o.info),
        sources,
        canonical: canon[member][part].clone(),
        chain: relation::moves_of(&c, part_of, member_of),
        chain_inv: relation::moves_of(&c.inverse(), part_of, member_of),
        read_transposed: false,
        single: false,
    }
}

#[test]
fn fused_split_and_stacked_parts_are_named_by_their_transform() {
    // gate, up [4, 3] fused (concat on rows) into [8, 3], then transposed: [3, 8].
    let gate = values(12, 25);
    let up = values(12, 26);
    let a = Owned::f32("gate", &[4, 3], &gate);
    let fused: Vec<f32> = gate.iter().chain(&up).copied().collect();
    let b = Owned::f32("gate_up", &[3, 8], &transpose(&fused, 8, 3));
    let (sa, sb) = (source(&a), source(&b));
    let chain = vec![
        Transform::Fuse {
            axis: 0,
            arrangement: Arrangement::Concat,
            outer: 1,
        },
        Transform::Transpose,
    ];
    let group = vec![vec![vec![4, 3], vec![4, 3]]];
    let input = PairInput {
        a: operand(&a, &sa, vec![], None),
        b: part_operand(&b, &sb, chain.clone(), group.clone(), (0, 0)),
        rope: relation::RopeCheck::NotApplicable,
        full: false,
    };
    let f = compare(&input, &mut Vec::new()).unwrap();
    assert_eq!(
        f.verdict,
        Verdict::Transformed(Transformed {
            verdict: "fused",
            part: Some((0, 2)),
            transposed: true,
            within_rounding: None,
            expected_by_conventions: true
        })
    );
    assert!(f.matches_conventions);
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "fuse(concat, axis=0, outer=1) [as 1 of 2] → transpose"
    );
    // The other way round: B's `up` is taken out of A's fused tensor.
    let up_b = Owned::f32("up", &[4, 3], &up);
    let sub = source(&up_b);
    let input = PairInput {
        a: part_operand(&b, &sb, chain, group, (0, 1)),
        b: operand(&up_b, &sub, vec![], None),
        rope: relation::RopeCheck::NotApplicable,
        full: false,
    };
    let f = compare(&input, &mut Vec::new()).unwrap();
    assert_eq!(f.verdict.name(), "split");
    assert_eq!(
        relation::describe(f.relation.as_deref().unwrap()),
        "split(concat, axis=1, outer=1) [take 2 of 2] → transpose"
    );
    // Two experts stacked into [2, 4, 3]: expert 1 is a stacked member.
    let e1 = values(12, 27);
    let stack: Vec<f32> = gate.iter().chain(&e1).copied().collect();
    let s = Owned::f32("experts", &[2, 4, 3], &stack);
    let ss = source(&s);
    let x = Owned::f32("e1", &[4, 3], &e1);
    let sx = source(&x);
    let input = PairInput {
        a: operand(&x, &sx, vec![], None),
        b: part_operand(
            &s,
            &ss,
            vec![Transform::Stack { axis: 0 }],
            vec![vec![vec![4, 3]], vec![vec![4, 3]]],
            (1, 0),
        ),
        rope: relation::RopeCheck::NotApplicable,
        full: true,
    };
    let f = compare(&input, &mut Vec::new()).unwrap();
    assert_eq!(
        f.verdict,
        Verdict::Transformed(Transformed {
            verdict: "stacked",
            part: Some((1, 2)),
            transposed: false,
            within_rounding: None,
            expected_by_conventions: true
        })
    );
}

#[test]
fn relations_cancel_what_two_conventions_share() {
    let m = |t: Transform| Move::new(t, 2);
    let split0 = Move {
        index: Some((0, 2)),
        ..m(Transform::Split {
            axis: 0,
            arrangement: Arrangement::Concat,
            outer: 1,
            sizes: vec![4, 4],
        })
    };
    // A port's fused kernel [in, 2I] against a Flax gate kernel [in, I]: a column split.
    let s = relation::simplify(vec![
        m(Transform::Transpose),
        split0.clone(),
        m(Transform::Transpose),
    ]);
    assert_eq!(
        relation::describe(&s),
        "split(concat, axis=1, outer=1) [take 1 of 2]"
    );
    // Kernel against kernel: nothing; HF against a RoPE-permuted kernel: the permutation on
    // the kernel's output axis, no transpose.
    assert!(relation::simplify(vec![m(Transform::Transpose), m(Transform::Transpose)]).is_empty());
    let s = relation::simplify(vec![
        m(Transform::Transpose),
        m(rope_t(4, RopeOrder::Half)),
        m(Transform::Transpose),
    ]);
    assert_eq!(
        s,
        vec![m(Transform::RopePermute {
            axis: 1,
            heads: 4,
            rotary: 0,
            to: RopeOrder::Half
        })]
    );
    assert!(relation::simplify(vec![
        m(rope_t(4, RopeOrder::Half)),
        m(rope_t(4, RopeOrder::Interleaved))
    ])
    .is_empty());
    // Values: +1 then −1, ×4 then ×¼.
    assert!(relation::simplify(vec![m(Transform::Add(1.0)), m(Transform::Add(-1.0))]).is_empty());
    assert!(
        relation::simplify(vec![m(Transform::Scale(4.0)), m(Transform::Scale(0.25))]).is_empty()
    );
    // A fused part against another part does not cancel.
    let split1 = Move {
        index: Some((1, 2)),
        ..split0.clone()
    };
    let fuse0 = Move {
        index: Some((0, 2)),
        ..m(Transform::Fuse {
            axis: 0,
            arrangement: Arrangement::Concat,
            outer: 1,
        })
    };
    assert!(relation::simplify(vec![split0, fuse0.clone()]).is_empty());
    assert_eq!(relation::simplify(vec![split1, fuse0]).len(), 2);
    // Names by priority: a rope permutation and a transpose make `rope-permuted`.
    assert_eq!(
        relation::word(&[m(rope_t(4, RopeOrder::Half)), m(Transform::Transpose)]),
        Some("rope-permuted")
    );
    assert_eq!(relation::word(&[]), None);
    // Every verdict word is counted in the summary.
    for (_, w) in relation::WORDS {
        assert!(VERDICT_ORDER.contains(w), "{w}");
    }
}

#[test]
fn conversions_parse_today_values_and_any_two_conventions() {
    let names = ["hf", "flax", "qwen2-jax-port", "to-do"];
    assert_eq!(
        Conversion::parse("hf-to-flax", &names),
        Ok(Conversion::HfToFlax)
    );
    assert_eq!(Conversion::parse("cast", &names), Ok(Conversion::Cast));
    assert_eq!(
        Conversion::parse("hf-to-qwen2-jax-port", &names),
        Ok(Conversion::Between {
            from: "hf".into(),
            to: "qwen2-jax-port".into()
        })
    );
    // A name containing `-to-` is found by trying every split.
    assert_eq!(
        Conversion::parse("to-do-to-hf", &names).unwrap().between(),
        Some(("to-do", "hf"))
    );
    let e = Conversion::parse("hf-to-gguf", &names).unwrap_err();
    assert!(
        e.to_string().contains("`hf-to-gguf` is not a conversion"),
        "{e}"
    );
    assert!(e.to_string().contains("hf, flax, qwen2-jax-port"), "{e}");
    assert_eq!(
        Conversion::Between {
            from: "hf".into(),
            to: "p".into()
        }
        .to_string(),
        "hf-to-p"
    );
    assert_eq!(
        Conversion::between_conventions("flax", "hf"),
        Conversion::FlaxToHf
    );
}

#[test]
fn a_port_relation_is_explained_by_its_direction_only() {
    let v = values(16, 28);
    let a = Owned::f32("q", &[4, 4], &v);
    let b = Owned::f32("wq", &[4, 4], &v);
    let conventions = [
        Move::new(rope_t(1, RopeOrder::Interleaved), 2),
        Move::new(Transform::Transpose, 2),
    ];
    let facts = Facts {
        a: &a.info,
        b: &b.info,
        conv_a: Some("hf"),
        conv_b: Some("port"),
        conventions: &conventions,
        matches_conventions: true,
    };
    let v = Verdict::RopePermuted {
        direction: RopeDirection::ToInterleaved,
        heads: 1,
        head_kind: HeadKind::Query,
        transposed: true,
        within_rounding: None,
    };
    let port = Conversion::Between {
        from: "hf".into(),
        to: "port".into(),
    };
    assert_eq!(judge(&v, &facts, std::slice::from_ref(&port)), None);
    let why = judge(&v, &facts, &[Conversion::HfToFlax]).unwrap();
    assert!(why.contains("pass --expect-conversion hf-to-port"), "{why}");
    assert!(why.contains("relates by `rope-permute"), "{why}");
    // Not the conventions' relation, which permutes itself: a side is out of its order.
    let facts = Facts {
        matches_conventions: false,
        ..facts
    };
    let why = judge(&v, &facts, std::slice::from_ref(&port)).unwrap();
    assert!(
        why.contains("not stored in the RoPE order its convention says"),
        "{why}"
    );
    // Conventions that do not permute: a RoPE permutation needs rope-permute.
    let transpose = [Move::new(Transform::Transpose, 2)];
    let facts = Facts {
        conventions: &transpose,
        ..facts
    };
    let why = judge(&v, &facts, &[port]).unwrap();
    assert!(why.contains("--expect-conversion rope-permute"), "{why}");
}
