//! The KV cache: every layer's keys and values of the positions already run, so that a decode
//! step costs one token's forward instead of a prefill over the whole sequence.
//!
//! Why a plain buffer per layer, allocated once: generation knows its longest sequence up front
//! (prompt + `--max-new-tokens`), so the cache is sized once, its bytes join the forward's
//! memory estimate before anything runs ([`super::memory`]), and a step never reallocates. The
//! buffers are zeroed allocations the kernel maps lazily, so resident memory grows with the
//! positions actually written, never past the estimate.
//!
//! What is stored is what attention reads: each layer's keys after RoPE (and after Qwen3's
//! k-norm) and its values, `[positions, nKV·D]` row-major, exactly the rows a prefill over the
//! same tokens computes. A decode step appends its rows and attends over all of them through
//! the same tiled attention as a prefill (see `attention.rs`), so its logits are those of a
//! prefill's last position (see [`super::Model::forward_cached`] for how exactly).

use super::ModelError;

/// Keys and values of the positions `0..len` for every layer, with room for `capacity`.
#[derive(Debug)]
pub struct KvCache {
    /// One per decoder layer.
    layers: Vec<LayerKv>,
    /// nKV·D: the width of one position's keys (and values) in one layer.
    width: usize,
    /// Positions the buffers hold room for.
    capacity: usize,
    /// Positions written so far (by forwards that completed).
    len: usize,
}

/// One layer's keys and values.
#[derive(Debug)]
pub(crate) struct LayerKv {
    /// `[capacity, nKV·D]` keys after RoPE
    k: Vec<f32>,
    /// `[capacity, nKV·D]` values
    v: Vec<f32>,
}

/// Rows of the cache one layer attends over: the positions before this forward's tokens and
/// this forward's own.
pub(crate) struct CachedRows<'a> {
    /// `[past + t, nKV·D]` keys.
    pub k: &'a [f32],
    /// `[past + t, nKV·D]` values.
    pub v: &'a [f32],
}

impl KvCache {
    /// An empty cache for `layers` layers of `width` (nKV·D) keys and values per position,
    /// with room for `capacity` positions. [`ModelError::PromptTooLong`] when its size
    /// overflows.
    pub fn new(layers: usize, width: usize, capacity: usize) -> Result<KvCache, ModelError> {
        let cells = capacity
            .checked_mul(width)
            .filter(|&c| {
                c.checked_mul(2 * size_of::<f32>())
                    .and_then(|b| b.checked_mul(layers.max(1)))
                    .is_some_and(|b| isize::try_from(b).is_ok())
            })
            .ok_or(ModelError::PromptTooLong { tokens: capacity })?;
        let layers = (0..layers)
            .map(|_| LayerKv {
                k: vec![0.0; cells],
                v: vec![0.0; cells],
            })
            .collect();
        Ok(KvCache {
            layers,
            width,
            capacity,
            len: 0,
        })
    }

    /// Positions held (the length of the sequence run so far).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Nothing run yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache has room for.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// nKV·D.
    pub fn width(&self) -> usize {
        self.width
    }

    /// f32 elements of all the buffers at full capacity (what the memory estimate counts).
    pub fn elements(&self) -> u128 {
        2 * self.layers.len() as u128 * self.capacity as u128 * self.width as u128
    }

    /// Bytes of all the buffers at full capacity.
    pub fn bytes(&self) -> u64 {
        u64::try_from(4 * self.elements()).unwrap_or(u64::MAX)
    }

    /// Forgets every position (the buffers are kept): the next forward starts at position 0.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Forgets the positions from `len` on (no-op when it holds fewer).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Layer `i`'s buffers.
    pub(crate) fn layer_mut(&mut self, i: usize) -> Result<&mut LayerKv, ModelError> {
        let n = self.layers.len();
        self.layers
            .get_mut(i)
            .ok_or_else(|| ModelError::Internal(format!("no KV cache for layer {i} of {n}")))
    }

