//! One file per op: the parameter struct the kernel takes (mirrored in `kernels/*.hip`), the
//! capability/dispatch decision, and the launch. No raw pointers: device addresses come from
//! the runtime as integers.

pub mod attention;
pub mod kv_append;
pub mod rope;

/// Elements per 16-byte chunk of `dtype` (the kernels' copy unit).
pub fn chunk(dtype: backend_api::DType) -> usize {
    16 / dtype.size()
}

/// Requirement shared by every kernel: rows move in 16-byte chunks.
pub fn head_dim_reason(head_dim: usize) -> Option<String> {
    (head_dim % 16 != 0).then(|| format!("head_dim {head_dim} is not a multiple of 16 (the kernels move 16-byte chunks of every row)"))
}
