//! The kernel interface: privileges, BTF, loading and attaching the probes,
//! reading their maps, decoding ring-buffer records, and what /proc says
//! about a target.
pub mod btf;
pub mod collect;
pub mod privileges;
pub mod probes;
pub mod ring_size;
pub mod startup;
pub mod target;
