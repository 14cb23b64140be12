//! placeholder

pub mod catalogue;
pub mod config;

pub use catalogue::{
    Catalogue, Component, Convention, Entry, Form, NameMatch, Orientation, Role, Variant,
};
pub use config::{parse_config, Arch, ConfigError, ConfigOutcome, ModelConfig, RopeScaling};
