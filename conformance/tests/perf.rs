//! The perf mode (`attnforge conformance --perf`): every op and dtype asked for is timed, with
//! byte and flop counts that match the problem, and the table names each row.

use attnforge_api::{DType, Op};
use attnforge_conformance::perf;

#[test]
fn the_perf_mode_times_every_op_with_its_traffic_and_work() {
    let cpu = attnforge_cpu::CpuBackend::handle();
    let ops = [Op::Rope, Op::KvAppend, Op::Attention];
    let rows = perf::run(&cpu, &ops, &[DType::F32, DType::BF16], 1, 7, 2);
    assert_eq!(rows.len(), ops.len() * 2, "one row per op, dtype and problem: {rows:?}");
    for r in &rows {
        assert!(r.micros.is_finite() && r.micros > 0.0, "{r:?}");
        assert!(r.bytes.is_finite() && r.bytes > 0.0, "{r:?}");
        assert!(!r.problem.is_empty());
        match r.op {
            Op::Attention => assert!(r.flops > 0.0, "attention does arithmetic: {r:?}"),
            Op::KvAppend => assert_eq!(r.flops, 0.0, "an append only moves bytes: {r:?}"),
            _ => {}
        }
    }
    // The same problem in both dtypes (one seed): half the element size, half the bytes.
    let (f32_att, bf16_att) = (&rows[2], &rows[5]);
    assert_eq!((f32_att.op, bf16_att.op, &f32_att.problem), (Op::Attention, Op::Attention, &bf16_att.problem));
    assert_eq!(f32_att.bytes, 2.0 * bf16_att.bytes, "{f32_att:?} {bf16_att:?}");
    assert_eq!(f32_att.flops, bf16_att.flops);
    let table = perf::table(&rows);
    for name in ["rope", "kv_append", "attention", "f32", "bf16", "GB/s", "TFLOP/s"] {
        assert!(table.contains(name), "{name} in\n{table}");
    }
    assert_eq!(table.lines().count(), rows.len() + 1);
}
