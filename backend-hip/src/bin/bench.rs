//! Benchmarks of the hip-* backends: see `backend_hip::bench` (inside the crate: it times with
//! device events on the backend's stream).
//!
//! ```text
//! cargo run -p backend-hip --release --bin bench -- [--json bench.json] [--quick] [--only-strategies] [--mma]
//! ```
fn main() {
    backend_hip::bench::main()
}
