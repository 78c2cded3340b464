//! One file per op: the f64 reference formula (public, used by the conformance suite as the
//! golden result) and the backend op that reads storage, calls it, and stores in the dtype.

pub mod attention;
pub mod kv_append;
pub mod rope;
