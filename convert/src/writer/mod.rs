//! A streaming, all-or-nothing safetensors writer.
//!
//! Why this shape: a converted model can be larger than RAM, so the header (which must
//! come first in the file) is computed from names, dtypes and shapes alone, and the data
//! is then streamed tensor by tensor (or tile by tile) from a producer callback. Nothing
//! of the output is visible until all of it is complete. Three parts, one seam each:
//! - [`layout`](self::Layout): the plan of the files (order, shards, headers, the index);
//! - the shard writer ([`TensorSink`]): producers fill a small pool of write buffers in place
//!   while a writer thread writes the previous ones, so computing the output and copying it
//!   into the page cache overlap, and every produced byte is copied once;
//! - the staging folder ([`Staging`]): files are written next to the destination, re-read and
//!   checked, then renamed into place in one step; any error leaves nothing behind.

mod layout;
mod sink;
mod staging;

pub use layout::{
    parse_size, Layout, OutTensor, ShardPlan, DEFAULT_MAX_SHARD_SIZE, INDEX_FILE, SINGLE_FILE,
};
pub use sink::{StreamMode, TensorSink, ALIGN, DEFAULT_BUFFER_BYTES, WRITE_BUFFERS};
pub use staging::{FileDigest, Staging};
