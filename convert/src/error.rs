//! The one error type of `orient-convert`.
//!
//! Why one enum: a conversion fails for many distinct reasons (an unreadable source, a
//! contradictory layout, a cast that would produce garbage, a full disk) and the binary
//! must report each precisely, naming the file and the tensor. Every variant is one such
//! reason; none is a catch-all string. A variant that wraps a lower-level error keeps it as
//! its `source` and does not repeat its text: the binary prints the whole chain once.

use std::path::PathBuf;

use orient_inspect::layout::catalogue::CatalogueError;
use orient_inspect::layout::gather::GatherError;
use orient_inspect::layout::transform::TransformError;
use orient_inspect::ConfigError;

use crate::cast::CastError;
use crate::transpose::TransposeError;

/// Everything that can make a conversion or a synthesis fail.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A filesystem operation failed (including a full disk).
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What was being done ("create", "write", "rename", …).
        op: &'static str,
        /// The file or folder involved.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Reading the source checkpoint failed.
    #[error(transparent)]
    Read(#[from] orient_inspect::Error),
    /// A cast kernel rejected its buffers.
    #[error("tensor `{tensor}`: the cast failed")]
    Cast {
        /// The tensor being cast.
        tensor: String,
        /// What the kernel reported.
        source: CastError,
    },
    /// A transpose kernel rejected its buffers.
    #[error("tensor `{tensor}`: the transpose failed")]
    Transpose {
        /// The tensor being transposed.
        tensor: String,
        /// What the kernel reported.
        source: TransposeError,
    },
    /// Reading an output tensor through its view failed (a view that does not fit its
    /// sources: never an out-of-bounds read).
    #[error("tensor `{tensor}`: cannot read it from its source tensors")]
    Gather {
        /// The output tensor.
        tensor: String,
        /// What the gather kernel reported.
        source: GatherError,
    },
    /// A convention's transform chain does not apply to a tensor of this model.
    #[error("tensor `{tensor}`: its transform chain does not apply")]
    Transform {
        /// The tensor (canonical or stored name).
        tensor: String,
        /// What the transform algebra said.
        source: TransformError,
    },
    /// Two output tensors have the same name.
    #[error("two output tensors are both named `{0}`")]
    DuplicateTensor(String),
    /// A size computed from shapes does not fit in 64 bits.
    #[error("tensor `{0}`: its byte size overflows")]
    SizeOverflow(String),
    /// The producer of a tensor wrote more bytes than the header promised.
    #[error(
        "tensor `{tensor}`: producer wrote more than the {expected} bytes its header declares"
    )]
    ProducerOverrun {
        /// The tensor being written.
        tensor: String,
        /// Bytes declared in the header.
        expected: u64,
    },
    /// The producer of a tensor mixed column-block writes with sequential writes, or
    /// changed the shape of its column blocks midway.
    #[error(
        "tensor `{tensor}`: producer wrote column blocks that do not tile the tensor ({problem})"
    )]
    ProducerColumns {
        /// The tensor being written.
        tensor: String,
        /// What was inconsistent.
        problem: String,
    },
    /// The producer of a tensor wrote fewer bytes than the header promised.
    #[error(
        "tensor `{tensor}`: producer wrote {written} of the {expected} bytes its header declares"
    )]
    ProducerShort {
        /// The tensor being written.
        tensor: String,
        /// Bytes declared in the header.
        expected: u64,
        /// Bytes actually written.
        written: u64,
    },
    /// A file re-read after writing does not match what was meant to be written.
    #[error("{} failed validation after writing: {problem}", path.display())]
    Validation {
        /// The written file.
        path: PathBuf,
        /// What did not match.
        problem: String,
    },
    /// The destination exists and `--force` was not given.
    #[error("{} already exists (use --force to replace it)", .0.display())]
    DestinationExists(PathBuf),
    /// The destination cannot be written at all: its parent folder is missing or not a
    /// folder, or it has no parent (`/`).
    #[error("cannot write {}: {problem}", dst.display())]
    DestinationUnusable {
        /// The requested destination.
        dst: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The destination is the input, lies inside it, or contains it.
    #[error("refusing to write {}: it {relation} the source {}; choose a destination outside the source", dst.display(), src.display())]
    DestinationOverlapsSource {
        /// The source checkpoint folder or file (or the config of a synthesis).
        src: PathBuf,
        /// The requested destination.
        dst: PathBuf,
        /// "is", "lies inside", "contains" or "holds files linked from".
        relation: &'static str,
    },
    /// Replacing the destination would delete something that is not a previous
    /// checkpoint (or the current folder, a link, a file).
    #[error("refusing to replace {}: {reason}", dst.display())]
    DestinationNotReplaceable {
        /// The requested destination.
        dst: PathBuf,
        /// Why, naming what would be lost.
        reason: String,
    },
    /// A signal arrived: the staging folders were removed and no output may be committed.
    #[error("interrupted: the output was abandoned")]
    Interrupted,
    /// `--max-shard-size` could not be parsed.
    #[error("invalid size `{0}`: expected a number of bytes with an optional unit (e.g. 500MB, 2GiB, 1000000)")]
    InvalidSize(String),
    /// A cast was requested on a tensor whose dtype cannot be cast.
    #[error("tensor `{tensor}` has dtype {dtype}, which cannot be cast to {target}; use --dtype keep to copy it unchanged")]
    NotCastable {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// The requested target dtype.
        target: String,
    },
    /// The source has no config.json, so the layout is unknown.
    #[error("{}: no config.json next to the checkpoint; orient needs it to know the layout", path.display())]
    NoConfig {
        /// The checkpoint folder.
        path: PathBuf,
    },
    /// The source's config.json cannot be used.
    #[error("{}: cannot be used", path.display())]
    Config {
        /// The config file.
        path: PathBuf,
        /// What is wrong with it.
        source: ConfigError,
    },
    /// The architecture is not in the layout catalogue.
    #[error("the layout catalogue has no entry for model_type `{model_type}` (known: {known}), so orient cannot tell how its tensors are laid out in {target}")]
    UnknownArchitecture {
        /// The config's model_type.
        model_type: String,
        /// The architectures the catalogue knows, comma-separated.
        known: String,
        /// The requested target layout.
        target: String,
    },
    /// A layout (built-in or a user's file) does not fit this model.
    #[error(transparent)]
    Catalogue(#[from] CatalogueError),
    /// A convention name that is neither built in nor given by a layout file.
    #[error("unknown layout convention `{name}` (known: {known})")]
    UnknownConvention {
        /// The name asked for.
        name: String,
        /// The conventions there are, comma-separated.
        known: String,
    },
    /// Tensors that are not part of this model in any known convention.
    #[error(
        "{}: {} tensor(s) are not part of a {model_type} model with this config in any known layout convention:\n{}\n\
         Is config.json the one of these weights? A checkpoint with names of its own needs a \
         layout file that maps them to the model's tensors.",
        path.display(),
        tensors.len(),
        tensors.iter().map(|t| format!("  {t}")).collect::<Vec<_>>().join("\n")
    )]
    UnexpectedTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The config's model_type.
        model_type: String,
        /// The tensors.
        tensors: Vec<String>,
    },
    /// The same canonical tensor stored twice (two spellings, or two conventions).
    #[error("{}: the source holds the same tensor twice:\n{}", path.display(), pairs.join("\n"))]
    DuplicateTensors {
        /// The checkpoint.
        path: PathBuf,
        /// One line per pair.
        pairs: Vec<String>,
    },
    /// The source mixes conventions or contradicts the catalogue.
    #[error(
        "{}: the source does not follow a single layout convention:\n{}\n\
         orient will not guess which way each tensor goes. Square projections (e.g. q_proj/o_proj \
         when nH·D = H) cannot be checked by shape: where their non-square neighbours are \
         transposed, assume they are too. Compare with a trusted checkpoint (`orient diff`, \
         `orient verify --against`), or pass --from to override detection.",
        path.display(),
        problems.join("\n")
    )]
    Contradictory {
        /// The checkpoint.
        path: PathBuf,
        /// One line per offending tensor.
        problems: Vec<String>,
    },
    /// The source convention could not be decided from names and non-square shapes.
    #[error("{}: cannot tell which layout convention the source follows among {candidates} ({reason}); pass --from with one of them", path.display())]
    Undetectable {
        /// The checkpoint.
        path: PathBuf,
        /// The conventions considered, comma-separated.
        candidates: String,
        /// Why detection failed.
        reason: String,
    },
    /// Required tensors of the source convention are absent.
    #[error(
        "{}: the source, read as {convention} layout, lacks {} required tensor(s):\n{}",
        path.display(),
        tensors.len(),
        tensors.join("\n")
    )]
    MissingTensors {
        /// The checkpoint.
        path: PathBuf,
        /// The source convention.
        convention: String,
        /// One line per missing tensor (name and expected shape).
        tensors: Vec<String>,
    },
    /// With an explicit source convention, a tensor named as in another convention whose
    /// form of it is not one tensor in both.
    #[error("tensor `{tensor}` is named as in the {named} layout, which stores it differently from {source_convention}; it cannot be read as {source_convention} layout")]
    ForeignName {
        /// The tensor.
        tensor: String,
        /// The convention its name belongs to.
        named: String,
        /// The convention the source is read as.
        source_convention: String,
    },
    /// An output made from sources of different dtypes, with no output dtype asked for.
    #[error("output tensor `{tensor}` is made from tensors of different dtypes ({dtypes}); ask for one output dtype")]
    MixedDtypes {
        /// The output tensor.
        tensor: String,
        /// The source dtypes.
        dtypes: String,
    },
    /// A chain that computes on values (add, scale) over a tensor that holds no floats.
    #[error("tensor `{tensor}` has dtype {dtype}, but its chain `{chain}` computes on values (F32, BF16 and F16 only)")]
    NotComputable {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
        /// The chain.
        chain: String,
    },
    /// A tensor needed by the target layout is absent from the source.
    #[error("tensor `{0}` is required by the target layout but missing from the source")]
    MissingTensor(String),
    /// The target layout needs an lm_head that the source lacks and cannot be built.
    #[error("the {target} layout needs `{target_name}`, but the source has no `{expected}` and its config does not tie the embeddings (tie_word_embeddings is false), so there is nothing to build it from")]
    MissingLmHead {
        /// The lm_head name in the source convention.
        expected: String,
        /// The lm_head name in the target convention.
        target_name: String,
        /// The target convention.
        target: String,
    },
    /// The config ties the embeddings but the stored lm_head differs from the embedding: the
    /// frameworks disagree on which one computes the logits, so the file means two models.
    #[error("config.json ties the embeddings, but `{lm_head}` differs from `{embedding}`: transformers' PyTorch classes ignore a tied lm_head (logits from the embedding) while its Flax llama-family classes always use their own lm_head.kernel, so this checkpoint computes different logits in each; refusing to convert it to the {target} layout (is tie_word_embeddings right?)")]
    LmHeadDiffers {
        /// The lm_head tensor.
        lm_head: String,
        /// The embedding tensor.
        embedding: String,
        /// The target convention.
        target: String,
    },
    /// A tensor's shape is not what the catalogue expects.
    #[error("tensor `{tensor}` has shape {actual:?}, but the catalogue expects {expected:?} in {convention} layout")]
    ShapeMismatch {
        /// The tensor.
        tensor: String,
        /// Its shape in the file.
        actual: Vec<usize>,
        /// The shape the catalogue expects.
        expected: Vec<usize>,
        /// The convention the source was read as.
        convention: String,
    },
    /// A partitioned conversion refused (`--part`, `--finish`).
    #[error(transparent)]
    Part(#[from] crate::parts::PartError),
    /// A tensor with a dtype the converter cannot move (sub-byte formats).
    #[error("tensor `{tensor}` has dtype {dtype}, which orient cannot relayout")]
    UnsupportedDtype {
        /// The tensor.
        tensor: String,
        /// Its dtype.
        dtype: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Builds an [`Error::Io`] closure for `map_err`.
pub(crate) fn io(
    op: &'static str,
    path: impl Into<PathBuf>,
) -> impl FnOnce(std::io::Error) -> Error {
    let path = path.into();
    move |source| Error::Io { op, path, source }
}