    /// Checks that `t` more positions of a model with `layers` layers of `width` fit.
    pub(crate) fn check_fits(
        &self,
        layers: usize,
        width: usize,
        t: usize,
    ) -> Result<(), ModelError> {
        if layers != self.layers.len() || width != self.width {
            return Err(ModelError::Internal(format!(
                "a KV cache of {} layers × {} does not fit a model of {layers} layers × {width}",
                self.layers.len(),
                self.width
            )));
        }
        match self.len.checked_add(t) {
            Some(end) if end <= self.capacity => Ok(()),
            _ => Err(ModelError::CacheFull {
                capacity: self.capacity,
                held: self.len,
                tokens: t,
            }),
        }
    }

    /// Records that a forward wrote `t` more positions into every layer.
    pub(crate) fn commit(&mut self, t: usize) {
        self.len = (self.len + t).min(self.capacity);
    }
}

impl LayerKv {
    /// Writes this forward's keys and values (`[t, width]` each) at positions `past..past + t`
    /// and returns the rows attention reads: `0..past + t`, and zeroed rows after them up to
    /// `min_rows` where the cache has room (a tile of attention spans at least that many keys,
    /// masked ones included, see `attention::MIN_KEYS`). Bounds were checked by
    /// [`KvCache::check_fits`]; a mismatch here is an internal error, not a panic.
    pub(crate) fn append(
        &mut self,
        k: &[f32],
        v: &[f32],
        past: usize,
        t: usize,
        width: usize,
        min_rows: usize,
    ) -> Result<CachedRows<'_>, ModelError> {
        let (start, end) = (past * width, (past + t) * width);
        let new = t * width;
        if end > self.k.len() || k.len() < new || v.len() < new {
            return Err(ModelError::Internal(format!(
                "KV cache rows {past}..{} outside its {} positions",
                past + t,
                self.k.len() / width.max(1)
            )));
        }
        self.k[start..end].copy_from_slice(&k[..new]);
        self.v[start..end].copy_from_slice(&v[..new]);
        // rows left by an earlier, truncated sequence must not reach the masked products
        let padded = end.max((min_rows * width).min(self.k.len()));
        self.k[end..padded].fill(0.0);
        self.v[end..padded].fill(0.0);
        Ok(CachedRows {
            k: &self.k[..padded],
            v: &self.v[..padded],
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_append_and_read_back_in_order() {
        let mut c = KvCache::new(2, 3, 4).unwrap();
        assert_eq!((c.len(), c.capacity(), c.elements()), (0, 4, 2 * 2 * 4 * 3));
        c.check_fits(2, 3, 2).unwrap();
        let rows = c
            .layer_mut(1)
            .unwrap()
            .append(&[1.0; 6], &[2.0; 6], 0, 2, 3, 0)
            .unwrap();
        assert_eq!((rows.k.len(), rows.v[5]), (6, 2.0));
        c.commit(2);
        let rows = c
            .layer_mut(1)
            .unwrap()
            .append(&[3.0; 3], &[4.0; 3], 2, 1, 3, 0)
            .unwrap();
        assert_eq!(rows.k, [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 3.0, 3.0, 3.0]);
        c.commit(1);
        assert_eq!(c.len(), 3);
        // a short sequence gets zeroed rows up to `min_rows`, within the capacity
        c.truncate(1);
        let rows = c
            .layer_mut(1)
            .unwrap()
            .append(&[5.0; 3], &[6.0; 3], 1, 1, 3, 8)
            .unwrap();
        assert_eq!(
            rows.k,
            [1.0, 1.0, 1.0, 5.0, 5.0, 5.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
        );
    }

    #[test]
    fn a_full_cache_and_a_wrong_model_are_refused() {
        let mut c = KvCache::new(2, 3, 4).unwrap();
        c.commit(3);
        let e = c.check_fits(2, 3, 2).unwrap_err();
        assert!(e.to_string().contains("room for 4 positions"), "{e}");
        assert!(c.check_fits(3, 3, 1).is_err());
        assert!(c.check_fits(2, 4, 1).is_err());
        assert!(c.layer_mut(2).is_err());
        c.truncate(1);
        c.check_fits(2, 3, 3).unwrap();
        c.clear();
        assert!(c.is_empty());
        assert!(KvCache::new(2, usize::MAX / 2, 4).is_err());
    }
}
